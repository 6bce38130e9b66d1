//! What several nodes on one PostgreSQL share (migrations/postgres/0003_cluster.sql, policy in
//! `broker::cluster`): node heartbeats, a lease per remote session taken under locks in a fixed
//! order, quota cool-downs, slot demand, the queue's claims and the rescue of a dead node.
//!
//! Every time is the database's `now()`. Locks are transaction-scoped (row locks,
//! `pg_advisory_xact_lock`), never session-level, and every transaction here sets its own
//! idle timeout ([`begin`]), so the statements work behind PgBouncer in transaction mode (only
//! LISTEN needs a session: [`Wakeups`]). SQLite is one node: these calls answer
//! [`StoreError::NeedsPostgres`].

use super::db::{Backend, Cols};
use super::queue::{record, COLUMNS};
use super::{InvocationRecord, LaneCount, OpenShell, Store, StoreError};
use sqlx::{PgPool, Postgres, QueryBuilder, Transaction};
use std::time::Duration;
use uuid::Uuid;

/// The answer to a request for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Granted,
    /// Both scopes' caps are counted over every node; `others_*` are the live leases of the
    /// other nodes (and those being reaped), what this node's effective cap must leave them.
    Refused {
        others_admin: u32,
        others_tenant: u32,
    },
}

/// Live leases held by nodes other than the caller, per admin and tenant pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLeases {
    pub admin: String,
    pub tenant: String,
    pub n: u32,
}

/// A cool-down one node learned, in force for every node.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedCooldown {
    /// `admin:NAME` or `tenant:DOMAIN`.
    pub scope: String,
    pub cap: u32,
    pub remaining: Duration,
}

/// What the other nodes hold and know, read at every heartbeat.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub peers: Vec<PeerLeases>,
    pub cooldowns: Vec<SharedCooldown>,
    /// Admins other nodes were refused a slot of, recently.
    pub demand: Vec<String>,
    pub live_nodes: u32,
}

/// What a rescuer took over from dead nodes, to settle outside the transaction.
#[derive(Debug, Default)]
pub struct Rescue {
    pub dead: Vec<String>,
    /// Their remembered remote sessions (now filed under the rescuer), to delete.
    pub shells: Vec<OpenShell>,
    /// Their live leases (now the rescuer's, `reaping`): released once the shells are gone.
    pub leases: Vec<(String, String, String)>,
    /// Their running invocations (now the rescuer's): reads run again, writes end `node_lost`.
    pub running: Vec<InvocationRecord>,
}

const NOTIFY: &str = "psbroker";

/// Begins a transaction of the cluster's. Its locks are waited for by other nodes (the scope
/// locks of admission, the rows a rescuer takes over), so a node that hangs inside it (stopped,
/// cut off) must not keep them: PostgreSQL ends the transaction once it idles for 10 s.
/// `SET LOCAL` lasts exactly the transaction, so it holds behind a pooler in transaction mode
/// too, where a session setting would stay on a server connection that other clients then use.
/// Sent with the `BEGIN`, in one round trip.
async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, StoreError> {
    Ok(pool.begin_with("BEGIN; SET LOCAL idle_in_transaction_session_timeout = '10s'").await?)
}

/// Hands a node's queued, unredacted claims back to every node.
const UNCLAIM: &str = "UPDATE invocations SET node = NULL WHERE status = 'queued' AND node = $1 AND NOT redacted";

impl Store {
    fn postgres(&self) -> Result<&PgPool, StoreError> {
        match &self.writer {
            Backend::Postgres(pool) => Ok(pool),
            Backend::Sqlite(_) => Err(StoreError::NeedsPostgres),
        }
    }

    /// The channel this database's nodes notify each other on (per schema, so schemas that
    /// share a database do not wake each other).
    pub async fn notify_channel(&self) -> Result<String, StoreError> {
        let schema: String = sqlx::query_scalar("SELECT current_schema()::text").fetch_one(self.postgres()?).await?;
        Ok(format!("{NOTIFY}:{schema}"))
    }

