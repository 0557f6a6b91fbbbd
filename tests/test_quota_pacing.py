"""Quota pacing as plain code: which threshold fires at which event, once per period."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from decimal import Decimal

from operators.anomaly import HOUR_US, Usage, UsageLine
from operators.quota_pacing import Quota, QuotaPacing
from operators.timestamp_gate import to_us

NOV = to_us(datetime(2026, 11, 1, tzinfo=UTC))  # a 30-day period: 720 hours, 5% is 36 hours
DEC = to_us(datetime(2026, 12, 1, tzinfo=UTC))
QUOTAS = {"api_calls": Quota(Decimal(1000), extrapolate=True)}


def usage(at_us: int, *lines: tuple[str, int] | tuple[str, int, str], sub: str = "sub-1",
          offset: int = 0) -> Usage:
    period = "2026-11" if at_us < DEC else "2026-12"
    lines_ = tuple(UsageLine(m, g[0] if g else "{}", Decimal(1), Decimal(total)) for m, total, *g in lines)
    return Usage("acme", "cust-1", sub, period, at_us, ("raw-id", 0, offset), lines_)


def fired(pacing: QuotaPacing, events: list[Usage], quotas=QUOTAS) -> list[tuple[int, str, str]]:
    """(index of the event, kind, threshold) of every alert."""
    return [(i, a.kind, a.threshold) for i, u in enumerate(events) for a in pacing.observe(u, quotas)]


def every_six_hours(step: int, count: int = 119) -> list[Usage]:
    """Event k (k = 1..count) at NOV + 6k hours brings the total to step * k."""
    return [usage(NOV + 6 * k * HOUR_US, ("api_calls", step * k), offset=k) for k in range(1, count + 1)]


def test_thresholds_fire_once_each_at_the_right_event_and_projections_not_before_5_percent():
    # +12 every 6 hours: on pace for 12 * 120 = 1440 (144%) from the start; 5% is 36 h (k = 6)
    events = every_six_hours(12)
    alerts = fired(QuotaPacing(), events)
    k = {e: i + 1 for i, e in enumerate(events)}.__getitem__  # event index -> k
    assert [(k(events[i]), kind, t) for i, kind, t in alerts] == [
        (6, "quota_projected", "80"), (6, "quota_projected", "100"), (6, "quota_projected", "120"),
        (67, "quota_actual", "80"),    # 804 >= 800
        (84, "quota_actual", "100"),   # 1008 >= 1000
        (100, "quota_actual", "120"),  # 1200 >= 1200
    ]


def test_alert_content():
    pacing = QuotaPacing()
    [a] = [a for u in every_six_hours(12, 67)[-1:] for a in pacing.observe(u, QUOTAS)
           if a.kind == "quota_actual"]
    assert a.key == ("quota_actual", "acme", "cust-1", "sub-1", "api_calls", "2026-11", "80")
    assert a.window_start_us == NOV and a.window_end_us == DEC and a.event_us == NOV + 402 * HOUR_US
    assert a.details == {"limit": "1000", "used": "804", "projected": "1440.00",
                         "elapsed_percent": "55.83", "raw": "raw-id/0/67"}


def test_a_slower_pace_projects_later_thresholds_later():
    # +6 every 6 hours: on pace for 720 (72%) -- no projection fires until usage accelerates
    events = every_six_hours(6, 60)  # events 0..59; the last at 360 h (half the period): 360 used
    events.append(usage(NOV + 361 * HOUR_US, ("api_calls", 400), offset=61))  # 400 / 0.5014 = 797.8
    events.append(usage(NOV + 362 * HOUR_US, ("api_calls", 402), offset=62))  # 402 / 0.5028 = 799.6
    events.append(usage(NOV + 363 * HOUR_US, ("api_calls", 404), offset=63))  # 404 / 0.5042 = 801.3
    events.append(usage(NOV + 364 * HOUR_US, ("api_calls", 510), offset=64))  # 1008.8
    assert fired(QuotaPacing(), events) == [(62, "quota_projected", "80"), (63, "quota_projected", "100")]


def test_actual_usage_fires_even_before_5_percent_projections_wait():
    pacing = QuotaPacing()
    burst = usage(NOV + HOUR_US, ("api_calls", 1300), offset=1)
    assert fired(pacing, [burst]) == [(0, "quota_actual", "80"), (0, "quota_actual", "100"),
                                      (0, "quota_actual", "120")]
    almost = usage(NOV + 36 * HOUR_US - 1, ("api_calls", 1301), offset=2)
    assert fired(pacing, [almost]) == []
    gate = usage(NOV + 36 * HOUR_US, ("api_calls", 1302), offset=3)
    assert [kind for _, kind, _ in fired(pacing, [gate])] == ["quota_projected"] * 3


def test_the_clock_is_the_subscriptions_latest_event_whatever_its_metric():
    pacing = QuotaPacing()
    assert fired(pacing, [usage(NOV + HOUR_US, ("api_calls", 100), offset=1)]) == []
    # a tokens event at 5% opens the gate for api_calls: 100 / 5% = 2000 projected
    tokens = usage(NOV + 36 * HOUR_US, ("tokens", 5), offset=2)
    assert [(kind, t) for _, kind, t in fired(pacing, [tokens])] == [
        ("quota_projected", "80"), ("quota_projected", "100"), ("quota_projected", "120")]
    # an older event does not move the clock back
    assert fired(pacing, [usage(NOV + 2 * HOUR_US, ("api_calls", 101), offset=3)]) == []


def test_used_is_the_sum_of_each_groups_latest_running_total():
    pacing = QuotaPacing()
    quotas = {"tokens": Quota(Decimal(1000), extrapolate=True)}
    events = [usage(NOV + 400 * HOUR_US, ("tokens", 500, '{"model":"a"}'), offset=1),
              usage(NOV + 401 * HOUR_US, ("tokens", 200, '{"model":"b"}'), offset=2),
              usage(NOV + 402 * HOUR_US, ("tokens", 600, '{"model":"a"}'), offset=3)]  # 600 + 200
    assert [(i, kind, t) for i, kind, t in fired(pacing, events, quotas) if kind == "quota_actual"] == [
        (2, "quota_actual", "80")]


def test_a_level_metric_is_never_extrapolated():
    quotas = {"storage_gb": Quota(Decimal(100), extrapolate=False)}
    events = [usage(NOV + 40 * HOUR_US, ("storage_gb", 50), offset=1),
              usage(NOV + 41 * HOUR_US, ("storage_gb", 85), offset=2)]
    assert fired(QuotaPacing(), events, quotas) == [(1, "quota_actual", "80")]


def test_each_threshold_fires_once_per_period_and_again_in_the_next():
    pacing = QuotaPacing()
    nov = [usage(NOV + 600 * HOUR_US, ("api_calls", 900), offset=1),
           usage(NOV + 601 * HOUR_US, ("api_calls", 950), offset=2)]
    assert fired(pacing, nov) == [(0, "quota_actual", "80"), (0, "quota_projected", "80"),
                                  (0, "quota_projected", "100")]
    # December starts from zero (the running total is per period)
    dec = [usage(DEC + 100 * HOUR_US, ("api_calls", 850), offset=3)]
    assert [(kind, t) for _, kind, t in fired(pacing, dec)] == [
        ("quota_actual", "80"), ("quota_projected", "80"), ("quota_projected", "100"),
        ("quota_projected", "120")]
    # a November event late by a few hours still counts for November, and does not refire
    assert fired(pacing, [usage(DEC - HOUR_US, ("api_calls", 960), offset=4)]) == []


def test_a_replay_from_a_snapshot_fires_nothing_twice_and_the_same_as_straight():
    events = every_six_hours(12)
    straight = fired(QuotaPacing(), events)
    pacing = QuotaPacing()
    first = fired(pacing, events[:70])
    restored = pickle.loads(pickle.dumps(pacing))
    rest = [(i + 70, kind, t) for i, kind, t in fired(restored, events[70:])]
    assert first + rest == straight
    assert fired(restored, events) == []  # the same events again: nothing


def test_no_quota_no_alert_and_subscriptions_are_separate():
    pacing = QuotaPacing()
    assert fired(pacing, [usage(NOV + 400 * HOUR_US, ("api_calls", 5000), offset=1)], quotas={}) == []
    other = usage(NOV + 400 * HOUR_US, ("api_calls", 10), sub="sub-2", offset=2)
    assert fired(pacing, [other]) == []
