"""QuotaPacingProjectionService: warns before a quota runs out, and when it has.

For every quota (subscription, metric, limit) of the catalog, on every metered event of the
subscription:
* used = the (subscription, metric, period) usage after the event: the sum over the metric's
  groups of each group's latest running total (`total_after` of its lines), the same number the
  metering flow bills on;
* elapsed = how far the period is, in EVENT time: the latest event time seen for the
  subscription (of its metered events, the only ones read), relative to the billing period (a
  calendar month in UTC, `period_bounds`);
* projected end-of-period usage = used / elapsed fraction. A `max` or `latest` metric is a level,
  not an accumulation, so it is never extrapolated: only its actual usage is checked.

Thresholds: 80%, 100% and 120% of the limit, each for the projected and for the actual usage,
each firing at most once per (subscription, metric, period), on the first event at which it
holds. Projections are only trusted once 5% of the period has elapsed (MIN_PROGRESS_PERCENT):
before that, a handful of early events extrapolates to nonsense. Actual usage is a fact, not an
estimate, so an actual threshold fires whenever it is reached, even on the first day.

The limit is the catalog's when the event is processed; the alert key carries the threshold in
percent, not the limit, so a replay after a limit change never fires the same threshold twice.

Backfilled events (api/backfill.py) are paced as if they had arrived on time: their lines carry
the running total after them, as the flow rated them, so `used` counts them in their own period
whatever the order; elapsed stays the subscription's latest event time, so a backfill into an
earlier period is judged on that whole period (projected = used), and one into the current
period on the part of it that has elapsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache

from operators.anomaly import Alert, Usage
from operators.projection import previous_period
from operators.revenue import period_bounds
from operators.timestamp_gate import to_us

THRESHOLDS = (80, 100, 120)  # percent of the limit
MIN_PROGRESS_PERCENT = 5
_ZERO = Decimal(0)
_CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Quota:
    limit: Decimal
    extrapolate: bool  # False for levels (max, latest): projecting them linearly means nothing


@cache  # a handful of periods, parsed once each: this runs for every event
def _bounds_us(period: str) -> tuple[int, int]:
    start, end = period_bounds(period)
    return to_us(start), to_us(end)


class QuotaPacing:
    """Pacing of every quota of one customer's subscriptions. Plain state: picklable."""

    def __init__(self) -> None:
        self.latest_us: dict[str, int] = {}  # subscription -> latest event time seen
        # (subscription, metric, period) -> group -> its latest running total
        self.totals: dict[tuple[str, str, str], dict[str, Decimal]] = {}
        self.fired: set[tuple[str, str, str, str, int]] = set()  # (sub, metric, period, kind, %)
        self.period: str | None = None  # the latest period seen: older state is pruned

    def observe(self, u: Usage, quotas: Mapping[str, Quota]) -> list[Alert]:
        """The alerts this event fires; `quotas` are its subscription's, by metric."""
        sub = u.subscription
        if u.event_us > self.latest_us.get(sub, u.event_us - 1):
            self.latest_us[sub] = u.event_us
        for line in u.lines:
            self.totals.setdefault((sub, line.metric, u.period), {})[line.group] = line.total_after
        self._prune(u.period)
        start_us, end_us = _bounds_us(u.period)
        elapsed_us = min(max(self.latest_us[sub] - start_us, 0), end_us - start_us)
        length_us = end_us - start_us
        alerts = []
        for metric in sorted(quotas):  # sorted: the same alerts in the same order on a replay
            used = sum(self.totals.get((sub, metric, u.period), {}).values(), _ZERO)
            if used <= 0:
                continue
            quota = quotas[metric]
            for pct in THRESHOLDS:
                bar = quota.limit * pct
                if used * 100 >= bar:
                    alerts += self._fire(u, metric, "quota_actual", pct, quota, used, elapsed_us, length_us)
                # projected = used * length / elapsed >= limit * pct / 100, without a division
                if (quota.extrapolate and elapsed_us * 100 >= length_us * MIN_PROGRESS_PERCENT
                        and used * length_us * 100 >= bar * elapsed_us):
                    alerts += self._fire(u, metric, "quota_projected", pct, quota, used, elapsed_us,
                                         length_us)
        return alerts

    def _fire(self, u: Usage, metric: str, kind: str, pct: int, quota: Quota, used: Decimal,
              elapsed_us: int, length_us: int) -> list[Alert]:
        once = (u.subscription, metric, u.period, kind, pct)
        if once in self.fired:
            return []
        self.fired.add(once)
        start_us, end_us = _bounds_us(u.period)
        projected = used * length_us / elapsed_us if quota.extrapolate and elapsed_us else None
        return [Alert(kind, u.tenant, u.customer, u.subscription, metric, u.period, str(pct),
                      start_us, end_us, u.event_us, {
                          "limit": str(quota.limit), "used": str(used),
                          "projected": "" if projected is None else str(projected.quantize(_CENT)),
                          "elapsed_percent": str((Decimal(elapsed_us * 100) / length_us).quantize(_CENT)),
                          "raw": "/".join(map(str, u.raw))})]

    def _prune(self, period: str) -> None:
        """When a new period begins, keep it and the one before it: accepted events are at most
        24 hours old, so only a backfill reaches further back, and the state of the older period
        it fills lasts until the next period begins (a threshold it crossed fires once)."""
        if self.period is not None and period <= self.period:
            return
        self.period = period
        keep = previous_period(period)
        self.totals = {k: v for k, v in self.totals.items() if k[2] >= keep}
        self.fired = {k for k in self.fired if k[2] >= keep}
