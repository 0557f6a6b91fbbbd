"""POST /v1/events (tier `rest`, or `sdk` when an Aforo SDK sends them); reading events back:
GET /v1/events (the latest), /v1/events/counters, /v1/events/stream (live) and
/v1/events/{source}/{id} (provenance)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated
from urllib.parse import unquote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from api.accept import Accepted, json_response, produce_events
from api.auth import RestCaller
from api.cloudevents import (
    BATCH,
    EVENT_MEDIA_TYPES,
    JSON,
    MAX_BATCH,
    SINGLE,
    admit_batch,
    batch_of,
    media_type,
    parse_events,
)
from api.errors import ApiError, documented
from api.limits import MIB, decoded, read_body
from api.reads import Money, money, now
from api.services import Services, Svc
from api.stream import tail
from api.viewer import TenantViewer, Viewer
from config.clock import now_ms
from operators.provenance import gate_trail
from sinks.console import event_counters, event_lines, recent_events
from sinks.reports import event_chain

router = APIRouter(tags=["events"])

# The client-side doors that deliver through this route name themselves (name/version) in a header
# of their own, and their events are recorded with their tier: Aforo's SDKs ("python/0.1.0") as
# `sdk`, the MCP proxy as `mcp`. The tier is provenance, not a permission: a caller claiming it
# changes nothing it is billed.
SDK_HEADER = "aforo-sdk"
MCP_PROXY_HEADER = "aforo-mcp-proxy"
CLIENT_HEADERS = {SDK_HEADER: "sdk", MCP_PROXY_HEADER: "mcp"}

CLOUDEVENT = {
    "type": "object",
    "description": "A CloudEvents 1.0 event in structured JSON mode; tenantid defaults to the key's tenant.",
    "required": ["specversion", "id", "source", "type", "subject", "time"],
    "properties": {
        "specversion": {"type": "string", "enum": ["1.0"]},
        "id": {"type": "string"}, "source": {"type": "string"}, "type": {"type": "string"},
        "subject": {"type": "string", "description": "the customer's external id"},
        "time": {"type": "string", "format": "date-time"},
        "tenantid": {"type": "string"},
        "data": {"type": "object"},
    },
}
_BATCH = {"type": "array", "items": CLOUDEVENT, "minItems": 1, "maxItems": MAX_BATCH}
EVENTS_BODY = {"requestBody": {"required": True, "content": {
    SINGLE: {"schema": CLOUDEVENT},
    BATCH: {"schema": _BATCH},
    JSON: {"schema": {"oneOf": [CLOUDEVENT, _BATCH]}},
}}}


@router.post("/v1/events", status_code=202, response_model=Accepted, openapi_extra=EVENTS_BODY,
             responses=documented(400, 401, 403, 413, 415, 429, 503),
             summary="Send one CloudEvent or a batch (up to 1,000 events or 1 MiB)")
async def post_events(request: Request, caller: RestCaller, svc: Svc) -> Response:
    """Answers 202 once the broker has acknowledged every event; nothing of a batch is produced
    unless all of it is structurally valid and the caller's."""
    received = now_ms()
    content_type = media_type(request.headers.get("content-type"))
    if content_type not in EVENT_MEDIA_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type must be one of {', '.join(EVENT_MEDIA_TYPES)}, got {content_type!r}")
    body = await read_body(decoded(request.stream(), request.headers.get("content-encoding")), MIB)
    doc, texts = parse_events(body)
    events = batch_of(doc, content_type)
    raws = admit_batch(events, texts, caller.tenant)
    tier = next((tier for header, tier in CLIENT_HEADERS.items() if request.headers.get(header)), "rest")
    return json_response(await produce_events(svc, events, tier, received, raws), 202)


class Line(BaseModel):
    """One metric an accepted event fed: its marginal revenue on the running total."""

    metric: str
    group: dict
    quantity: str
    total_after: str
    revenue: str
    cost: str
    margin: str


class Gate(BaseModel):
    gate: str  # parse, schema, timestamp, lateness, idempotency, enrichment, rating, route
    outcome: str  # passed | decided | not reached


class LedgerRecord(BaseModel):
    """One raw record that carried the event, as the ledger holds it."""

    raw_topic: str
    raw_partition: int
    raw_offset: int
    ingested_at: datetime
    processed_at: datetime
    tier: str | None
    status: str
    reason: str | None
    detail: str | None
    dedup_key: str | None
    route: str
    validation_hash: str
    customer: str | None
    subscription: str | None
    plan: str | None
    plan_version: int | None
    currency: str | None
    period: str | None
    revenue: str | None
    cost: str | None
    margin: str | None
    raw: str
    adjusts_period: str | None = None
    lines: list[Line] = []
    gates: list[Gate] = []


class EventStatus(BaseModel):
    tenantid: str
    source: str
    id: str
    status: str  # of the record that decided the event (the one that claimed its key), else the last
    reason: str | None
    records: list[LedgerRecord]


def _exact(value: object) -> object:
    return str(value) if isinstance(value, Decimal) else value


def _record(row: dict, lines: list[dict]) -> LedgerRecord:
    row = {k: _exact(v) for k, v in row.items()}
    row["raw"] = bytes(row["raw"]).decode("utf-8", "replace")
    row["lines"] = [{k: _exact(v) for k, v in x.items()} for x in lines]
    row["gates"] = gate_trail(row["status"], row["reason"])
    return LedgerRecord.model_validate(row)


