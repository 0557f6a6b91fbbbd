"""Read-side queries for the CLI and the API: ledger export, provenance chains, summaries, revenue."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg

from operators.money import rounded
from operators.pricing import Charge
from operators.projection import Pace, projected_revenue
from schemas.billing import TenantInfo
from sinks.catalog import load_tenants
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


def usage_rows(conn: psycopg.Connection, period: str, tenant: str | None,
               customer: str | None = None) -> list[dict]:
    """The flow's running totals of a period per (subscription, metric), with the plan version
    the subscription is on: what the period's projection is computed from."""
    cur = conn.execute(
        "SELECT r.tenant, r.customer, r.subscription, r.metric, r.currency, r.events, r.quantity,"
        " r.revenue, r.cost, s.plan, s.plan_version FROM revenue r"
        " LEFT JOIN subscriptions s ON s.tenant = r.tenant AND s.id = r.subscription"
        " WHERE r.period = %s AND (%s::text IS NULL OR r.tenant = %s)"
        " AND (%s::text IS NULL OR r.customer = %s)"
        " ORDER BY r.tenant, r.customer, r.subscription, r.metric",
        (period, tenant, tenant, customer, customer))
    return as_dicts(cur)


def plan_terms(tenants: dict[str, TenantInfo], row: dict) -> tuple[Charge | None, str]:
    """(the charge, the metric's aggregation) that price a usage row."""
    info = tenants.get(row["tenant"])
    if info is None:
        return None, "sum"
    charge = info.charges.get((row["plan"], row["plan_version"]), {}).get(row["metric"])
    aggregation = next((m.aggregation for metrics in info.metrics_by_type.values() for m in metrics
                        if m.code == row["metric"]), "sum")
    return charge, aggregation


def projected_by_row(rows: list[dict], tenants: dict[str, TenantInfo], scale: Decimal) -> list[Decimal]:
    """Each usage row's end-of-period revenue at the pace `scale` (operators/projection.py)."""
    return [projected_revenue(*plan_terms(tenants, r), r["quantity"], r["revenue"], scale) for r in rows]


def by_currency(pairs: Iterable[tuple[str, Decimal]]) -> dict[str, Decimal]:
    """Amounts summed per currency, in currency order."""
    totals: dict[str, Decimal] = {}
    for currency, amount in pairs:
        totals[currency] = totals.get(currency, Decimal(0)) + amount
    return dict(sorted(totals.items()))


def revenue_report(conn: psycopg.Connection, tenant: str | None, period: str, now: datetime) -> dict:
    """`aforo revenue` and the console's home tiles: revenue today (by event time, UTC day),
    period to date (the flow's running totals), projected end of period (per subscription and
    metric at the current pace, priced on the plan, rounded to the currency's minor unit), and
    revenue, cost and margin by customer. Amounts are exact Decimals except the projection."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    customers = revenue_by_customer(conn, period, tenant)
    rows = usage_rows(conn, period, tenant)
    projected = projected_by_row(rows, load_tenants(conn), Pace.of(period, now).scale)
    return {
        "period": period,
        "today": by_currency(revenue_between(conn, day, day + timedelta(days=1), tenant).items()),
        "period_to_date": by_currency((c["currency"], c["revenue"]) for c in customers),
        "projected_end_of_period": {cur: rounded(v, cur) for cur, v in by_currency(
            (r["currency"], p) for r, p in zip(rows, projected, strict=True)).items()},
        "customers": customers,
    }
