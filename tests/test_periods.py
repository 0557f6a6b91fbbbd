"""Closed periods never change: a late event approved afterwards is an adjustment in the next one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
import time_machine
from billing_fixtures import END, PERIOD, START, clock_past, on_time, send_at
from billing_fixtures import event as billing_event
from click.testing import CliRunner
from integration import env_of, send

from cli.main import main
from config import clock
from flows.billing import bill_run
from flows.metering import run
from operators.enrich import next_period, open_period
from sinks.periods import FINISHING_LOCK, close_period, cut_period, scope_of
from sinks.postgres import connect
from sinks.replay import Ledger, digest

pytestmark = pytest.mark.integration
AFORO = str(Path(sys.executable).with_name("aforo"))


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


# --- the closing digest covers the rows the close saw --------------------------------------------

CLOSED_AT = END + timedelta(days=3)  # March closed on 4 April, past its end and lateness allowance
LATE_AT = END + timedelta(days=5)  # then its late history turns up


def march(settings, n: int = 5) -> list[tuple[bytes, datetime]]:
    """cust-1's March calls, metered on time, and the pipeline's clock moved past March."""
    calls = [(march_event(i, START + timedelta(days=i, hours=3)), START + timedelta(days=i, hours=3))
             for i in range(n)]
    send_at(settings, [*on_time(calls), clock_past(END)])
    run(settings, once=True)
    return calls


def march_event(i: int | str, when: datetime) -> bytes:
    return billing_event(i, "cust-1", when)


def close_march(settings) -> None:
    with time_machine.travel(CLOSED_AT, tick=True):
        assert "closed acme 2026-03" in cli(settings, "period", "close", "--tenant", "acme",
                                            "--period", PERIOD)


def upload_late(settings, tmp_path, lines: list[bytes]) -> None:
    """`aforo upload` of March history after the close: received on LATE_AT, so held as late."""
    file = tmp_path / "late.ndjson"
    file.write_bytes(b"\n".join(lines) + b"\n")
    with time_machine.travel(LATE_AT, tick=True):
        cli(settings, "upload", str(file), "--tenant", "acme")
    run(settings, once=True)


def march_shown(settings) -> tuple[str, dict]:
    """`period show`'s line for March, and March as its JSON says."""
    table = cli(settings, "period", "show", "--tenant", "acme")
    [p] = json.loads(cli(settings, "period", "show", "--tenant", "acme", "--format", "json"))
    return table.splitlines()[0], p


def test_late_history_held_and_approved_after_the_close_leaves_the_closed_period_unchanged(settings,
                                                                                           tmp_path):
    calls = march(settings)
    close_march(settings)
    _, closed = march_shown(settings)
    assert closed["totals"]["cust-1/api_calls"]["events"] == "5"

    # the README's procedure: upload the late history (two new calls, and one March already has)
    late = [march_event("late-1", START + timedelta(days=20)),
            march_event("late-2", START + timedelta(days=21)), calls[0][0]]
    upload_late(settings, tmp_path, late)
    with connect(settings.database_url) as conn:
        after_close = conn.execute("SELECT event_id, status FROM ledger WHERE tier = 'upload'"
                                   " ORDER BY event_id").fetchall()
    # in March's time range, written after the close
    assert after_close == [("b0", "duplicate"), ("blate-1", "late"), ("blate-2", "late")]
    line, p = march_shown(settings)
    assert line.endswith("unchanged") and p["digest_now"] == p["digest"] == closed["digest"], line

    with time_machine.travel(LATE_AT + timedelta(hours=1), tick=True):
        cli(settings, "reconcile", "approve", "--all")
    run(settings, once=True)
    with connect(settings.database_url) as conn:
        decided = conn.execute("SELECT event_id, status, period, adjusts_period FROM ledger"
                               " WHERE reinject_of IS NOT NULL ORDER BY event_id").fetchall()
    assert decided == [("blate-1", "accepted", "2026-04", PERIOD),
                       ("blate-2", "accepted", "2026-04", PERIOD)]
    line, p = march_shown(settings)
    assert line.endswith("unchanged") and p["digest_now"] == p["digest"] == closed["digest"], line
    assert p["totals"] == closed["totals"]
    assert [(a["billed_in"], a["events"]) for a in p["adjustments"]] == [("2026-04", 2)]
    assert "identical" in cli(settings, "replay", "--tenant", "acme", "--period", PERIOD)


