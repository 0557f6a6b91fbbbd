"""The backfills table (migration 0045): which history was admitted past the lateness gate, by
whom, when and why. The door writes a backfill's row before producing any of its records."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

import psycopg

from schemas.errors import Conflict


class ClosedPeriod(Conflict):
    """A backfill that would change a closed period: refused whole, nothing produced."""


@dataclass(frozen=True)
class Backfill:
    id: str
    tenant: str
    actor: str
    reason: str
    created_at: datetime
    events: int
    customers: int
    periods: list[str]
    first_event_time: datetime
    last_event_time: datetime
    produced: int | None = None


_COLUMNS = ", ".join(f.name for f in fields(Backfill))
_PLACEHOLDERS = ", ".join(["%s"] * len(fields(Backfill)))


def record_backfill(conn: psycopg.Connection, backfill: Backfill) -> None:
    """Store the backfill, unless one of its periods is closed (ClosedPeriod names them: a closed
    invoice never changes; late history for it goes through reconciliation, billed as an
    adjustment in the next open period)."""
    with conn.transaction():
        closed = conn.execute(
            "SELECT period, closed_at, closed_by FROM closed_periods WHERE tenant = %s"
            " AND period = ANY(%s) ORDER BY period", (backfill.tenant, backfill.periods)).fetchall()
        if closed:
            listed = ", ".join(f"{p} (closed {at:%Y-%m-%d} by {who})" for p, at, who in closed)
            raise ClosedPeriod(
                f"{backfill.tenant} {listed}: a backfill cannot change a closed period, and nothing "
                "was produced. Backfill the open periods only; for the closed ones, `aforo upload` "
                "the events (they are held as late) and `aforo reconcile approve` them: they are "
                "billed as adjustments in the next open period")
        conn.execute(f"INSERT INTO backfills ({_COLUMNS}) VALUES ({_PLACEHOLDERS})",
                     [getattr(backfill, f.name) for f in fields(Backfill)])


def set_produced(conn: psycopg.Connection, backfill_id: str, produced: int) -> None:
    conn.execute("UPDATE backfills SET produced = %s WHERE id = %s", (produced, backfill_id))


def list_backfills(conn: psycopg.Connection, tenant: str | None = None) -> list[Backfill]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM backfills WHERE %s::text IS NULL OR tenant = %s"
                        " ORDER BY created_at, id", (tenant, tenant)).fetchall()
    return [Backfill(*row) for row in rows]


def find_backfill(conn: psycopg.Connection, backfill_id: str) -> Backfill | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM backfills WHERE id = %s", (backfill_id,)).fetchone()
    return Backfill(*row) if row else None
