"""The ledger: every decided batch in one transaction, and the durable state the flow reads back.

One transaction per batch writes its ledger rows, their revenue lines, their audit chain entries
and the running totals they changed, after the batch's output-topic messages are acknowledged
by the broker. The ledger is also the flow's progress: a raw partition is read again from the
offset after its last ledger row, so a batch is either wholly in the ledger or read and decided
again, with the same result (claims recognise their own record, totals are read back as they
were committed). Nothing is written twice and nothing is skipped, however the flow stops.

The rows are built as COPY text on the worker thread, and that text is also what the audit
hash covers (operators/audit.py), so the per-row cost is one join and one SHA-256; the writer
thread only stamps chain positions and sends bytes, so it hardly competes for the GIL.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

import orjson
import psycopg
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from observe import metrics
from operators.audit import (
    AUDIT_COLUMNS,
    AUDIT_LINE_COLUMNS,
    GENESIS,
    NULL,
    binary,
    chain_hash,
    chain_name,
    json_text,
    leaf,
    number,
    text,
    timestamp,
)
from operators.dedup import Claim
from operators.pricing import GroupKey
from operators.revenue import PeriodTotals, TotalsKey
from operators.schema_gate import indexable
from schemas.record import Batch, Record, parse_ref
from sinks.postgres import Reconnecting

_log = logging.getLogger(__name__)

LEDGER_NAMES = (*AUDIT_COLUMNS, "audit_chain", "audit_seq")
LINE_NAMES = ("raw_topic_id", "raw_partition", "raw_offset", *AUDIT_LINE_COLUMNS)
_ZERO = Decimal(0)
_NO_EVENT: dict = {}
_EMPTY_GROUP = json_text({})
QUEUED_BATCHES = 8  # backpressure: the worker waits when the writer falls this far behind


def _str(value: object) -> str | None:
    """An event attribute for a text column: rejected records may carry anything there; keep
    only strings Postgres text can hold."""
    return value if value.__class__ is str and "\x00" not in value else None


def _indexed(value: object) -> str | None:
    """An attribute of the ledger's index (tenantid, source, id): a rejected record's may be too
    long for it (the raw payload keeps it)."""
    value = _str(value)
    return value if value is not None and indexable(value) else None


def _nullable(value: str | None) -> str:
    return NULL if value is None else value


def _tenant(r: Record) -> str:
    """The tenant whose audit chain a row joins ('' for records that name none)."""
    t = _indexed(r.event.get("tenantid")) if r.event is not None else None
    return t or ""


def row_text(r: Record) -> str:
    """A record's ledger row as COPY text (AUDIT_COLUMNS): the row's canonical text.

    The hot path of the ledger write (a Python call per field would cost more than the rest of
    the row), so it is written out flat: the fields that can hold a tab, newline or backslash
    (client text, catalog names, headers) are checked in one scan and escaped only if needed;
    the others (topic names, ids, enums, hex, numbers) cannot hold one."""
    e = r.event if r.event is not None else _NO_EVENT
    b = r.billing
    tenant, source, eid, etype, subject = (_indexed(e.get("tenantid")), _indexed(e.get("source")),
                                           _indexed(e.get("id")), _str(e.get("type")), _str(e.get("subject")))
    detail = None if r.detail is None else r.detail.replace("\x00", "\\x00")
    customer, subscription, plan = ((b.customer, b.subscription, b.plan) if b is not None
                                    else (None, None, None))
    free = (detail, tenant, source, eid, etype, subject, r.dedup_key, customer, subscription, plan, r.tier,
            r.reinject_of, r.backfill)
    joined = "\x1f".join([v for v in free if v is not None])
    esc = text if ("\\" in joined or "\t" in joined or "\n" in joined or "\r" in joined) else _nullable
    if r.lines is not None:
        revenue = sum([x.revenue for x in r.lines], _ZERO)
        cost = sum([x.cost for x in r.lines], _ZERO)
        money = f"{number(revenue)}\t{number(cost)}\t{number(revenue - cost)}"
    else:
        money = "\\N\t\\N\t\\N"
    if b is not None:
        billing = (f"{esc(customer)}\t{esc(subscription)}\t{esc(plan)}\t{b.plan_version}\t{b.currency}\t"
                   f"{b.period}\t{money}\t{esc(r.tier)}\t{esc(r.reinject_of)}\t{_nullable(b.adjusts_period)}")
    else:
        billing = f"\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t{money}\t{esc(r.tier)}\t{esc(r.reinject_of)}\t\\N"
    key = NULL if r.key is None else "\\\\x" + r.key.hex()
    payload = NULL if r.payload_hash is None else "\\\\x" + r.payload_hash.hex()
    return (f"{r.topic}\t{r.topic_id}\t{r.partition}\t{r.offset}\t{key}\t\\\\x{r.raw.hex()}\t"
            f"{timestamp(r.ingested_ms * 1000)}\t{r.status}\t{_nullable(r.reason)}\t{esc(detail)}\t"
            f"{esc(tenant)}\t{esc(source)}\t{esc(eid)}\t{esc(etype)}\t{esc(subject)}\t{timestamp(r.event_us)}\t"
            f"{esc(r.dedup_key)}\t{payload}\t{r.route}\t{r.validation_hash}\t{billing}\t{esc(r.backfill)}")


def line_texts(r: Record) -> list[str]:
    """A record's revenue lines as canonical text (AUDIT_LINE_COLUMNS), by metric."""
    out = []
    for x in r.lines or ():
        group = _EMPTY_GROUP if not x.group else json_text(x.group)
        out.append(f"{text(x.metric)}\t{group}\t{number(x.quantity)}\t{number(x.total_after)}\t"
                   f"{number(x.revenue)}\t{number(x.cost)}\t{number(x.revenue - x.cost)}")
    return out


