-- Feedback on answers (the thumbs under each answer): one rating per answer and person,
-- changed by a later click of the other button. Answers are jobs; `job_id` names one.
CREATE TABLE answer_feedback (
    job_id   BIGINT  NOT NULL,
    team_id  TEXT    NOT NULL,
    user_id  TEXT    NOT NULL,
    rating   TEXT    NOT NULL CHECK (rating IN ('positive', 'negative')),
    at       BIGINT  NOT NULL,
    PRIMARY KEY (job_id, team_id, user_id)
);

-- The audit trail records feedback too.
ALTER TABLE audit_events DROP CONSTRAINT audit_events_kind_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_kind_check
    CHECK (kind IN ('link', 'unlink', 'relink_needed', 'refresh_failed', 'identity_mismatch', 'feedback'));

-- What a click on an answer's feedback buttons needs (the agent that answered, and where
-- a Genie answer lives), kept after the outbox is cleared: never any answer data.
ALTER TABLE jobs ADD COLUMN feedback TEXT;
