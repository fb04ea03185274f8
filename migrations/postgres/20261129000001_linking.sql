-- Account linking and the token broker.

-- The access token is shared by every replica (sealed like the refresh token), so the
-- process that refreshes hands its result to the others instead of each refreshing.
-- refresh_lock_until is the cross-process single-flight: a refresh is only started by
-- whoever sets it (compare-and-swap on version), and it expires if that process dies.
ALTER TABLE links ADD COLUMN access_token BYTEA;            -- vault envelope
ALTER TABLE links ADD COLUMN access_expires_at BIGINT;
ALTER TABLE links ADD COLUMN refresh_lock_until BIGINT;

-- Pending links gain the browser leg. They live ten minutes, so the table is rebuilt
-- rather than migrated (SQLite cannot alter a CHECK constraint in place).
DROP TABLE pending_links;
CREATE TABLE pending_links (
    id_hash            BYTEA   PRIMARY KEY,       -- SHA-256 of the link id in the URL
    team_id            TEXT    NOT NULL,
    user_id            TEXT    NOT NULL,
    channel_id         TEXT    NOT NULL,
    thread_ts          TEXT,
    status             TEXT    NOT NULL DEFAULT 'pending'
                               CHECK (status IN ('pending', 'claimed', 'exchanging', 'completed',
                                                 'failed', 'superseded')),
    browser_hash       BYTEA,                      -- SHA-256 of the browser-binding cookie
    slack_state_hash   BYTEA   UNIQUE,            -- Sign in with Slack: state and nonce hashes
    slack_nonce_hash   BYTEA,
    slack_verified     BIGINT  NOT NULL DEFAULT 0,
    state_hash         BYTEA   UNIQUE,            -- Databricks authorization state
    pkce_verifier      BYTEA,                      -- vault envelope
    databricks_user    TEXT,                      -- who was linked, for the success page
    failure            TEXT,                      -- why it failed, for the browser
    created_at         BIGINT  NOT NULL,
    expires_at         BIGINT  NOT NULL
);
CREATE INDEX pending_links_by_user ON pending_links (team_id, user_id);
CREATE INDEX pending_links_by_expiry ON pending_links (expires_at);
CREATE INDEX pending_links_by_browser ON pending_links (browser_hash);

-- Questions from people who have not connected yet wait ('waiting') and are queued again
-- the moment they connect.
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('queued', 'running', 'waiting', 'done', 'failed'));
CREATE INDEX jobs_by_user ON jobs (team_id, user_id, state);
