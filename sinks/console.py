"""Read models of the web console and the portal: plain `(conn, ...)` queries the API runs off its
event loop. Revenue figures reuse sinks/reports.py (the queries behind `aforo revenue`); every
query narrows to the tenant (None: every tenant, for an operator key) and, for the portal, to one
customer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise

import psycopg

from operators.pricing import GraduatedCharge, StairstepCharge, VolumeCharge
from operators.projection import Pace, previous_period, projected_revenue, projected_usage
from operators.revenue import period_bounds
from sinks.catalog import load_tenants
from sinks.postgres import as_dicts
from sinks.reports import (
    by_currency,
    plan_terms,
    projected_by_row,
    revenue_between,
    revenue_report,
    usage_rows,
)

_ZERO = Decimal(0)
HOURS = 24  # sparkline points


def _midnight(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


# --- home: the revenue tiles -----------------------------------------------------------------------

_HOURLY = """
SELECT l.currency, l.period, l.tenantid, l.subscription, x.metric,
       least(floor(extract(epoch FROM l.event_time - %(t0)s) / 3600)::int, %(last)s) AS bucket,
       sum(x.revenue), sum(x.quantity), min(x.total_after), max(x.total_after)
FROM ledger l JOIN ledger_lines x USING (raw_topic_id, raw_partition, raw_offset)
WHERE l.status = 'accepted' AND l.event_time >= %(t0)s
  AND (%(tenant)s::text IS NULL OR l.tenantid = %(tenant)s)
