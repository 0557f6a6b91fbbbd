"""API-gateway adapters: each gateway's native request-log export -> one `api.call` event per
logged request (method, route, path, status, latency, consumer as the subject). Tier `gateway`.

Each gateway is data, not code: how to unwrap its export's envelope, and for each event field
the JSONPaths where that gateway's documented log format keeps it (first present wins). Field
names follow each gateway's own documentation, so the gateway is configured, not programmed.

Exports are read with exact numbers (schemas.exact_json) and numbers stay exact on the way into
the event: a latency of 12345678901234567.89 ms is written as logged, never through a float.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, Inexact, InvalidOperation, localcontext
from urllib.parse import urlsplit

from api.cloudevents import cloudevent, to_rfc3339
from api.jsonpath import first
from api.limits import MIB, check_depth, gunzip
from schemas import exact_json
from schemas.exact_json import JsonError

EVENT_TYPE = "api.call"
MAX_ENTRIES = 10_000
MAX_EXPORT_BYTES = 16 * MIB  # a body, and what its records inflate to; Firehose buffers up to 64 MiB
_ABSENT = (None, "", "-")  # AWS writes "-" for an empty $context variable


class ExportError(ValueError):
    """The export is not in the gateway's shape (the API answers 400 naming the problem)."""


@dataclass(frozen=True)
class GatewayFormat:
    name: str
    title: str  # what the gateway and its export are called, for messages
    entries: Callable[[object], list[object]]  # the logged requests inside one export body
    paths: dict[str, tuple[str, ...]]  # event field -> candidate JSONPaths
    # when no latency field is present: (start, end) timestamps whose difference is the latency
    latency_between: tuple[tuple[str, str], ...] = ()


def _list_or_one(doc: object, key: str | None = None) -> list[object]:
    if key is not None and isinstance(doc, dict) and isinstance(doc.get(key), list):
        return doc[key]
    return doc if isinstance(doc, list) else [doc]


def _kong(doc: object) -> list[object]:
    """http-log posts one JSON object per request, or an array when queue.max_batch_size > 1."""
    return _list_or_one(doc)


def _firehose_record(data: str, inflate_limit: int, max_lines: int) -> tuple[list[object], int]:
    """One Firehose record: an access-log line (API Gateway -> Firehose), several lines, or a
    gzipped CloudWatch Logs subscription message whose logEvents carry the lines; and how many
    bytes its gzip inflated to. ExportError past either limit, before reading further."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ExportError(f"a Firehose record's data is not base64 (optionally gzip): {exc}") from None
    inflated = 0
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gunzip(raw, inflate_limit)
        except ValueError as exc:
            raise ExportError(f"a Firehose record's gzip data: {exc} (an export inflates to at most "
                              f"{MAX_EXPORT_BYTES} bytes)") from None
        inflated = len(raw)
    text = raw.decode("utf-8", "replace")
    try:
        message = exact_json.loads(raw)
    except JsonError:
        message = None
    if isinstance(message, dict) and isinstance(message.get("logEvents"), list):
        if message.get("messageType") == "CONTROL_MESSAGE":
            return [], inflated
        text = "\n".join(str(e.get("message", "")) for e in message["logEvents"] if isinstance(e, dict))
    lines: list[object] = []
    for line in io.StringIO(text):  # lazily, and only at "\n" (str.splitlines also splits at U+2028)
        if not line.strip():
            continue
        if len(lines) == max_lines:
            raise ExportError(f"an export holds at most {MAX_ENTRIES} entries")
        try:
            lines.append(exact_json.loads(line, as_written=True))
        except JsonError as exc:
            raise ExportError(f"an access-log line is not JSON ({exc}); configure the JSON format") from None
    return lines, inflated


def _aws(doc: object) -> list[object]:
    """Kinesis Data Firehose HTTP endpoint delivery ({"records": [{"data": base64}]}), or access-log
    objects posted as they are. A small delivery can hold records that inflate to gigabytes of log
    lines: the export's limits hold for all of them together, as they are read."""
    if isinstance(doc, dict) and isinstance(doc.get("records"), list):
        entries: list[object] = []
        inflate_room = MAX_EXPORT_BYTES
        for record in doc["records"]:
            if not isinstance(record, dict) or not isinstance(record.get("data"), str):
                raise ExportError("each Firehose record must be an object with a base64 'data' string")
            lines, inflated = _firehose_record(record["data"], inflate_room, MAX_ENTRIES - len(entries))
            entries.extend(lines)
            inflate_room -= inflated
        return entries
    return _list_or_one(doc)


