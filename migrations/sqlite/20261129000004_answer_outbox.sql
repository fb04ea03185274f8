-- The outbox of an answer the agent has made but Slack has not wholly received yet:
-- the messages still to post and the CSV still to attach, kept with its question's job.
-- A retry after a Slack failure sends what is left instead of asking the agent again.
-- Cleared when the job ends.
ALTER TABLE jobs ADD COLUMN outbox TEXT;
