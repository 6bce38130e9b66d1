-- OAuth identities' refresh tokens, sealed (XChaCha20-Poly1305) by the daemon before they reach
-- the database: `sealed` is base64(nonce || ciphertext || tag), `key_id` a hash naming the key
-- (never the key). One row per identity (the admin's name); a write keeps the newest token
-- (`issued_at`, milliseconds since the epoch). Portable as is to PostgreSQL (TEXT, BIGINT for
-- the INTEGER timestamps).
CREATE TABLE identity_refresh_tokens (
    identity    TEXT PRIMARY KEY,
    client_id   TEXT NOT NULL,
    account     TEXT,
    key_id      TEXT NOT NULL,
    sealed      TEXT NOT NULL,
    issued_at   INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
