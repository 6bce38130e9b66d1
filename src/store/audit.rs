//! The audit log (one record per invocation that ended and per request refused by
//! authorization) and the per-database values it needs (its hash salt, in `meta`).

use super::db::{on, uuid_text, Cols, Conn, Pool};
use super::{Store, StoreError};
use serde::Serialize;
use serde_json::Value as Json;
use sqlx::QueryBuilder;
use std::sync::Arc;
use uuid::Uuid;

/// One audit record: who ran what where, and how it ended. Parameter values are not in it —
/// only their names and a salted hash of the canonical, redacted values.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub at: i64,
    pub token: Option<String>,
    pub tenant: String,
    pub cmdlet: String,
    pub param_names: Vec<String>,
    pub params_hash: String,
    /// `succeeded`, `failed` (the invocation's status) or `refused` (by authorization).
    pub status: String,
    pub code: Option<String>,
    /// The run time of the last attempt, when it started.
    pub duration_ms: Option<i64>,
    pub session_id: Option<String>,
    pub admin: Option<String>,
    pub invocation_id: Option<Uuid>,
    pub batch_id: Option<Uuid>,
}

#[cfg(test)]
impl AuditEntry {
    /// A refusal of `cmdlet` by `token` at `at`, for the store's tests.
    pub(crate) fn refused_for_test(at: i64, token: &str, cmdlet: &str) -> AuditEntry {
        AuditEntry {
            at,
            token: Some(token.into()),
            tenant: "t.example".into(),
            cmdlet: cmdlet.into(),
            param_names: vec!["Identity".into()],
            params_hash: "h".into(),
            status: "refused".into(),
            code: Some("cmdlet_denied".into()),
            duration_ms: None,
            session_id: None,
            admin: None,
            invocation_id: None,
            batch_id: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// Filters of `GET /v1/audit`; every one is optional. Newest first; `before_id` continues a
/// listing after its last record.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub tenant: Option<String>,
    pub token: Option<String>,
    pub cmdlet: Option<String>,
    /// A status (`succeeded`, `failed`, `refused`) or an error code.
    pub outcome: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub before_id: Option<i64>,
    pub limit: i64,
}

const SALT_KEY: &str = "audit_salt";

/// Reads the database's salt, creating it (32 random bytes, hex) on first use.
pub(super) async fn load_salt(writer: &Pool) -> Result<Arc<str>, StoreError> {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let fresh: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let salt: String = on!(writer, pool => {
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(SALT_KEY)
            .bind(fresh)
            .execute(pool)
            .await?;
        sqlx::query("SELECT value FROM meta WHERE key = $1").bind(SALT_KEY).fetch_one(pool).await?.col("value")?
    });
    Ok(salt.into())
}

/// The head of an audit record's INSERT, its values in [`AuditEntry`]'s order.
pub(super) const AUDIT_INSERT: &str = "INSERT INTO audit (at, token, tenant, cmdlet, param_names, params_hash, \
     status, code, duration_ms, session_id, admin, invocation_id, batch_id) ";

/// The audit record of an ended invocation, from its row (the columns of [`AUDIT_INSERT`]).
pub(super) const AUDIT_OF_ENDED: &str = "SELECT finished_at, owner, tenant, cmdlet, COALESCE(param_names, '[]'), \
     COALESCE(params_hash, ''), status, error_code, finished_at - started_at, session_id, admin_used, id, batch_id \
     FROM invocations";

/// Appends the audit records of invocations that just ended (inside their result's transaction).
pub(super) async fn audit_finished(conn: &mut Conn<'_>, ids: &[Uuid]) -> Result<(), StoreError> {
    on!(conn, c => {
        let mut qb = QueryBuilder::new(format!("{AUDIT_INSERT}{AUDIT_OF_ENDED} WHERE id IN ("));
        let mut list = qb.separated(", ");
        for id in ids {
            list.push_bind(id.to_string());
        }
        list.push_unseparated(")");
        qb.build().execute(&mut **c).await?;
    });
    Ok(())
}

/// Appends audit records (one multi-row statement).
pub(super) async fn insert_audit<'a>(
    conn: &mut Conn<'_>,
    entries: impl IntoIterator<Item = &'a AuditEntry>,
) -> Result<(), StoreError> {
    on!(conn, c => {
        let mut qb = QueryBuilder::new(AUDIT_INSERT);
        qb.push_values(entries, |mut b, e| {
            b.push_bind(e.at)
                .push_bind(e.token.clone())
                .push_bind(e.tenant.clone())
                .push_bind(e.cmdlet.clone())
                .push_bind(Json::from(e.param_names.clone()).to_string())
                .push_bind(e.params_hash.clone())
                .push_bind(e.status.clone())
                .push_bind(e.code.clone())
                .push_bind(e.duration_ms)
                .push_bind(e.session_id.clone())
                .push_bind(e.admin.clone())
                .push_bind(e.invocation_id.map(|u| u.to_string()))
                .push_bind(e.batch_id.map(|u| u.to_string()));
        });
        qb.build().execute(&mut **c).await?;
    });
    Ok(())
}

fn audit_row(row: &impl Cols) -> Result<AuditRecord, StoreError> {
    let names: String = row.col("param_names")?;
    let uuid = |col: &str| -> Result<Option<Uuid>, StoreError> {
        let text: Option<String> = row.col(col)?;
        Ok(text.and_then(|t| uuid_text(&t).ok()))
    };
    Ok(AuditRecord {
        id: row.col("id")?,
        entry: AuditEntry {
            at: row.col("at")?,
            token: row.col("token")?,
            tenant: row.col("tenant")?,
            cmdlet: row.col("cmdlet")?,
            param_names: serde_json::from_str(&names).unwrap_or_default(),
            params_hash: row.col("params_hash")?,
            status: row.col("status")?,
            code: row.col("code")?,
            duration_ms: row.col("duration_ms")?,
            session_id: row.col("session_id")?,
            admin: row.col("admin")?,
            invocation_id: uuid("invocation_id")?,
            batch_id: uuid("batch_id")?,
        },
    })
}

impl Store {
    /// One page of the audit, newest first.
    pub async fn audit_page(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        on!(&self.reads, pool => {
            let mut qb = QueryBuilder::new("SELECT * FROM audit WHERE 1 = 1");
            if let Some(t) = &q.tenant {
                qb.push(" AND tenant = ").push_bind(t.to_lowercase());
            }
            if let Some(t) = &q.token {
                qb.push(" AND token = ").push_bind(t.clone());
            }
            if let Some(c) = &q.cmdlet {
                qb.push(" AND LOWER(cmdlet) = ").push_bind(c.to_lowercase());
            }
            if let Some(o) = &q.outcome {
                qb.push(" AND (status = ").push_bind(o.clone()).push(" OR code = ").push_bind(o.clone()).push(")");
            }
            if let Some(s) = q.since_ms {
                qb.push(" AND at >= ").push_bind(s);
            }
            if let Some(u) = q.until_ms {
                qb.push(" AND at < ").push_bind(u);
            }
            if let Some(b) = q.before_id {
                qb.push(" AND id < ").push_bind(b);
            }
            qb.push(" ORDER BY id DESC LIMIT ").push_bind(q.limit);
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter().map(audit_row).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn audit_pages_newest_first_with_filters() {
        for store in crate::store::tests::backends().await {
            for i in 0..5 {
                let token = if i % 2 == 0 { "a" } else { "b" };
                store.audit(&AuditEntry::refused_for_test(1000 + i, token, "Get-User")).await.unwrap();
            }
            let all = store.audit_page(&AuditQuery { limit: 10, ..Default::default() }).await.unwrap();
            assert_eq!(all.iter().map(|r| r.entry.at).collect::<Vec<_>>(), vec![1004, 1003, 1002, 1001, 1000]);
            let a = AuditQuery { token: Some("a".into()), limit: 2, ..Default::default() };
            let page1 = store.audit_page(&a).await.unwrap();
            assert_eq!(page1.iter().map(|r| r.entry.at).collect::<Vec<_>>(), vec![1004, 1002]);
            let page2 = store.audit_page(&AuditQuery { before_id: Some(page1[1].id), ..a }).await.unwrap();
            assert_eq!(page2.iter().map(|r| r.entry.at).collect::<Vec<_>>(), vec![1000]);
            let q = AuditQuery {
                cmdlet: Some("get-user".into()),
                outcome: Some("cmdlet_denied".into()),
                since_ms: Some(1003),
                limit: 10,
                ..Default::default()
            };
            assert_eq!(store.audit_page(&q).await.unwrap().len(), 2);
        }
    }
}