def event_status(tenant: str, source: str, event_id: str, chain: list[dict],
                 lines: dict[tuple, list[dict]] | None = None) -> EventStatus:
    deciding = next((r for r in chain if r["status"] not in ("duplicate", "rejected")), chain[-1])
    lines = lines or {}
    records = [_record(r, lines.get((r["raw_topic_id"], r["raw_partition"], r["raw_offset"]), []))
               for r in chain]
    return EventStatus(tenantid=tenant, source=source, id=event_id, status=deciding["status"],
                       reason=deciding["reason"], records=records)


def _chain_with_lines(conn, tenant: str, source: str, event_id: str) -> tuple[list[dict], dict]:
    chain = event_chain(conn, tenant, source, event_id)
    return chain, event_lines(conn, [(r["raw_topic_id"], r["raw_partition"], r["raw_offset"]) for r in chain])


class RecentEvent(BaseModel):
    tenantid: str | None
    source: str | None
    id: str | None
    type: str | None
    subject: str | None
    time: datetime
    ingested_at: datetime
    status: str
    reason: str | None
    detail: str | None
    tier: str | None
    customer: str | None
    revenue: Money | None


@router.get("/v1/events", response_model=list[RecentEvent], responses=documented(400, 401, 403, 429),
            summary="The latest processed events of the caller's tenant, newest (by event time) first")
async def recent(viewer: TenantViewer, svc: Svc, tenant: str | None = None, status: str | None = None,
                 source: str | None = None,
                 limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[RecentEvent]:
    rows = await svc.db(recent_events, viewer.tenant_scope(tenant), status or None, source or None, limit)
    return [RecentEvent(**{k: v for k, v in r.items() if k not in ("revenue", "currency")},
                        revenue=money(r["revenue"], r["currency"]) if r["revenue"] is not None else None)
            for r in rows]


class EventCounters(BaseModel):
    day: str  # the UTC day, by event time
    events: int
    duplicates: int  # duplicates caught
    leakage_prevented: list[Money]  # what those duplicates would have charged again, per currency


@router.get("/v1/events/counters", response_model=EventCounters, responses=documented(400, 401, 403, 429),
            summary="Today's events, duplicates caught, and the revenue they would have double-charged")
async def counters(viewer: TenantViewer, svc: Svc, tenant: str | None = None) -> EventCounters:
    c = await svc.db(event_counters, viewer.tenant_scope(tenant), now())
    return EventCounters(day=c["day"].isoformat(), events=c["events"], duplicates=c["duplicates"],
                         leakage_prevented=[money(v, cur) for cur, v in c["leakage_prevented"].items()])


@router.get("/v1/events/stream", response_class=StreamingResponse,
            responses={200: {"description": "Server-sent events: `event:` is the status, `data:` the "
                             "routed message (status, reason, provenance, event)",
                             "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                       **documented(400, 401, 403, 429, 503)},
            summary="Live tail of the caller's processed events")
async def stream_events(viewer: TenantViewer, svc: Svc, tenant: str | None = None) -> StreamingResponse:
    """Starts at the true end of the output topics: the first frame, `: tailing`, says that every
    event routed from then on will be delivered. One consumer per API process serves every
    stream. `event: overflow` asks a client that fell too far behind to reconnect; `event: revoked`
    ends the stream of a key revoked meanwhile (within the key cache's 5 s)."""
    async def key_live() -> bool:
        stored = await svc.keys.get(viewer.key_id)
        return stored is not None and stored.revoked_at is None
    return StreamingResponse(tail(svc.live, viewer.tenant_scope(tenant), key_live),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _split_at_the_encoded_id(request: Request, source: str, event_id: str) -> tuple[str, str]:
    """(source, id) split where the client split them: the router sees the decoded path and so
    splits at the id's own last '/', but the raw path still has it as %2F."""
    raw_id = unquote(request.scope.get("raw_path", b"").decode("latin-1").rpartition("/")[2])
    whole = f"{source}/{event_id}"
    if raw_id != event_id and whole.endswith("/" + raw_id) and len(whole) > len(raw_id) + 1:
        return whole[:-len(raw_id) - 1], raw_id
    return source, event_id


@router.get("/v1/events/{source:path}/{event_id}", response_model=EventStatus,
            responses=documented(400, 401, 403, 404, 429, 503),
            summary="Status and provenance of one event of the caller's tenant")
async def get_event(source: str, event_id: str, request: Request, viewer: TenantViewer, svc: Svc,
                    tenant: str | None = None) -> EventStatus:
    """From the ledger: 404 until the pipeline has processed the event. `source` may contain '/';
    an id that does (the MCP proxy's `session/request`) is sent percent-encoded (`%2F`).
    Every raw record that carried it, each with its gates, billing context and revenue lines.
    An operator key names the tenant (?tenant=)."""
    source, event_id = _split_at_the_encoded_id(request, source, event_id)
    return await one_event(source, event_id, viewer, svc, tenant)


async def one_event(source: str, event_id: str, viewer: Viewer, svc: Services,
                    tenant: str | None) -> EventStatus:
    """The event's status and provenance, its source and id given apart: the console's page has
    them as query parameters, with no path to split."""
    scope = viewer.one_tenant(tenant)
    chain, lines = await svc.db(_chain_with_lines, scope, source, event_id)
    if not chain:
        raise ApiError(404, "not_found", f"no event {event_id!r} from source {source!r} in the ledger "
                       "(yet: events appear once the pipeline has processed them)")
    return event_status(scope, source, event_id, chain, lines)