@dataclass(slots=True)
class Writes:
    """What one batch writes, prepared on the worker thread."""

    topic_id: str
    partition: int
    first_offset: int
    last_offset: int
    rows: list[str]  # canonical row texts, without the audit columns
    tenants: list[str]  # the tenant (chain) of each row
    offsets: list[int]
    leaves: list[bytes]  # each row's hash
    lines: bytes  # COPY text
    totals: bytes  # COPY text for revenue_stage
    distinct: bytes  # COPY text for revenue_distinct
    rated_as: int
    decided: list[tuple[str, str, str | None]]  # (tenant, status, reason) per row, for the metrics
    revenue: list[tuple[str, str, Decimal]]  # (tenant, currency, marginal revenue) per rated row


def writes_of(batch: Batch) -> Writes:
    rows, tenants, offsets, leaves, lines, decided, revenue = [], [], [], [], [], [], []
    prefix = f"{text(batch.topic_id)}\t{batch.partition}\t"
    for r in batch.records:
        row = row_text(r)
        these = line_texts(r)
        tenant = _tenant(r)
        rows.append(row)
        tenants.append(tenant)
        offsets.append(r.offset)
        leaves.append(leaf(row, these))
        lines.extend(f"{prefix}{r.offset}\t{x}\n" for x in these)
        decided.append((tenant, r.status, r.reason))
        if r.lines:
            revenue.append((tenant, r.billing.currency, sum([x.revenue for x in r.lines], _ZERO)))
    totals, distinct = totals_texts(batch.records)
    return Writes(batch.topic_id, batch.partition, batch.records[0].offset, batch.records[-1].offset,
                  rows, tenants, offsets, leaves, "".join(lines).encode(), totals, distinct, batch.rated_as,
                  decided, revenue)


