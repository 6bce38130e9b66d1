-- The scheduler keeps only a window of each lane's queued invocations in memory and pages the
-- rest in as the lane drains (docs/store.md). This index serves those pages (one lane: tenant,
-- pinned admin, priority; in id order, i.e. acceptance order with UUIDv7) and the per-lane
-- counts read at start.
CREATE INDEX invocations_queued_lane ON invocations(tenant, admin, priority, id) WHERE status = 'queued';
-- Queued invocations whose secret values were redacted cannot run after a restart: a start
-- finds them here (few) and fails them, without reading the queue.
CREATE INDEX invocations_queued_redacted ON invocations(id) WHERE status = 'queued' AND redacted;
