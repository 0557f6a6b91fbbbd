-- A close in two phases (sinks/periods.py says why): the row is inserted at the cut with no digest
-- and totals yet (the period is closing), and they are stored once computed. A closing row always
-- has its cut, and the digest and totals come together.
ALTER TABLE closed_periods ALTER COLUMN digest DROP NOT NULL, ALTER COLUMN totals DROP NOT NULL,
    ADD CONSTRAINT closed_periods_closing CHECK ((digest IS NULL) = (totals IS NULL)
                                                 AND (digest IS NOT NULL OR closed_through IS NOT NULL));
