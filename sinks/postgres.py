"""Postgres connections and the versioned schema."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import TypeVar

import psycopg

_log = logging.getLogger(__name__)
T = TypeVar("T")

_MIGRATIONS_LOCK = 0x0AF0_0001  # advisory lock id: concurrent `aforo migrate` runs serialise


def connect(url: str, **kwargs) -> psycopg.Connection:
    return psycopg.connect(url, **kwargs)


# Losing the connection, a failover, or a server shutting down: worth waiting for. Anything else
# (a constraint violated, a bad query) is a bug or a tampered database and stops the caller.
_TRANSIENT = (psycopg.OperationalError, psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
RETRY_MAX_S = 10.0


class Reconnecting:
    """A connection that outlives Postgres outages: `run(work)` runs work(conn) (a transaction, or
    statements in autocommit), and when Postgres goes away retries it on a new connection with
    backoff, saying so once per outage, until it succeeds or `stopping` is set. The work must be
    safe to repeat: it either committed or did nothing."""

    def __init__(self, url: str, what: str, *, autocommit: bool = False,
                 stopping: threading.Event | None = None, setup: str | None = None):
        self._url, self._what, self._autocommit, self._setup = url, what, autocommit, setup
        self._stopping = stopping or threading.Event()
        self._conn: psycopg.Connection | None = None

    def run(self, work: Callable[[psycopg.Connection], T]) -> T:
        delay, failed_at = 0.2, None
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(self._url, autocommit=self._autocommit)
                    if self._setup:  # a session setting for every new connection
                        self._conn.execute(self._setup)
                        if not self._autocommit:
                            self._conn.commit()
                result = work(self._conn)
            except _TRANSIENT as exc:
                if self._conn is not None and not self._conn.closed and not self._conn.broken:
                    self._conn.rollback()
                else:
                    self._conn = None
                if failed_at is None:
                    failed_at = time.monotonic()
                    _log.warning("Postgres unavailable while %s (%s); retrying until it is back",
                                 self._what, str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
                if self._stopping.wait(delay):
                    raise RuntimeError(f"stopped while {self._what}: Postgres unavailable") from exc
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if failed_at is not None:
                _log.warning("Postgres is back: %s again after %.1f s", self._what,
                             time.monotonic() - failed_at)
            return result

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def as_dicts(cur: psycopg.Cursor) -> list[dict]:
    """A query's rows as dicts keyed by column name."""
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur]


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every bundled migration, in order."""
    found = []
    for f in resources.files("sinks").joinpath("migrations").iterdir():
        if f.name.endswith(".sql"):
            found.append((int(f.name.split("_", 1)[0]), f.name, f.read_text()))
    return sorted(found)


def migrate(url: str) -> list[str]:
    """Apply the migrations not applied yet, each in its own transaction; return their names."""
    applied: list[str] = []
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATIONS_LOCK,))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                         " version integer PRIMARY KEY, name text NOT NULL,"
                         " applied_at timestamptz NOT NULL DEFAULT now())")
            done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in migrations():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                 (version, name))
                applied.append(name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATIONS_LOCK,))
    return applied
