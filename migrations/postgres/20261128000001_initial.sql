-- Initial schema (Postgres). Times are Unix seconds (UTC) in BIGINT columns so the same
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
    refresh_token           BYTEA   NOT NULL,  -- vault envelope, never plaintext
    key_id                  TEXT    NOT NULL,  -- the TOKEN_ENCRYPTION_KEYS entry that sealed it
    scopes                  TEXT    NOT NULL,
    status                  TEXT    NOT NULL DEFAULT 'active'
                                    CHECK (status IN ('active', 'needs_relink')),
    version                 BIGINT  NOT NULL DEFAULT 0,  -- bumped by each refresh (compare-and-swap)
    linked_at               BIGINT  NOT NULL,
    refreshed_at            BIGINT,
    last_used_at            BIGINT,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX links_by_key ON links (key_id);

-- "Connect Databricks" links in flight. Only hashes of the link id, the browser-binding
-- cookie and the OAuth state are kept, so a database reader cannot complete a flow.
CREATE TABLE pending_links (
    id_hash       BYTEA   PRIMARY KEY,
    team_id       TEXT    NOT NULL,
    user_id       TEXT    NOT NULL,
    channel_id    TEXT    NOT NULL,
    thread_ts     TEXT,
    question      TEXT,               -- answered once the person has linked
    browser_hash  BYTEA,
    state_hash    BYTEA   UNIQUE,
    pkce_verifier BYTEA,              -- vault envelope
    key_id        TEXT,
    status        TEXT    NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'claimed', 'completed', 'failed', 'superseded')),
    created_at    BIGINT  NOT NULL,
    expires_at    BIGINT  NOT NULL
);
CREATE INDEX pending_links_by_user ON pending_links (team_id, user_id);
CREATE INDEX pending_links_by_expiry ON pending_links (expires_at);

-- Delivered Slack event ids, for de-duplicating retries across processes.
CREATE TABLE slack_events (
    event_id    TEXT    PRIMARY KEY,
    team_id     TEXT    NOT NULL,
    received_at BIGINT  NOT NULL
);
CREATE INDEX slack_events_by_age ON slack_events (received_at);

-- The durable work queue: a question acknowledged to Slack is a row here before the ack.
CREATE TABLE jobs (
    id          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        TEXT    NOT NULL,
    team_id     TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    payload     TEXT    NOT NULL,    -- JSON
    state       TEXT    NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts    BIGINT  NOT NULL DEFAULT 0,
    run_after   BIGINT  NOT NULL,
    lease_until BIGINT,
    error       TEXT,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);
CREATE INDEX jobs_ready ON jobs (state, run_after);

-- Slack thread -> agent conversation (Genie conversation id, or recent turns).
CREATE TABLE conversations (
    team_id    TEXT    NOT NULL,
    channel_id TEXT    NOT NULL,
    thread_ts  TEXT    NOT NULL,
    agent      TEXT    NOT NULL,
    state      TEXT    NOT NULL,     -- JSON
    updated_at BIGINT  NOT NULL,
    PRIMARY KEY (team_id, channel_id, thread_ts)
);
CREATE INDEX conversations_by_age ON conversations (updated_at);

-- Security-relevant events. Never question text, never secrets.
CREATE TABLE audit_events (
    id         BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         BIGINT  NOT NULL,
    kind       TEXT    NOT NULL
               CHECK (kind IN ('link', 'unlink', 'relink_needed', 'refresh_failed', 'identity_mismatch')),
    team_id    TEXT    NOT NULL,
    user_id    TEXT    NOT NULL,
    actor      TEXT    NOT NULL,     -- 'user', 'admin-cli', 'system'
    detail     TEXT
);
CREATE INDEX audit_events_by_user ON audit_events (team_id, user_id, at);
