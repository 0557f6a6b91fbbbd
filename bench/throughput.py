"""End-to-end throughput: the flow in --once mode from raw topic to committed ledger and revenue.

The events are produced before the clock starts; the flow then runs in a process of its own
(bench/child.py) so that its peak RSS can be read, and only `run(settings, once=True)` is timed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

import config
from bench.events import Stream
from bench.workspace import REPO, Workspace, environment, excerpt, ledger_summary, log, produce
from sinks.postgres import connect


def run_child(s: config.Settings, workers: int) -> dict[str, float]:
    """Run the flow once over the installation in a child process: {"seconds", "peak_rss_mb"}."""
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        done = subprocess.run(
            [sys.executable, "-m", "bench.child", report.name, "--workers", str(workers)],
            env=environment(s), cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the flow failed (exit {done.returncode}):\n{excerpt(done.stderr)}")
        return orjson.loads(Path(report.name).read_bytes())


def revenue_check(s: config.Settings) -> dict[str, Any]:
    """Revenue totals per currency, and whether the revenue table adds up to the ledger."""
    with connect(s.database_url) as conn:
        totals = {c: str(v) for c, v in conn.execute(
            "SELECT currency, sum(revenue) FROM revenue GROUP BY 1 ORDER BY 1")}
        ledger = {c: str(v) for c, v in conn.execute(
            "SELECT currency, sum(revenue) FROM ledger WHERE revenue IS NOT NULL GROUP BY 1 ORDER BY 1")}
        rows = conn.execute("SELECT count(*) FROM revenue").fetchone()[0]
    return {"revenue_rows": rows, "revenue_totals": totals, "revenue_matches_ledger": totals == ledger}


def measure_throughput(ws: Workspace, stream: Stream, workers: int) -> dict[str, Any]:
    n = len(stream.lines)
    with ws.installation(f"throughput_w{workers}") as s:
        log(f"throughput, {workers} worker(s): producing {n:,} events")
        produce(s, stream.lines)
        log(f"throughput, {workers} worker(s): running the flow once over them")
        child = run_child(s, workers)
        ledger = ledger_summary(s)
        revenue = revenue_check(s)
    figures = {
        "workers": workers, "events": n, "seconds": child["seconds"],
        "events_per_s": n / child["seconds"], "peak_rss_mb": child["peak_rss_mb"], **ledger,
        "conserved": ledger["ledger_rows"] == n,
        "counts_match_expected": ledger["status_counts"] == stream.expected(), **revenue,
    }
    log(f"throughput, {workers} worker(s): {figures['events_per_s']:,.0f} events/s")
    return figures
