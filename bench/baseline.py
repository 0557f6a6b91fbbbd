"""The textbook transactional design Aforo is compared with: one database transaction per event.

A single consumer reads the raw topic and, for each event, in one transaction: looks its
idempotency key up in the claims table (and claims it), locks the running-total row of every
(tenant, subscription, metric, period) it feeds with SELECT ... FOR UPDATE, prices the event's
marginal revenue from it, writes the new total back and inserts the ledger row and its lines.

The decisions are the flow's own: the same operators (bench/rules.py), the same Dedup rules
with the claims table as its only memory, and the same rating code (SubscriptionRevenue, which
calls operators.pricing.marginal) on totals loaded from and stored to the locked rows. It writes
the same ledger, ledger_lines and dedup_claims tables; its running totals play the part of the
flow's `revenue` table. It does less than the flow's sinks (no output topics, for one), which
only flatters it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from bytewax.connectors.kafka import KafkaSourceMessage
from psycopg.types.json import Jsonb

import config
from bench.events import Stream
from bench.rules import LEDGER_COLUMNS, LINE_COLUMNS, Rules
from bench.workspace import Workspace, ledger_summary, log, produce, raw_batches
from operators.dedup import Claim, Dedup
from operators.enrich import enrich_batch
from operators.revenue import PeriodTotals, SubscriptionRevenue
from schemas.record import Record
from sinks.kafka import to_record, topic_id
from sinks.ledger import ledger_row, line_rows

_TOTALS_TABLE = """
CREATE TABLE baseline_totals (
    tenant        text    NOT NULL,
    subscription  text    NOT NULL,
    metric        text    NOT NULL,
    period        text    NOT NULL,
    events        bigint  NOT NULL,
    quantity      numeric NOT NULL,
    revenue       numeric NOT NULL,
    cost          numeric NOT NULL,
    groups        jsonb   NOT NULL,  -- per pricing group: running total, `latest` time, distinct values
    PRIMARY KEY (tenant, subscription, metric, period)
)
"""
_LOCK_TOTAL = """
SELECT events, quantity, revenue, cost, groups FROM baseline_totals
WHERE tenant = %s AND subscription = %s AND metric = %s AND period = %s FOR UPDATE
"""
_UPSERT_TOTAL = """
INSERT INTO baseline_totals VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (tenant, subscription, metric, period) DO UPDATE SET events = excluded.events,
    quantity = excluded.quantity, revenue = excluded.revenue, cost = excluded.cost,
    groups = excluded.groups
"""
_FIND_CLAIM = """
SELECT raw_topic_id, raw_partition, raw_offset, payload_hash,
       (extract(epoch FROM ingested_at) * 1000)::bigint