def totals_texts(records: Iterable[Record]) -> tuple[bytes, bytes]:
    """The running totals the batch changed (the newest value of each, and of each group) and
    the unique_count values it added, as COPY text."""
    newest: dict[tuple, list] = {}
    distinct: list[str] = []
    for r in records:
        if not r.lines:
            continue
        b, tenant = r.billing, r.event["tenantid"]
        for x in r.lines:
            key = (tenant, b.subscription, x.metric, b.period)
            entry = newest.get(key)
            if entry is None:
                entry = newest[key] = [b.customer, b.currency, x, {}]
            entry[2] = x
            entry[3][x.group_key] = [format(x.total_after, "f"), x.latest_at]
            if x.new_distinct is not None:
                distinct.append("\t".join((text(tenant), text(b.subscription), text(x.metric),
                                           text(b.period), text(x.group_key), text(x.new_distinct))))
    totals = []
    for (tenant, subscription, metric, period), (customer, currency, x, groups) in newest.items():
        totals.append("\t".join((
            text(tenant), text(customer), text(subscription), text(metric), text(period), text(currency),
            str(x.events_after), number(x.usage_after), number(x.revenue_after), number(x.cost_after),
            text(orjson.dumps(groups).decode()))))
    return ("".join(t + "\n" for t in totals).encode(), "".join(d + "\n" for d in distinct).encode())


# --- the transaction ---------------------------------------------------------------------------

# The stage is emptied as it is read (a temporary table lives as long as the connection). Of
# several batches' totals of one key, the last one's are the newest; groups merge in batch order.
_UPSERT_TOTALS = """
WITH staged AS (DELETE FROM revenue_stage RETURNING *),
newest AS (
    SELECT DISTINCT ON (tenant, subscription, metric, period) * FROM staged
    ORDER BY tenant, subscription, metric, period, seq DESC),
merged AS (
    SELECT s.tenant, s.subscription, s.metric, s.period,
        jsonb_object_agg(g.key, g.value ORDER BY s.seq) AS groups
    FROM staged s CROSS JOIN LATERAL jsonb_each(s.groups) AS g
    GROUP BY s.tenant, s.subscription, s.metric, s.period)
INSERT INTO revenue (tenant, customer, subscription, metric, period, currency, events, quantity,
    revenue, cost, groups)
SELECT n.tenant, n.customer, n.subscription, n.metric, n.period, n.currency, n.events, n.quantity,
    n.revenue, n.cost, coalesce(m.groups, '{}'::jsonb)
FROM newest n LEFT JOIN merged m USING (tenant, subscription, metric, period)
ON CONFLICT (tenant, subscription, metric, period) DO UPDATE SET
    events = excluded.events, quantity = excluded.quantity, revenue = excluded.revenue,
    cost = excluded.cost, groups = revenue.groups || excluded.groups, updated_at = now()
"""
_STAGE = ("CREATE TEMP TABLE IF NOT EXISTS revenue_stage (seq int, LIKE revenue INCLUDING DEFAULTS)"
          " ON COMMIT DELETE ROWS")
_staged: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()  # connections that have it


def _stage(conn: psycopg.Connection) -> None:
    """The stage, created once per connection in a transaction of its own (not a round trip in
    every ledger transaction, nor undone by one that rolls back)."""
    if conn not in _staged:
        with conn.transaction():
            conn.execute(_STAGE)
        _staged.add(conn)


def copy_text(cur: psycopg.Cursor, table: str, columns: Sequence[str], data: bytes) -> None:
    if data:
        with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            copy.write(data)


Heads = dict[tuple[str, str], tuple[int, bytes]]  # (chain, tenant) -> (seq, chain hash)


def lock_heads(cur: psycopg.Cursor, pairs: Collection[tuple[str, str]]) -> Heads:
    """The heads of these (chain, tenant) chains, locked until the transaction ends (in (chain,
    tenant) order, so that two writers of one chain never deadlock). One statement: a head that
    does not exist yet starts at genesis, and the no-op update of one that does locks it and
    returns it as last committed, as SELECT ... FOR UPDATE would."""
    chains, tenants = zip(*sorted(pairs), strict=True) if pairs else ((), ())
    return {(c, t): (seq, bytes(h)) for c, t, seq, h in cur.execute(
        "INSERT INTO audit_heads AS h (tenant, chain, seq, chain_hash)"
        " SELECT t, c, 0, %s FROM unnest(%s::text[], %s::text[]) AS x(c, t) ORDER BY c, t"
        " ON CONFLICT (tenant, chain) DO UPDATE SET seq = h.seq"
        " RETURNING h.chain, h.tenant, h.seq, h.chain_hash", (GENESIS, list(chains), list(tenants)))}


