"""Reference ceilings, same machine, same run: what the broker and Postgres do with no Aforo
in between, so every figure can be read as a fraction of what the services allow.

* Kafka: one confluent-kafka consumer reading the raw topic to the end of every partition.
* The operators: the gates, dedup, enrich, rate and route over every event, batch by batch in
  one plain Python loop (no Bytewax, no Kafka, no Postgres: claims and totals in memory), plus
  building the ledger rows: what one Python thread can decide.
* Postgres: the flow's own ledger transactions (sinks.ledger.commit: ledger rows, lines, audit
  chain, running totals) of those decided batches, into the real, indexed, WAL-logged tables of
  a fresh installation: what the ledger write can reach with nothing else to do.
"""

from __future__ import annotations

import time
from typing import Any

import config
from bench.events import Stream
from bench.rules import Rules
from bench.workspace import Workspace, log, produce, raw_batches
from operators.dedup import InMemoryClaims, decide
from operators.enrich import enrich_batch
from operators.gates import admit
from operators.revenue import RunningTotals, fresh_totals
from operators.route import route_batch
from schemas.record import Batch, Record
from sinks.kafka import record_key
from sinks.ledger import Writes, commit, writes_of
from sinks.postgres import connect

BATCH = 2000


def kafka_consume(s: config.Settings) -> tuple[int, float]:
    """(events read, seconds), timed from the first batch on: connecting and fetching metadata
    are not the broker's throughput."""
    batches = raw_batches(s)
    first = next(batch for batch in batches if batch)
    started = time.perf_counter()
    n = len(first) + sum(len(batch) for batch in batches)
    return n, time.perf_counter() - started


def decided_writes(s: config.Settings, lines: list[bytes]) -> tuple[list[Writes], float]:
    """The events decided batch by batch by the flow's operators in this process, as the ledger
    transactions they make; and the seconds that took."""
    now_ms = int(time.time() * 1000)
    # one batch per partition, as the flow's source gives them
    records = [Record(s.topics.raw, "ceiling-topic", i % 8, i, now_ms, line, record_key(line))
               for i, line in enumerate(lines)]
    claims, totals, out = InMemoryClaims(), RunningTotals(fresh_totals, max_keys=1 << 62), []
    with connect(s.database_url) as conn:  # each customer is looked up once, as the flow caches it
        rules = Rules(conn)
        started = time.perf_counter()
        for p in range(8):
            mine = [r for r in records if r.partition == p]
            for i in range(0, len(mine), BATCH):
                batch = Batch(s.topics.raw, "ceiling-topic", p, mine[i:i + BATCH])
                admit(rules.key_paths(), batch)
                decide(claims, batch)
                enrich_batch(rules, batch)
                totals.rate_batch(rules.tenants(), batch)
                route_batch(s.topics, s.secret, batch)
                out.append(writes_of(batch))
        return out, time.perf_counter() - started


def postgres_commits(s: config.Settings, writes: list[Writes]) -> float:
    """Seconds to commit the batches' ledger transactions into the installation's tables."""
    with connect(s.database_url) as conn:
        started = time.perf_counter()
        for w in writes:
            commit(conn, [w], lambda: None)
        return time.perf_counter() - started


def measure_ceilings(ws: Workspace, stream: Stream) -> dict[str, Any]:
    n = len(stream.lines)
    with ws.installation("ceilings") as s:
        log(f"ceilings: producing {n:,} events")
        produce(s, stream.lines)
        log("ceilings: consuming them with a bare Kafka consumer")
        consumed, kafka_s = kafka_consume(s)
        log("ceilings: deciding them with the flow's operators in this process")
        writes, decide_s = decided_writes(s, stream.lines)
        log("ceilings: committing their ledger transactions")
        commit_s = postgres_commits(s, writes)
    return {"kafka_events": consumed, "kafka_consume_events_per_s": consumed / kafka_s,
            "operators_events": n, "operators_events_per_s": n / decide_s,
            "commit_rows": sum(len(w.rows) for w in writes),
            "postgres_commit_rows_per_s": sum(len(w.rows) for w in writes) / commit_s}
