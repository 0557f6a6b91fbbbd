-- One row per raw record, in exactly one terminal status. The raw record's coordinates (topic
-- id, partition, offset) are the primary key, so reprocessing the same record can never create a second row.
CREATE TABLE ledger (
    raw_topic        text        NOT NULL,
    raw_topic_id     text        NOT NULL,   -- broker topic id: a recreated topic restarts offsets
    raw_partition    integer     NOT NULL,
    raw_offset       bigint      NOT NULL,
    raw_key          bytea,
    raw              bytea       NOT NULL,   -- the payload verbatim, for replay and disputes
    ingested_at      timestamptz NOT NULL,   -- the raw record's Kafka timestamp
    processed_at     timestamptz NOT NULL DEFAULT now(),
    status           text        NOT NULL
        CHECK (status IN ('accepted', 'duplicate', 'rejected', 'late', 'unresolved')),
    reason           text,
    detail           text,
    tenantid         text,
    source           text,
    event_id         text,
    type             text,
    subject          text,
    event_time       timestamptz,
    dedup_key        text,
    payload_hash     bytea,
    route            text        NOT NULL,   -- the output topic the record was routed to
    validation_hash  text        NOT NULL,   -- HMAC-SHA256(secret, raw || 0x00 || decision)
    PRIMARY KEY (raw_topic_id, raw_partition, raw_offset)
);
CREATE INDEX ledger_event ON ledger (tenantid, source, event_id);
CREATE INDEX ledger_tenant_status ON ledger (tenantid, status);

-- The durable idempotency index: which raw record claimed a key first. Written in the same
-- transaction as that record's ledger row; claims older than the 90-day horizon are purged.
CREATE TABLE dedup_claims (
    dedup_key      text        PRIMARY KEY,
    raw_topic_id   text        NOT NULL,
    raw_partition  integer     NOT NULL,
    raw_offset     bigint      NOT NULL,
    payload_hash   bytea       NOT NULL,
    ingested_at    timestamptz NOT NULL
);
CREATE INDEX dedup_claims_ingested ON dedup_claims (ingested_at);
