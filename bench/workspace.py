"""Where a benchmark runs: one stack per bench run, one fresh Aforo installation per measurement.

The stack is the embedded one, started on free ports under a temporary home and always stopped
at the end, unless AFORO_KAFKA_BOOTSTRAP, AFORO_DATABASE_URL and AFORO_REDIS_URL are all set:
then those services are used and everything the bench created on them is removed again.

An installation is what one measurement owns: its topics (a unique prefix), its database (a copy
of a migrated template holding the benchmark catalog, with its own catalog id so it shares no
cache entries in Redis) and its AFORO_HOME (recovery snapshots).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from confluent_kafka.admin import AdminClient

import config
from bench.events import bench_catalog
from schemas.catalog import Catalog
from sinks.catalog import apply_catalog
from sinks.kafka import ensure_topics, kafka_config
from sinks.postgres import connect, migrate
from sinks.raw_producer import RawProducer

REPO = Path(__file__).resolve().parents[1]
SECRET = "bench-secret"
READ_STALL_S = 10.0
_STARTED = time.monotonic()


def log(message: str) -> None:
    """Progress, on stderr: stdout is the results table."""
    elapsed = time.monotonic() - _STARTED
    print(f"[bench {int(elapsed // 60):02d}:{elapsed % 60:04.1f}] {message}", file=sys.stderr, flush=True)


def excerpt(output: str, head: int = 4000, tail: int = 1500) -> str:
    """The start of a failed process's output (where Python's traceback is) and its end (where
    Bytewax's panic is), without the thousands of backtrace lines in between."""
    if len(output) <= head + tail:
        return output
    return f"{output[:head]}\n[... {len(output) - head - tail} characters left out ...]\n{output[-tail:]}"


def _with_db(url: str, db: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + db


def environment(s: config.Settings) -> dict[str, str]:
    """The environment that makes a subprocess `aforo` (or bench child) use installation `s`."""
    return {**os.environ, **s.to_env()}


def produce(s: config.Settings, lines: list[bytes]) -> int:
    """Send lines to the installation's raw topic; fail unless the broker acknowledged them all."""
    ensure_topics(s)
    producer = RawProducer(s)
    try:
        acks = producer.send(enumerate(lines), "sdk")
    finally:
        producer.close()
    if acks.acked != len(lines):
        raise RuntimeError(f"{len(lines) - acks.acked} of {len(lines)} events not acknowledged: "
                           f"{list(acks.errors.values())[:3]}")
    return acks.acked


def raw_batches(s: config.Settings, batch: int = 10_000) -> Iterator[list[Message]]:
    """The installation's raw topic from its start to the end of every partition, in batches."""
    consumer = Consumer(kafka_config(s, "consumer", group_id=f"{s.topic_prefix}-reader",
                                     enable_partition_eof=True))
    try:
        partitions = consumer.list_topics(s.topics.raw, timeout=10).topics[s.topics.raw].partitions
        consumer.assign([TopicPartition(s.topics.raw, p, OFFSET_BEGINNING) for p in partitions])
        open_partitions = len(partitions)
        last_progress = time.monotonic()
        while open_partitions:
            # A short timeout: consume() waits for a full batch or the timeout, whichever is first.
            messages = consumer.consume(batch, 0.01)
            if messages:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > READ_STALL_S:
                raise RuntimeError(f"nothing from {s.topics.raw} for {READ_STALL_S} s before its end")
            data = []
            for m in messages:
                error = m.error()
                if error is None:
                    data.append(m)
                elif error.code() == KafkaError._PARTITION_EOF:
                    open_partitions -= 1
                else:
                    raise RuntimeError(f"reading {s.topics.raw}: {error}")
            yield data
    finally:
        consumer.close()


def ledger_summary(s: config.Settings) -> dict[str, Any]:
    """Ledger rows in all, and per `status/reason`."""
    with connect(s.database_url) as conn:
        counts = dict(conn.execute(
            "SELECT status || '/' || coalesce(reason, ''), count(*) FROM ledger GROUP BY 1 ORDER BY 1"))
    return {"ledger_rows": sum(counts.values()), "status_counts": counts}


class Workspace:
    def __init__(self, stack: config.Settings, home: Path, *, external: bool):
        self.stack = stack  # every URL resolved, so children never look for a stack file
        self.external = external
        self._home = home
        self._run = uuid.uuid4().hex[:8]
        self._template = f"bench_{self._run}_template"

    def service_cpu_s(self) -> dict[str, float]:
        """CPU seconds used so far by each service of the embedded stack (a server's exited
        children, such as Postgres backends, included); nothing for external services."""
        if self.external:
            return {}
        import psutil
        pids = orjson.loads((self._home / "stack" / "stack.json").read_bytes())["pids"]
        used = {}
        for name, pid in sorted(pids.items()):
            server = psutil.Process(pid)
            t = server.cpu_times()
            seconds = t.user + t.system + t.children_user + t.children_system
            for child in server.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    c = child.cpu_times()
                    seconds += c.user + c.system
            used[name] = seconds
        return used

    def postgres_settings(self) -> dict[str, str]:
        """The server settings that decide what a commit costs, for the record."""
        with connect(self.stack.database_url) as conn:
            return {name: conn.execute(f"SHOW {name}").fetchone()[0]
                    for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")}

    def _admin(self, sql: str) -> None:
        with psycopg.connect(_with_db(self.stack.database_url, "postgres"), autocommit=True) as conn:
            conn.execute(sql)

    @contextlib.contextmanager
    def ready(self) -> Iterator[Workspace]:
        """With the template database: the schema and the benchmark catalog."""
        log("creating the template database (schema and benchmark catalog)")
        self._admin(f"CREATE DATABASE {self._template}")
        try:
            url = _with_db(self.stack.database_url, self._template)
            migrate(url)
            with connect(url) as conn:
                apply_catalog(conn, Catalog.model_validate(bench_catalog()))
            yield self
        finally:
            self._admin(f"DROP DATABASE IF EXISTS {self._template} WITH (FORCE)")

    @contextlib.contextmanager
    def installation(self, name: str) -> Iterator[config.Settings]:
        """A fresh installation for one measurement, removed afterwards."""
        db = f"bench_{self._run}_{name}"
        self._admin(f"CREATE DATABASE {db} TEMPLATE {self._template}")
        url = _with_db(self.stack.database_url, db)
        with connect(url) as conn:
            conn.execute("UPDATE catalog_state SET catalog_id = md5(random()::text)")
        s = dataclasses.replace(self.stack, home=self._home / name, database_url_env=url,
                                topic_prefix=f"bench-{self._run}-{name}", secret_env=SECRET)
        try:
            yield s
        finally:
            # FORCE: an in-process flow leaves its lookup connections open
            self._admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            _delete_topics(s)


def _delete_topics(s: config.Settings) -> None:
    """The broker keeps every message in memory: free it as soon as a measurement is done."""
    admin = AdminClient(kafka_config(s, "admin"))
    existing = admin.list_topics(timeout=10).topics
    doomed = [name for name in (s.topics.raw, *s.topics.outputs) if name in existing]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=30).values():
            future.result()


@contextlib.contextmanager
def open_workspace() -> Iterator[Workspace]:
    """The stack for one bench run (see the module docstring), with the template database."""
    base = config.load()
    with tempfile.TemporaryDirectory(prefix="aforo-bench-") as tmp:
        home = Path(tmp)
        if base.external:
            log("using the services given by AFORO_KAFKA_BOOTSTRAP, AFORO_DATABASE_URL, AFORO_REDIS_URL")
            with Workspace(base, home, external=True).ready() as ws:
                yield ws
            return
        from stack.embedded import temporary
        log(f"starting the embedded stack under {home / 'stack'}")
        with temporary(base, home / "stack") as resolved:
            with Workspace(resolved, home, external=False).ready() as ws:
                yield ws
            log("stopping the embedded stack")
