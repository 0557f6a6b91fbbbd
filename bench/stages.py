"""Stage costs: where the flow's time goes, from a cProfile of an in-process --once run.

A stage's time is the cumulative time of its functions, counted where the stage is entered: a
call from another stage's function stays with the caller (enrich reading a JSON path through
schema_gate's helper is enrichment), and a call inside the stage is not counted twice.

With one worker, Bytewax runs the whole dataflow on the calling thread: its wall time is the
run's, and what no stage accounts for there is `other` (the Bytewax runtime, exchanges between
steps, recovery snapshots, the flow's glue). Threads the flow starts (a sink writing in the
background) are profiled too and reported apart, as they run alongside the worker. Profiling
slows everything down: read the shares, and the µs per event as relative sizes.
"""

from __future__ import annotations

import cProfile
import importlib.util
import os
import pstats
import threading
import time
from typing import Any

import config
from bench.events import Stream
from bench.workspace import Workspace, log, produce
from flows.metering import run

# stage -> (module, the functions counted; None for every function of the module)
STAGES: dict[str, tuple[tuple[str, tuple[str, ...] | None], ...]] = {
    "kafka input": (("sinks.raw_source", None),),
    "gates": (("operators.gates", None), ("operators.parse", None), ("operators.schema_gate", None),
              ("operators.timestamp_gate", None)),
    "dedup": (("operators.dedup", None), ("sinks.ledger", ("claim", "_claim", "_insert_claims"))),
    "enrich": (("operators.enrich", None), ("sinks.entitlements", None)),
    "rate": (("operators.revenue", None), ("operators.pricing", None), ("sinks.ledger", ("load_totals",))),
    "route": (("operators.route", None),),
    # the ledger sink on the worker: rows and their hashes, the output messages and their produce
    "ledger rows": (("sinks.ledger", ("writes_of",)),),
    "output topics": (("sinks.outputs", ("produce_batch",)),),
    # the ledger writer's thread: the transaction, and waiting for the broker's acknowledgements
    "ledger commit": (("sinks.ledger", ("commit",)),),
}

FuncKey = tuple[str, int, str]  # pstats: (file, line, function)
Members = dict[tuple[str, str | None], str]  # (file, function or None for all) -> stage


def _membership() -> Members:
    members: Members = {}
    for stage, parts in STAGES.items():
        for module, functions in parts:
            path = os.path.realpath(importlib.util.find_spec(module).origin)
            for func in functions or (None,):
                members[(path, func)] = stage
    return members


def _stage_of(key: FuncKey, members: Members) -> str | None:
    path = os.path.realpath(key[0])
    return members.get((path, key[2])) or members.get((path, None))


def stage_seconds(stats: dict[FuncKey, tuple], members: Members) -> dict[str, float]:
    """Seconds per stage from pstats' table (see the module docstring for what counts)."""
    seconds = dict.fromkeys(STAGES, 0.0)
    for key, (_cc, _nc, _tt, cumulative, callers) in stats.items():
        stage = _stage_of(key, members)
        if stage is None:
            continue
        from_stages = sum(edge[3] for caller, edge in callers.items()
                          if _stage_of(caller, members) is not None)
        seconds[stage] += cumulative - from_stages
    return seconds


def _profiled_run(s: config.Settings) -> tuple[float, cProfile.Profile, list[cProfile.Profile]]:
    """Run the flow once; (wall seconds, the worker thread's profile, other threads' profiles)."""
    others: list[cProfile.Profile] = []

    def profile_new_thread(*_: object) -> None:
        # Called on a new thread's first event: from here on cProfile replaces this hook there.
        profile = cProfile.Profile()
        others.append(profile)
        profile.enable()

    worker = cProfile.Profile()
    threading.setprofile(profile_new_thread)
    try:
        started = time.perf_counter()
        worker.runcall(run, s, once=True, workers=1)
        return time.perf_counter() - started, worker, others
    finally:
        threading.setprofile(None)


def measure_stages(ws: Workspace, stream: Stream, n: int) -> dict[str, Any]:
    lines = stream.lines[:n]
    with ws.installation("stages") as s:
        log(f"stage costs: producing {n:,} events")
        produce(s, lines)
        log("stage costs: running the flow once in this process, under cProfile")
        wall, worker, others = _profiled_run(s)
    members = _membership()
    on_worker = stage_seconds(pstats.Stats(worker).stats, members)
    on_worker["other"] = wall - sum(on_worker.values())
    background = stage_seconds(pstats.Stats(*others).stats, members) if others else {}
    return {
        "events": n, "seconds_profiled": wall,
        "us_per_event": {stage: t / n * 1e6 for stage, t in on_worker.items()},
        "share": {stage: t / wall for stage, t in on_worker.items()},
        "background_us_per_event": {stage: t / n * 1e6 for stage, t in background.items() if t > 0},
    }
