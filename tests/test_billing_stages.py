"""The bill run's ten stages, each alone: pure functions, no Kafka or Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from billing_fixtures import MODELS
from hypothesis import given
from hypothesis import strategies as st

from operators.billing.aggregate import aggregate
from operators.billing.allowance import allowance
from operators.billing.commit import commit
from operators.billing.common import shift_period
from operators.billing.discount import discount
from operators.billing.quota_check import LATENESS, quota_check, readiness
from operators.billing.rate import rate
from operators.billing.rollover import rollover
from operators.billing.route import route
from operators.billing.settle import credit_note, digest, document, settle
from operators.billing.tax import tax
from operators.pricing import parse_charge, period_price, price_parts, price_sequence
from schemas.billing_run import (
    BillingStageError,
    Bucket,
    Carry,
    CouponTerms,
    CreditBalance,
    Destination,
    Draft,
    FlowTotal,
    Header,
    HeldEvent,
    LedgerLine,
    Line,
    PlanCharge,
    PreviousPeriod,
    QuotaDecision,
    QuotaRule,
    SubscriptionTerms,
    TaxTerms,
)
from schemas.catalog import Rollover

PERIOD = "2026-03"
END = datetime(2026, 4, 1, tzinfo=UTC)
PER_UNIT = {"metric": "calls", "model": "per_unit", "unit_price": "0.5"}


def charge(definition: dict = PER_UNIT, included: str = "0",
           rollover_terms: Rollover | None = None) -> PlanCharge:
    return PlanCharge(metric=definition["metric"], definition=definition, included=D(included),
                      rollover=rollover_terms)


def header(*charges: PlanCharge, minimum: str | None = None, subs: tuple[str, ...] = ("sub-1",)) -> Header:
    return Header(tenant="acme", customer="cust-1", customer_name="Cust One", period=PERIOD, currency="USD",
                  subscriptions=tuple(SubscriptionTerms(id=s, plan="pro", plan_version=1,
                                                        minimum=None if minimum is None else D(minimum),
                                                        charges=charges or (charge(),)) for s in subs))


def usage_line(n: int = 1, quantity: str = "10", metric: str = "calls", sub: str = "sub-1", **kw) -> Line:
    return Line(line_no=n, kind="usage", subscription=sub, metric=metric, description=metric,
                events=int(D(quantity)), quantity=D(quantity), **kw)


def priced(amount: str, n: int = 1, metric: str = "calls", sub: str = "sub-1") -> Line:
    return usage_line(n, amount, metric, sub, billable=D(amount), amount=D(amount), usage_amount=D(amount))


def draft(*lines: Line, h: Header | None = None, **kw) -> Draft:
    return Draft(header=h or header(), lines=lines, **kw)


# --- 1. QuotaCheck -----------------------------------------------------------------------------------

def held(i: int, subject: str, approved: bool = False) -> HeldEvent:
    return HeldEvent(id=i, ref=f"t/0/{i}", status="late", reason="late_arrival", subject=subject,
                     source="s", event_id=f"e{i}", approved=approved)


@pytest.mark.parametrize("watermark, ready", [
    (None, False),
    (END, False),  # the period has ended, but not its lateness allowance
    (END + LATENESS - timedelta(microseconds=1), False),
    (END + LATENESS, True),  # exactly 24 hours after the end: nothing of the period can still be on time
    (END + timedelta(days=40), True),
])
def test_a_period_is_ready_once_the_pipeline_clock_is_past_its_end_plus_the_lateness(watermark, ready):
    assert (readiness(END, watermark, [], False) is None) is ready


def test_undecided_held_events_stop_the_run_unless_allowed_and_each_invoice_lists_its_own():
    events = [held(1, "cust-1"), held(2, "cust-2"), held(3, "cust-1", approved=True)]
    problem = readiness(END, END + LATENESS, events, False)
    assert "3 held events" in problem and "3 (late/late_arrival, approved, not rated yet)" in problem
    with pytest.raises(BillingStageError, match="--allow-held"):
        quota_check(header(), period_end=END, watermark=END + LATENESS, closed=True, held=events,
                    allow_held=False, quotas=[], flow=[])
    d = quota_check(header(), period_end=END, watermark=END + LATENESS, closed=True, held=events,
                    allow_held=True, quotas=[], flow=[])
    assert [h.id for h in d.held_excluded] == [1, 3]


def flow(quantity: str, sub: str = "sub-1", metric: str = "calls", customer: str = "cust-1",
         events: int | None = None, revenue: str = "0", cost: str = "0") -> FlowTotal:
    return FlowTotal(customer=customer, subscription=sub, metric=metric, currency="USD",
                     events=int(D(quantity)) if events is None else events, quantity=D(quantity),
                     revenue=D(revenue), cost=D(cost))


@pytest.mark.parametrize("overage, used, blocked", [
    ("block", "120", "20"), ("block", "100", "0"), ("block", "99", "0"), ("bill", "120", "0"),
])
def test_hard_quotas_block_what_is_over_the_limit_or_bill_it(overage, used, blocked):
    rules = [QuotaRule(subscription="sub-1", metric="calls", limit=D(100), overage=overage),
             QuotaRule(subscription="sub-9", metric="calls", limit=D(1), overage="block")]  # someone else's
    d = quota_check(header(), period_end=END, watermark=END + LATENESS, closed=True, held=[],
                    allow_held=False, quotas=rules, flow=[flow(used)])
    assert d.quotas == (QuotaDecision(subscription="sub-1", metric="calls", limit=D(100), overage=overage,
                                      used=D(used), blocked=D(blocked)),)


def test_a_period_that_is_not_closed_is_not_billed():
    with pytest.raises(BillingStageError, match="not closed"):
        quota_check(header(), period_end=END, watermark=END + LATENESS, closed=False, held=[],
                    allow_held=False, quotas=[], flow=[])


# --- 2. Rollover ---------------------------------------------------------------------------------------

ROLL = Rollover(max_units=D(50), expires_after_periods=2)


def previous(*buckets: tuple[str, str], invoiced: bool = True, active: bool = True) -> PreviousPeriod:
    return PreviousPeriod(period=shift_period(PERIOD, -1), invoiced=invoiced,
                          active=frozenset({"sub-1"} if active else ()),
                          rollover=(Carry(subscription="sub-1", metric="calls",
                                          buckets=tuple(Bucket(origin=o, units=D(u)) for o, u in buckets)),))


@pytest.mark.parametrize("carried, usable", [
    ([("2026-02", "30")], [("2026-02", "30")]),
    ([("2026-01", "10"), ("2026-02", "30")], [("2026-01", "10"), ("2026-02", "30")]),  # 2 periods old: usable
    ([("2025-12", "10"), ("2026-02", "30")], [("2026-02", "30")]),  # 3 periods old: expired
    ([("2026-01", "40"), ("2026-02", "30")], [("2026-01", "20"), ("2026-02", "30")]),  # capped, newest kept
])
def test_rollover_carries_unexpired_units_up_to_the_cap(carried, usable):
    h = header(charge(included="100", rollover_terms=ROLL))
    d = rollover(Draft(header=h), previous(*carried))
    assert [(b.origin, str(b.units)) for c in d.rollover_in for b in c.buckets] == usable


def test_rollover_needs_the_previous_period_invoiced_when_the_subscription_was_active():
    h = header(charge(included="100", rollover_terms=ROLL))
    with pytest.raises(BillingStageError, match="bill 2026-02 first"):
        rollover(Draft(header=h), previous(invoiced=False))
    assert rollover(Draft(header=h), previous(invoiced=False, active=False)).rollover_in == ()
    assert rollover(Draft(header=header()), previous(invoiced=False)).rollover_in == ()  # no rollover terms


# --- 3. Aggregate -------------------------------------------------------------------------------------

MATRIX = {"metric": "tokens", "model": "matrix", "dimensions": ["model"],
          "prices": [{"match": {"model": "a"}, "unit_price": "0.1"},
                     {"match": {"model": "b"}, "unit_price": "0.2"}]}


def ledger_line(metric: str, q: str, after: str, revenue: str, grp: dict | None = None,
                version: int = 1, adjusts: str | None = None) -> LedgerLine:
    return LedgerLine(subscription="sub-1", plan="pro", plan_version=version, currency="USD", metric=metric,
                      grp=grp or {}, quantity=D(q), total_after=D(after), revenue=D(revenue), cost=D("0.01"),
                      adjusts_period=adjusts)


def test_aggregate_groups_by_the_flows_own_groups_and_matches_its_totals():
    h = header(charge(), charge(MATRIX))
    lines = [ledger_line("calls", "1", "1", "0.5"), ledger_line("calls", "1", "2", "0.5", adjusts="2026-02"),
             ledger_line("tokens", "10", "10", "1", {"model": "b", "region": "eu"}),
             ledger_line("tokens", "5", "5", "0.5", {"model": "a", "region": "eu"}),
             ledger_line("tokens", "5", "15", "1", {"model": "b", "region": "us"}),  # the first b's group
             ledger_line("storage", "7", "7", "0")]  # metered, not priced by the plan: no line
    totals = [flow("2", revenue="1", cost="0.02"),
              flow("20", metric="tokens", events=3, revenue="2.5", cost="0.03"),
              flow("7", metric="storage", events=1, cost="0.01")]
    d = aggregate(Draft(header=h), lines, totals)
    got = [(x.line_no, x.metric, x.group, x.events, x.adjustment_events, str(x.quantity),
            str(x.ledger_revenue)) for x in d.lines]
    assert got == [(1, "calls", (), 2, 1, "2", "1.0"),
                   (2, "tokens", (("model", "a"),), 1, 0, "5", "0.5"),
                   (3, "tokens", (("model", "b"),), 2, 0, "15", "2")]


def test_aggregate_stops_on_any_difference_with_the_flow_and_shows_both_figures():
    lines = [ledger_line("calls", "1", "1", "0.5")]
    with pytest.raises(BillingStageError) as err:
        aggregate(Draft(header=header()), lines, [flow("2", events=2, revenue="1", cost="0.01")])
    assert "ledger events 1, quantity 1, revenue 0.5" in str(err.value)
    assert "flow events 2, quantity 2, revenue 1" in str(err.value)
    with pytest.raises(BillingStageError, match="flow events 0"):  # usage the flow never counted
        aggregate(Draft(header=header()), lines, [])


def test_aggregate_refuses_events_rated_with_another_plan_version():
    with pytest.raises(BillingStageError, match="pro v2"):
        aggregate(Draft(header=header()), [ledger_line("calls", "1", "1", "0.5", version=2)],
                  [flow("1", revenue="0.5", cost="0.01")])


# --- 4. Allowance -------------------------------------------------------------------------------------

@pytest.mark.parametrize("quantity, included, billable, carried_out", [
    ("100", "100", "0", None),  # exactly at the allowance: nothing billed, nothing left
    ("101", "100", "1", None),
    ("99", "100", "0", "1"),  # one unit unused rolls over
    ("0", "100", "0", "50"),  # capped at max_units
])
def test_included_units_exactly_at_the_allowance(quantity, included, billable, carried_out):
    h = header(charge(included=included, rollover_terms=Rollover(max_units=D(50), expires_after_periods=1)))
    d = allowance(draft(usage_line(quantity=quantity), h=h), [])
    assert d.lines[0].billable == D(billable)
    assert d.lines[0].included_used == D(quantity) - D(billable)
    assert [str(c.units) for c in d.rollover_out] == ([carried_out] if carried_out else [])


def test_allowances_are_deducted_blocked_rollover_included_then_credits_oldest_first():
    h = header(charge(included="10", rollover_terms=Rollover(max_units=D(100), expires_after_periods=3)))
    d = Draft(header=h, lines=(usage_line(quantity="100"),),
              quotas=(QuotaDecision(subscription="sub-1", metric="calls", limit=D(80), overage="block",
                                    used=D(100), blocked=D(20)),),
              rollover_in=(Carry(subscription="sub-1", metric="calls",
                                 buckets=(Bucket(origin="2026-01", units=D(5)),
                                          Bucket(origin="2026-02", units=D(8)))),))
    credits = [CreditBalance(grant="g-new", metric="calls", from_period="2026-03", remaining=D(100)),
               CreditBalance(grant="g-old", metric="calls", from_period="2026-01", remaining=D(30)),
               CreditBalance(grant="g-later", metric="calls", from_period="2026-04", remaining=D(100)),
               CreditBalance(grant="g-other", metric="tokens", from_period="2026-01", remaining=D(100))]
    x = allowance(d, credits).lines[0]
    assert (x.blocked, x.rollover_used, x.included_used, x.credits_used, x.billable) == (20, 13, 10, 57, 0)
    assert [(c.grant, c.units) for c in x.credit_draws] == [("g-old", 30), ("g-new", 27)]


def test_a_percentage_charge_is_billed_whole():
    pct = {"metric": "calls", "model": "percentage", "rate": "2"}
    d = allowance(draft(usage_line(quantity="500"), h=header(charge(pct))),
                  [CreditBalance(grant="g", metric="calls", from_period="2026-01", remaining=D(100))])
    assert d.lines[0].billable == 500 and d.lines[0].credits_used == 0


# --- 5. Rate ---------------------------------------------------------------------------------------------

PRICED = [m for m in MODELS if m != "percentage"]  # a percentage charge has no period price
REGION = {"region": "eu"}


@pytest.mark.parametrize("model", PRICED)
@given(quantities=st.lists(st.integers(0, 40).map(D), min_size=1, max_size=30), included=st.integers(0, 60))
def test_rate_prices_with_the_flows_pricing_and_the_events_add_up(model, quantities, included):
    definition = {"metric": "calls", **MODELS[model]}
    c = parse_charge(definition)
    group = REGION if model == "matrix" else None
    total, marginals = price_sequence(c, [(q, group) for q in quantities])
    q = sum(quantities)
    line = usage_line(quantity=str(q), group=tuple(REGION.items()) if group else (),
                      ledger_revenue=sum(marginals), billable=max(q - included, 0))
    x = rate(draft(line, h=header(charge(definition))), {}).lines[0]
    assert x.usage_amount == total == sum(marginals)
    assert x.amount == period_price(c, x.billable, group)
    assert sum(p.amount for p in x.parts) == x.amount
    assert x.model == model


def test_rate_sums_a_percentage_charges_own_fees():
    pct = {"metric": "calls", "model": "percentage", "rate": "2.5", "fixed_fee": "0.3",
           "min_per_event": "0.5"}
    line = usage_line(quantity="110", ledger_revenue=D("3.3"), billable=D(110))
    line = line.model_copy(update={"events": 2})
    x = rate(draft(line, h=header(charge(pct))), {("sub-1", "calls"): [D(1), D(100)]}).lines[0]
    assert x.amount == x.usage_amount == D("0.5") + D("2.8")  # 0.025 + 0.3 raised to the minimum; 2.5 + 0.3
    with pytest.raises(BillingStageError, match="1 event amounts for 2 events"):
        rate(draft(line, h=header(charge(pct))), {("sub-1", "calls"): [D(1)]})


def test_rate_stops_when_the_events_revenue_does_not_add_up_to_the_period_price():
    with pytest.raises(BillingStageError, match=r"the period price of 10 is 5.0, but its 10 events' revenue"):
        rate(draft(usage_line(quantity="10", billable=D(10), ledger_revenue=D("4.5"))), {})


@pytest.mark.parametrize("model", PRICED)
@given(q=st.integers(0, 2000).map(D))
def test_price_parts_add_up_to_the_period_price(model, q):
    c = parse_charge({"metric": "m", **MODELS[model]})
    group = {"region": "zz"}
    assert sum((p.amount for p in price_parts(c, q, group)), D(0)) == period_price(c, q, group)


# --- 6. Commit ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("usage, true_up", [
    ("500.00", None), ("500", None), ("499.99", "0.01"), ("0", "500.00"), ("612.5", None)])
def test_a_minimum_commitment_is_trued_up_only_when_usage_falls_short(usage, true_up):
    d = commit(draft(priced(usage), h=header(minimum="500.00")))
    ups = [x for x in d.lines if x.kind == "commitment"]
    assert [str(x.amount) for x in ups] == ([true_up] if true_up else [])
    if ups:
        assert ups[0].line_no == 2 and "true-up" in ups[0].description


# --- 7. Discount ---------------------------------------------------------------------------------------

def coupon(code: str, pct: str | None = None, amount: str | None = None, charges: tuple[str, ...] = (),
           since: str = PERIOD, periods: int | None = None) -> CouponTerms:
    return CouponTerms(code=code, percent_off=None if pct is None else D(pct),
                       amount_off=None if amount is None else D(amount), charges=charges, from_period=since,
                       periods=periods)


@pytest.mark.parametrize("coupons, discounts", [
    ([coupon("all", pct="100")], ["80", "20"]),  # 100%: nothing left to pay
    ([coupon("ten", pct="10")], ["8.0", "2.0"]),
    ([coupon("fix", amount="85")], ["80", "5"]),  # fixed: line order, never below zero
    ([coupon("fix", amount="500")], ["80", "20"]),
    ([coupon("calls", pct="50", charges=("calls",)), coupon("ten", pct="10")], ["44", "2"]),  # charge first
    ([coupon("b-fix", amount="10"), coupon("a-pct", pct="10")], ["18.0", "2.0"]),  # percentages first
    ([coupon("old", pct="10", since="2026-01", periods=2)], ["0", "0"]),  # 2 periods: Jan, Feb
    ([coupon("last", pct="10", since="2026-01", periods=3)], ["8.0", "2.0"]),  # 3 periods: Jan to Mar
    ([coupon("future", pct="10", since="2026-04")], ["0", "0"]),
])
def test_discounts_apply_in_their_documented_order(coupons, discounts):
    d = draft(priced("80"), priced("20", 2, metric="storage"))
    assert [x.discount for x in discount(d, coupons).lines] == [D(v) for v in discounts]


def test_an_invoice_wide_coupon_covers_the_commitment_true_up():
    d = commit(draft(priced("100"), h=header(minimum="150")))
    got = discount(d, [coupon("half", pct="50"), coupon("calls", pct="10", charges=("calls",))])
    assert [(x.kind, x.discount) for x in got.lines] == [("usage", 55), ("commitment", 25)]


# --- 8. Tax ---------------------------------------------------------------------------------------------

VAT = TaxTerms(id="vat", name="VAT 20%", percent=D(20))


@pytest.mark.parametrize("amount, rate_, minor, net, tax_, total, rounding", [
    ("10.125", VAT, 2, "10.12", "2.02", "12.14", "-0.010"),  # 10.125 -> 10.12 (half-even), 2.025 -> 2.02
    ("10.135", VAT, 2, "10.14", "2.03", "12.17", "0.008"),
    ("0.0012", VAT, 2, "0.00", "0.00", "0.00", "-0.00144"),
    ("100", TaxTerms(id="z", name="Zero-rated export", percent=D(0), kind="zero_rated"), 2, "100.00", "0.00",
     "100.00", "0"),
    ("100", TaxTerms(id="rc", name="EU reverse charge", percent=D(0), kind="reverse_charge"), 2, "100.00",
     "0.00", "100.00", "0"),
    ("100", None, 2, "100.00", "0.00", "100.00", "0"),
    ("1234.5", VAT, 0, "1234", "247", "1481", "-0.4"),  # JPY: no minor unit
])
def test_tax_rounds_once_per_line_half_even_and_shows_the_difference(amount, rate_, minor, net, tax_, total,
                                                                     rounding):
    d = tax(draft(priced(amount)), rate_, minor)
    x = d.lines[0]
    assert (str(x.net_rounded), str(x.tax), str(x.total)) == (net, tax_, total)
    assert x.rounding == D(rounding) == (x.net_rounded + x.tax) - (x.net + x.tax_exact)
    assert d.totals.total == x.total and d.totals.rounding == x.rounding


def test_a_fully_discounted_line_is_taxed_nothing():
    d = discount(draft(priced("80")), [coupon("all", pct="100")])
    x = tax(d, VAT, 2).lines[0]
    assert (x.net, x.tax, x.total) == (0, 0, 0)


# --- 9. Route and 10. Settle ----------------------------------------------------------------------------

def finished() -> Draft:
    committed = commit(draft(priced("80"), h=header(minimum="100")))
    return tax(discount(committed, [coupon("ten", pct="10")]), VAT, 2)


def test_route_sends_to_kafka_then_each_destination_by_name():
    d = route(finished(), [Destination(name="zz", kind="directory", formats=("pdf",)),
                           Destination(name="erp", kind="webhook")])
    assert [(r.destination, r.kind) for r in d.routes] == [
        ("kafka", "kafka"), ("erp", "webhook"), ("zz", "directory")]
    with pytest.raises(BillingStageError, match="Tax has not run"):
        route(draft(priced("1")), [])


def test_settle_numbers_an_invoice_whose_digest_is_its_documents_and_a_credit_note_negates_it():
    inv = settle(route(finished(), []), "INV-2026-0007")
    assert inv.number == "INV-2026-0007" and inv.totals.total == D("108.00")
    assert digest(inv) == digest(settle(route(finished(), []), "INV-2026-0007"))  # reproducible bit for bit
    assert digest(inv) != digest(settle(route(finished(), []), "INV-2026-0008"))
    note = credit_note(inv, "CN-2026-0001", "wrong tax rate")
    assert note.credit_note_of == "INV-2026-0007" and note.totals.total == D("-108.00")
    assert [str(x.total) for x in note.lines] == ["-86.40", "-21.60"]
    assert b'"-0"' not in document(note)  # zero stays zero


# --- catalog terms ---------------------------------------------------------------------------------------

def _plan(**charge_terms) -> dict:
    return {"tenant": "acme", "code": "p", "version": 1,
            "charges": [{"metric": "calls", "model": "per_unit", "unit_price": "1", **charge_terms}]}


@pytest.mark.parametrize("entry, error", [
    ({"plans": [_plan(included=100.5)]}, "is a float"),
    ({"plans": [_plan(rollover={"max_units": "10", "expires_after_periods": 1})]}, "needs `included`"),
    ({"plans": [_plan(included="10", rollover={"max_units": "10"})]}, "expires_after_periods"),
    ({"plans": [{"tenant": "acme", "code": "p", "version": 1,
                 "charges": [{"metric": "fees", "model": "percentage", "rate": "2", "included": "5"}]}]},
     "no units to include"),
    ({"tax_rates": [{"tenant": "acme", "id": "z", "name": "Zero", "percent": "5", "kind": "zero_rated"}]},
     "charges 0 percent"),
    ({"coupons": [{"tenant": "acme", "code": "X", "percent_off": "10", "amount_off": "5"}]}, "exactly one"),
    ({"coupons": [{"tenant": "acme", "code": "X", "percent_off": "120"}]}, "less than or equal to 100"),
    ({"redemptions": [{"tenant": "acme", "customer": "c", "coupon": "X", "from_period": "2026-13"}]},
     "should match pattern"),
    ({"credits": [{"tenant": "acme", "id": "g", "customer": "c", "metric": "calls", "units": 0.5,
                   "from_period": "2026-01"}]}, "is a float"),
    ({"subscriptions": [{"tenant": "acme", "id": "s", "customer": "c", "plan": "p", "plan_version": 1,
                         "start": "2026-01-01T00:00:00Z", "minimum": "-1"}]}, "greater than or equal to 0"),
    ({"quotas": [{"tenant": "acme", "subscription": "s", "metric": "calls", "limit": "5", "overage": "cap"}]},
     "'bill' or 'block'"),
])
def test_billing_terms_in_the_catalog_are_validated(entry, error):
    from pydantic import ValidationError

    from schemas.catalog import Catalog
    with pytest.raises(ValidationError, match=error):
        Catalog.model_validate(entry)
