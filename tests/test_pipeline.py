"""The metering flow end to end on a real broker and a real Postgres."""

from __future__ import annotations

import base64
import dataclasses
import random
from collections import Counter
from datetime import UTC, datetime

import orjson
import pytest
from click.testing import CliRunner
from conftest import new_database
from integration import env_of, ledger, ledger_lines, outcomes, revenue_totals, routed, send

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


def test_running_totals_and_progress_survive_losing_every_local_state(settings, stack, template_db, tmp_path):
    """A flow stopped, moved to a machine with an empty home (no recovery directory, no caches)
    and started again must price the rest of the stream exactly as one uninterrupted run: the
    ledger is its progress and its running totals are durable."""
    first, rest = demo_stream(datetime.now(UTC), normal=1_500, seed=1)[0], demo_stream(
        datetime.now(UTC), normal=1_500, seed=2)[0]
    reference = dataclasses.replace(settings, home=tmp_path / "reference",
                                    database_url_env=new_database(stack, template_db),
                                    topic_prefix=settings.topic_prefix + "r")
    send(reference, first + rest)
    run(reference, once=True)

    send(settings, first)
    run(settings, once=True)
    elsewhere = dataclasses.replace(settings, home=tmp_path / "another-machine")
    run(elsewhere, once=True)  # nothing new: it resumes where the ledger ends
    assert len(ledger(settings)) == len(first)
    send(settings, rest)
    run(elsewhere, once=True)

    # Offsets may differ (the broker numbers each produce request's batch) but each partition
    # holds the same keyed records in the same order (unkeyed, unparsable ones land anywhere);
    # output topics have their own prefix, and so the validation hashes differ.
    def lines(s):
        return [(r[0], *r[2:]) for r in ledger_lines(s)]

    def decided(s):
        return Counter((*r[2:4], r[5], *r[8:]) for r in ledger(s))  # details name offsets

    assert lines(settings) == lines(reference)
    assert revenue_totals(settings) == revenue_totals(reference)
    assert decided(settings) == decided(reference)


def test_duplicates_across_separate_runs_are_caught(settings):
    event = {"specversion": "1.0", "id": "e-1", "source": "sdk", "type": "api.call",
             "subject": "cust-1", "time": datetime.now(UTC).isoformat(), "tenantid": "acme"}
    send(settings, [orjson.dumps(event)])
    run(settings, once=True)
    # a new process sees the retry: the durable claim index remembers the key
    send(settings, [orjson.dumps(event), orjson.dumps({**event, "type": "other"})])
    run(settings, once=True)
    assert [r[2:4] for r in ledger(settings)] == [
        ("accepted", None), ("duplicate", "same_payload"), ("duplicate", "conflict")]


def test_poison_records_are_rejected_and_never_stall_their_partition(settings):
    settings = dataclasses.replace(settings, raw_partitions=1)  # poison and good share a partition
    good = {"specversion": "1.0", "id": "ok", "source": "sdk", "type": "api.call",
            "subject": "cust-1", "time": datetime.now(UTC).isoformat(), "tenantid": "acme"}
    long = base64.b64encode(random.Random(7).randbytes(3000)).decode()  # 4,000 bytes Postgres cannot compress
    poison = [
        (b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}', "too_large"),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "malformed"),  # nesting beyond the parser's limit
        (b'{"id": "\xff\xfe"}', "malformed"),  # invalid UTF-8
        (b"\x00\x00\x00", "malformed"),
        # a lone surrogate escape: JSON's grammar allows it, but no string can hold it (the flow
        # crashed on it, at the idempotency key or the payload hash, and again on every restart)
        (orjson.dumps({**good, "id": "?"}).replace(b'"?"', b'"lone \\ud800"'), "malformed"),
        (orjson.dumps({**good, "id": "y", "data": {"m": "?"}}).replace(b'"?"', b'"\\udfff"'), "malformed"),
        (b"", "malformed"),
        # too long for the ledger's index of (tenantid, source, id), or for the dedup claims' key:
        # each stalled the partition, its write failing on every retry
        (orjson.dumps({**good, "id": long}), "schema"),
        (orjson.dumps({**good, "source": long, "time": None}), "schema"),  # rejected for its time
        (orjson.dumps({**good, "tenantid": long}), "schema"),
        (orjson.dumps({**good, "id": "\u0001" * 700}), "schema"),  # 4,200 bytes in the key
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
