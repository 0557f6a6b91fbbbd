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


def scope_of(tenant: str, period: str, closed_through: int | None = None) -> Scope:
    start, end = period_bounds(period)
    return Scope(tenant, start, end, closed_through)


def totals(conn: psycopg.Connection, scope: Scope) -> dict[str, dict[str, str]]:
    """"customer/metric" -> events, quantity, revenue as exact strings."""
    return {f"{c}/{m}": {"events": str(n), "quantity": str(q), "revenue": str(r)}
            for (c, m), (n, q, r) in sorted(figures(conn, Ledger.live(scope)).items(), key=str)}


def close_period(conn: psycopg.Connection, tenant: str, period: str, actor: str) -> tuple[str, dict]:
    """Freeze a period: record its digest and totals, and bump the catalog version so running
    flows bill its late events as adjustments of the next open period.

    The digest covers the rows committed when it closed (ids up to `closed_through`, the highest
    then) plus every accepted row: rows written later in its time range (late events held,
    duplicates) bill nothing and leave it alone, while a row billed in it after the close (the
    flow bills such events in the next open period) changes its bill and must show. Ids are drawn
    at insert and committed in any order, so the cut is clean only under SHARE mode: it waits for
    the ledger's writers in flight and holds new ones (they wait, never fail) until this commits,
    about as long as the digest takes (README, Closed periods)."""
    with conn.transaction():
        require_tenant(conn, tenant)
        if conn.execute("SELECT 1 FROM closed_periods WHERE tenant = %s AND period = %s",
                        (tenant, period)).fetchone():
            raise PeriodError(f"{tenant} {period} is already closed")
        conn.execute("LOCK TABLE ledger IN SHARE MODE")
        through = conn.execute("SELECT coalesce(max(id), 0) FROM ledger").fetchone()[0]
        scope = scope_of(tenant, period, through)
        d, t = digest(conn, Ledger.live(scope)), totals(conn, scope)
        conn.execute("INSERT INTO closed_periods (tenant, period, closed_by, digest, totals, closed_through)"
                     " VALUES (%s, %s, %s, %s, %s, %s)", (tenant, period, actor, d, Jsonb(t), through))
        conn.execute("UPDATE catalog_state SET version = version + 1")
    return d, t


def is_closed(conn: psycopg.Connection, tenant: str, period: str) -> bool:
    return conn.execute("SELECT 1 FROM closed_periods WHERE tenant = %s AND period = %s",
                        (tenant, period)).fetchone() is not None


def show_periods(conn: psycopg.Connection, tenant: str) -> list[dict]:
    """Closed periods with their recorded totals and digest, today's digest (unchanged unless the
    ledger was tampered with), and the adjustments billed in later periods."""
    out = []
    for period, closed_at, closed_by, recorded, recorded_totals, through in conn.execute(
            "SELECT period, closed_at, closed_by, digest, totals, closed_through FROM closed_periods"
            " WHERE tenant = %s ORDER BY period", (tenant,)).fetchall():
        adjustments = conn.execute(
            "SELECT period, count(*), coalesce(sum(revenue), 0) FROM ledger"
            " WHERE tenantid = %s AND adjusts_period = %s GROUP BY period ORDER BY period",
            (tenant, period)).fetchall()
        out.append({
            "period": period, "closed_at": closed_at, "closed_by": closed_by, "digest": recorded,
            "closed_through": through,
            "digest_now": digest(conn, Ledger.live(scope_of(tenant, period, through))),
            "totals": recorded_totals,
            "adjustments": [{"billed_in": p, "events": n, "revenue": str(Decimal(r))}
                            for p, n, r in adjustments],
        })
    return out
