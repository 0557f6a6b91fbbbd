-- Provenance: the ingestion tier (front door) that received each raw record.
ALTER TABLE ledger ADD COLUMN tier text;
