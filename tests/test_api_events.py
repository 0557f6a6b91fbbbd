"""POST /v1/events and GET /v1/events/{source}/{id}: structure checks, tenants, keys, limits,
acknowledgements, and events through the pipeline with their tier in the ledger."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import socket
from datetime import UTC, datetime

import orjson
import pytest
from integration import raw_values
from starlette.testclient import TestClient
from test_api_helpers import new_key, open_api, raw_count

from api.app import create_app
from api.cache import TtlCache
from api.cloudevents import admit, admit_batch, batch_of, parse_events, to_rfc3339
from api.errors import ApiError
from api.jsonpath import PathError, find, first
from api.keys import key_id_of, revoke_key
from api.keys import new_key as make_key
from api.limits import LocalRateLimiter, check_depth, gunzip
from api.services import ApiOptions
from flows.metering import run
from sinks.postgres import connect


def _event(i: int = 1, **extra) -> dict:
    return {"specversion": "1.0", "id": f"e-{i}", "source": "sdk/test", "type": "api.call",
            "subject": "cust-1", "time": datetime.now(UTC).isoformat(), **extra}


# --- plain functions ---------------------------------------------------------------------------

def test_admit_fills_the_tenant_and_refuses_another():
    assert admit({"id": "x"}, "acme", b'{"id" : "x"}') == b'{"tenantid":"acme","id" : "x"}'
    assert admit({}, "acme", b"{ }") == b'{"tenantid":"acme" }'
    assert admit({"id": "x"}, "acme") == b'{"tenantid":"acme","id":"x"}'
    assert admit({"id": "x", "tenantid": "acme"}, "acme", b"as sent") == b"as sent"
    assert admit({"id": "x"}, None, b"as sent") == b"as sent"  # the CLI without --tenant
    with pytest.raises(PermissionError, match="globex"):
        admit({"tenantid": "globex"}, "acme")
    with pytest.raises(PermissionError, match="None"):
        admit({"tenantid": None}, "acme")
    with pytest.raises(ValueError, match="JSON object"):
        admit([1], "acme")


def test_each_events_bytes_on_either_path():
    compact = b'[{"a":1},{"b":"x"}] '  # orjson writes it back byte for byte: its fast path
    assert parse_events(compact) == ([{"a": 1}, {"b": "x"}], [b'{"a":1}', b'{"b":"x"}'])
    exact = b'[{"a":1180591620717411303424},{"b":1.10}]'  # orjson would write these back otherwise
    assert parse_events(exact)[1] == [b'{"a":1180591620717411303424}', b'{"b":1.10}']
    assert parse_events(b' {"c": 1e400} ')[1] == [b'{"c": 1e400}']
    for broken in (b"[" * 40 + b"]" * 40, b"[1,]", b'{"a": NaN}', b"\xff"):
        with pytest.raises(ApiError) as refused:
            parse_events(broken)
        assert refused.value.http_status == 400


def test_a_batch_is_refused_whole_naming_each_bad_event():
    def admitted(events):
        return admit_batch(events, [orjson.dumps(e) for e in events], "acme")

    with pytest.raises(ApiError) as refused:
        admitted([_event(1), 7, _event(3, tenantid="globex"), "x"])
    assert refused.value.http_status == 400
    assert [e["index"] for e in refused.value.extra["events"]] == [1, 3]
    with pytest.raises(ApiError) as foreign:
        admitted([_event(1), _event(2, tenantid="globex")])
    assert foreign.value.http_status == 403 and foreign.value.extra["events"][0]["index"] == 1


@pytest.mark.parametrize("doc, content_type, status", [
    (5, "application/json", 400), ([], "application/json", 400), ([{}], "application/cloudevents+json", 400),
    ({}, "application/cloudevents-batch+json", 400), ([{}] * 1001, "application/json", 413),
])
def test_batch_shapes(doc, content_type, status):
    with pytest.raises(ApiError) as refused:
        batch_of(doc, content_type)
    assert refused.value.http_status == status


def test_jsonpath_subset():
    doc = {"a": {"b": [1, {"c": 2}]}, "x-y": 3, "Status Code": 200, "list": [{"n": 1}, {"n": 2}]}
    assert first(doc, "$.a.b[1].c") == 2
    assert first(doc, "$['x-y']") == 3 and first(doc, '$["Status Code"]') == 200
    assert find(doc, "$.list[*].n") == [1, 2] and find(doc, "$") == [doc]
    assert first(doc, "$.a.missing") is None and first(doc, "$.a.b[9]") is None
    for bad in ("a.b", "$..a", "$.a[", "$[-1]"):
        with pytest.raises(PathError):
            find(doc, bad)


def test_limits():
    check_depth({"a": [[1]]}, max_depth=3)
    with pytest.raises(ValueError, match="deeper"):
        check_depth({"a": [[{}]]}, max_depth=3)
    assert gunzip(gzip.compress(b"x" * 100), 100) == b"x" * 100
    with pytest.raises(ValueError, match="more than"):
        gunzip(gzip.compress(b"\0" * 10_000_000), 1000)  # a small bomb is refused, not inflated
    now = [0.0]
    limiter = LocalRateLimiter(rate=2, burst=3, clock=lambda: now[0])
    for _ in range(3):
        limiter.check("k")
    with pytest.raises(ApiError) as limited:
        limiter.check("k")
    assert limited.value.http_status == 429 and limited.value.headers == {"Retry-After": "1"}
    limiter.check("other")  # per source
    now[0] = 0.5
    limiter.check("k")  # one token back after half a second at 2/s


def test_times():
    assert to_rfc3339(1764512587) == "2025-11-30T14:23:07.000Z"
    assert to_rfc3339(1764512587412) == "2025-11-30T14:23:07.412Z"
    assert to_rfc3339("1764512587") == "2025-11-30T14:23:07.000Z"
    assert to_rfc3339("2026-01-01T00:00:00Z") == "2026-01-01T00:00:00Z"
    assert to_rfc3339(10**30) == str(10**30)  # the timestamp gate rejects it with its reason


def test_key_format():
    key_id, key = make_key()
    assert key_id_of(key) == key_id and key_id_of(key + "x") is None and key_id_of("afk_zz") is None


async def _cache_sequence() -> list[str]:
    calls = []

    async def lookup(name):
        calls.append(name)
        return name.upper() if name != "missing" else None

    now = [0.0]
    cache = TtlCache(lookup, ttl_s=5, clock=lambda: now[0])
    assert [await cache.get("a"), await cache.get("a"), await cache.get("missing")] == ["A", "A", None]
    now[0] = 6
    await cache.get("a")
    return calls


def test_cache_keeps_hits_for_its_ttl_and_never_misses():
    assert asyncio.run(_cache_sequence()) == ["a", "missing", "a"]


# --- through the API and the pipeline -----------------------------------------------------------

@pytest.fixture
def api_app(settings):
    yield from open_api(settings)


@pytest.mark.integration
def test_events_end_to_end_with_tier_and_provenance(api_app):
    client, s = api_app.client, api_app.settings
    single = client.post("/v1/events", content=orjson.dumps(_event(1)),
                         headers={**api_app.auth, "Content-Type": "application/cloudevents+json"})
    assert single.status_code == 202, single.text
    [receipt] = single.json()["events"]
    assert receipt["id"] == "e-1" and receipt["partition"] is not None and receipt["offset"] is not None
    batch = [_event(i, tenantid="acme") for i in range(2, 102)]
    r = client.post("/v1/events", content=orjson.dumps(batch),
                    headers={**api_app.auth, "Content-Type": "application/cloudevents-batch+json"})
    assert r.status_code == 202 and r.json()["accepted"] == 100
    r = client.post("/v1/events", content=gzip.compress(orjson.dumps([_event(102), _event(1)])),
                    headers={**api_app.auth, "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 202  # e-1 again: a retry the pipeline marks duplicate
    assert client.get("/v1/events/sdk/test/e-1", headers=api_app.auth).status_code == 404  # not processed yet

    run(s, once=True)

    with connect(s.database_url) as conn:
        rows = conn.execute("SELECT tier, status, count(*) FROM ledger GROUP BY 1, 2 ORDER BY 2").fetchall()
    assert rows == [("rest", "accepted", 102), ("rest", "duplicate", 1)]
    status = client.get("/v1/events/sdk/test/e-1", headers=api_app.auth).json()
    assert status["status"] == "accepted" and status["id"] == "e-1" and status["source"] == "sdk/test"
    records = status["records"]
    assert [(r["status"], r["tier"]) for r in records] == [("accepted", "rest"), ("duplicate", "rest")]
    assert records[0]["raw_partition"] == receipt["partition"]
    assert records[0]["raw_offset"] == receipt["offset"]
    assert orjson.loads(records[0]["raw"])["tenantid"] == "acme"  # filled from the key
    # another tenant's key sees nothing of acme's events
    _, globex_key = new_key(s, "globex")
    globex = {"Authorization": f"Bearer {globex_key}"}
    assert client.get("/v1/events/sdk/test/e-1", headers=globex).status_code == 404


@pytest.mark.integration
def test_an_id_holding_a_slash_is_found_sent_encoded(api_app):
    """The MCP proxy's ids are `session/request`: the guide and the SDKs send them as %2F."""
    client, s = api_app.client, api_app.settings
    sent = client.post("/v1/events", content=orjson.dumps([_event(source="mcp/proxy", id="sess-9/7"),
                                                           _event(source="mcp/proxy/sess-9", id="7")]),
                       headers={**api_app.auth, "Content-Type": "application/cloudevents-batch+json"})
    assert sent.status_code == 202, sent.text
    run(s, once=True)
    for path, source, event_id in (("/v1/events/mcp/proxy/sess-9%2F7", "mcp/proxy", "sess-9/7"),
                                   ("/v1/events/mcp/proxy/sess-9/7", "mcp/proxy/sess-9", "7")):
        found = client.get(path, headers=api_app.auth)
        assert found.status_code == 200, found.text
        assert (found.json()["source"], found.json()["id"]) == (source, event_id)


