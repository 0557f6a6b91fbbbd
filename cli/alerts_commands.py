"""`aforo monitor` and `aforo alerts`: run the monitoring flow, read the alerts it raised; and the
demo's monitoring scenarios (a usage spike, a quota running out)."""

from __future__ import annotations

import random
import re
import time
from datetime import UTC, datetime, timedelta

import click
import orjson

import config
from config import clock

_DURATION = re.compile(r"(\d+)([mhd])\Z")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def _since(value: str | None) -> datetime | None:
    """`24h`, `90m`, `7d` (back from now) or an ISO 8601 date or date-time (UTC when no offset)."""
    if value is None:
        return None
    m = _DURATION.match(value)
    if m:
        return clock.now() - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: use 90m, 24h, 7d or an ISO 8601 date-time") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _summary(row: dict) -> str:
    d = row["details"]
    kind = row["kind"]
    if kind in ("spike", "dip"):
        return (f"observed {d['observed']} vs baseline {float(d['baseline']):.1f}"
                f" (sigma {float(d['sigma']):.1f}, z {float(d['z']):+.1f}, {d['baseline_mode']})")
    if kind == "weekly_drop":
        return f"week {d['observed']} vs previous {d['previous_week']} ({d['change_percent']}%)"
    if kind == "quota_projected":
        return (f"projected {d['projected']} of limit {d['limit']} (used {d['used']},"
                f" {d['elapsed_percent']}% of the period)")
    return f"used {d['used']} of limit {d['limit']} ({d['elapsed_percent']}% of the period)"


def print_alert_table(rows: list[dict]) -> None:
    click.echo(f"{'event time':<21} {'kind':<16} {'tenant':<8} {'customer/subscription':<22} "
               f"{'metric':<11} {'window':<18} {'thr':>4}  summary")
    for r in rows:
        who = f"{r['customer']}/{r['subscription']}" if r["subscription"] else r["customer"]
        click.echo(f"{_iso(r['event_time'])[:19] + 'Z':<21} {r['kind']:<16} {r['tenant']:<8} {who:<22} "
                   f"{r['metric']:<11} {r['window_id']:<18} {r['threshold']:>4}  {_summary(r)}")


@click.group()
def alerts() -> None:
    """Alerts raised by the monitoring flow (`aforo monitor`)."""


