"""Usage monitors on accepted events: the hourly BillableUnitAnomalyDetector and the weekly drop
detector, plus what every monitor shares (the Usage it reads, the Alert it emits, repeat drops).

Usage of a metric in an hour = the sum of the quantities of that metric's lines whose event time
falls in the hour (for a `count` metric that is the event count; for `max`/`latest` metrics it is
the sum of the reported values, a measure of activity). Hours without events count as zero.

Clock. Every series runs on its customer's own event time: the watermark is the latest event
time seen for the (tenant, customer) minus ALLOWED_LATENESS, and an hour closes once the
watermark passes its end. A customer's events come from one raw partition, and the metering
flow rates each subscription's in that partition's order, so they reach the enriched topic in
order and a partition that lags behind the others never makes its customers' events late (a
customer with two subscriptions active at once can see them interleaved within one metering
batch: the lateness absorbs that). Nothing here reads the wall clock, so replaying the same
events gives the same alerts. An event older than the
watermark allows still counts in the ledger; it just does not reopen a closed hour. A customer
that goes completely silent closes no hours until its next event, whose clock then closes the
silent hours as zeros (and they fire as a dip). Events can only be late this way when they arrive
out of order by more than the lateness: an hour is judged an hour after it ends, at the earliest.

Baseline of an hour: the series' trailing closed hours, at most HISTORY_HOURS (7 x 24).
* from MIN_HISTORY_HOURS (18) until the window is full: mean and sample standard deviation of
  all of it ("flat"). A daily cycle inflates that sigma, so a smooth cycle does not fire; spikes
  well above the day's range do. So does, in this first week, a short peak that recurs daily
  (a nightly batch job, say): it fires once a day until the seasonal baseline knows it. And in
  the first day, a partial day is the whole baseline: a business-hours customer that starts in
  the evening may fire once the next morning.
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
level shift becomes the new normal. With 7 like hours, one outlier among them cannot make the
others fire: it moves their mean by 1/7 of its excess but inflates sigma more (|z| tends to 1.73
at most); with 5 it could, which is why the seasonal baseline waits for the full week.

Weekly drop: weeks are ISO weeks (Monday 00:00 UTC); when a week's last hour closes, its total
is compared with the previous week's, and the week fires when it is 50% or more below it. Both
weeks must be full: the series must have existed since the start of the previous week.

A series idle for IDLE_RESTART_HOURS (14 days, long enough for the dip and the weekly drop of the
silence to fire) starts over at its next usage: a baseline that old says nothing, and it bounds
the hours one event can close.

Backfills (api/backfill.py) are monitored as if their events had arrived on time. Their events
come in event-time order per customer, and where the customer's clock has not passed them (a
customer with no traffic yet, or one whose traffic stopped while the history was missing) they
simply join the customer's series, like any on-time event. History the customer's clock has
already passed cannot reopen the hours judged without it; instead each backfill runs on its
own series and clock, judged against its own trailing history exactly as the detectors would
have judged it on arrival (from 18 of its hours on: a shorter stretch of history is counted in
the ledger and the quotas but too short to judge). Its alerts name the backfill in their
details; an hour the customer's series already flagged keeps its one alert (same key). A
customer keeps the series of its MAX_BACKFILL_SERIES latest backfills.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

import orjson

from operators.schema_gate import SchemaError, parse_time

HOUR_US = 3_600_000_000
ALLOWED_LATENESS_US = HOUR_US
HISTORY_HOURS = 7 * 24
MIN_HISTORY_HOURS = 18
Z_THRESHOLD = 2.0
EPISODE_END_Z = 1.0
SIGMA_FLOOR_SHARE = 0.10
WEEK_HOURS = 7 * 24
WEEK0_HOUR = 4 * 24  # 1970-01-05, the first Monday of the Unix epoch: weeks start on Mondays
WEEKLY_DROP_PERCENT = 50
IDLE_RESTART_HOURS = 2 * WEEK_HOURS
MAX_BACKFILL_SERIES = 4

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
    lines: tuple[UsageLine, ...]  # one per metric the event feeds
    backfill: str | None = None  # the backfill that admitted it, if one did


def parse_enriched(value: bytes) -> Usage | None:
    """An enriched-topic message (sinks/outputs.py `routed_message`) as Usage, or None for one
    without usage. Unmetered events (no lines) are left out on purpose: the metering flow emits
    them outside their subscription's rating order, so their event times would move the clocks
    out of order (and FirstDelivery relies on that order). A message the monitors cannot read is
    logged and skipped: one bad message must not stop monitoring."""
    try:
        body = orjson.loads(value)
        billing = body.get("billing")
        if body.get("status") != "accepted" or billing is None or not billing["lines"]:
            return None
        event, prov = body["event"], body["provenance"]
        lines = tuple(
            UsageLine(x["metric"], orjson.dumps(x["group"], option=orjson.OPT_SORT_KEYS).decode(),
                      Decimal(x["quantity"]), Decimal(x["total_after"]))
            for x in billing["lines"])
        return Usage(event["tenantid"], billing["customer"], billing["subscription"], billing["period"],
                     parse_time(event["time"]),
                     (prov["raw_topic_id"], int(prov["raw_partition"]), int(prov["raw_offset"])), lines,
                     prov.get("backfill"))
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError, InvalidOperation,
            SchemaError) as exc:
        _log.warning("skipping an enriched message the monitors cannot read: %r", exc)
        return None


class FirstDelivery:
    """Drops repeats of enriched messages (after a crash the metering flow produces the epochs
    since its last snapshot again), for one customer's events.

    The metering flow rates a subscription's events in the order of their raw partition (its
    revenue step is keyed by subscription), so its metered records reach the enriched topic in
    raw offset order, and a replay after a crash produces a stretch of them again in the same
    order: a message whose offset is not above the highest seen for its (subscription, raw topic
    id, raw partition) is a repeat. That is exact with one integer per subscription and
    partition instead of a set of every reference ever seen.
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

