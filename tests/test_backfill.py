"""Backfill: history of open periods admitted on purpose, checked whole, recorded (who, why, when)
before anything is produced, and produced in event-time order per customer with the backfill's
id in the `aforo-backfill` header and the backfill's time as the ingestion time."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta

import orjson
import pytest
from click.testing import CliRunner
from integration import env_of, messages, send
from test_api_helpers import open_api

from cli.main import main
from config import clock
from sinks.kafka import BACKFILL_HEADER, TIER_HEADER, ensure_topics
from sinks.ledger import LEDGER_NAMES
from sinks.postgres import connect

pytestmark = [pytest.mark.integration, pytest.mark.time_sensitive]


def history(hours: int = 60, customers: tuple[str, ...] = ("cust-1", "cust-2", "cust-3"), seed: int = 3,
            tenant: bool = True) -> list[dict]:
    """Every customer's calls of the hours from `hours` ago to 25 hours ago, shuffled: too old
    for an upload (held as late), just right for a backfill."""
    start = clock.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours)
    events = [{"specversion": "1.0", "id": f"h-{c}-{h}-{k}", "source": "legacy", "type": "api.call",
               "subject": c, "time": (start + timedelta(hours=h, minutes=7 * k)).isoformat(),
               **({"tenantid": "acme"} if tenant else {})}
              for c in customers for h in range(hours - 25) for k in range(3)]
    random.Random(seed).shuffle(events)
    return events


def ndjson(events: list[dict]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


def raw_records(settings) -> list[tuple]:
    """(partition, offset, timestamp ms, headers, event) of every raw record."""
    return [(m.partition(), m.offset(), m.timestamp()[1], {k: v.decode() for k, v in m.headers() or ()},
             orjson.loads(m.value())) for m in messages(settings, (settings.topics.raw,))]


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


@pytest.fixture
def api(settings):
    yield from open_api(settings)  # with a tenant (not operator) key of acme


def backfills(settings) -> list[dict]:
    out = CliRunner().invoke(main, ["backfill", "list", "--format", "json"], env=env_of(settings))
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def check_in_order(records: list[tuple], backfill_id: str, stamp_ms: int) -> None:
    """Every record carries the backfill, its time, tier backfill; each customer's are in one
    partition in event-time order."""
    by_customer: dict[str, list[tuple]] = {}
    for partition, offset, ts, headers, event in records:
        assert headers == {TIER_HEADER: "backfill", BACKFILL_HEADER: backfill_id}
        assert ts == stamp_ms
        by_customer.setdefault(event["subject"], []).append((partition, offset, event["time"]))
    for subject, seen in by_customer.items():
        assert len({p for p, _, _ in seen}) == 1, subject
        assert [t for *_, t in seen] == sorted(t for *_, t in seen), subject


def test_upload_backfill_is_recorded_then_produced_in_event_time_order_per_customer(settings, tmp_path):
    events = history(tenant=False)  # the tenant comes from --tenant
    file = tmp_path / "legacy.ndjson"
    file.write_bytes(ndjson(events))
    result = CliRunner().invoke(main, ["upload", str(file), "--backfill", "--tenant", "acme", "--reason",
                                       "usage from the legacy meter, before the cut-over"],
                                env={**env_of(settings), "AFORO_ACTOR": "ops-alice"})
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    times = sorted(e["time"] for e in events)
    assert (report["tenant"], report["actor"], report["events"], report["produced"], report["customers"]) == (
        "acme", "ops-alice", len(events), len(events), 3)
    assert report["reason"] == "usage from the legacy meter, before the cut-over"
    assert report["periods"] == sorted({t[:7] for t in times})
    assert [report["first_event_time"][:19], report["last_event_time"][:19]] == [
        times[0][:19], times[-1][:19]]

    [recorded] = backfills(settings)
    assert {k: recorded[k] for k in ("id", "actor", "reason", "events", "produced", "periods")} == {
        k: report[k] for k in ("id", "actor", "reason", "events", "produced", "periods")}
    records = raw_records(settings)
    assert len(records) == len(events)
    check_in_order(records, report["id"], ms(recorded["created_at"]))


def test_a_backfill_is_all_or_nothing(settings, tmp_path):
    ensure_topics(settings)
    now = clock.now()
    good = history(hours=30)
    bad = [{"id": "no-time", "subject": "cust-1", "type": "api.call", "source": "legacy", "tenantid": "acme"},
           {**good[0], "id": "future", "time": (now + timedelta(minutes=10)).isoformat()},
           {**good[0], "id": "ancient", "time": (now - timedelta(days=91)).isoformat()},
           {**good[0], "id": "foreign", "tenantid": "globex"}]
    file = tmp_path / "mixed.ndjson"
    file.write_bytes(ndjson(good[:5] + bad + good[5:]))
    refused = CliRunner().invoke(main, ["upload", str(file), "--backfill", "--tenant", "acme",
                                        "--reason", "test"], env=env_of(settings))
    assert refused.exit_code == 1
    assert "Error: 4 rows cannot be backfilled, so nothing was: line 6: " in refused.output
    assert refused.output.endswith("  line 9: tenantid 'globex' is not the caller's tenant 'acme'\n")
    assert backfills(settings) == [] and raw_records(settings) == []

    # a closed period: refused whole, naming it
    period = good[0]["time"][:7]
    assert CliRunner().invoke(main, ["period", "close", "--tenant", "acme", "--period", period],
                              env=env_of(settings)).exit_code == 0
    file.write_bytes(ndjson(good))
    refused = CliRunner().invoke(main, ["upload", str(file), "--backfill", "--tenant", "acme",
                                        "--reason", "test"], env=env_of(settings))
    assert refused.exit_code == 1
    assert f"acme {period} (closed " in refused.output and "cannot change a closed period" in refused.output
    assert backfills(settings) == [] and raw_records(settings) == []

    for args, problem in ((["--backfill", "--tenant", "acme"], "needs a reason"),
                          (["--backfill", "--reason", "x"], "--backfill needs --tenant"),
                          (["--reason", "x", "--tenant", "acme"], "--reason goes with --backfill")):
        out = CliRunner().invoke(main, ["upload", str(file), *args], env=env_of(settings))
        assert out.exit_code in (1, 2) and problem in out.output, out.output


def test_backfill_api_needs_an_operator_key_and_records_the_key(settings, api):
    events = history(hours=40, customers=("cust-1", "cust-2"))
    body = ndjson(events)
    params = {"format": "ndjson", "reason": "re-sent after the collector outage", "tenant": "acme"}
    denied = api.client.post("/v1/backfills", params=params, content=body, headers=api.auth)
    assert denied.status_code == 403 and denied.json()["error"] == "forbidden"

    created = CliRunner().invoke(main, ["keys", "create", "--operator"], env=env_of(settings))
    assert created.exit_code == 0, created.output
    key_id, key = (line.split()[-1] for line in created.output.splitlines()[::2])
    listed = CliRunner().invoke(main, ["keys", "list"], env=env_of(settings)).output
    assert f"{key_id}   operator" in listed and f"{api.key_id}   tenant" in listed
    operator = {"Authorization": f"Bearer {key}"}
    assert api.client.post("/v1/backfills", params={"format": "ndjson", "tenant": "acme"}, content=body,
                           headers=operator).status_code == 400  # no reason
    assert api.client.post("/v1/backfills", params={**params, "tenant": ""}, content=body,
                           headers=operator).status_code == 400  # whose history?
    accepted = api.client.post("/v1/backfills", params=params, content=body, headers=operator)
    assert accepted.status_code == 202, accepted.text
    report = accepted.json()
    assert (report["actor"], report["events"], report["produced"], report["customers"]) == (
        f"key:{key_id}", len(events), len(events), 2)
    got = api.client.get(f"/v1/backfills/{report['id']}", params={"tenant": "acme"}, headers=operator)
    assert got.status_code == 200 and got.json()["reason"] == "re-sent after the collector outage"
    assert api.client.get("/v1/backfills/bf_nope", params={"tenant": "acme"},
                          headers=operator).status_code == 404

    check_in_order(raw_records(settings), report["id"], ms(report["created_at"]))
    with connect(settings.database_url) as conn:
        conn.execute("INSERT INTO closed_periods (tenant, period, closed_by, digest, totals)"
                     " VALUES ('acme', %s, 'test', '', '{}')", (events[0]["time"][:7],))
    closed = api.client.post("/v1/backfills", params=params, content=body, headers=operator)
    assert closed.status_code == 409 and closed.json()["error"] == "conflict"


@pytest.mark.skipif("backfill" not in LEDGER_NAMES,
                    reason="waits for the metering flow's side of the backfill contract (ledger column "
                           "`backfill`, the aforo-backfill header skipping the lateness gate)")
def test_backfilled_history_is_rated_and_monitored_as_if_it_had_arrived_on_time(settings, tmp_path):
    """cust-1 has live traffic, so its clock is past the history: the history gets its own
    series; cust-3 has none yet, so the history is its series. Both spikes are seen whole."""
    from flows.metering import run
    from flows.monitoring import run as monitor
    from sinks.alerts import list_alerts
    now = clock.now()
    live = [orjson.dumps({"specversion": "1.0", "id": f"live-{k}", "source": "sdk", "type": "api.call",
                                "subject": "cust-1", "tenantid": "acme",
                                "time": (now - timedelta(minutes=k)).isoformat()}) for k in range(30)]
    send(settings, live)
    run(settings, once=True)

    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=60)
    events = [{"specversion": "1.0", "id": f"h-{c}-{h}-{k}", "source": "legacy", "type": "api.call",
               "subject": c, "tenantid": "acme",
               "time": (start + timedelta(hours=h, seconds=k * 100)).isoformat()}
              for c in ("cust-1", "cust-3") for h in range(24) for k in range(30 if h == 20 else 6)]
    random.Random(8).shuffle(events)
    file = tmp_path / "history.ndjson"
    file.write_bytes(ndjson(events))
    done = CliRunner().invoke(main, ["upload", str(file), "--backfill", "--tenant", "acme",
                                     "--reason", "e2e"], env=env_of(settings))
    assert done.exit_code == 0, done.output
    backfill_id = json.loads(done.output[done.output.index("{"):])["id"]
    run(settings, once=True)
    with connect(settings.database_url) as conn:
        outcomes = conn.execute("SELECT status, tier, backfill, period, count(*) FROM ledger"
                                " WHERE source = 'legacy' GROUP BY 1, 2, 3, 4").fetchall()
    periods = {}
    for e in events:
        periods[e["time"][:7]] = periods.get(e["time"][:7], 0) + 1
    assert sorted(outcomes) == sorted(("accepted", "backfill", backfill_id, p, n) for p, n in periods.items())

    monitor(settings, once=True)
    with connect(settings.database_url) as conn:
        spikes = [(a["customer"], a["window_id"], a["details"]["observed"], a["details"].get("backfill"))
                  for a in list_alerts(conn, tenant="acme") if a["kind"] in ("spike", "dip")]
    hour = (start + timedelta(hours=20)).strftime("%Y-%m-%dT%H:00Z")
    assert sorted(spikes) == [("cust-1", hour, "30", backfill_id), ("cust-3", hour, "30", None)]
