"""Latency: the flow running continuously (`aforo run`), events offered at a fixed rate.

Ingestion-to-ledger latency of a row is `processed_at - ingested_at`: the raw record's Kafka
timestamp (stamped by the producer when it is sent) to the start of the transaction that wrote
its ledger row (`processed_at` defaults to now(), the transaction's start time, so the commit
itself, a few milliseconds, is not included).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

import config
from bench.events import Stream
from bench.workspace import Workspace, environment, excerpt, log, produce
from sinks.kafka import ensure_topics, kafka_config, record_key
from sinks.kafka import produce as produce_one
from sinks.postgres import connect

AFORO = str(Path(sys.executable).with_name("aforo"))
WARMUP_EVENTS = 200  # through the flow before the clock starts: connections, catalog, caches
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
TICK_S = 0.01  # the producer sends what is due every 10 ms
# Measured beside it: the same rate offered every 50 ms. On the embedded broker the number of
# produce batches is what costs (tansu's fetch lists every batch a partition holds), so this
# separates the flow's own latency from the broker's (bench/README.md, latency).
COARSE_TICK_S = 0.05
_PERCENTILES = """
SELECT count(*), percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ms), max(ms)
FROM (SELECT (extract(epoch FROM processed_at - ingested_at) * 1000)::float8 AS ms
      FROM ledger WHERE ingested_at >= %s) AS latency
"""


@contextlib.contextmanager
def _flow(s: config.Settings) -> Iterator[subprocess.Popen]:
    """`aforo run` in the background; SIGTERM at the end, SIGKILL if that is not enough."""
    log_file = s.home / "flow.log"
    s.home.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as out:
        proc = subprocess.Popen([AFORO, "run"], env=environment(s), stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ledger_rows(s: config.Settings) -> int:
    with connect(s.database_url) as conn:
        return conn.execute("SELECT count(*) FROM ledger").fetchone()[0]


def _wait_for_rows(s: config.Settings, proc: subprocess.Popen, n: int, timeout: float) -> bool:
    """Whether the ledger reached n rows within the timeout; fails if the flow died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = (s.home / "flow.log").read_text(errors="replace")
            raise RuntimeError(f"`aforo run` exited with {proc.returncode}:\n{excerpt(output)}")
        if _ledger_rows(s) >= n:
            return True
        time.sleep(0.2)
    return False


def paced_send(s: config.Settings, lines: list[bytes], rate: float, tick_s: float = TICK_S) -> float:
    """Offer lines at `rate` per second, in ticks; returns the seconds it took to offer them."""
    producer = Producer(kafka_config(s, "producer"))
    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    started = time.perf_counter()
    sent = 0
    while sent < len(lines):
        due = min(len(lines), int((time.perf_counter() - started) * rate) + 1)
        for line in lines[sent:due]:
            produce_one(producer, s.topics.raw, line, key=record_key(line), on_delivery=on_delivery)
        sent = due
        producer.poll(0)
        time.sleep(tick_s)
    offered_for = time.perf_counter() - started
    if producer.flush(30) != 0 or errors:
        raise RuntimeError(f"events not acknowledged by the broker: {errors[:3]}")
    return offered_for


def _percentiles(s: config.Settings, since: datetime) -> dict[str, Any]:
    with connect(s.database_url) as conn:
        rows, (p50, p95, p99), worst = conn.execute(_PERCENTILES, (since,)).fetchone()
    return {"rows_measured": rows, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "max_ms": worst}


def measure_latency(ws: Workspace, stream: Stream, rate: float, seconds: float,
                    tick_s: float = TICK_S) -> dict[str, Any]:
    """Offer rate * seconds events from the stream (after WARMUP_EVENTS) to a running flow, what
    is due every tick_s."""
    lines = stream.lines[WARMUP_EVENTS:WARMUP_EVENTS + int(rate * seconds)]
    with ws.installation(f"latency_{tick_s * 1000:.0f}ms") as s:
        ensure_topics(s)
        with _flow(s) as proc:
            log("latency: `aforo run` started; warming it up")
            produce(s, stream.lines[:WARMUP_EVENTS])
            if not _wait_for_rows(s, proc, WARMUP_EVENTS, START_TIMEOUT_S):
                raise RuntimeError(f"the flow wrote no ledger rows within {START_TIMEOUT_S} s")
            # Kafka timestamps are whole milliseconds: cut `since` to the millisecond as well
            now = datetime.now(UTC)
            since = now.replace(microsecond=now.microsecond // 1000 * 1000)
            log(f"latency: offering {len(lines):,} events at {rate:,.0f}/s every {tick_s * 1000:.0f} ms")
            offered_for = paced_send(s, lines, rate, tick_s)
            # a flow slower than the offered rate drains its backlog afterwards: give it time
            drained = _wait_for_rows(s, proc, WARMUP_EVENTS + len(lines), max(60.0, 2 * seconds))
        figures = {"rate": rate, "seconds": seconds, "tick_ms": tick_s * 1000, "sent": len(lines),
                   "achieved_rate": len(lines) / offered_for, "drained": drained,
                   **_percentiles(s, since)}
    log(f"latency: p50 {figures['p50_ms']:.0f} ms, p99 {figures['p99_ms']:.0f} ms")
    return figures
