-- Answers given privately (ANSWER_VISIBILITY=private) that their asker may still share in
-- the channel with the "Share in channel" button. Kept a day at most (retention).
CREATE TABLE private_answers (
    id         TEXT    PRIMARY KEY,  -- the share button's random value
    team_id    TEXT    NOT NULL,
    user_id    TEXT    NOT NULL,     -- only this person may share it
    channel_id TEXT    NOT NULL,
    thread_ts  TEXT    NOT NULL,     -- '' for a direct message outside a thread
    content    TEXT    NOT NULL,     -- JSON array of the rendered Slack messages
    created_at INTEGER NOT NULL
);
CREATE INDEX private_answers_by_age ON private_answers (created_at);