    /// Beats for `node` and renews its leases to `ttl` from now. Returns the leases renewed.
    pub async fn beat(&self, node: &str, ttl: Duration) -> Result<Vec<String>, StoreError> {
        let pool = self.postgres()?;
        let mut tx = begin(pool).await?;
        sqlx::query("INSERT INTO nodes (node_id) VALUES ($1) ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = now()")
            .bind(node)
            .execute(&mut *tx)
            .await?;
        let renewed = sqlx::query_scalar(
            "UPDATE session_leases SET expires_at = now() + make_interval(secs => $2) \
             WHERE node_id = $1 AND NOT reaping AND expires_at > now() RETURNING lease_id",
        )
        .bind(node)
        .bind(ttl.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(renewed)
    }

    /// Takes a slot for one remote session of `admin` on `tenant` if, counted over every node,
    /// both are under their caps (lowered by a shared cool-down). The two scope locks are taken
    /// in one fixed order (the admin's, then the tenant's) and held to the commit, so two
    /// nodes can never both take the last slot and never deadlock.
    #[allow(clippy::too_many_arguments)]
    pub async fn acquire_lease(
        &self,
        lease: Uuid,
        node: &str,
        admin: &str,
        tenant: &str,
        admin_cap: u32,
        tenant_cap: u32,
        ttl: Duration,
    ) -> Result<Admission, StoreError> {
        let pool = self.postgres()?;
        let mut tx = begin(pool).await?;
        for key in [format!("admin:{admin}"), format!("tenant:{tenant}")] {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || ':' || $1, 0))")
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query(
            "SELECT \
               (SELECT count(*) FROM session_leases WHERE admin = $1 AND expires_at > now()) AS admin_n, \
               (SELECT count(*) FROM session_leases WHERE admin = $1 AND expires_at > now() \
                  AND (node_id <> $3 OR reaping)) AS admin_others, \
               (SELECT count(*) FROM session_leases WHERE tenant = $2 AND expires_at > now()) AS tenant_n, \
               (SELECT count(*) FROM session_leases WHERE tenant = $2 AND expires_at > now() \
                  AND (node_id <> $3 OR reaping)) AS tenant_others, \
               (SELECT cap FROM cooldowns WHERE scope = 'admin:' || $1 AND until_at > now()) AS admin_cd, \
               (SELECT cap FROM cooldowns WHERE scope = 'tenant:' || $2 AND until_at > now()) AS tenant_cd",
        )
        .bind(admin)
        .bind(tenant)
        .bind(node)
        .fetch_one(&mut *tx)
        .await?;
        let n = |name: &str| row.col::<i64>(name).map(|v| v.max(0) as u32);
        let cd = |name: &str| row.col::<Option<i32>>(name).map(|v| v.map(|c| c.max(0) as u32));
        let admin_limit = cd("admin_cd")?.map_or(admin_cap, |c| c.min(admin_cap));
        let tenant_limit = cd("tenant_cd")?.map_or(tenant_cap, |c| c.min(tenant_cap));
        if n("admin_n")? >= admin_limit || n("tenant_n")? >= tenant_limit {
            tx.rollback().await?;
            return Ok(Admission::Refused { others_admin: n("admin_others")?, others_tenant: n("tenant_others")? });
        }
        sqlx::query(
            "INSERT INTO session_leases (lease_id, node_id, admin, tenant, expires_at) \
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        )
        .bind(lease.to_string())
        .bind(node)
        .bind(admin)
        .bind(tenant)
        .bind(ttl.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Admission::Granted)
    }

    /// Gives slots back and wakes the nodes waiting for one.
    pub async fn release_leases(&self, leases: &[String]) -> Result<(), StoreError> {
        let pool = self.postgres()?;
        let mut tx = begin(pool).await?;
        sqlx::query("DELETE FROM session_leases WHERE lease_id = ANY($1)").bind(leases).execute(&mut *tx).await?;
        notify(&mut tx, "lease").await?;
        tx.commit().await?;
        Ok(())
    }

    /// Says that `node` waits for a slot of `admin` (for `ttl`): nodes holding idle sessions of
    /// it give them back.
    pub async fn record_demand(&self, admin: &str, node: &str, ttl: Duration) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO lease_demand (admin, node_id, until_at) VALUES ($1, $2, now() + make_interval(secs => $3)) \
             ON CONFLICT (admin, node_id) DO UPDATE SET until_at = excluded.until_at",
        )
        .bind(admin)
        .bind(node)
        .bind(ttl.as_secs_f64())
        .execute(self.postgres()?)
        .await?;
        Ok(())
    }

    /// Shares a quota cool-down: `scope` ('admin:NAME' or 'tenant:DOMAIN') may hold no more
    /// sessions over all nodes than it holds now (less the lease whose open was refused) for
    /// `cooldown`. A longer or lower one already in force stays.
    pub async fn share_cooldown(&self, scope: &str, refused: Uuid, cooldown: Duration) -> Result<(), StoreError> {
        let (column, name) = scope.split_once(':').unwrap_or(("admin", scope));
        let column = if column == "tenant" { "tenant" } else { "admin" };
        sqlx::query(&format!(
            "INSERT INTO cooldowns (scope, cap, until_at) \
             SELECT $1, count(*), now() + make_interval(secs => $4) FROM session_leases \
               WHERE {column} = $2 AND expires_at > now() AND lease_id <> $3 \
             ON CONFLICT (scope) DO UPDATE SET \
               cap = CASE WHEN cooldowns.until_at > now() THEN least(cooldowns.cap, excluded.cap) ELSE excluded.cap END, \
               until_at = greatest(cooldowns.until_at, excluded.until_at)"
        ))
        .bind(scope)
        .bind(name)
        .bind(refused.to_string())
        .bind(cooldown.as_secs_f64())
        .execute(self.postgres()?)
        .await?;
        Ok(())
    }

    /// What the other nodes hold, the cool-downs in force, recent demand, and how many nodes
    /// are alive (beat within `dead_after`).
    pub async fn cluster_view(&self, node: &str, dead_after: Duration) -> Result<ClusterView, StoreError> {
        let pool = self.postgres()?;
        let peers = sqlx::query(
            "SELECT admin, tenant, count(*) AS n FROM session_leases \
             WHERE expires_at > now() AND (node_id <> $1 OR reaping) GROUP BY admin, tenant",
        )
        .bind(node)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok(PeerLeases { admin: r.col("admin")?, tenant: r.col("tenant")?, n: r.col::<i64>("n")? as u32 }))
        .collect::<Result<_, sqlx::Error>>()?;
        let cooldowns = sqlx::query(
            "SELECT scope, cap, extract(epoch FROM until_at - now())::float8 AS remaining FROM cooldowns \
             WHERE until_at > now()",
        )
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok(SharedCooldown {
                scope: r.col("scope")?,
                cap: r.col::<i32>("cap")?.max(0) as u32,
                remaining: Duration::from_secs_f64(r.col::<f64>("remaining")?.max(0.0)),
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
        let demand = sqlx::query_scalar(
            "SELECT DISTINCT admin FROM lease_demand WHERE node_id <> $1 AND until_at > now() ORDER BY admin",
        )
        .bind(node)
        .fetch_all(pool)
        .await?;
        let live_nodes: i64 =
            sqlx::query_scalar("SELECT count(*) FROM nodes WHERE heartbeat_at > now() - make_interval(secs => $1)")
                .bind(dead_after.as_secs_f64())
                .fetch_one(pool)
                .await?;
        Ok(ClusterView { peers, cooldowns, demand, live_nodes: live_nodes as u32 })
    }

    /// How many invocations wait in each lane that `node` may take: unclaimed, or claimed by it.
    pub async fn census(&self, node: &str) -> Result<Vec<LaneCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant, admin, priority, count(*) AS n FROM invocations \
             WHERE status = 'queued' AND (node IS NULL OR node = $1) GROUP BY tenant, admin, priority",
        )
        .bind(node)
        .fetch_all(self.postgres()?)
        .await?;
        rows.iter().map(LaneCount::from_row).collect()
    }

    /// Claims for `node` up to `limit` queued invocations of one lane that no other node holds,
    /// oldest first, but for `exclude` (in memory already). Rows another node is claiming right
    /// now are skipped, not waited for.
    pub async fn claim_page(
        &self,
        node: &str,
        tenant: &str,
        admin: Option<&str>,
        priority: &str,
        exclude: &[Uuid],
        limit: i64,
    ) -> Result<Vec<InvocationRecord>, StoreError> {
        let mut qb = QueryBuilder::new("UPDATE invocations SET node = ");
        qb.push_bind(node.to_string());
        qb.push(" WHERE id IN (SELECT id FROM invocations WHERE status = 'queued' AND tenant = ");
        qb.push_bind(tenant.to_string());
        match admin {
            Some(a) => qb.push(" AND admin = ").push_bind(a.to_string()),
            None => qb.push(" AND admin IS NULL"),
        };
        qb.push(" AND priority = ").push_bind(priority.to_string());
        qb.push(" AND (node IS NULL OR node = ").push_bind(node.to_string()).push(")");
        if !exclude.is_empty() {
            qb.push(" AND NOT (id = ANY(").push_bind(exclude.iter().map(Uuid::to_string).collect::<Vec<_>>());
            qb.push("))");
        }
        qb.push(" ORDER BY id LIMIT ").push_bind(limit);
        qb.push(format!(" FOR UPDATE SKIP LOCKED) RETURNING {COLUMNS}"));
        let rows = qb.build().fetch_all(self.postgres()?).await?;
        let mut page = rows.iter().map(record).collect::<Result<Vec<_>, _>>()?;
        page.sort_by_key(|r| r.accepted.id);
        Ok(page)
    }

    /// Hands `node`'s queued claims back to every node (a draining node), and wakes them.
    /// Redacted work stays: only this node holds its secret values.
    pub async fn unclaim_queued(&self, node: &str) -> Result<u64, StoreError> {
        let mut tx = begin(self.postgres()?).await?;
        let n = sqlx::query(UNCLAIM).bind(node).execute(&mut *tx).await?.rows_affected();
        notify(&mut tx, "queued").await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Wakes every node to look at the queue (after work was stored for any node to take).
    pub async fn notify_queued(&self) -> Result<(), StoreError> {
        let mut tx = begin(self.postgres()?).await?;
        notify(&mut tx, "queued").await?;
        tx.commit().await?;
        Ok(())
    }

    /// A node's leases and heartbeat go (it stopped cleanly, or starts again after its shells
    /// were deleted).
    pub async fn leave(&self, node: &str) -> Result<(), StoreError> {
        let mut tx = begin(self.postgres()?).await?;
        // What the node claimed after its drain handed its queue over (a page read meanwhile, a
        // retry put back) goes to the others too: with its row gone, no rescue would find it.
        sqlx::query(UNCLAIM).bind(node).execute(&mut *tx).await?;
        notify(&mut tx, "queued").await?;
        sqlx::query("DELETE FROM session_leases WHERE node_id = $1").bind(node).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM lease_demand WHERE node_id = $1").bind(node).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM nodes WHERE node_id = $1").bind(node).execute(&mut *tx).await?;
        notify(&mut tx, "lease").await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes over every node silent for longer than `dead_after`, in one transaction (each dead
    /// node is locked, so one rescuer gets it): its live leases become `reaping` leases of
    /// `rescuer` for `reap_ttl` (so the slots stay counted while its shells are deleted), its
    /// remembered shells and running invocations are filed under `rescuer`, and its queued
    /// claims go back to every node.
    pub async fn rescue_dead(
        &self,
        rescuer: &str,
        dead_after: Duration,
        reap_ttl: Duration,
    ) -> Result<Rescue, StoreError> {
        let mut tx = begin(self.postgres()?).await?;
        let dead: Vec<String> = sqlx::query_scalar(
            "SELECT node_id FROM nodes WHERE heartbeat_at < now() - make_interval(secs => $1) AND node_id <> $2 \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(dead_after.as_secs_f64())
        .bind(rescuer)
        .fetch_all(&mut *tx)
        .await?;
        if dead.is_empty() {
            return Ok(Rescue::default());
        }
        let leases = sqlx::query(
            "UPDATE session_leases SET node_id = $1, reaping = TRUE, expires_at = now() + make_interval(secs => $3) \
             WHERE node_id = ANY($2) AND expires_at > now() RETURNING lease_id, admin, tenant",
        )
        .bind(rescuer)
        .bind(&dead)
        .bind(reap_ttl.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.col("lease_id")?, r.col("admin")?, r.col("tenant")?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        sqlx::query("DELETE FROM session_leases WHERE node_id = ANY($1)").bind(&dead).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM lease_demand WHERE node_id = ANY($1)").bind(&dead).execute(&mut *tx).await?;
        let shells = sqlx::query(
            "UPDATE open_shells SET node = $1 WHERE node = ANY($2) RETURNING shell_id, node, admin, tenant, token",
        )
        .bind(rescuer)
        .bind(&dead)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(OpenShell::from_row)
        .collect::<Result<Vec<_>, _>>()?;
        // Redacted queued work dies with the node that held its secrets; the rest is anyone's.
        sqlx::query("UPDATE invocations SET node = NULL WHERE status = 'queued' AND node = ANY($1) AND NOT redacted")
            .bind(&dead)
            .execute(&mut *tx)
            .await?;
        let running = sqlx::query(&format!(
            "UPDATE invocations SET node = $1 WHERE node = ANY($2) AND (status = 'running' \
             OR (status = 'queued' AND redacted)) RETURNING {COLUMNS}"
        ))
        .bind(rescuer)
        .bind(&dead)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(record)
        .collect::<Result<Vec<_>, _>>()?;
        sqlx::query("DELETE FROM nodes WHERE node_id = ANY($1)").bind(&dead).execute(&mut *tx).await?;
        notify(&mut tx, "queued").await?;
        tx.commit().await?;
        Ok(Rescue { dead, shells, leases, running })
    }

    /// Puts an invocation a rescuer took over back in the queue for any node.
    pub async fn requeue_rescued(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE invocations SET status = 'queued', session_id = NULL, node = NULL \
             WHERE id = $1 AND status = 'running'",
        )
        .bind(id.to_string())
        .execute(self.postgres()?)
        .await?;
        Ok(())
    }
}

/// Notifies this schema's nodes (delivered when the transaction commits, so never before the
/// change it announces is visible).
async fn notify(tx: &mut sqlx::PgConnection, what: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1 || ':' || current_schema(), $2)")
        .bind(NOTIFY)
        .bind(what)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Notifications from the other nodes: LISTEN on a connection of its own (sqlx reconnects it;
/// what was sent meanwhile is lost, which is why the nodes also look on every beat).
pub struct Wakeups(sqlx::postgres::PgListener);

impl Store {
    /// Listens on a connection taken from the store's pool, or on one to PostgreSQL's own
    /// address when the pool goes through a pooler in transaction mode (there a connection
    /// lasts one transaction: the notifications would reach whichever client holds it next).
    pub async fn wakeups(&self) -> Result<Wakeups, StoreError> {
        let mut listener = match self.direct.as_deref() {
            Some(url) => sqlx::postgres::PgListener::connect(url).await?,
            None => sqlx::postgres::PgListener::connect_with(self.postgres()?).await?,
        };
        listener.listen(&self.notify_channel().await?).await?;
        Ok(Wakeups(listener))
    }
}

impl Wakeups {
    /// The next notification's payload (`queued`, `lease`); `None` when the connection was
    /// lost and notifications may have been missed.
    pub async fn next(&mut self) -> Result<Option<String>, StoreError> {
        Ok(self.0.try_recv().await?.map(|n| n.payload().to_string()))
    }
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
