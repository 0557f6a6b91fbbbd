"""The RevenueEstimator: per-event marginal revenue from cumulative running totals.

For each metric an accepted event feeds, revenue = P(total after) - P(total before) on the
running total of its (subscription, metric, period, group), with the same pricing code that
prices a whole period (operators/pricing.py); for a `percentage` charge it is the event's own
fee. So the marginals of a period always add up to its price, exactly.

One SubscriptionRevenue holds every running total of one subscription; the flow keys it by
subscription, so a customer's events are rated in order and the totals are recovered with the
flow after a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from operators.pricing import Charge, GroupKey, Unpriceable, group_key, marginal
from schemas.billing import MetricUse, RevenueLine, TenantInfo
from schemas.record import Reason, Record, Status

_ZERO = Decimal(0)


@dataclass
class PeriodTotals:
    """One (metric, period) of a subscription."""

    events: int = 0
    usage: Decimal = _ZERO  # sum over groups of their running totals
    revenue: Decimal = _ZERO
    cost: Decimal = _ZERO
    groups: dict[GroupKey, Decimal] = field(default_factory=dict)
    distinct: dict[GroupKey, set] = field(default_factory=dict)  # unique_count
    latest_at: dict[GroupKey, int] = field(default_factory=dict)  # latest: event time of the value


def next_total(t: PeriodTotals, gk: GroupKey, use: MetricUse, event_us: int) -> Decimal:
    """The group's running total after this event, by the metric's aggregation."""
    before = t.groups.get(gk, _ZERO)
    agg = use.aggregation
    if agg in ("count", "sum"):
        return before + use.value
    if agg == "max":
        return max(before, use.value)
    if agg == "unique_count":
        return before + (0 if use.raw_value in t.distinct.get(gk, ()) else 1)
    if agg == "latest":  # the value of the latest event by event time, not by arrival
        return use.value if event_us >= t.latest_at.get(gk, event_us) else before
    raise ValueError(f"unknown aggregation {agg!r}")


def revenue_key(rec: Record) -> str:
    """Records are rated by subscription; the rest pass through under their partition's key."""
    if rec.status is None:
        return f"s{rec.event['tenantid']}\x1f{rec.billing.subscription}"
    return f"p{rec.partition}"


class SubscriptionRevenue:
    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], PeriodTotals] = {}

    def rate_batch(self, records: list[Record], tenants: dict[str, TenantInfo]) -> list[Record]:
        """Rate the enriched records among these (in order); pass the others through."""
        for rec in records:
            if rec.status is None:
                ctx = rec.billing
                self.rate(rec, tenants[rec.event["tenantid"]].charges.get((ctx.plan, ctx.plan_version), {}))
        return records

    def rate(self, rec: Record, charges: dict[str, Charge]) -> Record:
        """Price every metric use of an enriched event; all or nothing, so an unpriceable
        event leaves no trace in the running totals."""
        ctx = rec.billing
        planned = []
        for use in ctx.uses:
            t = self.totals.get((use.metric, ctx.period)) or PeriodTotals()
            charge = charges.get(use.metric)
            gk = group_key(charge, use.group) if charge is not None else ()
            before = t.groups.get(gk, _ZERO)
            after = next_total(t, gk, use, rec.event_us)
            try:
                revenue = _ZERO if charge is None else marginal(charge, before, after, use.group, use.value)
            except Unpriceable as exc:
                return rec.decide(Status.UNRESOLVED, Reason.UNPRICEABLE, f"metric {use.metric}: {exc}")
            planned.append((use, t, gk, before, after, revenue))

        rec.lines = []
        for use, t, gk, before, after, revenue in planned:
            cost = use.value * use.unit_cost
            self.totals[(use.metric, ctx.period)] = t
            t.groups[gk] = after
            if use.aggregation == "unique_count":
                t.distinct.setdefault(gk, set()).add(use.raw_value)
            elif use.aggregation == "latest" and rec.event_us >= t.latest_at.get(gk, rec.event_us):
                t.latest_at[gk] = rec.event_us
            t.events += 1
            t.usage += after - before
            t.revenue += revenue
            t.cost += cost
            rec.lines.append(RevenueLine(use.metric, use.group, use.value, after, revenue, cost,
                                         t.events, t.usage, t.revenue, t.cost))
        return rec


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """[start, end) of a YYYY-MM billing period in UTC."""
    start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    if start.month == 12:
        return start, start.replace(year=start.year + 1, month=1)
    end = start.replace(month=start.month + 1)
    return start, end
