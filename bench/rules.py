"""The flow's own operators, applied one record at a time outside Bytewax.

The transactional baseline and the COPY ceiling both need records decided by exactly the rules
the flow applies (the point of a comparison is the design, not a different rule set), without
the flow around them.
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

import config
from operators.enrich import Subject
from operators.parse import parse
from operators.route import route
from operators.schema_gate import schema_gate
from operators.timestamp_gate import timestamp_gate
from schemas.billing import Entitlement, TenantInfo
from schemas.record import Record
from sinks.catalog import load_entitlements, load_tenants
from sinks.ledger import LEDGER_COLUMNS, LINE_COLUMNS

# What sinks.ledger's ledger_row and line_rows fill, as (column, type) in order: the sink's own
# declaration, so the baseline and the COPY ceiling write exactly the columns the sink writes.
LEDGER_COLUMNS: tuple[tuple[str, str], ...] = LEDGER_COLUMNS
LINE_COLUMNS: tuple[tuple[str, str], ...] = LINE_COLUMNS


class Rules:
    """The per-record steps around dedup and rating (parse, the gates, route), and the catalog
    that enrich_batch and rate_batch read: tenants loaded once, each customer looked up once
    (reference data is cached in any sane design, so the baseline is not charged for lookups
    the flow caches too)."""

    def __init__(self, conn: psycopg.Connection, settings: config.Settings):
        self._conn = conn
        self._topics = settings.topics
        self._secret = settings.secret
        self._tenants = load_tenants(conn)
        self._key_paths = {tid: t.idempotency_key for tid, t in self._tenants.items()}
        self._customers: dict[Subject, Entitlement | None] = {}

    def validate(self, rec: Record, timestamp_type: int) -> Record:
        """parse, schema_gate and timestamp_gate: what is decided before dedup."""
        return timestamp_gate(schema_gate(parse(rec, timestamp_type), self._key_paths))

    def tenants(self) -> dict[str, TenantInfo]:
        return self._tenants

    def entitlements(self, wanted: Iterable[Subject]) -> dict[Subject, Entitlement | None]:
        missing = [key for key in wanted if key not in self._customers]
        if missing:
            self._customers.update(load_entitlements(self._conn, missing))
        return self._customers

    def route(self, rec: Record) -> Record:
        return route(rec, self._topics, self._secret)
