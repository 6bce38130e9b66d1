-- Caller authentication, ownership and audit. Same portable shape as 0001: TEXT and INTEGER,
-- millisecond timestamps, JSON as text. (PostgreSQL set: audit.id becomes
-- BIGINT GENERATED ALWAYS AS IDENTITY; everything else is unchanged.)

-- API tokens. Only the SHA-256 of a token is stored. Names are never reused: a name owns
-- invocations and batches and appears in the audit.
CREATE TABLE api_tokens (
    name          TEXT PRIMARY KEY,
    token_hash    TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL,
    tenants       TEXT NOT NULL,            -- comma-separated globs
    cmdlets       TEXT NOT NULL,            -- comma-separated globs
    constraints   TEXT NOT NULL,            -- JSON array of "Param=a|b*" strings
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    last_used_at  INTEGER
);

-- Who submitted what (the token's name; NULL for rows stored before this migration, which only
-- admins see), what the audit needs once the stored parameters are redacted, and whether they
-- were (a redacted invocation cannot be resumed after a restart: its secret is gone).
ALTER TABLE invocations ADD COLUMN owner TEXT;
ALTER TABLE invocations ADD COLUMN param_names TEXT;
ALTER TABLE invocations ADD COLUMN params_hash TEXT;
ALTER TABLE invocations ADD COLUMN redacted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN owner TEXT;

-- Idempotency keys are scoped per owner: two callers cannot collide, nor probe each other's keys.
DROP INDEX invocations_idempotency_key;
CREATE UNIQUE INDEX invocations_owner_idempotency_key ON invocations(owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- One row per invocation that ended (appended in the same transaction as its final status) and
-- per request refused by authorization. Values are never stored: parameter names, and a salted
-- SHA-256 of the canonical redacted values.
CREATE TABLE audit (
    id             INTEGER PRIMARY KEY,
    at             INTEGER NOT NULL,
    token          TEXT,
    tenant         TEXT NOT NULL,
    cmdlet         TEXT NOT NULL,
    param_names    TEXT NOT NULL,           -- JSON array
    params_hash    TEXT NOT NULL,
    status         TEXT NOT NULL,           -- succeeded, failed, refused
    code           TEXT,
    duration_ms    INTEGER,
    session_id     TEXT,
    admin          TEXT,
    invocation_id  TEXT,
    batch_id       TEXT
);
CREATE INDEX audit_token ON audit(token, id);
CREATE INDEX audit_tenant ON audit(tenant, id);

-- Per-database values, such as the audit's random hash salt.
CREATE TABLE meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
