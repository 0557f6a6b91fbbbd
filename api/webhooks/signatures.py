"""Each provider's signature scheme, as the provider documents it. Plain functions of the request's
URL, headers and raw body, so they are tested without HTTP.

A verifier raises SignatureError (the API answers 401) or returns None. Schemes that carry a
timestamp refuse requests more than TOLERANCE_S from now, in either direction, which bounds
replays; within the window a replay produces the same CloudEvent id and the pipeline marks it
a duplicate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

TOLERANCE_S = 300


class SignatureError(Exception):
    pass


@dataclass(frozen=True)
class SignedRequest:
    url: str  # as the provider called it (Twilio signs it)
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def header(self, name: str) -> str:
        value = self.headers.get(name.lower())
        if not value:
            raise SignatureError(f"missing {name} header")
        return value


def _hmac_hex(secret: str, message: bytes, digest=hashlib.sha256) -> str:
    return hmac.new(secret.encode(), message, digest).hexdigest()


def _matches(expected: str, candidates: list[str]) -> None:
    # bytes: compare_digest refuses non-ASCII str, and a hostile header may carry any character
    if not any(hmac.compare_digest(expected.encode(), c.strip().encode()) for c in candidates):
        raise SignatureError("signature does not match")


def _fresh(timestamp: str, now: float) -> None:
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise SignatureError(f"timestamp {timestamp[:40]!r} is not a Unix time in seconds")
    ts = int(timestamp)
    if abs(now - ts) > TOLERANCE_S:
        raise SignatureError(f"timestamp is {int(now - ts)} s from now; the tolerance is {TOLERANCE_S} s")


def verify_stripe(secret: str, req: SignedRequest, now: float) -> None:
    """Stripe-Signature: t=<ts>,v1=<hex HMAC-SHA256 of "t.body">[,v1=...] (several during rotation)."""
    parts = [p.split("=", 1) for p in req.header("Stripe-Signature").split(",") if "=" in p]
    stamps = [v for k, v in parts if k.strip() == "t"]
    if len(stamps) != 1:
        raise SignatureError("Stripe-Signature has no single t= timestamp")
    _fresh(stamps[0], now)
    expected = _hmac_hex(secret, stamps[0].encode() + b"." + req.body)
    _matches(expected, [v for k, v in parts if k.strip() == "v1"])


def verify_twilio(secret: str, req: SignedRequest, now: float) -> None:
    """X-Twilio-Signature: base64 HMAC-SHA1 (auth token) of the URL followed by every POST
    parameter's name and value, sorted by name. No timestamp in this scheme."""
    params = sorted(parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True))
    message = req.url + "".join(k + v for k, v in params)
    mac = hmac.new(secret.encode(), message.encode(), hashlib.sha1).digest()
    _matches(base64.b64encode(mac).decode(), [req.header("X-Twilio-Signature")])


def _verification_key(secret: str):
    """SendGrid shows the verification key as base64 DER; a PEM is accepted too."""
    # imported here: `cryptography` costs a tenth of a second, which every `aforo` command would pay
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key
    try:
        key = (load_pem_public_key(secret.encode()) if secret.lstrip().startswith("-----")
               else load_der_public_key(base64.b64decode(secret)))
    except (ValueError, binascii.Error) as exc:
        raise SignatureError(f"the source's SendGrid verification key is unreadable: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError("the source's SendGrid verification key is not an ECDSA key")
    return key


def verify_sendgrid(secret: str, req: SignedRequest, now: float) -> None:
    """Signed Event Webhook: ECDSA P-256 / SHA-256 over timestamp + body; the signature is base64
    DER in X-Twilio-Email-Event-Webhook-Signature, the timestamp in ...-Timestamp."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    timestamp = req.header("X-Twilio-Email-Event-Webhook-Timestamp")
    _fresh(timestamp, now)
    try:
        signature = base64.b64decode(req.header("X-Twilio-Email-Event-Webhook-Signature"), validate=True)
    except binascii.Error:
        raise SignatureError("signature is not base64") from None
    try:
        _verification_key(secret).verify(signature, timestamp.encode() + req.body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise SignatureError("signature does not match") from None


def verify_github(secret: str, req: SignedRequest, now: float) -> None:
    """X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>. No timestamp; GitHub's
    X-GitHub-Delivery id becomes the CloudEvent id, so a redelivery is a duplicate."""
    scheme, _, signature = req.header("X-Hub-Signature-256").partition("=")
    if scheme != "sha256":
        raise SignatureError("X-Hub-Signature-256 must start with sha256=")
    _matches(_hmac_hex(secret, req.body), [signature])


def verify_slack(secret: str, req: SignedRequest, now: float) -> None:
    """X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:<X-Slack-Request-Timestamp>:<body>">."""
    timestamp = req.header("X-Slack-Request-Timestamp")
    _fresh(timestamp, now)
    version, _, signature = req.header("X-Slack-Signature").partition("=")
    if version != "v0":
        raise SignatureError("X-Slack-Signature must start with v0=")
    _matches(_hmac_hex(secret, b"v0:" + timestamp.encode() + b":" + req.body), [signature])


GENERIC_TIMESTAMP = "X-Aforo-Timestamp"
GENERIC_SIGNATURE = "X-Aforo-Signature"


def sign_generic(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The headers verify_generic checks, for what Aforo itself sends (invoice webhooks)."""
    ts = str(timestamp)
    return {GENERIC_TIMESTAMP: ts, GENERIC_SIGNATURE: "v1=" + _hmac_hex(secret, ts.encode() + b"." + body)}


def verify_generic(secret: str, req: SignedRequest, now: float) -> None:
    """Aforo's own scheme for any other sender: X-Aforo-Timestamp: <unix seconds> and
    X-Aforo-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">."""
    timestamp = req.header(GENERIC_TIMESTAMP)
    _fresh(timestamp, now)
    version, _, signature = req.header(GENERIC_SIGNATURE).partition("=")
    if version != "v1":
        raise SignatureError(f"{GENERIC_SIGNATURE} must start with v1=")
    _matches(_hmac_hex(secret, timestamp.encode() + b"." + req.body), [signature])


VERIFIERS: dict[str, Callable[[str, SignedRequest, float], None]] = {
    "stripe": verify_stripe,
    "twilio": verify_twilio,
    "sendgrid": verify_sendgrid,
    "github": verify_github,
    "slack": verify_slack,
    "generic": verify_generic,
}
PROVIDERS = tuple(VERIFIERS)
