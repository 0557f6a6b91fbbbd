-- The catalog (Postgres is its source of truth) and the billing context of every ledger row.

-- Bumped by every `aforo catalog apply` that changes something: caches key on it.
CREATE TABLE catalog_state (
    id          integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    catalog_id  text    NOT NULL DEFAULT md5(random()::text || clock_timestamp()::text),
    version     bigint  NOT NULL DEFAULT 0
);
INSERT INTO catalog_state DEFAULT VALUES;

CREATE TABLE tenants (
    id               text PRIMARY KEY,
    name             text NOT NULL,
    currency         text NOT NULL,
    idempotency_key  text
);
CREATE TABLE metrics (
    tenant       text NOT NULL REFERENCES tenants,
    code         text NOT NULL,
    event_type   text NOT NULL,
    aggregation  text NOT NULL CHECK (aggregation IN ('count', 'sum', 'max', 'unique_count', 'latest')),
    value_path   text,
    group_by     jsonb NOT NULL DEFAULT '[]',
    PRIMARY KEY (tenant, code)
);
-- A published plan version is immutable: `catalog apply` refuses to change its charges.
CREATE TABLE plans (
    tenant        text    NOT NULL REFERENCES tenants,
    code          text    NOT NULL,
    version       integer NOT NULL,
    currency      text    NOT NULL,
    charges       jsonb   NOT NULL,
    published_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, code, version)
);
CREATE TABLE customers (
    tenant  text NOT NULL REFERENCES tenants,
    id      text NOT NULL,
    name    text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, id)
);
CREATE TABLE subscriptions (
    tenant        text        NOT NULL,
    id            text        NOT NULL,
    customer      text        NOT NULL,
    plan          text        NOT NULL,
    plan_version  integer     NOT NULL,
    starts_at     timestamptz NOT NULL,
    ends_at       timestamptz,
    PRIMARY KEY (tenant, id),
    FOREIGN KEY (tenant, customer) REFERENCES customers,
    FOREIGN KEY (tenant, plan, plan_version) REFERENCES plans
);
CREATE INDEX subscriptions_customer ON subscriptions (tenant, customer);
CREATE TABLE quotas (
    tenant        text    NOT NULL,
    subscription  text    NOT NULL,
    metric        text    NOT NULL,
    "limit"       numeric NOT NULL,
    PRIMARY KEY (tenant, subscription, metric),
    FOREIGN KEY (tenant, subscription) REFERENCES subscriptions,
    FOREIGN KEY (tenant, metric) REFERENCES metrics
);
CREATE TABLE costs (
    tenant     text    NOT NULL,
    metric     text    NOT NULL,
    match      jsonb   NOT NULL DEFAULT '{}',
    unit_cost  numeric NOT NULL,
    PRIMARY KEY (tenant, metric, match),
    FOREIGN KEY (tenant, metric) REFERENCES metrics
);

-- The enrichment context of each rated (or unresolved) ledger row.
ALTER TABLE ledger
    ADD COLUMN customer      text,
    ADD COLUMN subscription  text,
    ADD COLUMN plan          text,
    ADD COLUMN plan_version  integer,
    ADD COLUMN currency      text,
    ADD COLUMN period        text,       -- billing period, YYYY-MM
    ADD COLUMN revenue       numeric,    -- exact: sum of the row's lines
    ADD COLUMN cost          numeric,
    ADD COLUMN margin        numeric;

-- One line per metric an accepted event feeds: its marginal revenue, cost and margin.
CREATE TABLE ledger_lines (
    raw_topic_id   text    NOT NULL,
    raw_partition  integer NOT NULL,
    raw_offset     bigint  NOT NULL,
    metric         text    NOT NULL,
    grp            jsonb   NOT NULL DEFAULT '{}',
    quantity       numeric NOT NULL,   -- the event's own contribution
    total_after    numeric NOT NULL,   -- the running total it was priced on
    revenue        numeric NOT NULL,   -- P(total after) - P(total before)
    cost           numeric NOT NULL,
    margin         numeric NOT NULL,
    PRIMARY KEY (raw_topic_id, raw_partition, raw_offset, metric),
    FOREIGN KEY (raw_topic_id, raw_partition, raw_offset) REFERENCES ledger
);

-- Per (tenant, customer, subscription, metric, period) totals, kept current by the flow.
-- `events` only grows, so a replayed (older) upsert never overwrites a newer total.
CREATE TABLE revenue (
    tenant        text    NOT NULL,
    customer      text    NOT NULL,
    subscription  text    NOT NULL,
    metric        text    NOT NULL,
    period        text    NOT NULL,
    currency      text    NOT NULL,
    events        bigint  NOT NULL,
    quantity      numeric NOT NULL,
    revenue       numeric NOT NULL,
    cost          numeric NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, subscription, metric, period)
);
CREATE INDEX revenue_period ON revenue (tenant, period);
