"""The hourly anomaly detector and the weekly drop detector as plain code, on synthetic series
with a known answer."""

from __future__ import annotations

import math
import pickle
import random
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from operators.anomaly import (
    ALLOWED_LATENESS_US,
    HOUR_US,
    IDLE_RESTART_HOURS,
    MIN_HISTORY_HOURS,
    Alert,
    CustomerMonitor,
    FirstDelivery,
    Usage,
    UsageLine,
    parse_enriched,
)
from operators.timestamp_gate import to_us
from schemas.billing import BillingContext, RevenueLine
from schemas.record import Record, Status
from sinks.outputs import routed_message

T0 = to_us(datetime(2026, 3, 2, tzinfo=UTC))  # a Monday, 00:00 UTC
WEEK = 7 * 24


def usage(at_us: int, quantity: int | Decimal | None, metric: str = "api_calls", offset: int = 0) -> Usage:
    lines = () if quantity is None else (UsageLine(metric, "{}", Decimal(quantity), Decimal(0)),)
    return Usage("acme", "cust-1", "sub-1", "2026-03", at_us, ("raw-id", 0, offset), lines)


def hourly(values: list[int], start_us: int = T0) -> list[Usage]:
    """One event per hour (mid-hour) carrying the hour's usage, then an event without lines whose
    time closes the last hour: exactly the allowed lateness after its end."""
    events = [usage(start_us + h * HOUR_US + HOUR_US // 2, v, offset=h) for h, v in enumerate(values)]
    events.append(usage(start_us + len(values) * HOUR_US + ALLOWED_LATENESS_US, None, offset=len(values)))
    return events


def observe_all(events: list[Usage], monitor: CustomerMonitor | None = None) -> list[Alert]:
    monitor = monitor or CustomerMonitor()
    return [a for u in events for a in monitor.observe(u)]


def hour_id(h: int, start_us: int = T0) -> str:
    return datetime.fromtimestamp((start_us + h * HOUR_US) / 1e6, UTC).strftime("%Y-%m-%dT%H:00Z")


def steady(hours: int, level: int = 1000, noise: float = 0.05, seed: int = 1) -> list[int]:
    rnd = random.Random(seed)
    return [round(level * (1 + rnd.uniform(-noise, noise))) for _ in range(hours)]


def daily_cycle(hours: int, seed: int = 2) -> list[int]:
    """Low at night, high in the afternoon (UTC), +-5% noise."""
    rnd = random.Random(seed)
    return [round(1000 * (1 + 0.8 * math.sin(2 * math.pi * ((h % 24) - 9) / 24))
                  * (1 + rnd.uniform(-0.05, 0.05))) for h in range(hours)]


@pytest.mark.parametrize("spike_hour, mode", [(30, "flat"), (200, "seasonal")])
def test_a_single_spike_in_a_steady_noisy_series_fires_once_at_its_hour(spike_hour, mode):
    values = steady(10 * 24)
    values[spike_hour] = 1600
    alerts = observe_all(hourly(values))
    assert [(a.kind, a.window_id) for a in alerts] == [("spike", hour_id(spike_hour))]
    [a] = alerts
    assert a.metric == "api_calls" and a.customer == "cust-1" and a.threshold == "2"
    assert a.details["observed"] == "1600" and a.details["baseline_mode"] == mode
    assert float(a.details["z"]) > 2
    assert abs(float(a.details["baseline"]) - 1000) < 20
    assert a.window_end_us - a.window_start_us == HOUR_US == a.event_us - a.window_start_us


@pytest.mark.parametrize("outlier", [3000, 100_000])
def test_one_outlier_does_not_make_its_like_hours_fire_all_the_next_week(outlier):
    values = steady(17 * 24)
    values[8 * 24 + 5] = outlier
    assert [(a.kind, a.window_id) for a in observe_all(hourly(values))] == [("spike", hour_id(8 * 24 + 5))]


def test_a_single_dip_fires_once_as_a_dip():
    values = steady(10 * 24)
    values[180] = 300
    assert [(a.kind, a.window_id) for a in observe_all(hourly(values))] == [("dip", hour_id(180))]


def test_a_normal_daily_cycle_over_four_weeks_fires_nothing():
    assert observe_all(hourly(daily_cycle(28 * 24))) == []


def test_a_spike_at_night_that_would_be_normal_in_the_afternoon_fires():
    values = daily_cycle(10 * 24)
    values[8 * 24 + 3] = 1000  # 03:00: normally ~260; the daily mean, and 15:00 is ~1800
    alerts = observe_all(hourly(values))
    assert [(a.kind, a.window_id, a.details["baseline_mode"]) for a in alerts] == [
        ("spike", hour_id(8 * 24 + 3), "seasonal")]


def _poisson(rnd: random.Random, mean: float) -> int:
    """Poisson-distributed counts (Knuth below 30, normal approximation above)."""
    if mean >= 30:
        return max(0, round(rnd.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, rnd.random()
    while p > limit:
        p *= rnd.random()
        k += 1
    return k


@pytest.mark.parametrize("mean, weekends", [(20, False), (100, False), (1000, False), (100, True)])
def test_false_positive_rate_over_a_year_of_random_usage(mean, weekends):
    """Counts with a daily cycle (+-60%) and Poisson noise, optionally weekends at 70%: nothing
    anomalous in there, so every alert is a false positive. At 2 sigma on Gaussian-like noise the
    rate cannot be near zero; this pins it down (printed with -s, reported in the README)."""
    rnd = random.Random(mean)
    hours = 365 * 24
    values = []
    for h in range(hours):
        level = mean * (1 + 0.6 * math.sin(2 * math.pi * ((h % 24) - 9) / 24))
        if weekends and (h // 24) % 7 >= 5:  # T0 is a Monday
            level *= 0.7
        values.append(_poisson(rnd, level))
    alerts = observe_all(hourly(values))
    rate = sum(a.kind in ("spike", "dip") for a in alerts) / (hours - MIN_HISTORY_HOURS)
    print(f"\nfalse positives, mean {mean}/h{', weekends 70%' if weekends else ''}: {rate:.2%} of hours")
    assert rate < 0.05
    assert not [a for a in alerts if a.kind == "weekly_drop"]


@pytest.mark.parametrize("drop, fires", [(60, True), (50, True), (40, False)])
def test_weekly_drop_fires_once_when_a_full_week_is_half_the_previous_or_less(drop, fires):
    before = steady(WEEK, level=1000, noise=0.0)
    after = steady(2 * WEEK, level=1000 * (100 - drop) // 100, noise=0.0)
    alerts = [a for a in observe_all(hourly(before + after)) if a.kind == "weekly_drop"]
    if not fires:
        assert alerts == []
        return
    [a] = alerts
    assert a.window_id == "2026-W11"  # the second week: 2026-03-09
    assert a.window_start_us == T0 + WEEK * HOUR_US and a.window_end_us == T0 + 2 * WEEK * HOUR_US
    assert a.details == {"observed": str(1000 * (100 - drop) // 100 * WEEK),
                         "previous_week": str(1000 * WEEK), "change_percent": f"-{drop}.0"}


def test_weekly_drop_needs_a_full_previous_week():
    # the series starts on a Wednesday: its first week is partial, so the second is not compared
    values = steady(5 * 24, noise=0.0) + steady(WEEK, level=100, noise=0.0)
    assert [a for a in observe_all(hourly(values)) if a.kind == "weekly_drop"] == []


def test_an_outage_is_one_dip_not_one_per_hour():
    values = steady(8 * 24) + [0] * 12 + steady(24, seed=3)
    alerts = observe_all(hourly(values))
    assert [(a.kind, a.window_id) for a in alerts] == [("dip", hour_id(8 * 24))]


def test_nothing_fires_before_the_minimum_history():
    values = steady(MIN_HISTORY_HOURS)
    values[-1] = 5000
    assert observe_all(hourly(values)) == []
    values = steady(MIN_HISTORY_HOURS + 1)
    values[-1] = 5000
    assert [a.window_id for a in observe_all(hourly(values))] == [hour_id(MIN_HISTORY_HOURS)]


def test_a_late_event_does_not_reopen_a_closed_hour_but_one_within_the_lateness_counts():
    monitor = CustomerMonitor()
    assert observe_all(hourly(steady(48))[:-1], monitor) == []
    clock = monitor.clock_us
    # hour 40 closed when the clock passed its end plus the lateness: a big late event is ignored
    late = usage(T0 + 40 * HOUR_US + 10, 50_000, offset=100)
    assert clock - ALLOWED_LATENESS_US >= T0 + 41 * HOUR_US
    assert monitor.observe(late) == []
    # hour 47 is still open (its end plus the lateness is ahead of the clock): it counts
    within = usage(T0 + 47 * HOUR_US + 10, 50_000, offset=101)
    assert monitor.observe(within) == []
    closing = usage(T0 + 48 * HOUR_US + ALLOWED_LATENESS_US, None, offset=102)
    assert [(a.kind, a.window_id) for a in monitor.observe(closing)] == [("spike", hour_id(47))]


def test_windows_close_on_event_time_only_and_the_lateness_is_exact():
    monitor = CustomerMonitor()
    observe_all(hourly(steady(30))[:-1], monitor)
    spike = usage(T0 + 30 * HOUR_US + 5, 9000, offset=200)
    assert monitor.observe(spike) == []
    just_before = usage(T0 + 31 * HOUR_US + ALLOWED_LATENESS_US - 1, 1, offset=201)
    assert monitor.observe(just_before) == []  # the hour ends + lateness not reached: still open
    at = usage(T0 + 31 * HOUR_US + ALLOWED_LATENESS_US, 1, offset=202)
    assert [a.window_id for a in monitor.observe(at)] == [hour_id(30)]


def test_a_series_idle_for_two_weeks_starts_over():
    values = steady(8 * 24)
    monitor = CustomerMonitor()
    alerts = observe_all(hourly(values)[:-1], monitor)
    back = T0 + (8 * 24 + IDLE_RESTART_HOURS + 100) * HOUR_US
    alerts += observe_all(hourly([3000] * 10, start_us=back), monitor)
    # the silence fired once as a dip (its first hour), and as a weekly drop for the week it
    # began in and for the first silent week (each 50% or more below the one before); the return
    # at 3x the old level does not fire: the old baseline was dropped, the new one is too short
    assert [(a.kind, a.window_id) for a in alerts] == [
        ("dip", hour_id(8 * 24)), ("weekly_drop", "2026-W11"), ("weekly_drop", "2026-W12")]


def test_state_survives_a_snapshot_and_a_replay_gives_the_same_alerts():
    values = steady(10 * 24)
    values[100], values[190] = 2500, 10
    events = hourly(values)
    straight = observe_all(events)
    monitor = CustomerMonitor()
    first = observe_all(events[:150], monitor)
    restored = pickle.loads(pickle.dumps(monitor))
    assert first + observe_all(events[150:], restored) == straight
    assert [a.kind for a in straight] == ["spike", "dip"]
    assert observe_all(events) == straight  # from scratch: same alerts, same keys


def test_every_metric_of_a_customer_is_its_own_series_on_the_customer_clock():
    monitor = CustomerMonitor()
    alerts = []
    for h, v in enumerate(steady(60)):
        t = T0 + h * HOUR_US + HOUR_US // 2
        alerts += monitor.observe(usage(t, v, metric="api_calls", offset=2 * h))
        tokens = 100 if h < 40 else 0  # tokens stop: only the customer's api calls move the clock
        alerts += monitor.observe(usage(t + 1, tokens, metric="tokens", offset=2 * h + 1) if tokens
                                  else usage(t + 1, None, offset=2 * h + 1))
    assert [(a.kind, a.metric, a.window_id) for a in alerts] == [("dip", "tokens", hour_id(40))]


def test_first_delivery_drops_repeats_per_subscription_and_raw_partition():
    f = FirstDelivery()
    a, b = usage(T0, 1, offset=5), usage(T0, 1, offset=6)
    other_partition = Usage("acme", "cust-1", "sub-1", "2026-03", T0, ("raw-id", 1, 5), ())
    other_topic = Usage("acme", "cust-1", "sub-1", "2026-03", T0, ("raw-id-2", 0, 1), ())
    assert [f.first(u) for u in (a, b, a, b, other_partition, other_topic, other_partition)] == [
        True, True, False, False, True, True, False]


def test_parse_enriched_reads_what_the_metering_flow_writes():
    event = {"specversion": "1.0", "id": "e1", "source": "s", "type": "llm.completion", "subject": "cust-1",
             "time": "2026-03-02T10:15:00.5+01:00", "tenantid": "acme", "data": {"tokens": 7}}
    rec = Record("aforo.events.raw", "topic-id", 3, 42, 0, orjson.dumps(event), event=event,
                 status=Status.ACCEPTED)
    rec.billing = BillingContext("cust-1", "sub-1", "pro", 1, "USD", "2026-03")
    rec.lines = [RevenueLine("tokens", {"model": "m"}, Decimal("7"), Decimal("107"), Decimal("0.1"),
                             Decimal("0"), 2, Decimal("107"), Decimal("0.1"), Decimal("0"))]
    u = parse_enriched(routed_message(rec))
    assert u == Usage("acme", "cust-1", "sub-1", "2026-03", T0 + 9 * HOUR_US + 15 * 60_000_000 + 500_000,
                      ("topic-id", 3, 42), (UsageLine("tokens", '{"model":"m"}', Decimal(7), Decimal(107)),))
    assert parse_enriched(b"not json") is None
    rec.lines = []
    assert parse_enriched(routed_message(rec)) is None  # unmetered: no usage, and out of order
