-- The W3C traceparent of the span that acknowledged a job's delivery, so the worker that
-- runs it (on any replica, after any wait) continues that trace. NULL when traces are
-- not exported.
ALTER TABLE jobs ADD COLUMN traceparent TEXT;
