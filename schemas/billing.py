"""Billing context: what the catalog says about an event, and what rating made of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from operators.pricing import Charge


@dataclass(frozen=True, slots=True)
class MetricDef:
    code: str
    aggregation: str  # count | sum | max | unique_count | latest
    value_path: str | None
    group_by: tuple[str, ...]
    max_value: Decimal | None = None  # a larger quantity is unpriceable (default: enrich.MAX_QUANTITY)


@dataclass(frozen=True, slots=True)
class CostRate:
    match: dict[str, str]
    unit_cost: Decimal


@dataclass(frozen=True)
class TenantInfo:
    """One tenant's catalog, as the flow needs it: small, loaded whole, replaced on change."""

    id: str
    currency: str
    idempotency_key: str | None
    metrics_by_type: dict[str, tuple[MetricDef, ...]]
    charges: dict[tuple[str, int], dict[str, Charge]]  # (plan, version) -> metric -> charge
    plan_currency: dict[tuple[str, int], str]
    costs: dict[str, tuple[CostRate, ...]]  # metric -> rates, most specific match first
    closed_periods: frozenset[str] = frozenset()  # YYYY-MM: frozen, later events adjust the next


@dataclass(frozen=True, slots=True)
class SubscriptionRef:
    id: str
    plan: str
    plan_version: int
    starts_us: int
    ends_us: int | None


@dataclass(frozen=True, slots=True)
class Entitlement:
    """A customer and its subscriptions: what the Redis cache holds per (tenant, subject)."""

    customer: str
    subscriptions: tuple[SubscriptionRef, ...]


@dataclass(slots=True)
class MetricUse:
    """One metric an event feeds, before rating."""

    metric: str
    aggregation: str
    value: Decimal  # the event's own quantity: 1 for count, else the value at the metric's path
    raw_value: object  # as sent (unique_count counts distinct raw values)
    group: dict[str, str | None]
    unit_cost: Decimal


@dataclass(slots=True)
class BillingContext:
    customer: str
    subscription: str
    plan: str
    plan_version: int
    currency: str
    period: str  # YYYY-MM, UTC: where the event is billed
    uses: list[MetricUse] = field(default_factory=list)
    adjusts_period: str | None = None  # the closed period the event belongs to by time, if any


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a microsecond per line
class RevenueLine:
    metric: str
    group: dict[str, str | None]
    quantity: Decimal
    total_after: Decimal
    revenue: Decimal
    cost: Decimal
    # The (subscription, metric, period) totals after this event, for the revenue table.
    events_after: int
    usage_after: Decimal
    revenue_after: Decimal
    cost_after: Decimal
    # What the durable running totals need: the group (as stored), its latest-value event time
    # (`latest` metrics) and the value this event added to a unique_count set, if any.
    group_key: str = "[]"
    latest_at: int | None = None
    new_distinct: str | None = None

    @property
    def margin(self) -> Decimal:
        return self.revenue - self.cost
