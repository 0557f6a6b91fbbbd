"""What the bill run's stages share: period arithmetic and exact sums."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from schemas.billing_run import ZERO, Group


def period_index(period: str) -> int:
    """Months since year 0: the distance between two YYYY-MM periods is a subtraction."""
    year, month = map(int, period.split("-"))
    return year * 12 + month - 1


def shift_period(period: str, months: int) -> str:
    year, month = divmod(period_index(period) + months, 12)
    return f"{year:04d}-{month + 1:02d}"


def total(values: Iterable[Decimal]) -> Decimal:
    return sum(values, ZERO)


def group_label(group: Group) -> str:
    return ", ".join(f"{k}={v}" for k, v in group)
