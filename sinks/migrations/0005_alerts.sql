-- Alerts raised by the monitoring flow (flows/monitoring.py): usage anomalies and quota pacing.
-- The primary key is the alert's deterministic key, so a restart, a recovered crash or a replay
-- writes nothing new (INSERT ... ON CONFLICT DO NOTHING).
CREATE TABLE alerts (
    kind          text        NOT NULL,  -- spike | dip | weekly_drop | quota_projected | quota_actual
    tenant        text        NOT NULL,
    customer      text        NOT NULL,
    subscription  text        NOT NULL,  -- quota alerts; '' for the others (a series is per customer)
    metric        text        NOT NULL,
    window_id     text        NOT NULL,  -- 2026-11-30T13:00Z (hour), 2026-W48 (ISO week), 2026-11 (period)
    threshold     text        NOT NULL,  -- 2 (sigma), 50 (% drop), 80 | 100 | 120 (% of the limit)
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    event_time    timestamptz NOT NULL,  -- when it became true: the window's end, or the crossing event
    details       jsonb       NOT NULL,  -- observed, baseline, sigma, z / previous week / limit, used, projected
    detected_at   timestamptz NOT NULL DEFAULT now(),  -- wall clock, for information only
    PRIMARY KEY (kind, tenant, customer, subscription, metric, window_id, threshold)
);
CREATE INDEX alerts_event_time ON alerts (tenant, event_time);
