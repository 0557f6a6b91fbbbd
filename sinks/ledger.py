"""The ledger sink: batched, idempotent writes of terminal records, and the claim index reader."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from psycopg.types.json import Jsonb

from operators.audit import values_hash
from operators.dedup import Claim
from schemas.record import Record, Status, parse_ref
from sinks.audit import append_to_chains, store_entries
from sinks.postgres import connect

# (column, type) of what the sink writes: binary COPY with declared types is about twice as fast
# as text COPY to format.
LEDGER_COLUMNS = (
    ("raw_topic", "text"), ("raw_topic_id", "text"), ("raw_partition", "int4"), ("raw_offset", "int8"),
    ("raw_key", "bytea"), ("raw", "bytea"), ("ingested_at", "timestamptz"), ("status", "text"),
    ("reason", "text"), ("detail", "text"), ("tenantid", "text"), ("source", "text"),
    ("event_id", "text"), ("type", "text"), ("subject", "text"), ("event_time", "timestamptz"),
    ("dedup_key", "text"), ("payload_hash", "bytea"), ("route", "text"), ("validation_hash", "text"),
    ("customer", "text"), ("subscription", "text"), ("plan", "text"), ("plan_version", "int4"),
    ("currency", "text"), ("period", "text"), ("revenue", "numeric"), ("cost", "numeric"),
    ("margin", "numeric"), ("tier", "text"), ("reinject_of", "text"), ("adjusts_period", "text"),
)
LINE_COLUMNS = (
    ("raw_topic_id", "text"), ("raw_partition", "int4"), ("raw_offset", "int8"), ("metric", "text"),
    ("grp", "jsonb"), ("quantity", "numeric"), ("total_after", "numeric"), ("revenue", "numeric"),
    ("cost", "numeric"), ("margin", "numeric"),
)
_CLAIM_COLUMNS = (
    ("dedup_key", "text"), ("raw_topic_id", "text"), ("raw_partition", "int4"), ("raw_offset", "int8"),
    ("payload_hash", "bytea"), ("ingested_at", "timestamptz"),
)
LEDGER_NAMES = tuple(name for name, _ in LEDGER_COLUMNS)
_SEALED_COLUMNS = (*LEDGER_COLUMNS, ("audit_seq", "int8"))
_CREATE_CLAIMS_STAGE = ("CREATE TEMP TABLE IF NOT EXISTS claims_stage (LIKE dedup_claims)"
                        " ON COMMIT DELETE ROWS")
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
_TAKE_OVER_CLAIM = """
UPDATE dedup_claims SET raw_topic_id = %s, raw_partition = %s, raw_offset = %s
WHERE dedup_key = %s AND (raw_topic_id, raw_partition, raw_offset) = (%s, %s, %s)
"""
_PURGE_CLAIMS = """
DELETE FROM dedup_claims
WHERE ingested_at < (SELECT max(ingested_at) FROM dedup_claims) - interval '91 days'
"""
_PURGE_EVERY = 1000  # batches; claims past the horizon can never match again
_QUEUED_BATCHES = 4  # backpressure: the flow waits when the writer falls this far behind
_RETRIES = 3
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
        *money, _text(r.tier), r.reinject_of, b.adjusts_period if b else None,
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


def claim_row(r: Record, ledger_row: tuple) -> tuple:
    return (r.dedup_key, r.topic_id, r.partition, r.offset, r.payload_hash, ledger_row[6])


Columns = tuple[tuple[str, str], ...]  # (name, Postgres type)


def copy_rows(cur: psycopg.Cursor, table: str, columns: Columns, rows: list[tuple]) -> None:
    """Binary COPY of rows into the named columns of a table."""
    names = ", ".join(name for name, _ in columns)
    with cur.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types([pg_type for _, pg_type in columns])
        for row in rows:
            copy.write_row(row)


def _line_values(r: Record) -> list[dict]:
    return [{"metric": x.metric, "grp": x.group, "quantity": x.quantity, "total_after": x.total_after,
             "revenue": x.revenue, "cost": x.cost, "margin": x.margin} for x in r.lines or ()]


def _seal(cur: psycopg.Cursor, records: list[Record], rows: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """Append every new row to its tenant's audit chain: (chain entries, rows with their entry's seq)."""
    tenant_at = LEDGER_NAMES.index("tenantid")
    # the ledger row's columns are AUDIT_COLUMNS, in order (tests/test_audit.py checks it)
    items = [(row[tenant_at] or "", r.coords, values_hash(row, _line_values(r)))
             for r, row in zip(records, rows, strict=True)]
    entries, seqs = append_to_chains(cur, "insert", items)
    return entries, [(*row, seq) for row, seq in zip(rows, seqs, strict=True)]


def _new_only(cur: psycopg.Cursor, records: list[Record]) -> list[Record]:
    """The records not in the ledger yet (a replayed epoch repeats some that are)."""
    existing = set(cur.execute(
        "SELECT raw_topic_id, raw_partition, raw_offset FROM ledger"
        " WHERE (raw_topic_id, raw_partition, raw_offset) IN"
        " (SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[]))",
        ([r.topic_id for r in records], [r.partition for r in records], [r.offset for r in records])))
    return [r for r in records if r.coords not in existing]


def write_ledger(conn: psycopg.Connection, records: list[Record]) -> None:
    """Write terminal records, their lines, dedup claims, revenue totals and audit entries in one
    transaction. Safe to repeat.

    The common case is a straight COPY into every table. When that meets a row that is already
    there (the epochs replayed after a crash, or a dedup key reclaimed after the horizon), the
    batch is retried with only its new records and the claims go through an upsert.
    """
    try:
        with conn.transaction(), conn.cursor() as cur:
            _write(cur, records, replayed=False)
    except psycopg.errors.UniqueViolation:
        with conn.transaction(), conn.cursor() as cur:
            fresh = _new_only(cur, records)
            if fresh:
                _write(cur, fresh, replayed=True)
            cur.executemany(_UPSERT_REVENUE, revenue_rows(records))


def _write(cur: psycopg.Cursor, records: list[Record], replayed: bool) -> None:
    rows = [ledger_row(r) for r in records]
    claiming = [(r, row) for r, row in zip(records, rows, strict=True) if r.status in _CLAIMING]
    claims = [claim_row(r, row) for r, row in claiming if r.reinject_of is None]
    # An approved re-injection takes over the claim of the held record it stands for.
    cur.executemany(_TAKE_OVER_CLAIM, [(*r.coords, r.dedup_key, *parse_ref(r.reinject_of))
                                       for r, _ in claiming if r.reinject_of is not None])
    entries, sealed = _seal(cur, records, rows)
    copy_rows(cur, "ledger", _SEALED_COLUMNS, sealed)
    copy_rows(cur, "ledger_lines", LINE_COLUMNS, [line for r in records if r.lines for line in line_rows(r)])
    store_entries(cur, entries)
    if replayed:
        cur.execute(_CREATE_CLAIMS_STAGE)
        copy_rows(cur, "claims_stage", _CLAIM_COLUMNS, claims)
        cur.execute(_INSERT_NEW_CLAIMS)
    else:
        copy_rows(cur, "dedup_claims", _CLAIM_COLUMNS, claims)
        cur.executemany(_UPSERT_REVENUE, revenue_rows(records))


class _LedgerPartition(StatefulSinkPartition[Record, None]):
    """Writes on a background thread, so the flow keeps processing while Postgres commits.

    Bytewax calls snapshot() when an epoch closes and commits the epoch only after it returns,
    so waiting there for every queued write keeps the guarantee a synchronous sink gives: no
    epoch is marked done before its ledger rows are durable.
    """

    def __init__(self, url: str):
        self._conn = connect(url)
        self._queue: queue.Queue[list[Record] | None] = queue.Queue(maxsize=_QUEUED_BATCHES)
        self._failure: BaseException | None = None
        # Raised once: Bytewax closes partitions while unwinding from that error, and a second
        # error there would abort the process instead of letting recovery take over.
        self._failure_raised = False
        self._batches = 0
        self._thread = threading.Thread(target=self._write_queued, name="ledger-writer", daemon=True)
        self._thread.start()

    def _write_queued(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                if self._failure is None:
                    self._write(batch)
            except BaseException as exc:  # re-raised on the worker thread, which crashes the flow
                self._failure = exc
            finally:
                self._queue.task_done()

    def _write(self, batch: list[Record]) -> None:
        for attempt in range(_RETRIES):
            try:
                write_ledger(self._conn, batch)
                break
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                # writers of the same tenant's audit chain can collide; the write is all or
                # nothing, so trying again is safe
                if attempt == _RETRIES - 1:
                    raise
        self._batches += 1
        if self._batches % _PURGE_EVERY == 0:
            with self._conn.transaction():
                self._conn.execute(_PURGE_CLAIMS)

    def _raise_failure(self) -> None:
        if self._failure is not None and not self._failure_raised:
            self._failure_raised = True
            raise RuntimeError(f"writing the ledger failed: {self._failure!r}") from self._failure

    def write_batch(self, values: list[Record]) -> None:
        self._raise_failure()
        self._queue.put(values)

    def snapshot(self) -> None:
        self._queue.join()
        self._raise_failure()

    def close(self) -> None:
        self._queue.join()
        self._queue.put(None)
        self._thread.join()
        self._conn.close()
        self._raise_failure()


class LedgerSink(FixedPartitionedSink[Record, None]):
    """Items are (raw partition, record); each sink partition owns a writer thread and connection.
    A subscription's events share a raw partition, so one writer keeps its revenue rows."""

    def __init__(self, url: str, parts: int = 2):
        self._url = url
        self._parts = [f"ledger-{i}" for i in range(parts)]

    def list_parts(self) -> list[str]:
        return self._parts

    def part_fn(self, item_key: str) -> int:
        return int(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _LedgerPartition:
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
