"""Billing watermarks: closing a period freezes its totals and ledger digest."""

from __future__ import annotations

from decimal import Decimal

import psycopg
from psycopg.types.json import Jsonb

from operators.revenue import period_bounds
from sinks.catalog import require_tenant
from sinks.replay import Ledger, Scope, digest, figures


class PeriodError(ValueError):
    """The period cannot be closed or changed; the message says why."""


def scope_of(tenant: str, period: str, closed_through: int | None = None, at_close: bool = False) -> Scope:
    start, end = period_bounds(period)
    return Scope(tenant, start, end, closed_through, at_close)


def totals(conn: psycopg.Connection, scope: Scope) -> dict[str, dict[str, str]]:
    """"customer/metric" -> events, quantity, revenue as exact strings."""
    return {f"{c}/{m}": {"events": str(n), "quantity": str(q), "revenue": str(r)}
            for (c, m), (n, q, r) in sorted(figures(conn, Ledger.live(scope)).items(), key=str)}


FINISHING_LOCK = 0x0AF0_0016  # advisory locks of closes computing a digest: (this, hash of tenant and period)


def close_period(conn: psycopg.Connection, tenant: str, period: str, actor: str) -> tuple[str, dict]:
    """Freeze a period: record its digest and totals, and bump the catalog version so running
    flows bill its late events as adjustments of the next open period. A period left closing by
    an interrupted close is finished; one closed already is refused (PeriodError).

    Two phases, so metering waits only for the first: `cut_period` fixes the rows the close
    covers and commits, `finish_close` computes the digest and totals over them. The connection
    must not be in a transaction: the cut's lock would be held until the caller commits."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise RuntimeError("close_period runs its own transactions: commit or roll back first")
    cut_here = cut_period(conn, tenant, period, actor)
    if not (finish_close(conn, tenant, period) or cut_here):
        raise PeriodError(f"{tenant} {period} is already closed")
    d, t = conn.execute("SELECT digest, totals FROM closed_periods WHERE tenant = %s AND period = %s",
                        (tenant, period)).fetchone()
    conn.commit()
    return d, t


def cut_period(conn: psycopg.Connection, tenant: str, period: str, actor: str) -> bool:
    """The close's first phase, one short transaction: record the last ledger id drawn
    (`closed_through`) with no digest yet (the period is closing) and bump the catalog version.
    False when the period is closing already (an interrupted close: nothing to cut again).

    The digest covers the rows committed when it closed (ids up to the cut) plus every accepted
    row: rows written later in its time range (late events held, duplicates) bill nothing and
    leave it alone, while a row billed in it after the close (the flow bills such events in the
    next open period) changes its bill and must show. Ids are drawn at insert and committed in
    any order, so the cut is clean only under SHARE mode: it waits for the ledger's writers in
    flight and holds new ones (they wait, never fail) until this commits, which takes
    milliseconds whatever the ledger's size (README, Closed periods)."""
    with conn.transaction():
        require_tenant(conn, tenant)
        found = conn.execute("SELECT digest FROM closed_periods WHERE tenant = %s AND period = %s",
                             (tenant, period)).fetchone()
        if found is not None and found[0] is not None:
            raise PeriodError(f"{tenant} {period} is already closed")
        if found is not None:
            return False
        conn.execute("LOCK TABLE ledger IN SHARE MODE")
        # The last id drawn, not max(id): the ledger has no index on id, so that would scan it
        # whole under the lock. The same cut: no writer is between drawing an id and committing.
        through = conn.execute("SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence("
                               "'ledger', 'id')::regclass), 0)").fetchone()[0]
        # SHARE does not exclude SHARE: a close of the period at the same moment has passed the
        # check above too; its insert, committed first, makes this one a no-op.
        if conn.execute("INSERT INTO closed_periods (tenant, period, closed_by, closed_through)"
                        " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
                        (tenant, period, actor, through)).fetchone() is None:
            raise PeriodError(f"{tenant} {period} is already closed")
        conn.execute("UPDATE catalog_state SET version = version + 1")
    return True


def finish_close(conn: psycopg.Connection, tenant: str, period: str, *, wait: bool = True) -> bool | None:
    """The close's second phase: compute and store the digest and totals of a closing period over
    the rows up to its cut, which can no longer change (every writer that drew such an id had
    committed before the cut's lock was granted), so metering goes on meanwhile and finishing an
    interrupted close later gives the digest it would have had. True when this call stored them,
    False when there was nothing to finish; None when another session is computing them and
    `wait` is False (else this waits for it)."""
    key = (FINISHING_LOCK, f"{tenant}\x1f{period}")
    with conn.transaction():
        if wait:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", key)
        elif not conn.execute("SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))", key).fetchone()[0]:
            return None
        found = conn.execute("SELECT closed_through FROM closed_periods WHERE tenant = %s AND period = %s"
                             " AND digest IS NULL", (tenant, period)).fetchone()
        if found is None:
            return False
        scope = scope_of(tenant, period, found[0], at_close=True)
        conn.execute("UPDATE closed_periods SET digest = %s, totals = %s WHERE tenant = %s AND period = %s",
                     (digest(conn, Ledger.live(scope)), Jsonb(totals(conn, scope)), tenant, period))
    return True


def is_closed(conn: psycopg.Connection, tenant: str, period: str) -> bool:
    return conn.execute("SELECT 1 FROM closed_periods WHERE tenant = %s AND period = %s",
                        (tenant, period)).fetchone() is not None


def show_periods(conn: psycopg.Connection, tenant: str) -> list[dict]:
    """Closed periods with their recorded totals and digest, today's digest (unchanged unless the
    ledger was tampered with), and the adjustments billed in later periods. A period left closing
    by an interrupted close is finished first; one whose close is computing its digest right now
    is listed as closing, without digests or totals."""
    for (period,) in conn.execute("SELECT period FROM closed_periods WHERE tenant = %s AND digest IS NULL"
                                  " ORDER BY period", (tenant,)).fetchall():
        finish_close(conn, tenant, period, wait=False)
    out = []
    for period, closed_at, closed_by, recorded, recorded_totals, through in conn.execute(
            "SELECT period, closed_at, closed_by, digest, totals, closed_through FROM closed_periods"
            " WHERE tenant = %s ORDER BY period", (tenant,)).fetchall():
        adjustments = conn.execute(
            "SELECT period, count(*), coalesce(sum(revenue), 0) FROM ledger"
            " WHERE tenantid = %s AND adjusts_period = %s GROUP BY period ORDER BY period",
            (tenant, period)).fetchall()
        closing = recorded is None
        out.append({
            "period": period, "status": "closing" if closing else "closed", "closed_at": closed_at,
            "closed_by": closed_by, "digest": recorded, "closed_through": through,
            "digest_now": None if closing else digest(conn, Ledger.live(scope_of(tenant, period, through))),
            "totals": recorded_totals,
            "adjustments": [{"billed_in": p, "events": n, "revenue": str(Decimal(r))}
                            for p, n, r in adjustments],
        })
    return out
