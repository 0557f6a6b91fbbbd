"""The metering flow end to end on a real broker and a real Postgres."""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from datetime import UTC, datetime

import orjson
import pytest
from click.testing import CliRunner
from integration import env_of, ledger, outcomes, routed, send

from cli.demo import demo_stream
from cli.main import main
from flows.metering import run

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("workers", [1, 2])
def test_mixed_stream_lands_every_record_in_its_status_exactly_once(settings, workers):
    lines, expected = demo_stream(datetime.now(UTC), normal=9_700)
    assert send(settings, lines) == len(lines) >= 10_000

    run(settings, once=True, workers=workers)

    assert outcomes(settings) == Counter(expected)
    rows = ledger(settings)
    assert len(rows) == len(lines)
    # every raw record also landed on exactly one output topic, the one its status routes to
    topics = routed(settings)
    assert len(topics) == len(lines)
    t = settings.topics
    route_of = {"accepted": t.enriched, "duplicate": t.rejected, "rejected": t.rejected,
                "late": t.held, "unresolved": t.held}
    for partition, offset, status, *_ in rows:
        assert topics[f"{t.raw}/{partition}/{offset}"] == {route_of[status]}

    # a second run resumes at the end: nothing new, nothing changed
    run(settings, once=True, workers=workers)
    assert ledger(settings) == rows


def test_reprocessing_from_scratch_changes_nothing(settings):
    """Recovery state lost (or a deliberate reprocess): every record is read again. Originals
    must recognise their own claims, not become duplicates of themselves."""
    lines, expected = demo_stream(datetime.now(UTC), normal=1_000)
    send(settings, lines)
    run(settings, once=True)
    before = ledger(settings)

    shutil.rmtree(settings.recovery_dir)
    run(settings, once=True)

    assert ledger(settings) == before
    assert outcomes(settings) == Counter(expected)


def test_duplicates_across_separate_runs_are_caught(settings):
    event = {"specversion": "1.0", "id": "e-1", "source": "sdk", "type": "api.call",
             "subject": "cust-1", "time": datetime.now(UTC).isoformat(), "tenantid": "acme"}
    send(settings, [orjson.dumps(event)])
    run(settings, once=True)
    # a new process (fresh cache) sees the retry: the durable claim index remembers the key
    shutil.rmtree(settings.recovery_dir)  # forces a fresh process state but the same ledger
    send(settings, [orjson.dumps(event), orjson.dumps({**event, "type": "other"})])
    run(settings, once=True)
    assert [r[2:4] for r in ledger(settings)] == [
        ("accepted", None), ("duplicate", "same_payload"), ("duplicate", "conflict")]


def test_poison_records_are_rejected_and_never_stall_their_partition(settings):
    settings = dataclasses.replace(settings, raw_partitions=1)  # poison and good share a partition
    good = {"specversion": "1.0", "id": "ok", "source": "sdk", "type": "api.call",
            "subject": "cust-1", "time": datetime.now(UTC).isoformat(), "tenantid": "acme"}
    poison = [
        (b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}', "too_large"),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "malformed"),  # nesting beyond the parser's limit
        (b'{"id": "\xff\xfe"}', "malformed"),  # invalid UTF-8
        (b"\x00\x00\x00", "malformed"),
        (b"", "malformed"),
        (orjson.dumps({**good, "id": "nul\u0000inside"}), "schema"),
        (orjson.dumps({**good, "id": "x", "data": {"note": "a NUL \u0000 in data is fine"}}), None),
    ]
    send(settings, [raw for raw, _ in poison] + [orjson.dumps(good)])

    run(settings, once=True)

    rows = ledger(settings)
    assert [r[3] for r in rows] == [reason for _, reason in poison] + [None]
    assert [r[2] for r in rows][-2:] == ["accepted", "accepted"]


def test_export_and_show(settings):
    lines, _ = demo_stream(datetime.now(UTC), normal=200)
    send(settings, lines)
    run(settings, once=True)
    runner = CliRunner()
    env = env_of(settings)

    out = runner.invoke(main, ["events", "export", "--status", "duplicate"], env=env)
    assert out.exit_code == 0, out.output
    dupes = [orjson.loads(line) for line in out.output.splitlines()]
    assert len(dupes) == 5 and all(d["status"] == "duplicate" for d in dupes)
    for column in ("tenantid", "source", "id", "type", "subject", "time", "status", "reason",
                   "ingested_at", "topic", "partition", "offset", "validation_hash", "customer",
                   "subscription", "metric", "period", "quantity", "revenue", "cost", "margin"):
        assert column in dupes[0]
    assert {d["tier"] for d in dupes} == {"sdk"}  # `aforo send` is the SDK-style door

    csv_out = runner.invoke(main, ["events", "export", "--format", "csv", "--tenant", "acme"], env=env)
    assert csv_out.exit_code == 0
    header, *body = csv_out.output.splitlines()
    assert header.startswith("tenantid,source,id,type") and body
    assert all(line.startswith("acme,") for line in body)

    d = dupes[0]
    shown = runner.invoke(main, ["events", "show", "--tenant", d["tenantid"], "--source",
                                 d["source"], "--id", d["id"]], env=env)
    assert shown.exit_code == 0, shown.output
    assert '"status": "accepted"' in shown.output and '"status": "duplicate"' in shown.output
    missing = runner.invoke(main, ["events", "show", "--tenant", "x", "--source", "y", "--id", "z"],
                            env=env)
    assert missing.exit_code == 1 and "no event" in missing.output
