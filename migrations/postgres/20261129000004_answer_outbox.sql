-- The outbox of a question's job: its placeholder message, then the answer the agent
-- made (the messages to post and the CSV to attach), written once; outbox_sent counts
-- the messages Slack has taken. A retry after a Slack failure sends what is left instead
-- of asking the agent again. Cleared when the job ends.
ALTER TABLE jobs ADD COLUMN outbox TEXT;
ALTER TABLE jobs ADD COLUMN outbox_sent BIGINT NOT NULL DEFAULT 0;
