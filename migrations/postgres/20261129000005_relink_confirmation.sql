-- LNK-09: a sign-in as a different Databricks user than the one already linked is held
-- ('confirming') until the person confirms the replacement in the browser. held_link is
-- the verified new link (identity and tokens), sealed whole by the vault; replaces names
-- the account it would replace, for the confirmation page.
ALTER TABLE pending_links DROP CONSTRAINT pending_links_status_check;
ALTER TABLE pending_links ADD CONSTRAINT pending_links_status_check
    CHECK (status IN ('pending', 'claimed', 'exchanging', 'confirming', 'completed', 'failed', 'superseded'));
ALTER TABLE pending_links ADD COLUMN held_link BYTEA;
ALTER TABLE pending_links ADD COLUMN replaces TEXT;
