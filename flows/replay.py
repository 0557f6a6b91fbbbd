"""Replay: re-derive a billing period from its raw events with fresh state.

The same operators as the live flow, in the same order, run in one process over the period's
raw records in arrival order (each partition in offset order, partitions merged by ingestion
time). Sequential on purpose: a bounded, deterministic batch job needs no dataflow, and the
same records in give the same shadow ledger, byte for byte.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from itertools import groupby, islice

from config import Topics
from operators.dedup import InMemoryClaims, decide
from operators.enrich import Catalog, Subject, enrich_batch
from operators.gates import admit
from operators.parse import parse
from operators.revenue import RunningTotals, fresh_totals
from operators.route import route_batch
from operators.schema_gate import event_time
from schemas.billing import Entitlement, TenantInfo
from schemas.record import Batch, Record

BATCH = 2000


def arrival_order(records: Iterable[Record]) -> Iterator[Record]:
    """Each partition (of each raw topic incarnation) in offset order; partitions interleaved by
    ingestion time."""
    by_partition = sorted(records, key=lambda r: (r.topic_id, r.partition, r.offset))
    runs = [list(group) for _, group in groupby(by_partition, key=lambda r: (r.topic_id, r.partition))]
    return heapq.merge(*runs, key=lambda r: (r.ingested_ms, r.topic_id, r.partition))


@dataclass(frozen=True)
class _Reopened:
    """The catalog as the period's rows were rated: with the period open. Closing it later changed
    only where events rated after the close go (adjustments of the next open period); its own
    events, and the adjustments billed in it, were rated while it was open."""

    catalog: Catalog
    tenant: str
    period: str

    def tenants(self) -> dict[str, TenantInfo]:
        tenants = self.catalog.tenants()
        info = tenants.get(self.tenant)
        if info is None or self.period not in info.closed_periods:
            return tenants
        return {**tenants, self.tenant: replace(info, closed_periods=info.closed_periods - {self.period})}

    def entitlements(self, wanted: Iterable[tuple[str, str]]) -> dict[Subject, Entitlement | None]:
        return self.catalog.entitlements(wanted)


def rederive(records: Iterable[Record], catalog: Catalog, key_paths: dict[str, str | None],
             topics: Topics, secret: bytes, tenant: str, period: str) -> list[Record]:
    """Run the tenant period's raw records through every stage with fresh claims and running
    totals, the period open as when they were rated."""
    catalog = _Reopened(catalog, tenant, period)
    claims = InMemoryClaims()  # only this period's own claims
    totals = RunningTotals(fresh_totals, max_keys=1 << 62)
    out: list[Record] = []
    ordered = arrival_order(records)
    while chunk := list(islice(ordered, BATCH)):
        batch = Batch("", "", -1, chunk)
        route_batch(topics, secret, totals.rate_batch(catalog.tenants(), enrich_batch(catalog, decide(
            claims, admit(key_paths, batch)))))
        out.extend(chunk)
    return out


def in_scope(tenant: str, start_us: int, end_us: int, raw: bytes) -> bool:
    """Whether a raw record belongs to the tenant's period by its own `time`: the topic-scan
    filter, deciding exactly as the ledger's tenantid and event_time columns do. Records that
    do not even parse belong to no period."""
    event = parse(Record("", "", 0, 0, 1, raw)).event
    if event is None or event.get("tenantid") != tenant:
        return False
    t = event_time(event)
    return t is not None and start_us <= t < end_us
