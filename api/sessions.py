"""Console sign-in: a browser trades an API key for a session cookie.

The cookie holds 256 random bits; only their SHA-256 is stored, with the key it stands for. The
key itself is checked on every request (so revoking it signs its browsers out within the key
cache's 5 s) and the key never has to live in the browser.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

import psycopg

COOKIE = "aforo_session"
LIFETIME = timedelta(hours=12)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def create_session(conn: psycopg.Connection, key_id: str) -> str:
    """A new session of the key; returns the token for the cookie. Expired sessions are purged."""
    token = secrets.token_urlsafe(32)
    conn.execute("DELETE FROM console_sessions WHERE expires_at < now()")
    conn.execute("INSERT INTO console_sessions (token_hash, key_id, expires_at) VALUES (%s, %s, now() + %s)",
                 (token_hash(token), key_id, LIFETIME))
    return token


def session_key(conn: psycopg.Connection, token: str) -> str | None:
    """The key id of a live session, else None."""
    row = conn.execute("SELECT key_id FROM console_sessions WHERE token_hash = %s AND expires_at > now()",
                       (token_hash(token),)).fetchone()
    return row[0] if row else None


def end_session(conn: psycopg.Connection, token: str) -> None:
    conn.execute("DELETE FROM console_sessions WHERE token_hash = %s", (token_hash(token),))