def store_heads(cur: psycopg.Cursor, heads: Heads) -> None:
    keys = list(heads)
    cur.execute("UPDATE audit_heads h SET seq = x.s, chain_hash = x.hash"
                " FROM unnest(%s::text[], %s::text[], %s::int8[], %s::bytea[]) AS x(c, t, s, hash)"
                " WHERE h.chain = x.c AND h.tenant = x.t",
                ([c for c, _ in keys], [t for _, t in keys], [heads[k][0] for k in keys],
                 [heads[k][1] for k in keys]))


def seal(w: Writes, heads: Heads, chain: str) -> tuple[str, str]:
    """Chain every row of the batch to its tenant's head: (ledger COPY text, audit_chain COPY
    text). `heads` moves on to the new heads."""
    ledger, entries = [], []
    chain_field = text(chain)
    for row, tenant, offset, h in zip(w.rows, w.tenants, w.offsets, w.leaves, strict=True):
        seq, previous = heads[chain, tenant]
        link = chain_hash(previous, h)
        heads[chain, tenant] = (seq + 1, link)
        ledger.append(f"{row}\t{chain_field}\t{seq + 1}\n")
        entries.append(f"{text(tenant)}\t{chain_field}\t{seq + 1}\tinsert\t{text(w.topic_id)}\t"
                       f"{w.partition}\t{offset}\t{binary(h)}\t{binary(link)}\n")
    return "".join(ledger), "".join(entries)


def high_water(conn: psycopg.Connection, topic_id: str, partition: int) -> int | None:
    """The last raw offset of a partition that is in the ledger."""
    return high_waters(conn, [(topic_id, partition)])[topic_id, partition]


