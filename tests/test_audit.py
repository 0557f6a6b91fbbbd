"""The tamper-evident audit trail: every edit, deletion or insertion outside the pipeline shows."""

from __future__ import annotations

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
    assert AUDIT_COLUMNS == LEDGER_NAMES


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
        conn.execute("DELETE FROM audit_chain WHERE tenant = 'acme' AND seq = 5")
    broken = verify(metered)
    assert broken.exit_code == 1 and "entry 5: missing" in broken.output


def test_export_with_manifest_verifies_and_a_doctored_export_does_not(metered, tmp_path):
    runner, env = CliRunner(), env_of(metered)
    out = tmp_path / "acme.ndjson"
    exported = runner.invoke(main, ["audit", "export", "--tenant", "acme", "-o", str(out)], env=env)
    assert exported.exit_code == 0, exported.output
    manifest = orjson.loads((tmp_path / "acme.ndjson.manifest.json").read_bytes())
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert manifest["rows"] == len(rows) > 0
    assert manifest["chain_head"]["chain_hash"] == rows[-1]["chain_hash"]
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
