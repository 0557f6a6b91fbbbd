"""Gateway adapters on each gateway's documented log shapes, and gateway events through the pipeline."""

from __future__ import annotations

import base64
import gzip
import time
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from integration import raw_values
from test_api_helpers import fixture_bytes, open_api

from api.cloudevents import encode
from api.gateways import FORMATS, ExportError, export_events
from flows.metering import run
from schemas import exact_json
from sinks.postgres import connect

RECEIVED = "2026-11-30T00:00:00.000Z"


def _events(gateway: str, doc: object) -> list[dict]:
    return export_events(FORMATS[gateway], doc, tenant="acme", source=f"gateway/{gateway}", received=RECEIVED)


def _fixture(name: str) -> object:
    return exact_json.loads(fixture_bytes(name))


def _firehose(*records: bytes) -> dict:
    return {"requestId": "ed4acda5-034f-9f42-bba1-f29aea6d7d8f", "timestamp": 1764512587000,
            "records": [{"data": base64.b64encode(r).decode()} for r in records]}


def test_kong_http_log():
    [event] = _events("kong", _fixture("kong_http_log.json"))
    assert event == {
        "specversion": "1.0", "id": "2f6946328ffc4946b8c9120704a4a155", "source": "gateway/kong",
        "type": "api.call", "subject": "cust-1", "time": "2025-11-30T14:23:07.000Z", "tenantid": "acme",
        "data": {"method": "GET", "route": "search-route", "path": "/v2/search", "status": 200,
                 "latency_ms": 173, "api": "search", "gateway": "kong"}}
    # with queue.max_batch_size > 1 the plugin posts an array
    assert len(_events("kong", [_fixture("kong_http_log.json")] * 3)) == 3


def test_aws_access_log_direct_and_through_firehose_and_cloudwatch():
    line = fixture_bytes("aws_access_log.json")
    [direct] = _events("aws", orjson.loads(line))
    assert direct["id"] == "c6af9ac6-7b61-11e6-9a41-93e8deadbeef" and direct["subject"] == "cust-2"
    assert direct["time"] == "2025-11-30T14:23:07.412Z"
    assert direct["data"] == {"method": "POST", "route": "/orders/{id}", "path": "/prod/orders/42",
                              "status": 201, "latency_ms": 48, "api": "a1b2c3d4e5", "gateway": "aws"}
    compact = orjson.dumps(orjson.loads(line))
    assert _events("aws", _firehose(compact + b"\n", compact)) == [direct, direct]
    subscription = gzip.compress(orjson.dumps({
        "messageType": "DATA_MESSAGE", "owner": "123456789012", "logGroup": "API-Gateway-Execution-Logs",
        "logStream": "stage", "subscriptionFilters": ["aforo"],
        "logEvents": [{"id": "3195310660696698337880902507980421114328961542429", "timestamp": 1764512587412,
                       "message": compact.decode()}]}))
    assert _events("aws", _firehose(subscription)) == [direct]
    control = gzip.compress(orjson.dumps({"messageType": "CONTROL_MESSAGE", "logEvents": []}))
    assert _events("aws", _firehose(control)) == []
    # the common log format of $context.requestTime when no epoch is logged
    clf = {k: v for k, v in orjson.loads(line).items() if k != "requestTimeEpoch"}
    assert _events("aws", clf)[0]["time"] == "2026-11-30T14:23:07+00:00"


