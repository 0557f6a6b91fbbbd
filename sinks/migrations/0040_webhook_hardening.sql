-- Webhooks that cannot be replayed (issue 16 items 6, 7, 9, 10).

-- An event id must come from what the provider signs. A mapping that took it from a header (the
-- GitHub template's X-GitHub-Delivery) let one signed body, replayed under new header values,
-- count as new events; such ids become the payload's digest (api/webhooks/mapping.py).
UPDATE webhook_sources SET mapping = jsonb_set(mapping, '{id}', '"sha256:$"')
 WHERE mapping->>'id' LIKE '%header:%';

-- A source belongs to one tenant: X-Aforo-Tenant is signed by no provider. NOT VALID keeps a
-- shared source from before readable (so it can be listed and removed); the API refuses its
-- requests until it is added again with --tenant.
ALTER TABLE webhook_sources ADD CONSTRAINT webhook_sources_tenant_required
    CHECK (tenant IS NOT NULL) NOT VALID;

COMMENT ON COLUMN webhook_sources.secret IS
    'fernet:<token> under the key in AFORO_WEBHOOK_KEY or $AFORO_HOME/webhook.key; plaintext only from before 0040, until `aforo migrate`';

-- When each event of a source whose payload carries no time (GitHub, Twilio) was first received:
-- a redelivery gets that time again, so its bytes are the same and the pipeline marks it
-- duplicate/same_payload instead of a conflict. Rows older than the 90-day dedup horizon go.
CREATE TABLE webhook_receipts (
    source       text   NOT NULL,  -- <provider>/<source name>, the CloudEvent source
    event_id     text   NOT NULL,
    received_ms  bigint NOT NULL,  -- the first receipt, epoch milliseconds
    PRIMARY KEY (source, event_id)
);
CREATE INDEX webhook_receipts_received ON webhook_receipts (received_ms);
