"""The results: the machine and commit they were measured on, the headline figures with their
targets (printed, never asserted), the results table and the JSON file."""

from __future__ import annotations

import operator
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.workspace import REPO

# figure -> (comparison, threshold): the goals the issue set, shown next to the figures
TARGETS: dict[str, tuple[str, float]] = {
    "throughput_events_per_s": (">=", 25_000),
    "speedup_over_baseline": (">=", 40),
    "latency_p99_ms": ("<", 1_000),
    "memory_run_peak_rss_mb": ("<=", 300),
}
_COMPARE: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<": operator.lt,
                                                       "<=": operator.le}


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
               platform.processor())
    mem_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return {"nproc": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1), "cpu_model": cpu,
            "python": platform.python_version(), "platform": platform.platform()}


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the work tree differed from it."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _get(results: dict[str, Any], section: str, *keys: str) -> Any:
    part = results.get(section)
    for key in keys:
        part = None if part is None else part.get(key)
    return part


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def _scaling(results: dict[str, Any], run: str, key: str) -> Any:
    part = results.get("scaling")
    return None if part is None else part[run][key]


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """Every figure of the run in one flat dict; None where its measurement was skipped or failed."""
    one = _get(results, "throughput", "events_per_s")
    two_workers = _scaling(results, "workers_2", "events_per_s")
    two_processes = _scaling(results, "processes_2", "events_per_s")
    baseline = _get(results, "baseline", "events_per_s")
    kafka = _get(results, "ceilings", "kafka_consume_events_per_s")
    operators = _get(results, "ceilings", "operators_events_per_s")
    commits = _get(results, "ceilings", "postgres_commit_rows_per_s")
    return {
        "throughput_events_per_s": one,
        "throughput_cpu_us_per_event": _get(results, "throughput", "cpu_us_per_event"),
        "throughput_cpu_us_per_event_total": _get(results, "throughput", "cpu_us_per_event_total"),
        "workers_2_events_per_s": two_workers,
        "workers_2_cpu_us_per_event_total": _scaling(results, "workers_2", "cpu_us_per_event_total"),
        "scaling_2_workers": _ratio(two_workers, one),
        "processes_2_events_per_s": two_processes,
        "processes_2_cpu_us_per_event_total": _scaling(results, "processes_2", "cpu_us_per_event_total"),
        "scaling_2_processes": _ratio(two_processes, one),
        "baseline_events_per_s": baseline,
        "speedup_over_baseline": _ratio(one, baseline),
        "latency_p50_ms": _get(results, "latency", "p50_ms"),
        "latency_p95_ms": _get(results, "latency", "p95_ms"),
        "latency_p99_ms": _get(results, "latency", "p99_ms"),
        "latency_coarse_ticks_p50_ms": _get(results, "latency", "coarse_ticks", "p50_ms"),
        "latency_coarse_ticks_p95_ms": _get(results, "latency", "coarse_ticks", "p95_ms"),
        "latency_coarse_ticks_p99_ms": _get(results, "latency", "coarse_ticks", "p99_ms"),
        "stage_us_per_event": _get(results, "stages", "us_per_event"),
        "worker_peak_rss_mb": _get(results, "throughput", "peak_rss_mb"),
        "memory_run_events": _get(results, "memory", "events"),
        "memory_run_peak_rss_mb": _get(results, "memory", "peak_rss_mb"),
        "memory_run_events_per_s": _get(results, "memory", "events_per_s"),
        "kafka_consume_events_per_s": kafka,
        "operators_events_per_s": operators,
        "postgres_commit_rows_per_s": commits,
        "throughput_fraction_of_kafka_ceiling": _ratio(one, kafka),
        "throughput_fraction_of_operators_ceiling": _ratio(one, operators),
        "throughput_fraction_of_commit_ceiling": _ratio(one, commits),
    }


