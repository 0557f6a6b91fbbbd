"""GET /v1/portal: one customer's own usage, bill to date, projected bill and quotas. A customer
key sees its own customer only; a tenant key (or an operator naming the tenant) may look at any
of its customers, as that customer sees it."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from api.errors import ApiError, documented
from api.reads import Money, money, now, period_param
from api.routes.usage import QuotaOut, quota_out
from api.services import Svc
from api.viewer import AnyViewer
from operators.projection import Pace
from sinks.console import customer_usage
from sinks.reports import by_currency

router = APIRouter(tags=["portal"])


class MetricUsage(BaseModel):
    metric: str
    subscription: str
    plan: str | None
    events: int
    quantity: str
    revenue: Money


class Portal(BaseModel):
    tenant: str
    customer: str
    name: str
    period: str
    day: int
    days: int
    metrics: list[MetricUsage]
    bill_to_date: list[Money]  # per currency
    projected_bill: list[Money]  # at the current pace, priced on the plan, rounded to the minor unit
    quotas: list[QuotaOut]


@router.get("/v1/portal", response_model=Portal, responses=documented(400, 401, 403, 404, 429),
            summary="One customer's usage, bill to date, projected bill and quotas")
async def portal(viewer: AnyViewer, svc: Svc, tenant: str | None = None,
                 customer: str | None = None) -> Portal:
    scope, who = viewer.one_tenant(tenant), viewer.customer_scope(customer)
    if who is None:
        raise ApiError(400, "bad_request", "name the customer (?customer=...)")
    at = now()
    period = period_param(None)
    u = await svc.db(customer_usage, scope, who, period, at)
    if not u["found"]:
        raise ApiError(404, "not_found", f"tenant {scope!r} has no customer {who!r}")
    pace = Pace.of(period, at)
    to_date = by_currency((m["currency"], m["revenue"]) for m in u["metrics"])
    return Portal(
        tenant=scope, customer=who, name=u["name"], period=period, day=pace.day, days=pace.days,
        metrics=[MetricUsage(**{**m, "quantity": str(m["quantity"]),
                                "revenue": money(m["revenue"], m["currency"])}) for m in u["metrics"]],
        bill_to_date=[money(v, c) for c, v in to_date.items()],
        projected_bill=[money(v, c) for c, v in u["projected"].items()],
        quotas=[quota_out(q) for q in u["quotas"]])
