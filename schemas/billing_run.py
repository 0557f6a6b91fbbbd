"""The bill run's data: the draft invoice each stage hands to the next, what the stages read, and
the settled invoice.

A stage is a pure function (operators/billing/): it takes the draft as the previous stage left it
plus what it reads, and returns a new draft with its own part filled in. Every model is frozen
and serialises to JSON with decimals as exact strings, so a stage's output is stored as is, its
digest recorded, and a resumed run starts from it bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from schemas.catalog import Rollover
from schemas.errors import Conflict

ZERO = Decimal(0)
# A matrix charge's dimension values of a line, in the charge's order; () for other models.
Group = tuple[tuple[str, str | None], ...]


class BillingStageError(Conflict):
    """A stage cannot finish this customer's invoice; the message says why, with the figures."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- the customer's terms, as the run found them ----------------------------------------------

class PlanCharge(_Frozen):
    metric: str
    definition: dict[str, Any]  # as published: what operators.pricing.parse_charge reads
    included: Decimal = ZERO
    rollover: Rollover | None = None


class SubscriptionTerms(_Frozen):
    id: str
    plan: str
    plan_version: int
    minimum: Decimal | None = None
    charges: tuple[PlanCharge, ...] = ()

    def charge(self, metric: str) -> PlanCharge | None:
        return next((c for c in self.charges if c.metric == metric), None)


class Header(_Frozen):
    tenant: str
    customer: str
    customer_name: str
    period: str  # YYYY-MM
    currency: str
    subscriptions: tuple[SubscriptionTerms, ...]

    def subscription(self, sid: str) -> SubscriptionTerms | None:
        return next((s for s in self.subscriptions if s.id == sid), None)


# --- what the stages read ----------------------------------------------------------------------

class HeldEvent(_Frozen):
    id: int
    ref: str  # raw topic id/partition/offset
    status: str
    reason: str | None
    subject: str | None
    source: str | None
    event_id: str | None
    approved: bool = False  # approved, but its re-injection is not rated yet


class QuotaRule(_Frozen):
    subscription: str
    metric: str
    limit: Decimal
    overage: Literal["bill", "block"]


class FlowTotal(_Frozen):
    """One row of the flow's running totals (the `revenue` table)."""

    customer: str
    subscription: str
    metric: str
    currency: str
    events: int
    quantity: Decimal
    revenue: Decimal
    cost: Decimal


@dataclass(frozen=True, slots=True)
class LedgerLine:
    """One accepted event's line of one metric, in the order the flow rated them (read only, one
    per event: a plain slotted dataclass, not a validated model)."""

    subscription: str
    plan: str
    plan_version: int
    currency: str
    metric: str
    grp: dict[str, str | None]
    quantity: Decimal
    total_after: Decimal
    revenue: Decimal
    cost: Decimal
    adjusts_period: str | None = None


class PreviousPeriod(_Frozen):
    period: str
    invoiced: bool
    rollover: tuple[Carry, ...] = ()  # what its invoice carried out
    active: frozenset[str] = frozenset()  # subscriptions active during it


class CreditBalance(_Frozen):
    grant: str
    metric: str
    from_period: str
    remaining: Decimal


class CouponTerms(_Frozen):
    code: str
    name: str = ""
    percent_off: Decimal | None = None
    amount_off: Decimal | None = None
    periods: int | None = None
    charges: tuple[str, ...] = ()
    from_period: str


class TaxTerms(_Frozen):
    id: str
    name: str
    percent: Decimal
    kind: Literal["standard", "zero_rated", "reverse_charge"] = "standard"


class Destination(_Frozen):
    name: str
    kind: Literal["webhook", "directory"]
    formats: tuple[str, ...] = ("json",)


# --- what the stages write -------------------------------------------------------------------

class QuotaDecision(_Frozen):
    subscription: str
    metric: str
    limit: Decimal
    overage: Literal["bill", "block"]
    used: Decimal
    blocked: Decimal  # usage over the limit that is not billed (overage `block`)


class Bucket(_Frozen):
    origin: str  # the period whose unused included units these are
    units: Decimal


class Carry(_Frozen):
    subscription: str
    metric: str
    buckets: tuple[Bucket, ...]

    @property
    def units(self) -> Decimal:
        return sum((b.units for b in self.buckets), ZERO)


class CreditDraw(_Frozen):
    grant: str
    units: Decimal


class Part(_Frozen):
    label: str
    quantity: Decimal
    unit_price: Decimal | None
    amount: Decimal


class AppliedDiscount(_Frozen):
    coupon: str
    amount: Decimal


class Line(_Frozen):
    line_no: int
    kind: Literal["usage", "commitment"]
    subscription: str
    metric: str | None = None
    group: Group = ()
    description: str
    # aggregate: what the ledger says
    events: int = 0
    adjustment_events: int = 0  # of them, late events of a closed period billed here
    quantity: Decimal = ZERO
    ledger_revenue: Decimal = ZERO  # the sum of the events' marginal revenue
    cost: Decimal = ZERO
    # allowance: deducted from the quantity, in this order
    blocked: Decimal = ZERO
    rollover_used: Decimal = ZERO
    included_used: Decimal = ZERO
    credits_used: Decimal = ZERO
    credit_draws: tuple[CreditDraw, ...] = ()
    billable: Decimal = ZERO
    # rate
    model: str | None = None
    parts: tuple[Part, ...] = ()
    usage_amount: Decimal = ZERO  # the price of the whole quantity: equals ledger_revenue
    amount: Decimal = ZERO  # the price of the billable quantity, or the true-up
    # discount
    discounts: tuple[AppliedDiscount, ...] = ()
    discount: Decimal = ZERO
    # tax: the only rounding, per line
    net: Decimal = ZERO  # amount - discount, exact
    tax_exact: Decimal = ZERO
    net_rounded: Decimal = ZERO
    tax: Decimal = ZERO  # rounded
    rounding: Decimal = ZERO  # (net_rounded + tax) - (net + tax_exact)
    total: Decimal = ZERO  # net_rounded + tax


class Totals(_Frozen):
    usage_subtotal: Decimal  # exact: the usage lines' amounts
    commitment: Decimal  # exact: true-ups
    discount: Decimal  # exact
    net: Decimal  # the rounded lines' nets
    tax: Decimal
    rounding: Decimal
    total: Decimal


class Route(_Frozen):
    destination: str  # 'kafka' or a destination's name
    kind: Literal["kafka", "webhook", "directory"]
    formats: tuple[str, ...] = ()


class Draft(_Frozen):
    header: Header
    held_excluded: tuple[HeldEvent, ...] = ()  # billed without them (--allow-held)
    quotas: tuple[QuotaDecision, ...] = ()
    rollover_in: tuple[Carry, ...] = ()
    lines: tuple[Line, ...] = ()
    rollover_out: tuple[Carry, ...] = ()
    tax_rate: TaxTerms | None = None
    minor_units: int | None = None
    totals: Totals | None = None
    routes: tuple[Route, ...] = ()

    def quota(self, subscription: str, metric: str) -> QuotaDecision | None:
        return next((q for q in self.quotas if (q.subscription, q.metric) == (subscription, metric)), None)


class Invoice(Draft):
    """A settled invoice (or credit note): numbered, immutable, its digest over its canonical JSON."""

    number: str
    kind: Literal["invoice", "credit_note"] = "invoice"
    credit_note_of: str | None = None
    note: str | None = None


PreviousPeriod.model_rebuild()
