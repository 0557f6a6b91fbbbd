-- The bill run (flows/billing.py) and what it settles: invoices, their lines, the ledger rows
-- behind every line, and where each invoice was delivered.

CREATE TABLE bill_runs (
    id           bigserial   PRIMARY KEY,
    tenant       text        NOT NULL,
    period       text        NOT NULL,
    customer     text,                   -- --customer: only this one
    allow_held   boolean     NOT NULL DEFAULT false,
    actor        text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    status       text        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'failed'))
);
CREATE INDEX bill_runs_period ON bill_runs (tenant, period);

-- One row per (run, customer, stage). `result` is the stage's output as canonical JSON (what a
-- resumed run starts from) and `digest` its SHA-256; `reused` marks a stage a resumed run took
-- from an earlier run (`from_run`) instead of running it again.
CREATE TABLE bill_run_stages (
    run_id       bigint      NOT NULL REFERENCES bill_runs,
    customer     text        NOT NULL,
    stage_no     smallint    NOT NULL,
    stage        text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('running', 'ok', 'failed', 'reused')),
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at  timestamptz,
    error        text,
    digest       text,
    result       text,
    from_run     bigint,
    PRIMARY KEY (run_id, customer, stage_no)
);
CREATE INDEX bill_run_stages_customer ON bill_run_stages (customer, run_id);

-- Gapless numbers per tenant, series (INV, CN) and year: taken in the transaction that settles.
CREATE TABLE invoice_numbers (
    tenant  text    NOT NULL,
    series  text    NOT NULL,
    year    integer NOT NULL,
    last    integer NOT NULL,
    PRIMARY KEY (tenant, series, year)
);

-- A settled invoice, or a credit note (a negative invoice voiding `credit_note_of`). `document`
-- is the whole invoice as canonical JSON and `digest` its SHA-256; the rows beside it are the
-- same figures, for queries.
CREATE TABLE invoices (
    id              bigserial   PRIMARY KEY,
    tenant          text        NOT NULL,
    number          text        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('invoice', 'credit_note')),
    customer        text        NOT NULL,
    period          text        NOT NULL,
    currency        text        NOT NULL,
    credit_note_of  bigint      REFERENCES invoices,
    bill_run_id     bigint      REFERENCES bill_runs,
    usage_subtotal  numeric     NOT NULL,   -- exact, before rounding
    discount        numeric     NOT NULL,   -- exact
    net             numeric     NOT NULL,   -- rounded, per line
    tax             numeric     NOT NULL,   -- rounded, per line
    rounding        numeric     NOT NULL,   -- rounded minus exact
    total           numeric     NOT NULL,
    document        text        NOT NULL,
    digest          text        NOT NULL,
    settled_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, number)
);
CREATE INDEX invoices_period ON invoices (tenant, period, customer);
CREATE UNIQUE INDEX invoices_one_credit_note ON invoices (credit_note_of) WHERE credit_note_of IS NOT NULL;

CREATE TABLE invoice_lines (
    invoice_id    bigint   NOT NULL REFERENCES invoices,
    line_no       integer  NOT NULL,
    kind          text     NOT NULL CHECK (kind IN ('usage', 'commitment')),
    subscription  text     NOT NULL,
    metric        text,
    grp           jsonb    NOT NULL DEFAULT '{}',
    description   text     NOT NULL,
    model         text,                -- the charge's pricing model
    events        bigint   NOT NULL,
    quantity      numeric  NOT NULL,
    billable      numeric  NOT NULL,   -- quantity less blocked, rolled-over, included and prepaid units
    parts         jsonb    NOT NULL,   -- the unit/tier breakdown: [{label, quantity, unit_price, amount}]
    usage_amount  numeric  NOT NULL,   -- the period price of the metered quantity: the events' revenue
    amount        numeric  NOT NULL,   -- the price of the billable quantity, or the true-up
    discount      numeric  NOT NULL,
    tax           numeric  NOT NULL,   -- rounded
    total         numeric  NOT NULL,   -- rounded net + rounded tax
    PRIMARY KEY (invoice_id, line_no)
);

-- For every invoice line, the ledger rows that fed it, with their validation hashes.
CREATE TABLE bill_run_event_index (
    invoice_id       bigint  NOT NULL,
    line_no          integer NOT NULL,
    raw_topic_id     text    NOT NULL,
    raw_partition    integer NOT NULL,
    raw_offset       bigint  NOT NULL,
    validation_hash  text    NOT NULL,
    PRIMARY KEY (invoice_id, line_no, raw_topic_id, raw_partition, raw_offset),
    FOREIGN KEY (invoice_id, line_no) REFERENCES invoice_lines
);

-- Prepaid units an invoice drew; a credit note gives them back (balance counts only invoices
-- that are not voided).
CREATE TABLE credit_draws (
    invoice_id  bigint  NOT NULL REFERENCES invoices,
    tenant      text    NOT NULL,
    grant_id    text    NOT NULL,
    units       numeric NOT NULL CHECK (units > 0),
    PRIMARY KEY (invoice_id, grant_id),
    FOREIGN KEY (tenant, grant_id) REFERENCES credit_grants
);

-- Settled is final: voiding issues a credit note, never an edit.
CREATE FUNCTION refuse_settled_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is settled and immutable: void an invoice with a credit note', TG_TABLE_NAME;
END $$;
CREATE TRIGGER invoices_immutable BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION refuse_settled_change();
CREATE TRIGGER invoice_lines_immutable BEFORE UPDATE OR DELETE ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION refuse_settled_change();
CREATE TRIGGER bill_run_event_index_immutable BEFORE UPDATE OR DELETE ON bill_run_event_index
    FOR EACH ROW EXECUTE FUNCTION refuse_settled_change();
CREATE TRIGGER credit_draws_immutable BEFORE UPDATE OR DELETE ON credit_draws
    FOR EACH ROW EXECUTE FUNCTION refuse_settled_change();

-- Where a tenant's invoices go besides the `<prefix>.invoices` topic.
CREATE TABLE invoice_destinations (
    tenant      text        NOT NULL REFERENCES tenants,
    name        text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('webhook', 'directory')),
    url         text,
    secret      text,
    directory   text,
    formats     jsonb       NOT NULL DEFAULT '["json"]',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, name),
    CHECK ((kind = 'webhook') = (url IS NOT NULL AND secret IS NOT NULL)),
    CHECK ((kind = 'directory') = (directory IS NOT NULL))
);

-- One row per (invoice, destination), written pending in the settling transaction (an outbox):
-- delivered once acknowledged, retried while not; the invoice number is the idempotency key.
CREATE TABLE invoice_deliveries (
    invoice_id    bigint      NOT NULL REFERENCES invoices,
    destination   text        NOT NULL,   -- 'kafka' or a destination's name
    status        text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text,
    delivered_at  timestamptz,
    PRIMARY KEY (invoice_id, destination)
);
