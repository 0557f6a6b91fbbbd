"""A throughput run's worker process: what `aforo run --once` does, timed around the flow alone.

`python -m bench.child REPORT [--workers N]`, with the installation in the environment (AFORO_*),
writes {"seconds", "peak_rss_mb"} to REPORT. A process of its own, so that its peak RSS is the
flow's and not the benchmark's; interpreter start-up and imports are not timed.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import orjson

import config
from flows.metering import run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.child")
    parser.add_argument("report", type=Path)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    settings = config.load()
    started = time.perf_counter()
    run(settings, once=True, workers=args.workers)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    args.report.write_bytes(orjson.dumps({"seconds": seconds, "peak_rss_mb": peak_kib / 1024}))


if __name__ == "__main__":
    main()
