"""Stage 6, Commit: a subscription's minimum per period. When its usage lines (after allowances,
before discounts) add up to less than `minimum`, a true-up line bills the difference; usage that
meets the minimum exactly needs none. A minimum is not prorated for a partial period."""

from __future__ import annotations

from decimal import Decimal

from operators.billing.common import total
from schemas.billing_run import ZERO, Draft, Line, Part

ONE = Decimal(1)


def commit(draft: Draft) -> Draft:
    lines = list(draft.lines)
    for sub in draft.header.subscriptions:
        if sub.minimum is None:
            continue
        usage = total(x.amount for x in draft.lines if x.subscription == sub.id)
        if usage < sub.minimum:
            lines.append(Line(
                line_no=len(lines) + 1, kind="commitment", subscription=sub.id, amount=sub.minimum - usage,
                description="minimum commitment true-up",
                parts=(Part(label=f"minimum of {sub.plan} v{sub.plan_version}", quantity=ONE,
                            unit_price=sub.minimum, amount=sub.minimum),
                       Part(label="usage billed", quantity=ONE, unit_price=ZERO - usage,
                            amount=ZERO - usage))))
    return draft.model_copy(update={"lines": tuple(lines)})