class HourlyHistory:
    """A series' closed hours of the last HISTORY_HOURS, kept by hour of the day with each one's
    mean and sum of squared deviations. Closing an hour recomputes the stats of its hour of the
    day only (at most 7 values), so judging an hour costs 24 steps rather than 168: an idle
    series still closes every hour, and a replay closes a month of them per series."""

    def __init__(self) -> None:
        self.like: list[deque[float]] = [deque(maxlen=HISTORY_HOURS // 24) for _ in range(24)]
        self.means = [0.0] * 24
        self.squares = [0.0] * 24  # sum of squared deviations from the mean, per hour of the day
        self.count = 0

    def push(self, hour: int, value: float) -> None:
        """The next closed hour (hours arrive consecutively, so the value a full hour of the
        day drops is the same hour a week earlier)."""
        g = hour % 24
        like = self.like[g]
        self.count += len(like) < like.maxlen
        like.append(value)
        mean = math.fsum(like) / len(like)
        self.means[g], self.squares[g] = mean, math.fsum([(x - mean) ** 2 for x in like])

    def baseline(self, hour: int) -> tuple[float, float, str] | None:
        """(expected, sigma before its floor, mode) of `hour`, the hour after the last one
        pushed, or None while the history is too short.

        The expected value is itself the mean of k noisy hours, so the deviation of a new hour
        from it has variance sigma^2 (1 + 1/k): that is the sigma an hour is judged by.
        """
        n = self.count
        if n < MIN_HISTORY_HOURS:
            return None
        if n < HISTORY_HOURS:  # flat: all hours around their overall mean (ANOVA decomposition)
            counts = [len(like) for like in self.like]
            mean = math.fsum([k * m for k, m in zip(counts, self.means, strict=True)]) / n
            between = math.fsum([k * (m - mean) ** 2 for k, m in zip(counts, self.means, strict=True)])
            variance = (math.fsum(self.squares) + between) / (n - 1)
            return mean, math.sqrt(variance * (1 + 1 / n)), "flat"
        g = hour % 24
        variance = math.fsum(self.squares) / (n - 24)  # pooled: 24 means estimated
        return self.means[g], math.sqrt(variance * (1 + 1 / len(self.like[g]))), "seasonal"


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
    history: HourlyHistory = field(default_factory=HourlyHistory)
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
        self.history = HourlyHistory()
        self.weeks.clear()

    def _close(self, hour: int) -> list[_Finding]:
        usage = self.open.pop(hour, _ZERO)
        found = self._judge_hour(hour, usage)
        # Baselines are statistics (mean, sigma, z), not money: floats are right here; the
        # usage itself stays Decimal in the weekly totals and the alerts.
        self.history.push(hour, float(usage))
        week, hour_in_week = divmod(hour - WEEK0_HOUR, WEEK_HOURS)
        self.weeks[week] = self.weeks.get(week, _ZERO) + usage
        if hour_in_week == WEEK_HOURS - 1:  # the week's last hour: the week is complete
            found += self._judge_week(week)
            self.weeks = {week: self.weeks[week]}
        return found

    def _judge_hour(self, hour: int, usage: Decimal) -> list[_Finding]:
        base = self.history.baseline(hour)
        if base is None:
            return []
        expected, measured, mode = base
        sigma = max(measured, 1.0, math.sqrt(max(expected, 0.0)), SIGMA_FLOOR_SHARE * abs(expected))
        z = (float(usage) - expected) / sigma
        if (self.episode == "spike" and z > EPISODE_END_Z) or (self.episode == "dip" and z < -EPISODE_END_Z):
            return []  # the episode goes on
        self.episode = None if abs(z) <= Z_THRESHOLD else ("spike" if z > 0 else "dip")
        if self.episode is None:
            return []
        return [_Finding(self.episode, _hour_id(hour), f"{Z_THRESHOLD:g}", hour, 1, {
            "observed": str(usage), "baseline": f"{expected:.4f}", "sigma": f"{sigma:.4f}",
            "sigma_measured": f"{measured:.4f}", "z": f"{z:.3f}", "baseline_mode": mode,
            "history_hours": str(self.history.count)})]

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
    (tenant, customer), on the customer's event-time clock, and the series of the customer's
    backfills whose history that clock had passed (see the module's docstring). Plain state:
    picklable."""

    def __init__(self) -> None:
        self.clock_us: int | None = None  # the latest event time seen
        self.series: dict[str, MetricSeries] = {}
        self.backfills: dict[str, CustomerMonitor] = {}  # backfill id -> its series, oldest first

    def __setstate__(self, state: dict) -> None:
        self.__init__()  # state snapshotted before backfills were monitored lacks them
        self.__dict__.update(state)

    @property
    def horizon(self) -> int | None:
        """Hours before this one are closed."""
        return None if self.clock_us is None else (self.clock_us - ALLOWED_LATENESS_US) // HOUR_US

    def _closed(self, u: Usage) -> bool:
        """Whether the event's hour is closed already."""
        return self.clock_us is not None and u.event_us // HOUR_US < self.horizon

    def observe(self, u: Usage) -> list[Alert]:
        if u.backfill is None or not self._closed(u):
            return self._observe(u)
        own = self.backfills.get(u.backfill)
        if own is None:
            own = self.backfills[u.backfill] = CustomerMonitor()
            while len(self.backfills) > MAX_BACKFILL_SERIES:  # forget the oldest backfill's series
                del self.backfills[next(iter(self.backfills))]
        return [replace(a, details={**a.details, "backfill": u.backfill})
                for a in own._observe(u)]

    def _observe(self, u: Usage) -> list[Alert]:
        hour = u.event_us // HOUR_US
        late = self._closed(u)
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
                s = self.series.get(line.metric)
                if s is None:
                    s = self.series[line.metric] = MetricSeries()
                s.add(hour, line.quantity)
        return alerts
