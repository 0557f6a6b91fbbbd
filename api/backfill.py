"""Backfill: a batch of one tenant's historical events, admitted on purpose by an operator.

Every door stamps an event's ingestion time as the moment it arrives, so history older than 24
hours is held as `late` for reconciliation. A backfill is the audited way past that gate for
periods that are still open: `aforo upload --backfill --reason ...` or `POST /v1/backfills` with
an operator key. The door

1. reads the whole batch (CSV, a JSON array or NDJSON, as uploads) and checks every row before
   producing anything: each needs `tenantid` (filled in from the tenant), `subject` and an RFC
   3339 `time` no more than 5 minutes ahead of now and within the 90-day horizon. One bad row
   refuses the batch, naming each bad row by line: a backfill is all or nothing;
2. records the backfill (who, why, when, how many events and customers, which periods) in the
   `backfills` table, refusing it whole if one of its periods is closed;
3. produces the events in event-time order per customer (one customer's events share a raw
   partition, so the flow rates and the monitors read them as they happened), each stamped with
   the backfill's time and carrying its id in the `aforo-backfill` header: the flow skips the
   24-hour lateness gate for them (still rejecting the future and what is beyond 90 days) and
   the ledger keeps the id on each row.

Everything else is judged by the pipeline's gates as for any event (schema, duplicates: a
backfilled event already in the ledger ends `duplicate`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
from pydantic import BaseModel

from api.uploads import BadRow, Row, event_bytes
from operators.enrich import billing_period
from operators.schema_gate import SchemaError, parse_time
from operators.timestamp_gate import EPOCH, HORIZON_US, MAX_SKEW_US, to_us
from schemas.errors import AforoError
from sinks.backfills import Backfill, record_backfill, set_produced
from sinks.kafka import BACKFILL_HEADER
from sinks.raw_producer import RawProducer

TIER = "backfill"  # the ledger's `tier`: the door the events came through
MAX_EVENTS = 500_000  # held in memory to be ordered; split a longer history (by period, say)
MAX_LISTED = 1000


class BackfillRefused(AforoError):
    """Rows that cannot be backfilled: the whole batch is refused and nothing is produced."""

    code = "backfill_refused"

    def __init__(self, message: str, rows: list[BadRow] | None = None):
        super().__init__(message)
        self.rows = rows or []
        self.details = tuple(f"  line {r.line}: {r.error}" for r in self.rows[:20])

    def body(self) -> dict[str, object]:
        return {**super().body(), "rows": [r.model_dump() for r in self.rows]}


@dataclass(frozen=True, order=True)
class _Event:
    subject: str
    event_us: int
    line: int
    raw: bytes


@dataclass(frozen=True)
class Batch:
    """A backfill's events, checked and in production order."""

    tenant: str
    events: list[_Event]

    @property
    def periods(self) -> list[str]:
        return sorted({billing_period(e.event_us) for e in self.events})


class BackfillRecord(BaseModel):
    """A backfill as the `backfills` table keeps it."""

    id: str
    tenant: str
    actor: str  # who: AFORO_ACTOR/USER (CLI), key:<id> (API)
    reason: str  # why
    created_at: datetime  # when; also its records' ingestion time
    events: int
    customers: int
    periods: list[str]
    first_event_time: datetime
    last_event_time: datetime
    produced: int | None  # acknowledged by the broker


class BackfillReport(BackfillRecord):
    produced: int
    not_acknowledged: int = 0
    not_acknowledged_lines: list[BadRow] = []  # may be backfilled again: duplicates are caught


def require_reason(reason: str | None) -> str:
    if not reason or not reason.strip():
        raise AforoError("a backfill needs a reason (why this history is admitted late): "
                         "it is kept with the backfill's record")
    return reason.strip()


def check(rows: Iterator[Row], tenant: str, now: datetime) -> Batch:
    """Every row of the batch checked (BackfillRefused names the bad ones), then ordered by
    customer and event time (the line breaks ties)."""
    now_us = to_us(now)
    events: list[_Event] = []
    bad: list[BadRow] = []  # the first MAX_LISTED
    refused = 0
    for row in rows:
        problem = row.error
        if row.fatal:
            refused += 1
            bad.append(BadRow(line=row.line, error=problem or "unreadable"))
            break
        if problem is None:
            try:
                raw = event_bytes(row, tenant)
                subject, when = row.value.get("subject"), row.value.get("time")
                if not isinstance(subject, str) or not subject:
                    raise ValueError("a backfilled event needs a subject (the customer): it is ordered by it")
                if not isinstance(when, str):
                    raise ValueError("a backfilled event needs its time: it is ordered by it")
                event_us = parse_time(when)
                if event_us > now_us + MAX_SKEW_US:
                    raise ValueError("its time is more than 5 minutes in the future")
                if event_us < now_us - HORIZON_US:
                    raise ValueError("its time is more than 90 days ago, beyond what the ledger admits")
                events.append(_Event(subject, event_us, row.line, raw))
            except (ValueError, PermissionError, SchemaError) as exc:
                problem = str(exc)
        if problem is not None:
            refused += 1
            if len(bad) < MAX_LISTED:
                bad.append(BadRow(line=row.line, error=problem))
        if len(events) > MAX_EVENTS:
            raise BackfillRefused(f"a backfill holds at most {MAX_EVENTS} events; split this one "
                                  "(by period or by customer) and nothing was produced")
    if bad:
        raise BackfillRefused(f"{refused} rows cannot be backfilled, so nothing was: line {bad[0].line}: "
                              f"{bad[0].error}", bad)
    if not events:
        raise BackfillRefused("the backfill has no events")
    events.sort()
    return Batch(tenant, events)


def run_backfill(batch: Batch, actor: str, reason: str, now: datetime,
                 connect: Callable[[], AbstractContextManager[psycopg.Connection]],
                 producer: RawProducer) -> BackfillReport:
    """Record the backfill, then produce its events in order, stamped `now`; returns once the
    broker has reported on each (ClosedPeriod before anything is produced)."""
    first, last = min(e.event_us for e in batch.events), max(e.event_us for e in batch.events)
    backfill = Backfill(f"bf_{secrets.token_hex(8)}", batch.tenant, actor, reason, now, len(batch.events),
                        len({e.subject for e in batch.events}), batch.periods,
                        _utc(first), _utc(last))
    with connect() as conn:
        record_backfill(conn, backfill)
    acks = producer.send(((e.line, e.raw) for e in batch.events), TIER, timestamp_ms=to_us(now) // 1000,
                         headers=((BACKFILL_HEADER, backfill.id.encode()),))
    with connect() as conn:
        set_produced(conn, backfill.id, acks.acked)
    unacknowledged = [BadRow(line=line, error=error) for line, error in sorted(acks.errors.items())]
    return BackfillReport(**{**backfill.__dict__, "produced": acks.acked},
                          not_acknowledged=len(batch.events) - acks.acked,
                          not_acknowledged_lines=unacknowledged)


def _utc(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)
