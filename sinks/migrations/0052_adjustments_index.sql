-- A period's replay and closing digest read its events by time plus the adjustments billed in it
-- (late events of closed periods): few rows, found through this partial index, not a scan.
CREATE INDEX IF NOT EXISTS ledger_adjustments ON ledger (tenantid, period) WHERE adjusts_period IS NOT NULL;
