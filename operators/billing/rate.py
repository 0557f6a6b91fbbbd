"""Stage 5, Rate: each line priced with operators/pricing.py, the very code that priced each event.

A line's `usage_amount` is the period price of its whole metered quantity, P(quantity); since each
event's revenue was P(total after) - P(total before) on the same running total, the events'
revenue adds up to it exactly, and the stage checks that it does (a difference stops the invoice
with both figures). Its `amount` is the price of the billable quantity, P(billable), shown as parts
(units per tier, packages, steps, fees). A percentage charge has no P(total): each event's fee is
recomputed from its amount (`event_amounts`, in rating order) and summed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

from operators.billing.common import total
from operators.pricing import PercentageCharge, event_fee, parse_charge, period_price, price_parts
from schemas.billing_run import BillingStageError, Draft, Part


def rate(draft: Draft, event_amounts: Mapping[tuple[str, str], Sequence[Decimal]]) -> Draft:
    h = draft.header
    lines = []
    for x in draft.lines:
        charge = parse_charge(h.subscription(x.subscription).charge(x.metric).definition)
        dims = dict(x.group)
        if isinstance(charge, PercentageCharge):
            amounts = event_amounts.get((x.subscription, x.metric), ())
            if len(amounts) != x.events:
                raise BillingStageError(
                    f"line {x.line_no}: {len(amounts)} event amounts for {x.events} events")
            usage = amount = total(event_fee(charge, a) for a in amounts)
            parts = (Part(label=f"{charge.rate}% of {total(amounts)} over {x.events} events, per-event fee "
                          "bounds applied", quantity=Decimal(x.events), unit_price=None, amount=amount),)
        else:
            usage = period_price(charge, x.quantity, dims)
            amount = period_price(charge, x.billable, dims)
            parts = tuple(Part(label=p.label, quantity=p.quantity, unit_price=p.unit_price, amount=p.amount)
                          for p in price_parts(charge, x.billable, dims))
        if usage != x.ledger_revenue:
            raise BillingStageError(
                f"line {x.line_no} ({x.subscription} {x.description}): the period price of {x.quantity} is "
                f"{usage}, but its {x.events} events' revenue adds up to {x.ledger_revenue}")
        lines.append(x.model_copy(update={"model": charge.model, "usage_amount": usage, "amount": amount,
                                          "parts": parts}))
    return draft.model_copy(update={"lines": tuple(lines)})
