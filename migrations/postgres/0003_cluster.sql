-- Several nodes on one database (docs/cluster.md). Every time is the database's clock (now()),
-- never a node's, so nodes whose clocks disagree still agree on who is alive.

-- Who is alive: each node beats every few seconds; one silent for longer than the dead-after
-- time is rescued by the others.
CREATE TABLE nodes (
    node_id      TEXT PRIMARY KEY,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One lease per remote session a node holds (or is opening). A lease counts against the
-- admin's and the tenant's cap while expires_at is in the future; its node's heartbeat renews
-- it, so a dead node's leases stop counting by themselves. `reaping`: taken over from a dead
-- node by a rescuer that is deleting the shells behind it (not renewed; counts until then).
CREATE TABLE session_leases (
    lease_id   TEXT PRIMARY KEY,
    node_id    TEXT NOT NULL,
    admin      TEXT NOT NULL,
    tenant     TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    reaping    BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX session_leases_admin ON session_leases(admin, expires_at);
CREATE INDEX session_leases_tenant ON session_leases(tenant, expires_at);
CREATE INDEX session_leases_node ON session_leases(node_id);

-- A quota cool-down one node learned (someone outside holds shells): every node lowers the
-- effective cap of the scope ('admin:NAME' or 'tenant:DOMAIN') to `cap` sessions in all until then.
CREATE TABLE cooldowns (
    scope    TEXT PRIMARY KEY,
    cap      INTEGER NOT NULL,
    until_at TIMESTAMPTZ NOT NULL
);

-- A node that was refused a slot says so: nodes holding idle sessions of that admin give
-- them back instead of keeping them warm.
CREATE TABLE lease_demand (
    admin    TEXT NOT NULL,
    node_id  TEXT NOT NULL,
    until_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (admin, node_id)
);

-- The node an invocation belongs to: NULL while any node may take it, the node that paged it
-- in (queued) or runs it (running). A dead node's are handed back or rescued.
ALTER TABLE invocations ADD COLUMN node TEXT;
CREATE INDEX invocations_running_node ON invocations(node) WHERE status = 'running';
CREATE INDEX invocations_queued_node ON invocations(node) WHERE status = 'queued';
