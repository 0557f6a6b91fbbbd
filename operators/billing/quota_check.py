"""Stage 1, QuotaCheck: may the period be billed, and what do hard quotas cap?

A period can be billed once it has ended in the pipeline's own time plus the lateness allowance:
the latest ingestion time the ledger has seen is at least 24 hours past the period's end, so
every event of the period still to come would be held as late, never billed behind the invoice's
back. Held events of the period (late, unresolved, or approved but not rated yet) must be decided
first: approving one after the close would bill it in the next period. `--allow-held` bills
without them, and the invoice lists its own.

A quota with overage `block` caps billable usage at its limit (the flow's running total minus
the limit is `blocked`); with `bill` the overage is charged like any usage.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from schemas.billing_run import (
    ZERO,
    BillingStageError,
    Draft,
    FlowTotal,
    Header,
    HeldEvent,
    QuotaDecision,
    QuotaRule,
)

LATENESS = timedelta(hours=24)  # operators/timestamp_gate.py holds older events as late
SHOWN = 5  # held events named in an error


def readiness(period_end: datetime, watermark: datetime | None, held: Sequence[HeldEvent],
              allow_held: bool) -> str | None:
    """Why the period cannot be closed and billed yet, or None when it can."""
    if watermark is None or watermark < period_end + LATENESS:
        seen = "no event at all" if watermark is None else f"events ingested up to {watermark.isoformat()}"
        return (f"the period has not ended plus the lateness allowance: it needs an event ingested at "
                f"or after {(period_end + LATENESS).isoformat()} ({seen})")
    if held and not allow_held:
        named = ", ".join(f"{h.id} ({h.status}/{h.reason or '-'}"
                          f"{', approved, not rated yet' if h.approved else ''})" for h in held[:SHOWN])
        more = f" and {len(held) - SHOWN} more" if len(held) > SHOWN else ""
        return (f"{len(held)} held events of the period are undecided: {named}{more}; decide them with "
                "`aforo reconcile approve|reject` (and run the flow), or bill without them: --allow-held")
    return None


def quota_check(header: Header, *, period_end: datetime, watermark: datetime | None, closed: bool,
                held: Sequence[HeldEvent], allow_held: bool, quotas: Sequence[QuotaRule],
                flow: Sequence[FlowTotal]) -> Draft:
    problem = readiness(period_end, watermark, held, allow_held)
    if problem:
        raise BillingStageError(problem)
    if not closed:
        raise BillingStageError(f"{header.tenant} {header.period} is not closed")
    subscriptions = {s.id for s in header.subscriptions}
    used = {(f.subscription, f.metric): f.quantity for f in flow if f.customer == header.customer}
    decisions = []
    for q in sorted(quotas, key=lambda q: (q.subscription, q.metric)):
        if q.subscription not in subscriptions:
            continue
        u = used.get((q.subscription, q.metric), ZERO)
        blocked = max(u - q.limit, ZERO) if q.overage == "block" else ZERO
        decisions.append(QuotaDecision(subscription=q.subscription, metric=q.metric, limit=q.limit,
                                       overage=q.overage, used=u, blocked=blocked))
    return Draft(header=header, quotas=tuple(decisions),
                 held_excluded=tuple(h for h in held if h.subject == header.customer))