# Numbers a binary float cannot hold: 2**70, 19 significant digits, beyond a double's range both
# ways; pretty-printed, with an escape and a non-ASCII character the encoder would rewrite.
_EXACT = ('{"specversion": "1.0", "id": "exact", "source": "sdk/test", "type": "llm.completion",\n'
          '   "subject": "cust-1", "time": "2026-12-01T00:00:00Z", "tenantid": "acme",\n'
          '   "data": {"tokens": 1180591620717411303424, "cost": 12345678901234567.89, "tiny": 1E-400,'
          ' "huge": 1e400, "note": "caf\\u00e9 \u2615", "zero": -0.0}}').encode()
_NO_TENANT = b'{ "id": "no-tenant", "specversion": "1.0", "source": "sdk/test", "type": "api.call",' \
             b' "subject": "cust-1", "time": "2026-12-01T00:00:00Z", "data": {"n": 0.10}}'


@pytest.mark.integration
def test_each_raw_record_is_the_bytes_the_client_sent_for_that_event(api_app):
    """No number passes through a binary float: a batch's events are produced as their own slices
    of the body; only a missing tenantid is added (first, from the key)."""
    client, s = api_app.client, api_app.settings
    batch = client.post("/v1/events", content=b"[\n  " + _EXACT + b" ,\n\t" + _NO_TENANT + b"\n]",
                        headers={**api_app.auth, "Content-Type": "application/cloudevents-batch+json"})
    assert batch.status_code == 202, batch.text
    single = client.post("/v1/events", content=b"\n " + _EXACT.replace(b'"exact"', b'"single"') + b"\n",
                         headers={**api_app.auth, "Content-Type": "application/cloudevents+json"})
    assert single.status_code == 202, single.text
    assert sorted(value for value in raw_values(s)) == sorted([
        _EXACT, b'{"tenantid":"acme", "id": "no-tenant"' + _NO_TENANT.split(b'"no-tenant"', 1)[1],
        _EXACT.replace(b'"exact"', b'"single"')])


