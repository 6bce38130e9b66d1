-- The PostgreSQL schema: the same tables, columns and indexes as the SQLite set up to its
-- 0006 (plus invocations.request_id), with PostgreSQL's types. Timestamps are milliseconds since
-- the Unix epoch (BIGINT), ids are UUID text, JSON columns are text, flags are BOOLEAN. Later
-- changes get their own numbered files here, beside their SQLite twins in ../sqlite.

CREATE TABLE batches (
    id           TEXT PRIMARY KEY,
    created_at   BIGINT NOT NULL,
    total        BIGINT NOT NULL,
    cancelled_at BIGINT,
    owner        TEXT
);
CREATE INDEX batches_owner_id ON batches(owner, id);

CREATE TABLE invocations (
    id              TEXT PRIMARY KEY,
    batch_id        TEXT REFERENCES batches(id),
    seq             BIGINT NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    request_hash    TEXT NOT NULL,
    tenant          TEXT NOT NULL,
    admin           TEXT,
    cmdlet          TEXT NOT NULL,
    parameters      TEXT NOT NULL,
    priority        TEXT NOT NULL,
    idempotent      BOOLEAN NOT NULL,
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    deadline_at     BIGINT NOT NULL,
    started_at      BIGINT,
    finished_at     BIGINT,
    session_id      TEXT,
    admin_used      TEXT,
    output          TEXT,
    errors          TEXT,
    warnings        TEXT,
    error_code      TEXT,
    error_message   TEXT,
    owner           TEXT,
    param_names     TEXT,
    params_hash     TEXT,
    redacted        BOOLEAN NOT NULL DEFAULT FALSE,
    -- The caller's X-Request-Id, when one was sent (added to the SQLite set separately).
    request_id      TEXT
);
CREATE UNIQUE INDEX invocations_owner_idempotency_key ON invocations(owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX invocations_batch_seq ON invocations(batch_id, seq);
CREATE INDEX invocations_unfinished ON invocations(status) WHERE status IN ('queued', 'running');
CREATE INDEX invocations_failed_finished ON invocations(finished_at) WHERE status = 'failed';

CREATE TABLE api_tokens (
    name          TEXT PRIMARY KEY,
    token_hash    TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL,
    tenants       TEXT NOT NULL,
    cmdlets       TEXT NOT NULL,
    constraints   TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    last_used_at  BIGINT
);

CREATE TABLE audit (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             BIGINT NOT NULL,
    token          TEXT,
    tenant         TEXT NOT NULL,
    cmdlet         TEXT NOT NULL,
    param_names    TEXT NOT NULL,
    params_hash    TEXT NOT NULL,
    status         TEXT NOT NULL,
    code           TEXT,
    duration_ms    BIGINT,
    session_id     TEXT,
    admin          TEXT,
    invocation_id  TEXT,
    batch_id       TEXT
);
CREATE INDEX audit_token ON audit(token, id);
CREATE INDEX audit_tenant ON audit(tenant, id);

CREATE TABLE meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

CREATE TABLE open_shells (
    shell_id   TEXT PRIMARY KEY,
    node       TEXT NOT NULL,
    admin      TEXT NOT NULL,
    tenant     TEXT NOT NULL,
    token      TEXT NOT NULL,
    opened_at  BIGINT NOT NULL
);
CREATE INDEX open_shells_node ON open_shells(node);

CREATE TABLE identity_refresh_tokens (
    identity    TEXT PRIMARY KEY,
    client_id   TEXT NOT NULL,
    account     TEXT,
    key_id      TEXT NOT NULL,
    sealed      TEXT NOT NULL,
    issued_at   BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
