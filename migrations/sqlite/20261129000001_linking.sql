-- Account linking and the token broker.

-- The access token is shared by every replica (sealed like the refresh token), so the
-- process that refreshes hands its result to the others instead of each refreshing.
-- refresh_lock_until is the cross-process single-flight: a refresh is only started by
-- whoever sets it (compare-and-swap on version), and it expires if that process dies.
ALTER TABLE links ADD COLUMN access_token BLOB;            -- vault envelope
ALTER TABLE links ADD COLUMN access_expires_at INTEGER;
ALTER TABLE links ADD COLUMN refresh_lock_until INTEGER;

-- Pending links gain the browser leg. They live ten minutes, so the table is rebuilt
-- rather than migrated (SQLite cannot alter a CHECK constraint in place).
DROP TABLE pending_links;
CREATE TABLE pending_links (
    id_hash            BLOB    PRIMARY KEY,       -- SHA-256 of the link id in the URL
    team_id            TEXT    NOT NULL,
    user_id            TEXT    NOT NULL,
    channel_id         TEXT    NOT NULL,
    thread_ts          TEXT,
    status             TEXT    NOT NULL DEFAULT 'pending'
                               CHECK (status IN ('pending', 'claimed', 'exchanging', 'completed',
                                                 'failed', 'superseded')),
    browser_hash       BLOB,                      -- SHA-256 of the browser-binding cookie
    slack_state_hash   BLOB    UNIQUE,            -- Sign in with Slack: state and nonce hashes
    slack_nonce_hash   BLOB,
    slack_verified     INTEGER NOT NULL DEFAULT 0,
    state_hash         BLOB    UNIQUE,            -- Databricks authorization state
    pkce_verifier      BLOB,                      -- vault envelope
    databricks_user    TEXT,                      -- who was linked, for the success page
    failure            TEXT,                      -- why it failed, for the browser
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL
);
CREATE INDEX pending_links_by_user ON pending_links (team_id, user_id);
CREATE INDEX pending_links_by_expiry ON pending_links (expires_at);
CREATE INDEX pending_links_by_browser ON pending_links (browser_hash);

-- Questions from people who have not connected yet wait ('waiting') and are queued again
-- the moment they connect. SQLite cannot alter a CHECK constraint, so the table is
-- rebuilt with its rows.
CREATE TABLE jobs_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT    NOT NULL,
    team_id     TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    payload     TEXT    NOT NULL,    -- JSON
    state       TEXT    NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'waiting', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    run_after   INTEGER NOT NULL,
    lease_until INTEGER,
    error       TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
INSERT INTO jobs_new (id, kind, team_id, user_id, payload, state, attempts, run_after, lease_until, error,
                      created_at, updated_at)
    SELECT id, kind, team_id, user_id, payload, state, attempts, run_after, lease_until, error, created_at, updated_at
    FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_ready ON jobs (state, run_after);
CREATE INDEX jobs_by_user ON jobs (team_id, user_id, state);
