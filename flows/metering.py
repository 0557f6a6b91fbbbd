"""The metering dataflow, stage by stage:

    raw topic -> parse -> schema_gate -> timestamp_gate -> dedup -> route -> ledger + output topics

Every stage is a call into `operators/`; this file only wires them. Enrichment and rating
(billing context) slot in between dedup and route.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from datetime import timedelta
from functools import partial

import bytewax.operators as op
from bytewax._bytewax import cli_main
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.recovery import RecoveryConfig, init_db_dir

from config import Settings
from operators.dedup import Dedup, dedup_bucket
from operators.parse import parse
from operators.route import route
from operators.schema_gate import schema_gate
from operators.timestamp_gate import timestamp_gate
from schemas.record import Record
from sinks.kafka import RouteSink, ensure_topics, raw_source, to_record, topic_id
from sinks.ledger import ClaimIndex, LedgerSink

DEDUP_CACHE_KEYS = 2_000_000  # per process, shared out over the dedup buckets
RECOVERY_PARTITIONS = 4


class _DedupStep(StatefulBatchLogic[Record, Record, None]):
    """Bytewax shell around Dedup. Its snapshot is empty on purpose: the claims that matter
    after a crash are durable in Postgres or get replayed (see operators/dedup.py)."""

    def __init__(self, dedup: Dedup):
        self._dedup = dedup

    def on_batch(self, values: list[Record]) -> tuple[list[Record], bool]:
        return self._dedup.decide(values), StatefulBatchLogic.RETAIN

    def snapshot(self) -> None:
        return None


def build(settings: Settings, *, once: bool, key_paths: Mapping[str, str] | None = None) -> Dataflow:
    topics, secret, buckets = settings.topics, settings.secret, settings.dedup_buckets
    raw_topic_id = topic_id(settings, topics.raw)
    claims = ClaimIndex(settings.database_url)
    key_paths = key_paths or {}

    flow = Dataflow("metering")
    raw = op.input("raw", flow, raw_source(settings, tail=not once))
    parsed = op.map("parse", raw, lambda msg: parse(*to_record(msg, raw_topic_id)))
    schema_checked = op.map("schema_gate", parsed, partial(schema_gate, key_paths=key_paths))
    timed = op.map("timestamp_gate", schema_checked, timestamp_gate)
    by_key = op.key_on("dedup_key", timed, partial(dedup_bucket, buckets=buckets))
    deduped = op.stateful_batch(
        "dedup", by_key, lambda _: _DedupStep(Dedup(claims.lookup, DEDUP_CACHE_KEYS // buckets)))
    routed = op.map("route", op.key_rm("unkey", deduped), partial(route, topics=topics, secret=secret))
    op.output("ledger", routed, LedgerSink(settings.database_url))
    op.output("output_topics", routed, RouteSink(settings))
    return flow


def run(settings: Settings, *, once: bool, workers: int = 1,
        key_paths: Mapping[str, str] | None = None) -> None:
    """Run the flow with recovery: after a crash it resumes from its last snapshot."""
    ensure_topics(settings)
    flow = build(settings, once=once, key_paths=key_paths)
    # Recovery state belongs to one incarnation of the raw topic; a new topic starts fresh.
    db_dir = settings.recovery_dir / f"{settings.topics.raw}-{topic_id(settings, settings.topics.raw)}"
    if not db_dir.exists():
        staging = db_dir.with_name(db_dir.name + ".init")  # never leave a half-made dir behind
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        init_db_dir(staging, RECOVERY_PARTITIONS)
        staging.rename(db_dir)
    cli_main(flow, workers_per_process=workers,
             epoch_interval=timedelta(seconds=settings.epoch_interval_s),
             recovery_config=RecoveryConfig(db_dir))
