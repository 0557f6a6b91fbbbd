-- Reconciliation of held (late, unresolved) events: approve re-injects, reject records why.
ALTER TABLE ledger ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY;
CREATE UNIQUE INDEX ledger_id ON ledger (id);
-- "topic id/partition/offset" of the held record an approved re-injection stands for.
ALTER TABLE ledger ADD COLUMN reinject_of text;
CREATE INDEX ledger_reinject_of ON ledger (reinject_of) WHERE reinject_of IS NOT NULL;
CREATE INDEX ledger_held ON ledger (tenantid, status) WHERE status IN ('late', 'unresolved');
-- Appended, never changed: a held row's history. One decision per held row.
CREATE TABLE ledger_transitions (
    id             bigserial   PRIMARY KEY,
    raw_topic_id   text        NOT NULL,
    raw_partition  integer     NOT NULL,
    raw_offset     bigint      NOT NULL,
    action         text        NOT NULL CHECK (action IN ('approve', 'reject')),
    from_status    text        NOT NULL,
    from_reason    text,
    actor          text        NOT NULL,
    note           text,
    at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (raw_topic_id, raw_partition, raw_offset)
);
-- Shadow ledgers carry every column the ledger sink writes.
ALTER TABLE replay_ledger ADD COLUMN reinject_of text;
