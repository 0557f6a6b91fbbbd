"""What the read routes share: money as JSON (exact amount plus the display string the CLI
prints), the clock of "today" and "this period", and the period parameter."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from pydantic import BaseModel

from api.errors import ApiError
from operators.money import display
from operators.revenue import period_bounds


class Money(BaseModel):
    amount: str  # exact, as the ledger holds it (a projection: rounded to the currency's minor unit)
    currency: str
    display: str  # the currency's minor units, half up: what `aforo revenue` prints


def money(amount: Decimal, currency: str) -> Money:
    return Money(amount=str(amount), currency=currency, display=display(amount, currency))


def now() -> datetime:
    """What "today" and "this period" mean to the read routes."""
    return datetime.now(UTC)


def period_param(period: str | None) -> str:
    """A YYYY-MM period, the current one by default (400 for anything else)."""
    if not period:
        return now().strftime("%Y-%m")
    try:
        period_bounds(period)
    except ValueError:
        raise ApiError(400, "bad_request", f"period must be YYYY-MM, got {period!r}") from None
    return period
