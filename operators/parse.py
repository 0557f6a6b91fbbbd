"""Parse: raw Kafka bytes -> a JSON object, or a terminal `rejected` with the reason."""

from __future__ import annotations

import json
from decimal import Decimal

import orjson

from schemas.record import Reason, Record, Status

MAX_RAW_BYTES = 1024 * 1024
_JSON_KIND = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
              type(None): "null", Decimal: "number"}


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def exact_json(raw: bytes) -> object:
    """The raw JSON with every number exact: integers of any size as int, the others as Decimal
    from their text. orjson reads both beyond-64-bit integers and fractions as binary floats
    (2^70 becomes 1.1805916207174113e+21), so quantities are taken from here, never from it."""
    return json.loads(raw, parse_float=Decimal, parse_constant=_no_constants)


def parse(rec: Record) -> Record:
    if rec.ingested_ms <= 0:
        # Without a recorded ingestion time no gate can decide deterministically.
        return rec.decide(Status.REJECTED, Reason.MALFORMED, "raw record has no ingestion timestamp")
    raw = rec.raw
    if len(raw) > MAX_RAW_BYTES:
        return rec.decide(Status.REJECTED, Reason.TOO_LARGE,
                          f"raw record is {len(raw)} bytes; the limit is {MAX_RAW_BYTES}")
    try:
        event = orjson.loads(raw)  # fast, and exact for everything but the numbers
    except orjson.JSONDecodeError as exc:
        try:  # valid JSON that orjson refuses, such as a number beyond a double (1e400)
            event = exact_json(raw)
        except (ValueError, RecursionError):
            return rec.decide(Status.REJECTED, Reason.MALFORMED, f"not valid JSON: {exc}")
    if not isinstance(event, dict):
        return rec.decide(Status.REJECTED, Reason.MALFORMED,
                          f"not a JSON object but a JSON {_JSON_KIND[type(event)]}")
    rec.event = event
    return rec
