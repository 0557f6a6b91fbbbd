"""Enrichment and the RevenueEstimator as plain code: exact marginals, all or nothing."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.enrich import active_subscription, billing_period, enrich
from operators.pricing import parse_charge, period_price, price_sequence
from operators.revenue import RunningTotals, fresh_totals
from schemas.billing import CostRate, Entitlement, MetricDef, SubscriptionRef, TenantInfo
from schemas.record import Reason, Record, Status

T = 1_780_000_000_000_000  # 2026-05-28T20:26:40Z in µs
DAY = 86_400_000_000

GRADUATED = {"model": "graduated", "tiers": [
    {"up_to": 10, "unit_price": "10", "flat_fee": "2"}, {"up_to": 20, "unit_price": "5", "flat_fee": "3"},
    {"up_to": None, "unit_price": "5", "flat_fee": "3"}]}
MATRIX = {"model": "matrix", "dimensions": ["model"],
          "prices": [{"match": {"model": "a"}, "unit_price": "0.5"}]}


def tenant(metrics: list[MetricDef], charges: dict, costs: dict | None = None) -> TenantInfo:
    by_type: dict = {}
    for m in metrics:
        by_type.setdefault("use", []).append(m)
    return TenantInfo("acme", "USD", None, {k: tuple(v) for k, v in by_type.items()},
                      {("pro", 1): {k: parse_charge(v) for k, v in charges.items()}},
                      {("pro", 1): "USD"}, costs or {})


ENT = Entitlement("cust-1", (SubscriptionRef("sub-old", "pro", 1, T - 10 * DAY, T),
                             SubscriptionRef("sub-new", "pro", 1, T, None)))


def event(data: dict, at_us: int = T, type_: str = "use") -> Record:
    e = {"specversion": "1.0", "id": "1", "source": "s", "type": type_, "subject": "cust-1",
         "time": "x", "tenantid": "acme", "data": data}
    return Record("raw", "tid", 0, 0, at_us // 1000, orjson.dumps(e), event=e, event_us=at_us)


def test_subscription_windows_are_half_open():
    assert active_subscription(ENT, T - 1).id == "sub-old"
    assert active_subscription(ENT, T).id == "sub-new"
    assert active_subscription(ENT, T - 10 * DAY - 1) is None


def test_billing_period_is_the_utc_month():
    assert billing_period(T) == "2026-05"


@pytest.mark.parametrize("ent, at, reason", [
    (None, T, Reason.UNKNOWN_CUSTOMER),
    (ENT, T - 11 * DAY, Reason.NO_SUBSCRIPTION),
])
def test_unresolvable_events_are_unresolved_with_the_reason(ent, at, reason):
    t = tenant([MetricDef("calls", "count", None, ())], {"calls": {"model": "per_unit", "unit_price": "1"}})
    r = enrich(event({}, at), t, ent)
    assert (r.status, r.reason) == (Status.UNRESOLVED, reason)


def test_event_type_no_metric_uses_is_accepted_unmetered():
    t = tenant([MetricDef("calls", "count", None, ())], {})
    r = enrich(event({}, type_="other"), t, ENT)
    assert (r.status, r.reason) == (Status.ACCEPTED, Reason.UNMETERED)
    assert r.billing.customer == "cust-1" and r.billing.subscription == "sub-new"


@pytest.mark.parametrize("data, problem", [({}, "missing"), ({"n": "ten"}, "number"),
                                           ({"n": -1}, "non-negative"), ({"n": True}, "number")])
def test_bad_metric_value_is_unpriceable(data, problem):
    t = tenant([MetricDef("n", "sum", "$.n", ())], {"n": {"model": "per_unit", "unit_price": "1"}})
    r = enrich(event(data), t, ENT)
    assert (r.status, r.reason) == (Status.UNRESOLVED, Reason.UNPRICEABLE) and problem in r.detail


def test_quantities_are_exact_decimals_and_the_most_specific_cost_applies():
    t = tenant([MetricDef("tokens", "sum", "$.tokens", ("model",))], {"tokens": MATRIX},
               {"tokens": (CostRate({"model": "a"}, Decimal("0.1")), CostRate({}, Decimal("0.01")))})
    r = enrich(event({"tokens": 0.1, "model": "a"}), t, ENT)
    assert r.billing.uses[0].value == Decimal("0.1")  # not 0.1000000000000000055...
    assert r.billing.uses[0].unit_cost == Decimal("0.1")
    RunningTotals(fresh_totals).rate(r, t.charges[("pro", 1)])
    [line] = r.lines
    assert (line.revenue, line.cost, line.margin) == (Decimal("0.05"), Decimal("0.01"), Decimal("0.04"))
    other = enrich(event({"tokens": 1, "model": "b"}), t, ENT)
    assert other.billing.uses[0].unit_cost == Decimal("0.01")


def test_unpriceable_event_leaves_no_trace_in_the_running_totals():
    t = tenant([MetricDef("calls", "count", None, ()), MetricDef("tokens", "sum", "$.n", ("model",))],
               {"calls": {"model": "per_unit", "unit_price": "1"}, "tokens": MATRIX})
    rev = RunningTotals(fresh_totals)
    bad = enrich(event({"n": 5, "model": "zzz"}), t, ENT)
    rev.rate(bad, t.charges[("pro", 1)])
    assert (bad.status, bad.reason) == (Status.UNRESOLVED, Reason.UNPRICEABLE)
    assert bad.lines is None and rev.totals == {}
    good = enrich(event({"n": 5, "model": "a"}), t, ENT)
    rev.rate(good, t.charges[("pro", 1)])
    assert [x.total_after for x in good.lines] == [1, 5]


def rate_all(aggregation: str, charge: dict, values: list, times: list[int] | None = None):
    t = tenant([MetricDef("m", aggregation, None if aggregation == "count" else "$.v", ("g",))],
               {"m": charge})
    rev = RunningTotals(fresh_totals)
    out = []
    for i, v in enumerate(values):
        r = enrich(event({"v": v, "g": "a"}, times[i] if times else T + i), t, ENT)
        rev.rate(r, t.charges[("pro", 1)])
        out.append(r.lines[0])
    return out, rev


def test_graduated_example_marginals():
    lines, _ = rate_all("count", GRADUATED, [None] * 21)
    revenue = [x.revenue for x in lines]
    assert revenue[0] == 12 and sum(revenue[:10]) == 102 and sum(revenue[:11]) == 110
    assert sum(revenue) == 163


def test_max_adds_only_the_difference_and_latest_follows_event_time():
    per_unit = {"model": "per_unit", "unit_price": "2"}
    lines, _ = rate_all("max", per_unit, [5, 3, 8, 8])
    assert [x.revenue for x in lines] == [10, 0, 6, 0]
    lines, _ = rate_all("latest", per_unit, [5, 9, 2], times=[T, T + 2, T + 1])
    assert [x.total_after for x in lines] == [5, 9, 9]  # the out-of-order older value is ignored
    assert sum(x.revenue for x in lines) == 18


def test_unique_count_counts_each_value_once():
    lines, _ = rate_all("unique_count", {"model": "per_unit", "unit_price": "1"}, ["u1", "u2", "u1", 7, "7"])
    assert [x.revenue for x in lines] == [1, 1, 0, 1, 1]  # 7 and "7" are different values



def test_a_distinct_value_too_long_to_store_is_unpriceable():
    """A unique_count value and its group are a key of the durable set (revenue_distinct), which
    Postgres indexes: a longer one stalled the partition, its ledger write failing on every retry."""
    per_unit = {"model": "per_unit", "unit_price": "1"}
    t = tenant([MetricDef("m", "unique_count", "$.v", ("g",))], {"m": per_unit})
    fits = enrich(event({"v": "u" * 1986, "g": "a"}), t, ENT)  # ["u...",{"g":"a"}]: 2,000 bytes
    assert fits.status is None and fits.billing.uses[0].raw_value == "u" * 1986
    for data in ({"v": "u" * 1987, "g": "a"}, {"v": "u", "g": "€" * 700}):
        r = enrich(event(data), t, ENT)
        assert (r.status, r.reason) == (Status.UNRESOLVED, Reason.UNPRICEABLE)
        assert r.detail.startswith("metric m: $.v and its group take ") and "at most 2000" in r.detail

CHARGES = [
    {"model": "flat", "amount": "99"},
    {"model": "per_unit", "unit_price": "0.003"},
    GRADUATED,
    {"model": "volume", "tiers": [{"up_to": 10, "unit_price": "2", "flat_fee": "1"},
                                  {"up_to": None, "unit_price": "1", "flat_fee": "5"}]},
    {"model": "package", "package_size": "100", "package_price": "7", "free_units": "50"},
    {"model": "stairstep", "tiers": [{"up_to": 10, "price": "5"}, {"up_to": None, "price": "20"}]},
    {"model": "percentage", "rate": "2.9", "fixed_fee": "0.30", "min_per_event": "0.5",
     "max_per_event": None},
    {"model": "matrix", "dimensions": ["g"], "prices": [{"match": {"g": "a"}, "unit_price": "0.25"}]},
]


@pytest.mark.parametrize("charge", CHARGES, ids=[c["model"] for c in CHARGES])
@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.decimals(min_value=0, max_value=10_000, places=4), min_size=1, max_size=40))
def test_the_flow_prices_exactly_like_aforo_price_and_marginals_sum_to_the_period_price(charge, values):
    lines, rev = rate_all("sum", charge, [str(v) for v in values])
    total, marginals = price_sequence(parse_charge(charge), [(v, {"g": "a"}) for v in values])
    assert [x.revenue for x in lines] == marginals
    assert sum(marginals) == total
    if charge["model"] != "percentage":
        [period] = rev.totals.values()
        assert period.revenue == period_price(parse_charge(charge), period.usage, {"g": "a"})
