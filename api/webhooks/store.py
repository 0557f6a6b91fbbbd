"""Webhook sources in Postgres (migrations 0006, 0040): provider, secret (encrypted, see
api/webhooks/secrets.py), tenant and mapping per source."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from api.webhooks.mapping import Mapping, parse_mapping
from api.webhooks.secrets import SecretBox
from api.webhooks.signatures import PROVIDERS
from api.webhooks.templates import TEMPLATES


@dataclass(frozen=True)
class WebhookSource:
    name: str
    provider: str
    tenant: str | None  # None only for a source shared by tenants from before 0040: refused
    secret: str  # as stored (encrypted): SecretBox.open gives the secret
    mapping: Mapping


class SourceExists(ValueError):
    pass


def add_source(conn: psycopg.Connection, name: str, provider: str, secret: str, tenant: str | None,
               mapping: dict | None, box: SecretBox) -> WebhookSource:
    """Store a source, its mapping checked first (the provider's template when none is given),
    its secret encrypted. A source belongs to one tenant: no provider signs a tenant header, so a
    source shared by tenants would let anyone replay a signed request into another tenant."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; one of {', '.join(PROVIDERS)}")
    if not tenant:
        raise ValueError("a webhook source needs its tenant (one source per tenant: a tenant "
                         "header is not signed by any provider)")
    parsed = parse_mapping(TEMPLATES[provider] if mapping is None else mapping)
    sealed = box.seal(secret)
    try:
        conn.execute("INSERT INTO webhook_sources (name, provider, tenant, secret, mapping)"
                     " VALUES (%s, %s, %s, %s, %s)",
                     (name, provider, tenant, sealed, Jsonb(parsed.to_json())))
    except psycopg.errors.UniqueViolation:
        raise SourceExists(f"webhook source {name!r} exists; remove it first") from None
    except psycopg.errors.ForeignKeyViolation:
        raise ValueError(f"tenant {tenant!r} is not in the catalog") from None
    return WebhookSource(name, provider, tenant, sealed, parsed)


def remove_source(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("DELETE FROM webhook_sources WHERE name = %s", (name,)).rowcount == 1


def _row(row: tuple) -> WebhookSource:
    name, provider, tenant, secret, mapping = row
    return WebhookSource(name, provider, tenant, secret, parse_mapping(mapping))


_COLUMNS = "SELECT name, provider, tenant, secret, mapping FROM webhook_sources"


def find_source(conn: psycopg.Connection, name: str) -> WebhookSource | None:
    row = conn.execute(_COLUMNS + " WHERE name = %s", (name,)).fetchone()
    return _row(row) if row else None


def list_sources(conn: psycopg.Connection) -> list[WebhookSource]:
    return [_row(row) for row in conn.execute(_COLUMNS + " ORDER BY name")]
