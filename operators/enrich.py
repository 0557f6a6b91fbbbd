"""Enrich: tenant -> customer (by subject) -> subscription active at the event's time -> plan
version -> the metrics this event type feeds, each with its exact quantity and cost rate."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Protocol

import orjson

from operators.schema_gate import json_path
from schemas import exact_json
from schemas.billing import (
    BillingContext,
    CostRate,
    Entitlement,
    MetricDef,
    MetricUse,
    SubscriptionRef,
    TenantInfo,
)
from schemas.record import Batch, Reason, Record, Status

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE = Decimal(1)
_ZERO = Decimal(0)


class MetricValueError(ValueError):
    pass


_DAY_US = 86_400_000_000
_period_of_day: dict[int, str] = {}


def billing_period(event_us: int) -> str:
    """Calendar month in UTC, YYYY-MM (memoised by day: it runs for every event)."""
    day = event_us // _DAY_US
    period = _period_of_day.get(day)
    if period is None:
        period = _period_of_day[day] = (_EPOCH + timedelta(days=day)).strftime("%Y-%m")
    return period


def next_period(period: str) -> str:
    year, month = map(int, period.split("-"))
    return f"{year + month // 12}-{month % 12 + 1:02d}"


def open_period(period: str, closed: frozenset[str]) -> tuple[str, str | None]:
    """(the period an event is billed in, the closed period it adjusts or None). A closed period
    is never changed: its late events are billed as adjustments in the next open period."""
    if period not in closed:
        return period, None
    billed = next_period(period)
    while billed in closed:
        billed = next_period(billed)
    return billed, period


def active_subscription(ent: Entitlement, event_us: int) -> SubscriptionRef | None:
    """The subscription whose [start, end) holds the event; the latest-starting one if several do."""
    active = None
    for s in ent.subscriptions:  # ordered by start
        if s.starts_us <= event_us and (s.ends_us is None or event_us < s.ends_us):
            active = s
    return active


# Above this, a quantity is taken for a broken client, not for usage (a metric may set its own).
MAX_QUANTITY = Decimal(10) ** 15
# A unique_count value and its group are a key of revenue_distinct with the tenant, subscription,
# metric and period, and a btree entry holds at most 2704 bytes: a longer one would stall its
# partition, its ledger write failing on every retry.
MAX_DISTINCT_BYTES = 2000


def _number(value: object, where: str, limit: Decimal) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        shown = orjson.dumps(value, default=str).decode()[:50]
        raise MetricValueError(f"{where} must be a number, got {shown}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise MetricValueError(f"{where} must be a number, got {value!r:.50}") from None
    if not number.is_finite() or number < 0:
        raise MetricValueError(f"{where} must be a finite, non-negative number, got {value!s:.50}")
    if number > limit:
        raise MetricValueError(f"{where} is {value!s:.50}, above the metric's bound of {limit}")
    return number


def metric_value(m: MetricDef, data: Mapping, exact: Callable[[], Mapping]) -> tuple[Decimal, object]:
    """(the event's quantity for this metric, the raw value as sent). `exact` gives the event's
    data with exact numbers: a binary float is never a quantity."""
    if m.aggregation == "count":
        return _ONE, None
    where = f"metric {m.code}: {m.value_path}"
    try:
        raw = json_path(data, m.value_path)
        if isinstance(raw, float):  # orjson's reading of a fraction or a huge integer
            raw = json_path(exact(), m.value_path)
    except KeyError:
        raise MetricValueError(f"{where} is missing from 'data'") from None
    if m.aggregation == "unique_count":
        if raw is None or isinstance(raw, dict | list):
            raise MetricValueError(f"{where} must be a string or number to count distinct values")
        return _ONE, raw
    return _number(raw, where, m.max_value or MAX_QUANTITY), raw


def _dimension(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def unit_cost(rates: tuple[CostRate, ...], data: Mapping) -> Decimal:
    """The first (most specific) cost rate whose match the event's data satisfies."""
    for rate in rates:
        if all(_dimension(data.get(k)) == v for k, v in rate.match.items()):
            return rate.unit_cost
    return _ZERO


Subject = tuple[str, str]  # (tenant, subject)


class Catalog(Protocol):
    """What enrichment reads: tenants whole, entitlements in bulk (sinks/entitlements.py)."""

    def tenants(self) -> dict[str, TenantInfo]: ...

    def entitlements(self, wanted: Iterable[tuple[str, str]]) -> dict[Subject, Entitlement | None]: ...


def enrich_batch(catalog: Catalog, batch: Batch) -> Batch:
    """Enrich every still-eligible record, with one entitlement lookup for the whole batch."""
    tenants = catalog.tenants()
    pending = {(r.event["tenantid"], r.event["subject"]) for r in batch.records if r.status is None}
    entitlements = catalog.entitlements(pending) if pending else {}
    for r in batch.records:
        if r.status is None:
            key = (r.event["tenantid"], r.event["subject"])
            enrich(r, tenants[key[0]], entitlements[key])
    return batch


def enrich(rec: Record, tenant: TenantInfo, ent: Entitlement | None) -> Record:
    if rec.status is not None:  # rejected, duplicate, or late (held, not rated)
        return rec
    event = rec.event
    if ent is None:
        return rec.decide(Status.UNRESOLVED, Reason.UNKNOWN_CUSTOMER,
                          f"tenant {tenant.id} has no customer {event['subject']!r}")
    sub = active_subscription(ent, rec.event_us)
    if sub is None:
        return rec.decide(Status.UNRESOLVED, Reason.NO_SUBSCRIPTION,
                          f"customer {ent.customer} has no subscription active at {event['time']}")
    plan = (sub.plan, sub.plan_version)
    period, adjusts = open_period(billing_period(rec.event_us), tenant.closed_periods)
    ctx = BillingContext(ent.customer, sub.id, sub.plan, sub.plan_version,
                         tenant.plan_currency.get(plan, tenant.currency), period, adjusts_period=adjusts)
    rec.billing = ctx
    metrics = tenant.metrics_by_type.get(event["type"], ())
    if not metrics:
        return rec.decide(Status.ACCEPTED, Reason.UNMETERED,
                          f"no metric of tenant {tenant.id} uses event type {event['type']!r}")
    data = event.get("data") or {}

    def exact() -> Mapping:
        return exact_json.loads(rec.raw).get("data") or {}

    for m in metrics:
        try:
            value, raw = metric_value(m, data, exact)
        except MetricValueError as exc:
            return rec.decide(Status.UNRESOLVED, Reason.UNPRICEABLE, str(exc))
        dims = {g: _dimension(data.get(g)) for g in m.group_by}
        size = len(orjson.dumps([raw, dims], default=str)) if m.aggregation == "unique_count" else 0
        if size > MAX_DISTINCT_BYTES:
            return rec.decide(Status.UNRESOLVED, Reason.UNPRICEABLE,
                              f"metric {m.code}: {m.value_path} and its group take {size} bytes; at most "
                              f"{MAX_DISTINCT_BYTES} to count distinct values")
        ctx.uses.append(MetricUse(m.code, m.aggregation, value, raw, dims,
                                  unit_cost(tenant.costs.get(m.code, ()), data)))
    return rec