@alerts.command("list")
@click.option("--tenant")
@click.option("--kind", type=click.Choice(["spike", "dip", "weekly_drop", "quota_projected", "quota_actual"]))
@click.option("--since", help="Event time from: 90m, 24h, 7d, or an ISO 8601 date-time.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def list_cmd(tenant, kind, since, fmt) -> None:
    """Alerts by event time, oldest first."""
    from sinks.alerts import list_alerts
    from sinks.postgres import connect
    with connect(config.load().database_url) as conn:
        rows = list_alerts(conn, tenant, kind, _since(since))
    if fmt == "json":
        click.echo(orjson.dumps([{k: _iso(v) if isinstance(v, datetime) else v for k, v in r.items()}
                                 for r in rows], option=orjson.OPT_INDENT_2).decode())
    else:
        print_alert_table(rows)


def run_monitoring(settings: config.Settings, once: bool = True) -> float:
    from flows.monitoring import run
    started = time.perf_counter()
    run(settings, once=once)
    return time.perf_counter() - started


@click.command()
@click.option("--once", is_flag=True, help="Process what is in the enriched topic, then exit.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Serve /metrics, /healthz and /readyz on AFORO_METRICS_HOST:PORT.")
def monitor(once: bool, metrics_port: int | None) -> None:
    """Run the monitoring flow: usage anomalies and quota pacing.

    Reads the enriched topic; writes alerts to Postgres and the alerts topic. With crash
    recovery: it resumes where it stopped."""
    from observe.logs import configure as configure_logging
    from observe.server import start_for_flow
    settings = config.load()
    configure_logging(settings, service=True)
    if metrics_port is not None:
        start_for_flow(settings, metrics_port, "monitoring", ledger_gauges=False)
    elapsed = run_monitoring(settings, once)
    if once:
        click.echo(f"done in {elapsed:.1f}s")


# --- the demo --------------------------------------------------------------------------------------

SPIKE_CUSTOMER = ("acme", "cust-3")  # steady api_calls for the last day, then one hour at 6x
QUOTA_CUSTOMER = ("acme", "cust-2")  # 650 api_calls against a quota of 500 on sub-2
QUOTA_EVENTS = 650
_HOUR = timedelta(hours=1)
_SEND_MARGIN = timedelta(minutes=10)  # so the oldest line is not yet 24 h old when it is ingested


def _floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def _api_call(tenant: str, customer: str, event_id: str, when: datetime) -> bytes:
    return orjson.dumps({
        "specversion": "1.0", "id": event_id, "source": "demo/monitoring", "type": "api.call",
        "subject": customer, "tenantid": tenant, "data": {"route": "/v2/search", "status": 200},
        "time": when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")})


def demo_monitoring_lines(now: datetime, seed: int) -> list[bytes]:
    """Raw lines to send BEFORE the rest of the demo stream, each customer's in event-time order
    (the detectors run on each customer's own event time; the demo stream's events are from the
    last hour, so sent first these would all be later than the closed hours they belong to).

    * SPIKE_CUSTOMER: 16-24 api calls in every hour from 24 h ago (the pipeline holds older
      events as late, so this is all the history a demo can have: 20 to 22 closed hours, above
      the detector's 18-hour minimum), 120 in the hour two hours ago, and one call now, whose
      event time (an hour past the spike hour's end: the allowed lateness) closes that hour.
    * QUOTA_CUSTOMER: 650 api calls over the last hour, against a quota of 500 (catalog entry
      acme/sub-2/api_calls): actual 80%, 100% and 120%, and the projections once 5% of the month
      has elapsed.
    """
    rnd = random.Random(seed)
    lines = []
    tenant, customer = SPIKE_CUSTOMER
    spike_hour = _floor_hour(now) - 2 * _HOUR
    hour = _floor_hour(now - timedelta(hours=24) + _SEND_MARGIN) + _HOUR
    while hour <= spike_hour:
        n = 120 if hour == spike_hour else rnd.randint(16, 24)
        for i in range(n):
            lines.append(_api_call(tenant, customer, f"mon-{seed}-s{len(lines)}", hour + i * _HOUR / n))
        hour += _HOUR
    lines.append(_api_call(tenant, customer, f"mon-{seed}-s{len(lines)}", now))
    tenant, customer = QUOTA_CUSTOMER
    for i in range(QUOTA_EVENTS):
        when = now - _HOUR + _SEND_MARGIN / 2 + i * (_HOUR - _SEND_MARGIN) / QUOTA_EVENTS
        lines.append(_api_call(tenant, customer, f"mon-{seed}-q{i}", when))
    return lines


def print_demo_alerts(settings: config.Settings, now: datetime) -> None:
    """The alerts about the demo's day: those of the last 25 hours of event time, and this
    period's quota alerts (a quota threshold fires once per period: from the first demo of the
    month on, later demos find it already fired)."""
    from sinks.alerts import list_alerts
    from sinks.postgres import connect
    period = now.astimezone(UTC).strftime("%Y-%m")
    with connect(settings.database_url) as conn:
        rows = {tuple(r[k] for k in ("kind", "tenant", "customer", "subscription", "metric", "window_id",
                                     "threshold")): r
                for r in [*list_alerts(conn, since=now - timedelta(hours=25)),
                          *list_alerts(conn, kind="quota_projected"), *list_alerts(conn, kind="quota_actual")]
                if not r["kind"].startswith("quota") or r["window_id"] == period}
    click.echo(f"\nalerts ({len(rows)}; all of them: aforo alerts list)")
    print_alert_table(sorted(rows.values(), key=lambda r: (r["event_time"], r["kind"])))
