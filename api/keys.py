"""API keys: `afk_<id>_<secret>`, shown once, stored as the SHA-256 of the whole key.

The secret is 256 random bits, so a fast hash is safe (nothing to brute-force) and lets every
request be checked without a slow KDF; the comparison is constant-time. `id` finds the row.

A key's scope says what it may do: a `tenant` key sends its tenant's events and reads its data;
an `operator` key reads every tenant's data; a `customer` key reads one customer's own usage (the
portal). Only tenant keys send events.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import psycopg

PREFIX = "afk"
_KEY = re.compile(r"afk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})\Z")


SCOPES = ("tenant", "operator", "customer")
_COLUMNS = "id, tenant, key_hash, created_at, revoked_at, scope, customer"


@dataclass(frozen=True)
class StoredKey:
    id: str
    tenant: str | None  # None for an operator key
    key_hash: bytes
    created_at: datetime
    revoked_at: datetime | None
    scope: str = "tenant"
    customer: str | None = None  # a customer key's customer


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key() -> tuple[str, str]:
    """(id, full key)."""
    key_id = secrets.token_hex(8)
    return key_id, f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    m = _KEY.fullmatch(key)
    return m.group(1) if m else None


def create_key(conn: psycopg.Connection, tenant: str | None, scope: str = "tenant",
               customer: str | None = None) -> tuple[str, str]:
    """A new key; returns (id, key). The key is not stored. The tenant (and a customer key's
    customer) must be in the catalog; an operator key has neither."""
    key_id, key = new_key()
    conn.execute("INSERT INTO api_keys (id, tenant, key_hash, scope, customer) VALUES (%s, %s, %s, %s, %s)",
                 (key_id, tenant, digest(key), scope, customer))
    return key_id, key


def revoke_key(conn: psycopg.Connection, key_id: str) -> bool:
    """True when a live key was revoked."""
    cur = conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
                       (key_id,))
    return cur.rowcount == 1


def list_keys(conn: psycopg.Connection, tenant: str | None = None) -> list[StoredKey]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE %s::text IS NULL OR tenant = %s"
                        " ORDER BY tenant NULLS FIRST, created_at", (tenant, tenant)).fetchall()
    return [StoredKey(*row) for row in rows]


def find_key(conn: psycopg.Connection, key_id: str) -> StoredKey | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = %s", (key_id,)).fetchone()
    return StoredKey(*row) if row else None


def verify(stored: StoredKey | None, key: str) -> StoredKey | None:
    """The stored key when `key` matches it and it is live, else None."""
    if stored is None or stored.revoked_at is not None:
        return None
    return stored if hmac.compare_digest(stored.key_hash, digest(key)) else None
