-- Shadow ledgers: a period re-derived from its raw events, kept for comparison with the live one.
CREATE TABLE replays (
    id           bigserial   PRIMARY KEY,
    tenant       text        NOT NULL,
    period       text        NOT NULL,
    source       text        NOT NULL CHECK (source IN ('topic', 'archive')),
    rows         integer     NOT NULL,
    digest       text        NOT NULL,
    live_digest  text        NOT NULL,
    applied      boolean     NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE replay_ledger (
    replay_id bigint NOT NULL REFERENCES replays ON DELETE CASCADE, LIKE ledger INCLUDING DEFAULTS
);
CREATE INDEX replay_ledger_rows ON replay_ledger (replay_id, raw_partition, raw_offset);
CREATE TABLE replay_lines (
    replay_id bigint NOT NULL REFERENCES replays ON DELETE CASCADE, LIKE ledger_lines INCLUDING DEFAULTS
);
CREATE INDEX replay_lines_rows ON replay_lines (replay_id, raw_partition, raw_offset);
CREATE INDEX ledger_tenant_time ON ledger (tenantid, event_time);
