"""Reference ceilings, same machine, same run: what the broker and Postgres do with no Aforo
in between, so every figure can be read as a fraction of what the services allow.

* Kafka: one confluent-kafka consumer reading the raw topic to the end of every partition.
* The operators: parse, the gates, dedup, enrich, rate and route applied to every event in one
  plain Python loop (no Bytewax, no Kafka, no ledger): what one Python thread can decide.
* Postgres: one binary COPY of ledger rows (built by sinks.ledger.ledger_row from records decided
  by the flow's operators) into a scratch copy of the ledger table. A temporary table has neither
  indexes nor WAL, so this bounds what any ledger writer can reach.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from confluent_kafka import TIMESTAMP_CREATE_TIME

import config
from bench.events import Stream
from bench.rules import LEDGER_COLUMNS, Rules
from bench.workspace import Workspace, log, produce, raw_batches
from operators.dedup import Dedup
from operators.enrich import enrich_batch
from operators.revenue import SubscriptionRevenue, revenue_key
from schemas.record import Record
from sinks.kafka import record_key
from sinks.ledger import ledger_row
from sinks.postgres import connect


def kafka_consume(s: config.Settings) -> tuple[int, float]:
    """(events read, seconds), timed from the first batch on: connecting and fetching metadata
    are not the broker's throughput."""
    batches = raw_batches(s)
    first = next(batch for batch in batches if batch)
    started = time.perf_counter()
    n = len(first) + sum(len(batch) for batch in batches)
    return n, time.perf_counter() - started


def decided_records(s: config.Settings, lines: list[bytes]) -> list[Record]:
    """Records as the flow would hand them to the ledger sink, decided in this process."""
    now_ms = int(time.time() * 1000)
    with connect(s.database_url, autocommit=True) as conn:
        rules = Rules(conn, s)
        records = [rules.validate(Record(s.topics.raw, "copy-ceiling", i % 8, i, now_ms, line,
                                         key=record_key(line)), TIMESTAMP_CREATE_TIME)
                   for i, line in enumerate(lines)]
        Dedup(lambda _keys: {}, max_cached=len(records)).decide(records)
        enrich_batch(rules, records)
        totals: defaultdict[str, SubscriptionRevenue] = defaultdict(SubscriptionRevenue)
        for rec in records:
            totals[revenue_key(rec)].rate_batch([rec], rules.tenants())
            rules.route(rec)
    return records


def postgres_copy(s: config.Settings, records: list[Record]) -> float:
    """Seconds to COPY the records' ledger rows (built beforehand) into a scratch ledger table."""
    rows = [ledger_row(r) for r in records]
    with connect(s.database_url) as conn:
        conn.execute("CREATE TEMP TABLE ledger_copy"
                     " (LIKE ledger INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING GENERATED)")
        names = ", ".join(name for name, _ in LEDGER_COLUMNS)
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY ledger_copy ({names}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([pg_type for _, pg_type in LEDGER_COLUMNS])
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return time.perf_counter() - started


def measure_ceilings(ws: Workspace, stream: Stream) -> dict[str, Any]:
    n = len(stream.lines)
    with ws.installation("ceilings") as s:
        log(f"ceilings: producing {n:,} events")
        produce(s, stream.lines)
        log("ceilings: consuming them with a bare Kafka consumer")
        consumed, kafka_s = kafka_consume(s)
        log("ceilings: deciding them with the flow's operators in this process")
        started = time.perf_counter()
        records = decided_records(s, stream.lines)
        decide_s = time.perf_counter() - started
        log("ceilings: one COPY of their ledger rows")
        copy_s = postgres_copy(s, records)
    return {"kafka_events": consumed, "kafka_consume_events_per_s": consumed / kafka_s,
            "operators_events": n, "operators_events_per_s": n / decide_s,
            "copy_rows": n, "postgres_copy_rows_per_s": n / copy_s}
