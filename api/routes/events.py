"""POST /v1/events, GET /v1/events/{source}/{id}, GET /v1/events/stream (tier `rest`, or `sdk`
when an Aforo SDK sends them)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import anyio.to_thread
from confluent_kafka import KafkaException
from fastapi import APIRouter, Request, Response
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
)
from api.errors import ApiError, documented
from api.limits import MIB, decoded, parse_json, read_body
from api.producer import now_ms
from api.services import Svc
from api.stream import tail, tail_consumer
from sinks.reports import event_chain

router = APIRouter(tags=["events"])

# Aforo's SDKs name themselves ("python/0.1.0") in this header; their events are recorded as tier
# `sdk`. The tier is provenance, not a permission: a caller claiming it changes nothing it is billed.
SDK_HEADER = "aforo-sdk"

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
    events = admit_batch(batch_of(parse_json(body), content_type), caller.tenant)
    tier = "sdk" if request.headers.get(SDK_HEADER) else "rest"
    return json_response(await produce_events(svc, events, tier, received), 202)


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


class EventStatus(BaseModel):
    tenantid: str
    source: str
    id: str
    status: str  # of the record that decided the event (the one that claimed its key), else the last
    reason: str | None
    records: list[LedgerRecord]


def _record(row: dict) -> LedgerRecord:
    row = {k: str(v) if isinstance(v, Decimal) else v for k, v in row.items()}
    row["raw"] = bytes(row["raw"]).decode("utf-8", "replace")
    return LedgerRecord.model_validate(row)


def event_status(tenant: str, source: str, event_id: str, chain: list[dict]) -> EventStatus:
    deciding = next((r for r in chain if r["status"] not in ("duplicate", "rejected")), chain[-1])
    return EventStatus(tenantid=tenant, source=source, id=event_id, status=deciding["status"],
                       reason=deciding["reason"], records=[_record(r) for r in chain])


@router.get("/v1/events/stream", response_class=StreamingResponse,
            responses={200: {"description": "Server-sent events: `event:` is the status, `data:` the "
                             "routed message (status, reason, provenance, event)",
                             "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                       **documented(401, 429, 503)},
            summary="Live tail of the caller's processed events")
async def stream_events(caller: RestCaller, svc: Svc) -> StreamingResponse:
    try:
        consumer = await anyio.to_thread.run_sync(tail_consumer, svc.settings)
    except KafkaException as exc:
        raise ApiError(503, "unavailable", f"cannot read the output topics: {exc}") from None
    return StreamingResponse(tail(consumer, caller.tenant), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/v1/events/{source:path}/{event_id}", response_model=EventStatus,
            responses=documented(400, 401, 404, 429, 503),
            summary="Status and provenance of one event of the caller's tenant")
async def get_event(source: str, event_id: str, caller: RestCaller, svc: Svc) -> EventStatus:
    """From the ledger: 404 until the pipeline has processed the event. `source` may contain '/'."""
    chain = [] if "\x00" in source + event_id else await svc.db(event_chain, caller.tenant, source, event_id)
    if not chain:
        raise ApiError(404, "not_found", f"no event {event_id!r} from source {source!r} in the ledger "
                       "(yet: events appear once the pipeline has processed them)")
    return event_status(caller.tenant, source, event_id, chain)
