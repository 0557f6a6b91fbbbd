"""The benchmark harness runs end to end and its results are consistent. How fast anything is, is
never asserted: that is what the figures are for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
FIGURES = (
    "throughput_events_per_s", "throughput_cpu_us_per_event", "throughput_cpu_us_per_event_total",
    "workers_2_events_per_s", "workers_2_cpu_us_per_event_total", "scaling_2_workers",
    "processes_2_events_per_s", "processes_2_cpu_us_per_event_total", "scaling_2_processes",
    "baseline_events_per_s", "speedup_over_baseline", "latency_p50_ms", "latency_p95_ms",
    "latency_p99_ms", "stage_us_per_event", "worker_peak_rss_mb", "memory_run_events",
    "memory_run_peak_rss_mb", "memory_run_events_per_s", "kafka_consume_events_per_s",
    "operators_events_per_s", "postgres_commit_rows_per_s", "throughput_fraction_of_kafka_ceiling",
    "throughput_fraction_of_operators_ceiling", "throughput_fraction_of_commit_ceiling",
)
STAGES = ("kafka input", "gates", "dedup", "enrich", "rate", "route", "ledger rows", "output topics", "other")


@pytest.fixture(scope="module")
def quick_run(stack, tmp_path_factory) -> tuple[Path, str]:
    """`python -m bench --quick` on the test stack: (its results directory, its stdout)."""
    out = tmp_path_factory.mktemp("bench-results")
    env = {**os.environ, "AFORO_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
           "AFORO_DATABASE_URL": stack.database_url, "AFORO_REDIS_URL": stack.redis_url}
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-8000:]
    return out, done.stdout


@pytest.fixture(scope="module")
def results(quick_run) -> dict:
    out, _ = quick_run
    return orjson.loads((out / "latest.json").read_bytes())


def test_results_are_written_and_printed(quick_run, results):
    out, stdout = quick_run
    [stamped] = [p for p in out.iterdir() if p.name != "latest.json"]
    assert stamped.suffix == ".json" and stamped.read_bytes() == (out / "latest.json").read_bytes()
    assert "end-to-end throughput" in stdout and "stage costs" in stdout
    assert results["git"]["commit"] and results["started_at"] < results["finished_at"]
    assert {"nproc", "memory_gib", "cpu_model", "python"} <= results["machine"].keys()
    assert results["skipped"] == [] and results["errors"] == {}


def test_every_figure_is_present(results):
    figures = results["figures"]
    missing = [name for name in FIGURES if figures.get(name) is None]
    assert not missing
    assert set(STAGES) <= figures["stage_us_per_event"].keys()
    assert set(results["targets"]) <= set(FIGURES)


@pytest.mark.parametrize("run", ["throughput", "workers_2", "processes_2", "memory"])
def test_each_throughput_run_conserves_every_event(results, run):
    r = results["scaling"][run] if run.endswith("_2") else results[run]
    assert (r["processes"], r["workers"]) == {"throughput": (1, 1), "workers_2": (1, 2),
                                              "processes_2": (2, 1), "memory": (1, 1)}[run]
    assert r["events"] == results["sizes"]["memory_events" if run == "memory" else "events"]
    assert r["ledger_rows"] == sum(r["status_counts"].values()) == r["events"]
    assert r["conserved"] and r["counts_match_expected"] and r["revenue_matches_ledger"]
    # the flow's own CPU is always read (the services' only on a stack the bench started)
    assert r["cpu_us_per_event"]["flow"] > 0


def test_the_baseline_processed_all_its_events(results):
    b = results["baseline"]
    assert b["processed"] == b["ledger_rows"] == b["events"] == results["sizes"]["baseline_events"]
    assert b["counts_match_expected"]


def test_latency_percentiles_are_ordered_over_every_offered_event(results):
    for lat in (results["latency"], results["latency"]["coarse_ticks"]):
        assert lat["drained"] and lat["rows_measured"] == lat["sent"] > 0
        assert 0 <= lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert (results["latency"]["tick_ms"], results["latency"]["coarse_ticks"]["tick_ms"]) == (10, 50)


def test_memory_and_ceilings_cover_their_whole_input(results):
    assert 0 < results["memory"]["peak_rss_mb"] < 24 * 1024
    ceilings = results["ceilings"]
    assert ceilings["kafka_events"] == ceilings["operators_events"] == ceilings["commit_rows"] \
        == results["sizes"]["events"]
