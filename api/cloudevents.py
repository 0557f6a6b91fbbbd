"""The CloudEvents every door builds, and the structural checks the API owns.

The API refuses only what the pipeline could not even attribute: bodies that are not JSON, events
that are not objects, events of another tenant. Everything semantic (required attributes, time,
tenant known to the catalog, duplicates) is decided by the pipeline's gates, so the ledger records
the reason for every event that reached the raw topic.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import orjson

from api.errors import ApiError, bad_request, too_large

MAX_BATCH = 1000
MAX_EVENT_BYTES = 1024 * 1024  # the pipeline rejects larger raw records (rejected/too_large)
SPECVERSION = "1.0"

SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
JSON = "application/json"
EVENT_MEDIA_TYPES = (SINGLE, BATCH, JSON)


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def batch_of(doc: object, content_type: str) -> list[object]:
    """The events of a request body by its media type: one event, or a batch (a JSON array)."""
    kind = "array" if isinstance(doc, list) else "object" if isinstance(doc, dict) else "scalar"
    if content_type == SINGLE and kind != "object":
        raise bad_request(f"{SINGLE} carries one event (a JSON object), got a JSON {kind}")
    if content_type == BATCH and kind != "array":
        raise bad_request(f"{BATCH} carries a JSON array of events, got a JSON {kind}")
    if kind == "scalar":
        raise bad_request("body must be a JSON object (one event) or a JSON array (a batch)")
    events = doc if isinstance(doc, list) else [doc]
    if not events:
        raise bad_request("the batch is empty")
    if len(events) > MAX_BATCH:
        raise too_large(f"a batch holds at most {MAX_BATCH} events, got {len(events)}")
    return events


def admit(event: object, tenant: str | None) -> dict:
    """One event checked for structure and tenant. A missing `tenantid` is filled in (in place) from
    the caller's tenant: the key already says whose it is; a different one is refused, never
    produced. Raises ValueError (structure) or PermissionError (another tenant)."""
    if not isinstance(event, dict):
        kind = "array" if isinstance(event, list) else "scalar"
        raise ValueError(f"an event must be a JSON object, got a JSON {kind}")
    if tenant is not None and event.setdefault("tenantid", tenant) != tenant:
        raise PermissionError(f"tenantid {event['tenantid']!r} is not the caller's tenant {tenant!r}")
    return event


def admit_batch(events: list[object], tenant: str) -> list[dict]:
    """Every event of a batch admitted, or one refusal naming each offending event: nothing of
    a batch is produced unless all of it can be."""
    admitted: list[dict] = []
    broken: list[dict] = []
    foreign: list[dict] = []
    for index, event in enumerate(events):
        try:
            admitted.append(admit(event, tenant))
        except ValueError as exc:
            broken.append({"index": index, "problem": str(exc)})
        except PermissionError as exc:
            foreign.append({"index": index, "problem": str(exc)})
    if broken:
        raise bad_request(f"{len(broken)} of {len(events)} events are not valid: event "
                          f"{broken[0]['index']}: {broken[0]['problem']}", events=broken)
    if foreign:
        raise ApiError(403, "forbidden_tenant", f"{len(foreign)} of {len(events)} events belong to "
                       f"another tenant: event {foreign[0]['index']}: {foreign[0]['problem']}",
                       events=foreign)
    return admitted


def encode(event: Mapping) -> bytes:
    """The raw record's bytes: exactly the CloudEvent the door built."""
    return orjson.dumps(event)


def rfc3339_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_rfc3339(value: object) -> object:
    """A provider's timestamp as RFC 3339: epoch numbers (seconds, or milliseconds when too large to
    be seconds) are converted; strings are kept as sent (the timestamp gate judges them)."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        ms = value if value > 1e11 else value * 1000
        try:
            return rfc3339_ms(int(ms))
        except (OverflowError, OSError, ValueError):
            return str(value)  # out of range: the gate rejects it with its reason
    return value


def scalar_text(value: object) -> object:
    """Provider ids and subjects are often numbers; CloudEvents attributes are strings."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def cloudevent(*, id: object, source: str, type: object, subject: object, time: object,
               tenant: str | None, data: Mapping | None) -> dict:
    """A structured-mode CloudEvent; attributes that are None are left out, so the schema gate
    names the missing one in the ledger."""
    event = {"specversion": SPECVERSION, "id": scalar_text(id), "source": source,
             "type": scalar_text(type), "subject": scalar_text(subject), "time": to_rfc3339(time),
             "tenantid": tenant, "data": dict(data) if data is not None else None}
    return {k: v for k, v in event.items() if v is not None}
