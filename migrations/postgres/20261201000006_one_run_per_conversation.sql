-- One run at a time per conversation: a question's job carries the key of the
-- conversation it belongs to (Slack team, person, channel and answer thread), and a job
-- is claimed only when no earlier job with the same key is queued or running. So a
-- follow-up waits for the answer before it, and a Genie conversation or an ADK session
-- never has two runs at once. Other jobs (sharing, App Home) have no key.
ALTER TABLE jobs ADD COLUMN conversation_key TEXT;
CREATE INDEX jobs_by_conversation ON jobs (conversation_key, state);
