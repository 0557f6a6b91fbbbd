"""Replay a billing period from raw events: deterministic digest, diff, apply."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from integration import env_of, ledger, periods_of, revenue_totals, send

from cli.demo import demo_stream
from cli.main import main
from config import clock
from flows.metering import run
from sinks.postgres import connect

pytestmark = pytest.mark.integration


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