def test_apigee_analytics_record():
    [event] = _events("apigee", _fixture("apigee_analytics.json"))
    assert (event["id"], event["subject"], event["time"]) == (
        "rrt-0b3a9f5c2d7e4a8f1-c-ea-12345-678901-1", "cust-3", "2025-11-30T14:23:07.412Z")
    assert event["data"] == {"method": "GET", "route": "/orders/42", "path": "/orders/v1/orders/42",
                             "status": 200, "latency_ms": 75, "api": "orders-v1", "gateway": "apigee"}
    flow_variables = {"messageid": "m-1", "request.verb": "POST", "request.uri": "/v1/x?y=1",
                      "response.status.code": "503", "client.received.start.timestamp": "1764512587000",
                      "system.timestamp": "1764512587250", "developer.app.name": "cust-3"}
    [callout] = _events("apigee", flow_variables)
    assert callout["data"]["status"] == 503 and callout["data"]["latency_ms"] == 250
    assert callout["data"]["path"] == "/v1/x" and callout["subject"] == "cust-3"


def test_azure_apim_gateway_logs():
    [event] = _events("azure-apim", _fixture("azure_apim_gateway_logs.json"))
    assert (event["id"], event["subject"], event["time"]) == (
        "3f1a9b2c-1d4e-4f6a-8b7c-9d0e1f2a3b4c", "cust-a", "2026-11-30T14:23:07.4120000Z")
    assert event["data"] == {"method": "GET", "route": "retrieve-resource", "path": "/echo/resource",
                             "status": 200, "latency_ms": 243, "api": "echo-api", "gateway": "azure-apim"}
    pascal = {"CorrelationId": "c-2", "TimeGenerated": "2026-11-30T14:23:07Z", "Method": "POST",
              "Url": "https://contoso.azure-api.net/orders", "ResponseCode": 201, "TotalTime": 12,
              "ApimSubscriptionId": "cust-b", "ApiId": "orders", "OperationId": "create"}
    [policy] = _events("azure-apim", pascal)
    assert (policy["subject"], policy["data"]["route"], policy["data"]["status"]) == ("cust-b", "create", 201)


def test_mulesoft_analytics_events():
    [event] = _events("mulesoft", _fixture("mulesoft_analytics_events.json"))
    assert (event["id"], event["subject"], event["time"]) == (
        "5d6e7f80-aa11-4b22-8c33-9d44e55f6677", "cust-b", "2026-11-30T14:23:07.412Z")
    assert event["data"] == {"method": "GET", "route": "/api/orders/42", "path": "/api/orders/42",
                             "status": 200, "latency_ms": 69, "api": "orders-api", "gateway": "mulesoft"}
    exported = {"Message ID": "m-9", "Verb": "PUT", "Resource Path": "/api/orders/7", "Status Code": 204,
                "Response Time": 31, "Timestamp": "2026-11-30T14:23:07.412Z", "Application Name": "cust-a"}
    [report] = _events("mulesoft", {"events": [exported]})
    assert (report["id"], report["subject"], report["data"]["latency_ms"]) == ("m-9", "cust-a", 31)


def test_entries_without_an_id_get_a_deterministic_one():
    entry = {"request": {"method": "GET", "uri": "/x"}, "response": {"status": 200}}
    first, second = _events("kong", [entry, dict(entry)])
    assert first["id"] == second["id"] and first["id"].startswith("kong-")  # a resend is a duplicate
    assert "subject" not in first  # no consumer logged: the schema gate names it in the ledger


@pytest.mark.parametrize("gateway, doc, problem", [
    ("kong", [{"request": {}}, 5], "entry 1 is not a JSON object"),
    ("aws", {"records": [{"data": "%%%"}]}, "base64"),
    ("aws", {"records": [{"nodata": 1}]}, "base64 'data'"),
    ("aws", _firehose(b"not json"), "not JSON"),
    ("aws", _firehose(b"\x1f\x8b broken gzip"), "gzip"),
    ("apigee", [{"a": orjson.loads(b"[" * 40 + b"]" * 40)}], "deeper"),
])
def test_malformed_exports_are_refused_whole(gateway, doc, problem):
    with pytest.raises(ExportError, match=problem):
        _events(gateway, doc)


