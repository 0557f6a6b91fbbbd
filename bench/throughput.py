"""End-to-end throughput: the flow in --once mode from raw topic to committed ledger and revenue.

The events are produced before the clock starts; the flow then runs in a process of its own
(bench/child.py) and only the flow is timed. CPU time is read per component over the run: the
flow's process (with its cluster processes, if any: their CPU is reaped into its rusage), the
Postgres server (the postmaster and its backends) and the broker, as µs per event.
"""

from __future__ import annotations

import os
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


def run_child(ws: Workspace, s: config.Settings, workers: int, processes: int) -> dict[str, Any]:
    """Run the flow once over the installation in a child process: {"seconds", "peak_rss_mb",
    "cpu_us": {component: µs of CPU}}."""
    with tempfile.NamedTemporaryFile(suffix=".json") as report, \
            tempfile.TemporaryFile() as stderr:
        before = ws.service_cpu_s()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.child", report.name, "--workers", str(workers),
             "--processes", str(processes)],
            env=environment(s), cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        after = ws.service_cpu_s()
        if proc.returncode != 0:
            stderr.seek(0)
            raise RuntimeError(f"the flow failed (exit {proc.returncode}):\n"
                               f"{excerpt(stderr.read().decode(errors='replace'))}")
        result = orjson.loads(Path(report.name).read_bytes())
    cpu = {"flow": usage.ru_utime + usage.ru_stime}
    for name in before:
        cpu[name] = after[name] - before[name]
    result["cpu_s"] = cpu
    return result


def revenue_check(s: config.Settings) -> dict[str, Any]:
    """Revenue totals per currency, and whether the revenue table adds up to the ledger."""
    with connect(s.database_url) as conn:
        totals = {c: str(v) for c, v in conn.execute(
            "SELECT currency, sum(revenue) FROM revenue GROUP BY 1 ORDER BY 1")}
        ledger = {c: str(v) for c, v in conn.execute(
            "SELECT currency, sum(revenue) FROM ledger WHERE revenue IS NOT NULL GROUP BY 1 ORDER BY 1")}
        rows = conn.execute("SELECT count(*) FROM revenue").fetchone()[0]
    return {"revenue_rows": rows, "revenue_totals": totals, "revenue_matches_ledger": totals == ledger}


def measure_throughput(ws: Workspace, stream: Stream, workers: int = 1, processes: int = 1) -> dict[str, Any]:
    n = len(stream.lines)
    label = f"{processes} process(es) x {workers} worker(s)"
    with ws.installation(f"throughput_p{processes}_w{workers}_{n}") as s:
        log(f"throughput, {label}: producing {n:,} events")
        produce(s, stream.lines)
        log(f"throughput, {label}: running the flow once over them")
        child = run_child(ws, s, workers, processes)
        ledger = ledger_summary(s)
        revenue = revenue_check(s)
    cpu_us = {name: seconds / n * 1e6 for name, seconds in child["cpu_s"].items()}
    figures = {
        "workers": workers, "processes": processes, "events": n, "seconds": child["seconds"],
        "events_per_s": n / child["seconds"], "peak_rss_mb": child["peak_rss_mb"],
        "cpu_us_per_event": cpu_us, "cpu_us_per_event_total": sum(cpu_us.values()), **ledger,
        "conserved": ledger["ledger_rows"] == n,
        "counts_match_expected": ledger["status_counts"] == stream.expected(), **revenue,
    }
    log(f"throughput, {label}: {figures['events_per_s']:,.0f} events/s, "
        + ", ".join(f"{k} {v:.0f}" for k, v in cpu_us.items()) + " µs CPU per event")
    return figures
