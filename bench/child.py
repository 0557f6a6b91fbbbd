"""A throughput run's flow process: what `aforo run --once` does, timed around the flow alone.

`python -m bench.child REPORT [--workers N] [--processes P]`, with the installation in the
environment (AFORO_*), writes {"seconds", "peak_rss_mb"} to REPORT. A process of its own, so that
its memory and CPU time are the flow's and not the benchmark's; interpreter start-up and imports
are not timed. With --processes > 1 it starts a local Bytewax cluster (`aforo run --processes`),
whose processes' memory it cannot see (peak_rss_mb is then null).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import orjson

import config
from flows.execution import run_local_cluster
from flows.metering import run


def peak_rss_mb() -> float:
    """VmHWM: this process's own peak resident set. (ru_maxrss would carry over the parent's
    peak across fork+exec: a 10 MB child of an 823 MB parent reports 823 MB.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.child")
    parser.add_argument("report", type=Path)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    settings = config.load()
    started = time.perf_counter()
    if args.processes > 1:
        command = [sys.executable, "-c", "from cli.main import main; main()", "run", "--once",
                   "--workers", str(args.workers)]
        if run_local_cluster(command, args.processes, env=dict(os.environ)) != 0:
            sys.exit("a process of the cluster failed")
        peak = None
    else:
        run(settings, once=True, workers=args.workers)
        peak = peak_rss_mb()
    seconds = time.perf_counter() - started
    args.report.write_bytes(orjson.dumps({"seconds": seconds, "peak_rss_mb": peak}))


if __name__ == "__main__":
    main()
