"""Held events: approved ones are rated exactly once, rejected ones keep who/when/why."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from datetime import datetime, timedelta

import orjson
import pytest
from click.testing import CliRunner
from integration import env_of, revenue_totals, send

from cli.main import main
from config import clock
from flows.metering import run
from sinks.postgres import connect

pytestmark = pytest.mark.integration


def event(i: int, when: datetime, subject: str = "cust-1", **extra) -> bytes:
    return orjson.dumps({"specversion": "1.0", "id": f"r{i}", "source": "rec", "type": "api.call",
                         "subject": subject, "tenantid": "acme", "time": when.isoformat(), **extra})


def cli(settings, *args):
    result = CliRunner().invoke(main, list(args), env={**env_of(settings), "AFORO_ACTOR": "auditor"})
    assert result.exit_code == 0, result.output
    return result.output


def held(settings) -> list[dict]:
    return json.loads(cli(settings, "reconcile", "list", "--format", "json"))


@pytest.mark.time_sensitive
def test_approved_late_event_is_rated_once_however_often_approved(settings):
    now = clock.now()
    times = [now - timedelta(hours=30), now]
    send(settings, [event(1, times[0]), event(2, times[1])])
    run(settings, once=True)
    [late] = held(settings)
    assert (late["status"], late["reason"]) == ("late", "late_arrival")

    assert "approved 1, re-injected 1" in cli(settings, "reconcile", "approve", str(late["id"]))
    run(settings, once=True)
    assert "approved 0, re-injected 0" in cli(settings, "reconcile", "approve", str(late["id"]))
    assert held(settings) == []
    for verb in (["approve"], ["reject", "--note", "typo"]):  # a mistyped id: nothing decided, exit 1
        mistyped = CliRunner().invoke(main, ["reconcile", *verb, str(late["id"]), "999999"],
                                      env=env_of(settings))
        assert mistyped.exit_code == 1
        assert "no held event with id 999999" in mistyped.output and "nothing decided" in mistyped.output
    with connect(settings.database_url) as conn:
        rows = conn.execute("SELECT event_id, status, reason, reinject_of, tier FROM ledger"
                            " ORDER BY ingested_at").fetchall()
        transitions = conn.execute("SELECT action, from_status, actor FROM ledger_transitions").fetchall()
    original = f"{late['coords'][0]}/{late['coords'][1]}/{late['coords'][2]}"
    assert sorted(rows, key=str) == sorted([("r1", "late", "late_arrival", None, "sdk"),
                                            ("r2", "accepted", None, None, "sdk"),
                                            ("r1", "accepted", None, original, "sdk")], key=str)
    assert transitions == [("approve", "late", "auditor")]
    # both events counted once, each in the period of its own time (30 hours ago may be last month)
    api_calls = Counter()
    for r in revenue_totals(settings):
        if r[3] == "api_calls":
            api_calls[r[4]] += r[6]
    assert api_calls == Counter(t.strftime("%Y-%m") for t in times)

    # a retry of the late event's original payload is now a duplicate of the re-injection
    send(settings, [event(1, times[0])])
    run(settings, once=True)
    with connect(settings.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM ledger WHERE status = 'duplicate'").fetchone()[0] == 1


def test_a_repeated_reinjection_is_a_duplicate_not_a_second_charge(settings):
    from sinks.reconcile import awaiting_reinjection, reinject
    send(settings, [event(1, clock.now() - timedelta(hours=30))])
    run(settings, once=True)
    [late] = held(settings)
    cli(settings, "reconcile", "approve", str(late["id"]))
    with connect(settings.database_url) as conn:  # as if the first acknowledgement had been lost
        reinject(settings, awaiting_reinjection(conn, [late["id"]]))
    run(settings, once=True)
    with connect(settings.database_url) as conn:
        statuses = sorted(s for (s,) in conn.execute("SELECT status FROM ledger WHERE event_id = 'r1'"))
    assert statuses == ["accepted", "duplicate", "late"]


def test_reject_records_who_and_why_and_unresolved_events_release_when_the_catalog_resolves_them(
        settings, tmp_path):
    now = clock.now()
    send(settings, [event(1, now, subject="cust-new"), event(2, now, subject="cust-gone")])
    run(settings, once=True)
    by_subject = {h["subject"]: h for h in held(settings)}
    cli(settings, "reconcile", "reject", str(by_subject["cust-gone"]["id"]), "--note", "test traffic")
    with connect(settings.database_url) as conn:
        assert conn.execute("SELECT action, actor, note FROM ledger_transitions").fetchall() == [
            ("reject", "auditor", "test traffic")]

    catalog = tmp_path / "more.json"
    catalog.write_text(json.dumps({
        "customers": [{"tenant": "acme", "id": "cust-new"}],
        "subscriptions": [{"tenant": "acme", "id": "sub-new", "customer": "cust-new", "plan": "pro",
                           "plan_version": 1, "start": "2026-01-01T00:00:00Z"}]}))
    out = cli(settings, "catalog", "apply", str(catalog))
    assert "approved 1, re-injected 1" in out
    run(dataclasses.replace(settings), once=True)
    assert held(settings) == []
    with connect(settings.database_url) as conn:
        assert conn.execute("SELECT status, subscription FROM ledger WHERE reinject_of IS NOT NULL"
                            ).fetchall() == [("accepted", "sub-new")]


def test_approve_all_reinjects_each_customers_history_in_event_time_order(settings):
    """Two customers' day of history, all of it late and arrived in no order, approved at once:
    the pipeline gets each customer's events as they happened, so the monitor sees the spike
    whole (the issue saw 83-110 of 150, and spurious dips, with the arbitrary order)."""
    from flows.monitoring import run as monitor
    from sinks.alerts import list_alerts
    start = clock.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=60)
    lines, n = [], 0
    for subject in ("cust-1", "cust-3"):
        for hour in range(24):  # 6 calls an hour, 30 in hour 20; hour 22 closes hour 20
            calls = 30 if hour == 20 else 6
            for k in range(calls):
                n += 1
                lines.append(event(n, start + timedelta(hours=hour, seconds=k * 3600 // calls), subject))
    random.Random(5).shuffle(lines)
    send(settings, lines)
    run(settings, once=True)
    assert len(held(settings)) == len(lines)

    approved = cli(settings, "reconcile", "approve", "--all")
    assert f"approved {len(lines)}, re-injected {len(lines)}" in approved
    run(settings, once=True)
    with connect(settings.database_url) as conn:
        rows = conn.execute("SELECT subject, raw_partition, raw_offset, event_time FROM ledger"
                            " WHERE reinject_of IS NOT NULL AND status = 'accepted'").fetchall()
    assert len(rows) == len(lines)
    for subject in ("cust-1", "cust-3"):
        arrival = sorted((p, o, t) for s, p, o, t in rows if s == subject)
        assert len({p for p, _, _ in arrival}) == 1  # one customer, one partition
        assert [t for *_, t in arrival] == sorted(t for *_, t in arrival)

    monitor(settings, once=True)
    with connect(settings.database_url) as conn:
        anomalies = [(a["customer"], a["kind"], a["window_id"], a["details"]["observed"])
                     for a in list_alerts(conn, tenant="acme") if a["kind"] in ("spike", "dip")]
    spike_hour = (start + timedelta(hours=20)).strftime("%Y-%m-%dT%H:00Z")
    assert sorted(anomalies) == [("cust-1", "spike", spike_hour, "30"), ("cust-3", "spike", spike_hour, "30")]
