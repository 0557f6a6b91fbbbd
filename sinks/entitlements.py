"""The catalog as the flow sees it: tenants in memory, entitlements behind three cache layers.

Entitlements (tenant, subject) -> customer and subscriptions are looked up in a batch: first
this process's cache, then Redis (entries expire after 10 minutes), then Postgres, writing what
Postgres answered back to Redis. Every cache key carries the catalog version, so applying a
catalog change invalidates all of them at once. If Redis is down the flow keeps running on
Postgres alone and tries Redis again a little later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import orjson
import redis

from observe import metrics
from schemas.billing import Entitlement, SubscriptionRef, TenantInfo
from sinks.catalog import catalog_state, load_entitlements, load_tenants
from sinks.postgres import Reconnecting

REDIS_TTL_S = 600
REDIS_RETRY_S = 5.0
VERSION_CHECK_S = 1.0
LOCAL_MAX = 200_000
_log = logging.getLogger(__name__)


def _encode(e: Entitlement | None) -> bytes:
    if e is None:
        return b"null"  # a known absence is cached too, until the catalog changes
    return orjson.dumps([e.customer, [[s.id, s.plan, s.plan_version, s.starts_us, s.ends_us]
                                      for s in e.subscriptions]])


def _decode(raw: bytes) -> Entitlement | None:
    value = orjson.loads(raw)
    if value is None:
        return None
    customer, subs = value
    return Entitlement(customer, tuple(SubscriptionRef(*s) for s in subs))


class CatalogCache:
    """Per-process, shared by the worker threads (each gets its own Postgres connection)."""

    def __init__(self, database_url: str, redis_url: str):
        self._database_url = database_url
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._redis_down_until = 0.0
        self._local = threading.local()
        self._opened: list[Reconnecting] = []
        self._lock = threading.Lock()
        self._version: tuple[str, int] | None = None
        self._checked_at = 0.0
        self._tenants: dict[str, TenantInfo] = {}
        self._key_paths: dict[str, str | None] = {}
        self._entitlements: dict[tuple[str, str], Entitlement | None] = {}

    def _db(self) -> Reconnecting:
        """This worker thread's connection, which waits out a Postgres outage."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = Reconnecting(self._database_url, "reading the catalog", autocommit=True)
            self._opened.append(db)
        return db

    def close(self) -> None:
        """Close every worker's connection and the Redis client (the flow has ended)."""
        for db in self._opened:
            db.close()
        self._redis.close()

    def tenants(self) -> dict[str, TenantInfo]:
        """The current tenants; reloaded (and every cached entitlement dropped) on a catalog change.
        The version is checked at most every VERSION_CHECK_S: a query per call cost an eighth of
        the flow's time."""
        now = time.monotonic()
        if self._version is not None and now - self._checked_at < VERSION_CHECK_S:
            return self._tenants
        self._checked_at = now
        state = self._db().run(catalog_state)
        if state != self._version:
            tenants = self._db().run(load_tenants)
            with self._lock:
                self._version, self._tenants, self._entitlements = state, tenants, {}
                self._key_paths = {tid: t.idempotency_key for tid, t in tenants.items()}
            metrics.known_tenants(tenants)
        return self._tenants

    def key_paths(self) -> dict[str, str | None]:
        """Every known tenant with its idempotency key path, as the schema gate needs them."""
        self.tenants()
        return self._key_paths

    def entitlements(self, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Entitlement | None]:
        wanted = set(wanted)
        local = self._entitlements
        found = {k: local[k] for k in wanted if k in local}
        missing = [k for k in wanted if k not in found]
        metrics.cache_lookups("entitlements", "process", len(found), len(missing))
        if missing:
            from_redis = self._redis_get(missing)
            found.update(from_redis)
            missing = [k for k in missing if k not in from_redis]
            metrics.cache_lookups("entitlements", "redis", len(from_redis), len(missing))
        if missing:
            from_pg = self._db().run(lambda conn: load_entitlements(conn, missing))
            found.update(from_pg)
            self._redis_set(from_pg)
            metrics.cache_lookups("entitlements", "postgres", len(from_pg), 0)  # the source: always answers
        with self._lock:
            if len(local) > LOCAL_MAX:
                local.clear()
            local.update(found)
        return found

    # --- Redis, optional -------------------------------------------------------------------

    def _key(self, tenant: str, subject: str) -> bytes:
        catalog_id, version = self._version
        return orjson.dumps(["aforo-ent", catalog_id, version, tenant, subject])

    def _redis_usable(self) -> bool:
        return time.monotonic() >= self._redis_down_until

    def _redis_failed(self, exc: Exception) -> None:
        _log.warning("Redis unavailable (%s); using Postgres for the next %ss", exc, REDIS_RETRY_S)
        self._redis_down_until = time.monotonic() + REDIS_RETRY_S

    def _redis_get(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Entitlement | None]:
        if not self._redis_usable():
            return {}
        try:
            values = self._redis.mget([self._key(*k) for k in keys])
        except redis.RedisError as exc:
            self._redis_failed(exc)
            return {}
        return {k: _decode(v) for k, v in zip(keys, values, strict=True) if v is not None}

    def _redis_set(self, entries: dict[tuple[str, str], Entitlement | None]) -> None:
        if not entries or not self._redis_usable():
            return
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for k, e in entries.items():
                    pipe.set(self._key(*k), _encode(e), ex=REDIS_TTL_S)
                pipe.execute()
        except redis.RedisError as exc:
            self._redis_failed(exc)
