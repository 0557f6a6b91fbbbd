"""The catalog as the baseline and the ceilings read it: loaded once, each customer looked up once
(reference data is cached in any sane design, so neither is charged for lookups the flow caches
too). It serves operators.enrich.Catalog and the gates' key paths."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from operators.enrich import Subject
from schemas.billing import Entitlement, TenantInfo
from sinks.catalog import load_entitlements, load_tenants


class Rules:
    def __init__(self, conn: psycopg.Connection):
        self._conn = conn
        self._tenants = load_tenants(conn)
        self._key_paths = {tid: t.idempotency_key for tid, t in self._tenants.items()}
        self._customers: dict[Subject, Entitlement | None] = {}

    def tenants(self) -> dict[str, TenantInfo]:
        return self._tenants

    def key_paths(self) -> dict[str, str | None]:
        return self._key_paths

    def entitlements(self, wanted: Iterable[Subject]) -> dict[Subject, Entitlement | None]:
        wanted = list(wanted)
        missing = [key for key in wanted if key not in self._customers]
        if missing:
            self._customers.update(load_entitlements(self._conn, missing))
        return {key: self._customers[key] for key in wanted}
