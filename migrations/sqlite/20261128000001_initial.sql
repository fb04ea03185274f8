-- Initial schema (SQLite). Times are Unix seconds (UTC) in INTEGER columns so the same
-- queries serve SQLite and Postgres. Secrets are stored only as vault envelopes
-- (AES-256-GCM, see src/crypto.rs); the key id beside each makes key rotation a query.

-- One row per Slack person who linked Databricks: whose identity answers their questions.
CREATE TABLE links (
    team_id                 TEXT    NOT NULL,
    user_id                 TEXT    NOT NULL,
    workspace_host          TEXT    NOT NULL,
    databricks_user_id      TEXT    NOT NULL,
    databricks_user_name    TEXT    NOT NULL,
    databricks_display_name TEXT,
    refresh_token           BLOB    NOT NULL,  -- vault envelope, never plaintext
    key_id                  TEXT    NOT NULL,  -- the TOKEN_ENCRYPTION_KEYS entry that sealed it
    scopes                  TEXT    NOT NULL,
    status                  TEXT    NOT NULL DEFAULT 'active'
                                    CHECK (status IN ('active', 'needs_relink')),
    version                 INTEGER NOT NULL DEFAULT 0,  -- bumped by each refresh (compare-and-swap)
    linked_at               INTEGER NOT NULL,
    refreshed_at            INTEGER,
    last_used_at            INTEGER,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX links_by_key ON links (key_id);

-- "Connect Databricks" links in flight. Only hashes of the link id, the browser-binding
-- cookie and the OAuth state are kept, so a database reader cannot complete a flow.
CREATE TABLE pending_links (
    id_hash       BLOB    PRIMARY KEY,
    team_id       TEXT    NOT NULL,
    user_id       TEXT    NOT NULL,
    channel_id    TEXT    NOT NULL,
    thread_ts     TEXT,
    question      TEXT,               -- answered once the person has linked
    browser_hash  BLOB,
    state_hash    BLOB    UNIQUE,
    pkce_verifier BLOB,               -- vault envelope
    key_id        TEXT,
    status        TEXT    NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'claimed', 'completed', 'failed', 'superseded')),
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);
CREATE INDEX pending_links_by_user ON pending_links (team_id, user_id);
CREATE INDEX pending_links_by_expiry ON pending_links (expires_at);

-- Delivered Slack event ids, for de-duplicating retries across processes.
CREATE TABLE slack_events (
    event_id    TEXT    PRIMARY KEY,
    team_id     TEXT    NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE INDEX slack_events_by_age ON slack_events (received_at);

-- The durable work queue: a question acknowledged to Slack is a row here before the ack.
CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT    NOT NULL,
    team_id     TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    payload     TEXT    NOT NULL,    -- JSON
    state       TEXT    NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    run_after   INTEGER NOT NULL,
    lease_until INTEGER,
    error       TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX jobs_ready ON jobs (state, run_after);

-- Slack thread -> agent conversation (Genie conversation id, or recent turns).
CREATE TABLE conversations (
    team_id    TEXT    NOT NULL,
    channel_id TEXT    NOT NULL,
    thread_ts  TEXT    NOT NULL,
    agent      TEXT    NOT NULL,
    state      TEXT    NOT NULL,     -- JSON
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (team_id, channel_id, thread_ts)
);
CREATE INDEX conversations_by_age ON conversations (updated_at);

-- Security-relevant events. Never question text, never secrets.
CREATE TABLE audit_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    kind       TEXT    NOT NULL
               CHECK (kind IN ('link', 'unlink', 'relink_needed', 'refresh_failed', 'identity_mismatch')),
    team_id    TEXT    NOT NULL,
    user_id    TEXT    NOT NULL,
    actor      TEXT    NOT NULL,     -- 'user', 'admin-cli', 'system'
    detail     TEXT
);
CREATE INDEX audit_events_by_user ON audit_events (team_id, user_id, at);