FORMATS: dict[str, GatewayFormat] = {f.name: f for f in (
    # Kong http-log plugin: https://developer.konghq.com/plugins/http-log/ (log format)
    GatewayFormat("kong", "Kong http-log", _kong, {
        "id": ("$.request.id", "$.request.headers['x-kong-request-id']",
               "$.response.headers['x-kong-request-id']"),
        "time": ("$.started_at",),
        "method": ("$.request.method",),
        "route": ("$.route.name", "$.route.paths[0]"),
        "path": ("$.request.uri",),
        "status": ("$.response.status",),
        "latency_ms": ("$.latencies.request",),
        "consumer": ("$.consumer.custom_id", "$.consumer.username", "$.consumer.id"),
        "api": ("$.service.name",),
    }),
    # API Gateway access logging ($context variables, JSON format; see README for the format string)
    GatewayFormat("aws", "AWS API Gateway access-log (Firehose or direct)", _aws, {
        "id": ("$.requestId",),
        "time": ("$.requestTimeEpoch", "$.requestTime"),
        "method": ("$.httpMethod",),
        "route": ("$.resourcePath", "$.routeKey"),
        "path": ("$.path",),
        "status": ("$.status",),
        "latency_ms": ("$.responseLatency",),
        "consumer": ("$.principalId", "$.apiKeyId", "$.user", "$.caller"),
        "api": ("$.apiId",),
    }),
    # Apigee: analytics record field names, or flow-variable names from a ServiceCallout template
    GatewayFormat("apigee", "Apigee", _list_or_one, {
        "id": ("$.messageid", "$.message_id", "$.gateway_flow_id"),
        "time": ("$.client_received_start_timestamp", "$['client.received.start.timestamp']"),
        "method": ("$.request_verb", "$['request.verb']"),
        "route": ("$.proxy_pathsuffix", "$['proxy.pathsuffix']"),
        "path": ("$.request_path", "$['request.path']", "$.request_uri", "$['request.uri']"),
        "status": ("$.response_status_code", "$['response.status.code']", "$['message.status.code']"),
        "latency_ms": ("$.total_response_time",),
        "consumer": ("$['developer.app.name']", "$.developer_app", "$.client_id",
                     "$['developer.email']", "$.developer_email"),
        "api": ("$.apiproxy", "$['apiproxy.name']"),
    }, latency_between=(("$.client_received_start_timestamp", "$.client_sent_end_timestamp"),
                        ("$['client.received.start.timestamp']", "$['system.timestamp']"))),
    # Azure API Management GatewayLogs: resource-log records (camelCase, {"records": [...]}) or
    # the Log Analytics column names (PascalCase) posted by a send-one-way-request policy
    GatewayFormat("azure-apim", "Azure API Management", lambda doc: _list_or_one(doc, "records"), {
        "id": ("$.correlationId", "$.CorrelationId"),
        "time": ("$.time", "$.TimeGenerated"),
        "method": ("$.properties.method", "$.Method"),
        "route": ("$.properties.operationId", "$.OperationId"),
        "path": ("$.properties.url", "$.Url"),
        "status": ("$.properties.responseCode", "$.ResponseCode"),
        "latency_ms": ("$.durationMs", "$.TotalTime"),
        "consumer": ("$.properties.apimSubscriptionId", "$.ApimSubscriptionId",
                     "$.properties.userId", "$.UserId"),
        "api": ("$.properties.apiId", "$.ApiId"),
    }),
    # MuleSoft API analytics events: the forwarder's (snake_case) or the Analytics Event API's
    # export field names
    GatewayFormat("mulesoft", "MuleSoft analytics", lambda doc: _list_or_one(doc, "events"), {
        "id": ("$.event_id", "$.message_id", "$['Message ID']"),
        "time": ("$.received_ts", "$.Timestamp"),
        "method": ("$.verb", "$.Verb"),
        "route": ("$.resource_path", "$['Resource Path']", "$.path"),
        "path": ("$.path", "$.resource_path", "$['Resource Path']"),
        "status": ("$.status_code", "$['Status Code']"),
        "latency_ms": ("$.response_time", "$['Response Time']"),
        "consumer": ("$.application_name", "$['Application Name']", "$.client_id", "$['Client ID']",
                     "$.application", "$.Application"),
        "api": ("$.api_name", "$['API Name']", "$.api_id", "$['API ID']"),
    }, latency_between=(("$.received_ts", "$.replied_ts"),)),
)}
GATEWAYS = tuple(FORMATS)


