"""The tamper-evident audit trail: every edit, deletion or insertion outside the pipeline shows."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from click.testing import CliRunner
from integration import env_of, periods_of, send

from cli.demo import demo_stream
from cli.main import main
from config import clock
from flows.metering import run
from operators.audit import AUDIT_COLUMNS
from sinks.ledger import LEDGER_NAMES
from sinks.postgres import connect

pytestmark = pytest.mark.integration


def test_every_written_column_is_sealed():
    # the ledger writer's columns are the sealed ones, then the row's place in its chain
    assert (*AUDIT_COLUMNS, "audit_chain", "audit_seq") == LEDGER_NAMES


def test_the_writers_text_is_the_canonical_text_a_verifier_rebuilds():
    """The ledger sink hashes the COPY text it writes; a verifier rebuilds that text from the
    values Postgres (or an export) gives back. They must agree for every kind of record."""
    from datetime import timedelta

    from operators.audit import canonical_fields, canonical_line, normal_row
    from operators.timestamp_gate import to_us
    from schemas.billing import BillingContext, RevenueLine
    from schemas.record import Record, Status
    from sinks.ledger import line_texts, row_text

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    event = {"tenantid": "acme", "source": "a\tb\\c", "id": "e\n1", "type": "t", "subject": "s"}
    rec = Record("raw", "tid/x=", 3, 42, 1_780_000_000_123, b'{"x": 1}\n', key=b"acme/s", tier="sdk",
                 event=event, event_us=1_780_000_000_123_456, status=Status.ACCEPTED, reason=None,
                 detail="line\rbreak", dedup_key='["acme","a","e"]', payload_hash=bytes(16),
                 route="t.enriched", validation_hash="ab" * 32)
    rec.billing = BillingContext("c", "s", "p", 1, "USD", "2026-05")
    rec.lines = [RevenueLine("tokens", {"model": "x\ty"}, Decimal("12.50"), Decimal("100.5"),
                             Decimal("0.0100"), Decimal("0.002"), 1, Decimal(1), Decimal(1), Decimal(1)),
                 RevenueLine("calls", {}, Decimal(1), Decimal(7), Decimal("0"), Decimal("1E-7"),
                             1, Decimal(1), Decimal(1), Decimal(1))]
    as_read = {  # what Postgres returns for the row
        "raw_topic": "raw", "raw_topic_id": "tid/x=", "raw_partition": 3, "raw_offset": 42,
        "raw_key": b"acme/s", "raw": b'{"x": 1}\n',
        "ingested_at": epoch + timedelta(milliseconds=1_780_000_000_123),
        "status": "accepted", "reason": None, "detail": "line\rbreak", "tenantid": "acme",
        "source": "a\tb\\c", "event_id": "e\n1", "type": "t", "subject": "s",
        "event_time": epoch + timedelta(microseconds=1_780_000_000_123_456), "dedup_key": '["acme","a","e"]',
        "payload_hash": bytes(16), "route": "t.enriched", "validation_hash": "ab" * 32, "customer": "c",
        "subscription": "s", "plan": "p", "plan_version": 1, "currency": "USD", "period": "2026-05",
        "revenue": Decimal("0.0100"), "cost": Decimal("0.0020001"), "margin": Decimal("0.0079999"),
        "tier": "sdk", "reinject_of": None, "adjusts_period": None, "backfill": None}
    lines = [{"metric": x.metric, "grp": x.group, "quantity": x.quantity, "total_after": x.total_after,
              "revenue": x.revenue, "cost": x.cost, "margin": x.margin} for x in rec.lines]
    assert row_text(rec) == "\t".join(canonical_fields(as_read))
    assert sorted(line_texts(rec)) == sorted(canonical_line(x) for x in lines)
    exported = normal_row(as_read, lines)  # what an NDJSON export carries
    assert "\t".join(canonical_fields(exported)) == row_text(rec)
    assert to_us(as_read["event_time"]) == exported["event_time"]


def verify(settings, tenant="acme"):
    return CliRunner().invoke(main, ["audit", "verify", "--tenant", tenant], env=env_of(settings))


@pytest.fixture
def demo_lines(settings) -> list[bytes]:
    """The demo stream, metered."""
    lines, _ = demo_stream(clock.now(), normal=800)
    send(settings, lines)
    run(settings, once=True)
    return lines


@pytest.fixture
def metered(settings, demo_lines):
    return settings


def one_row(conn, extra: str = "") -> tuple:
    return conn.execute("SELECT raw_partition, raw_offset, event_id FROM ledger WHERE tenantid = 'acme'"
                        f" AND revenue IS NOT NULL {extra} ORDER BY raw_partition, raw_offset LIMIT 1"
                        ).fetchone()


@pytest.mark.time_sensitive
def test_an_untouched_ledger_verifies_and_so_does_an_applied_replay(metered, demo_lines):
    ok = verify(metered)
    assert ok.exit_code == 0 and ok.output.startswith("OK: acme")
    assert verify(metered, "globex").exit_code == 0
    for period in periods_of(demo_lines):  # by the events' own times: one or two periods
        replayed = CliRunner().invoke(main, ["replay", "--tenant", "acme", "--period", period, "--apply"],
                                      env=env_of(metered))
        assert replayed.exit_code == 0  # identical, so nothing applied; the chain is intact
    assert verify(metered).exit_code == 0


@pytest.mark.parametrize("tamper, why", [
    ("UPDATE ledger SET revenue = revenue + 1 WHERE raw_partition = %s AND raw_offset = %s", "edited"),
    ("UPDATE ledger_lines SET revenue = 0 WHERE raw_partition = %s AND raw_offset = %s", "edited"),
    ("DELETE FROM ledger WHERE raw_partition = %s AND raw_offset = %s", "deleted"),
])
def test_editing_or_deleting_a_row_is_named(metered, tamper, why):
    with connect(metered.database_url) as conn:
        partition, offset, event_id = one_row(conn)
        if tamper.startswith("DELETE"):
            conn.execute("DELETE FROM ledger_lines WHERE raw_partition = %s AND raw_offset = %s",
                         (partition, offset))
        conn.execute(tamper, (partition, offset))
    broken = verify(metered)
    assert broken.exit_code == 1
    assert f"raw {partition}/{offset}" in broken.output and why in broken.output
    if why == "edited":
        assert event_id in broken.output


def test_a_row_inserted_outside_the_pipeline_is_named(metered):
    with connect(metered.database_url) as conn:
        partition, offset, _ = one_row(conn)
        conn.execute("CREATE TEMP TABLE forged AS SELECT * FROM ledger WHERE raw_partition = %s"
                     " AND raw_offset = %s", (partition, offset))
        conn.execute("UPDATE forged SET raw_offset = raw_offset + 1000000, event_id = 'forged',"
                     " id = id + 1000000")
        conn.execute("INSERT INTO ledger OVERRIDING SYSTEM VALUE SELECT * FROM forged")
    broken = verify(metered)
    assert broken.exit_code == 1
    assert f"raw {partition}/{offset + 1000000}" in broken.output and "no audit entry" in broken.output


def test_removing_a_chain_entry_breaks_the_chain(metered):
    with connect(metered.database_url) as conn:
        [chain] = conn.execute("SELECT chain FROM audit_chain WHERE tenant = 'acme' AND seq = 5"
                               " ORDER BY chain LIMIT 1").fetchone()
        conn.execute("DELETE FROM audit_chain WHERE tenant = 'acme' AND chain = %s AND seq = 5", (chain,))
    broken = verify(metered)
    assert broken.exit_code == 1 and f"entry 5 of chain {chain}: missing" in broken.output


def test_rows_resealed_together_join_their_chain_in_raw_order(metered):
    """A replay re-inserts rows without a chain place; they are sealed in raw order whatever
    order Postgres reads them in (here: updated last row first, and read by a scan of the table,
    which meets it first)."""
    from sinks.audit import reseal
    with connect(metered.database_url) as conn:
        partition, = conn.execute("SELECT raw_partition FROM ledger WHERE tenantid = 'acme' GROUP BY"
                                  " raw_partition HAVING count(*) >= 3 ORDER BY 1 LIMIT 1").fetchone()
        offsets = [o for o, in conn.execute("SELECT raw_offset FROM ledger WHERE tenantid = 'acme' AND"
                                            " raw_partition = %s ORDER BY raw_offset LIMIT 3", (partition,))]
        for offset in reversed(offsets):
            conn.execute("UPDATE ledger SET audit_chain = NULL, audit_seq = NULL"
                         " WHERE raw_partition = %s AND raw_offset = %s", (partition, offset))
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off")
            assert reseal(cur, "replay", "l.raw_partition = %s AND l.raw_offset = ANY(%s)",
                          (partition, offsets)) == 3
        appended = [o for o, in conn.execute("SELECT raw_offset FROM audit_chain WHERE action = 'replay'"
                                             " ORDER BY chain, seq")]
    assert appended == offsets


def test_export_with_manifest_verifies_and_a_doctored_export_does_not(metered, tmp_path):
    runner, env = CliRunner(), env_of(metered)
    out = tmp_path / "acme.ndjson"
    exported = runner.invoke(main, ["audit", "export", "--tenant", "acme", "-o", str(out)], env=env)
    assert exported.exit_code == 0, exported.output
    manifest = orjson.loads((tmp_path / "acme.ndjson.manifest.json").read_bytes())
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert manifest["rows"] == len(rows) > 0
    last_of_chain = {row["audit_chain"]: row["chain_hash"] for row in rows}  # rows are in chain order
    assert {c: h["chain_hash"] for c, h in manifest["chain_heads"].items()} == last_of_chain
    with connect(metered.database_url) as conn:
        assert Decimal(manifest["totals"]["api_calls"]["revenue"]) == conn.execute(
            "SELECT sum(x.revenue) FROM ledger_lines x JOIN ledger l USING (raw_topic_id, raw_partition,"
            " raw_offset) WHERE x.metric = 'api_calls' AND l.tenantid = 'acme'").fetchone()[0]
    assert runner.invoke(main, ["audit", "verify", str(out)], env=env).exit_code == 0

    rows[3]["revenue"] = "1000000"  # doctor one row, and the manifest's hash to match the file
    out.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    (tmp_path / "acme.ndjson.manifest.json").unlink()
    broken = runner.invoke(main, ["audit", "verify", str(out)], env=env)
    assert broken.exit_code == 1 and "line 4" in broken.output and "edited" in broken.output

    csv_out = tmp_path / "acme.csv"
    assert runner.invoke(main, ["audit", "export", "--tenant", "acme", "--format", "csv", "--customer",
                                "cust-1", "-o", str(csv_out)], env=env).exit_code == 0
    assert csv_out.read_text().startswith("raw_topic,raw_topic_id")
