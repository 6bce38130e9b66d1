//! The remote sessions a node holds open (`open_shells`), with the connector's token to delete
//! them from another process: after a crash the next start deletes them instead of leaving them
//! to eat the admin's quota until the service's timeout. (Leases renewed by a node heartbeat,
//! for several nodes on one database, belong here too.)

use super::db::{on, Cols};
use super::{now_ms, OpenShell, Store, StoreError};

impl Store {
    /// Remembers a remote session this node opened.
    pub async fn remember_shell(&self, shell: &OpenShell) -> Result<(), StoreError> {
        on!(&self.writer, pool => {
            sqlx::query(
                "INSERT INTO open_shells (shell_id, node, admin, tenant, token, opened_at) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (shell_id) DO UPDATE SET token = excluded.token",
            )
            .bind(&shell.shell_id)
            .bind(&shell.node)
            .bind(&shell.admin)
            .bind(&shell.tenant)
            .bind(&shell.token)
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn forget_shell(&self, shell_id: &str) -> Result<(), StoreError> {
        on!(&self.writer, pool => {
            sqlx::query("DELETE FROM open_shells WHERE shell_id = $1").bind(shell_id).execute(pool).await?;
        });
        Ok(())
    }

    /// The sessions a node still had open when it last stopped.
    pub async fn open_shells(&self, node: &str) -> Result<Vec<OpenShell>, StoreError> {
        on!(&self.reads, pool => {
            let rows = sqlx::query("SELECT shell_id, node, admin, tenant, token FROM open_shells WHERE node = $1")
                .bind(node)
                .fetch_all(pool)
                .await?;
            rows.iter().map(OpenShell::from_row).collect()
        })
    }
}

impl OpenShell {
    /// From a row of `shell_id, node, admin, tenant, token`.
    pub(super) fn from_row(r: &impl Cols) -> Result<OpenShell, StoreError> {
        Ok(OpenShell {
            shell_id: r.col("shell_id")?,
            node: r.col("node")?,
            admin: r.col("admin")?,
            tenant: r.col("tenant")?,
            token: r.col("token")?,
        })
    }
}
