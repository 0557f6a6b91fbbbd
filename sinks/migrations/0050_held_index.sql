-- Held rows are few in a large ledger: the held-events gauge and `aforo reconcile list` count
-- and list them through this partial index instead of scanning the ledger.
CREATE INDEX IF NOT EXISTS ledger_held ON ledger (tenantid, status) WHERE status IN ('late', 'unresolved');
