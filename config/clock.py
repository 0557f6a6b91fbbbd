"""The one wall clock Aforo reads in Python.

It says when a door received an event (the raw record's Kafka timestamp: the pipeline's ingestion
time, on which every gate decides) and what "today" and "this period" mean to the reports. No
decision about an event reads it: the flow judges the ingestion time the record carries.

Aforo stamps every raw record it produces with `now_ms()` rather than letting librdkafka stamp
it, so a test can move the whole product in time with time-machine (which patches the
interpreter's clock; libfaketime cannot be used: it hangs librdkafka's timed waits).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def now_ms() -> int:
    """The current time in milliseconds since the Unix epoch: a raw record's timestamp."""
    return time.time_ns() // 1_000_000
