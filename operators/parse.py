"""Parse: raw Kafka bytes -> a JSON object, or a terminal `rejected` with the reason."""

from __future__ import annotations

import orjson

from schemas.record import Reason, Record, Status

MAX_RAW_BYTES = 1024 * 1024
_CREATE_OR_LOG_APPEND_TIME = (1, 2)
_JSON_KIND = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
              type(None): "null"}


def parse(rec: Record, timestamp_type: int) -> Record:
    if timestamp_type not in _CREATE_OR_LOG_APPEND_TIME or rec.ingested_ms <= 0:
        # Without a recorded ingestion time no gate can decide deterministically.
        return rec.decide(Status.REJECTED, Reason.MALFORMED, "raw record has no ingestion timestamp")
    raw = rec.raw
    if len(raw) > MAX_RAW_BYTES:
        return rec.decide(Status.REJECTED, Reason.TOO_LARGE,
                          f"raw record is {len(raw)} bytes; the limit is {MAX_RAW_BYTES}")
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return rec.decide(Status.REJECTED, Reason.MALFORMED, f"not valid JSON: {exc}")
    if not isinstance(event, dict):
        return rec.decide(Status.REJECTED, Reason.MALFORMED,
                          f"not a JSON object but a JSON {_JSON_KIND[type(event)]}")
    rec.event = event
    return rec
