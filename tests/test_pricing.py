"""The pricing engine: each model at its boundaries, invalid charges, and the invariant that
per-event marginals add up exactly to the period price for any event sequence."""

from __future__ import annotations

import decimal
import itertools
from decimal import Decimal as D

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.pricing import (
    PricingError,
    Unpriceable,
    event_fee,
    group_key,
    marginal,
    parse_charge,
    period_price,
    price_sequence,
)

EXAMPLE_GRADUATED = {"model": "graduated", "tiers": [
    {"up_to": 10, "unit_price": 10, "flat_fee": 2},
    {"up_to": 20, "unit_price": 5, "flat_fee": 3},
    {"up_to": None, "unit_price": 5, "flat_fee": 3},
]}
TIERS = [{"up_to": "10", "unit_price": "2", "flat_fee": "1"},
         {"up_to": "100", "unit_price": "1.5", "flat_fee": "5"},
         {"up_to": None, "unit_price": "1", "flat_fee": "0"}]


def price(d: dict, q, group=None) -> D:
    return period_price(parse_charge(d), D(q), group)


# --- each model ------------------------------------------------------------------------------

@pytest.mark.parametrize(("q", "expected"), [
    ("0", "0"), ("1", "12"), ("10", "102"), ("11", "110"), ("20", "155"), ("21", "163"),
    ("0.5", "7"), ("10.25", "106.25"),
])
def test_graduated_example(q, expected):
    assert price(EXAMPLE_GRADUATED, q) == D(expected)


def test_graduated_prices_each_slice_at_its_tier():
    d = {"model": "graduated", "tiers": TIERS}
    assert price(d, "10") == D(10 * 2 + 1)
    assert price(d, "10.000001") == D("21") + D("0.000001") * D("1.5") + 5
    assert price(d, "100") == D("21") + 90 * D("1.5") + 5
    assert price(d, "150") == D("161") + 50
    assert price(d, "0.000001") == D("1.000002")


@pytest.mark.parametrize(("q", "expected"), [
    ("0", "0"), ("0.5", "2"), ("10", "21"), ("10.5", "20.75"), ("100", "155"), ("101", "101"),
])
def test_volume_prices_all_units_at_the_tier_containing_the_total(q, expected):
    assert price({"model": "volume", "tiers": TIERS}, q) == D(expected)


@pytest.mark.parametrize(("q", "expected"), [
    ("0", "0"), ("0.001", "0"), ("5", "0"), ("5.000001", "20"), ("15", "20"), ("15.5", "40"),
    ("25", "40"), ("26", "60"),
])
def test_package_with_free_units(q, expected):
    d = {"model": "package", "package_size": 10, "package_price": "20", "free_units": 5}
    assert price(d, q) == D(expected)


def test_package_without_free_units_and_fractional_size():
    assert price({"model": "package", "package_size": 10, "package_price": 3}, "0") == 0
    assert price({"model": "package", "package_size": 10, "package_price": 3}, "0.1") == 3
    assert price({"model": "package", "package_size": 10, "package_price": 3}, "30") == 9
    assert price({"model": "package", "package_size": "0.3", "package_price": 1}, "0.9") == 3
    assert price({"model": "package", "package_size": "0.3", "package_price": 1}, "0.91") == 4


@pytest.mark.parametrize(("q", "expected"), [
    ("0", "0"), ("0.1", "10"), ("100", "10"), ("100.000001", "50"), ("1000", "50"),
    ("1001", "80"),
])
def test_stairstep(q, expected):
    d = {"model": "stairstep", "tiers": [{"up_to": 100, "price": 10}, {"up_to": 1000, "price": 50},
                                         {"up_to": None, "price": "80"}]}
    assert price(d, q) == D(expected)


def test_flat_and_per_unit():
    assert price({"model": "flat", "amount": "9.99"}, "0") == 0
    assert price({"model": "flat", "amount": "9.99"}, "0.000001") == D("9.99")
    assert price({"model": "flat", "amount": "9.99"}, "1000") == D("9.99")
    assert price({"model": "per_unit", "unit_price": "0.1"}, "0.3") == D("0.03")
    assert price({"model": "per_unit", "unit_price": "0.000001"}, "0") == 0


def test_a_capped_last_tier_is_unpriceable_above_it():
    d = {"model": "stairstep", "tiers": [{"up_to": 10, "price": 1}, {"up_to": 20, "price": 2}]}
    assert price(d, "20") == 2
    with pytest.raises(Unpriceable, match=r"above the last tier \(up_to 20\)"):
        price(d, "20.5")