def high_waters(conn: psycopg.Connection,
                parts: Collection[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
    """high_water of several partitions in one statement."""
    return {(t, p): done for t, p, done in conn.execute(
        "SELECT t, p, (SELECT max(raw_offset) FROM ledger WHERE raw_topic_id = t AND raw_partition = p)"
        " FROM unnest(%s::text[], %s::int4[]) AS x(t, p)", ([t for t, _ in parts], [p for _, p in parts]))}


def commit(conn: psycopg.Connection, ws: Sequence[Writes], before_commit: Callable[[], None]) -> list[bool]:
    """Write batches in one transaction, one COPY per table for all of them; for each, False when
    it was already written (a retry after a commit whose outcome was unknown). `before_commit`
    waits for their output messages. Every statement is a round trip the writer thread waits
    for (and then waits for the GIL): a live stream's small batches made them the writer's cost."""
    _stage(conn)
    with conn.transaction(), conn.cursor() as cur:
        done = high_waters(conn, {(w.topic_id, w.partition) for w in ws})
        written = []
        for w in ws:
            last = done[w.topic_id, w.partition]
            fresh = last is None or last < w.first_offset
            if not fresh and last < w.last_offset:
                raise RuntimeError(f"the ledger holds part of the batch at {w.topic_id}/{w.partition}/"
                                   f"{w.first_offset}-{w.last_offset} (up to {last}):"
                                   " written by another flow?")
            if fresh:
                done[w.topic_id, w.partition] = w.last_offset
            written.append(fresh)
        new = [w for w, fresh in zip(ws, written, strict=True) if fresh]
        if new:
            _write(cur, new)
        before_commit()
    return written


def _write(cur: psycopg.Cursor, ws: list[Writes]) -> None:
    chains = [chain_name(w.topic_id, w.partition) for w in ws]
    heads = lock_heads(cur, {(c, t) for c, w in zip(chains, ws, strict=True) for t in w.tenants})
    sealed = [seal(w, heads, c) for c, w in zip(chains, ws, strict=True)]
    copy_text(cur, "ledger", LEDGER_NAMES, "".join(ledger for ledger, _ in sealed).encode())
    copy_text(cur, "ledger_lines", LINE_NAMES, b"".join(w.lines for w in ws))
    copy_text(cur, "audit_chain", ("tenant", "chain", "seq", "action", "raw_topic_id", "raw_partition",
                                   "raw_offset", "row_hash", "chain_hash"),
              "".join(entries for _, entries in sealed).encode())
    store_heads(cur, heads)
    # Each batch's totals are the newest after it: staged with the batch's place in the group,
    # the upsert keeps the last of each key and merges their groups in order.
    totals = b"".join(b"".join(b"%d\t%s" % (i, row) for row in w.totals.splitlines(keepends=True))
                      for i, w in enumerate(ws) if w.totals)
    if totals:
        copy_text(cur, "revenue_stage", ("seq", "tenant", "customer", "subscription", "metric", "period",
                                         "currency", "events", "quantity", "revenue", "cost", "groups"),
                  totals)
        cur.execute(_UPSERT_TOTALS)
    copy_text(cur, "revenue_distinct", ("tenant", "subscription", "metric", "period", "grp", "value"),
              b"".join(w.distinct for w in ws))


def _attempt(conn: psycopg.Connection, ws: list[Writes], flushes: list[Callable[[], None]]) -> list[bool]:
    with metrics.ledger_write(sum(len(w.rows) for w in ws)):
        return commit(conn, ws, lambda: [flush() for flush in flushes])


# --- the sink ------------------------------------------------------------------------------------

class _Writer:
    """One worker's ledger writer: a thread with its own connection, fed through a short queue,
    retrying a batch until Postgres takes it (an outage pauses the flow, it does not end it)."""

    def __init__(self, url: str, on_commit: Callable[[Writes], None]):
        self._db = Reconnecting(url, "writing the ledger")
        self._on_commit = on_commit
        self._queue: queue.Queue[tuple[Writes, Callable[[], None]] | None] = queue.Queue(QUEUED_BATCHES)
        self._failure: BaseException | None = None
        self._reported = False
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            group = [self._queue.get()]
            # Group commit: every batch already queued goes into the same transaction, so a live
            # stream polled in small batches pays one output flush and one WAL flush per group,
            # not per batch (per batch, they capped a tailing flow at ~100 batches/s).
            while group[-1] is not None and len(group) < QUEUED_BATCHES + 1:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                ws = [item[0] for item in group if item is not None]
                if ws and self._failure is None:
                    flushes = list(dict.fromkeys(item[1] for item in group if item is not None))
                    written = self._db.run(lambda conn, ws=ws, fs=flushes: _attempt(conn, ws, fs))
                    for w, new in zip(ws, written, strict=True):
                        if new:
                            metrics.records_decided(w.decided)
                            metrics.revenue_accrued(w.revenue)
                        self._on_commit(w)
                if group[-1] is None:
                    return
            except BaseException as exc:  # re-raised on the worker thread, which stops the flow
                self._failure = exc
            finally:
                for _ in group:
                    self._queue.task_done()

    def check(self) -> None:
        """Raise the writer's failure, once: close() runs again while Bytewax unwinds from the
        first raise, and a second exception there would abort the process."""
        if self._failure is not None and not self._reported:
            self._reported = True
            raise RuntimeError(f"writing the ledger failed: {self._failure!r}") from self._failure

    def put(self, w: Writes, before_commit: Callable[[], None]) -> None:
        self.check()
        self._queue.put((w, before_commit))

    def close(self) -> None:
        self._queue.join()
        self._queue.put(None)
        self._thread.join()
        self._db.close()
        self.check()


class OutputTopics(Protocol):
    """What the ledger sink needs of the output topics (sinks/outputs.py)."""

    def produce_batch(self, batch: Batch) -> None: ...

    def flush(self) -> None:
        """Wait until every message produced so far is acknowledged; raise if one failed."""

    def close(self) -> None: ...


class LedgerSink(DynamicSink[Batch]):
    """Each worker writes the batches it decided: no exchange between workers. `outputs` builds a
    worker's output-topic producer (sinks/outputs.py); `on_commit` hears of every batch that is
    durable."""

    def __init__(self, url: str, outputs: Callable[[], OutputTopics],
                 on_commit: Callable[[Writes], None] = lambda _w: None):
        self._url = url
        self._outputs = outputs
        self._on_commit = on_commit

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LedgerPartition:
        return _LedgerPartition(_Writer(self._url, self._on_commit), self._outputs())


class _LedgerPartition(StatelessSinkPartition[Batch]):
    def __init__(self, writer: _Writer, outputs: OutputTopics):
        self._writer = writer
        self._outputs = outputs

    def write_batch(self, items: list[Batch]) -> None:
        for batch in items:
            if not batch.records:
                continue
            writes = writes_of(batch)
            self._outputs.produce_batch(batch)
            # The outputs are acknowledged before the ledger commits: at least once on the topics,
            # exactly once in the ledger.
            self._writer.put(writes, self._flush)

    def _flush(self) -> None:
        with metrics.snapshot("ledger"):
            self._outputs.flush()

    def close(self) -> None:
        try:
            self._writer.close()
        finally:
            self._outputs.close()


# --- what the flow reads back --------------------------------------------------------------------

_CLAIM = """
INSERT INTO dedup_claims (dedup_key, raw_topic_id, raw_partition, raw_offset, payload_hash, ingested_at)
SELECT k, t, p, o, h, timestamptz 'epoch' + ms * interval '1 millisecond'
FROM unnest(%b::text[], %b::text[], %b::int4[], %b::int8[], %b::bytea[], %b::int8[]) AS x(k, t, p, o, h, ms)
ON CONFLICT (dedup_key) DO UPDATE SET
    raw_topic_id = excluded.raw_topic_id, raw_partition = excluded.raw_partition,
    raw_offset = excluded.raw_offset, payload_hash = excluded.payload_hash, ingested_at = excluded.ingested_at
WHERE dedup_claims.ingested_at < excluded.ingested_at - interval '90 days'
RETURNING dedup_key
"""
_TAKE_OVER = """
UPDATE dedup_claims SET raw_topic_id = %s, raw_partition = %s, raw_offset = %s
WHERE dedup_key = %s AND (raw_topic_id, raw_partition, raw_offset) = (%s, %s, %s)
"""
_HELD_BY = ("SELECT dedup_key, raw_topic_id, raw_partition, raw_offset, payload_hash,"
            " (extract(epoch FROM ingested_at) * 1000)::bigint FROM dedup_claims WHERE dedup_key = ANY(%b)")
_PURGE_CLAIMS = """
DELETE FROM dedup_claims
WHERE ingested_at < (SELECT max(ingested_at) FROM dedup_claims) - interval '91 days'
"""
_PURGE_EVERY_S = 3600.0  # claims past the horizon can never match again


class PostgresState:
    """The durable state a worker reads before it decides: dedup claims and running totals. One
    connection per worker thread (psycopg connections are not shared across threads)."""

    def __init__(self, url: str):
        self._url = url
        self._local = threading.local()
        self._opened: list[Reconnecting] = []
        self._purged_at = time.monotonic()

    def _db(self) -> Reconnecting:
        db = getattr(self._local, "db", None)
        if db is None:
            # Claims commit without waiting for their WAL flush: the ledger transaction that relies
            # on them commits later with synchronous_commit, which flushes the WAL up to itself,
            # claims included; a claim lost in a crash had no ledger row yet (its batch is read
            # again). One fsync per batch less on the worker thread.
            db = self._local.db = Reconnecting(self._url, "reading claims and running totals",
                                               autocommit=True, setup="SET synchronous_commit = off")
            self._opened.append(db)
        return db

    def close(self) -> None:
        """Close every worker's connection (the flow has ended)."""
        for db in self._opened:
            db.close()

    def claim(self, records: Sequence[Record]) -> dict[str, Claim]:
        """operators.dedup.ClaimIndex: claims are committed at once, before anything is rated, so
        no other worker or process can take a key this batch holds."""
        return self._db().run(lambda conn: self._claim(conn, records))

    def _claim(self, conn: psycopg.Connection, records: Sequence[Record]) -> dict[str, Claim]:
        held = claim(conn, records)
        if time.monotonic() - self._purged_at > _PURGE_EVERY_S:
            self._purged_at = time.monotonic()
            conn.execute(_PURGE_CLAIMS)
        return held

    def totals(self, keys: Collection[TotalsKey]) -> dict[TotalsKey, PeriodTotals]:
        """operators.revenue.LoadTotals: the committed running totals of these keys (absent: new)."""
        return self._db().run(lambda conn: load_totals(conn, keys))


def claim(conn: psycopg.Connection, records: Sequence[Record]) -> dict[str, Claim]:
    """operators.dedup.ClaimIndex.claim on a connection (committed at once in autocommit mode)."""
    held = _insert_claims(conn, [r for r in records if r.reinject_of is None])
    for r in records:  # an approved held event takes over its original's claim, once
        if r.reinject_of is not None:
            conn.execute(_TAKE_OVER, (*r.coords, r.dedup_key, *parse_ref(r.reinject_of)))
    rest = [r.dedup_key for r in records if r.dedup_key not in held]
    if rest:
        for k, t, p, o, h, ms in conn.execute(_HELD_BY, (rest,)):
            held[k] = Claim(t, p, o, bytes(h), ms)
    # A re-injection of a record that never claimed its key (held before claims covered
    # unresolved records) claims it itself.
    held.update(_insert_claims(conn, [r for r in records if r.dedup_key not in held]))
    return held


def _insert_claims(conn: psycopg.Connection, records: Sequence[Record]) -> dict[str, Claim]:
    """Claim the keys of these records (one each) unless held; the claims made."""
    if not records:
        return {}
    mine = {k for (k,) in conn.execute(_CLAIM, (
        [r.dedup_key for r in records], [r.topic_id for r in records], [r.partition for r in records],
        [r.offset for r in records], [r.payload_hash for r in records], [r.ingested_ms for r in records]))}
    return {r.dedup_key: Claim(r.topic_id, r.partition, r.offset, r.payload_hash, r.ingested_ms)
            for r in records if r.dedup_key in mine}


def load_totals(conn: psycopg.Connection, keys: Collection[TotalsKey]) -> dict[TotalsKey, PeriodTotals]:
    keys = list(keys)
    out = {k: PeriodTotals() for k in keys}
    columns = [list(c) for c in zip(*keys, strict=True)]
    for tenant, sub, metric, period, events, quantity, revenue, cost, groups in conn.execute(
            "SELECT r.tenant, r.subscription, r.metric, r.period, r.events, r.quantity, r.revenue, r.cost,"
            " r.groups FROM revenue r JOIN unnest(%s::text[], %s::text[], %s::text[], %s::text[])"
            " AS k(t, s, m, p) ON (r.tenant, r.subscription, r.metric, r.period) = (k.t, k.s, k.m, k.p)",
            columns):
        t = out[(tenant, sub, metric, period)]
        t.events, t.usage, t.revenue, t.cost = events, quantity, revenue, cost
        for gk, (total, latest_at) in groups.items():
            group = _group(gk)
            t.groups[group] = Decimal(total)
            if latest_at is not None:
                t.latest_at[group] = latest_at
    for tenant, sub, metric, period, gk, value in conn.execute(
            "SELECT d.tenant, d.subscription, d.metric, d.period, d.grp, d.value FROM revenue_distinct d"
            " JOIN unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS k(t, s, m, p)"
            " ON (d.tenant, d.subscription, d.metric, d.period) = (k.t, k.s, k.m, k.p)", columns):
        out[(tenant, sub, metric, period)].distinct.setdefault(_group(gk), set()).add(value)
    return out


def _group(text_key: str) -> GroupKey:
    return tuple(orjson.loads(text_key))
