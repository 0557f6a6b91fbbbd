"""Running a dataflow: one process or a process of a Bytewax cluster, recovery where the flow keeps
state in Bytewax, and a garbage collector tuned for the hot path."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bytewax._bytewax import cli_main
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir

from config import Settings

RECOVERY_PARTITIONS = 4
GC_THRESHOLDS = (100_000, 50, 100)
SWITCH_INTERVAL_S = 0.001
CLUSTER_STOP_S = 15.0


@dataclass(frozen=True)
class Cluster:
    """This process's place in a Bytewax cluster: every process gets the same addresses (one
    host:port per process) and its own index into them."""

    addresses: tuple[str, ...]
    process_id: int

    def __post_init__(self) -> None:
        if not 0 <= self.process_id < len(self.addresses):
            raise ValueError(f"process id {self.process_id} is not an index into"
                             f" {len(self.addresses)} addresses")


def recovery_dir(settings: Settings, name: str) -> Path:
    """The flow's recovery partitions, made on first use. Name them after the incarnation of the
    input topic: a recreated topic (or a restarted memory-only broker) starts its offsets again,
    so its flow must start fresh too."""
    db_dir = settings.recovery_dir / name
    try:
        if not db_dir.exists():
            staging = db_dir.with_name(db_dir.name + ".init")  # never leave a half-made dir behind
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            init_db_dir(staging, RECOVERY_PARTITIONS)
            staging.rename(db_dir)
    except OSError as exc:
        raise RuntimeError(f"cannot create the recovery directory {db_dir}: {exc.strerror}") from None
    unwritable = [p for p in (db_dir, *db_dir.iterdir()) if not os.access(p, os.W_OK)]
    if unwritable:
        raise RuntimeError(f"the recovery directory {db_dir} is not writable ({unwritable[0]}): "
                           "the flow snapshots its state there; fix its permissions or set"
                           " AFORO_RECOVERY_DIR")
    return db_dir


def execute(flow: Dataflow, settings: Settings, recovery_name: str | None, workers: int = 1,
            cluster: Cluster | None = None) -> None:
    """Run the flow, resuming from its last snapshot when it keeps one (recovery_name)."""
    # The flows allocate millions of short-lived, acyclic objects; at CPython's default thresholds
    # the cyclic GC took a third of the worker's time (measured with py-spy). Collect far less
    # often, and never rescan what start-up built.
    gc.collect()  # what an earlier run in this process left, before start-up is frozen
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    # The ledger writer thread waits for the GIL after every Postgres round trip while the worker
    # thread runs Python: at a live 5,000 events/s its one-row high-water query took 12 ms at the
    # default 5 ms switch interval, 4 ms at 1 ms.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    recovery = RecoveryConfig(recovery_dir(settings, recovery_name)) if recovery_name else None
    where = ({} if cluster is None
             else {"addresses": list(cluster.addresses), "process_id": cluster.process_id})
    cli_main(flow, workers_per_process=workers, epoch_interval=timedelta(seconds=settings.epoch_interval_s),
             recovery_config=recovery, **where)


def free_addresses(n: int) -> tuple[str, ...]:
    """n local host:port addresses for a cluster on this machine."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return tuple(f"127.0.0.1:{s.getsockname()[1]}" for s in sockets)
    finally:
        for s in sockets:
            s.close()


def run_local_cluster(command: Sequence[str], processes: int, env: dict[str, str] | None = None) -> int:
    """Start `processes` processes of one cluster on this machine: `command` plus `--process-id I
    --addresses A,B,...` each; pass SIGINT/SIGTERM on to all of them; return the worst exit code."""
    addresses = ",".join(free_addresses(processes))
    children = [subprocess.Popen([*command, "--process-id", str(i), "--addresses", addresses], env=env)
                for i in range(processes)]

    def forward(signum, _frame) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(child.poll() is None for child in children):
            if any(child.poll() not in (None, 0) for child in children):
                # one process failed: the cluster cannot go on without it
                forward(signal.SIGTERM, None)
                try:
                    for child in children:
                        child.wait(timeout=CLUSTER_STOP_S)
                except subprocess.TimeoutExpired:
                    for child in children:
                        child.kill()
            time.sleep(0.2)
        codes = [child.wait() for child in children]
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return max(codes, key=abs)
