-- The node that runs an invocation (one node on SQLite; the column keeps the statements the
-- same as on PostgreSQL, where several nodes share the queue: ../postgres/0003_cluster.sql).
ALTER TABLE invocations ADD COLUMN node TEXT;