@pytest.mark.parametrize(("amount", "expected"), [
    ("0", "0.50"), ("5", "0.50"), ("10", "0.59"), ("100", "3.2"), ("1000", "20"), ("10000", "20"),
])
def test_percentage_clamps_each_event(amount, expected):
    d = {"model": "percentage", "rate": "2.9", "fixed_fee": "0.30", "min_per_event": "0.50",
         "max_per_event": "20"}
    assert event_fee(parse_charge(d), D(amount)) == D(expected)


def test_percentage_open_bounds_and_default_fixed_fee():
    charge = parse_charge({"model": "percentage", "rate": 1, "max_per_event": None})
    assert event_fee(charge, D("0")) == 0
    assert event_fee(charge, D("123456789.01")) == D("1234567.8901")
    charge = parse_charge({"model": "percentage", "rate": 1, "min_per_event": "0.05"})
    assert event_fee(charge, D("1")) == D("0.05")
    assert event_fee(charge, D("1000000")) == D("10000")


def test_percentage_is_priced_per_event_not_per_total():
    charge = parse_charge({"model": "percentage", "rate": 10, "max_per_event": 5})
    assert marginal(charge, D(0), D(100), amount=D(100)) == 5
    total, marginals = price_sequence(charge, [(D(100), None), (D(10), None), (D(30), None)])
    assert (total, marginals) == (D(9), [D(5), D(1), D(3)])
    with pytest.raises(TypeError, match="per event"):
        period_price(charge, D(140))
    with pytest.raises(TypeError, match="amount"):
        marginal(charge, D(0), D(100))
    with pytest.raises(TypeError, match="percentage"):
        event_fee(parse_charge({"model": "flat", "amount": 1}), D(1))


MATRIX = {"model": "matrix", "dimensions": ["region", "tier"], "prices": [
    {"match": {"region": "eu", "tier": "gold"}, "unit_price": "0.5"},
    {"match": {"region": "us", "tier": "gold"}, "unit_price": "0.4"},
]}


def test_matrix_prices_each_group_at_its_row():
    charge = parse_charge(MATRIX)
    eu, us = {"region": "eu", "tier": "gold", "extra": "x"}, {"tier": "gold", "region": "us"}
    assert period_price(charge, D(10), eu) == 5
    assert period_price(charge, D(10), us) == 4
    assert group_key(charge, eu) == ("eu", "gold")
    total, marginals = price_sequence(charge, [(D(2), eu), (D(3), us), (D(4), eu)])
    assert (total, marginals) == (D("4.2"), [D(1), D("1.2"), D(2)])


def test_matrix_without_a_row_or_default_is_unpriceable_even_for_zero_units():
    charge = parse_charge(MATRIX)
    with pytest.raises(Unpriceable, match="region='eu', tier='silver'"):
        period_price(charge, D(1), {"region": "eu", "tier": "silver"})
    with pytest.raises(Unpriceable, match="tier=None"):
        marginal(charge, D(0), D(0), {"region": "eu"})
    with pytest.raises(Unpriceable):
        price_sequence(charge, [(D(1), None)])


def test_matrix_default_price_covers_unlisted_and_missing_dimensions():
    charge = parse_charge({**MATRIX, "default_unit_price": "1"})
    assert period_price(charge, D(3), {"region": "eu", "tier": "silver"}) == 3
    assert period_price(charge, D(3), None) == 3
    assert period_price(charge, D(3), {"region": "eu", "tier": "gold"}) == D("1.5")
    only_default = parse_charge({"model": "matrix", "dimensions": ["region"], "prices": [],
                                 "default_unit_price": 2})
    assert period_price(only_default, D(3), {"region": "x"}) == 6


def test_non_matrix_charges_keep_one_group():
    charge = parse_charge({"model": "per_unit", "unit_price": 1})
    assert group_key(charge, {"region": "eu"}) == ()


def test_marginal_is_the_difference_of_period_prices():
    charge = parse_charge(EXAMPLE_GRADUATED)
    assert marginal(charge, D(10), D(11)) == 8
    assert marginal(charge, D(0), D(1)) == 12
    assert marginal(charge, D(5), D(5)) == 0


def test_no_silent_rounding():
    charge = parse_charge({"model": "per_unit", "unit_price": "0.000001"})
    assert period_price(charge, D("0.000001")) == D("1E-12")
    assert str(period_price(charge, D("12345678901234567890.123456"))) == \
        "12345678901234.567890123456"
    with pytest.raises(decimal.Inexact):  # beyond 50 digits: an error, never a rounded price
        period_price(parse_charge({"model": "per_unit", "unit_price": "1.000000000000000000001"}),
                     D("1234567890123456789012345678901.1"))


def test_negative_totals_are_refused():
    with pytest.raises(ValueError, match="negative"):
        period_price(parse_charge({"model": "per_unit", "unit_price": 1}), D(-1))


