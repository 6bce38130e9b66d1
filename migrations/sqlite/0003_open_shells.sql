-- Remote sessions this node holds open, with the connector's token for deleting them from
-- another process: after a crash the next start deletes them instead of leaving them to eat
-- the admin's quota until the service's timeout.
CREATE TABLE open_shells (
    shell_id   TEXT PRIMARY KEY,
    node       TEXT NOT NULL,
    admin      TEXT NOT NULL,
    tenant     TEXT NOT NULL,
    token      TEXT NOT NULL,
    opened_at  INTEGER NOT NULL
);
CREATE INDEX open_shells_node ON open_shells(node);
