"""Money as people read it, the same in the CLI and the console: every amount of a currency with
that currency's minor units (CLDR, via Babel: USD 2, JPY 0, BHD 3), rounded half up, with
thousands separators. Display only: the ledger, exports and JSON keep exact amounts."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from functools import cache

from babel.numbers import get_currency_precision


@cache
def minor_unit(currency: str) -> Decimal:
    """The smallest amount shown: 0.01 for USD, 1 for JPY (2 decimals for a code CLDR lacks)."""
    return Decimal(1).scaleb(-get_currency_precision(currency))


def rounded(amount: Decimal, currency: str) -> Decimal:
    return amount.quantize(minor_unit(currency), ROUND_HALF_UP)


def display(amount: Decimal, currency: str) -> str:
    """`1,234.57 USD`."""
    return f"{rounded(amount, currency):,f} {currency}"


def percent(part: Decimal, whole: Decimal) -> Decimal | None:
    """part / whole in percent to one decimal (None when whole is 0): margin %, change %."""
    if not whole:
        return None
    return (part * 100 / whole).quantize(Decimal("0.1"), ROUND_HALF_UP)
