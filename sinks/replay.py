"""Replay's adapters: read a period's raw records (archive or topic), write the shadow ledger,
and compare shadow and live ledgers by digest and by figures."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import orjson
import psycopg
from confluent_kafka import Consumer, KafkaError, TopicPartition

from config import Settings
from operators.audit import AUDIT_COLUMNS
from schemas.errors import Conflict
from schemas.record import Record
from sinks.audit import reseal
from sinks.kafka import kafka_config, topic_id
from sinks.ledger import LINE_NAMES, copy_text, line_texts, row_text
from sinks.raw_source import record_of


@dataclass(frozen=True)
class Scope:
    """A tenant's billing period: the ledger rows whose event time falls in [start, end), except
    adjustments of a closed period (billed, and so counted, in a later one), plus the adjustments
    billed in this one: exactly the rows its invoices and running totals count."""

    tenant: str
    start: datetime
    end: datetime
    closed_through: int | None = None  # a closed period's: the rows its close covered (sinks/periods.py)
    at_close: bool = False  # only those rows (what the close records), not the accepted ones since

    @property
    def period(self) -> str:
        return self.start.strftime("%Y-%m")

    def where(self, alias: str = "") -> tuple[str, tuple]:
        # Adjustments belong to the period they are billed in, not to the closed one of their time.
        a = f"{alias}." if alias else ""
        where = (f"{a}tenantid = %s AND (({a}event_time >= %s AND {a}event_time < %s"
                 f" AND {a}adjusts_period IS NULL) OR ({a}adjusts_period IS NOT NULL AND {a}period = %s))")
        params = (self.tenant, self.start, self.end, self.period)
        if self.closed_through is None:
            return where, params
        since = "" if self.at_close else f" OR {a}status = 'accepted'"
        return f"{where} AND ({a}id <= %s{since})", (*params, self.closed_through)


def archived_records(conn: psycopg.Connection, scope: Scope) -> list[Record]:
    """The period's raw records as the ledger archived them, verbatim."""
    where, params = scope.where()
    rows = conn.execute(
        "SELECT raw_topic, raw_topic_id, raw_partition, raw_offset,"
        " (extract(epoch FROM ingested_at) * 1000)::bigint, raw, raw_key, tier, reinject_of, backfill"
        f" FROM ledger WHERE {where} ORDER BY raw_topic_id, raw_partition, raw_offset", params)
    return [Record(t, tid, p, o, ms, bytes(raw), key=None if key is None else bytes(key), tier=tier,
                   reinject_of=reinject_of, backfill=backfill)
            for t, tid, p, o, ms, raw, key, tier, reinject_of, backfill in rows]


def topic_records(settings: Settings, keep: Callable[[bytes], bool]) -> Iterator[Record]:
    """Every raw record still in the raw topic that `keep` selects, read to partition EOF.

    Scans from the beginning: the embedded broker answers offsets_for_times with 0 for every
    timestamp, and an event may be ingested up to 90 days after its time anyway.
    """
    topic = settings.topics.raw
    raw_topic_id = topic_id(settings, topic)
    consumer = Consumer(kafka_config(settings, "consumer", group_id="aforo-replay",
                                     enable_partition_eof=True))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        remaining = len(partitions)
        while remaining:
            for m in consumer.consume(1000, 5.0):
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(f"reading {topic}: {m.error()}")
                    remaining -= 1
                    continue
                if keep(m.value() or b""):
                    yield record_of(m, raw_topic_id)
    finally:
        consumer.close()


def write_shadow(conn: psycopg.Connection, scope: Scope, period: str, source: str,
                 records: list[Record]) -> int:
    """Store a shadow ledger; returns its replay id. Digests are filled in by `finish_replay`."""
    with conn.transaction(), conn.cursor() as cur:
        replay_id = cur.execute(
            "INSERT INTO replays (tenant, period, source, rows, digest, live_digest)"
            " VALUES (%s, %s, %s, %s, '', '') RETURNING id",
            (scope.tenant, period, source, len(records))).fetchone()[0]
        copy_text(cur, "replay_ledger", ("replay_id", "rating_seq", *AUDIT_COLUMNS),
                  "".join(f"{replay_id}\t{i}\t{row_text(r)}\n" for i, r in enumerate(records)).encode())
        copy_text(cur, "replay_lines", ("replay_id", *LINE_NAMES),
                  "".join(f"{replay_id}\t{r.topic_id}\t{r.partition}\t{r.offset}\t{line}\n"
                          for r in records for line in line_texts(r)).encode())
    return replay_id


# --- the digest: SHA-256 over the canonical rows -------------------------------------------------

DIGEST_COLUMNS = ("raw_topic_id", "raw_partition", "raw_offset", "status", "reason", "detail",
                  "dedup_key", "route", "validation_hash", "customer", "subscription", "plan",
                  "plan_version", "currency", "period", "revenue", "cost", "margin")
DIGEST_LINE_COLUMNS = ("metric", "grp", "quantity", "total_after", "revenue", "cost", "margin")


