"""Producing a request's events and the receipt the caller gets: 2xx only when the broker has
acknowledged every record, else 503 naming those that were not (they may be sent again)."""

from __future__ import annotations

import orjson
from fastapi import Response
from pydantic import BaseModel

from api.cloudevents import encode, rfc3339_ms
from api.errors import ApiError
from api.services import Services


class Receipt(BaseModel):
    index: int
    id: str | None = None  # as the ledger records them: null when not a string (rejected/schema)
    source: str | None = None
    partition: int | None = None  # where the raw record landed: its provenance in the ledger
    offset: int | None = None


class Accepted(BaseModel):
    accepted: int
    received_at: str  # the time of receipt: every record's Kafka timestamp (ingestion time)
    events: list[Receipt]


def _text(event: dict, name: str) -> str | None:
    """An attribute as a receipt echoes it: only a string is an id or a source (the schema gate
    rejects anything else); a client's number, read exactly as a Decimal, could not be encoded."""
    value = event.get(name)
    return value if isinstance(value, str) else None


async def produce_events(svc: Services, events: list[dict], tier: str, received_ms: int,
                         raws: list[bytes] | None = None) -> dict:
    """Produce `raws` (the events as their client sent them), else the events a door built, encoded;
    the body of an `Accepted` answer (a plain dict: building a thousand pydantic receipts per
    request cost more than producing the events)."""
    acks = await svc.producer.send_batch(raws or [encode(e) for e in events], tier, received_ms)
    receipts = [{"index": i, "id": _text(e, "id"), "source": _text(e, "source"),
                 "partition": acks.coords[i][0], "offset": acks.coords[i][1]}
                for i, e in enumerate(events) if i in acks.coords]
    if acks.failed:
        missing = [{"index": i, "id": _text(e, "id"), "source": _text(e, "source"),
                    "error": acks.errors.get(i, "no delivery report")}
                   for i, e in enumerate(events) if i not in acks.coords]
        raise ApiError(503, "not_acknowledged",
                       f"{len(missing)} of {len(events)} events were not acknowledged by the broker; "
                       "send them again (the pipeline deduplicates by id)",
                       headers={"Retry-After": "5"}, accepted=receipts, not_acknowledged=missing)
    return {"accepted": len(receipts), "received_at": rfc3339_ms(received_ms), "events": receipts}


def json_response(body: dict, status: int) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")
