-- Indexes for the operators' views (GET /v1/batches, GET /v1/failures, the web console): a
-- token's batches newest first, and failed invocations by when they ended (partial: failures
-- are few next to all invocations, and the console asks for them every few seconds).
CREATE INDEX batches_owner_id ON batches(owner, id);
CREATE INDEX invocations_failed_finished ON invocations(finished_at) WHERE status = 'failed';
