-- Durable queue and results. Timestamps are milliseconds since the Unix epoch (BIGINT in the
-- PostgreSQL set), ids are UUID text, JSON columns are text: the same shape ports to PostgreSQL.

CREATE TABLE batches (
    id           TEXT PRIMARY KEY,
    created_at   INTEGER NOT NULL,
    total        INTEGER NOT NULL,
    cancelled_at INTEGER
);

CREATE TABLE invocations (
    id              TEXT PRIMARY KEY,
    batch_id        TEXT REFERENCES batches(id),
    seq             INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    request_hash    TEXT NOT NULL,
    tenant          TEXT NOT NULL,
    admin           TEXT,
    cmdlet          TEXT NOT NULL,
    parameters      TEXT NOT NULL,
    priority        TEXT NOT NULL,
    idempotent      INTEGER NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    deadline_at     INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER,
    session_id      TEXT,
    admin_used      TEXT,
    output          TEXT,
    errors          TEXT,
    warnings        TEXT,
    error_code      TEXT,
    error_message   TEXT
);

CREATE UNIQUE INDEX invocations_idempotency_key ON invocations(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX invocations_batch_seq ON invocations(batch_id, seq);
CREATE INDEX invocations_unfinished ON invocations(status) WHERE status IN ('queued', 'running');
