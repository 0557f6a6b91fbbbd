"""GET /v1/usage/tiers (unit health), GET /v1/alerts and GET /v1/quotas (alerts page)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.errors import ApiError, documented
from api.reads import now, period_param
from api.services import Svc
from api.viewer import TenantViewer
from operators.money import percent
from sinks.alerts import list_alerts
from sinks.console import quota_status, tier_health

router = APIRouter(tags=["console"])
KINDS = ("spike", "dip", "weekly_drop", "quota_projected", "quota_actual")


class Tier(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    tier: int
    from_: str = Field(alias="from")
    up_to: str | None  # None: open-ended
    units: str  # usage units priced in this tier
    share_percent: str | None
    customers: int  # customers whose period total reaches this tier


class Bin(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    from_: str = Field(alias="from")
    to: str
    customers: int


class CustomerUsage(BaseModel):
    customer: str
    quantity: str


class TierHealth(BaseModel):
    tenant: str
    metric: str
    plan: str
    plan_version: int
    model: str  # graduated | volume | stairstep
    thresholds: list[str]  # the tiers' upper bounds
    customers: int
    total_usage: str
    usage: list[CustomerUsage]
    tiers: list[Tier]
    histogram: list[Bin]  # customers per usage bin
    dominant_tier: int | None  # the tier holding the largest share of usage


class UnitHealth(BaseModel):
    tenant: str | None
    period: str
    charges: list[TierHealth]


def _str(d: dict[str, Any]) -> dict[str, Any]:
    return {("from_" if k == "from" else k): (str(v) if v is not None and not isinstance(v, int | str | list)
                                              else v) for k, v in d.items()}


@router.get("/v1/usage/tiers", response_model=UnitHealth, responses=documented(400, 401, 403, 429),
            summary="Per tiered charge: customers' period usage, a histogram, the tier thresholds and shares")
async def usage_tiers(viewer: TenantViewer, svc: Svc, tenant: str | None = None,
                      period: str | None = None) -> UnitHealth:
    scope, period = viewer.tenant_scope(tenant), period_param(period)
    charges = await svc.db(tier_health, scope, period)
    return UnitHealth(tenant=scope, period=period, charges=[TierHealth(
        **{k: v for k, v in _str(c).items() if k not in ("usage", "tiers", "histogram", "thresholds")},
        thresholds=[str(b) for b in c["thresholds"]],
        usage=[CustomerUsage(**_str(u)) for u in c["usage"]],
        tiers=[Tier(**_str(t)) for t in c["tiers"]],
        histogram=[Bin(**_str(b)) for b in c["histogram"]]) for c in charges])


class AlertOut(BaseModel):
    kind: str
    tenant: str
    customer: str
    subscription: str
    metric: str
    window_id: str
    threshold: str
    window_start: datetime
    window_end: datetime
    event_time: datetime
    details: dict
    detected_at: datetime


class QuotaOut(BaseModel):
    tenant: str
    customer: str
    subscription: str
    metric: str
    limit: str
    used: str
    projected: str  # at the current pace; a max/latest metric is not extrapolated
    used_percent: str
    projected_percent: str


@router.get("/v1/alerts", response_model=list[AlertOut], responses=documented(400, 401, 403, 429),
            summary="Anomalies, weekly drops and quota pacing alerts, newest (by event time) first")
async def alerts(viewer: TenantViewer, svc: Svc, tenant: str | None = None, kind: str | None = None,
                 since: datetime | None = None) -> list[AlertOut]:
    if kind and kind not in KINDS:
        raise ApiError(400, "bad_request", f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    rows = await svc.db(list_alerts, viewer.tenant_scope(tenant), kind or None, since)
    return [AlertOut(**r) for r in reversed(rows)]


def quota_out(q: dict) -> QuotaOut:
    def pct(v):
        return str(percent(v, q["limit"], Decimal(1)) or 0)
    return QuotaOut(**{k: str(v) for k, v in q.items()}, used_percent=pct(q["used"]),
                    projected_percent=pct(q["projected"]))


@router.get("/v1/quotas", response_model=list[QuotaOut], responses=documented(400, 401, 403, 429),
            summary="Every quota: used this period, projected at the current pace, and the limit")
async def quotas(viewer: TenantViewer, svc: Svc, tenant: str | None = None) -> list[QuotaOut]:
    period = period_param(None)
    return [quota_out(q) for q in await svc.db(quota_status, viewer.tenant_scope(tenant), period, now())]
