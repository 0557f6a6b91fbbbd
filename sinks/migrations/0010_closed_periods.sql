-- Billing watermarks: a closed period is frozen. An event that belongs to it by time but is rated
-- later (an approved late event) is an adjustment in the next open period instead.
CREATE TABLE closed_periods (
    tenant     text        NOT NULL,
    period     text        NOT NULL,
    closed_at  timestamptz NOT NULL DEFAULT now(),
    closed_by  text        NOT NULL,
    digest     text        NOT NULL,   -- the period's ledger digest when it was closed
    totals     jsonb       NOT NULL,   -- per customer and metric: events, quantity, revenue, cost
    PRIMARY KEY (tenant, period)
);
-- On an adjustment: the closed period it belongs to by event time (its `period` is where it is billed).
ALTER TABLE ledger ADD COLUMN adjusts_period text;
ALTER TABLE replay_ledger ADD COLUMN adjusts_period text;
