"""Building and encoding CloudEvents.

Every event gets its id and time when it is created, so a retry, a spool replay or a resend
carries the same id: Aforo's ledger records it as a duplicate, never as a second charge.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

SPECVERSION = "1.0"
# One event alone must fit in a request (Aforo takes 1 MiB per request, brackets included).
MAX_EVENT_BYTES = (1 << 20) - 2


def rfc3339(t: datetime) -> str:
    if t.tzinfo is None:
        raise ValueError("time must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a number Aforo can meter")
        return str(value)  # exact: Aforo's metrics read numbers from strings
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def new_event(type: str, subject: str, data: Mapping[str, Any] | None, *, source: str,
              id: str | None = None, time: datetime | None = None) -> dict[str, Any]:
    """A CloudEvent with its id and time fixed now. The tenant comes from the API key."""
    if data is not None and not isinstance(data, Mapping):
        raise ValueError(f"data must be a mapping (a JSON object), got {data.__class__.__name__}")
    event = {"specversion": SPECVERSION, "id": _name(id, "id") if id is not None else str(uuid.uuid4()),
             "source": source, "type": _name(type, "type"), "subject": _name(subject, "subject"),
             "time": rfc3339(time or datetime.now(timezone.utc))}
    if data:
        event["data"] = dict(data)
    return event


def encode(event: Mapping[str, Any]) -> bytes:
    """Compact JSON; Decimal as an exact string; NaN and infinities refused."""
    line = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=_json_default).encode()
    if len(line) > MAX_EVENT_BYTES:
        raise ValueError(f"event {event.get('id')} is {len(line)} bytes; "
                         f"Aforo takes at most {MAX_EVENT_BYTES}")
    return line