def test_firehose_records_are_bounded_together_as_they_are_read():
    """Each record was inflated up to 16 MiB and split whole, and the 10,000 entries were counted
    after all of them: an 80 KB delivery of four records, 20 million `{}` lines, held the event
    loop for a minute and 1.5 GB before its 400."""
    ten_mib = gzip.compress(b"\n" * (10 * 1024 * 1024))
    with pytest.raises(ExportError, match="inflates to at most 16777216 bytes"):
        _events("aws", _firehose(ten_mib, ten_mib))
    with pytest.raises(ExportError, match="at most 10000 entries"):
        _events("aws", _firehose(gzip.compress(b"{}\n" * 6000), gzip.compress(b"{}\n" * 6000)))
    # a line ends at "\n" only: U+2028 is a character a JSON string may hold (the line was split)
    line = orjson.dumps({**_fixture("aws_access_log.json"), "path": "/a\u2028b"})
    assert _events("aws", _firehose(line))[0]["data"]["path"] == "/a\u2028b"


@pytest.mark.parametrize("value", ["", "-", None, True, {"a": 1}, "NaN", "1e999", "abc", 1e300])
def test_odd_field_values_never_break_the_mapping(value):
    entry = {"request": {"method": value, "uri": value, "id": value}, "response": {"status": value},
             "latencies": {"request": value}, "started_at": value, "consumer": {"username": value}}
    [event] = _events("kong", entry)
    encode(event)


def test_numbers_stay_exact_from_the_log_to_the_event():
    [event] = _events("kong", exact_json.loads(_EXACT_KONG))
    assert b'"latency_ms":12345678901234567.89' in encode(event)
    flow_variables = {"messageid": "m-2", "client.received.start.timestamp": "1764512587000.1234567",
                      "system.timestamp": "1764512587250.1234568", "developer.app.name": "cust-3"}
    [callout] = _events("apigee", flow_variables)  # a float difference gives 250.00000009999...
    assert callout["data"]["latency_ms"] == Decimal("250.0000001")
    iso = {"messageid": "m-3", "client.received.start.timestamp": "2026-11-30T14:23:07.000001Z",
           "system.timestamp": "2026-11-30T14:23:07.250002+00:00", "developer.app.name": "cust-3"}
    assert _events("apigee", iso)[0]["data"]["latency_ms"] == Decimal("250.001")


# --- through the API and the pipeline -----------------------------------------------------------

_EXACT_KONG = (b'{"request": {"id": "exact-1", "method": "GET", "uri": "/x"}, "response": {"status": 200},'
               b' "consumer": {"username": "cust-1"}, "started_at": 1764512587412,'
               b' "latencies": {"request": 12345678901234567.89}}')

@pytest.fixture
def api_app(settings):
    yield from open_api(settings)


def _now_ms() -> int:
    return int(time.time() * 1000)


