"""Idempotency dedup: the first raw record to claim a key wins; later ones are duplicates.

Claims are durable and shared by every worker and process (Postgres `dedup_claims`): a batch
claims its keys in one statement before anything is rated, so two partitions (or two processes)
that meet the same key at the same moment cannot both win, whichever commits first does.

Exact across crashes and reprocessing because a claim remembers *which raw record* made it
(topic id, partition, offset): when that same record comes through again after a restart it
recognises its own claim instead of being marked a duplicate of itself. An approved held event,
re-injected, takes over the claim of the record it re-injects, once.

Nothing is cached in memory: every batch asks the durable index (one statement for all its
keys), so the flow's memory does not grow with the number of keys and a restart loses nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import orjson

from operators.timestamp_gate import HORIZON_US
from schemas.record import Batch, Reason, Record, Status, parse_ref


class Claim(NamedTuple):
    topic_id: str
    partition: int
    offset: int
    payload_hash: bytes
    ingested_ms: int


class ClaimIndex(Protocol):
    def claim(self, records: Sequence[Record]) -> dict[str, Claim]:
        """Claim each record's key for that record unless another raw record holds it (a claim
        older than the 90-day horizon is replaced); a re-injection takes over its original's
        claim. Returns the claim that holds each key afterwards."""


class InMemoryClaims:
    """A ClaimIndex of its own, with no durable claims: a replay's (the period re-derived alone)
    or a test's."""

    def __init__(self) -> None:
        self.claims: dict[str, Claim] = {}

    def claim(self, records: Sequence[Record]) -> dict[str, Claim]:
        for r in records:
            mine = Claim(r.topic_id, r.partition, r.offset, r.payload_hash, r.ingested_ms)
            held = self.claims.get(r.dedup_key)
            if (held is None or held.ingested_ms < r.ingested_ms - HORIZON_US // 1000
                    or (r.reinject_of is not None and parse_ref(r.reinject_of) == held[:3])):
                self.claims[r.dedup_key] = mine
        return {r.dedup_key: self.claims[r.dedup_key] for r in records}


def _decimal_text(value: object) -> str:
    return str(value)  # only exact_json's Decimals reach here


def payload_hash(event: dict) -> bytes:
    """Canonical hash of the event, so re-serialised retries of the same payload still match."""
    canonical = orjson.dumps(event, option=orjson.OPT_SORT_KEYS, default=_decimal_text)
    return hashlib.blake2b(canonical, digest_size=16).digest()


def decide(index: ClaimIndex, batch: Batch) -> Batch:
    """Mark every pending record that does not hold its key a duplicate, with the reason."""
    pending = [r for r in batch.records if r.pending]
    if not pending:
        return batch
    # One claim per key per batch (later records of the key compare with its holder), and every
    # re-injection, which may take over a claim an earlier record of the batch could not.
    asking: dict[str, Record] = {}
    for r in pending:
        if r.dedup_key not in asking:
            asking[r.dedup_key] = r
    reinjections = [r for r in pending if r.reinject_of is not None and asking[r.dedup_key] is not r]
    held = index.claim([*asking.values(), *reinjections])
    for r in pending:
        c = held[r.dedup_key]
        if (c.topic_id, c.partition, c.offset) == r.coords:
            continue
        where = f"first seen at raw partition {c.partition} offset {c.offset}"
        if c.payload_hash == r.payload_hash:
            r.decide(Status.DUPLICATE, Reason.SAME_PAYLOAD, where)
        else:
            r.decide(Status.DUPLICATE, Reason.CONFLICT, "payload differs from the first one; " + where)
    return batch
