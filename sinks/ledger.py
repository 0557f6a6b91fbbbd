"""The ledger sink: batched, idempotent writes of terminal records, and the claim index reader."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from psycopg.types.json import Jsonb

from operators.dedup import Claim
from schemas.record import Record, Status
from sinks.postgres import connect

_LEDGER_COLUMNS = (
    "raw_topic", "raw_topic_id", "raw_partition", "raw_offset", "raw_key", "raw", "ingested_at",
    "status", "reason", "detail", "tenantid", "source", "event_id", "type", "subject",
    "event_time", "dedup_key", "payload_hash", "route", "validation_hash", "customer", "subscription",
    "plan", "plan_version", "currency", "period", "revenue", "cost", "margin",
)
_LINE_COLUMNS = ("raw_topic_id", "raw_partition", "raw_offset", "metric", "grp", "quantity",
                 "total_after", "revenue", "cost", "margin")
_CLAIM_COLUMNS = ("dedup_key", "raw_topic_id", "raw_partition", "raw_offset", "payload_hash",
                  "ingested_at")
_COPY_LEDGER = "COPY {} (" + ", ".join(_LEDGER_COLUMNS) + ") FROM STDIN"
_COPY_CLAIMS = "COPY {} (" + ", ".join(_CLAIM_COLUMNS) + ") FROM STDIN"
_COPY_LINES = "COPY {} (" + ", ".join(_LINE_COLUMNS) + ") FROM STDIN"
_CREATE_STAGES = """
CREATE TEMP TABLE IF NOT EXISTS ledger_stage (LIKE ledger INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS claims_stage (LIKE dedup_claims) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS lines_stage (LIKE ledger_lines INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
"""
_INSERT_NEW_LEDGER_ROWS = """
INSERT INTO ledger SELECT * FROM ledger_stage ON CONFLICT DO NOTHING;
INSERT INTO ledger_lines SELECT * FROM lines_stage ON CONFLICT DO NOTHING;
"""
# Totals only move forward: a replayed batch carries older totals (fewer events) and loses.
_UPSERT_REVENUE = """
INSERT INTO revenue (tenant, customer, subscription, metric, period, currency, events, quantity,
    revenue, cost)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (tenant, subscription, metric, period) DO UPDATE SET
    events = excluded.events, quantity = excluded.quantity, revenue = excluded.revenue,
    cost = excluded.cost, updated_at = now()
WHERE revenue.events < excluded.events
"""
# A claim is replaced only once it is past the 90-day horizon (the key may then be reused).
_INSERT_NEW_CLAIMS = """
INSERT INTO dedup_claims
SELECT DISTINCT ON (dedup_key) * FROM claims_stage ORDER BY dedup_key, ingested_at DESC
ON CONFLICT (dedup_key) DO UPDATE SET
    raw_topic_id = excluded.raw_topic_id, raw_partition = excluded.raw_partition,
    raw_offset = excluded.raw_offset, payload_hash = excluded.payload_hash,
    ingested_at = excluded.ingested_at
WHERE dedup_claims.ingested_at < excluded.ingested_at - interval '90 days'
"""
_PURGE_CLAIMS = """
DELETE FROM dedup_claims
WHERE ingested_at < (SELECT max(ingested_at) FROM dedup_claims) - interval '91 days'
"""
_PURGE_EVERY = 1000  # batches; claims past the horizon can never match again
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CLAIMING = (Status.ACCEPTED, Status.LATE)
_ZERO = Decimal(0)


def _text(value: object) -> str | None:
    # Rejected records may carry anything in these attributes; keep only what Postgres text holds.
    if isinstance(value, str) and "\x00" not in value:
        return value
    return None


def ledger_row(r: Record) -> tuple:
    e = r.event if r.event is not None else {}
    b = r.billing
    if r.lines is not None:
        revenue = sum((line.revenue for line in r.lines), _ZERO)
        cost = sum((line.cost for line in r.lines), _ZERO)
        money = (revenue, cost, revenue - cost)
    else:
        money = (None, None, None)
    return (
        r.topic, r.topic_id, r.partition, r.offset, r.key, r.raw,
        _EPOCH + timedelta(milliseconds=r.ingested_ms), r.status, r.reason, r.detail,
        _text(e.get("tenantid")), _text(e.get("source")), _text(e.get("id")),
        _text(e.get("type")), _text(e.get("subject")),
        None if r.event_us is None else _EPOCH + timedelta(microseconds=r.event_us),
        r.dedup_key, r.payload_hash, r.route, r.validation_hash,
        *((b.customer, b.subscription, b.plan, b.plan_version, b.currency, b.period) if b else (None,) * 6),
        *money,
    )


def line_rows(r: Record) -> list[tuple]:
    return [(r.topic_id, r.partition, r.offset, line.metric, Jsonb(line.group), line.quantity,
             line.total_after, line.revenue, line.cost, line.margin) for line in r.lines or ()]


def revenue_rows(records: list[Record]) -> list[tuple]:
    """The newest totals per (tenant, subscription, metric, period) in this batch."""
    newest: dict[tuple, tuple] = {}
    for r in records:
        if not r.lines:
            continue
        b, tenant = r.billing, r.event["tenantid"]
        for line in r.lines:
            key = (tenant, b.subscription, line.metric, b.period)
            if key not in newest or newest[key][6] < line.events_after:
                newest[key] = (tenant, b.customer, b.subscription, line.metric, b.period, b.currency,
                               line.events_after, line.usage_after, line.revenue_after, line.cost_after)
    return list(newest.values())


def claim_row(r: Record) -> tuple:
    return (r.dedup_key, r.topic_id, r.partition, r.offset, r.payload_hash,
            _EPOCH + timedelta(milliseconds=r.ingested_ms))


def _copy(cur: psycopg.Cursor, sql: str, rows: list[tuple]) -> None:
    with cur.copy(sql) as copy:
        for row in rows:
            copy.write_row(row)


def write_ledger(conn: psycopg.Connection, records: list[Record]) -> None:
    """Write terminal records and their dedup claims in one transaction. Safe to repeat.

    The common case is a straight COPY into both tables. Only when that meets a row that is
    already there (the epochs replayed after a crash, or a key reclaimed after the horizon)
    does the batch go through stage tables and insert just what is new.
    """
    rows = [ledger_row(r) for r in records]
    claims = [claim_row(r) for r in records if r.status in _CLAIMING]
    lines = [line for r in records if r.lines for line in line_rows(r)]
    totals = revenue_rows(records)
    try:
        with conn.transaction(), conn.cursor() as cur:
            _copy(cur, _COPY_LEDGER.format("ledger"), rows)
            _copy(cur, _COPY_CLAIMS.format("dedup_claims"), claims)
            _copy(cur, _COPY_LINES.format("ledger_lines"), lines)
            cur.executemany(_UPSERT_REVENUE, totals)
    except psycopg.errors.UniqueViolation:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_CREATE_STAGES)
            _copy(cur, _COPY_LEDGER.format("ledger_stage"), rows)
            _copy(cur, _COPY_CLAIMS.format("claims_stage"), claims)
            _copy(cur, _COPY_LINES.format("lines_stage"), lines)
            cur.execute(_INSERT_NEW_LEDGER_ROWS)
            cur.execute(_INSERT_NEW_CLAIMS)
            cur.executemany(_UPSERT_REVENUE, totals)


class _LedgerPartition(StatelessSinkPartition[Record]):
    def __init__(self, url: str):
        self._conn = connect(url)
        self._batches = 0

    def write_batch(self, items: list[Record]) -> None:
        write_ledger(self._conn, items)
        self._batches += 1
        if self._batches % _PURGE_EVERY == 0:
            with self._conn.transaction():
                self._conn.execute(_PURGE_CLAIMS)

    def close(self) -> None:
        self._conn.close()


class LedgerSink(DynamicSink[Record]):
    def __init__(self, url: str):
        self._url = url

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LedgerPartition:
        return _LedgerPartition(self._url)


class ClaimIndex:
    """Reads durable dedup claims. One connection per worker thread (psycopg connections are
    not shared across threads)."""

    def __init__(self, url: str):
        self._url = url
        self._local = threading.local()

    def _conn(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = connect(self._url, autocommit=True)
        return conn

    def lookup(self, keys: Iterable[str]) -> dict[str, Claim]:
        # %b sends the keys as a binary array: text-array escaping was a hot spot
        rows = self._conn().execute(
            "SELECT dedup_key, raw_topic_id, raw_partition, raw_offset, payload_hash,"
            " (extract(epoch FROM ingested_at) * 1000)::bigint"
            " FROM dedup_claims WHERE dedup_key = ANY(%b)", (list(keys),)).fetchall()
        return {k: Claim(t, p, o, h, ms) for k, t, p, o, h, ms in rows}
