"""Money as people read it, the same in the CLI and the console: every amount of a currency with
that currency's minor units (CLDR, via Babel: USD 2, JPY 0, BHD 3), rounded half up, with
thousands separators. Display only: the ledger, exports and JSON keep exact amounts."""

from __future__ import annotations

from decimal import MAX_PREC, ROUND_HALF_UP, Context, Decimal
from functools import cache

from babel.numbers import get_currency_precision

# Display only, so no figure is too large to show: the default context's 28 digits refuse the cents
# of a 27-digit amount, or a ratio to a tiny whole (InvalidOperation: a page answering 500).
_UNBOUNDED = Context(prec=MAX_PREC)


@cache
def minor_unit(currency: str) -> Decimal:
    """The smallest amount shown: 0.01 for USD, 1 for JPY (2 decimals for a code CLDR lacks)."""
    return Decimal(1).scaleb(-get_currency_precision(currency))


def rounded(amount: Decimal, currency: str) -> Decimal:
    return amount.quantize(minor_unit(currency), ROUND_HALF_UP, _UNBOUNDED)


def display(amount: Decimal, currency: str) -> str:
    """`1,234.57 USD`."""
    return f"{rounded(amount, currency):,f} {currency}"


def percent(part: Decimal, whole: Decimal, places: Decimal = Decimal("0.1")) -> Decimal | None:
    """part / whole in percent, to one decimal unless told (None when whole is 0): margin %,
    change %, a quota's use of its limit."""
    if not whole:
        return None
    return (part * 100 / whole).quantize(places, ROUND_HALF_UP, _UNBOUNDED)
