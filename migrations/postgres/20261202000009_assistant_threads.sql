-- Slack assistant threads the bot was told of (assistant_thread_started): questions in
-- them show progress with assistant.threads.setStatus and title the thread.
CREATE TABLE assistant_threads (
    channel_id TEXT    NOT NULL,
    thread_ts  TEXT    NOT NULL,
    team_id    TEXT    NOT NULL,
    user_id    TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    titled     BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (channel_id, thread_ts)
);
