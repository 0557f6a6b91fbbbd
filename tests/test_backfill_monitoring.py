"""Backfilled history is monitored as if it had arrived on time (operators/anomaly.py,
operators/quota_pacing.py): behind the customer's clock on its own series, in front of it as
part of the customer's series, and counted in its own period by quota pacing."""

from __future__ import annotations

import dataclasses
import pickle
from datetime import UTC, datetime
from decimal import Decimal

import orjson
from test_anomaly import T0, hour_id, hourly, observe_all, steady

from operators.anomaly import HOUR_US, MAX_BACKFILL_SERIES, CustomerMonitor, Usage, UsageLine, parse_enriched
from operators.quota_pacing import Quota, QuotaPacing
from operators.timestamp_gate import to_us


def as_backfill(events: list[Usage], backfill: str, offset: int = 10_000) -> list[Usage]:
    return [dataclasses.replace(u, backfill=backfill, raw=(u.raw[0], u.raw[1], u.raw[2] + offset))
            for u in events]


def spiky(hours: int, at: int) -> list[int]:
    values = steady(hours, seed=7)
    values[at] *= 5
    return values


def test_history_behind_the_customers_clock_is_judged_on_its_own_series():
    live = hourly(steady(48, seed=3), start_us=T0 + 100 * HOUR_US)
    history = hourly(spiky(48, at=30))  # hours 0-47: all before the live clock
    on_time = observe_all(history)  # what the history would have raised, had it arrived on time
    assert [(a.kind, a.window_id) for a in on_time] == [("spike", hour_id(30))]

    monitor = CustomerMonitor()
    live_alerts = observe_all(live, monitor)
    found = observe_all(as_backfill(history, "bf_1"), monitor)
    assert found == [dataclasses.replace(a, details={**a.details, "backfill": "bf_1"}) for a in on_time]
    # the customer's own series goes on as if nothing happened
    assert observe_all(live) == live_alerts
    later = hourly(steady(30, seed=4), start_us=T0 + 149 * HOUR_US)
    assert observe_all(later, monitor) == observe_all(later, _after(live))


def _after(events: list[Usage]) -> CustomerMonitor:
    monitor = CustomerMonitor()
    observe_all(events, monitor)
    return monitor


def test_history_the_clock_has_not_passed_joins_the_customers_series():
    """A collector outage, backfilled before traffic resumes: the gap is filled, so the hours it
    covers are judged with their real usage (no dip), as if they had arrived on time."""
    values = steady(90, seed=5)
    whole = hourly(values)
    before, gap, after = whole[:40], whole[40:60], whole[60:]
    monitor = CustomerMonitor()
    found = observe_all(before + as_backfill(gap, "bf_2") + after, monitor)
    assert found == observe_all(whole) == []
    assert monitor.backfills == {}  # no series of its own: it was on time for the customer's

    silent = observe_all(before + after)  # without the backfill the outage is a dip
    assert [a.kind for a in silent] == ["dip"]


def test_a_customer_keeps_the_series_of_its_latest_backfills_and_old_state_loads():
    monitor = _after(hourly(steady(30), start_us=T0 + 500 * HOUR_US))
    for n in range(MAX_BACKFILL_SERIES + 2):
        history = hourly(steady(5, seed=n), start_us=T0 + n * 10 * HOUR_US)
        observe_all(as_backfill(history, f"bf_{n}"), monitor)
    assert list(monitor.backfills) == [f"bf_{n}" for n in range(2, MAX_BACKFILL_SERIES + 2)]

    del monitor.backfills  # a snapshot from before backfills were monitored
    assert pickle.loads(pickle.dumps(monitor)).backfills == {}


def test_the_backfill_is_read_from_the_enriched_messages_provenance():
    message = {"status": "accepted", "event": {"tenantid": "acme", "time": "2026-11-02T10:00:00Z"},
               "provenance": {"raw_topic_id": "t", "raw_partition": 3, "raw_offset": 9, "backfill": "bf_9"},
               "billing": {"customer": "cust-1", "subscription": "sub-1", "period": "2026-11", "lines": [
                   {"metric": "api_calls", "group": {}, "quantity": "1", "total_after": "1"}]}}
    assert parse_enriched(orjson.dumps(message)).backfill == "bf_9"
    del message["provenance"]["backfill"]
    assert parse_enriched(orjson.dumps(message)).backfill is None


def test_quota_pacing_counts_backfilled_usage_in_its_own_period():
    nov, dec = to_us(datetime(2026, 11, 1, tzinfo=UTC)), to_us(datetime(2026, 12, 1, tzinfo=UTC))
    quotas = {"api_calls": Quota(Decimal(10), extrapolate=True)}

    def call(at_us: int, period: str, total: int, backfill: str | None = None) -> Usage:
        return Usage("acme", "cust-2", "sub-2", period, at_us, ("t", 0, total), (
            UsageLine("api_calls", "{}", Decimal(1), Decimal(total)),), backfill)

    pacing = QuotaPacing()
    live = [a for k in range(1, 4)
            for a in pacing.observe(call(dec + 10 * k * HOUR_US, "2026-12", k), quotas)]
    assert live == []  # 3 of 10 in December, too early to project
    history = [a for k in range(1, 13)
               for a in pacing.observe(call(nov + 20 * k * HOUR_US, "2026-11", k, "bf_1"), quotas)]
    # November was over when its history arrived: it is judged whole, so projected is used
    assert sorted((a.kind, a.window_id, a.threshold, a.details["used"], a.details["projected"])
                  for a in history) == [
        (kind, "2026-11", pct, used, f"{used}.00") for kind in ("quota_actual", "quota_projected")
        for pct, used in (("100", "10"), ("120", "12"), ("80", "8"))]
    assert [a.event_us for a in history if a.threshold == "80"] == [nov + 160 * HOUR_US] * 2
