-- Lines are written in the same transaction as their ledger row, by the only writer; the
-- per-row foreign-key check cost more than a third of the sink's time.
ALTER TABLE ledger_lines DROP CONSTRAINT IF EXISTS ledger_lines_raw_topic_id_raw_partition_raw_offset_fkey;
