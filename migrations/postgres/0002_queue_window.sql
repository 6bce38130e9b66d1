-- The scheduler's window over the queue (see ../sqlite/0008_queue_window.sql).
CREATE INDEX invocations_queued_lane ON invocations(tenant, admin, priority, id) WHERE status = 'queued';
-- Queued invocations whose secret values were redacted cannot run after a restart: a start
-- finds them here (few) and fails them, without reading the queue.
CREATE INDEX invocations_queued_redacted ON invocations(id) WHERE status = 'queued' AND redacted;