def test_an_edited_deleted_or_inserted_row_of_a_closed_period_shows_as_changed(settings, tmp_path):
    march(settings)
    close_march(settings)
    upload_late(settings, tmp_path, [march_event("late-1", START + timedelta(days=20))])
    changed = "CHANGED since closing"
    assert march_shown(settings)[0].endswith("unchanged")

    def after(sql: str, params: tuple = ()) -> str:
        with connect(settings.database_url) as conn:
            conn.execute(sql, params)
        return march_shown(settings)[0]

    # an edit of a covered row, then undone
    assert after("UPDATE ledger SET revenue = revenue + 1 WHERE event_id = 'b2'").endswith(changed)
    assert after("UPDATE ledger SET revenue = revenue - 1 WHERE event_id = 'b2'").endswith("unchanged")
    # an edit of its lines
    assert after("UPDATE ledger_lines SET quantity = 2 WHERE raw_offset = (SELECT raw_offset FROM ledger"
                 " WHERE event_id = 'b2')").endswith(changed)
    after("UPDATE ledger_lines SET quantity = 1 WHERE raw_offset = (SELECT raw_offset FROM ledger"
          " WHERE event_id = 'b2')")
    with connect(settings.database_url) as conn:
        names = ", ".join(c for (c,) in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'ledger'"
            " AND column_name NOT IN ('id', 'raw_offset') ORDER BY ordinal_position"))

    def forge(event_id: str, with_id: str = "") -> str:
        """A copy of the event's row at another offset, inserted (with this id, if given)."""
        ids = ("id, ", f"{with_id}, ", "OVERRIDING SYSTEM VALUE") if with_id else ("", "", "")
        return after(f"INSERT INTO ledger ({ids[0]}raw_offset, {names}) {ids[2]} SELECT {ids[1]}"
                     f"raw_offset + 1000000, {names} FROM ledger WHERE event_id = %s", (event_id,))

    # a billed row inserted after the close: it takes a new, higher id, and is still seen
    assert forge("b3").endswith(changed)
    assert after("DELETE FROM ledger WHERE raw_offset >= 1000000").endswith("unchanged")
    # a row of any status (this one held) forged with an id the close covered
    assert forge("blate-1", with_id="-1").endswith(changed)
    assert after("DELETE FROM ledger WHERE raw_offset >= 1000000").endswith("unchanged")
    # a covered row deleted
    assert after("DELETE FROM ledger WHERE event_id = 'b4'").endswith(changed)


def test_a_period_closed_before_the_cut_was_recorded_is_checked_over_all_its_rows(settings, tmp_path):
    march(settings)
    upload_late(settings, tmp_path, [march_event("late-1", START + timedelta(days=20))])  # held, then closed
    close_march(settings)
    with connect(settings.database_url) as conn:  # as closed before migration 0054
        conn.execute("UPDATE closed_periods SET closed_through = NULL")
    assert march_shown(settings)[0].endswith("unchanged")
    with connect(settings.database_url) as conn:
        conn.execute("UPDATE ledger SET detail = 'edited' WHERE event_id = 'blate-1'")
    assert march_shown(settings)[0].endswith("CHANGED since closing")


def waiting_on(conn, table: str) -> bool:
    """Whether a session waits for a lock on the table."""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted"
                        " AND relation = %s::regclass)", (table,)).fetchone()[0]


