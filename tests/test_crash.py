"""kill -9 at any moment changes nothing in the final ledger."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import new_database
from integration import env_of, ledger, ledger_lines, outcomes, revenue_totals, routed, send

from cli.demo import demo_stream
from flows.metering import run
from sinks.postgres import connect

pytestmark = pytest.mark.integration

AFORO = str(Path(sys.executable).parent / "aforo")


def ledger_count(settings) -> int:
    with connect(settings.database_url) as conn:
        return conn.execute("SELECT count(*) FROM ledger").fetchone()[0]


def test_repeated_kill_9_mid_stream_gives_the_ledger_of_an_uninterrupted_run(
        settings, stack, template_db, tmp_path):
    # small batches and short epochs: many snapshots and many places to die between them
    settings = dataclasses.replace(settings, batch_size=300, epoch_interval_s=0.2)
    lines, expected = demo_stream(datetime.now(UTC), normal=20_000)
    send(settings, lines)
    total = len(lines)

    reference = dataclasses.replace(settings, home=tmp_path / "reference",
                                    database_url_env=new_database(stack, template_db))
    run(reference, once=True)
    assert outcomes(reference) == Counter(expected)

    env = env_of(settings)
    kills = 0
    # die during start-up, then at several depths into the stream
    for threshold in (0, total // 20, total // 4, total // 2, total * 3 // 4, total * 9 // 10):
        proc = subprocess.Popen([AFORO, "run", "--once"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if (threshold == 0 and time.monotonic() > deadline - 119.7) or \
                    (threshold and ledger_count(settings) >= threshold):
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.01)
        proc.wait()
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read().decode()[-3000:]
        if proc.returncode == 0:
            break
    assert kills >= 3, "the stream finished before the worker could be killed often enough"

    for _ in range(10):  # restart until done
        if subprocess.run([AFORO, "run", "--once"], env=env, capture_output=True).returncode == 0:
            break
    assert ledger(settings) == ledger(reference)
    # running totals were recovered with the flow: not one marginal revenue differs
    assert len(ledger_lines(reference)) > total // 2
    assert ledger_lines(settings) == ledger_lines(reference)
    assert revenue_totals(settings) == revenue_totals(reference)
    assert outcomes(settings) == Counter(expected)
    # outputs may repeat after a crash (at least once), but never on two different topics
    topics = routed(settings)
    assert len(topics) == total and all(len(t) == 1 for t in topics.values())
