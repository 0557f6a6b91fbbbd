"""Usage monitors on accepted events: the hourly BillableUnitAnomalyDetector and the weekly drop
detector, plus what every monitor shares (the Usage it reads, the Alert it emits, repeat drops).

Usage of a metric in an hour = the sum of the quantities of that metric's lines whose event time
falls in the hour (for a `count` metric that is the event count; for `max`/`latest` metrics it is
the sum of the reported values, a measure of activity). Hours without events count as zero.

Clock. Every series runs on its customer's own event time: the watermark is the latest event
time seen for the (tenant, customer) minus ALLOWED_LATENESS, and an hour closes once the
watermark passes its end. One customer's events come from one raw partition in order, so a
partition that lags behind the others never makes its customers' events late; nothing here reads
the wall clock, so replaying the same events gives the same alerts. An event older than the
watermark allows still counts in the ledger; it just does not reopen a closed hour. A customer
that goes completely silent closes no hours until its next event, whose clock then closes the
silent hours as zeros (and they fire as a dip). Events can only be late this way when they arrive
out of order by more than the lateness: an hour is judged an hour after it ends, at the earliest.

Baseline of an hour: the series' trailing closed hours, at most HISTORY_HOURS (7 x 24).
* from MIN_HISTORY_HOURS (18) until the window is full: mean and sample standard deviation of
  all of it ("flat"). A daily cycle inflates that sigma, so a normal cycle does not fire; spikes
  well above the day's range do.
* with the full 7 days ("seasonal"): the expected value is the mean of the 7 like hours of the
  day (same UTC hour on each of the last 7 days), and sigma is the pooled standard deviation of
  every hour around its own hour-of-day mean (168 values, 24 means estimated). So a normal daily
  cycle is not an anomaly, and a night-time spike that would be normal at noon is. A weekly
  cycle (quiet weekends) is not modelled: it is absorbed into sigma.
* sigma is never below max(1, sqrt(expected), 10% of expected): a perfectly regular series
  would otherwise fire on any wobble; sqrt is the noise of a count, and with the 10% floor a
  deviation under 20% of the expected value never fires.
An hour fires when |observed - expected| > 2 sigma: a spike above, a dip below. An anomalous
hour opens an episode that lasts while the following hours stay more than 1 sigma off the same
way; it fires once, at its first hour, so an outage or a step change raises one alert rather
than one per hour until the baseline adapts (the 1-sigma hysteresis keeps an outage hovering
around 2 sigma from firing again and again). Anomalous hours stay in the history, so a lasting
level shift becomes the new normal; but the hour that fires enters the history clipped to the
2-sigma band, or one outlier among the few like hours would make them look anomalous all week.

Weekly drop: weeks are ISO weeks (Monday 00:00 UTC); when a week's last hour closes, its total
is compared with the previous week's, and the week fires when it is 50% or more below it. Both
weeks must be full: the series must have existed since the start of the previous week.

A series idle for IDLE_RESTART_HOURS (14 days, long enough for the dip and the weekly drop of the
silence to fire) starts over at its next usage: a baseline that old says nothing, and it bounds
the hours one event can close.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

import orjson

from operators.schema_gate import SchemaError, parse_time

HOUR_US = 3_600_000_000
ALLOWED_LATENESS_US = HOUR_US
HISTORY_HOURS = 7 * 24
MIN_HISTORY_HOURS = 18
SEASONAL_HOURS = 3 * 24  # from 3 days on, every hour of the day has 3 like hours to compare with
Z_THRESHOLD = 2.0
EPISODE_END_Z = 1.0
SIGMA_FLOOR_SHARE = 0.10
WEEK_HOURS = 7 * 24
WEEK0_HOUR = 4 * 24  # 1970-01-05, the first Monday of the Unix epoch: weeks start on Mondays
WEEKLY_DROP_PERCENT = 50
IDLE_RESTART_HOURS = 2 * WEEK_HOURS

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ZERO = Decimal(0)
_log = logging.getLogger(__name__)


# --- what the monitors read and emit ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class UsageLine:
    metric: str
    group: str  # the line's dimensions as canonical JSON: running totals are kept per group
    quantity: Decimal  # the event's own contribution
    total_after: Decimal  # the group's running total in the period, after this event


@dataclass(frozen=True, slots=True)
class Usage:
    """One accepted event, as the monitors read it from the enriched topic."""

    tenant: str
    customer: str
    subscription: str
    period: str  # YYYY-MM of the event time
    event_us: int
    raw: tuple[str, int, int]  # raw topic id, partition, offset: which raw record it is
    lines: tuple[UsageLine, ...]  # empty for an unmetered event, which still moves the clocks


def parse_enriched(value: bytes) -> Usage | None:
    """An enriched-topic message (sinks/kafka.py `routed_message`) as Usage. A message the
    monitors cannot read is logged and skipped: one bad message must not stop monitoring."""
    try:
        body = orjson.loads(value)
        billing = body.get("billing")
        if body.get("status") != "accepted" or billing is None:
            return None
        event, prov = body["event"], body["provenance"]
        lines = tuple(
            UsageLine(x["metric"], orjson.dumps(x["group"], option=orjson.OPT_SORT_KEYS).decode(),
                      Decimal(x["quantity"]), Decimal(x["total_after"]))
            for x in billing["lines"])
        return Usage(event["tenantid"], billing["customer"], billing["subscription"], billing["period"],
                     parse_time(event["time"]),
                     (prov["raw_topic_id"], int(prov["raw_partition"]), int(prov["raw_offset"])), lines)
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError, InvalidOperation,
            SchemaError) as exc:
        _log.warning("skipping an enriched message the monitors cannot read: %r", exc)
        return None


class FirstDelivery:
    """Drops repeats of enriched messages (after a crash the metering flow produces the epochs
    since its last snapshot again), for one customer's events.

    The metering flow rates a subscription's events in the order of their raw partition, so its
    accepted records reach the enriched topic in raw offset order; a message whose offset is not
    above the highest seen for its (subscription, raw topic id, raw partition) is a repeat. That
    is exact with three integers per subscription instead of a set of every reference seen.
    """

    def __init__(self) -> None:
        self.highest: dict[tuple[str, str, int], int] = {}

    def first(self, u: Usage) -> bool:
        topic_id, partition, offset = u.raw
        key = (u.subscription, topic_id, partition)
        if self.highest.get(key, -1) >= offset:
            return False
        self.highest[key] = offset
        return True


@dataclass(frozen=True)
class Alert:
    """What every monitor emits. `key` is deterministic: the same condition on the same window
    always has the same key, so the sinks can drop repeats after a replay."""

    kind: str  # spike | dip | weekly_drop | quota_projected | quota_actual
    tenant: str
    customer: str
    subscription: str  # quota alerts only ('' otherwise): a quota belongs to a subscription
    metric: str
    window_id: str  # 2026-11-30T13:00Z (hour), 2026-W48 (ISO week), 2026-11 (billing period)
    threshold: str  # 2 (sigma), 50 (% drop), 80 | 100 | 120 (% of the quota's limit)
    window_start_us: int
    window_end_us: int
    event_us: int  # event time at which it became true: the window's end, or the crossing event
    details: dict[str, str]

    @property
    def key(self) -> tuple[str, str, str, str, str, str, str]:
        return (self.kind, self.tenant, self.customer, self.subscription, self.metric, self.window_id,
                self.threshold)


def utc(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


# --- the detectors ------------------------------------------------------------------------------

def baseline(history: list[float] | deque[float], hour: int) -> tuple[float, float, str] | None:
    """(expected, sigma before its floor, mode) of `hour` from the closed hours just before it
    (oldest first), or None while the history is too short.

    The expected value is itself the mean of k noisy hours, so the deviation of a new hour from
    it has variance sigma^2 (1 + 1/k): that is the sigma an hour is judged by.
    """
    n = len(history)
    if n < MIN_HISTORY_HOURS:
        return None
    values = list(history)
    if n < SEASONAL_HOURS:
        mean = math.fsum(values) / n
        variance = math.fsum((x - mean) ** 2 for x in values) / (n - 1)
        return mean, math.sqrt(variance * (1 + 1 / n)), "flat"
    squares = []
    for r in range(24):  # values[r::24] are one hour of the day; values[n % 24::24] is this hour's
        like = values[r::24]
        mean = math.fsum(like) / len(like)
        squares += [(x - mean) ** 2 for x in like]
    like = values[n % 24::24]
    variance = math.fsum(squares) / (n - 24)  # 24 means estimated
    return math.fsum(like) / len(like), math.sqrt(variance * (1 + 1 / len(like))), "seasonal"


def _hour_id(hour: int) -> str:
    return utc(hour * HOUR_US).strftime("%Y-%m-%dT%H:00Z")


def _week_id(week: int) -> str:
    year, number, _ = utc((WEEK0_HOUR + week * WEEK_HOURS) * HOUR_US).isocalendar()
    return f"{year}-W{number:02d}"


@dataclass
class _Finding:
    kind: str
    window_id: str
    threshold: str
    start_hour: int
    hours: int
    details: dict[str, str]


@dataclass
class MetricSeries:
    """One (tenant, customer, metric) hourly series."""

    open: dict[int, Decimal] = field(default_factory=dict)  # hour -> usage, hours not closed yet
    next_hour: int | None = None  # the first hour not closed; None until the series (re)starts
    first_hour: int | None = None  # where the current history starts
    last_active: int | None = None  # the latest hour with a line
    history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_HOURS))
    weeks: dict[int, Decimal] = field(default_factory=dict)  # week -> total of its closed hours
    episode: str | None = None  # "spike" or "dip" while consecutive hours deviate that way

    def add(self, hour: int, quantity: Decimal) -> None:
        self.open[hour] = self.open.get(hour, _ZERO) + quantity
        if self.last_active is None or hour > self.last_active:
            self.last_active = hour

    def close_until(self, horizon: int) -> list[_Finding]:
        """Close every hour before `horizon`, oldest first."""
        if self.next_hour is None:
            if not self.open:
                return []
            self.next_hour = self.first_hour = min(self.open)
        found: list[_Finding] = []
        while self.next_hour < horizon:
            if self.next_hour - self.last_active > IDLE_RESTART_HOURS:
                self._restart()
                break
            found += self._close(self.next_hour)
            self.next_hour += 1
        return found

    def _restart(self) -> None:
        self.next_hour = self.first_hour = self.episode = None
        self.history.clear()
        self.weeks.clear()

    def _close(self, hour: int) -> list[_Finding]:
        usage = self.open.pop(hour, _ZERO)
        found, kept = self._judge_hour(hour, usage)
        self.history.append(kept)
        week, hour_in_week = divmod(hour - WEEK0_HOUR, WEEK_HOURS)
        self.weeks[week] = self.weeks.get(week, _ZERO) + usage
        if hour_in_week == WEEK_HOURS - 1:  # the week's last hour: the week is complete
            found += self._judge_week(week)
            self.weeks = {week: self.weeks[week]}
        return found

    def _judge_hour(self, hour: int, usage: Decimal) -> tuple[list[_Finding], float]:
        """What the hour fires, and the value it enters the history with."""
        observed = float(usage)
        base = baseline(self.history, hour)
        if base is None:
            return [], observed
        expected, measured, mode = base
        sigma = max(measured, 1.0, math.sqrt(max(expected, 0.0)), SIGMA_FLOOR_SHARE * abs(expected))
        z = (observed - expected) / sigma
        if (self.episode == "spike" and z > EPISODE_END_Z) or (self.episode == "dip" and z < -EPISODE_END_Z):
            return [], observed  # the episode goes on
        self.episode = None if abs(z) <= Z_THRESHOLD else ("spike" if z > 0 else "dip")
        if self.episode is None:
            return [], observed
        finding = _Finding(self.episode, _hour_id(hour), f"{Z_THRESHOLD:g}", hour, 1, {
            "observed": str(usage), "baseline": f"{expected:.4f}", "sigma": f"{sigma:.4f}",
            "sigma_measured": f"{measured:.4f}", "z": f"{z:.3f}", "baseline_mode": mode,
            "history_hours": str(len(self.history))})
        return [finding], expected + math.copysign(Z_THRESHOLD * sigma, z)

    def _judge_week(self, week: int) -> list[_Finding]:
        previous = self.weeks.get(week - 1)
        start = WEEK0_HOUR + week * WEEK_HOURS
        full = self.first_hour <= start - WEEK_HOURS
        if not full or previous is None or previous <= 0:
            return []
        observed = self.weeks[week]
        if observed * 100 > previous * (100 - WEEKLY_DROP_PERCENT):
            return []
        change = ((observed - previous) * 100 / previous).quantize(Decimal("0.1"))
        return [_Finding("weekly_drop", _week_id(week), str(WEEKLY_DROP_PERCENT), start, WEEK_HOURS, {
            "observed": str(observed), "previous_week": str(previous), "change_percent": str(change)})]


class CustomerMonitor:
    """BillableUnitAnomalyDetector and weekly drop detector for every metric of one
    (tenant, customer), on the customer's event-time clock. Plain state: picklable."""

    def __init__(self) -> None:
        self.clock_us: int | None = None  # the latest event time seen
        self.series: dict[str, MetricSeries] = {}

    @property
    def horizon(self) -> int | None:
        """Hours before this one are closed."""
        return None if self.clock_us is None else (self.clock_us - ALLOWED_LATENESS_US) // HOUR_US

    def observe(self, u: Usage) -> list[Alert]:
        hour = u.event_us // HOUR_US
        late = self.clock_us is not None and hour < self.horizon  # its hour is closed already
        alerts = []
        if self.clock_us is None or u.event_us > self.clock_us:
            # Close before adding: the event's own hour is never among the hours its time closes,
            # and a series' idleness must be judged without this event.
            self.clock_us = u.event_us
            for metric, s in self.series.items():
                for f in s.close_until(self.horizon):
                    start_us = f.start_hour * HOUR_US
                    end_us = start_us + f.hours * HOUR_US
                    alerts.append(Alert(f.kind, u.tenant, u.customer, "", metric, f.window_id, f.threshold,
                                        start_us, end_us, end_us, f.details))
        if not late:  # a late event is still in the ledger; it just does not reopen its hour
            for line in u.lines:
                self.series.setdefault(line.metric, MetricSeries()).add(hour, line.quantity)
        return alerts
