"""The catalog file: tenants, metrics, plans, customers, subscriptions, quotas and cost rates.

Validated with pydantic once, when a catalog is applied; the flow reads the stored catalog.
Money and quantities must be strings or integers: a JSON float may already be inexact.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from operators.pricing import PricingError, parse_charge


def _exact(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError(f"{value!r} is a float; write amounts as strings (e.g. \"{value}\") "
                         "so they stay exact")
    return value


Exact = Annotated[Decimal, BeforeValidator(_exact), Field(ge=0)]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
Aggregation = Literal["count", "sum", "max", "unique_count", "latest"]
Period = Annotated[str, Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$")]  # YYYY-MM


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tenant(_Entry):
    id: Name
    name: str = ""
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"
    idempotency_key: Annotated[str, Field(pattern=r"^\$(\.[^.\x00]+)+$")] | None = None


class Metric(_Entry):
    tenant: Name
    code: Name
    event_type: Name
    aggregation: Aggregation
    value: Annotated[str, Field(pattern=r"^\$(\.[^.\x00]+)+$")] | None = None
    group_by: list[Name] = []

    @model_validator(mode="after")
    def _value_needed(self) -> Metric:
        if self.aggregation != "count" and self.value is None:
            raise ValueError(f"metric {self.code}: aggregation {self.aggregation} needs a `value` JSON path")
        return self


class Plan(_Entry):
    tenant: Name
    code: Name
    version: Annotated[int, Field(ge=1)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"
    charges: list[dict[str, Any]]

    @field_validator("charges")
    @classmethod
    def _charges_price(cls, charges: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen = set()
        for i, charge in enumerate(charges):
            metric = charge.get("metric")
            if not isinstance(metric, str) or not metric:
                raise ValueError(f"charges[{i}] needs the `metric` it prices")
            if metric in seen:
                raise ValueError(f"charges[{i}]: metric {metric} is priced twice")
            seen.add(metric)
            try:
                parse_charge(charge)
                _allowance_terms(charge)
            except (PricingError, TypeError, ValueError) as exc:
                raise ValueError(f"charges[{i}] ({metric}): {exc}") from None
        return charges


def _allowance_terms(charge: dict[str, Any]) -> None:
    """`included` units per period and their `rollover`, billing terms that ride on a charge
    (the flow prices every event without them; the bill run applies them)."""
    terms = ChargeTerms.model_validate({k: charge[k] for k in ("included", "rollover") if k in charge})
    if charge["model"] == "percentage" and (terms.included or terms.rollover):
        raise ValueError("a percentage charge prices each event's own amount: it has no units to include")
    if terms.rollover is not None and not terms.included:
        raise ValueError("rollover carries unused included units: it needs `included`")


class Rollover(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_units: Exact
    expires_after_periods: Annotated[int, Field(ge=1)]


class ChargeTerms(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    included: Exact = Decimal(0)
    rollover: Rollover | None = None


class Customer(_Entry):
    tenant: Name
    id: Name
    name: str = ""
    tax_rate: Name | None = None  # a tax_rates id; none: the invoice carries no tax


class Subscription(_Entry):
    tenant: Name
    id: Name
    customer: Name
    plan: Name
    plan_version: Annotated[int, Field(ge=1)]
    start: datetime
    end: datetime | None = None
    minimum: Exact | None = None  # commitment per period: a true-up line when usage is below it

    @model_validator(mode="after")
    def _window(self) -> Subscription:
        if self.start.tzinfo is None or (self.end is not None and self.end.tzinfo is None):
            raise ValueError(f"subscription {self.id}: start and end need a UTC offset")
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"subscription {self.id}: end must be after start")
        return self


class Quota(_Entry):
    tenant: Name
    subscription: Name
    metric: Name
    limit: Exact
    overage: Literal["bill", "block"] = "bill"  # charge usage over the limit, or cap billing at it


class Cost(_Entry):
    tenant: Name
    metric: Name
    match: dict[Name, str] = {}
    unit_cost: Exact


class TaxRate(_Entry):
    tenant: Name
    id: Name
    name: Name
    percent: Exact
    kind: Literal["standard", "zero_rated", "reverse_charge"] = "standard"

    @model_validator(mode="after")
    def _no_tax_unless_standard(self) -> TaxRate:
        if self.kind != "standard" and self.percent != 0:
            raise ValueError(f"tax rate {self.id}: a {self.kind} rate charges 0 percent")
        return self


class Coupon(_Entry):
    tenant: Name
    code: Name
    name: str = ""
    percent_off: Annotated[Decimal, BeforeValidator(_exact), Field(gt=0, le=100)] | None = None
    amount_off: Annotated[Decimal, BeforeValidator(_exact), Field(gt=0)] | None = None
    periods: Annotated[int, Field(ge=1)] | None = None  # how many periods from redemption; none: forever
    charges: list[Name] = []  # the metrics it discounts; none: the whole invoice

    @model_validator(mode="after")
    def _one_kind(self) -> Coupon:
        if (self.percent_off is None) == (self.amount_off is None):
            raise ValueError(f"coupon {self.code}: give exactly one of percent_off and amount_off")
        return self


class Redemption(_Entry):
    tenant: Name
    customer: Name
    coupon: Name
    from_period: Period


class Credit(_Entry):
    """Prepaid units of a metric; a recorded grant is never changed (grant more with a new id)."""

    tenant: Name
    id: Name
    customer: Name
    metric: Name
    units: Annotated[Decimal, BeforeValidator(_exact), Field(gt=0)]
    from_period: Period


class Catalog(_Entry):
    tenants: list[Tenant] = []
    metrics: list[Metric] = []
    plans: list[Plan] = []
    customers: list[Customer] = []
    subscriptions: list[Subscription] = []
    quotas: list[Quota] = []
    costs: list[Cost] = []
    tax_rates: list[TaxRate] = []
    coupons: list[Coupon] = []
    redemptions: list[Redemption] = []
    credits: list[Credit] = []
