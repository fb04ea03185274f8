-- A conversation belongs to the person who had it: two people in one Slack thread each
-- continue their own (a Genie conversation is its owner's; one person's earlier answers
-- must not feed another person's agent run). Short-lived data: rebuilt, not migrated.
DROP TABLE conversations;
CREATE TABLE conversations (
    team_id    TEXT    NOT NULL,
    user_id    TEXT    NOT NULL,
    channel_id TEXT    NOT NULL,
    thread_ts  TEXT    NOT NULL,     -- '' for a direct message outside a thread
    agent      TEXT    NOT NULL,     -- whose state this is: genie, llm, http, adk
    state      TEXT    NOT NULL,     -- JSON kept by the agent; never a token
    updated_at INTEGER  NOT NULL,
    PRIMARY KEY (team_id, user_id, channel_id, thread_ts)
);
CREATE INDEX conversations_by_age ON conversations (updated_at);
