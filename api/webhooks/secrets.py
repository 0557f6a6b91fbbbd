"""Webhook signing secrets, encrypted at rest.

A source's secret is stored as `fernet:<token>` (Fernet: AES-128-CBC with an HMAC-SHA256, from
`cryptography`), under a key that never enters the database: AFORO_WEBHOOK_KEY, else the file
$AFORO_HOME/webhook.key (mode 0600), created the first time a secret is stored. Every API process
that receives webhooks needs the same key. A value without the prefix is a secret stored before
encryption; it still verifies, and `aforo migrate` encrypts it (`seal_stored_secrets`).
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from config import Settings, kept_secret
from schemas.errors import Unavailable

PREFIX = "fernet:"


class SecretKeyError(Unavailable):
    """The key is missing, malformed, or not the one a secret was stored with (the message says
    which and where, never the secret)."""


class SecretBox:
    def __init__(self, settings: Settings):
        self._env = settings.webhook_key_env
        self._file = settings.webhook_key_file
        self._fernet = None

    @property
    def where(self) -> str:
        return "AFORO_WEBHOOK_KEY" if self._env else str(self._file)

    def seal(self, secret: str) -> str:
        return PREFIX + self._cipher(create=True).encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored  # stored before encryption; `aforo migrate` encrypts it
        from cryptography.fernet import InvalidToken
        try:
            return self._cipher(create=False).decrypt(stored[len(PREFIX):].encode()).decode()
        except InvalidToken:
            raise SecretKeyError(f"the webhook key in {self.where} is not the one this secret was "
                                 "encrypted with") from None

    def _cipher(self, create: bool):
        # imported here: `cryptography` costs a tenth of a second, which every `aforo` command would pay
        from cryptography.fernet import Fernet
        if self._fernet is None:
            key = self._env.encode() if self._env else _key_file(self._file, create)
            try:
                self._fernet = Fernet(key)
            except ValueError:
                raise SecretKeyError(f"the webhook key in {self.where} is not a Fernet key "
                                     "(32 url-safe base64-encoded bytes)") from None
        return self._fernet


def _key_file(path: Path, create: bool) -> bytes:
    from cryptography.fernet import Fernet
    try:
        if create:
            return kept_secret(path, lambda: Fernet.generate_key().decode()).encode()
        return path.read_bytes().strip()
    except FileNotFoundError:
        raise SecretKeyError(f"no webhook key: {path} does not exist (copy it from where the "
                             "secrets were stored, or set AFORO_WEBHOOK_KEY)") from None


def seal_stored_secrets(settings: Settings) -> int:
    """Encrypt the secrets stored before encryption (`aforo migrate`); how many there were."""
    box = SecretBox(settings)
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute("SELECT name, secret FROM webhook_sources WHERE secret NOT LIKE %s"
                            " ORDER BY name", (PREFIX + "%",)).fetchall()
        for name, secret in rows:
            conn.execute("UPDATE webhook_sources SET secret = %s WHERE name = %s AND secret = %s",
                         (box.seal(secret), name, secret))
    return len(rows)
