"""Shared by the API tests: an app on the real stack with a tenant key, providers' signing as the
providers do it, and a look at the raw topic. (No tests here.)"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from confluent_kafka import Consumer, TopicPartition
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.testclient import TestClient

import config
from api.app import create_app
from api.keys import create_key
from api.services import ApiOptions
from sinks.kafka import ensure_topics, kafka_config
from sinks.postgres import connect

FIXTURES = Path(__file__).parent / "fixtures" / "api"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@dataclass
class Api:
    client: TestClient
    settings: config.Settings
    key: str
    key_id: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def new_key(settings: config.Settings, tenant: str | None, scope: str = "tenant",
            customer: str | None = None) -> tuple[str, str]:
    with connect(settings.database_url) as conn:
        return create_key(conn, tenant, scope, customer)


def open_api(settings: config.Settings, options: ApiOptions | None = None) -> Iterator[Api]:
    """The API in process on the test's own topics and database, with a key of tenant acme."""
    ensure_topics(settings)
    key_id, key = new_key(settings, "acme")
    with TestClient(create_app(settings, options or ApiOptions(rate=10_000, burst=10_000))) as client:
        yield Api(client, settings, key, key_id)


def raw_count(settings: config.Settings) -> int:
    """Records in the raw topic (the sum of its partitions' high watermarks)."""
    c = Consumer(kafka_config(settings, "consumer", group_id="aforo-api-test"))
    try:
        meta = c.list_topics(settings.topics.raw, timeout=10).topics[settings.topics.raw]
        return sum(c.get_watermark_offsets(TopicPartition(settings.topics.raw, p), timeout=10)[1]
                   for p in meta.partitions)
    finally:
        c.close()


# --- signing as each provider does (with the Content-Type each sends) ----------------------------

JSON = {"Content-Type": "application/json"}

def _hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def stripe_headers(secret: str, body: bytes, ts: int) -> dict[str, str]:
    return {**JSON, "Stripe-Signature": f"t={ts},v1={_hex(secret, f'{ts}.'.encode() + body)},v0=ignored"}


def twilio_headers(token: str, url: str, body: bytes) -> dict[str, str]:
    params = parse_qsl(body.decode(), keep_blank_values=True)
    message = url + "".join(k + v for k, v in sorted(params))
    mac = hmac.new(token.encode(), message.encode(), hashlib.sha1).digest()
    return {"X-Twilio-Signature": base64.b64encode(mac).decode()}


def sendgrid_keypair() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A P-256 key, and its public half as SendGrid shows it (base64 DER)."""
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, base64.b64encode(der).decode()


def sendgrid_headers(private: ec.EllipticCurvePrivateKey, body: bytes, ts: int) -> dict[str, str]:
    signature = private.sign(str(ts).encode() + body, ec.ECDSA(hashes.SHA256()))
    return {**JSON, "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": str(ts)}


def github_headers(secret: str, body: bytes, delivery: str, event: str) -> dict[str, str]:
    return {**JSON, "X-Hub-Signature-256": f"sha256={_hex(secret, body)}", "X-GitHub-Delivery": delivery,
            "X-GitHub-Event": event}


def slack_headers(secret: str, body: bytes, ts: int) -> dict[str, str]:
    return {**JSON, "X-Slack-Signature": f"v0={_hex(secret, f'v0:{ts}:'.encode() + body)}",
            "X-Slack-Request-Timestamp": str(ts)}


def generic_headers(secret: str, body: bytes, ts: int) -> dict[str, str]:
    return {**JSON, "X-Aforo-Timestamp": str(ts),
            "X-Aforo-Signature": f"v1={_hex(secret, f'{ts}.'.encode() + body)}"}