@pytest.mark.integration
def test_a_logged_number_reaches_the_raw_topic_exactly(api_app):
    r = api_app.client.post("/v1/gateways/kong", content=_EXACT_KONG,
                            headers={**api_app.auth, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    [raw] = raw_values(api_app.settings)
    assert b'"latency_ms":12345678901234567.89' in raw


@pytest.mark.integration
def test_every_firehose_reply_carries_its_request_id_timestamp_and_error(api_app):
    """Firehose treats a reply without requestId and timestamp as a 500 with no body: its error
    output would never show why Aforo refused a delivery."""
    client = api_app.client
    firehose = {"X-Amz-Firehose-Request-Id": "req-9", "Content-Type": "application/json"}
    keyed = {**firehose, "X-Amz-Firehose-Access-Key": api_app.key}
    replies = {
        401: client.post("/v1/gateways/aws", content=b"{}", headers=firehose),
        400: client.post("/v1/gateways/aws", content=b'{"records": [{"nodata": 1}]}', headers=keyed),
        415: client.post("/v1/gateways/aws", content=b"{}", headers={**keyed, "Content-Encoding": "br"}),
        413: client.post("/v1/gateways/aws", content=b" " * (16 * 1024 * 1024 + 1), headers=keyed),
    }
    for status, reply in replies.items():
        body = reply.json()
        assert reply.status_code == status, reply.text
        assert body["requestId"] == "req-9" and isinstance(body["timestamp"], int), reply.text
        assert body["errorMessage"] == body["message"] and body["error"], reply.text
    assert "X-Amz-Firehose-Access-Key" in replies[401].json()["errorMessage"]
    assert "Authorization: Bearer" not in replies[401].json()["errorMessage"]
    assert replies[400].json()["errorMessage"].startswith("AWS API Gateway")
    # the same refusals without Firehose's header keep the API's own shape
    plain = client.post("/v1/gateways/aws", content=b"{}", headers={"Content-Type": "application/json"})
    assert plain.status_code == 401 and "requestId" not in plain.json()
    assert "Authorization: Bearer" in plain.json()["message"]


@pytest.mark.integration
def test_gateway_exports_end_to_end(api_app):
    client, s, auth = api_app.client, api_app.settings, api_app.auth
    now_iso = datetime.now(UTC).isoformat()
    kong = {**_fixture("kong_http_log.json"), "started_at": _now_ms()}
    aws = orjson.dumps({**_fixture("aws_access_log.json"), "requestTimeEpoch": _now_ms()})
    apigee = [{**e, "client_received_start_timestamp": _now_ms(), "client_sent_end_timestamp": _now_ms() + 5}
              for e in _fixture("apigee_analytics.json")]
    azure = {"records": [{**r, "time": now_iso} for r in _fixture("azure_apim_gateway_logs.json")["records"]]}
    mule = [{**e, "received_ts": now_iso, "replied_ts": now_iso}
            for e in _fixture("mulesoft_analytics_events.json")]

    assert client.post("/v1/gateways/kong", json=kong, headers=auth).status_code == 200
    firehose = client.post("/v1/gateways/aws", content=orjson.dumps(_firehose(aws)), headers={
        "X-Amz-Firehose-Access-Key": api_app.key, "X-Amz-Firehose-Request-Id": "req-1",
        "Content-Type": "application/json"})
    assert firehose.status_code == 200 and firehose.json()["requestId"] == "req-1"
    assert isinstance(firehose.json()["timestamp"], int)
    assert client.post("/v1/gateways/apigee", json=apigee, headers=auth).status_code == 200
    assert client.post("/v1/gateways/azure-apim", json=azure, headers=auth).status_code == 200
    r = client.post(f"/v1/gateways/mulesoft/{api_app.key}/v2/analytics/events", content=gzip.compress(
        orjson.dumps(mule)), headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert client.post("/v1/gateways/kong", json=kong, headers=auth).status_code == 200  # resent: a duplicate
    refused = [client.post("/v1/gateways/kong", json=kong),
               client.post("/v1/gateways/mulesoft/not-a-key/v2/analytics/events", json=mule),
               client.post("/v1/gateways/nginx", json=kong, headers=auth),
               client.post("/v1/gateways/kong", json=[kong, 1], headers=auth)]
    assert [x.status_code for x in refused] == [401, 401, 400, 400]

    run(s, once=True)
    with connect(s.database_url) as conn:
        rows = conn.execute("SELECT source, subject, type, tier, status, reason FROM ledger"
                            " ORDER BY ingested_at, raw_offset").fetchall()
    assert {(tier, type_) for _, _, type_, tier, *_ in rows} == {("gateway", "api.call")}
    assert sorted((source, status, reason) for source, _, _, _, status, reason in rows) == [
        ("gateway/apigee", "accepted", None), ("gateway/aws", "accepted", None),
        ("gateway/azure-apim", "unresolved", "unknown_customer"),  # globex's customer under an acme key
        ("gateway/kong", "accepted", None), ("gateway/kong", "duplicate", "same_payload"),
        ("gateway/mulesoft", "unresolved", "unknown_customer")]
