"""Stage 7, Discount: coupons redeemed by the customer and active in the period.

A coupon is active from its redemption's period for `periods` periods (forever without). Order of
application, each on what the previous left of a line (amount minus the discounts so far):

1. coupons on named charges (their metrics' usage lines), then coupons on the whole invoice
   (every line, true-ups included);
2. within each, percentages before fixed amounts, then by coupon code.

A percentage takes that share of every line it applies to. A fixed amount is taken once per
invoice, from its lines in line order, never below zero on a line; what no line can absorb is
not carried over. Amounts stay exact here: Tax rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import localcontext

from operators.billing.common import period_index
from operators.pricing import EXACT
from schemas.billing_run import AppliedDiscount, CouponTerms, Draft, Line


def active(coupon: CouponTerms, period: str) -> bool:
    since = period_index(period) - period_index(coupon.from_period)
    return since >= 0 and (coupon.periods is None or since < coupon.periods)


def _order(c: CouponTerms) -> tuple:
    return (not c.charges, c.percent_off is None, c.code)


def discount(draft: Draft, coupons: Sequence[CouponTerms]) -> Draft:
    lines = list(draft.lines)
    with localcontext(EXACT):
        for c in sorted((c for c in coupons if active(c, draft.header.period)), key=_order):
            targets = [i for i, x in enumerate(lines)
                       if not c.charges or (x.kind == "usage" and x.metric in c.charges)]
            left = c.amount_off
            for i in targets:
                x = lines[i]
                remaining = x.amount - x.discount
                if c.percent_off is not None:
                    off = remaining * c.percent_off / 100
                else:
                    off = min(left, remaining)
                    left -= off
                if off > 0:
                    lines[i] = _with(x, AppliedDiscount(coupon=c.code, amount=off))
    return draft.model_copy(update={"lines": tuple(lines)})


def _with(x: Line, applied: AppliedDiscount) -> Line:
    return x.model_copy(update={"discounts": (*x.discounts, applied),
                                "discount": x.discount + applied.amount})

