"""Postgres connections and the versioned schema."""

from __future__ import annotations

from importlib import resources

import psycopg

_MIGRATIONS_LOCK = 0x0AF0_0001  # advisory lock id: concurrent `aforo migrate` runs serialise


def connect(url: str, **kwargs) -> psycopg.Connection:
    return psycopg.connect(url, **kwargs)


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
