"""Replay a billing period from raw events: deterministic digest, diff, apply."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from decimal import Decimal as D

import pytest
import time_machine
from billing_fixtures import END, PERIOD, apply, cli, clock_past, event, ledger_revenue, on_time, send_at
from click.testing import CliRunner
from integration import env_of, ledger, periods_of, revenue_totals, send
from test_billing_run import TERMS, month_of_usage

from cli.demo import demo_stream
from cli.main import main
from config import clock
from flows.billing import bill_run
from flows.metering import run
from sinks.postgres import connect

pytestmark = pytest.mark.integration
APRIL_END = END + timedelta(days=30)


def replay(settings, period: str, *args):
    result = CliRunner().invoke(main, ["replay", "--tenant", "acme", "--period", period, *args],
                                env=env_of(settings))
    digests = dict(re.findall(r"(live|replayed) ledger digest\s+([0-9a-f]{64})", result.output))
    return result, digests


@pytest.mark.time_sensitive
def test_replaying_a_period_twice_gives_the_live_ledgers_digest(settings):
    lines, _ = demo_stream(clock.now(), normal=3000)
    send(settings, lines)
    run(settings, once=True)

    for period in periods_of(lines):  # the last hour may straddle two periods
        first, d1 = replay(settings, period)
        second, d2 = replay(settings, period)
        from_topic, d3 = replay(settings, period, "--source", "topic")
        for result in (first, second, from_topic):
            assert result.exit_code == 0, result.output
            assert "identical" in result.output
        assert d1["live"] == d1["replayed"] == d2["replayed"] == d3["replayed"]


@pytest.mark.time_sensitive
def test_a_tampered_ledger_is_reported_and_apply_restores_it(settings):
    lines, _ = demo_stream(clock.now(), normal=1000)
    send(settings, lines)
    run(settings, once=True)
    before_rows, before_revenue = ledger(settings), revenue_totals(settings)
    with connect(settings.database_url) as conn:
        event_id, period = conn.execute(
            "UPDATE ledger SET revenue = revenue + 1 WHERE ctid = (SELECT ctid FROM ledger"
            " WHERE tenantid = 'acme' AND revenue IS NOT NULL LIMIT 1) RETURNING event_id, period").fetchone()
        conn.execute("UPDATE revenue SET revenue = 0 WHERE tenant = 'acme' AND period = %s", (period,))

    result, digests = replay(settings, period)
    assert result.exit_code == 1
    assert "DIFFERENT" in result.output and event_id in result.output
    assert digests["live"] != digests["replayed"]

    applied, _ = replay(settings, period, "--apply")
    assert applied.exit_code == 1 and "applied" in applied.output
    after, digests = replay(settings, period)
    assert after.exit_code == 0, after.output
    assert ledger(settings) == before_rows
    assert revenue_totals(settings) == before_revenue


def test_a_period_holding_adjustments_replays_identical_and_bills_them_once_after_apply(settings, tmp_path):
    """March is billed (closed); a late March event approved in April is April's adjustment. Both
    periods replay identical, and an applied replay of April keeps the adjustment in its totals."""
    apply(settings, TERMS)
    month_of_usage(settings)
    assert bill_run(settings, "acme", PERIOD).ok
    april = [END + timedelta(days=3, hours=i) for i in range(60)]
    send_at(settings, [*on_time([(event(f"a{i}", "cust-1", t), t) for i, t in enumerate(april)]),
                       (event("late-1", "cust-1", END - timedelta(hours=2)), END + timedelta(days=6))])
    run(settings, once=True)
    [held] = json.loads(cli(settings, "reconcile", "list", "--tenant", "acme", "--format", "json"))
    with time_machine.travel(END + timedelta(days=7), tick=True):  # approved (stamped) in April
        cli(settings, "reconcile", "approve", str(held["id"]))
    run(settings, once=True)
    later = [END + timedelta(days=10, hours=i) for i in range(60)]
    send_at(settings, [*on_time([(event(f"b{i}", "cust-1", t), t) for i, t in enumerate(later)]),
                       clock_past(APRIL_END)])
    run(settings, once=True)

    for period in (PERIOD, "2026-04"):  # nothing changed: both replay identical
        result, digests = replay(settings, period)
        assert result.exit_code == 0 and digests["live"] == digests["replayed"], result.output
    assert "121/121" in result.output  # April's 120 calls and the adjustment

    with connect(settings.database_url) as conn:  # a difference for --apply to repair
        conn.execute("UPDATE ledger SET revenue = revenue + 1 WHERE event_id = 'bb5'")
    applied, _ = replay(settings, "2026-04", "--apply")
    assert applied.exit_code == 1 and "applied" in applied.output, applied.output

    [inv] = [o.invoice for o in bill_run(settings, "acme", "2026-04").outcomes if o.customer == "cust-1"]
    [calls] = [x for x in inv.lines if x.metric == "api_calls"]
    # 121 calls, the first 100 free, then 0.002 each: the events' own revenue, the adjustment once
    assert (calls.events, calls.adjustment_events, calls.quantity) == (121, 1, 121)
    assert calls.usage_amount == D("0.042") == ledger_revenue(settings, "cust-1", "2026-04")["api_calls"][1]
    out = tmp_path / "line.ndjson"
    assert "121 rows" in cli(settings, "invoice", "trace", inv.number, "--line", str(calls.line_no), "-o",
                             str(out))
    rows = [json.loads(r) for r in out.read_bytes().splitlines()]
    assert sum(D(x["revenue"]) for r in rows for x in r["lines"]) == calls.usage_amount
    assert [r["event_id"] for r in rows if r["adjusts_period"] == PERIOD] == ["blate-1"]
    assert cli(settings, "audit", "verify", "--tenant", "acme").startswith("OK")
    assert "already settled" in cli(settings, "bill", "run", "--tenant", "acme", "--period", "2026-04")
