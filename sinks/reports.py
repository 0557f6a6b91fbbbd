"""Read-side queries for the CLI: ledger export, provenance chains, summaries, revenue."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

import psycopg

from sinks.postgres import as_dicts

EXPORT_COLUMNS = (
    "tenantid", "source", "id", "type", "subject", "time", "status", "reason", "detail",
    "ingested_at", "processed_at", "topic", "partition", "offset", "route", "dedup_key",
    "validation_hash", "customer", "subscription", "plan", "plan_version", "currency", "period",
    "metric", "quantity", "revenue", "cost", "margin", "tier",
)
# One line per ledger row, or per metric line where an event feeds several metrics.
_EXPORT_SELECT = """
SELECT l.tenantid, l.source, l.event_id, l.type, l.subject, l.event_time, l.status, l.reason,
       l.detail, l.ingested_at, l.processed_at, l.raw_topic, l.raw_partition, l.raw_offset, l.route,
       l.dedup_key, l.validation_hash, l.customer, l.subscription, l.plan, l.plan_version, l.currency,
       l.period, x.metric, x.quantity, coalesce(x.revenue, l.revenue), coalesce(x.cost, l.cost),
       coalesce(x.margin, l.margin), l.tier
FROM ledger l
LEFT JOIN ledger_lines x USING (raw_topic_id, raw_partition, raw_offset)
"""


def export_rows(conn: psycopg.Connection, tenant: str | None, status: str | None) -> Iterable[dict]:
    """Every ledger row matching the filters, streamed with a server-side cursor."""
    where, params = [], []
    if tenant is not None:
        where.append("l.tenantid = %s")
        params.append(tenant)
    if status is not None:
        where.append("l.status = %s")
        params.append(status)
    sql = _EXPORT_SELECT + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY l.ingested_at, l.raw_partition, l.raw_offset, x.metric"
    with conn.cursor(name="aforo_export") as cur:
        cur.itersize = 5000
        cur.execute(sql, params)
        for row in cur:
            yield dict(zip(EXPORT_COLUMNS, row, strict=True))


def event_chain(conn: psycopg.Connection, tenant: str, source: str, event_id: str) -> list[dict]:
    """Every raw record that carried this event (the original and any duplicates), in arrival order."""
    cur = conn.execute(
        "SELECT raw_topic, raw_topic_id, raw_partition, raw_offset, raw_key, raw, ingested_at,"
        " processed_at, status, reason, detail, tenantid, source, event_id, type, subject,"
        " event_time, dedup_key, payload_hash, route, validation_hash, tier, customer, subscription,"
        " plan, plan_version, currency, period, revenue, cost, margin FROM ledger"
        " WHERE tenantid = %s AND source = %s AND event_id = %s"
        " ORDER BY ingested_at, raw_partition, raw_offset", (tenant, source, event_id))
    return as_dicts(cur)


def status_counts(conn: psycopg.Connection, raw_topic: str,
                  since: datetime | None = None) -> list[tuple[str, str, int]]:
    """Ledger rows per status and reason, of records ingested since a moment if given."""
    sql = "SELECT status, coalesce(reason, ''), count(*) FROM ledger WHERE raw_topic = %s"
    params: list = [raw_topic]
    if since is not None:
        sql += " AND ingested_at >= %s"
        params.append(since)
    sql += " GROUP BY 1, 2 ORDER BY 1, 2"
    return [(s, r, n) for s, r, n in conn.execute(sql, params)]


def revenue_by_customer(conn: psycopg.Connection, period: str, tenant: str | None) -> list[dict]:
    """Period-to-date revenue, cost and margin per customer, from the flow's running totals."""
    cur = conn.execute(
        "SELECT tenant, customer, currency, sum(events) AS events, sum(revenue) AS revenue,"
        " sum(cost) AS cost, sum(revenue) - sum(cost) AS margin FROM revenue"
        " WHERE period = %s AND (%s::text IS NULL OR tenant = %s)"
        " GROUP BY tenant, customer, currency ORDER BY tenant, customer", (period, tenant, tenant))
    return as_dicts(cur)


def revenue_between(conn: psycopg.Connection, start: datetime, end: datetime,
                    tenant: str | None) -> dict[str, Decimal]:
    """Revenue per currency of the events whose time falls in [start, end)."""
    return dict(conn.execute(
        "SELECT currency, sum(revenue) FROM ledger WHERE status = 'accepted' AND revenue IS NOT NULL"
        " AND event_time >= %s AND event_time < %s AND (%s::text IS NULL OR tenantid = %s)"
        " GROUP BY currency", (start, end, tenant, tenant)).fetchall())


def ledger_positions(conn: psycopg.Connection, raw_topic_id: str,
                     partitions: Iterable[int]) -> dict[int, int]:
    """Per raw partition, the offset after the highest one in the ledger (partitions with no row
    are left out). One primary-key lookup per partition."""
    positions = {}
    for p in sorted(partitions):
        (top,) = conn.execute("SELECT max(raw_offset) FROM ledger"
                              " WHERE raw_topic_id = %s AND raw_partition = %s", (raw_topic_id, p)).fetchone()
        if top is not None:
            positions[p] = top + 1
    return positions