@pytest.mark.integration
def test_a_byte_order_mark_before_the_body_is_ignored_and_never_produced(api_app):
    """RFC 8259 lets a reader ignore it, as uploads did: here it was a 400 ("Expecting value")."""
    client, s = api_app.client, api_app.settings
    single = orjson.dumps(_event(8, tenantid="acme"), option=orjson.OPT_INDENT_2)
    r = client.post("/v1/events", content=b"\xef\xbb\xbf" + single,
                    headers={**api_app.auth, "Content-Type": "application/cloudevents+json"})
    assert r.status_code == 202, r.text
    element = orjson.dumps(_event(7))
    r = client.post("/v1/events", content=b"\xef\xbb\xbf[" + element + b"]",
                    headers={**api_app.auth, "Content-Type": "application/json"})
    assert r.status_code == 202, r.text
    assert sorted(raw_values(s)) == sorted([single, b'{"tenantid":"acme",' + element[1:]])
    run(s, once=True)
    with connect(s.database_url) as conn:
        rows = conn.execute("SELECT event_id, status, reason FROM ledger ORDER BY 1").fetchall()
    assert rows == [("e-7", "accepted", None), ("e-8", "accepted", None)]


@pytest.mark.integration
def test_an_id_that_is_not_a_string_gets_a_receipt_and_its_reason_in_the_ledger(api_app):
    """The exact reader holds such a number as a Decimal: its receipt was a 500 after the event
    had been produced. A receipt names an id only when it is one (a string)."""
    client, s = api_app.client, api_app.settings
    numbers = [b"1e400", b"123456789012345678901", b"1.5"]
    bodies = [orjson.dumps(_event(0)).replace(b'"e-0"', n) for n in numbers]
    r = client.post("/v1/events", content=b"[" + b", ".join(bodies) + b"]",
                    headers={**api_app.auth, "Content-Type": "application/json"})
    assert r.status_code == 202, r.text
    assert [(x["index"], x["id"], x["source"]) for x in r.json()["events"]] == [
        (0, None, "sdk/test"), (1, None, "sdk/test"), (2, None, "sdk/test")]
    assert sorted(raw_values(s)) == sorted(b'{"tenantid":"acme",' + b[1:] for b in bodies)
    run(s, once=True)
    with connect(s.database_url) as conn:
        rows = conn.execute("SELECT status, reason, detail, event_id FROM ledger ORDER BY 1").fetchall()
    assert rows == [("rejected", "schema", "attribute 'id' must be a string", None)] * 3