# --- invalid charges -------------------------------------------------------------------------

@pytest.mark.parametrize(("d", "message"), [
    ({"unit_price": 1}, "unknown pricing model None"),
    ({"model": "tiered"}, "unknown pricing model 'tiered'; expected one of"),
    ("flat", "a charge must be an object"),
    ({"model": "flat"}, "flat charge: amount is required"),
    ({"model": "per_unit", "unit_price": "-1"}, "unit_price must not be negative"),
    ({"model": "per_unit", "unit_price": "abc"}, "unit_price is not a number"),
    ({"model": "per_unit", "unit_price": "NaN"}, "unit_price must be finite"),
    ({"model": "per_unit", "unit_price": True}, "unit_price must be a number"),
    ({"model": "graduated"}, "graduated charge: tiers must be a list"),
    ({"model": "graduated", "tiers": []}, "tiers must not be empty"),
    ({"model": "volume", "tiers": [{"up_to": 10, "unit_price": 1}, {"up_to": 10, "unit_price": 1}]},
     r"tiers\[1\].up_to must be greater than 10"),
    ({"model": "volume", "tiers": [{"up_to": 0, "unit_price": 1}]},
     r"tiers\[0\].up_to must be greater than 0"),
    ({"model": "graduated", "tiers": [{"up_to": None, "unit_price": 1},
                                      {"up_to": 5, "unit_price": 1}]},
     r"tiers\[0\].up_to is null, but only the last tier may be open-ended"),
    ({"model": "graduated", "tiers": [{"up_to": None}]}, r"tiers\[0\].unit_price is required"),
    ({"model": "graduated", "tiers": [{"up_to": None, "unit_prise": 1}]},
     r"tiers\[0\] has unknown field\(s\) \['unit_prise'\]"),
    ({"model": "volume", "tiers": [{"up_to": None, "unit_price": 1, "flat_fee": "-2"}]},
     r"volume charge: tiers\[0\].flat_fee must not be negative"),
    ({"model": "stairstep", "tiers": [{"up_to": None, "unit_price": 1}]}, "unknown field"),
    ({"model": "stairstep", "tiers": ["x"]}, r"tiers\[0\] must be an object"),
    ({"model": "package", "package_size": 0, "package_price": 1}, "package_size must be greater"),
    ({"model": "package", "package_size": 1}, "package_price is required"),
    ({"model": "package", "package_size": 1, "package_price": 1, "free_units": -1},
     "free_units must not be negative"),
    ({"model": "percentage"}, "rate is required"),
    ({"model": "percentage", "rate": 1, "min_per_event": 5, "max_per_event": 1},
     r"min_per_event \(5\) is greater than max_per_event \(1\)"),
    ({"model": "matrix", "dimensions": [], "prices": []}, "dimensions must be a non-empty list"),
    ({"model": "matrix", "dimensions": ["a", "a"], "prices": []}, "duplicate"),
    ({"model": "matrix", "dimensions": ["a"], "prices": []}, "at least one row"),
    ({"model": "matrix", "dimensions": ["a", "b"],
      "prices": [{"match": {"a": "x"}, "unit_price": 1}]},
     r"prices\[0\].match must give a string for each of \['a', 'b'\]"),
    ({"model": "matrix", "dimensions": ["a"], "prices": [{"match": {"c": "x"}, "unit_price": 1}]},
     r"prices\[0\].match has unknown field\(s\) \['c'\]"),
    ({"model": "matrix", "dimensions": ["a"], "prices": [{"match": {"a": "x"}, "unit_price": 1},
                                                         {"match": {"a": "x"}, "unit_price": 2}]},
     r"prices\[1\].match repeats an earlier row"),
    ({"model": "matrix", "dimensions": ["a"], "prices": [{"match": {"a": "x"}}]},
     r"prices\[0\].unit_price is required"),
])
def test_invalid_charges_are_explained(d, message):
    with pytest.raises(PricingError, match=message):
        parse_charge(d)


def test_floats_are_refused_naming_the_field():
    message = r"graduated charge: tiers\[1\].unit_price is the float 0.1; write amounts as strings"
    with pytest.raises(TypeError, match=message):
        parse_charge({"model": "graduated", "tiers": [{"up_to": 1, "unit_price": 1},
                                                      {"up_to": None, "unit_price": 0.1}]})
    assert price({"model": "per_unit", "unit_price": D("0.1")}, "1") == D("0.1")


# --- properties ------------------------------------------------------------------------------

quantities = st.decimals(min_value=0, max_value=10_000, places=6,
                         allow_nan=False, allow_infinity=False)
amounts = st.decimals(min_value=0, max_value=1000, places=4,
                      allow_nan=False, allow_infinity=False).map(str)
