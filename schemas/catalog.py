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
            except (PricingError, TypeError) as exc:
                raise ValueError(f"charges[{i}] ({metric}): {exc}") from None
        return charges


class Customer(_Entry):
    tenant: Name
    id: Name
    name: str = ""


class Subscription(_Entry):
    tenant: Name
    id: Name
    customer: Name
    plan: Name
    plan_version: Annotated[int, Field(ge=1)]
    start: datetime
    end: datetime | None = None

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


class Cost(_Entry):
    tenant: Name
    metric: Name
    match: dict[Name, str] = {}
    unit_cost: Exact


class Catalog(_Entry):
    tenants: list[Tenant] = []
    metrics: list[Metric] = []
    plans: list[Plan] = []
    customers: list[Customer] = []
    subscriptions: list[Subscription] = []
    quotas: list[Quota] = []
    costs: list[Cost] = []
