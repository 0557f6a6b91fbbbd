"""The benchmark's traffic: many customers of three tenants, every pricing model, and the usual
trouble (retries, late and invalid events) at realistic rates, each line with its known outcome.

The catalog is the demo catalog plus a third tenant (percentage and flat charges, and its own
idempotency key path) and a few hundred customers per tenant, whose usage is skewed: a handful of
customers send most of the events, as in real traffic.
"""

from __future__ import annotations

import random
from bisect import bisect
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any

import orjson

from cli.demo import demo_catalog

CUSTOMERS_PER_TENANT = 300
SUBSCRIPTIONS_START = "2020-01-01T00:00:00Z"  # long before any event of a benchmark run

# A tenant beyond the demo catalog: the pricing models the demo does not use, and an
# idempotency key taken from `data` instead of (tenantid, source, id).
_PAYMENTS_TENANT: dict[str, list[dict[str, Any]]] = {
    "tenants": [{"id": "umbrella", "name": "Umbrella Pay", "currency": "GBP",
                 "idempotency_key": "$.request_id"}],
    "metrics": [
        {"tenant": "umbrella", "code": "payments", "event_type": "payment.captured",
         "aggregation": "sum", "value": "$.amount"},
        {"tenant": "umbrella", "code": "seats", "event_type": "seats.updated",
         "aggregation": "max", "value": "$.seats"},
    ],
    "plans": [{"tenant": "umbrella", "code": "gateway", "version": 1, "currency": "GBP", "charges": [
        {"metric": "payments", "model": "percentage", "rate": "1.4", "fixed_fee": "0.20",
         "min_per_event": "0.25", "max_per_event": "40"},
        {"metric": "seats", "model": "flat", "amount": "99"}]}],
    "costs": [{"tenant": "umbrella", "metric": "payments", "match": {}, "unit_cost": "0.003"}],
}
_PLANS = {"acme": ("pro", 1), "globex": ("basic", 1), "umbrella": ("gateway", 1)}
_TENANT_WEIGHTS = {"acme": 45, "globex": 35, "umbrella": 20}
_TYPE_WEIGHTS = {
    "acme": {"api.call": 60, "llm.completion": 25, "storage.write": 15},
    "globex": {"api.call": 60, "llm.completion": 25, "storage.write": 15},
    "umbrella": {"payment.captured": 85, "seats.updated": 15},
}

# Per-mille share of each kind of line; the rest is ordinary metered traffic ("accepted/").
# About 2% retries, 1% late and 1% invalid.
_TROUBLE = {
    "duplicate/same_payload": 16,
    "duplicate/conflict": 4,
    "late/late_arrival": 10,
    "rejected/malformed": 2.5,
    "rejected/schema": 3.5,
    "rejected/unknown_tenant": 1,
    "rejected/future_timestamp": 1.5,
    "rejected/too_old": 1.5,
    "unresolved/unknown_customer": 2,
    "accepted/unmetered": 5,
}
_RECENT = 2000  # retries resend one of the last this-many accepted events


def customer_id(tenant: str, i: int) -> str:
    return f"{tenant}-c{i:04d}"


def bench_catalog() -> dict[str, Any]:
    """The demo catalog, the payments tenant, and CUSTOMERS_PER_TENANT customers per tenant."""
    catalog = demo_catalog()
    for kind, entries in _PAYMENTS_TENANT.items():
        catalog[kind] = catalog.get(kind, []) + entries
    for tenant, (plan, version) in _PLANS.items():
        for i in range(CUSTOMERS_PER_TENANT):
            catalog["customers"].append({"tenant": tenant, "id": customer_id(tenant, i)})
            catalog["subscriptions"].append({
                "tenant": tenant, "id": f"{tenant}-s{i:04d}", "customer": customer_id(tenant, i),
                "plan": plan, "plan_version": version, "start": SUBSCRIPTIONS_START})
    return catalog


