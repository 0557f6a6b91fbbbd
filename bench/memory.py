"""Dedup state size: the memory one claimed idempotency key costs a Dedup instance.

A Dedup with no durable claims and a cache large enough never to evict is fed distinct keys as
Records, batch by batch, the way the flow feeds it; tracemalloc measures the Python memory still
held once the records themselves are gone: the claims, in whatever form Dedup keeps them.
"""

from __future__ import annotations

import random
import tracemalloc
from datetime import UTC, datetime
from typing import Any

from bench.events import make_event
from bench.workspace import log
from operators.dedup import Dedup
from operators.schema_gate import idempotency_key
from schemas.record import Record

BATCH = 10_000  # records per decide() call, the order of a flow batch
MB = 2**20


def _batch(template: dict[str, Any], start: int, count: int, now_ms: int) -> list[Record]:
    records = []
    for i in range(start, start + count):
        event = {**template, "id": f"evt-{i}"}  # the default key: (tenantid, source, id)
        records.append(Record("raw", "topic-id", i % 8, i, now_ms, b"", event=event,
                              dedup_key=idempotency_key(event, None)))
    return records


def measure_dedup_memory(keys: int) -> dict[str, Any]:
    log(f"dedup memory: claiming {keys:,} distinct keys")
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    template = make_event(random.Random(3), 0, now, tenantid="acme")
    dedup = Dedup(lambda _keys: {}, max_cached=keys)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for start in range(0, keys, BATCH):
            dedup.decide(_batch(template, start, min(BATCH, keys - start), now_ms))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    if len(dedup) != keys:
        raise RuntimeError(f"{len(dedup)} of {keys} keys claimed: the measurement is not of {keys} keys")
    return {"keys": keys, "bytes_per_key": held / keys, "mb_per_million_keys": held / keys * 1e6 / MB}
