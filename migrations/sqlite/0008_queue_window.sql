-- The scheduler keeps only a window of each lane's queued invocations in memory and pages the
-- rest in as the lane drains (docs/store.md). `paged_by` is the epoch of the daemon process that
-- took a row into its memory (a random id per start): a page reads queued rows no running
-- process has taken, whatever order their transactions committed in, and after a restart every
-- row is eligible again without rewriting a million of them. The index serves the pages (one
-- lane: tenant, pinned admin, priority; in id order, i.e. acceptance order with UUIDv7) and the
-- per-lane counts read at start.
ALTER TABLE invocations ADD COLUMN paged_by TEXT;
CREATE INDEX invocations_queued_lane ON invocations(tenant, admin, priority, id) WHERE status = 'queued';