def _canonical(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    return value


@dataclass(frozen=True)
class Ledger:
    """A ledger to read: the live one within a scope, or one replay's shadow."""

    rows: str
    lines: str
    where: str
    params: tuple

    @classmethod
    def live(cls, scope: Scope) -> Ledger:
        where, params = scope.where("l")
        return cls("ledger", "ledger_lines", where, params)

    @classmethod
    def shadow(cls, replay_id: int) -> Ledger:
        return cls("replay_ledger", "replay_lines", "l.replay_id = %s", (replay_id,))

    def joined(self) -> str:
        same_replay = " AND x.replay_id = l.replay_id" if self.rows == "replay_ledger" else ""
        return (f"{self.rows} l JOIN {self.lines} x ON (x.raw_topic_id, x.raw_partition, x.raw_offset)"
                f" = (l.raw_topic_id, l.raw_partition, l.raw_offset){same_replay}")


def digest(conn: psycopg.Connection, ledger: Ledger) -> str:
    """SHA-256 over one line per ledger row, in (raw topic id, partition, offset) order: the JSON array
    of DIGEST_COLUMNS followed by the row's lines (DIGEST_LINE_COLUMNS, by metric). Numbers are
    their exact decimal strings. processed_at is left out: it is when, not what."""
    line_cols = ", ".join(f"x.{c}" for c in DIGEST_LINE_COLUMNS)
    by_row: dict[tuple, list] = {}
    for row in conn.execute(f"SELECT l.raw_topic_id, l.raw_partition, l.raw_offset, {line_cols}"
                            f" FROM {ledger.joined()} WHERE {ledger.where} ORDER BY 1, 2, 3, x.metric",
                            ledger.params):
        by_row.setdefault(row[:3], []).append([_canonical(v) for v in row[3:]])
    h = hashlib.sha256()
    cols = ", ".join(f"l.{c}" for c in DIGEST_COLUMNS)
    for row in conn.execute(f"SELECT {cols} FROM {ledger.rows} l WHERE {ledger.where}"
                            " ORDER BY l.raw_topic_id, l.raw_partition, l.raw_offset", ledger.params):
        h.update(orjson.dumps([*map(_canonical, row), by_row.get(row[:3], [])]))
        h.update(b"\n")
    return h.hexdigest()


def finish_replay(conn: psycopg.Connection, replay_id: int, shadow: str, live: str) -> None:
    conn.execute("UPDATE replays SET digest = %s, live_digest = %s WHERE id = %s", (shadow, live, replay_id))
    conn.commit()


# --- the diff --------------------------------------------------------------------------------

def figures(conn: psycopg.Connection, ledger: Ledger) -> dict[tuple, tuple]:
    """(customer, metric) -> (events, quantity, revenue) of the accepted events."""
    rows = conn.execute(
        f"SELECT l.customer, x.metric, count(*), sum(x.quantity), sum(x.revenue) FROM {ledger.joined()}"
        f" WHERE {ledger.where} AND l.status = 'accepted' GROUP BY 1, 2", ledger.params)
    return {(c, m): (n, q, r) for c, m, n, q, r in rows}


def status_changes(conn: psycopg.Connection, scope: Scope, replay_id: int) -> list[tuple]:
    """Events whose status, reason or revenue differs between the live and the shadow ledger."""
    where, params = scope.where("l")
    return conn.execute(
        "SELECT l.source, l.event_id, l.raw_partition, l.raw_offset, l.status, l.reason, l.revenue,"
        " s.status, s.reason, s.revenue FROM ledger l"
        " JOIN replay_ledger s ON s.replay_id = %s AND (s.raw_topic_id, s.raw_partition, s.raw_offset)"
        " = (l.raw_topic_id, l.raw_partition, l.raw_offset)"
        f" WHERE {where} AND (l.status, l.reason, l.revenue) IS DISTINCT FROM (s.status, s.reason, s.revenue)"
        " ORDER BY l.raw_topic_id, l.raw_partition, l.raw_offset", (replay_id, *params)).fetchall()


def apply_shadow(conn: psycopg.Connection, scope: Scope, period: str, replay_id: int) -> None:
    """Replace the live rows of the scope with the shadow's, in one transaction: the new rows are
    appended to the audit chain (the old entries stay), and the period's revenue totals are
    rebuilt from the new lines. A closed period is refused: its rows are what it closed on."""
    where, params = scope.where()
    where_l, params_l = scope.where("l")
    with conn.transaction():
        # Decided under the lock a close waits for (its SHARE conflicts with this), so a period
        # closing meanwhile is either closed on the replaced rows or seen closed here.
        conn.execute("LOCK TABLE ledger IN ROW EXCLUSIVE MODE")
        if conn.execute("SELECT 1 FROM closed_periods WHERE tenant = %s AND period = %s",
                        (scope.tenant, period)).fetchone():
            raise Conflict(f"{scope.tenant} {period} is closed: a replay never edits it (its late events "
                           "are adjustments in the next open period)")
        conn.execute("DELETE FROM ledger_lines x USING ledger l WHERE (x.raw_topic_id, x.raw_partition,"
                     f" x.raw_offset) = (l.raw_topic_id, l.raw_partition, l.raw_offset) AND {where_l}",
                     params_l)
        conn.execute(f"DELETE FROM ledger WHERE {where}", params)
        columns = ", ".join(AUDIT_COLUMNS)
        line_columns = ", ".join(LINE_NAMES)
        # in the order the replay rated them: the ledger's order is its rating order (billing)
        conn.execute(f"INSERT INTO ledger ({columns}) SELECT {columns} FROM replay_ledger"
                     " WHERE replay_id = %s ORDER BY rating_seq, raw_topic_id, raw_partition, raw_offset",
                     (replay_id,))
        conn.execute(f"INSERT INTO ledger_lines ({line_columns}) SELECT {line_columns} FROM replay_lines"
                     " WHERE replay_id = %s", (replay_id,))
        with conn.cursor() as cur:  # the replaced rows join the audit chain as new entries
            reseal(cur, "replay", where_l, params_l)
        conn.execute("SELECT aforo_rebuild_totals(%s, %s)", (scope.tenant, period))
        conn.execute("UPDATE replays SET applied = true WHERE id = %s", (replay_id,))
