"""Reconciliation of held events: list them, approve (re-inject with the original provenance),
reject (record who, when and why). A held row is decided once; its history is appended to
ledger_transitions and the row itself is never changed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg

from config import Settings, clock
from operators.enrich import active_subscription
from operators.timestamp_gate import to_us
from sinks.catalog import load_entitlements
from sinks.kafka import REINJECT_HEADER, TIER_HEADER, kafka_config, produce

HELD = ("late", "unresolved")
_UNDECIDED = """
FROM ledger l
LEFT JOIN ledger_transitions t USING (raw_topic_id, raw_partition, raw_offset)
WHERE l.status IN ('late', 'unresolved') AND t.id IS NULL
"""


@dataclass(frozen=True)
class Held:
    id: int
    coords: tuple[str, int, int]
    tenant: str | None
    source: str | None
    event_id: str | None
    subject: str | None
    status: str
    reason: str | None
    detail: str | None
    event_time: object
    ingested_at: object

    @property
    def ref(self) -> str:
        return "/".join(map(str, self.coords))


_HELD_COLUMNS = ("l.id, l.raw_topic_id, l.raw_partition, l.raw_offset, l.tenantid, l.source, l.event_id,"
                 " l.subject, l.status, l.reason, l.detail, l.event_time, l.ingested_at")


def _held(rows: Iterable[tuple]) -> list[Held]:
    return [Held(r[0], (r[1], r[2], r[3]), *r[4:]) for r in rows]


def undecided(conn: psycopg.Connection, tenant: str | None, reason: str | None) -> list[Held]:
    """Held rows awaiting a decision. `reason` is the status: late or unresolved."""
    return _held(conn.execute(
        f"SELECT {_HELD_COLUMNS} {_UNDECIDED} AND (%s::text IS NULL OR l.tenantid = %s)"
        " AND (%s::text IS NULL OR l.status = %s) ORDER BY l.ingested_at, l.id",
        (tenant, tenant, reason, reason)))


def decide(conn: psycopg.Connection, ids: list[int], action: str, actor: str,
           note: str | None) -> tuple[list[Held], list[int]]:
    """Record the decision for each undecided held row among `ids`, once. Returns the rows decided
    now and the ids that were not (already decided, or not held)."""
    with conn.transaction():
        # locked in id order, so two concurrent decisions cannot deadlock
        rows = _held(conn.execute(f"SELECT {_HELD_COLUMNS} {_UNDECIDED} AND l.id = ANY(%s)"
                                  " ORDER BY l.id FOR UPDATE OF l", (ids,)))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO ledger_transitions (raw_topic_id, raw_partition, raw_offset, action,"
                " from_status, from_reason, actor, note) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                [(*h.coords, action, h.status, h.reason, actor, note) for h in rows])
    decided = {h.id for h in rows}
    return rows, [i for i in ids if i not in decided]


def not_held(conn: psycopg.Connection, ids: list[int]) -> list[int]:
    """The ids among `ids` that name no held ledger row, decided or not (a mistyped id)."""
    found = {i for i, in conn.execute("SELECT id FROM ledger WHERE status IN ('late', 'unresolved')"
                                      " AND id = ANY(%s)", (ids,))}
    return [i for i in ids if i not in found]


# The order re-injected events reach the pipeline in: each customer's events by event time (raw
# coordinates break ties), as they happened, which is also the order a backfill produces. Rating
# (tiers, `latest`) and the monitors read a customer's events in the order they arrive; without a
# defined order Postgres returns a big selection as a parallel hash join happens to, interleaving
# each customer's history, and the monitors drop as late whatever comes after a later hour.
REINJECTION_ORDER = ("l.tenantid, l.subject, l.event_time, l.raw_topic_id, l.raw_partition,"
                     " l.raw_offset")


def awaiting_reinjection(conn: psycopg.Connection, ids: list[int] | None = None) -> list[tuple]:
    """Approved held rows whose re-injection has not reached the ledger yet, in REINJECTION_ORDER:
    (coords, raw, key, tier)."""
    return conn.execute(
        "SELECT l.raw_topic_id, l.raw_partition, l.raw_offset, l.raw, l.raw_key, l.tier FROM ledger l"
        " JOIN ledger_transitions t USING (raw_topic_id, raw_partition, raw_offset)"
        " WHERE t.action = 'approve' AND (%s::bigint[] IS NULL OR l.id = ANY(%s))"
        " AND NOT EXISTS (SELECT 1 FROM ledger r WHERE r.reinject_of ="
        " l.raw_topic_id || '/' || l.raw_partition || '/' || l.raw_offset)"
        f" ORDER BY {REINJECTION_ORDER}", (ids, ids)).fetchall()


def reinject(settings: Settings, rows: list[tuple]) -> int:
    """Produce approved held events again, verbatim, with their original key and tier and a
    reference to the record they stand for, in the order given (one producer, so each partition
    keeps it). Repeating this is harmless: the pipeline lets one re-injection take over the
    original's idempotency claim; any other is a duplicate."""
    from confluent_kafka import Producer
    producer = Producer(kafka_config(settings, "producer"))
    errors: list[str] = []

    def delivered(err, _msg) -> None:
        if err is not None:
            errors.append(str(err))

    for topic_id, partition, offset, raw, key, tier in rows:
        headers = [(REINJECT_HEADER, f"{topic_id}/{partition}/{offset}".encode())]
        if tier:
            headers.append((TIER_HEADER, tier.encode()))
        produce(producer, settings.topics.raw, bytes(raw), key=None if key is None else bytes(key),
                headers=headers, timestamp=clock.now_ms(), on_delivery=delivered)
    if producer.flush(60) or errors:
        raise RuntimeError(f"re-injection not acknowledged: {errors[:3] or 'timed out'}")
    return len(rows)


def resolvable(conn: psycopg.Connection) -> list[int]:
    """Undecided unresolved rows (unknown customer, no subscription) the catalog can now resolve."""
    rows = conn.execute(
        f"SELECT l.id, l.tenantid, l.subject, l.event_time {_UNDECIDED} AND l.status = 'unresolved'"
        " AND l.reason IN ('unknown_customer', 'no_subscription') ORDER BY l.id").fetchall()
    entitlements = load_entitlements(conn, {(t, s) for _, t, s, _ in rows})
    return [i for i, t, s, when in rows
            if (ent := entitlements.get((t, s))) is not None and active_subscription(ent, to_us(when))]


def undecided_counts(conn: psycopg.Connection) -> dict[tuple[str | None, str], int]:
    """Held rows awaiting a decision, counted per (tenant, status)."""
    return {(tenant, status): n for tenant, status, n in conn.execute(
        f"SELECT l.tenantid, l.status, count(*) {_UNDECIDED} GROUP BY 1, 2 ORDER BY 1, 2")}