FROM dedup_claims WHERE dedup_key = %s
"""
_INSERT_CLAIM = "INSERT INTO dedup_claims VALUES (%s, %s, %s, %s, %s, %s)"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _insert(table: str, columns: tuple[tuple[str, str], ...]) -> str:
    names = ", ".join(name for name, _ in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(columns))})"


def _dump_groups(t: PeriodTotals) -> Jsonb:
    return Jsonb({
        "totals": [[list(g), str(v)] for g, v in t.groups.items()],
        "latest_at": [[list(g), v] for g, v in t.latest_at.items()],
        "distinct": [[list(g), list(v)] for g, v in t.distinct.items()],
    })


def _load_totals(events: int, quantity: Decimal, revenue: Decimal, cost: Decimal,
                 groups: dict[str, Any]) -> PeriodTotals:
    return PeriodTotals(
        events, quantity, revenue, cost,
        groups={tuple(g): Decimal(v) for g, v in groups["totals"]},
        distinct={tuple(g): set(v) for g, v in groups["distinct"]},
        latest_at={tuple(g): v for g, v in groups["latest_at"]})


class _Transactional:
    def __init__(self, conn: psycopg.Connection, settings: config.Settings):
        self._conn = conn
        self._rules = Rules(conn, settings)
        # No cache: every key is looked up in the claims table, inside the event's transaction.
        self._dedup = Dedup(self._find_claim, max_cached=0)
        self._insert_ledger = _insert("ledger", LEDGER_COLUMNS)
        self._insert_line = _insert("ledger_lines", LINE_COLUMNS)

    def _find_claim(self, keys: set[str]) -> dict[str, Claim]:
        [key] = keys
        row = self._conn.execute(_FIND_CLAIM, (key,)).fetchone()
        return {} if row is None else {key: Claim(*row)}

    def _rate(self, rec: Record) -> None:
        """Lock each running total the event feeds, price it, and store the new totals."""
        tenant, b = rec.event["tenantid"], rec.billing
        revenue = SubscriptionRevenue()
        for use in b.uses:
            row = self._conn.execute(_LOCK_TOTAL, (tenant, b.subscription, use.metric, b.period)).fetchone()
            if row is not None:
                revenue.totals[(use.metric, b.period)] = _load_totals(*row)
        revenue.rate_batch([rec], self._rules.tenants())
        for line in rec.lines or ():
            totals = revenue.totals[(line.metric, b.period)]
            self._conn.execute(_UPSERT_TOTAL, (
                tenant, b.subscription, line.metric, b.period, line.events_after, line.usage_after,
                line.revenue_after, line.cost_after, _dump_groups(totals)))

    def process(self, rec: Record, timestamp_type: int) -> None:
        self._rules.validate(rec, timestamp_type)
        with self._conn.transaction():
            if rec.pending:
                self._dedup.decide([rec])
                if rec.pending:  # it claimed the key
                    self._conn.execute(_INSERT_CLAIM, (
                        rec.dedup_key, rec.topic_id, rec.partition, rec.offset, rec.payload_hash,
                        _EPOCH + timedelta(milliseconds=rec.ingested_ms)))
            enrich_batch(self._rules, [rec])
            if rec.status is None:
                self._rate(rec)
            self._rules.route(rec)
            self._conn.execute(self._insert_ledger, ledger_row(rec))
            if rec.lines:
                with self._conn.cursor() as cur:
                    cur.executemany(self._insert_line, line_rows(rec))


def run_baseline(settings: config.Settings) -> tuple[int, float]:
    """Process the installation's raw topic to its end; (events processed, seconds)."""
    raw_id = topic_id(settings, settings.topics.raw)
    # autocommit: each event's `transaction()` is then a real BEGIN ... COMMIT, not a savepoint
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(_TOTALS_TABLE)
        started = time.perf_counter()
        baseline = _Transactional(conn, settings)
        n = 0
        for batch in raw_batches(settings):
            for msg in batch:
                rec, ts_type = to_record(KafkaSourceMessage(
                    key=msg.key(), value=msg.value(), topic=msg.topic(), headers=msg.headers() or [],
                    latency=msg.latency(), offset=msg.offset(), partition=msg.partition(),
                    timestamp=msg.timestamp()), raw_id)
                baseline.process(rec, ts_type)
                n += 1
        return n, time.perf_counter() - started


def measure_baseline(ws: Workspace, stream: Stream, n: int) -> dict[str, Any]:
    """The first n events of the stream through the baseline, in an installation of its own."""
    with ws.installation("baseline") as s:
        log(f"baseline: producing {n:,} events")
        produce(s, stream.lines[:n])
        log("baseline: one transaction per event")
        processed, seconds = run_baseline(s)
        ledger = ledger_summary(s)
    figures = {
        "events": n, "processed": processed, "seconds": seconds, "events_per_s": processed / seconds,
        **ledger, "conserved": ledger["ledger_rows"] == n,
        "counts_match_expected": ledger["status_counts"] == stream.expected(n),
    }
    log(f"baseline: {figures['events_per_s']:,.0f} events/s")
    return figures
