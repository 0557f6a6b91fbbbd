"""Idempotency dedup: the first raw record to claim a key wins; later ones are duplicates.

Exact across crashes and reprocessing because a claim remembers *which raw record* made it
(topic id, partition, offset): when that same record comes through again after a restart it
recognises its own claim instead of being marked a duplicate of itself.

State is deliberately small. Claims live in a bounded in-memory cache in front of a durable
claim index (Postgres `dedup_claims`, written in the same transaction as the ledger rows), so
Bytewax snapshots stay tiny however many keys there are. A claim is never needed from the
cache after a crash: the epochs since the last snapshot are replayed and re-claim their keys,
and everything before them is already durable in the index.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable, Iterable
from itertools import islice
from typing import NamedTuple

import orjson

from operators.timestamp_gate import HORIZON_US
from schemas.record import Reason, Record, Status, parse_ref


class Claim(NamedTuple):
    topic_id: str
    partition: int
    offset: int
    payload_hash: bytes
    ingested_ms: int


ClaimLookup = Callable[[Iterable[str]], dict[str, Claim]]


def payload_hash(event: dict) -> bytes:
    """Canonical hash of the event, so re-serialised retries of the same payload still match."""
    return hashlib.blake2b(orjson.dumps(event, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def dedup_bucket(rec: Record, buckets: int) -> str:
    """Route every record with the same key to the same Dedup instance (and worker)."""
    if rec.dedup_key is None:
        return f"p{rec.partition % buckets}"
    return f"k{zlib.crc32(rec.dedup_key.encode()) % buckets}"


class ClaimCache:
    """Claims packed into bytes under a 16-byte digest of their key: about 150 bytes a key, and
    invisible to the cyclic garbage collector (bytes and str-free dicts are not tracked).
    Insertion-ordered, so the oldest claims are evicted first."""

    _PACKED = struct.Struct(">Hiqq")  # topic id index, partition, offset, ingested ms

    def __init__(self, max_keys: int):
        self._max_keys = max_keys
        self._claims: dict[bytes, bytes] = {}
        self._topic_ids: list[str] = []
        self._topic_index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._claims)

    @staticmethod
    def digest(key: str) -> bytes:
        return hashlib.blake2b(key.encode(), digest_size=16).digest()

    def get(self, digest: bytes) -> Claim | None:
        packed = self._claims.get(digest)
        if packed is None:
            return None
        topic, partition, offset, ingested_ms = self._PACKED.unpack_from(packed)
        return Claim(self._topic_ids[topic], partition, offset, packed[self._PACKED.size:], ingested_ms)

    def put(self, digest: bytes, c: Claim) -> None:
        topic = self._topic_index.get(c.topic_id)
        if topic is None:
            topic = self._topic_index[c.topic_id] = len(self._topic_ids)
            self._topic_ids.append(c.topic_id)
        self._claims.pop(digest, None)  # re-inserting moves it to the young end
        self._claims[digest] = self._PACKED.pack(topic, c.partition, c.offset, c.ingested_ms) + c.payload_hash

    def evict(self) -> None:
        # Oldest claims first; the ones in flight are the newest, so they are never evicted
        # while the cache holds more than an epoch's worth of keys.
        excess = len(self._claims) - self._max_keys
        if excess > 0:
            for digest in list(islice(self._claims, excess + self._max_keys // 10)):
                del self._claims[digest]


class Dedup:
    def __init__(self, lookup: ClaimLookup, max_cached: int):
        self._lookup = lookup
        self._cache = ClaimCache(max_cached)

    def __len__(self) -> int:
        return len(self._cache)

    def decide(self, batch: list[Record]) -> list[Record]:
        pending = [r for r in batch if r.pending]
        if not pending:
            return batch
        cache, digest = self._cache, ClaimCache.digest
        digests = [digest(r.dedup_key) for r in pending]
        misses = {r.dedup_key for r, d in zip(pending, digests, strict=True) if cache.get(d) is None}
        if misses:
            for key, claim in self._lookup(misses).items():
                cache.put(digest(key), claim)
        for rec, d in zip(pending, digests, strict=True):
            rec.payload_hash = h = payload_hash(rec.event)
            first = cache.get(d)
            claimant = (first.topic_id, first.partition, first.offset) if first else None
            if (first is None
                    or first.ingested_ms * 1000 < rec.ingested_ms * 1000 - HORIZON_US
                    or claimant == rec.coords
                    # an approved held event takes over the claim of the record it re-injects
                    or (rec.reinject_of is not None and parse_ref(rec.reinject_of) == claimant)):
                cache.put(d, Claim(rec.topic_id, rec.partition, rec.offset, h, rec.ingested_ms))
            elif first.payload_hash == h:
                rec.decide(Status.DUPLICATE, Reason.SAME_PAYLOAD, _first_ref(first))
            else:
                rec.decide(Status.DUPLICATE, Reason.CONFLICT,
                           "payload differs from the first one; " + _first_ref(first))
        cache.evict()
        return batch


def _first_ref(c: Claim) -> str:
    return f"first seen at raw partition {c.partition} offset {c.offset}"
