"""Parse: raw Kafka bytes -> a JSON object, or a terminal `rejected` with the reason."""

from __future__ import annotations

from decimal import Decimal

import orjson

from schemas import exact_json
from schemas.record import Reason, Record, Status

MAX_RAW_BYTES = 1024 * 1024
_JSON_KIND = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
              type(None): "null", Decimal: "number"}


def parse(rec: Record) -> Record:
    if rec.ingested_ms <= 0:
        # Without a recorded ingestion time no gate can decide deterministically.
        return rec.decide(Status.REJECTED, Reason.MALFORMED, "raw record has no ingestion timestamp")
    raw = rec.raw
    if len(raw) > MAX_RAW_BYTES:
        return rec.decide(Status.REJECTED, Reason.TOO_LARGE,
                          f"raw record is {len(raw)} bytes; the limit is {MAX_RAW_BYTES}")
    try:
        # Fast, and exact for everything but the numbers, which orjson reads as binary floats:
        # quantities are taken from the exact reading (operators/enrich.py).
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:  # valid JSON that orjson refuses, such as a number beyond a double (1e400)
            event = exact_json.loads(raw)
        except exact_json.JsonError:
            return rec.decide(Status.REJECTED, Reason.MALFORMED, f"not valid JSON: {exc}")
    if not isinstance(event, dict):
        return rec.decide(Status.REJECTED, Reason.MALFORMED,
                          f"not a JSON object but a JSON {_JSON_KIND[type(event)]}")
    rec.event = event
    return rec
