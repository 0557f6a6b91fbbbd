-- The tamper-evident audit trail (operators/audit.py): one hash chain per tenant ('' for
-- records that carry none). Entries are appended, never changed.
CREATE TABLE audit_chain (
    tenant         text        NOT NULL,
    seq            bigint      NOT NULL,
    action         text        NOT NULL,   -- insert | replay | approve | reject
    raw_topic_id   text        NOT NULL,
    raw_partition  integer     NOT NULL,
    raw_offset     bigint      NOT NULL,
    row_hash       bytea       NOT NULL,
    chain_hash     bytea       NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, seq)
);
CREATE INDEX audit_chain_row ON audit_chain (raw_topic_id, raw_partition, raw_offset);
-- The head of each chain, locked while a writer appends, so entries never interleave.
CREATE TABLE audit_heads (
    tenant      text   PRIMARY KEY,
    seq         bigint NOT NULL,
    chain_hash  bytea  NOT NULL
);
-- The entry that sealed the row's current content.
ALTER TABLE ledger ADD COLUMN audit_seq bigint;
