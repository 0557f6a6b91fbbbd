-- The web console and the customer portal (issue 12): what a key may read, and browser sessions.
-- scope 'tenant': one tenant's doors and data (every key before this migration);
-- 'operator': every tenant's data, read only; 'customer': one customer of one tenant, read only
-- (the portal).
ALTER TABLE api_keys ALTER COLUMN tenant DROP NOT NULL;
ALTER TABLE api_keys
    ADD COLUMN scope    text NOT NULL DEFAULT 'tenant' CHECK (scope IN ('tenant', 'operator', 'customer')),
    ADD COLUMN customer text,
    ADD CONSTRAINT api_keys_scope_fits CHECK (
        (scope = 'operator' AND tenant IS NULL AND customer IS NULL)
        OR (scope = 'tenant' AND tenant IS NOT NULL AND customer IS NULL)
        OR (scope = 'customer' AND tenant IS NOT NULL AND customer IS NOT NULL)),
    ADD CONSTRAINT api_keys_customer_fkey FOREIGN KEY (tenant, customer) REFERENCES customers;

-- A signed-in browser holds a random token in a cookie; only its SHA-256 is kept. A session is
-- as good as its key: revoking the key ends it (the key is checked on every request).
CREATE TABLE console_sessions (
    token_hash  bytea       PRIMARY KEY,
    key_id      text        NOT NULL REFERENCES api_keys ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
