-- LNK-09: a sign-in as a different Databricks user than the one already linked is held
-- ('confirming') until the person confirms the replacement in the browser. held_link is
-- the verified new link (identity and tokens), sealed whole by the vault; replaces names
-- the account it would replace, for the confirmation page. SQLite cannot alter a CHECK
-- constraint, so the table is rebuilt with its rows.
CREATE TABLE pending_links_new (
    id_hash            BLOB    PRIMARY KEY,       -- SHA-256 of the link id in the URL
    team_id            TEXT    NOT NULL,
    user_id            TEXT    NOT NULL,
    channel_id         TEXT    NOT NULL,
    thread_ts          TEXT,
    status             TEXT    NOT NULL DEFAULT 'pending'
                               CHECK (status IN ('pending', 'claimed', 'exchanging', 'confirming',
                                                 'completed', 'failed', 'superseded')),
    browser_hash       BLOB,                      -- SHA-256 of the browser-binding cookie
    slack_state_hash   BLOB    UNIQUE,            -- Sign in with Slack: state and nonce hashes
    slack_nonce_hash   BLOB,
    slack_verified     INTEGER NOT NULL DEFAULT 0,
    state_hash         BLOB    UNIQUE,            -- Databricks authorization state
    pkce_verifier      BLOB,                      -- vault envelope
    databricks_user    TEXT,                      -- who was linked, for the success page
    failure            TEXT,                      -- why it failed, for the browser
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    held_link          BLOB,                      -- vault envelope
    replaces           TEXT
);
INSERT INTO pending_links_new (id_hash, team_id, user_id, channel_id, thread_ts, status, browser_hash,
                               slack_state_hash, slack_nonce_hash, slack_verified, state_hash,
                               pkce_verifier, databricks_user, failure, created_at, expires_at)
SELECT id_hash, team_id, user_id, channel_id, thread_ts, status, browser_hash, slack_state_hash,
       slack_nonce_hash, slack_verified, state_hash, pkce_verifier, databricks_user, failure,
       created_at, expires_at
FROM pending_links;
DROP TABLE pending_links;
ALTER TABLE pending_links_new RENAME TO pending_links;
CREATE INDEX pending_links_by_user ON pending_links (team_id, user_id);
CREATE INDEX pending_links_by_expiry ON pending_links (expires_at);
CREATE INDEX pending_links_by_browser ON pending_links (browser_hash);
