-- The highest ledger id when the period was closed: its digest covers the rows committed by then
-- (sinks/periods.py says why), so rows written later in its time range (late events held after
-- the close, duplicates) do not change it. NULL for a period closed before this column: its
-- digest covers every row of its scope, as it did.
ALTER TABLE closed_periods ADD COLUMN closed_through bigint;