REGIONS, PLANS = ("eu", "us", "ap"), ("gold", "free")


@st.composite
def tiers(draw, fields):
    steps = draw(st.lists(st.decimals(min_value="0.000001", max_value=500, places=6), max_size=4))
    bounds = [str(b) for b in itertools.accumulate(steps)] + [None]
    return [{"up_to": b, **{f: draw(amounts) for f in fields}} for b in bounds]


@st.composite
def matrices(draw):
    """Either a row for every group, or some rows plus a default, so every event is priceable."""
    groups = list(itertools.product(REGIONS, PLANS))
    if draw(st.booleans()):
        rows, default = {g: draw(amounts) for g in groups}, draw(st.none() | amounts)
    else:
        rows, default = draw(st.dictionaries(st.sampled_from(groups), amounts)), draw(amounts)
    return {"model": "matrix", "dimensions": ["region", "plan"], "default_unit_price": default,
            "prices": [{"match": {"region": r, "plan": p}, "unit_price": u}
                       for (r, p), u in rows.items()]}


charges = st.one_of(
    st.builds(lambda a: {"model": "flat", "amount": a}, amounts),
    st.builds(lambda a: {"model": "per_unit", "unit_price": a}, amounts),
    st.builds(lambda t: {"model": "graduated", "tiers": t}, tiers(("unit_price", "flat_fee"))),
    st.builds(lambda t: {"model": "volume", "tiers": t}, tiers(("unit_price", "flat_fee"))),
    st.builds(lambda t: {"model": "stairstep", "tiers": t}, tiers(("price",))),
    st.builds(lambda size, p, free: {"model": "package", "package_size": size, "package_price": p,
                                     "free_units": free},
              st.decimals(min_value="0.001", max_value=100, places=3).map(str), amounts, amounts),
    st.builds(lambda rate, fee, low, high: {"model": "percentage", "rate": rate, "fixed_fee": fee,
                                            "min_per_event": low, "max_per_event": high},
              amounts, amounts, st.none() | st.just("1"), st.none() | st.just("50")),
    matrices(),
)
events = st.lists(st.tuples(quantities, st.fixed_dictionaries(
    {"region": st.sampled_from(REGIONS), "plan": st.sampled_from(PLANS)})), max_size=30)

# Volume and stairstep legitimately refund when the total enters a cheaper tier.
MONOTONE = {"flat", "per_unit", "graduated", "package", "percentage", "matrix"}


@given(charges, events)
def test_marginals_add_up_to_the_period_price(d, evs):
    charge = parse_charge(d)
    total, marginals = price_sequence(charge, evs)
    if d["model"] == "percentage":
        expected = sum((event_fee(charge, q) for q, _ in evs), D(0))
    else:
        finals: dict[tuple, tuple[D, dict]] = {}
        for q, dims in evs:
            key = (dims["region"], dims["plan"]) if d["model"] == "matrix" else ()
            finals[key] = (finals.get(key, (D(0), dims))[0] + q, dims)
        expected = sum((period_price(charge, q, dims) for q, dims in finals.values()), D(0))
    assert sum(marginals, D(0)) == total == expected
    assert len(marginals) == len(evs)
    if d["model"] in MONOTONE:
        assert all(m >= 0 for m in marginals)


def naive(d: dict, q: D) -> D:
    """The textbook definitions, tier by tier, to check the precomputed bisect versions."""
    if q == 0:
        return D(0)
    tiers = [(D("Infinity") if t["up_to"] is None else D(t["up_to"]), t) for t in d["tiers"]]
    if d["model"] == "graduated":
        total, below = D(0), D(0)
        for up_to, t in tiers:
            if q > below:
                total += (min(q, up_to) - below) * D(t["unit_price"]) + D(t["flat_fee"])
            below = up_to
        return total
    up_to, t = next((up_to, t) for up_to, t in tiers if q <= up_to)
    if d["model"] == "volume":
        return q * D(t["unit_price"]) + D(t["flat_fee"])
    return D(t["price"])


@given(st.one_of(
    st.builds(lambda t: {"model": "graduated", "tiers": t}, tiers(("unit_price", "flat_fee"))),
    st.builds(lambda t: {"model": "volume", "tiers": t}, tiers(("unit_price", "flat_fee"))),
    st.builds(lambda t: {"model": "stairstep", "tiers": t}, tiers(("price",))),
), st.data())
def test_tiered_models_match_their_definitions(d, data):
    bounds = [D(t["up_to"]) for t in d["tiers"] if t["up_to"] is not None]
    q = data.draw(quantities | st.sampled_from(bounds or [D(0)])
                  | st.sampled_from([b + D("0.000001") for b in bounds] or [D(1)]))
    assert price(d, q) == naive(d, q)