@pytest.mark.integration
def test_a_client_side_door_names_its_tier(api_app):
    """The MCP proxy and the SDKs deliver through POST /v1/events and name themselves in a header
    of their own; their events get their tier (the MCP proxy's were recorded as rest)."""
    client, s = api_app.client, api_app.settings
    headers = {**api_app.auth, "Content-Type": "application/json"}
    for i, named in enumerate(({"Aforo-MCP-Proxy": "mcp-proxy/0.1.0"}, {"Aforo-SDK": "python/0.1.0"}, {})):
        r = client.post("/v1/events", content=orjson.dumps(_event(i)), headers={**headers, **named})
        assert r.status_code == 202, r.text
    run(s, once=True)
    with connect(s.database_url) as conn:
        tiers = conn.execute("SELECT event_id, tier FROM ledger ORDER BY event_id").fetchall()
    assert tiers == [("e-0", "mcp"), ("e-1", "sdk"), ("e-2", "rest")]


@pytest.mark.integration
def test_refused_requests_produce_nothing(api_app):
    client, s = api_app.client, api_app.settings
    auth_json = {**api_app.auth, "Content-Type": "application/json"}

    def post(body: bytes, headers: dict[str, str] = auth_json):
        return client.post("/v1/events", content=body, headers=headers)

    _, revoked_key = new_key(s, "acme")
    with connect(s.database_url) as conn:
        revoke_key(conn, key_id_of(revoked_key))
    one = orjson.dumps(_event())
    cases = {
        "not json": (post(b"{nope"), 400),
        "scalar in batch": (post(b'[{"id": "1"}, 5]'), 400),
        "too deep": (post(b'{"data":' * 40 + b"1" + b"}" * 40), 400),
        "lone surrogate": (post(one.replace(b'"e-1"', b'"e-\\ud800"')), 400),
        "surrogate in a batch": (post(b"[" + one + b", " + one.replace(b"cust-1", b"\\udc00") + b"]"), 400),
        "other tenant": (post(orjson.dumps([_event(1), _event(2, tenantid="globex")])), 403),
        "no key": (post(one, {"Content-Type": "application/json"}), 401),
        "unknown key": (post(one, {**auth_json, "Authorization": f"Bearer afk_{'0' * 16}_{'A' * 43}"}), 401),
        "revoked key": (post(one, {**auth_json, "Authorization": f"Bearer {revoked_key}"}), 401),
        "too large": (post(b"[" + b" " * (1024 * 1024) + b"]"), 413),
        "too many": (post(orjson.dumps([_event(i) for i in range(1001)])), 413),
        "media type": (post(one, {**api_app.auth, "Content-Type": "text/plain"}), 415),
        "bad gzip": (post(b"not gzip", {**auth_json, "Content-Encoding": "gzip"}), 400),
        "unknown route": (client.get("/v1/nothing", headers=api_app.auth), 404),
    }
    for name, (response, status) in cases.items():
        assert response.status_code == status, (name, response.text)
        body = response.json()
        assert body["error"] and body["message"], name
    assert cases["other tenant"][0].json()["events"][0]["index"] == 1
    assert "lone UTF-16 surrogate" in cases["surrogate in a batch"][0].json()["message"]
    assert raw_count(s) == 0


@pytest.mark.integration
def test_rate_limit_answers_429_with_retry_after(settings):
    for limited in open_api(settings, ApiOptions(rate=0.1, burst=2)):
        statuses = [limited.client.post("/v1/events", content=orjson.dumps(_event(i)), headers={
            **limited.auth, "Content-Type": "application/json"}) for i in range(3)]
        assert [r.status_code for r in statuses] == [202, 202, 429]
        assert int(statuses[2].headers["Retry-After"]) >= 1 and statuses[2].json()["error"] == "rate_limited"


@pytest.mark.integration
def test_a_broker_that_does_not_acknowledge_gets_503_naming_the_events(settings):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    down = dataclasses.replace(settings, kafka_bootstrap_env=dead)
    _, key = new_key(settings, "acme")
    numeric_id = orjson.dumps(_event(3)).replace(b'"e-3"', b"1e400")  # a Decimal: was a 500
    body = orjson.dumps([_event(1), _event(2)])[:-1] + b"," + numeric_id + b"]"
    with TestClient(create_app(down, ApiOptions(delivery_timeout_s=1.5))) as client:
        r = client.post("/v1/events", content=body,
                        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"] == "not_acknowledged" and body["accepted"] == []
    assert [(m["index"], m["id"]) for m in body["not_acknowledged"]] == [(0, "e-1"), (1, "e-2"), (2, None)]
