"""The dispute export, measured: one invoice line of 124,000 events, traced to its ledger rows with
their validation hashes and audit entries (`aforo invoice trace`), then checked offline
(`aforo audit verify FILE`).

    python -m bench.billing_trace [--events 124000]

Runs on a throwaway embedded stack (or the services AFORO_*_URL name). The events are one customer's
api calls spread over a past month, each ingested on time; the flow meters them, the bill run
settles the month, and the two commands are timed as an operator runs them (child processes, so
start-up is included). Prints the figures and writes them as JSON to stdout's last line.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

import config
from cli.demo import demo_catalog, send_timed
from flows.billing import bill_run
from flows.metering import run
from schemas.catalog import Catalog
from sinks.catalog import apply_catalog
from sinks.postgres import connect, migrate

PERIOD_START = datetime(2026, 3, 1, tzinfo=UTC)
AFORO = str(Path(sys.executable).parent / "aforo")


def _lines(n: int) -> list[tuple[bytes, datetime]]:
    """n api calls over March 2026, sent an hour at a time, each hour ingested right after it ends."""
    hours = 31 * 24
    out = []
    for i in range(n):
        when = PERIOD_START + timedelta(hours=i * hours // n, seconds=i % 3600)
        out.append(orjson.dumps({"specversion": "1.0", "id": f"dispute-{i}", "source": "bench/trace",
                                 "type": "api.call", "subject": "cust-1", "tenantid": "acme",
                                 "time": when.isoformat().replace("+00:00", "Z"), "data": {}}))
    clock = PERIOD_START + timedelta(days=33)
    out.append(orjson.dumps({"specversion": "1.0", "id": "dispute-clock", "source": "bench/trace",
                             "type": "api.call", "subject": "cust-3", "tenantid": "acme",
                             "time": clock.isoformat().replace("+00:00", "Z"), "data": {}}))
    return [(line, PERIOD_START + timedelta(hours=(i * hours // n) + 1) if i < n else clock)
            for i, line in enumerate(out)]


def _timed(args: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, the child's CPU seconds: what a busy machine inflates less, its output)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout.strip()


def measure(settings: config.Settings, events: int, workdir: Path) -> dict:
    migrate(settings.database_url)
    with connect(settings.database_url) as conn:
        apply_catalog(conn, Catalog.model_validate(demo_catalog()))
    started = time.perf_counter()
    send_timed(settings, _lines(events))
    sent = time.perf_counter() - started
    started = time.perf_counter()
    run(settings, once=True)
    metered = time.perf_counter() - started
    started = time.perf_counter()
    report = bill_run(settings, "acme", "2026-03", customer="cust-1", deliver=False)
    billed = time.perf_counter() - started
    [outcome] = report.outcomes
    line = outcome.invoice.lines[0]
    env = {**os.environ, **settings.to_env()}
    out = workdir / "line1.ndjson"
    trace_s, trace_cpu, trace_out = _timed(
        [AFORO, "invoice", "trace", outcome.invoice.number, "--line", "1", "-o", str(out)], env)
    verify_s, verify_cpu, verify_out = _timed([AFORO, "audit", "verify", str(out)], env)
    return {"load_average": os.getloadavg(), "events": events, "line_events": line.events,
            "line_usage_amount": str(line.usage_amount),
            "send_s": round(sent, 1), "meter_s": round(metered, 1), "bill_run_s": round(billed, 2),
            "trace_export_s": round(trace_s, 2), "trace_export_cpu_s": round(trace_cpu, 2),
            "trace_file_mb": round(out.stat().st_size / 2**20, 1),
            "verify_s": round(verify_s, 2), "verify_cpu_s": round(verify_cpu, 2), "trace_output": trace_out,
            "verify_output": verify_out[:120]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=124_000)
    args = parser.parse_args()
    base = config.load()
    with tempfile.TemporaryDirectory(prefix="aforo-trace-bench-") as tmp:
        if base.external:
            figures = measure(base, args.events, Path(tmp))
        else:
            from stack.embedded import temporary
            with temporary(base, Path(tmp) / "home") as settings:
                figures = measure(settings, args.events, Path(tmp))
    for k, v in figures.items():
        print(f"{k:<20} {v}", file=sys.stderr)
    print(orjson.dumps(figures).decode())


if __name__ == "__main__":
    main()
