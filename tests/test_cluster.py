"""Scale-out: a Bytewax cluster of processes, each with several workers, writes the very ledger a
single worker writes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime

import pytest
from conftest import new_database
from integration import env_of, ledger, ledger_lines, outcomes, revenue_totals, send

from cli.demo import demo_stream
from flows.metering import run

pytestmark = pytest.mark.integration


def test_two_processes_of_two_workers_write_the_ledger_of_one_worker(settings, stack, template_db, tmp_path):
    lines, expected = demo_stream(datetime.now(UTC), normal=6_000)
    send(settings, lines)
    assert settings.raw_partitions == 8
    # The same raw topic, decided into two databases: by one worker, and by a cluster.
    reference = dataclasses.replace(settings, home=tmp_path / "one-worker",
                                    database_url_env=new_database(stack, template_db))
    run(reference, once=True, workers=1)

    done = subprocess.run([sys.executable, "-c", "from cli.main import main; main()", "run", "--once",
                           "--processes", "2", "--workers", "2"],
                          env=env_of(settings), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    assert outcomes(settings) == Counter(expected)
    assert ledger(settings) == ledger(reference)
    assert ledger_lines(settings) == ledger_lines(reference)
    assert revenue_totals(settings) == revenue_totals(reference)


def test_a_process_of_a_cluster_needs_all_its_addresses(settings):
    bad = subprocess.run([sys.executable, "-c", "from cli.main import main; main()", "run", "--once",
                          "--process-id", "2", "--addresses", "127.0.0.1:1,127.0.0.1:2"],
                         env=env_of(settings), capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert "process id 2 is not an index into 2 addresses" in bad.stderr
    assert "Traceback" not in bad.stderr
