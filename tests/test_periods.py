"""Closed periods never change: a late event approved afterwards is an adjustment in the next one."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import orjson
import pytest
from click.testing import CliRunner
from integration import env_of, send

from cli.main import main
from config import clock
from flows.metering import run
from operators.enrich import next_period, open_period
from sinks.postgres import connect

pytestmark = pytest.mark.integration


def test_open_period_skips_closed_ones():
    assert next_period("2026-12") == "2027-01"
    assert open_period("2026-10", frozenset()) == ("2026-10", None)
    assert open_period("2026-10", frozenset({"2026-10", "2026-11"})) == ("2026-12", "2026-10")


def cli(settings, *args, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args), env={**env_of(settings), "AFORO_ACTOR": "cfo"})
    assert result.exit_code == code, result.output
    return result.output


def last_month_late_time(now: datetime) -> datetime:
    """A time in the previous month that is more than 24 hours before now."""
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    t = start - timedelta(hours=1)
    return t if now - t > timedelta(hours=25) else now - timedelta(hours=26)


def event(i: int, when: datetime) -> bytes:
    return orjson.dumps({"specversion": "1.0", "id": f"p{i}", "source": "per", "type": "api.call",
                         "subject": "cust-1", "tenantid": "acme", "time": when.isoformat()})


@pytest.mark.time_sensitive
def test_late_event_approved_after_close_is_an_adjustment_and_the_closed_period_is_unchanged(settings):
    now = clock.now()
    late_at = last_month_late_time(now)
    closed, billed = late_at.strftime("%Y-%m"), now.strftime("%Y-%m")
    send(settings, [event(1, late_at), event(2, now)])
    run(settings, once=True)

    assert "closed acme" in cli(settings, "period", "close", "--tenant", "acme", "--period", closed)
    before = json.loads(cli(settings, "period", "show", "--tenant", "acme", "--format", "json"))
    cli(settings, "period", "close", "--tenant", "acme", "--period", closed, code=1)  # once only

    [held] = json.loads(cli(settings, "reconcile", "list", "--format", "json"))
    for _ in range(2):  # approving twice changes nothing
        cli(settings, "reconcile", "approve", str(held["id"]))
        run(settings, once=True)

    after = json.loads(cli(settings, "period", "show", "--tenant", "acme", "--format", "json"))
    [p] = after
    assert p["digest_now"] == p["digest"] == before[0]["digest"]
    assert p["totals"] == before[0]["totals"]
    assert p["adjustments"] == [{"billed_in": billed, "events": 1, "revenue": p["adjustments"][0]["revenue"]}]
    with connect(settings.database_url) as conn:
        rows = conn.execute("SELECT event_id, status, period, adjusts_period FROM ledger"
                            " WHERE reinject_of IS NOT NULL").fetchall()
        events = conn.execute("SELECT events FROM revenue WHERE metric = 'api_calls' AND period = %s",
                              (billed,)).fetchone()[0]
    assert rows == [("p1", "accepted", billed, closed)]
    assert events == 2  # the current event and the adjustment, each once
    # the closed period's replay is still identical, and --apply would be refused anyway
    assert "identical" in cli(settings, "replay", "--tenant", "acme", "--period", closed)
    assert cli(settings, "audit", "verify", "--tenant", "acme").startswith("OK")

    with connect(settings.database_url) as conn:  # tamper with the closed period's late row
        conn.execute("UPDATE ledger SET detail = 'edited' WHERE event_id = 'p1' AND status = 'late'")
    refused = cli(settings, "replay", "--tenant", "acme", "--period", closed, "--apply", code=1)
    assert "DIFFERENT" in refused and f"acme {closed} is closed" in refused
