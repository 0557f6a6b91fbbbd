"""Stage 8, Tax: exclusive tax per line, and the invoice's one and only rounding.

Each line's net (amount - discount) and its tax (net x rate, exact) are rounded to the currency's
minor unit, half-even, separately; the line's total is the sum of the two rounded figures, and its
`rounding` is what rounding changed (rounded - exact), shown per line and in total. A customer
without a tax rate pays none; a zero-rated or reverse-charge rate charges 0% and says so.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext

from operators.billing.common import total
from operators.pricing import EXACT
from schemas.billing_run import ZERO, Draft, TaxTerms, Totals

_ROUNDING = Context(prec=50, rounding=ROUND_HALF_EVEN)


def round_money(amount: Decimal, minor_units: int) -> Decimal:
    return amount.quantize(Decimal(1).scaleb(-minor_units), context=_ROUNDING)


def tax(draft: Draft, rate: TaxTerms | None, minor_units: int) -> Draft:
    percent = rate.percent if rate is not None else ZERO
    lines = []
    with localcontext(EXACT):
        for x in draft.lines:
            net = x.amount - x.discount
            exact = net * percent / 100
            net_r, tax_r = round_money(net, minor_units), round_money(exact, minor_units)
            lines.append(x.model_copy(update={
                "net": net, "tax_exact": exact, "net_rounded": net_r, "tax": tax_r,
                "rounding": (net_r - net) + (tax_r - exact), "total": net_r + tax_r}))
        totals = Totals(
            usage_subtotal=total(x.amount for x in lines if x.kind == "usage"),
            commitment=total(x.amount for x in lines if x.kind == "commitment"),
            discount=total(x.discount for x in lines),
            # sums of rounded figures; quantized so that an invoice without lines still shows 0.00
            net=round_money(total(x.net_rounded for x in lines), minor_units),
            tax=round_money(total(x.tax for x in lines), minor_units),
            rounding=total(x.rounding for x in lines),
            total=round_money(total(x.total for x in lines), minor_units))
    return draft.model_copy(update={"lines": tuple(lines), "tax_rate": rate, "minor_units": minor_units,
                                    "totals": totals})