GROUP BY 1, 2, 3, 4, 5, 6
"""


def revenue_summary(conn: psycopg.Connection, tenant: str | None, now: datetime) -> dict:
    """The home page: `revenue_report` of the current period, plus what its tiles compare with
    (yesterday up to the same time of day, the previous period up to the same point) and a
    24-hour sparkline per tile, per currency. Hourly points are by event time; the period-to-date
    and projection points are the current figures minus what the events after each point added."""
    period = now.astimezone(UTC).strftime("%Y-%m")
    pace = Pace.of(period, now)
    report = revenue_report(conn, tenant, period, now)
    day = _midnight(now)
    yesterday = revenue_between(conn, day - timedelta(days=1), now - timedelta(days=1), tenant)
    start, _ = period_bounds(period)
    prev_start, prev_end = period_bounds(previous_period(period))
    previous = revenue_between(conn, prev_start, min(prev_start + (now - start), prev_end), tenant)

    t0 = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)
    points = [min(t0 + timedelta(hours=i + 1), now) for i in range(HOURS)]
    buckets = conn.execute(_HOURLY, {"t0": t0, "last": HOURS, "tenant": tenant}).fetchall()
    rows = usage_rows(conn, period, tenant)
    tenants = load_tenants(conn)
    currencies = sorted(set(report["today"]) | set(report["period_to_date"]) | set(previous)
                        | set(yesterday))
    out = []
    for cur in currencies:
        hourly = [_ZERO] * HOURS
        for c, _p, _t, _s, _m, b, rev, *_ in buckets:
            if c == cur and b < HOURS:
                hourly[b] += rev
        out.append({
            "currency": cur,
            "today": report["today"].get(cur, _ZERO),
            "yesterday_same_time": yesterday.get(cur, _ZERO),
            "period_to_date": report["period_to_date"].get(cur, _ZERO),
            "previous_period_same_point": previous.get(cur, _ZERO),
            "projected": report["projected_end_of_period"].get(cur, _ZERO),
            "sparklines": {
                "today": [{"at": p, "amount": a} for p, a in zip(points, hourly, strict=True)],
                **_period_points(cur, period, points, buckets,
                                 [r for r in rows if r["currency"] == cur], tenants),
            },
        })
    return {"period": period, "day": pace.day, "days": pace.days, "as_of": now, "currencies": out}


def _period_points(cur: str, period: str, points: list[datetime], buckets: list[tuple],
                   rows: list[dict], tenants: dict) -> dict[str, list[dict]]:
    """Period to date and the projection as they stood at each point: each (subscription,
    metric)'s current revenue and usage minus what its lines after the point added. Usage is
    exact for count and sum; for unique_count the later lines' spread of running totals stands
    in for their increments (levels are not extrapolated, so their usage is not needed)."""
    start, _ = period_bounds(period)
    later: dict[tuple[str, str, str], list[tuple]] = {}
    for c, p, t, s, m, b, rev, qty, low, high in buckets:
        if c == cur and p == period:
            later.setdefault((t, s, m), []).append((b, rev, qty, low, high))
    to_date, projected = [], []
    for i, at in enumerate(points):
        if at <= start:
            to_date.append({"at": at, "amount": None})
            projected.append({"at": at, "amount": None})
            continue
        scale = Pace.of(period, at).scale
        total_rev = total_proj = _ZERO
        for r in rows:
            after = [x for x in later.get((r["tenant"], r["subscription"], r["metric"]), ()) if x[0] > i]
            charge, agg = plan_terms(tenants, r)
            rev = r["revenue"] - sum((x[1] for x in after), _ZERO)
            if agg == "unique_count" and after:
                used = r["quantity"] - (max(x[4] for x in after) - min(x[3] for x in after) + 1)
            else:
                used = r["quantity"] - sum((x[2] for x in after), _ZERO)
            total_rev += rev
            total_proj += projected_revenue(charge, agg, max(used, _ZERO), rev, scale)
        to_date.append({"at": at, "amount": total_rev})
        projected.append({"at": at, "amount": total_proj})
    return {"period_to_date": to_date, "projected": projected}


# --- margins ----------------------------------------------------------------------------------------

def periods(conn: psycopg.Connection, tenant: str | None) -> list[str]:
    """Periods with revenue, newest first."""
    return [p for (p,) in conn.execute(
        "SELECT DISTINCT period FROM revenue WHERE %s::text IS NULL OR tenant = %s ORDER BY period DESC",
        (tenant, tenant))]


def margins(conn: psycopg.Connection, tenant: str | None, period: str) -> list[dict]:
    """Per customer and metric: events, quantity, revenue, cost (the flow's running totals)."""
    cur = conn.execute(
        "SELECT r.tenant, r.customer, coalesce(c.name, '') AS name, r.metric, r.currency,"
        " sum(r.events) AS events, sum(r.quantity) AS quantity, sum(r.revenue) AS revenue,"
        " sum(r.cost) AS cost FROM revenue r"
        " LEFT JOIN customers c ON c.tenant = r.tenant AND c.id = r.customer"
        " WHERE r.period = %s AND (%s::text IS NULL OR r.tenant = %s)"
        " GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 4", (period, tenant, tenant))
    return as_dicts(cur)


# --- live events -------------------------------------------------------------------------------------

def recent_events(conn: psycopg.Connection, tenant: str | None, status: str | None, source: str | None,
                  limit: int) -> list[dict]:
    """The latest ledger rows by event time (what the live stream showed before the page opened)."""
    cur = conn.execute(
        "SELECT tenantid, source, event_id AS id, type, subject, event_time AS time, ingested_at,"
        " status, reason, detail, tier, customer, currency, revenue FROM ledger"
        " WHERE event_time IS NOT NULL AND (%(tenant)s::text IS NULL OR tenantid = %(tenant)s)"
        " AND (%(status)s::text IS NULL OR status = %(status)s)"
        " AND (%(source)s::text IS NULL OR source = %(source)s)"
        " ORDER BY event_time DESC, raw_partition, raw_offset LIMIT %(limit)s",
        {"tenant": tenant, "status": status, "source": source, "limit": limit})
    return as_dicts(cur)


def event_counters(conn: psycopg.Connection, tenant: str | None, now: datetime) -> dict:
    """Of today's events (UTC day, by event time): how many, how many were duplicates, and the
    revenue those duplicates would have charged again (what the original, accepted record was
    rated), per currency."""
    day = _midnight(now)
    window = {"tenant": tenant, "from": day, "to": day + timedelta(days=1)}
    scope = ("event_time >= %(from)s AND event_time < %(to)s"
             " AND (%(tenant)s::text IS NULL OR tenantid = %(tenant)s)")
    events, duplicates = conn.execute(
        f"SELECT count(*), count(*) FILTER (WHERE status = 'duplicate') FROM ledger WHERE {scope}",
        window).fetchone()
    leakage = dict(conn.execute(
        "SELECT a.currency, sum(a.revenue) FROM ledger d"
        " JOIN dedup_claims c ON c.dedup_key = d.dedup_key"
        " JOIN ledger a ON a.raw_topic_id = c.raw_topic_id AND a.raw_partition = c.raw_partition"
        "  AND a.raw_offset = c.raw_offset"
        f" WHERE d.status = 'duplicate' AND a.status = 'accepted' AND a.revenue IS NOT NULL"
        f" AND {scope.replace('event_time', 'd.event_time').replace('tenantid', 'd.tenantid')}"
        " GROUP BY a.currency ORDER BY a.currency", window).fetchall())
    return {"day": day.date(), "events": events, "duplicates": duplicates, "leakage_prevented": leakage}


def event_lines(conn: psycopg.Connection, coords: list[tuple[str, int, int]]) -> dict[tuple, list[dict]]:
    """The revenue lines of ledger rows, by (raw topic id, partition, offset)."""
    if not coords:
        return {}
    cur = conn.execute(
        "SELECT raw_topic_id, raw_partition, raw_offset, metric, grp AS group, quantity, total_after,"
        " revenue, cost, margin FROM ledger_lines"
        " WHERE (raw_topic_id, raw_partition, raw_offset)"
        "  IN (SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[]))"
        " ORDER BY raw_topic_id, raw_partition, raw_offset, metric",
        ([c[0] for c in coords], [c[1] for c in coords], [c[2] for c in coords]))
    out: dict[tuple, list[dict]] = {}
    for row in as_dicts(cur):
        key = (row.pop("raw_topic_id"), row.pop("raw_partition"), row.pop("raw_offset"))
        out.setdefault(key, []).append(row)
    return out


# --- unit health ------------------------------------------------------------------------------------

_TIERED = (GraduatedCharge, VolumeCharge, StairstepCharge)
_BINS = 20


def _nice_step(top: Decimal) -> Decimal:
    """A bin width of 1, 2 or 5 times a power of ten giving about _BINS bins up to `top`."""
    raw = top / _BINS
    power = Decimal(1).scaleb(raw.adjusted())
    for m in (1, 2, 5, 10):
        if power * m >= raw:
            return power * m
    return power * 10


def tier_health(conn: psycopg.Connection, tenant: str | None, period: str) -> list[dict]:
    """For every tiered charge (graduated, volume, stairstep) in use: each customer's period usage
    of the metric, a histogram of it, the plan's tier thresholds, and the share of usage in each
    tier. A graduated charge splits a customer's units across the tiers they pass through; a
    volume or stairstep charge prices all of a customer's units at the tier its total reaches, so
    all of them count there."""
    tenants = load_tenants(conn)
    groups: dict[tuple, dict] = {}
    for r in usage_rows(conn, period, tenant):
        charge, _ = plan_terms(tenants, r)
        if not isinstance(charge, _TIERED):
            continue
        key = (r["tenant"], r["metric"], r["plan"], r["plan_version"])
        g = groups.setdefault(key, {"charge": charge, "usage": {}})
        g["usage"][r["customer"]] = g["usage"].get(r["customer"], _ZERO) + r["quantity"]
    out = []
    for (t, metric, plan, version), g in sorted(groups.items()):
        charge, usage = g["charge"], g["usage"]
        bounds = list(charge.bounds)
        tiers = len(charge.prices if isinstance(charge, StairstepCharge) else charge.unit_prices)
        units = [_ZERO] * tiers
        customers = [0] * tiers
        for q in usage.values():
            reached = next((i for i, b in enumerate(bounds) if q <= b), len(bounds))
            reached = min(reached, tiers - 1)
            customers[reached] += 1
            if isinstance(charge, GraduatedCharge):
                below = _ZERO
                for i in range(tiers):
                    top = bounds[i] if i < len(bounds) else q
                    units[i] += max(min(q, top) - below, _ZERO)
                    below = top
            else:
                units[reached] += q
        total = sum(units, _ZERO)
        top = max([*usage.values(), *bounds, Decimal(1)]) * Decimal("1.1")
        step = _nice_step(top)
        edges = [step * i for i in range(int(top / step) + 2)]
        histogram = [{"from": lo, "to": hi, "customers": sum(1 for q in usage.values() if lo <= q < hi)}
                     for lo, hi in pairwise(edges)]
        out.append({
            "tenant": t, "metric": metric, "plan": plan, "plan_version": version, "model": charge.model,
            "thresholds": bounds, "customers": len(usage), "total_usage": total,
            "usage": [{"customer": c, "quantity": q} for c, q in sorted(usage.items())],
            "tiers": [{"tier": i + 1, "from": bounds[i - 1] if i else _ZERO,
                       "up_to": bounds[i] if i < len(bounds) else None, "units": units[i],
                       "share_percent": (units[i] * 100 / total).quantize(Decimal(1)) if total else None,
                       "customers": customers[i]} for i in range(tiers)],
            "histogram": histogram,
            "dominant_tier": max(range(tiers), key=lambda i: units[i]) + 1 if total else None,
        })
    return out


# --- alerts and quotas ---------------------------------------------------------------------------

def quota_status(conn: psycopg.Connection, tenant: str | None, period: str, now: datetime,
                 customer: str | None = None) -> list[dict]:
    """Every quota: used this period (the flow's running total), projected at the current pace
    (levels not extrapolated), and its limit."""
    cur = conn.execute(
        'SELECT q.tenant, s.customer, q.subscription, q.metric, q."limit", m.aggregation,'
        " coalesce(r.quantity, 0) AS used FROM quotas q"
        " JOIN subscriptions s ON s.tenant = q.tenant AND s.id = q.subscription"
        " JOIN metrics m ON m.tenant = q.tenant AND m.code = q.metric"
        " LEFT JOIN revenue r ON r.tenant = q.tenant AND r.subscription = q.subscription"
        "  AND r.metric = q.metric AND r.period = %(period)s"
        " WHERE (%(tenant)s::text IS NULL OR q.tenant = %(tenant)s)"
        " AND (%(customer)s::text IS NULL OR s.customer = %(customer)s)"
        " ORDER BY q.tenant, s.customer, q.subscription, q.metric",
        {"period": period, "tenant": tenant, "customer": customer})
    scale = Pace.of(period, now).scale
    rows = as_dicts(cur)
    for r in rows:  # an estimate, shown to two decimals like the quota pacing alerts
        r["projected"] = projected_usage(r["used"], r.pop("aggregation"), scale).quantize(Decimal("0.01"))
    return rows


# --- portal ---------------------------------------------------------------------------------------

def customer_usage(conn: psycopg.Connection, tenant: str, customer: str, period: str,
                   now: datetime) -> dict:
    """One customer's period: usage and revenue per metric, the projected bill, its quotas."""
    name = conn.execute("SELECT name FROM customers WHERE tenant = %s AND id = %s",
                        (tenant, customer)).fetchone()
    rows = usage_rows(conn, period, tenant, customer)
    projected = by_currency(zip([r["currency"] for r in rows], projected_by_row(
        rows, load_tenants(conn), Pace.of(period, now).scale), strict=True))
    metrics = []
    for r in rows:
        metrics.append({"metric": r["metric"], "subscription": r["subscription"], "plan": r["plan"],
                        "currency": r["currency"], "events": r["events"], "quantity": r["quantity"],
                        "revenue": r["revenue"]})
    return {"tenant": tenant, "customer": customer, "name": name[0] if name else None,
            "found": name is not None, "period": period, "metrics": metrics, "projected": projected,
            "quotas": quota_status(conn, tenant, period, now, customer)}


def first_customer(conn: psycopg.Connection, tenant: str) -> str | None:
    """The customer a console test event is sent for (the first by id)."""
    row = conn.execute("SELECT id FROM customers WHERE tenant = %s ORDER BY id LIMIT 1", (tenant,)).fetchone()
    return row[0] if row else None



def tenant_names(conn: psycopg.Connection, tenant: str | None = None) -> list[tuple[str, str]]:
    """(id, name) of the catalog's tenants (or of one), for the console's tenant picker."""
    return conn.execute("SELECT id, name FROM tenants WHERE %s::text IS NULL OR id = %s ORDER BY id",
                        (tenant, tenant)).fetchall()
