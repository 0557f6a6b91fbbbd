-- The HTTP front doors (api/): per-tenant API keys and the configured webhook sources.

-- A key is shown once when created; only its SHA-256 is kept (keys are 256-bit random, so a
-- plain hash is enough: there is nothing to brute-force). `id` is the public half of the key,
-- used to find the row, to list and to revoke.
CREATE TABLE api_keys (
    id          text        PRIMARY KEY,
    tenant      text        NOT NULL REFERENCES tenants,
    key_hash    bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);

-- One row per webhook source (`/v1/webhooks/{provider}/{name}`). The secret must be kept as is:
-- HMAC schemes need it to recompute signatures (for SendGrid it is the public verification key).
-- tenant NULL: the request's X-Aforo-Tenant header names it (a source shared by tenants).
CREATE TABLE webhook_sources (
    name        text        PRIMARY KEY,
    provider    text        NOT NULL
        CHECK (provider IN ('stripe', 'twilio', 'sendgrid', 'github', 'slack', 'generic')),
    tenant      text        REFERENCES tenants,
    secret      text        NOT NULL,
    mapping     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
