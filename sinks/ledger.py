"""The ledger sink: batched, idempotent writes of terminal records, and the claim index reader."""

from __future__ import annotations

import threading
from collections.abc import Iterable

import psycopg
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from operators.dedup import Claim
from schemas.record import Record
from sinks.postgres import connect

_STAGE_COLUMNS = (
    "raw_topic", "raw_topic_id", "raw_partition", "raw_offset", "raw_key", "raw", "ingested_ms", "status",
    "reason", "detail", "tenantid", "source", "event_id", "type", "subject", "event_us",
    "dedup_key", "payload_hash", "route", "validation_hash",
)
_CREATE_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS ledger_stage (
    raw_topic text, raw_topic_id text, raw_partition integer, raw_offset bigint, raw_key bytea, raw bytea,
    ingested_ms bigint, status text, reason text, detail text, tenantid text, source text,
    event_id text, type text, subject text, event_us bigint, dedup_key text,
    payload_hash bytea, route text, validation_hash text
) ON COMMIT DELETE ROWS
"""
_MS = "timestamptz 'epoch' + {} * interval '1 millisecond'"
_US = "timestamptz 'epoch' + {} * interval '1 microsecond'"
_INSERT_LEDGER = f"""
INSERT INTO ledger (raw_topic, raw_topic_id, raw_partition, raw_offset, raw_key, raw, ingested_at, status,
    reason, detail, tenantid, source, event_id, type, subject, event_time, dedup_key,
    payload_hash, route, validation_hash)
SELECT raw_topic, raw_topic_id, raw_partition, raw_offset, raw_key, raw, {_MS.format("ingested_ms")}, status,
    reason, detail, tenantid, source, event_id, type, subject, {_US.format("event_us")}, dedup_key,
    payload_hash, route, validation_hash
FROM ledger_stage
ON CONFLICT DO NOTHING
"""
# A claim is replaced only once it is past the 90-day horizon (the key may then be reused).
_INSERT_CLAIMS = f"""
INSERT INTO dedup_claims (dedup_key, raw_topic_id, raw_partition, raw_offset, payload_hash,
    ingested_at)
SELECT DISTINCT ON (dedup_key) dedup_key, raw_topic_id, raw_partition, raw_offset, payload_hash,
    {_MS.format("ingested_ms")}
FROM ledger_stage WHERE status IN ('accepted', 'late')
ORDER BY dedup_key, ingested_ms DESC
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


def _text(value: object) -> str | None:
    # Rejected records may carry anything in these attributes; keep only what Postgres text holds.
    if isinstance(value, str) and "\x00" not in value:
        return value
    return None


def ledger_row(r: Record) -> tuple:
    e = r.event if r.event is not None else {}
    return (
        r.topic, r.topic_id, r.partition, r.offset, r.key, r.raw, r.ingested_ms, r.status, r.reason, r.detail,
        _text(e.get("tenantid")), _text(e.get("source")), _text(e.get("id")),
        _text(e.get("type")), _text(e.get("subject")), r.event_us, r.dedup_key, r.payload_hash,
        r.route, r.validation_hash,
    )


def write_ledger(conn: psycopg.Connection, records: Iterable[Record]) -> None:
    """One transaction: COPY into a stage, then insert what is new. Safe to repeat."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_CREATE_STAGE)
        with cur.copy(f"COPY ledger_stage ({', '.join(_STAGE_COLUMNS)}) FROM STDIN") as copy:
            for r in records:
                copy.write_row(ledger_row(r))
        cur.execute(_INSERT_LEDGER)
        cur.execute(_INSERT_CLAIMS)


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
        rows = self._conn().execute(
            "SELECT dedup_key, raw_topic_id, raw_partition, raw_offset, payload_hash,"
            " (extract(epoch FROM ingested_at) * 1000)::bigint"
            " FROM dedup_claims WHERE dedup_key = ANY(%s)", (list(keys),)).fetchall()
        return {k: Claim(t, p, o, h, ms) for k, t, p, o, h, ms in rows}


# --- reading the ledger -------------------------------------------------------------------------

EXPORT_COLUMNS = (
    "tenantid", "source", "id", "type", "subject", "time", "status", "reason", "detail",
    "ingested_at", "processed_at", "topic", "partition", "offset", "route", "dedup_key",
    "validation_hash",
)
_EXPORT_SELECT = """
SELECT tenantid, source, event_id, type, subject, event_time, status, reason, detail,
       ingested_at, processed_at, raw_topic, raw_partition, raw_offset, route, dedup_key,
       validation_hash
FROM ledger
"""


def export_rows(conn: psycopg.Connection, tenant: str | None, status: str | None) -> Iterable[dict]:
    """Every ledger row matching the filters, streamed with a server-side cursor."""
    where, params = [], []
    if tenant is not None:
        where.append("tenantid = %s")
        params.append(tenant)
    if status is not None:
        where.append("status = %s")
        params.append(status)
    sql = _EXPORT_SELECT + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY ingested_at, raw_partition, raw_offset"
    with conn.cursor(name="aforo_export") as cur:
        cur.itersize = 5000
        cur.execute(sql, params)
        for row in cur:
            yield dict(zip(EXPORT_COLUMNS, row, strict=True))


def event_chain(conn: psycopg.Connection, tenant: str, source: str, event_id: str) -> list[dict]:
    """Every raw record that carried this event (the original and any duplicates), in arrival order."""
    cur = conn.execute(
        "SELECT raw_topic, raw_topic_id, raw_partition, raw_offset, raw_key, raw, ingested_at,"
        " processed_at, status, reason, detail, tenantid, source, event_id, type, subject,"
        " event_time, dedup_key, payload_hash, route, validation_hash FROM ledger"
        " WHERE tenantid = %s AND source = %s AND event_id = %s"
        " ORDER BY ingested_at, raw_partition, raw_offset", (tenant, source, event_id))
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur]


def status_counts(conn: psycopg.Connection, raw_topic: str | None = None) -> list[tuple[str, str, int]]:
    sql = "SELECT status, coalesce(reason, ''), count(*) FROM ledger"
    params: list = []
    if raw_topic is not None:
        sql += " WHERE raw_topic = %s"
        params.append(raw_topic)
    sql += " GROUP BY 1, 2 ORDER BY 1, 2"
    return [(s, r, n) for s, r, n in conn.execute(sql, params)]
