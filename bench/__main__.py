"""`python -m bench [--events N] [--quick] [--skip a,b] [--out DIR]`: measure, print, record.

Every measurement runs in an installation of its own (bench/workspace.py) on one stack started
for the run. Progress goes to stderr, the results table to stdout, every figure to
<out>/<UTC timestamp>.json and <out>/latest.json. A measurement that fails is recorded under
`errors` and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.baseline import measure_baseline
from bench.ceilings import measure_ceilings
from bench.events import generate
from bench.latency import COARSE_TICK_S, WARMUP_EVENTS, measure_latency
from bench.stages import measure_stages
from bench.throughput import measure_throughput
from bench.workspace import REPO, Workspace, excerpt, log, open_workspace

Measure = Callable[[], dict[str, Any]]  # one measurement: its figures
SECTIONS = ("latency", "throughput", "scaling", "baseline", "ceilings", "stages", "memory")


@dataclass(frozen=True)
class Sizes:
    events: int
    baseline_events: int
    profile_events: int
    memory_events: int
    latency_rate: float
    latency_seconds: float

    @classmethod
    def of(cls, *, quick: bool, events: int | None) -> Sizes:
        if quick:  # a smoke run: every measurement, small
            n = events or 3_000
            return cls(n, min(n, 1_000), min(n, 3_000), n, 500, 5)
        n = events or 200_000
        return cls(n, min(n, 20_000), min(n, 20_000), 1_000_000, 5_000, 60)


def _measures(ws: Workspace, sizes: Sizes) -> dict[str, Measure]:
    log(f"generating {sizes.events:,} events")
    stream = generate(sizes.events, seed=1)

    def latency() -> dict[str, Any]:
        offered = int(sizes.latency_rate * sizes.latency_seconds)
        log(f"generating {offered:,} more events for the latency run")
        events = generate(WARMUP_EVENTS + offered, seed=2)
        figures = measure_latency(ws, events, sizes.latency_rate, sizes.latency_seconds)
        figures["coarse_ticks"] = measure_latency(ws, events, sizes.latency_rate, sizes.latency_seconds,
                                                  COARSE_TICK_S)
        return figures

    def scaling() -> dict[str, Any]:
        return {"workers_2": measure_throughput(ws, stream, workers=2),
                "processes_2": measure_throughput(ws, stream, processes=2)}

    def memory() -> dict[str, Any]:
        log(f"generating {sizes.memory_events:,} events for the memory run")
        return measure_throughput(ws, generate(sizes.memory_events, seed=3))

    # Latency first, on a fresh broker: tansu never forgets an idempotent producer and rewrites
    # its metadata, producers included, on every produce batch, so a live measurement should not
    # pay for the producers of the measurements before it.
    return {
        "latency": latency,
        "throughput": lambda: measure_throughput(ws, stream),
        "scaling": scaling,
        "baseline": lambda: measure_baseline(ws, stream, sizes.baseline_events),
        "ceilings": lambda: measure_ceilings(ws, stream),
        "stages": lambda: measure_stages(ws, stream, sizes.profile_events),
        "memory": memory,
    }


def run(sizes: Sizes, skip: set[str]) -> dict[str, Any]:
    started = datetime.now(UTC)
    clock = time.monotonic()
    results: dict[str, Any] = {
        "started_at": started.isoformat(), "git": report.git_state(), "machine": report.machine(),
        "load_average_at_start": os.getloadavg(), "sizes": asdict(sizes), "skipped": sorted(skip),
    }
    errors: dict[str, str] = {}
    with open_workspace() as ws:
        results["stack"] = {"services": "external" if ws.external else "embedded",
                            "postgres": ws.postgres_settings()}
        for name, measure in _measures(ws, sizes).items():
            results[name] = None if name in skip else _attempt(name, measure, errors)
    results["errors"] = errors
    results["figures"] = report.headline(results)
    results["targets"] = report.targets(results["figures"])
    results["load_average_at_end"] = os.getloadavg()
    results["finished_at"] = datetime.now(UTC).isoformat()
    results["duration_s"] = time.monotonic() - clock
    return results


def _attempt(name: str, measure: Measure, errors: dict[str, str]) -> dict[str, Any] | None:
    """A failed measurement is recorded and the others still run: one broken figure should not
    cost the other minutes of a run."""
    try:
        return measure()
    except Exception:
        errors[name] = excerpt(traceback.format_exc())
        log(f"{name} FAILED:\n{errors[name]}")
        return None


def _positive(value: str) -> int:
    n = int(value)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return n


def _skip_list(value: str) -> set[str]:
    names = {name.strip() for name in value.split(",") if name.strip()}
    unknown = names - set(SECTIONS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown measurement(s) {sorted(unknown)}; "
                                         f"choose from {', '.join(SECTIONS)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure Aforo on a stack of its own; print the results and record them as JSON.")
    parser.add_argument("--events", type=_positive,
                        help="events per throughput run (default 200000; 3000 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small sizes everywhere: a smoke run")
    parser.add_argument("--skip", type=_skip_list, default=set(),
                        help=f"comma-separated measurements to leave out: {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results",
                        help="directory for the JSON results (default bench/results)")
    args = parser.parse_args()
    results = run(Sizes.of(quick=args.quick, events=args.events), args.skip)
    stamp = datetime.fromisoformat(results["started_at"]).strftime("%Y%m%dT%H%M%SZ")
    path = report.write(results, args.out, stamp)
    print(report.table(results))
    log(f"results written to {path} (and latest.json); the run took {results['duration_s']:.0f} s")
    if results["errors"]:
        sys.exit(f"failed: {', '.join(results['errors'])}")


if __name__ == "__main__":
    main()
