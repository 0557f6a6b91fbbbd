"""The metering dataflow, stage by stage:

    raw topic -> gates (parse, schema, timestamp) -> dedup -> enrich -> revenue -> route
              -> ledger (Postgres; after the output topics have the batch)

Every item is a Batch: the records of one raw partition from one poll, in offset order. A
partition is read, decided and written by one worker (no item is exchanged between workers) and
a customer's events share a partition, so rating follows each customer's arrival order with no
reordering step. What must hold across partitions and processes does so through Postgres:
idempotency claims are committed before a batch is rated, running totals are read back from the
ledger's own tables, and the ledger is the progress a partition resumes from.

Every stage is a call into `operators/`; this file only wires them and supplies each stage with
what it reads (catalog, claims, running totals).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from functools import partial
from typing import Protocol

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from config import Settings, Topics
from flows.execution import Cluster, execute
from operators import dedup
from operators.enrich import Catalog, enrich_batch
from operators.gates import admit
from operators.revenue import LoadTotals, RunningTotals
from operators.route import route_batch
from schemas.record import Batch
from sinks.entitlements import CatalogCache
from sinks.kafka import ensure_topics, topic_id
from sinks.ledger import LedgerSink, PostgresState, Writes, high_water
from sinks.outputs import OutputTopics
from sinks.postgres import connect
from sinks.raw_source import RawSource, TopicRecreated

_log = logging.getLogger(__name__)


class FlowCatalog(Catalog, Protocol):
    """What the flow reads of the catalog (sinks/entitlements.CatalogCache)."""

    def key_paths(self) -> dict[str, str | None]: ...


class PartitionTotals:
    """The RunningTotals of every raw partition this process reads, each used by the one worker
    that reads the partition."""

    def __init__(self, load: LoadTotals):
        self._load = load
        self._of: dict[tuple[str, int], RunningTotals] = {}

    def rate(self, catalog: Catalog, batch: Batch) -> Batch:
        key = (batch.topic_id, batch.partition)
        totals = self._of.get(key)
        if totals is None:
            totals = self._of[key] = RunningTotals(self._load)
        return totals.rate_batch(catalog.tenants(), batch)

    def committed(self, w: Writes) -> None:
        totals = self._of.get((w.topic_id, w.partition))
        if totals is not None:
            totals.committed(w.rated_as)


def build(source: Source[Batch], sink: Sink[Batch], *, catalog: FlowCatalog, claims: dedup.ClaimIndex,
          totals: PartitionTotals, topics: Topics, secret: bytes) -> Dataflow:
    flow = Dataflow("metering")
    raw = op.input("raw", flow, source)
    gated = op.map("gates", raw, lambda batch: admit(catalog.key_paths(), batch))
    deduped = op.map("dedup", gated, partial(dedup.decide, claims))
    enriched = op.map("enrich", deduped, partial(enrich_batch, catalog))
    rated = op.map("revenue", enriched, partial(totals.rate, catalog))
    routed = op.map("route", rated, partial(route_batch, topics, secret))
    op.output("ledger", routed, sink)
    return flow


def _stop_on_signals(stopping: threading.Event) -> Callable[[], None]:
    """SIGINT and SIGTERM stop the flow cleanly: the sources end, the batches already read are
    decided and committed, and the run returns. Returns a function restoring the old handlers."""
    def stop(signum, _frame) -> None:
        _log.warning("%s: stopping after the batches in flight are committed", signal.Signals(signum).name)
        stopping.set()

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(s, h) for s, h in old.items()]


def run(settings: Settings, *, once: bool, workers: int = 1, cluster: Cluster | None = None) -> None:
    """Run the metering flow; with once, read every raw partition to its end and exit. A raw topic
    recreated under the flow (a new incarnation) is followed: the flow starts again on it."""
    ensure_topics(settings)
    stopping = threading.Event()
    restore = _stop_on_signals(stopping)
    try:
        while not stopping.is_set():
            try:
                _run_once(settings, once=once, workers=workers, cluster=cluster, stopping=stopping)
                return
            except TopicRecreated as exc:
                _log.warning("%s", exc)
            except Exception as exc:  # Bytewax wraps what a step raised
                recreated = _cause(exc, TopicRecreated)
                if recreated is None:
                    raise
                _log.warning("%s", recreated)
            ensure_topics(settings)
    finally:
        restore()


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    while exc is not None:
        if isinstance(exc, kind):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _run_once(settings: Settings, *, once: bool, workers: int, cluster: Cluster | None,
              stopping: threading.Event) -> None:
    raw_topic_id = topic_id(settings, settings.topics.raw)
    state = PostgresState(settings.database_url)
    totals = PartitionTotals(state.totals)

    def start_at(tid: str, partition: int) -> int | None:
        with connect(settings.database_url) as conn:
            return high_water(conn, tid, partition)

    catalog = CatalogCache(settings.database_url, settings.redis_url)
    flow = build(
        RawSource(settings, raw_topic_id, start_at, tail=not once, stopping=stopping),
        LedgerSink(settings.database_url, partial(OutputTopics, settings), on_commit=totals.committed),
        catalog=catalog, claims=state, totals=totals, topics=settings.topics, secret=settings.secret)
    try:
        execute(flow, settings, None, workers, cluster)
    finally:
        state.close()
        catalog.close()
