"""Stage 4, Allowance: what of the metered quantity is not billed, and why.

Deducted from each (subscription, metric)'s lines in this order, each from what the previous
left, over the lines in line order (a matrix charge's groups in their sorted order):

1. `blocked`: usage over a hard quota with overage `block` (decided by QuotaCheck);
2. rolled-over units, oldest first (they expire first);
3. this period's `included` units of the charge;
4. prepaid credits of the metric, oldest grant first (from_period, then grant id), shared by the
   customer's subscriptions in subscription order.

The rest is `billable`. Included units left unused roll over when the charge says so (see
Rollover), with the rolled-over units not used and not yet expired. A percentage charge prices each
event's own amount and has no units to deduct: its lines are billed whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal, localcontext

from operators.billing.common import shift_period, total
from operators.billing.rollover import usable
from operators.pricing import EXACT
from schemas.billing_run import ZERO, Bucket, Carry, CreditBalance, CreditDraw, Draft


def _take(want: Decimal, available: Decimal) -> Decimal:
    return min(want, max(available, ZERO))


def allowance(draft: Draft, credits: Sequence[CreditBalance]) -> Draft:
    h = draft.header
    with localcontext(EXACT):
        grants = {g.grant: g.remaining for g in sorted(credits, key=lambda g: (g.from_period, g.grant))
                  if g.from_period <= h.period and g.remaining > 0}
        metric_of = {g.grant: g.metric for g in credits}
        rolled = {(c.subscription, c.metric): list(c.buckets) for c in draft.rollover_in}
        lines, carried_out = list(draft.lines), []
        for sub in h.subscriptions:
            for charge in sub.charges:
                mine = [i for i, x in enumerate(lines)
                        if (x.subscription, x.metric) == (sub.id, charge.metric)]
                quota = draft.quota(sub.id, charge.metric)
                blocked = quota.blocked if quota else ZERO
                buckets = rolled.get((sub.id, charge.metric), [])
                included = charge.included
                for i in mine:
                    x = lines[i]
                    if charge.definition.get("model") == "percentage":
                        lines[i] = x.model_copy(update={"billable": x.quantity})
                        continue
                    left = x.quantity
                    block = _take(blocked, left)
                    blocked, left = blocked - block, left - block
                    from_rollover = ZERO
                    for j, b in enumerate(buckets):
                        used = _take(left, b.units)
                        buckets[j] = Bucket(origin=b.origin, units=b.units - used)
                        from_rollover, left = from_rollover + used, left - used
                    from_included = _take(left, included)
                    included, left = included - from_included, left - from_included
                    draws = []
                    for grant in grants:
                        if metric_of[grant] != charge.metric:
                            continue
                        used = _take(left, grants[grant])
                        if used:
                            draws.append(CreditDraw(grant=grant, units=used))
                            grants[grant] -= used
                            left -= used
                    lines[i] = x.model_copy(update={
                        "blocked": block, "rollover_used": from_rollover, "included_used": from_included,
                        "credits_used": total(d.units for d in draws), "credit_draws": tuple(draws),
                        "billable": left})
                if charge.rollover is not None:
                    leftover = [*buckets, Bucket(origin=h.period, units=included)]
                    kept = usable(leftover, charge.rollover, shift_period(h.period, 1))
                    if total(b.units for b in kept):
                        carried_out.append(Carry(subscription=sub.id, metric=charge.metric, buckets=kept))
    return draft.model_copy(update={"lines": tuple(lines), "rollover_out": tuple(carried_out)})

