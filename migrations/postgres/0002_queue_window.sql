-- The scheduler's window over the queue (see ../sqlite/0008_queue_window.sql).
CREATE INDEX invocations_queued_lane ON invocations(tenant, admin, priority, id) WHERE status = 'queued';
