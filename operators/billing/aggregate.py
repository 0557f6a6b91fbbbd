"""Stage 3, Aggregate: the period's usage per (subscription, metric, group) from the ledger's
lines, proven equal to the flow's running totals.

The ledger lines come in the order the flow rated them, so a group's quantity is the running
total its last line was priced on (right for every aggregation, `latest` included). Groups are
the flow's own: a matrix charge's dimension values (operators.pricing.group_key), one group
otherwise. Per (subscription, metric) the events, quantity, revenue and cost must equal the flow's
totals exactly; a difference stops this customer's invoice with both figures. Adjustments (late
events of a closed period billed in this one) are part of the period's lines, and counted.

Each subscription's events must have been rated with the plan version the invoice prices with,
and in the invoice's currency.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from operators.billing.common import group_label
from operators.pricing import Charge, GroupKey, group_key, parse_charge
from schemas.billing_run import ZERO, BillingStageError, Draft, FlowTotal, LedgerLine, Line


@dataclass
class _Group:
    events: int = 0
    adjustments: int = 0
    quantity: Decimal = ZERO
    revenue: Decimal = ZERO
    cost: Decimal = ZERO


def _sort_key(key: tuple[str, str, GroupKey]) -> tuple:
    sub, metric, gk = key
    return sub, metric, tuple((v is not None, v or "") for v in gk)


def aggregate(draft: Draft, ledger: Iterable[LedgerLine], flow: Sequence[FlowTotal]) -> Draft:
    h = draft.header
    charges: dict[tuple[str, str], Charge | None] = {}
    groups: dict[tuple[str, str, GroupKey], _Group] = {}
    for x in ledger:
        sub = h.subscription(x.subscription)
        if sub is None:
            raise BillingStageError(f"the ledger bills subscription {x.subscription} to {h.customer}, "
                                    "which the catalog does not list for this customer")
        if (x.plan, x.plan_version) != (sub.plan, sub.plan_version):
            raise BillingStageError(
                f"subscription {sub.id} has events rated with plan {x.plan} v{x.plan_version}, but the "
                f"invoice prices it with {sub.plan} v{sub.plan_version}: a period is billed with one plan "
                "version (change plans with a new subscription from the next period)")
        if x.currency != h.currency:
            raise BillingStageError(f"subscription {sub.id} is rated in {x.currency}, but {h.tenant} "
                                    f"invoices in {h.currency}")
        key = (sub.id, x.metric)
        if key not in charges:
            terms = sub.charge(x.metric)
            charges[key] = parse_charge(terms.definition) if terms else None
        charge = charges[key]
        g = groups.setdefault((sub.id, x.metric, group_key(charge, x.grp) if charge else ()), _Group())
        g.events += 1
        g.adjustments += x.adjusts_period is not None
        g.quantity = x.total_after
        g.revenue += x.revenue
        g.cost += x.cost
    _check_against_flow(draft, groups, flow)

    lines = []
    for sid, metric, gk in sorted(groups, key=_sort_key):
        charge = charges[(sid, metric)]
        if charge is None:  # metered, verified, but not priced by the plan: nothing to invoice
            continue
        g = groups[(sid, metric, gk)]
        dims = tuple(zip(getattr(charge, "dimensions", ()), gk, strict=True))
        lines.append(Line(
            line_no=len(lines) + 1, kind="usage", subscription=sid, metric=metric, group=dims,
            description=metric + (f" ({group_label(dims)})" if dims else ""),
            events=g.events, adjustment_events=g.adjustments, quantity=g.quantity,
            ledger_revenue=g.revenue, cost=g.cost))
    return draft.model_copy(update={"lines": tuple(lines)})


def _check_against_flow(draft: Draft, groups: dict[tuple[str, str, GroupKey], _Group],
                        flow: Sequence[FlowTotal]) -> None:
    ledger: dict[tuple[str, str], tuple] = {}
    for (sid, metric, _), g in groups.items():
        n, q, r, c = ledger.get((sid, metric), (0, ZERO, ZERO, ZERO))
        ledger[(sid, metric)] = (n + g.events, q + g.quantity, r + g.revenue, c + g.cost)
    running = {(f.subscription, f.metric): (f.events, f.quantity, f.revenue, f.cost)
               for f in flow if f.customer == draft.header.customer}
    nothing = (0, ZERO, ZERO, ZERO)
    differ = [key for key in sorted(ledger.keys() | running.keys())
              if ledger.get(key, nothing) != running.get(key, nothing)]
    if differ:
        def figures(t: tuple) -> str:
            return f"events {t[0]}, quantity {t[1]}, revenue {t[2]}, cost {t[3]}"
        raise BillingStageError("the ledger and the flow's running totals differ: " + "; ".join(
            f"subscription {s} metric {m}: ledger {figures(ledger.get((s, m), nothing))} vs flow "
            f"{figures(running.get((s, m), nothing))}" for s, m in differ))
