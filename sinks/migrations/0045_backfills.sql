-- Backfills: historical events admitted on purpose, past the 24-hour lateness gate, by an operator.
-- The door writes the row before it produces anything; every raw record of the backfill carries
-- its id in the `aforo-backfill` Kafka header (and the ledger row keeps it).
CREATE TABLE backfills (
    id                text        PRIMARY KEY,     -- bf_<16 hex>
    tenant            text        NOT NULL REFERENCES tenants,
    actor             text        NOT NULL,        -- who: AFORO_ACTOR/USER (CLI) or key:<id> (API)
    reason            text        NOT NULL CHECK (reason <> ''),  -- why, as the operator gave it
    created_at        timestamptz NOT NULL,        -- also the records' ingestion time
    events            integer     NOT NULL,        -- admitted, and produced in this order
    customers         integer     NOT NULL,
    periods           text[]      NOT NULL,        -- billing periods of the events; none closed
    first_event_time  timestamptz NOT NULL,
    last_event_time   timestamptz NOT NULL,
    produced          integer                      -- acknowledged by the broker; NULL until known
);
CREATE INDEX backfills_tenant ON backfills (tenant, created_at);
