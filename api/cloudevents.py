"""The CloudEvents every door builds, and the structural checks the API owns.

The API refuses only what the pipeline could not even attribute: bodies that are not JSON, events
that are not objects, events of another tenant. Everything semantic (required attributes, time,
tenant known to the catalog, duplicates) is decided by the pipeline's gates, so the ledger records
the reason for every event that reached the raw topic.

An event a client sent as JSON is produced as the bytes it sent (`admit`); an event a door builds
from a provider's payload is encoded with `encode`, numbers exact (`schemas.exact_json`). No
client number ever passes through a binary float.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache

import orjson

from api.errors import ApiError, bad_request, too_large
from api.limits import check_depth
from schemas import exact_json

MAX_BATCH = 1000
MAX_EVENT_BYTES = 1024 * 1024  # the pipeline rejects larger raw records (rejected/too_large)
SPECVERSION = "1.0"

SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
JSON = "application/json"
EVENT_MEDIA_TYPES = (SINGLE, BATCH, JSON)
# A UTF-8 byte order mark before a JSON text is ignored, as RFC 8259 (8.1) allows: some Windows
# tools write one. It marks the body's encoding, so it is no part of any event's raw record.
BOM = b"\xef\xbb\xbf"


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_exact(body: bytes, what: str = "body") -> object:
    """A provider's JSON body, numbers exact and as written (schemas.exact_json), depth bounded; a
    400 naming the problem otherwise."""
    try:
        doc = exact_json.loads(body.removeprefix(BOM), as_written=True)
        check_depth(doc)
    except ValueError as exc:
        raise bad_request(f"{what}: {exc}") from None
    return doc


_WS = b" \t\r\n"


def parse_events(body: bytes) -> tuple[object, list[bytes]]:
    """A request body of events and the bytes the client sent for each: of each element when it
    is an array, else of the whole body (surrounding whitespace left out); a 400 otherwise. The door
    reads only attributes from the document, never a number, and produces the bytes.

    The fast path is orjson's: when encoding its elements again gives back the body byte for byte
    (compact JSON, as SDKs and the MCP proxy send), those are the elements' bytes, exactly, numbers
    included. Any other body is split by the exact reader (schemas.exact_json), three times slower."""
    body = body.removeprefix(BOM)
    try:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None  # maybe JSON orjson cannot hold (1e400): the exact reader decides
        texts = None
        if isinstance(doc, list):
            texts = [orjson.dumps(e) for e in doc]
            if body.strip(_WS) != b"[" + b",".join(texts) + b"]":
                texts = None
        elif doc is not None:
            texts = [body.strip(_WS)]
        if texts is None:
            doc, texts = exact_json.loads_with_text(body)
        check_depth(doc)
    except ValueError as exc:  # JsonError included
        raise bad_request(f"body: {exc}") from None
    return doc, texts


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


@lru_cache(maxsize=1024)
def _tenant_first(tenant: str) -> bytes:
    return b'{"tenantid":' + orjson.dumps(tenant)


def admit(event: object, tenant: str | None, raw: bytes | None = None) -> bytes:
    """One event checked for structure and tenant, as its raw record: `raw`, the bytes the client
    sent for it (else the event encoded). A missing `tenantid` is filled in from the caller's
    tenant (the key already says whose it is) by inserting it first in those bytes, which are
    otherwise left as they are; a different one is refused, never produced. Raises ValueError
    (structure) or PermissionError (another tenant)."""
    if not isinstance(event, dict):
        kind = "array" if isinstance(event, list) else "scalar"
        raise ValueError(f"an event must be a JSON object, got a JSON {kind}")
    raw = encode(event) if raw is None else raw
    if tenant is None:
        return raw
    if "tenantid" not in event:
        # raw is a JSON object without surrounding whitespace: it starts with its `{`
        return _tenant_first(tenant) + (b"," if event else b"") + raw[1:]
    if event["tenantid"] != tenant:
        raise PermissionError(f"tenantid {event['tenantid']!r} is not the caller's tenant {tenant!r}")
    return raw


def admit_batch(events: list[object], raws: list[bytes], tenant: str) -> list[bytes]:
    """The raw record of every event of a batch, or one refusal naming each offending event:
    nothing of a batch is produced unless all of it can be."""
    admitted: list[bytes] = []
    broken: list[dict] = []
    foreign: list[dict] = []
    for index, (event, raw) in enumerate(zip(events, raws, strict=True)):
        try:
            admitted.append(admit(event, tenant, raw))
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
    """The raw record's bytes: exactly the CloudEvent the door built, numbers exact."""
    return exact_json.dumps(event)


_MAX_MS = 253402300800000  # 10000-01-01T00:00:00Z


def rfc3339_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_rfc3339(value: object) -> object:
    """A provider's timestamp as RFC 3339: epoch numbers (seconds, or milliseconds when too large to
    be seconds) are converted; strings are kept as sent (the timestamp gate judges them)."""
    if isinstance(value, str) and value.isdigit() and len(value) < 20:
        value = int(value)
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        try:
            ms = value if value > 10**11 else value * 1000
            if not -_MAX_MS < ms < _MAX_MS:  # checked first: int() of 1e999999999 would not end
                raise ValueError(ms)
            return rfc3339_ms(int(ms))
        except (ArithmeticError, OSError, ValueError):  # out of range, or not finite
            return str(value)  # the gate rejects it with its reason
    return value


def scalar_text(value: object) -> object:
    """Provider ids and subjects are often numbers; CloudEvents attributes are strings."""
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
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
