-- The queue in order: a claim walks queued jobs by id and takes the first that may run,
-- instead of sorting every due job (which grew with the backlog, and held SQLite's one
-- writer while it did).
CREATE INDEX jobs_queue ON jobs (state, id);
