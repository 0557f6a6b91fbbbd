"""The RevenueEstimator: per-event marginal revenue from cumulative running totals.

For each metric an accepted event feeds, revenue = P(total after) - P(total before) on the
running total of its (subscription, metric, period, group), with the same pricing code that
prices a whole period (operators/pricing.py); for a `percentage` charge it is the event's own
fee. So the marginals of a period always add up to its price, exactly.

The totals are durable: every batch's changes are written with its ledger rows, in the same
transaction (the `revenue` table and its group totals), and RunningTotals is only a cache of
them. A total it does not hold is loaded from there before the first event that needs it, so
an event's marginal revenue never depends on whether this process ran before, crashed, or lost
its state. One raw partition's totals are held by the one worker that reads the partition; a
customer's events share a partition (the raw topic is keyed by tenant and customer), so every
running total has exactly one writer and is rated in the order its events arrived.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import orjson

from operators.pricing import Charge, GroupKey, Unpriceable, group_key, marginal
from schemas.billing import MetricUse, RevenueLine, TenantInfo
from schemas.errors import AforoError
from schemas.record import Batch, Reason, Record, Status

_ZERO = Decimal(0)

TotalsKey = tuple[str, str, str, str]  # tenant, subscription, metric, period


@dataclass
class PeriodTotals:
    """One (subscription, metric, period)."""

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
        return before + (0 if distinct_value(use.raw_value) in t.distinct.get(gk, ()) else 1)
    if agg == "latest":  # the value of the latest event by event time, not by arrival
        return use.value if event_us >= t.latest_at.get(gk, event_us) else before
    raise ValueError(f"unknown aggregation {agg!r}")


def distinct_value(raw: object) -> str:
    """A unique_count value as JSON text: 7 and "7" are different values, and the text is what
    the durable set stores."""
    return orjson.dumps(raw, default=str).decode()


def group_text(gk: GroupKey) -> str:
    """A group key as the durable totals store it."""
    return orjson.dumps(gk).decode()


LoadTotals = Callable[[Collection[TotalsKey]], dict[TotalsKey, PeriodTotals]]


class RunningTotals:
    """The running totals of one raw partition: a bounded cache of the durable ones.

    `load` reads the durable totals of the keys asked for (absent keys are new, zero). A total
    may be forgotten once the batches that changed it are committed (`committed`): it is then
    exactly what the durable store holds, and is loaded again when needed.
    """

    def __init__(self, load: LoadTotals, max_keys: int = 200_000):
        self._load = load
        self._max_keys = max_keys
        self.totals: dict[TotalsKey, PeriodTotals] = {}  # least recently used first
        self._touched: dict[TotalsKey, int] = {}  # the batch that last changed it
        self._batches = 0
        self._committed = 0

    def rate_batch(self, tenants: dict[str, TenantInfo], batch: Batch) -> Batch:
        """Rate the enriched records of a batch, in order; pass the others through."""
        enriched = [r for r in batch.records if r.status is None]
        if not enriched:
            return batch
        self._batches += 1
        batch.rated_as = self._batches
        wanted = {(r.event["tenantid"], r.billing.subscription, use.metric, r.billing.period)
                  for r in enriched for use in r.billing.uses}
        totals = self.totals
        missing = [k for k in wanted if k not in totals]
        if missing:
            totals.update(self._load(missing))
        for key in wanted:  # most recently used last; changed by this batch
            totals[key] = totals.pop(key)
            self._touched[key] = self._batches
        for rec in enriched:
            ctx = rec.billing
            self.rate(rec, tenants[rec.event["tenantid"]].charges.get((ctx.plan, ctx.plan_version), {}))
        self._evict()
        return batch

    def committed(self, batch_number: int) -> None:
        """Batches up to this one (as counted by rate_batch) are durable."""
        self._committed = max(self._committed, batch_number)

    @property
    def batches(self) -> int:
        return self._batches

    def rate(self, rec: Record, charges: dict[str, Charge]) -> Record:
        """Price every metric use of an enriched event; all or nothing, so an unpriceable
        event leaves no trace in the running totals."""
        ctx = rec.billing
        tenant = rec.event["tenantid"]
        planned = []
        for use in ctx.uses:
            key = (tenant, ctx.subscription, use.metric, ctx.period)
            t = self.totals.get(key) or PeriodTotals()
            charge = charges.get(use.metric)
            gk = group_key(charge, use.group) if charge is not None else ()
            before = t.groups.get(gk, _ZERO)
            after = next_total(t, gk, use, rec.event_us)
            try:
                revenue = _ZERO if charge is None else marginal(charge, before, after, use.group, use.value)
            except Unpriceable as exc:
                return rec.decide(Status.UNRESOLVED, Reason.UNPRICEABLE, f"metric {use.metric}: {exc}")
            planned.append((key, use, t, gk, before, after, revenue))

        rec.lines = lines = []
        event_us = rec.event_us
        for key, use, t, gk, before, after, revenue in planned:
            cost = use.value * use.unit_cost
            if key not in self.totals:  # rated outside rate_batch (a test, a replay)
                self.totals[key] = t
            t.groups[gk] = after
            new_value = None
            if use.aggregation == "unique_count":
                value = distinct_value(use.raw_value)
                seen = t.distinct.setdefault(gk, set())
                if value not in seen:
                    seen.add(value)
                    new_value = value
            elif use.aggregation == "latest" and event_us >= t.latest_at.get(gk, event_us):
                t.latest_at[gk] = event_us
            t.events += 1
            t.usage += after - before
            t.revenue += revenue
            t.cost += cost
            lines.append(RevenueLine(use.metric, use.group, use.value, after, revenue, cost,
                                     t.events, t.usage, t.revenue, t.cost,
                                     "[]" if not gk else group_text(gk), t.latest_at.get(gk), new_value))
        return rec

    def _evict(self) -> None:
        excess = len(self.totals) - self._max_keys
        if excess <= 0:
            return
        doomed = []
        for key in self.totals:  # least recently used first; never one with unwritten changes
            if self._touched.get(key, 0) <= self._committed:
                doomed.append(key)
                if len(doomed) >= excess + self._max_keys // 10:
                    break
        for key in doomed:
            del self.totals[key]
            self._touched.pop(key, None)


def fresh_totals(keys: Iterable[TotalsKey]) -> dict[TotalsKey, PeriodTotals]:
    """Totals with no history (a replay's, or a test's)."""
    return {k: PeriodTotals() for k in keys}


class BadPeriod(AforoError, ValueError):
    """A period that is not spelled YYYY-MM."""


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """[start, end) of a YYYY-MM billing period in UTC. Only that spelling: periods are stored and
    compared as text, so "2026-1" would bill, close or invoice a second January beside "2026-01"."""
    try:
        start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        start = None
    if start is None or f"{start.year:04d}-{start.month:02d}" != period:
        raise BadPeriod(f"{period!r} is not a period: use YYYY-MM (e.g. 2026-03)")
    if start.month == 12:
        return start, start.replace(year=start.year + 1, month=1)
    end = start.replace(month=start.month + 1)
    return start, end
