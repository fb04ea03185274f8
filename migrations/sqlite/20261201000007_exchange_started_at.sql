-- When a pending link's code exchange began: an exchange that a crash or a cut-off
-- callback left `exchanging` past the exchange budget is ended as failed, not left
-- hanging (the result page and the retention purge look).
ALTER TABLE pending_links ADD COLUMN exchange_started_at INTEGER;