def _rfc3339(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Picker:
    """Weighted choice by bisecting cumulative weights (random.choices rebuilds them per call)."""

    def __init__(self, weights: dict[str, float]):
        self._keys = list(weights)
        self._cumulative = list(accumulate(weights.values()))

    def __call__(self, rnd: random.Random) -> str:
        return self._keys[bisect(self._cumulative, rnd.random() * self._cumulative[-1])]


_TENANT = _Picker(_TENANT_WEIGHTS)
_TYPE = {tenant: _Picker(w) for tenant, w in _TYPE_WEIGHTS.items()}
# Zipf-like: customer i sends in proportion to 1 / (i + 1).
_CUSTOMER = _Picker({str(i): 1 / (i + 1) for i in range(CUSTOMERS_PER_TENANT)})
_KIND = _Picker({**_TROUBLE, "accepted/": 1000 - sum(_TROUBLE.values())})


def _data(rnd: random.Random, tenant: str, kind: str, i: int) -> dict[str, Any]:
    if kind == "llm.completion":
        return {"tokens": rnd.randint(10, 4000), "model": rnd.choice(("gpt-4o", "gpt-4o-mini"))}
    if kind == "storage.write":
        return {"gb": rnd.randint(1, 150)}
    if kind == "payment.captured":
        return {"request_id": f"req-{i}", "amount": f"{rnd.randint(100, 250_000) / 100:.2f}",
                "currency": "GBP"}
    if kind == "seats.updated":
        return {"request_id": f"req-{i}", "seats": rnd.randint(1, 500)}
    if tenant == "umbrella":  # an event type of no metric still needs the tenant's key
        return {"request_id": f"req-{i}"}
    return {"route": rnd.choice(("/v2/search", "/v2/items", "/v2/orders")), "status": 200}


def make_event(rnd: random.Random, i: int, when: datetime, **override: Any) -> dict[str, Any]:
    """One well-formed event of a known customer (fields in `override` replace the drawn ones)."""
    tenant = override.pop("tenantid", None) or _TENANT(rnd)
    kind = override.pop("type", None) or _TYPE[tenant](rnd)
    return {"specversion": "1.0", "id": f"evt-{i}", "source": f"{tenant}/sdk", "type": kind,
            "subject": customer_id(tenant, int(_CUSTOMER(rnd))), "time": _rfc3339(when),
            "tenantid": tenant, "data": _data(rnd, tenant, kind, i), **override}


def _schema_error(rnd: random.Random, event: dict[str, Any]) -> dict[str, Any]:
    broken = rnd.randrange(4)
    if broken == 0:
        return {k: v for k, v in event.items() if k != "subject"}
    if broken == 1:
        return {**event, "time": "yesterday"}
    if broken == 2:
        return {**event, "specversion": "0.3"}
    return {**event, "data": [1, 2, 3]}


@dataclass(frozen=True)
class Stream:
    lines: list[bytes]
    outcomes: list[str]  # the `status/reason` each line must end in, line by line

    def expected(self, n: int | None = None) -> dict[str, int]:
        """Expected ledger rows per `status/reason` for the first n lines (a retry always comes
        after its original, so any prefix has exact expectations)."""
        return dict(Counter(self.outcomes[:n]))


def generate(n: int, seed: int = 1, now: datetime | None = None) -> Stream:
    """n lines of traffic. Event times are relative to `now`, with margins (late is a day old,
    future is hours ahead) wide enough that the outcomes hold for as long as a benchmark runs."""
    rnd = random.Random(seed)
    now = now or datetime.now(UTC)
    lines: list[bytes] = []
    outcomes: list[str] = []
    recent: deque[dict[str, Any]] = deque(maxlen=_RECENT)

    def normal(i: int, **override: Any) -> dict[str, Any]:
        return make_event(rnd, i, now - timedelta(seconds=rnd.uniform(0, 3600)), **override)

    for i in range(n):
        kind = _KIND(rnd)
        if kind.startswith("duplicate/") and not recent:
            kind = "accepted/"
        if kind == "accepted/":
            event = normal(i)
            recent.append(event)
            line = orjson.dumps(event)
        elif kind == "duplicate/same_payload":
            line = orjson.dumps(rnd.choice(recent))
        elif kind == "duplicate/conflict":
            original = rnd.choice(recent)
            line = orjson.dumps({**original, "data": {**original["data"], "note": "resent, altered"}})
        elif kind == "late/late_arrival":
            line = orjson.dumps(make_event(rnd, i, now - timedelta(hours=rnd.uniform(25, 72))))
        elif kind == "rejected/future_timestamp":
            line = orjson.dumps(make_event(rnd, i, now + timedelta(hours=6)))
        elif kind == "rejected/too_old":
            line = orjson.dumps(make_event(rnd, i, now - timedelta(days=100)))
        elif kind == "rejected/malformed":
            line = orjson.dumps(normal(i))[:-9]  # cut off mid-object, as a broken client would
        elif kind == "rejected/schema":
            line = orjson.dumps(_schema_error(rnd, normal(i)))
        elif kind == "rejected/unknown_tenant":
            line = orjson.dumps(normal(i) | {"tenantid": "initech"})
        elif kind == "unresolved/unknown_customer":
            line = orjson.dumps(normal(i) | {"subject": "not-in-the-catalog"})
        else:  # accepted/unmetered: an event type no metric of the tenant uses
            line = orjson.dumps(normal(i, type="page.view"))
        lines.append(line)
        outcomes.append(kind)
    return Stream(lines, outcomes)
