"""End-of-period projections and money display: usage projected at the pace, priced on the plan;
flat and stairstep fees never multiplied by the pace. Plain functions, a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from operators.money import display, minor_unit, percent, rounded
from operators.pricing import parse_charge, period_price
from operators.projection import Pace, projected_revenue, projected_usage

D = Decimal
NOON_DAY_1 = datetime(2026, 12, 1, 12, tzinfo=UTC)  # 12 h of a 31-day month: pace x62
STAIRSTEP = parse_charge({"model": "stairstep", "tiers": [
    {"up_to": 10, "price": "5"}, {"up_to": 100, "price": "20"}, {"up_to": None, "price": "50"}]})
GRADUATED = parse_charge({"model": "graduated", "tiers": [
    {"up_to": 100, "unit_price": "0", "flat_fee": "0"},
    {"up_to": None, "unit_price": "0.002", "flat_fee": "0"}]})


def test_pace_of_a_period():
    pace = Pace.of("2026-12", NOON_DAY_1)
    assert (pace.day, pace.days, pace.scale) == (1, 31, D(62))
    assert Pace.of("2026-11", NOON_DAY_1).scale == 1 and Pace.of("2026-11", NOON_DAY_1).over
    assert (Pace.of("2026-11", NOON_DAY_1).day, Pace.of("2026-11", NOON_DAY_1).days) == (30, 30)
    assert not Pace.of("2027-01", NOON_DAY_1).started and Pace.of("2027-01", NOON_DAY_1).scale == 1
    assert Pace.of("2026-12", datetime(2026, 12, 16, tzinfo=UTC)).day == 16
    # whole minutes: the same projection all minute long
    assert Pace.of("2026-12", NOON_DAY_1.replace(second=59)) == Pace.of("2026-12", NOON_DAY_1)
    assert not Pace.of("2026-12", datetime(2026, 12, 1, 0, 0, 59, tzinfo=UTC)).started


def test_the_demo_storage_step_is_not_multiplied_by_the_pace():
    """The demo's storage_gb is a stairstep on the max of `gb`: a level, priced once."""
    assert projected_revenue(STAIRSTEP, "max", D(120), D(50), D(62)) == D(50)
    assert projected_revenue(STAIRSTEP, "latest", D(7), D(5), D(62)) == D(5)


def test_an_accumulating_stairstep_is_priced_at_the_step_the_projected_usage_reaches():
    assert projected_revenue(STAIRSTEP, "sum", D(40), D(20), D(2)) == D(20)  # 80: still the 20 step
    assert projected_revenue(STAIRSTEP, "sum", D(40), D(20), D(3)) == D(50)  # 120: the 50 step
    assert projected_revenue(STAIRSTEP, "sum", D(4), D(5), D(62)) == D(50)  # 248


def test_flat_fees_are_counted_once():
    flat = parse_charge({"model": "flat", "amount": "49"})
    assert projected_revenue(flat, "count", D(3), D(49), D(62)) == D(49)


def test_graduated_is_priced_at_its_tiers_not_scaled():
    # 150 calls: 50 paid = 0.1; at x2, 300 calls: 200 paid = 0.4 (linear revenue would say 0.2)
    assert projected_revenue(GRADUATED, "count", D(150), D("0.1"), D(2)) == D("0.4")
    assert projected_revenue(GRADUATED, "count", D(150), D("0.1"), D(2)) == period_price(GRADUATED, D(300))
    assert projected_revenue(GRADUATED, "count", D(40), D(0), D(2)) == D(0)  # 80: all free


def test_linear_charges_scale_with_the_pace():
    per_unit = parse_charge({"model": "per_unit", "unit_price": "0.01"})
    matrix = parse_charge({"model": "matrix", "dimensions": ["model"],
                           "prices": [{"match": {"model": "a"}, "unit_price": "0.5"}]})
    assert projected_revenue(per_unit, "sum", D(10), D("0.10"), D(62)) == D("6.20")
    assert projected_revenue(matrix, "sum", D(3), D("1.5"), D(4)) == D(6)


def test_a_capped_last_tier_caps_the_projection():
    capped = parse_charge({"model": "stairstep", "tiers": [{"up_to": 10, "price": "5"},
                                                           {"up_to": 100, "price": "20"}]})
    assert projected_revenue(capped, "sum", D(60), D(20), D(3)) == D(20)


def test_no_charge_or_a_finished_period_projects_to_itself():
    assert projected_revenue(None, "sum", D(5), D(0), D(62)) == D(0)
    assert projected_revenue(GRADUATED, "count", D(150), D("0.1"), D(1)) == D("0.1")


def test_projected_usage():
    assert projected_usage(D(804), "sum", D(62)) == D(49848)
    assert projected_usage(D(7), "max", D(62)) == D(7)
    assert projected_usage(D(1), "count", D(1) / D(3)) == D("0.333333")


@pytest.mark.parametrize("amount, currency, shown", [
    (D("10568.004"), "USD", "10,568.00 USD"), (D("0.0120"), "USD", "0.01 USD"),
    (D("0.01200"), "USD", "0.01 USD"), (D("0.005"), "EUR", "0.01 EUR"), (D("-2.345"), "USD", "-2.35 USD"),
    (D("1234.5"), "JPY", "1,235 JPY"), (D("1.2345"), "BHD", "1.235 BHD"), (D(0), "USD", "0.00 USD"),
])
def test_money_is_shown_with_the_currency_minor_unit(amount, currency, shown):
    assert display(amount, currency) == shown


def test_money_helpers():
    assert minor_unit("USD") == D("0.01") and minor_unit("JPY") == D(1)
    assert rounded(D("0.125"), "USD") == D("0.13")
    assert percent(D(-1), D(3)) == D("-33.3") and percent(D(1), D(0)) is None