def _pick(entry: object, paths: tuple[str, ...]) -> object | None:
    for path in paths:
        value = first(entry, path)
        if value not in _ABSENT:
            return value
    return None


def _number(value: object) -> Decimal | int | None:
    """A logged number (a JSON number or its text), exactly: never through a binary float."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    # integral values as JSON integers, within the range every JSON reader keeps exact
    return int(number) if number == number.to_integral_value() and abs(number) < 2**53 else number


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_ms(value: object) -> Decimal | int | None:
    """A timestamp as epoch milliseconds: numbers (ms), or an ISO 8601 string (UTC unless it says)."""
    if isinstance(value, str) and not value.replace(".", "", 1).isdigit():
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        since = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)) - _EPOCH
        return _number(Decimal(since // timedelta(microseconds=1)) / 1000)
    return _number(value)


def _latency(fmt: GatewayFormat, entry: object) -> Decimal | int | None:
    latency = _number(_pick(entry, fmt.paths["latency_ms"]))
    if latency is not None:
        return latency
    for start_path, end_path in fmt.latency_between:
        start, end = _epoch_ms(first(entry, start_path)), _epoch_ms(first(entry, end_path))
        if start is not None and end is not None and end >= start:
            with localcontext() as exact:
                exact.prec, exact.traps[Inexact] = 40, True
                try:
                    return _number(end - start)
                except Inexact:  # no timestamps have that many digits: leave the latency out
                    return None
    return None


def _path(value: object) -> object:
    """The path of a logged URI or URL, without its query string."""
    if not isinstance(value, str):
        return value
    try:
        return urlsplit(value).path or "/"
    except ValueError:  # e.g. an unbalanced IPv6 bracket: keep what was logged
        return value


def _time(value: object) -> object:
    """Gateways log epoch ms/seconds, RFC 3339, or (AWS $context.requestTime) the common log format."""
    if isinstance(value, str):
        try:
            return datetime.strptime(value, "%d/%b/%Y:%H:%M:%S %z").isoformat()
        except ValueError:
            pass
    return to_rfc3339(value)


def _entry_id(name: str, entry: object) -> str:
    """Entries without a request id get one from their content: the same log line sent again is
    the same event, so the pipeline marks the resend a duplicate."""
    return f"{name}-" + hashlib.sha256(exact_json.dumps(entry, sort_keys=True)).hexdigest()[:32]


def to_event(fmt: GatewayFormat, entry: dict, *, tenant: str, source: str, received: str) -> dict:
    pick = {name: _pick(entry, paths) for name, paths in fmt.paths.items()}
    status = _number(pick["status"])
    data = {"method": pick["method"], "route": pick["route"] or _path(pick["path"]),
            "path": _path(pick["path"]), "status": status if isinstance(status, int) else None,
            "latency_ms": _latency(fmt, entry), "api": pick["api"], "gateway": fmt.name}
    return cloudevent(
        id=pick["id"] or _entry_id(fmt.name, entry), source=source, type=EVENT_TYPE,
        subject=pick["consumer"], time=_time(pick["time"]) if pick["time"] is not None else received,
        tenant=tenant, data={k: v for k, v in data.items() if v is not None})


def export_events(fmt: GatewayFormat, doc: object, *, tenant: str, source: str, received: str) -> list[dict]:
    """Every logged request of one export body; ExportError (nothing produced) when any entry is
    not a log object."""
    entries = fmt.entries(doc)
    if len(entries) > MAX_ENTRIES:
        raise ExportError(f"an export holds at most {MAX_ENTRIES} entries, got {len(entries)}")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ExportError(f"entry {index} is not a JSON object")
        try:
            check_depth(entry)
        except ValueError as exc:
            raise ExportError(f"entry {index}: {exc}") from None
    return [to_event(fmt, entry, tenant=tenant, source=source, received=received) for entry in entries]
