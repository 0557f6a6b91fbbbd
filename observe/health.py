"""Readiness: can this process do its work now? The broker answers and has the raw topic,
Postgres answers and its schema has every migration this code ships, Redis answers.

Each check returns a short reason when it fails, which `/readyz` shows and `aforo doctor` prints.
Results are cached for a couple of seconds, so frequent probes and scrapes cost one round of
checks, and every check has a short timeout, so a probe never hangs on a dead service.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psycopg
import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from config import NotConfigured, Settings
from observe.metrics import READY
from sinks.kafka import kafka_config
from sinks.postgres import migrations

TIMEOUT_S = 2.0
CACHE_S = 2.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str  # what was found, or why it failed


def pending_migrations(conn: psycopg.Connection) -> list[str]:
    """The bundled migrations the database has not applied."""
    try:
        done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        done = set()
    return [name for version, name, _ in migrations() if version not in done]


def check_postgres(settings: Settings, timeout_s: float = TIMEOUT_S) -> list[Check]:
    """Two checks: reachable, and migrations current (a new release's code on an old schema is
    not ready until `aforo migrate` ran; an old release on a newer schema is)."""
    try:
        with psycopg.connect(settings.database_url, connect_timeout=max(1, round(timeout_s)),
                             autocommit=True) as conn:
            version = conn.info.server_version
            tls = "TLS" if conn.pgconn.ssl_in_use else "no TLS"
            pending = pending_migrations(conn)
    except (psycopg.Error, NotConfigured) as exc:
        return [Check("postgres", False, _first_line(exc)),
                Check("migrations", False, "unknown: Postgres is unreachable")]
    reached = Check("postgres", True, f"PostgreSQL {version // 10000}.{version % 10000}, {tls}")
    if pending:
        names = ", ".join(pending) if len(pending) <= 3 else f"{pending[0]} ... {pending[-1]}"
        return [reached, Check("migrations", False, f"{len(pending)} pending ({names}): run `aforo migrate`")]
    return [reached, Check("migrations", True, f"{len(migrations())} applied")]


def check_redis(settings: Settings, timeout_s: float = TIMEOUT_S) -> Check:
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=timeout_s,
                                      socket_connect_timeout=timeout_s)
        try:
            info = client.info("server")
        finally:
            client.close()
    except (redis.RedisError, NotConfigured, ValueError) as exc:
        return Check("redis", False, _first_line(exc))
    tls = "TLS" if settings.redis_url.startswith("rediss://") else "no TLS"
    return Check("redis", True, f"Redis {info.get('redis_version', '?')}, {tls}")


def check_kafka(settings: Settings, admin: AdminClient | None = None,
                timeout_s: float = TIMEOUT_S) -> Check:
    try:
        admin = admin or AdminClient(kafka_config(settings, "admin"))
        meta = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        return Check("kafka", False, f"{settings.kafka_bootstrap}: {exc.args[0].str()}")
    except NotConfigured as exc:
        return Check("kafka", False, _first_line(exc))
    finally:
        if admin is not None:
            admin.poll(0)  # hand librdkafka's queued log lines to Python logging
    raw = meta.topics.get(settings.topics.raw)
    if raw is None:
        return Check("kafka", False, f"{len(meta.brokers)} brokers, but no topic {settings.topics.raw}: "
                                     "run `aforo migrate`")
    return Check("kafka", True, f"{len(meta.brokers)} brokers, {settings.topics.raw} has "
                                f"{len(raw.partitions)} partitions")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class Readiness:
    """The checks of one process, evaluated at most every CACHE_S seconds; also sets the
    `aforo_ready{check}` gauge, so readiness is visible in metrics and alertable."""

    def __init__(self, settings: Settings, cache_s: float = CACHE_S):
        self._settings = settings
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._checks: list[Check] = []
        self._admin: AdminClient | None = None

    def _admin_client(self) -> AdminClient | None:
        if self._admin is None:
            try:
                self._admin = AdminClient(kafka_config(self._settings, "admin"))
            except (KafkaException, NotConfigured):
                return None
        return self._admin

    def checks(self) -> list[Check]:
        with self._lock:
            if time.monotonic() - self._checked_at >= self._cache_s:
                s = self._settings
                self._checks = [check_kafka(s, self._admin_client()), *check_postgres(s), check_redis(s)]
                self._checked_at = time.monotonic()
                for c in self._checks:
                    READY.labels(c.name).set(1 if c.ok else 0)
            return self._checks

    def report(self) -> tuple[bool, dict]:
        """(ready, the JSON body for /readyz)."""
        checks = self.checks()
        ready = all(c.ok for c in checks)
        return ready, {"status": "ready" if ready else "not_ready",
                       "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks}}
