"""End-of-period projections at the current pace: of usage, and of the revenue the plan charges
for that usage.

Usage is projected, not revenue: an accumulating metric (count, sum, unique_count) is scaled by
period length / elapsed time; a level (max, latest) stays where it is. The revenue of a
(subscription, metric) is then what it has earned so far plus the plan's marginal price of the
projected extra usage, P(projected) - P(used), with the flow's own pricing code. So a flat fee or
a stairstep price is counted once, at the step the projected usage reaches, instead of being
multiplied by the pace (the demo's $50 storage step projected ~70x on the first day), and a
graduated or volume plan is priced at its tiers. Charges linear in usage (per unit, matrix,
percentage) scale with the pace.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from operators.pricing import (
    Charge,
    MatrixCharge,
    PercentageCharge,
    PerUnitCharge,
    Unpriceable,
    marginal,
)
from operators.revenue import period_bounds
from operators.timestamp_gate import to_us

LEVELS = frozenset({"max", "latest"})  # aggregations whose usage is a level: never extrapolated
_LINEAR = (PerUnitCharge, MatrixCharge, PercentageCharge)
_USAGE_STEP = Decimal("0.000001")  # projected quantities are priced at this resolution


_MINUTE_US = 60_000_000


@dataclass(frozen=True)
class Pace:
    """How far a billing period is at a moment (UTC), in whole minutes: a projection stays put
    for a minute, so the CLI and the console asked a few seconds apart agree to the cent."""

    period: str
    elapsed_us: int
    length_us: int

    @classmethod
    def of(cls, period: str, now: datetime) -> Pace:
        start, end = period_bounds(period)
        length = to_us(end) - to_us(start)
        elapsed = min(max(to_us(now) - to_us(start), 0), length) // _MINUTE_US * _MINUTE_US
        return cls(period, elapsed, length)

    @property
    def started(self) -> bool:
        return self.elapsed_us > 0

    @property
    def over(self) -> bool:
        return self.elapsed_us == self.length_us

    @property
    def scale(self) -> Decimal:
        """Period length / elapsed: 1 once the period is over (a past period projects to itself)."""
        return Decimal(self.length_us) / Decimal(self.elapsed_us) if self.started else Decimal(1)

    @property
    def day(self) -> int:
        """Which day of the period it is (1-based), "day 16 of 31"."""
        return min(self.elapsed_us // 86_400_000_000 + 1, self.days)

    @property
    def days(self) -> int:
        return self.length_us // 86_400_000_000


def previous_period(period: str) -> str:
    year, month = map(int, period.split("-"))
    return f"{year - 1}-12" if month == 1 else f"{year}-{month - 1:02d}"


def projected_usage(used: Decimal, aggregation: str, scale: Decimal) -> Decimal:
    """End-of-period usage at the current pace; a level is not extrapolated."""
    if aggregation in LEVELS or scale == 1:
        return used
    return (used * scale).quantize(_USAGE_STEP)


def projected_revenue(charge: Charge | None, aggregation: str, used: Decimal, revenue: Decimal,
                      scale: Decimal) -> Decimal:
    """End-of-period revenue of one (subscription, metric) whose period so far has `used` units
    (the running total the flow prices on) and earned `revenue`."""
    if charge is None or scale == 1 or aggregation in LEVELS:
        return revenue
    if isinstance(charge, _LINEAR):
        return revenue * scale
    after = projected_usage(used, aggregation, scale)
    try:
        return revenue + marginal(charge, used, after)
    except Unpriceable:  # beyond a capped last tier: the plan charges no more than its cap
        return revenue + marginal(charge, used, max(used, charge.bounds[-1]))