def targets(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, (op, threshold) in TARGETS.items():
        value = figures[name]
        out[name] = {"target": f"{op} {threshold:g}",
                     "met": None if value is None else _COMPARE[op](value, threshold)}
    return out


# --- the table ---------------------------------------------------------------------------------

def _n(value: float | None, unit: str = "", digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def _target(results: dict[str, Any], name: str) -> str:
    t = results["targets"][name]
    verdict = {True: "met", False: "not met", None: ""}[t["met"]]
    return f"target {t['target']}: {verdict}".rstrip(": ")


def _reached(fraction: float | None) -> str:
    return "" if fraction is None else f"the flow reaches {fraction:.1%} of it"


def _conserved(section: dict[str, Any] | None) -> str:
    if section is None:
        return "-"
    verdict = "conserved" if section["conserved"] else "NOT CONSERVED"
    expected = "as generated" if section["counts_match_expected"] else "NOT as generated"
    return f"{section['ledger_rows']:,} / {section['events']:,}: {verdict}, status counts {expected}"


def _undrained(section: dict[str, Any] | None) -> str:
    if section is None or section["drained"]:
        return ""
    return (f"; only {section['rows_measured']:,} of {section['sent']:,} offered events reached the "
            "ledger in time, so these understate")


def _latency(f: dict[str, Any], prefix: str = "latency") -> str:
    if f[f"{prefix}_p99_ms"] is None:
        return "-"
    return f"{f[f'{prefix}_p50_ms']:,.0f} / {f[f'{prefix}_p95_ms']:,.0f} / {f[f'{prefix}_p99_ms']:,.0f} ms"


def _every(section: dict[str, Any] | None) -> str:
    tick = None if section is None else section.get("tick_ms")
    return "" if tick is None else f", offered every {tick:.0f} ms"


def _cpu(section: dict[str, Any] | None) -> str:
    if section is None:
        return "-"
    parts = ", ".join(f"{name} {us:.0f}" for name, us in section["cpu_us_per_event"].items())
    return f"CPU µs per event: {parts} (total {section['cpu_us_per_event_total']:.0f})"


def _versus(f: dict[str, Any], ratio: str) -> str:
    return "" if f[ratio] is None else f"{f[ratio]:.2f}x one process, one worker"


def table(results: dict[str, Any]) -> str:
    f, sizes = results["figures"], results["sizes"]
    scaling = results.get("scaling") or {}
    rows = [
        (f"end-to-end throughput, 1 process x 1 worker ({sizes['events']:,} events)",
         _n(f["throughput_events_per_s"], " events/s"), _target(results, "throughput_events_per_s")),
        ("  ledger rows / events", "", _conserved(results.get("throughput"))),
        ("  CPU per event", "", _cpu(results.get("throughput"))),
        ("1 process x 2 workers", _n(f["workers_2_events_per_s"], " events/s"),
         _versus(f, "scaling_2_workers")),
        ("  CPU per event", "", _cpu(scaling.get("workers_2"))),
        ("2 processes x 1 worker", _n(f["processes_2_events_per_s"], " events/s"),
         _versus(f, "scaling_2_processes")),
        ("  CPU per event", "", _cpu(scaling.get("processes_2"))),
        (f"transactional baseline ({sizes['baseline_events']:,} events)",
         _n(f["baseline_events_per_s"], " events/s"), ""),
        ("  ledger rows / events", "", _conserved(results.get("baseline"))),
        ("speed-up over the baseline", _n(f["speedup_over_baseline"], "x", 1),
         _target(results, "speedup_over_baseline")),
        (f"latency p50 / p95 / p99 at {sizes['latency_rate']:,.0f} events/s{_every(results.get('latency'))}",
         _latency(f), _target(results, "latency_p99_ms") + _undrained(results.get("latency"))),
        (f"  the same{_every(_get(results, 'latency', 'coarse_ticks'))}", _latency(f, "latency_coarse_ticks"),
         _undrained(_get(results, "latency", "coarse_ticks"))),
        ("worker peak RSS (VmHWM), throughput run", _n(f["worker_peak_rss_mb"], " MB"), ""),
        (f"worker peak RSS (VmHWM), {sizes['memory_events']:,} events",
         _n(f["memory_run_peak_rss_mb"], " MB"),
         _target(results, "memory_run_peak_rss_mb")),
        ("ceiling: Kafka consume", _n(f["kafka_consume_events_per_s"], " events/s"),
         _reached(f["throughput_fraction_of_kafka_ceiling"])),
        ("ceiling: the operators alone, one thread", _n(f["operators_events_per_s"], " events/s"),
         _reached(f["throughput_fraction_of_operators_ceiling"])),
        ("ceiling: Postgres, the ledger transactions alone", _n(f["postgres_commit_rows_per_s"], " rows/s"),
         _reached(f["throughput_fraction_of_commit_ceiling"])),
    ]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    lines = [f"{label:<{width}}  {value:>{value_width}}  {note}".rstrip() for label, value, note in rows]
    stages = results.get("stages")
    if stages is not None:
        background = stages["background_us_per_event"]
        lines += ["", f"stage costs under cProfile ({stages['events']:,} events, one worker), µs per event:",
                  f"  {'stage':<16} {'worker':>9} {'share':>7} {'background threads':>19}"]
        lines += [f"  {stage:<16} {us:9.1f} {stages['share'][stage]:7.1%} "
                  f"{f'{background[stage]:.1f}' if stage in background else '':>19}".rstrip()
                  for stage, us in stages["us_per_event"].items()]
    if results["skipped"]:
        lines += ["", f"skipped: {', '.join(results['skipped'])}"]
    if results["errors"]:
        lines += ["", f"FAILED: {', '.join(results['errors'])} (tracebacks in the JSON under `errors`)"]
    return "\n".join(lines)


def write(results: dict[str, Any], out_dir: Path, stamp: str) -> Path:
    """<stamp>.json and latest.json in out_dir, each written whole or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    body = orjson.dumps(results, option=orjson.OPT_INDENT_2)
    path = out_dir / f"{stamp}.json"
    for target in (path, out_dir / "latest.json"):
        tmp = target.with_suffix(".json.tmp")
        tmp.write_bytes(body)
        os.replace(tmp, target)
    return path
