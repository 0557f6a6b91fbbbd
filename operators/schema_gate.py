"""Schema gate: the seven required CloudEvents attributes, `data`, and the idempotency key.

A plain dict check, not pydantic: it runs once per event on the hot path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

import orjson

from schemas.record import Reason, Record, Status

REQUIRED = ("specversion", "id", "source", "type", "subject", "time", "tenantid")
# Postgres indexes an event's (tenantid, source, id) and its idempotency key, and a btree entry
# holds at most 2704 bytes: a longer one could never be written and would stall its partition.
INDEXED = frozenset(("tenantid", "source", "id"))
MAX_ATTRIBUTE_BYTES = 800  # each of INDEXED: the three fit in one entry
MAX_KEY_BYTES = 2600

# RFC 3339 date-time; datetime.fromisoformat alone also accepts dates and basic formats.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z"
)
_EPOCH_ORDINAL = datetime(1970, 1, 1).toordinal()
_days: dict[str, int] = {}  # "YYYY-MM-DD" -> proleptic ordinal


class SchemaError(ValueError):
    pass


def indexable(value: str, limit: int = MAX_ATTRIBUTE_BYTES) -> bool:
    """Whether text fits `limit` bytes of an index entry (by default, an INDEXED attribute's). A
    character takes at most 4 bytes in UTF-8, so short text is not encoded to be measured."""
    return len(value) * 4 <= limit or len(value.encode()) <= limit


class UnknownTenant(LookupError):
    pass


def parse_time(value: str) -> int:
    """RFC 3339 timestamp -> integer microseconds since the Unix epoch (fractions truncated)."""
    m = _RFC3339.match(value)
    if m is None:
        raise SchemaError("attribute 'time' is not an RFC 3339 date-time with an offset")
    y, mo, d, h, mi, s, frac, _z, sign, oh, om = m.groups()
    day = _days.get(value[:10])
    if day is None:  # a new date: checked and remembered (the events of a batch share a few)
        try:
            day = datetime(int(y), int(mo), int(d)).toordinal()
        except ValueError as exc:
            raise SchemaError(f"attribute 'time' is out of range: {exc}") from None
        if len(_days) > 10_000:
            _days.clear()
        _days[value[:10]] = day
    if int(h) > 23 or int(mi) > 59 or int(s) > 59:
        raise SchemaError("attribute 'time' is out of range: hour, minute or second too large")
    if sign is not None and (int(oh) > 23 or int(om) > 59):
        raise SchemaError("attribute 'time' has an invalid UTC offset")
    offset_s = 0 if sign is None else (1 if sign == "+" else -1) * (int(oh) * 3600 + int(om) * 60)
    seconds = (day - _EPOCH_ORDINAL) * 86400 + int(h) * 3600 + int(mi) * 60 + int(s) - offset_s
    micros = int((frac or "0")[:6].ljust(6, "0"))
    return seconds * 1_000_000 + micros


def json_path(data: Mapping, path: str) -> object:
    """The value at a simple JSONPath (`$.a.b`) into `data`; KeyError when absent."""
    if not path.startswith("$."):
        raise SchemaError(f"unsupported JSON path {path!r}: use the form $.field.subfield")
    node: object = data
    for part in path[2:].split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def idempotency_key(event: Mapping, key_path: str | None) -> str:
    """(tenantid, source, id) by default; the tenant's JSON path into `data` when configured."""
    if key_path is None:
        return orjson.dumps((event["tenantid"], event["source"], event["id"])).decode()
    try:
        value = json_path(event.get("data") or {}, key_path)
    except KeyError:
        raise SchemaError(f"idempotency key {key_path} is missing from 'data'") from None
    if value is None or isinstance(value, dict | list) or value == "":
        raise SchemaError(f"idempotency key {key_path} must be a non-empty string or number")
    return orjson.dumps((event["tenantid"], key_path, value)).decode()


def check_event(event: Mapping, key_paths: Mapping[str, str | None]) -> tuple[int, str]:
    """Validate an event; return (event time in µs, dedup key).

    `key_paths` holds every known tenant with its idempotency key path (None: the default key).
    Raises SchemaError naming the attribute, or UnknownTenant.
    """
    for name in REQUIRED:
        value = event.get(name)
        if value is None:
            raise SchemaError(f"required attribute '{name}' is missing")
        if not isinstance(value, str):
            raise SchemaError(f"attribute '{name}' must be a string")
        if not value:
            raise SchemaError(f"attribute '{name}' is empty")
        if "\x00" in value:
            raise SchemaError(f"attribute '{name}' contains a NUL character")
        if name in INDEXED and not indexable(value):
            raise SchemaError(f"attribute '{name}' is {len(value.encode())} bytes long; "
                              f"at most {MAX_ATTRIBUTE_BYTES}")
    if event["specversion"] != "1.0":
        raise SchemaError("attribute 'specversion' must be \"1.0\"")
    data = event.get("data")
    if data is not None and not isinstance(data, dict):
        raise SchemaError("attribute 'data' must be a JSON object")
    event_us = parse_time(event["time"])
    tenant = event["tenantid"]
    if tenant not in key_paths:
        raise UnknownTenant(f"tenant {tenant!r} is not in the catalog")
    key = idempotency_key(event, key_paths[tenant])
    if not indexable(key, MAX_KEY_BYTES):  # escapes, or a long data value
        raise SchemaError(f"the idempotency key is {len(key.encode())} bytes long once encoded; "
                          f"at most {MAX_KEY_BYTES}")
    return event_us, key


def event_time(event: Mapping) -> int | None:
    """The event's `time` in µs when it is a valid RFC 3339 string, whatever else is wrong."""
    try:
        return parse_time(event["time"]) if isinstance(event.get("time"), str) else None
    except SchemaError:
        return None


def schema_gate(rec: Record, key_paths: Mapping[str, str | None]) -> Record:
    if rec.status is not None:
        return rec
    try:
        rec.event_us, rec.dedup_key = check_event(rec.event, key_paths)
    except (SchemaError, UnknownTenant) as exc:
        # A rejected event keeps its time where it has one: provenance, and it places the
        # record in its billing period for replay.
        rec.event_us = event_time(rec.event)
        reason = Reason.SCHEMA if isinstance(exc, SchemaError) else Reason.UNKNOWN_TENANT
        return rec.decide(Status.REJECTED, reason, str(exc))
    return rec
