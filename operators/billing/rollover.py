"""Stage 2, Rollover: unused included units of earlier periods that this period may still use.

A charge with `rollover: {max_units, expires_after_periods}` carries the included units a period
left unused into the following periods: units from period O are usable in O+1 ... O+E (E =
expires_after_periods), and at most max_units are carried at any time (the newest are kept).
What the previous invoice carried out is filtered by expiry and capped by the current terms.

The previous period must be invoiced first when the subscription was active in it: its unused
units are only known once it is billed.
"""

from __future__ import annotations

from collections.abc import Iterable

from operators.billing.common import period_index, total
from schemas.billing_run import BillingStageError, Bucket, Carry, Draft, PreviousPeriod
from schemas.catalog import Rollover


def usable(buckets: Iterable[Bucket], terms: Rollover, period: str) -> tuple[Bucket, ...]:
    """The buckets still usable in `period`, capped at max_units, newest first kept; oldest first."""
    age = period_index(period)
    live = [b for b in buckets
            if 0 < age - period_index(b.origin) <= terms.expires_after_periods and b.units > 0]
    kept, room = [], terms.max_units
    for b in sorted(live, key=lambda b: b.origin, reverse=True):
        units = min(b.units, room)
        if units > 0:
            kept.append(Bucket(origin=b.origin, units=units))
            room -= units
    return tuple(sorted(kept, key=lambda b: b.origin))


def rollover(draft: Draft, previous: PreviousPeriod) -> Draft:
    h = draft.header
    carried_out = {(c.subscription, c.metric): c for c in previous.rollover}
    carried_in = []
    for sub in h.subscriptions:
        for charge in sub.charges:
            if charge.rollover is None:
                continue
            if sub.id in previous.active and not previous.invoiced:
                raise BillingStageError(
                    f"subscription {sub.id} rolls unused {charge.metric} units over from {previous.period}, "
                    f"which is not invoiced yet: bill {previous.period} first")
            prior = carried_out.get((sub.id, charge.metric))
            buckets = usable(prior.buckets if prior else (), charge.rollover, h.period)
            if total(b.units for b in buckets):
                carried_in.append(Carry(subscription=sub.id, metric=charge.metric, buckets=buckets))
    return draft.model_copy(update={"rollover_in": tuple(carried_in)})
