"""GET /v1/revenue/summary (the console's home tiles) and GET /v1/revenue/margins."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from fastapi import APIRouter
from pydantic import BaseModel

from api.errors import documented
from api.reads import Money, money, now, period_param
from api.services import Svc
from api.viewer import TenantViewer
from operators.money import percent
from sinks.console import margins, periods, revenue_summary

router = APIRouter(tags=["console"])
PROJECTION_NOTE = ("Projected at the current pace of usage and priced on each plan: flat and stairstep fees "
                   "count once, graduated and volume charges at the tier the projected usage reaches. For "
                   "tiered plans an estimate, not a commitment: it holds only if usage keeps its pace.")


class Point(BaseModel):
    at: datetime  # the end of the hour (or now, for the current hour)
    amount: str | None  # None before the period began


class Tile(BaseModel):
    value: Money
    compared_with: Money | None = None
    change_percent: str | None = None
    sparkline: list[Point]


class CurrencyTiles(BaseModel):
    currency: str
    today: Tile  # vs yesterday up to the same time of day
    period_to_date: Tile  # vs the previous period up to the same point
    projected: Tile


class RevenueSummary(BaseModel):
    tenant: str | None  # None: every tenant (an operator key)
    period: str
    day: int  # "day 16 of 31"
    days: int
    as_of: datetime
    projection_note: str
    currencies: list[CurrencyTiles]


def _tile(value: Decimal, cur: str, points: list[dict], compared: Decimal | None = None) -> Tile:
    change = percent(value - compared, compared) if compared is not None else None
    return Tile(value=money(value, cur), compared_with=None if compared is None else money(compared, cur),
                change_percent=None if change is None else str(change),
                sparkline=[Point(at=p["at"], amount=None if p["amount"] is None else str(p["amount"]))
                           for p in points])


@router.get("/v1/revenue/summary", response_model=RevenueSummary, responses=documented(400, 401, 403, 429),
            summary="Revenue today, period to date and projected, with comparisons and 24-hour sparklines")
async def revenue_summary_route(viewer: TenantViewer, svc: Svc, tenant: str | None = None) -> RevenueSummary:
    """The same figures as `aforo revenue` (to the cent: both call sinks.reports.revenue_report)."""
    scope = viewer.tenant_scope(tenant)
    s = await svc.db(revenue_summary, scope, now())
    return RevenueSummary(
        tenant=scope, period=s["period"], day=s["day"], days=s["days"], as_of=s["as_of"],
        projection_note=PROJECTION_NOTE,
        currencies=[CurrencyTiles(
            currency=c["currency"],
            today=_tile(c["today"], c["currency"], c["sparklines"]["today"], c["yesterday_same_time"]),
            period_to_date=_tile(c["period_to_date"], c["currency"], c["sparklines"]["period_to_date"],
                                 c["previous_period_same_point"]),
            projected=_tile(c["projected"], c["currency"], c["sparklines"]["projected"]),
        ) for c in s["currencies"]])


class MetricMargin(BaseModel):
    metric: str
    events: int
    quantity: str
    revenue: Money
    cost: Money
    margin: Money
    margin_percent: str | None


class CustomerMargin(BaseModel):
    tenant: str
    customer: str
    name: str
    events: int  # metered event lines (an event feeding two metrics counts in both)
    revenue: Money
    cost: Money
    margin: Money
    margin_percent: str | None
    negative: bool
    metrics: list[MetricMargin]


class Margins(BaseModel):
    tenant: str | None
    period: str
    periods: list[str]  # periods with revenue, newest first
    customers: list[CustomerMargin]


def _pct(margin: Decimal, revenue: Decimal) -> str | None:
    p = percent(margin, revenue)
    return None if p is None else str(p)


@router.get("/v1/revenue/margins", response_model=Margins, responses=documented(400, 401, 403, 429),
            summary="Revenue, cost and margin per customer, and per metric of each customer")
async def margins_route(viewer: TenantViewer, svc: Svc, tenant: str | None = None,
                        period: str | None = None) -> Margins:
    scope, period = viewer.tenant_scope(tenant), period_param(period)
    rows = await svc.db(margins, scope, period)
    known = await svc.db(periods, scope)
    by_customer: dict[tuple[str, str], list[dict]] = {}
    for r in rows:  # ordered by tenant, customer, metric
        by_customer.setdefault((r["tenant"], r["customer"]), []).append(r)
    customers = []
    for (t, c), metrics in by_customer.items():
        cur = metrics[0]["currency"]
        revenue, cost = sum(m["revenue"] for m in metrics), sum(m["cost"] for m in metrics)
        customers.append(CustomerMargin(
            tenant=t, customer=c, name=metrics[0]["name"], events=sum(m["events"] for m in metrics),
            revenue=money(revenue, cur), cost=money(cost, cur), margin=money(revenue - cost, cur),
            margin_percent=_pct(revenue - cost, revenue), negative=revenue - cost < 0,
            metrics=[MetricMargin(metric=m["metric"], events=m["events"], quantity=str(m["quantity"]),
                                  revenue=money(m["revenue"], cur), cost=money(m["cost"], cur),
                                  margin=money(m["revenue"] - m["cost"], cur),
                                  margin_percent=_pct(m["revenue"] - m["cost"], m["revenue"]))
                     for m in metrics]))
    return Margins(tenant=scope, period=period, periods=sorted({period, *known}, reverse=True),
                   customers=customers)
