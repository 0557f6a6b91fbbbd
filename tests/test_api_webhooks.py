"""Webhook receivers: each provider's real signature scheme (forged, stale and replayed requests),
the JSONPath mappings on realistic payloads, and webhook events through the pipeline."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import Counter
from urllib.parse import urlencode

import orjson
import pytest
from click.testing import CliRunner
from integration import env_of, raw_values
from test_api_helpers import (
    fixture_bytes,
    generic_headers,
    github_headers,
    open_api,
    raw_count,
    sendgrid_headers,
    sendgrid_keypair,
    slack_headers,
    stripe_headers,
    twilio_headers,
)

from api.webhooks.mapping import MappingError, map_events, parse_mapping, parse_payload
from api.webhooks.secrets import SecretBox, SecretKeyError
from api.webhooks.signatures import (
    SignatureError,
    SignedRequest,
    verify_generic,
    verify_github,
    verify_sendgrid,
    verify_slack,
    verify_stripe,
    verify_twilio,
)
from api.webhooks.store import add_source
from api.webhooks.templates import TEMPLATES
from cli.main import main
from config import Settings
from flows.metering import run
from schemas import exact_json
from sinks.postgres import connect

NOW = int(time.time())
URL = "https://aforo.example.com/v1/webhooks/twilio/sms?x=1"


def _req(headers: dict[str, str], body: bytes, url: str = URL) -> SignedRequest:
    return SignedRequest(url, {k.lower(): v for k, v in headers.items()}, body)


# --- signatures, without HTTP ------------------------------------------------------------------

def test_stripe_signature():
    body = fixture_bytes("stripe_invoice_paid.json")
    verify_stripe("whsec_test", _req(stripe_headers("whsec_test", body, NOW), body), NOW)
    # secret rotation: Stripe sends one v1 per active secret
    old, new = (stripe_headers(secret, body, NOW)["Stripe-Signature"].split(",")[1]
                for secret in ("whsec_old", "whsec_test"))
    verify_stripe("whsec_test", _req({"Stripe-Signature": f"t={NOW},{old},{new}"}, body), NOW)
    with pytest.raises(SignatureError, match="does not match"):
        verify_stripe("whsec_test", _req(stripe_headers("whsec_forged", body, NOW), body), NOW)
    with pytest.raises(SignatureError, match="does not match"):  # body altered after signing
        verify_stripe("whsec_test", _req(stripe_headers("whsec_test", body, NOW), body + b" "), NOW)
    with pytest.raises(SignatureError, match="tolerance"):  # replayed after the window
        verify_stripe("whsec_test", _req(stripe_headers("whsec_test", body, NOW - 301), body), NOW)
    with pytest.raises(SignatureError, match="missing"):
        verify_stripe("whsec_test", _req({}, body), NOW)


def test_twilio_signature_covers_url_and_sorted_params():
    body = fixture_bytes("twilio_status_callback.txt")
    verify_twilio("auth-token", _req(twilio_headers("auth-token", URL, body), body), NOW)
    with pytest.raises(SignatureError):  # the same request signed for another URL
        verify_twilio("auth-token", _req(twilio_headers("auth-token", URL + "&y=2", body), body), NOW)
    with pytest.raises(SignatureError):
        verify_twilio("auth-token", _req(twilio_headers("forged", URL, body), body), NOW)
    tampered = body.replace(b"NumSegments=1", b"NumSegments=9")
    with pytest.raises(SignatureError):
        verify_twilio("auth-token", _req(twilio_headers("auth-token", URL, body), tampered), NOW)


def test_sendgrid_ecdsa_signature():
    private, public = sendgrid_keypair()
    body = fixture_bytes("sendgrid_events.json")
    verify_sendgrid(public, _req(sendgrid_headers(private, body, NOW), body), NOW)
    pem = private.public_key().public_bytes(*_pem())
    verify_sendgrid(pem.decode(), _req(sendgrid_headers(private, body, NOW), body), NOW)
    other, _ = sendgrid_keypair()
    with pytest.raises(SignatureError, match="does not match"):
        verify_sendgrid(public, _req(sendgrid_headers(other, body, NOW), body), NOW)
    with pytest.raises(SignatureError, match="tolerance"):
        verify_sendgrid(public, _req(sendgrid_headers(private, body, NOW - 600), body), NOW)
    headers = sendgrid_headers(private, body, NOW)
    headers["X-Twilio-Email-Event-Webhook-Signature"] = "not base64!"
    with pytest.raises(SignatureError):
        verify_sendgrid(public, _req(headers, body), NOW)
    with pytest.raises(SignatureError, match="unreadable"):
        verify_sendgrid("not a key", _req(sendgrid_headers(private, body, NOW), body), NOW)


def _pem():
    from cryptography.hazmat.primitives import serialization
    return serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo


def test_github_signature():
    body = fixture_bytes("github_push.json")
    verify_github("gh-secret", _req(github_headers("gh-secret", body, "d-1", "push"), body), NOW)
    with pytest.raises(SignatureError):
        verify_github("gh-secret", _req(github_headers("forged", body, "d-1", "push"), body), NOW)
    with pytest.raises(SignatureError, match="sha256="):
        verify_github("gh-secret", _req({"X-Hub-Signature-256": "sha1=abc"}, body), NOW)


def test_slack_signature():
    body = fixture_bytes("slack_event_callback.json")
    verify_slack("slack-secret", _req(slack_headers("slack-secret", body, NOW), body), NOW)
    with pytest.raises(SignatureError):
        verify_slack("slack-secret", _req(slack_headers("forged", body, NOW), body), NOW)
    with pytest.raises(SignatureError, match="tolerance"):
        verify_slack("slack-secret", _req(slack_headers("slack-secret", body, NOW - 301), body), NOW)
    with pytest.raises(SignatureError, match="tolerance"):  # far in the future is no better
        verify_slack("slack-secret", _req(slack_headers("slack-secret", body, NOW + 301), body), NOW)


@pytest.mark.parametrize("timestamp", ["", "abc", "١٢٣", "9" * 40, "-5"])
def test_generic_signature_refuses_unreadable_timestamps(timestamp):
    body = b'{"id": "x"}'
    headers = generic_headers("s", body, NOW) | {"X-Aforo-Timestamp": timestamp}
    with pytest.raises(SignatureError):
        verify_generic("s", _req(headers, body), NOW)


def test_generic_signature_with_hostile_header_is_refused_not_crashed():
    body = b"{}"
    verify_generic("s", _req(generic_headers("s", body, NOW), body), NOW)
    headers = generic_headers("s", body, NOW) | {"X-Aforo-Signature": "v1=é" + "x" * 63}
    with pytest.raises(SignatureError):
        verify_generic("s", _req(headers, body), NOW)


# --- mappings ----------------------------------------------------------------------------------

def _map(provider: str, body: bytes, headers: dict[str, str] | None = None,
         content_type: str = "application/json") -> list[dict]:
    lower = {k.lower(): v for k, v in (headers or {}).items()}
    return map_events(parse_mapping(TEMPLATES[provider]), parse_payload(body, content_type), lower,
                      source=f"{provider}/src", tenant="acme", received="2026-11-30T00:00:00.000Z")


def test_templates_map_realistic_payloads():
    [stripe] = _map("stripe", fixture_bytes("stripe_invoice_paid.json"))
    assert stripe == {"specversion": "1.0", "id": "evt_1QJ8yTLkdIwHu7ixqRk0aBcD", "source": "stripe/src",
                      "type": "invoice.paid", "subject": "cust-1", "time": "2025-11-30T14:23:07.000Z",
                      "tenantid": "acme",
                      "data": {"quantity": 4200, "currency": "usd", "livemode": False,
                               "object_id": "in_1QJ8yQLkdIwHu7ixW3Zk9x2T"}}
    [twilio] = _map("twilio", fixture_bytes("twilio_status_callback.txt"),
                    content_type="application/x-www-form-urlencoded")
    assert twilio["id"] == "SM1f0e2d3c4b5a69788796a5b4c3d2e1f0/delivered"
    assert twilio["type"] == "twilio.message.delivered"
    assert twilio["subject"] == "AC3f6c0f1e2d3c4b5a69788796a5b4c3d2"
    assert twilio["time"] == "2026-11-30T00:00:00.000Z"  # no timestamp in the scheme: receipt time
    assert twilio["data"]["to"] == "+15558675310"
    sendgrid = _map("sendgrid", fixture_bytes("sendgrid_events.json"))
    assert [(e["id"], e["type"], e["subject"]) for e in sendgrid] == [
        ("rbtnWrG1DVDGGGFHFyun0A==", "delivered", "cust-2@example.com"),
        ("FOTFFO0ecsBE-zxFXfs6WA==", "open", "cust-2@example.com")]
    [github] = _map("github", fixture_bytes("github_push.json"),
                    {"X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "X-GitHub-Event": "push"})
    digest = hashlib.sha256(exact_json.dumps(exact_json.loads(fixture_bytes("github_push.json")),
                                             sort_keys=True)).hexdigest()  # of what GitHub signs
    assert (github["id"], github["type"], github["subject"]) == (digest, "push", "cust-3")
    [slack] = _map("slack", fixture_bytes("slack_event_callback.json"))
    assert (slack["id"], slack["type"], slack["subject"], slack["time"]) == (
        "Ev0PV52K21", "message", "cust-1", "2025-11-30T14:23:07.000Z")


def test_a_payload_after_a_byte_order_mark_is_read():
    body = fixture_bytes("stripe_invoice_paid.json")
    assert _map("stripe", b"\xef\xbb\xbf" + body) == _map("stripe", body)


def test_mapping_leaves_missing_attributes_out_for_the_schema_gate_to_name():
    [event] = map_events(parse_mapping({"id": "$.id", "subject": "$.nope", "data": {"n": "$.x"}}),
                         {"id": 7}, {}, source="generic/s", tenant="acme", received="2026-11-30T00:00:00Z")
    assert event == {"specversion": "1.0", "id": "7", "source": "generic/s", "time": "2026-11-30T00:00:00Z",
                     "tenantid": "acme", "data": {}}


@pytest.mark.parametrize("doc, problem", [
    ([], "JSON object"),
    ({"type": "$.type"}, "needs id"),
    ({"id": "$..id"}, "cannot read"),
    ({"id": "$.id", "colour": "$.c"}, "unknown mapping keys"),
    ({"id": "$.id", "items": "all"}, "items must be a JSONPath"),
    ({"id": "x{$.[}"}, "cannot read"),
    ({"id": "$.id", "data": {"q": 5}}, "non-empty string"),
])
def test_bad_mappings_are_refused_with_the_reason(doc, problem):
    with pytest.raises(MappingError, match=problem):
        parse_mapping(doc)


# --- through the API and the pipeline -----------------------------------------------------------

@pytest.fixture
def api_app(settings):
    yield from open_api(settings)


def _stripe_body(event_id: str) -> bytes:
    event = orjson.loads(fixture_bytes("stripe_invoice_paid.json"))
    return orjson.dumps({**event, "id": event_id, "created": int(time.time())})


@pytest.mark.integration
def test_webhooks_end_to_end(api_app):
    s, client = api_app.settings, api_app.client
    private, public = sendgrid_keypair()
    with connect(s.database_url) as conn:
        for name, provider, secret, tenant in [
            ("stripe-acme", "stripe", "whsec_test", "acme"), ("sms", "twilio", "tw-token", "acme"),
            ("mail", "sendgrid", public, "acme"), ("repos", "github", "gh-secret", "acme"),
            ("chat", "slack", "slack-secret", "acme"), ("billing-export", "generic", "g-secret", "acme")]:
            add_source(conn, name, provider, secret, tenant, None, SecretBox(s))
    now = int(time.time())

    stripe_body = _stripe_body("evt_e2e_1")
    stripe = stripe_headers("whsec_test", stripe_body, now)
    for _ in range(2):
        # the second is a replay within the window: accepted at the door, a duplicate in the ledger
        r = client.post("/v1/webhooks/stripe/stripe-acme", content=stripe_body, headers=stripe)
        assert r.status_code == 202, r.text
    produced = raw_count(s)
    refused = [
        client.post("/v1/webhooks/stripe/stripe-acme", content=stripe_body,
                    headers=stripe_headers("whsec_forged", stripe_body, now)),
        client.post("/v1/webhooks/stripe/stripe-acme", content=stripe_body,
                    headers=stripe_headers("whsec_test", stripe_body, now - 400)),
        client.post("/v1/webhooks/github/stripe-acme", content=stripe_body, headers=stripe),  # wrong provider
    ]
    assert [r.status_code for r in refused] == [401, 401, 404]
    assert refused[0].json()["error"] == "bad_signature"
    assert raw_count(s) == produced  # nothing produced for a refused request

    twilio_body = fixture_bytes("twilio_status_callback.txt")
    url = "http://testserver/v1/webhooks/twilio/sms"
    r = client.post(url, content=twilio_body, headers={
        "Content-Type": "application/x-www-form-urlencoded", **twilio_headers("tw-token", url, twilio_body)})
    assert r.status_code == 202, r.text

    sendgrid_events = orjson.loads(fixture_bytes("sendgrid_events.json"))
    sendgrid_body = orjson.dumps([{**e, "timestamp": now} for e in sendgrid_events])
    r = client.post("/v1/webhooks/sendgrid/mail", content=sendgrid_body,
                    headers=sendgrid_headers(private, sendgrid_body, now))
    assert r.status_code == 202 and r.json()["accepted"] == 2

    github_body = fixture_bytes("github_push.json")
    r = client.post("/v1/webhooks/github/repos", content=github_body,
                    headers=github_headers("gh-secret", github_body, "delivery-1", "push"))
    assert r.status_code == 202

    challenge = b'{"token": "t", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", ' \
                b'"type": "url_verification"}'
    r = client.post("/v1/webhooks/slack/chat", content=challenge,
                    headers=slack_headers("slack-secret", challenge, now))
    assert r.status_code == 200 and r.json() == {"challenge": orjson.loads(challenge)["challenge"]}
    slack_body = orjson.dumps({**orjson.loads(fixture_bytes("slack_event_callback.json")), "event_time": now})
    r = client.post("/v1/webhooks/slack/chat", content=slack_body,
                    headers={**slack_headers("slack-secret", slack_body, now), "X-Aforo-Tenant": "acme"})
    assert r.status_code == 202

    generic_body = orjson.dumps({"id": "exp-1", "type": "api.call", "subject": "cust-2",
                                 "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "data": {"route": "/x"}})
    r = client.post("/v1/webhooks/generic/billing-export", content=generic_body,
                    headers=generic_headers("g-secret", generic_body, now))
    assert r.status_code == 202
    assert client.post("/v1/webhooks/generic/billing-export", content=generic_body + b" ",
                       headers=generic_headers("g-secret", generic_body, now)).status_code == 401

    run(s, once=True)
    with connect(s.database_url) as conn:
        rows = conn.execute("SELECT source, event_id, status, reason, tier, event_time FROM ledger"
                            " ORDER BY ingested_at, raw_partition, raw_offset").fetchall()
    assert {tier for *_, tier, _t in rows} == {"webhook"}
    assert Counter(source for source, *_ in rows) == Counter({
        "stripe/stripe-acme": 2, "twilio/sms": 1, "sendgrid/mail": 2, "github/repos": 1, "slack/chat": 1,
        "generic/billing-export": 1})
    stripe_rows = [(status, reason) for src, _, status, reason, *_ in rows if src == "stripe/stripe-acme"]
    assert stripe_rows == [("accepted", "unmetered"), ("duplicate", "same_payload")]  # billed once
    generic = next(r for r in rows if r[0] == "generic/billing-export")
    assert generic[2:4] == ("accepted", None)  # an api.call of acme's cust-2: rated


def _ledger_of(s, source: str) -> list[tuple[str, str | None]]:
    with connect(s.database_url) as conn:
        return conn.execute("SELECT status, reason FROM ledger WHERE source = %s"
                            " ORDER BY ingested_at, raw_partition, raw_offset", (source,)).fetchall()


@pytest.mark.integration
def test_redeliveries_and_replays_are_duplicates_of_what_was_signed(api_app):
    """GitHub's delivery id is not signed: the same signed body under three new ids is one event
    and two duplicates of the same payload (the template maps no time, so a redelivery must get the
    first receipt's time, not its own). Twilio, which signs no time either, the same."""
    s, client = api_app.settings, api_app.client
    with connect(s.database_url) as conn:
        add_source(conn, "repos", "github", "gh-secret", "acme", None, SecretBox(s))
        add_source(conn, "sms", "twilio", "tw-token", "acme", None, SecretBox(s))
    github_body = fixture_bytes("github_push.json")
    for delivery in ("d-1", "d-2", "d-3"):
        signed = github_headers("gh-secret", github_body, delivery, "push")
        r = client.post("/v1/webhooks/github/repos", content=github_body,
                        headers=signed)
        assert r.status_code == 202, r.text
        time.sleep(0.01)  # a later receipt
    twilio_body = fixture_bytes("twilio_status_callback.txt")
    url = "http://testserver/v1/webhooks/twilio/sms"
    for _ in range(2):
        signed = twilio_headers("tw-token", url, twilio_body)
        r = client.post(url, content=twilio_body,
                        headers={"Content-Type": "application/x-www-form-urlencoded", **signed})
        assert r.status_code == 202, r.text
        time.sleep(0.01)
    run(s, once=True)
    assert _ledger_of(s, "github/repos") == [("accepted", "unmetered"), *[("duplicate", "same_payload")] * 2]
    # the account sid is no acme customer: held, and its redelivery a duplicate all the same
    assert _ledger_of(s, "twilio/sms") == [("unresolved", "unknown_customer"), ("duplicate", "same_payload")]


@pytest.mark.integration
def test_github_form_deliveries_are_read_and_other_media_types_refused(api_app):
    """GitHub's default content type is a form with the JSON in `payload`; a body the provider
    does not send is refused with 415 before anything is acknowledged."""
    s, client = api_app.settings, api_app.client
    with connect(s.database_url) as conn:
        add_source(conn, "repos", "github", "gh-secret", "acme", None, SecretBox(s))
    push = orjson.loads(fixture_bytes("github_push.json"))
    form = urlencode({"payload": orjson.dumps(push).decode()}).encode()
    signed = github_headers("gh-secret", form, "d-1", "push")
    r = client.post("/v1/webhooks/github/repos", content=form,
                    headers={**signed, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 202, r.text
    refused = [client.post("/v1/webhooks/github/repos", content=body, headers={
        **github_headers("gh-secret", body, "d-2", "push"), "Content-Type": media}) for media, body in (
            ("text/plain", fixture_bytes("github_push.json")),
            ("application/x-www-form-urlencoded", b"ref=main&after=1"),  # no payload field
            ("application/x-www-form-urlencoded", b"payload=%7Bnot+json"))]
    assert [x.status_code for x in refused] == [415, 400, 400], [x.text for x in refused]
    [raw] = raw_values(s)
    assert orjson.loads(raw)["subject"] == "cust-3"  # read from the payload: the event is attributable
    run(s, once=True)
    assert _ledger_of(s, "github/repos") == [("accepted", "unmetered")]


@pytest.mark.integration
def test_a_webhook_source_belongs_to_one_tenant(api_app):
    """X-Aforo-Tenant is not signed: a source names its tenant, and a signed request replayed under
    other tenants' names lands nowhere else."""
    s, client = api_app.settings, api_app.client
    with connect(s.database_url) as conn:
        with pytest.raises(ValueError, match="tenant"):
            add_source(conn, "shared", "slack", "slack-secret", None, None, SecretBox(s))
        add_source(conn, "chat", "slack", "slack-secret", "acme", None, SecretBox(s))
    now = int(time.time())
    body = orjson.dumps({**orjson.loads(fixture_bytes("slack_event_callback.json")), "event_time": now})
    signed = slack_headers("slack-secret", body, now)
    assert client.post("/v1/webhooks/slack/chat", content=body, headers=signed).status_code == 202
    for other in ("globex", "initech"):
        r = client.post("/v1/webhooks/slack/chat", content=body, headers={**signed, "X-Aforo-Tenant": other})
        assert r.status_code == 403, r.text
    assert [orjson.loads(raw)["tenantid"] for raw in raw_values(s)] == ["acme"]


@pytest.mark.integration
def test_webhook_secrets_are_encrypted_at_rest(api_app):
    s, client = api_app.settings, api_app.client
    with connect(s.database_url) as conn:
        add_source(conn, "billing-export", "generic", "g-secret-plain", "acme", None, SecretBox(s))
        [(stored,)] = conn.execute("SELECT secret FROM webhook_sources").fetchall()
    assert "g-secret-plain" not in stored
    key = s.home / "webhook.key"
    assert key.exists() and key.stat().st_mode & 0o777 == 0o600
    now = int(time.time())
    body = orjson.dumps({"id": "exp-1", "type": "api.call", "subject": "cust-2",
                         "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "data": {"n": 1}})
    r = client.post("/v1/webhooks/generic/billing-export", content=body,
                    headers=generic_headers("g-secret-plain", body, now))
    assert r.status_code == 202, r.text


@pytest.mark.integration
def test_a_providers_numbers_reach_the_raw_topic_exactly(api_app):
    s, client = api_app.settings, api_app.client
    with connect(s.database_url) as conn:
        add_source(conn, "stripe-acme", "stripe", "whsec_test", "acme", None, SecretBox(s))
    body = fixture_bytes("stripe_invoice_paid.json").replace(
        b'"amount": 4200,', b'"amount": 1180591620717411303424,').replace(
        b'"created": 1764512587', b'"created": %d' % int(time.time()))
    r = client.post("/v1/webhooks/stripe/stripe-acme", content=body,
                    headers=stripe_headers("whsec_test", body, int(time.time())))
    assert r.status_code == 202, r.text
    [raw] = raw_values(s)
    assert b'"quantity":1180591620717411303424' in raw


@pytest.mark.integration
def test_a_numeric_provider_id_keeps_the_text_the_provider_signed(api_app):
    """It became str(Decimal): `1e400` was the id "1E+400" and `-0` was "0". Each redelivery is
    still the same event, a duplicate."""
    s, client = api_app.settings, api_app.client
    with connect(s.database_url) as conn:
        add_source(conn, "ids", "generic", "g-secret", "acme", None, SecretBox(s))
    ids = [b"1e400", b"-0", b"1.50", b"100000000000000000000001"]
    now = int(time.time())
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    for _ in range(2):
        for event_id in ids:
            body = b'{"id": %s, "type": "api.call", "subject": "cust-1", "time": "%s"}' % (
                event_id, stamp.encode())
            signed = generic_headers("g-secret", body, now)
            r = client.post("/v1/webhooks/generic/ids", content=body, headers=signed)
            assert r.status_code == 202, r.text
            assert r.json()["events"][0]["id"] == event_id.decode()
    run(s, once=True)
    with connect(s.database_url) as conn:
        rows = conn.execute("SELECT event_id, status, reason FROM ledger ORDER BY ingested_at, raw_partition,"
                            " raw_offset").fetchall()
    assert sorted(rows) == sorted([(i.decode(), "accepted", None) for i in ids]
                                  + [(i.decode(), "duplicate", "same_payload") for i in ids])


def test_secret_box_keeps_secrets_under_its_key(tmp_path):
    from cryptography.fernet import Fernet

    box = SecretBox(Settings(home=tmp_path))
    sealed = box.seal("whsec_x")
    assert sealed.startswith("fernet:") and box.open(sealed) == "whsec_x"
    assert SecretBox(Settings(home=tmp_path)).open(sealed) == "whsec_x"  # the key kept in AFORO_HOME
    assert box.open("stored-before-0040") == "stored-before-0040"
    with pytest.raises(SecretKeyError, match="does not exist"):
        SecretBox(Settings(home=tmp_path / "elsewhere")).open(sealed)
    other = Settings(home=tmp_path, webhook_key_env=Fernet.generate_key().decode())
    with pytest.raises(SecretKeyError, match="not the one"):
        SecretBox(other).open(sealed)
    with pytest.raises(SecretKeyError, match="not a Fernet key"):
        SecretBox(Settings(home=tmp_path, webhook_key_env="short")).open(sealed)
    assert not (tmp_path / "elsewhere" / "webhook.key").exists()  # a reader never makes up a key


@pytest.mark.integration
def test_migrate_encrypts_plaintext_secrets_and_a_wrong_key_is_a_clear_503(settings):
    from cryptography.fernet import Fernet

    with connect(settings.database_url) as conn:
        add_source(conn, "billing-export", "generic", "g-secret", "acme", None, SecretBox(settings))
        conn.execute("UPDATE webhook_sources SET secret = 'g-secret'")  # as stored before 0040
    result = CliRunner().invoke(main, ["migrate"], env=env_of(settings))
    assert result.exit_code == 0 and "encrypted 1 webhook secrets" in result.output, result.output
    with connect(settings.database_url) as conn:
        [(stored,)] = conn.execute("SELECT secret FROM webhook_sources").fetchall()
    assert stored.startswith("fernet:") and SecretBox(settings).open(stored) == "g-secret"
    body = orjson.dumps({"id": "e-1", "type": "api.call", "subject": "c", "time": "2026-12-01T00:00:00Z"})
    wrong = dataclasses.replace(settings, webhook_key_env=Fernet.generate_key().decode())
    for api in open_api(wrong):
        r = api.client.post("/v1/webhooks/generic/billing-export", content=body,
                            headers=generic_headers("g-secret", body, int(time.time())))
        assert r.status_code == 503 and "not the one" in r.json()["message"], r.text
        assert "g-secret" not in r.text
