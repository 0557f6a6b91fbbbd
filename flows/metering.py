"""The metering dataflow, stage by stage:

    raw topic -> parse -> schema_gate -> timestamp_gate -> dedup -> in_order -> enrich
              -> revenue -> route -> ledger (Postgres) + output topics (Kafka)

Every stage is a call into `operators/`; this file only wires them and supplies each stage
with what it reads (catalog, claim index).
"""

from __future__ import annotations

from functools import partial

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from config import Settings
from flows.execution import execute
from operators.dedup import Dedup, dedup_bucket
from operators.enrich import enrich_batch
from operators.order import Reorder, Sequencer
from operators.parse import parse
from operators.revenue import SubscriptionRevenue, revenue_key
from operators.route import route
from operators.schema_gate import schema_gate
from operators.timestamp_gate import timestamp_gate
from schemas.record import Record
from sinks.entitlements import CatalogCache
from sinks.kafka import RouteSink, ensure_topics, raw_source, to_record, topic_id
from sinks.ledger import ClaimIndex, LedgerSink

DEDUP_CACHE_KEYS = 2_000_000  # per process, shared out over the dedup buckets


class _DedupStep(StatefulBatchLogic[Record, Record, None]):
    """Bytewax shell around Dedup. Its snapshot is empty on purpose: the claims that matter
    after a crash are durable in Postgres or get replayed (see operators/dedup.py)."""

    def __init__(self, dedup: Dedup):
        self._dedup = dedup

    def on_batch(self, values: list[Record]) -> tuple[list[Record], bool]:
        return self._dedup.decide(values), StatefulBatchLogic.RETAIN

    def snapshot(self) -> None:
        return None


class _InOrderStep(StatefulBatchLogic[Record, Record, Reorder]):
    """Bytewax shell around one partition's Reorder."""

    def __init__(self, state: Reorder | None):
        self._reorder = state or Reorder()

    def on_batch(self, values: list[Record]) -> tuple[list[Record], bool]:
        return self._reorder.release(values), StatefulBatchLogic.RETAIN

    def snapshot(self) -> Reorder:
        return self._reorder


class _RevenueStep(StatefulBatchLogic[Record, Record, SubscriptionRevenue]):
    """Bytewax shell around one subscription's running totals, snapshotted with the flow."""

    def __init__(self, catalog: CatalogCache, state: SubscriptionRevenue | None):
        self._catalog = catalog
        self._revenue = state or SubscriptionRevenue()

    def on_batch(self, values: list[Record]) -> tuple[list[Record], bool]:
        return self._revenue.rate_batch(values, self._catalog.tenants()), StatefulBatchLogic.RETAIN

    def snapshot(self) -> SubscriptionRevenue:
        return self._revenue


def _schema_gate_batch(catalog: CatalogCache, batch: list[Record]) -> list[Record]:
    key_paths = catalog.key_paths()
    return [schema_gate(r, key_paths) for r in batch]


def build(settings: Settings, *, once: bool) -> Dataflow:
    topics, secret, buckets = settings.topics, settings.secret, settings.dedup_buckets
    raw_topic_id = topic_id(settings, topics.raw)
    claims = ClaimIndex(settings.database_url)
    catalog = CatalogCache(settings.database_url, settings.redis_url)
    sequencer = Sequencer()

    flow = Dataflow("metering")
    raw = op.input("raw", flow, raw_source(settings, tail=not once))
    parsed = op.map("parse", raw, lambda msg: sequencer.tag(parse(*to_record(msg, raw_topic_id))))
    schema_checked = op.flat_map_batch("schema_gate", parsed, partial(_schema_gate_batch, catalog))
    timed = op.map("timestamp_gate", schema_checked, timestamp_gate)
    by_key = op.key_on("dedup_key", timed, partial(dedup_bucket, buckets=buckets))
    deduped = op.stateful_batch(
        "dedup", by_key, lambda _: _DedupStep(Dedup(claims.lookup, DEDUP_CACHE_KEYS // buckets)))
    by_partition = op.key_on("partition", op.key_rm("unkey_dedup", deduped), lambda r: f"p{r.partition}")
    in_order = op.stateful_batch("in_order", by_partition, _InOrderStep)
    enriched = op.flat_map_batch("enrich", op.key_rm("unkey_in_order", in_order),
                                 partial(enrich_batch, catalog))
    by_subscription = op.key_on("subscription", enriched, revenue_key)
    rated = op.stateful_batch("revenue", by_subscription, partial(_RevenueStep, catalog))
    routed = op.map("route", op.key_rm("unkey_revenue", rated),
                    partial(route, topics=topics, secret=secret))
    by_raw_partition = op.map("by_raw_partition", routed, lambda r: (str(r.partition), r))
    op.output("ledger", by_raw_partition, LedgerSink(settings.database_url))
    op.output("output_topics", by_raw_partition, RouteSink(settings))
    return flow


def run(settings: Settings, *, once: bool, workers: int = 1) -> None:
    """Run the metering flow; with once, read every raw partition to its end and exit."""
    ensure_topics(settings)
    flow = build(settings, once=once)
    execute(flow, settings, f"{settings.topics.raw}-{topic_id(settings, settings.topics.raw)}", workers)