def test_the_close_waits_for_a_ledger_write_in_flight_and_covers_it(settings):
    """A batch of March the flow is committing while March closes: its ids are drawn before the
    close reads the highest id, its commit comes after. The close waits for it and covers it."""
    march(settings)
    late_batch = [(march_event(f"flight-{i}", START + timedelta(days=25, hours=i)),
                   START + timedelta(days=25, hours=i)) for i in range(2)]
    send_at(settings, on_time(late_batch))
    with connect(settings.database_url) as watch, connect(settings.database_url) as blocker:
        # the writer's transaction stops after its ledger rows, where it updates the running totals
        blocker.execute("LOCK TABLE revenue IN SHARE MODE")
        flow = subprocess.Popen([AFORO, "run", "--once"], env=env_of(settings),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while not waiting_on(watch, "revenue"):
                assert flow.poll() is None and time.monotonic() < deadline, "the flow never wrote"
                time.sleep(0.05)
            closing = ThreadPoolExecutor(1).submit(close_period_in_march, settings)
            while not (closing.done() or waiting_on(watch, "ledger")):
                assert time.monotonic() < deadline, "the close neither waited nor finished"
                time.sleep(0.05)
        finally:
            blocker.rollback()  # the writer goes on and commits
            assert flow.wait(60) == 0, flow.stderr.read().decode()[-3000:]
        closing.result(60)
    line, p = march_shown(settings)
    assert line.endswith("unchanged"), line
    assert p["totals"]["cust-1/api_calls"]["events"] == "7"  # the batch in flight is in March's totals


def close_period_in_march(settings) -> None:
    with connect(settings.database_url) as conn:
        close_period(conn, "acme", PERIOD, "cfo")


def test_a_replay_applied_while_the_period_closes_is_refused_and_the_closed_rows_stay(settings):
    """`replay --apply` of March while March closes: whichever takes the ledger's lock first, the
    period is never closed on rows the replay then replaces."""
    march(settings)
    with connect(settings.database_url) as conn:  # a difference for --apply to repair
        conn.execute("UPDATE ledger SET revenue = revenue + 1 WHERE event_id = 'b2'")
    with connect(settings.database_url) as watch, connect(settings.database_url) as writer:
        writer.execute("LOCK TABLE ledger IN ROW EXCLUSIVE MODE")  # a ledger write in flight
        closing = ThreadPoolExecutor(1).submit(close_period_in_march, settings)
        deadline = time.monotonic() + 60
        while not waiting_on(watch, "ledger"):  # the close waits for the write
            assert time.monotonic() < deadline and not closing.done(), "the close did not wait"
            time.sleep(0.05)
        replay = subprocess.Popen([AFORO, "replay", "--tenant", "acme", "--period", PERIOD, "--apply"],
                                  env=env_of(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        while watch.execute("SELECT count(*) FROM pg_locks WHERE NOT granted"
                            " AND relation = 'ledger'::regclass").fetchone()[0] < 2:  # and it queues
            assert time.monotonic() < deadline and replay.poll() is None, replay.stdout.read().decode()
            time.sleep(0.05)
        writer.rollback()
        closing.result(60)
        output = replay.communicate(timeout=120)[0].decode()
    assert replay.returncode == 1 and "Error: acme 2026-03 is closed" in output, output
    assert "applied" not in output
    line, _ = march_shown(settings)
    assert line.endswith("unchanged"), line


# --- the close holds the ledger's writers only for its cut ---------------------------------------

def finishing_waits(conn) -> bool:
    """Whether a close waits for the lock of its second phase (the digest), in this database."""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                        " AND classid = %s AND database = (SELECT oid FROM pg_database"
                        " WHERE datname = current_database()))", (FINISHING_LOCK,)).fetchone()[0]


def test_metering_goes_on_while_the_close_computes_its_digest(settings):
    """The test holds the lock the close's second phase takes, so its digest waits as a big
    period's would: the flow meters meanwhile, and `period show` lists March as closing."""
    march(settings)
    april = [(march_event(f"april-{i}", END + timedelta(days=3, hours=i)), END + timedelta(days=3, hours=i))
             for i in range(2)]
    send_at(settings, on_time(april))
    with connect(settings.database_url, autocommit=True) as pause, connect(settings.database_url) as watch:
        key = (FINISHING_LOCK, f"acme\x1f{PERIOD}")
        pause.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", key)
        closing = ThreadPoolExecutor(1).submit(close_period_in_march, settings)
        try:
            deadline = time.monotonic() + 60
            while not finishing_waits(watch):
                assert time.monotonic() < deadline and not closing.done(), "the close never paused"
                time.sleep(0.05)
            # a ledger write started after the cut: it would wait for the digest if the cut's lock were held
            flow = subprocess.run([AFORO, "run", "--once"], env=env_of(settings), capture_output=True,
                                  timeout=60)
            assert flow.returncode == 0, flow.stderr.decode()[-3000:]
            assert not closing.done()  # the digest is still paused: the flow did not wait for it
            line, p = march_shown(settings)
            assert line.startswith(f"{PERIOD} closing since") and "being computed" in line, line
            assert (p["status"], p["digest"], p["digest_now"], p["totals"]) == ("closing", None, None, None)
        finally:
            pause.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", key)
        closing.result(60)
        metered = watch.execute("SELECT event_id, status, period FROM ledger WHERE event_id LIKE 'bapril-%'"
                                " AND id > (SELECT closed_through FROM closed_periods)"
                                " ORDER BY event_id").fetchall()
    assert metered == [("bapril-0", "accepted", "2026-04"), ("bapril-1", "accepted", "2026-04")]
    line, p = march_shown(settings)
    assert line.endswith("unchanged") and p["status"] == "closed", line
    assert p["totals"]["cust-1/api_calls"]["events"] == "5"


@pytest.mark.parametrize("finisher", ["period show", "period close", "bill run"])
def test_a_close_interrupted_after_its_cut_is_finished_with_the_digest_it_would_have_had(settings, tmp_path,
                                                                                         finisher):
    calls = march(settings)
    with connect(settings.database_url) as conn:
        as_closed = digest(conn, Ledger.live(scope_of("acme", PERIOD)))  # March when the close cuts it
    with connect(settings.database_url) as conn:
        assert cut_period(conn, "acme", PERIOD, "cfo")  # and dies before its digest
    # then rows in March's time range past the cut: held late, a duplicate, and an accepted one (as a
    # flow with the catalog it loaded before the close would bill it in March): only that is a change
    upload_late(settings, tmp_path, [march_event("late-1", START + timedelta(days=20)), calls[0][0]])
    with connect(settings.database_url) as conn:
        names = ", ".join(c for (c,) in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'ledger'"
            " AND column_name NOT IN ('id', 'raw_offset') ORDER BY ordinal_position"))
        conn.execute(f"INSERT INTO ledger (raw_offset, {names}) SELECT raw_offset + 1000000, {names}"
                     " FROM ledger WHERE event_id = 'b3'")

    if finisher == "period close":
        with time_machine.travel(CLOSED_AT, tick=True):
            out = cli(settings, "period", "close", "--tenant", "acme", "--period", PERIOD)
        assert out.startswith(f"closed acme {PERIOD}: digest {as_closed},"), out
    elif finisher == "bill run":
        report = bill_run(settings, "acme", PERIOD, allow_held=True)  # the late one is held
        assert not report.closed_now and report.ok, report
    else:
        march_shown(settings)
    with connect(settings.database_url) as conn:
        assert conn.execute("SELECT digest FROM closed_periods").fetchall() == [(as_closed,)]
    line, p = march_shown(settings)
    assert p["status"] == "closed" and p["digest"] == as_closed
    assert p["totals"]["cust-1/api_calls"]["events"] == "5"
    assert line.endswith("CHANGED since closing"), line  # the row billed in March after the cut
    with connect(settings.database_url) as conn:
        conn.execute("DELETE FROM ledger WHERE raw_offset >= 1000000")
    assert march_shown(settings)[0].endswith("unchanged")
    with time_machine.travel(CLOSED_AT, tick=True):
        again = cli(settings, "period", "close", "--tenant", "acme", "--period", PERIOD, code=1)
    assert again == f"Error: acme {PERIOD} is already closed\n"


def test_two_closes_at_the_same_moment_close_once_and_the_other_is_told(settings):
    march(settings)
    with connect(settings.database_url) as watch, connect(settings.database_url) as writer:
        writer.execute("LOCK TABLE ledger IN ROW EXCLUSIVE MODE")  # both closes queue behind a write
        closes = [ThreadPoolExecutor(1).submit(close_period_in_march, settings) for _ in range(2)]
        deadline = time.monotonic() + 60
        while watch.execute("SELECT count(*) FROM pg_locks WHERE NOT granted"
                            " AND relation = 'ledger'::regclass").fetchone()[0] < 2:
            assert time.monotonic() < deadline and not any(c.done() for c in closes), "no queue"
            time.sleep(0.05)
        writer.rollback()
        errors = [c.exception(60) for c in closes]
    assert sorted(map(repr, errors)) == ["None", f"PeriodError('acme {PERIOD} is already closed')"]
    line, p = march_shown(settings)
    assert line.endswith("unchanged") and p["totals"]["cust-1/api_calls"]["events"] == "5"
