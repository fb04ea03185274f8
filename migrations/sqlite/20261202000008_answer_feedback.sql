-- Feedback on answers (the thumbs under each answer): one rating per answer and person,
-- changed by a later click of the other button. Answers are jobs; `job_id` names one.
CREATE TABLE answer_feedback (
    job_id   INTEGER NOT NULL,
    team_id  TEXT    NOT NULL,
    user_id  TEXT    NOT NULL,
    rating   TEXT    NOT NULL CHECK (rating IN ('positive', 'negative')),
    at       INTEGER NOT NULL,
    PRIMARY KEY (job_id, team_id, user_id)
);

-- The audit trail records feedback too. SQLite cannot change a CHECK in place: the table
-- is rebuilt with its rows.
CREATE TABLE audit_events_new (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    kind       TEXT    NOT NULL
               CHECK (kind IN ('link', 'unlink', 'relink_needed', 'refresh_failed', 'identity_mismatch', 'feedback')),
    team_id    TEXT    NOT NULL,
    user_id    TEXT    NOT NULL,
    actor      TEXT    NOT NULL,
    detail     TEXT
);
INSERT INTO audit_events_new (id, at, kind, team_id, user_id, actor, detail)
    SELECT id, at, kind, team_id, user_id, actor, detail FROM audit_events;
DROP TABLE audit_events;
ALTER TABLE audit_events_new RENAME TO audit_events;
CREATE INDEX audit_events_by_user ON audit_events (team_id, user_id, at);

-- What a click on an answer's feedback buttons needs (the agent that answered, and where
-- a Genie answer lives), kept after the outbox is cleared: never any answer data.
ALTER TABLE jobs ADD COLUMN feedback TEXT;
