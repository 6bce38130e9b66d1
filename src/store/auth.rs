//! API tokens, the audit log and per-database values (the audit's hash salt).

use super::{now_ms, Store, StoreError};
use serde::Serialize;
use serde_json::Value as Json;
use sqlx::{QueryBuilder, Row, SqlitePool};
use std::sync::Arc;
use uuid::Uuid;

/// A stored token: never the token itself, only its SHA-256.
#[derive(Debug, Clone, Serialize)]
pub struct TokenRow {
    pub name: String,
    #[serde(skip)]
    pub token_hash: String,
    pub role: String,
    pub tenants: String,
    pub cmdlets: String,
    pub constraints: Vec<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

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
pub(super) async fn load_salt(writer: &SqlitePool) -> Result<Arc<str>, StoreError> {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let fresh: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
        .bind(SALT_KEY)
        .bind(fresh)
        .execute(writer)
        .await?;
    let salt: String =
        sqlx::query("SELECT value FROM meta WHERE key = ?").bind(SALT_KEY).fetch_one(writer).await?.try_get("value")?;
    Ok(salt.into())
}

/// Appends the audit records of invocations that just ended (inside their result's transaction).
pub(super) async fn audit_finished(tx: &mut sqlx::SqliteConnection, ids: &[Uuid]) -> Result<(), StoreError> {
    let mut qb = QueryBuilder::new(
        "INSERT INTO audit (at, token, tenant, cmdlet, param_names, params_hash, status, code, duration_ms, \
         session_id, admin, invocation_id, batch_id) \
         SELECT finished_at, owner, tenant, cmdlet, COALESCE(param_names, '[]'), COALESCE(params_hash, ''), status, \
         error_code, finished_at - started_at, session_id, admin_used, id, batch_id FROM invocations WHERE id IN (",
    );
    let mut list = qb.separated(", ");
    for id in ids {
        list.push_bind(id.to_string());
    }
    list.push_unseparated(")");
    qb.build().execute(&mut *tx).await?;
    Ok(())
}

/// Appends audit records (one multi-row statement).
pub(super) async fn insert_audit<'a>(
    conn: &mut sqlx::SqliteConnection,
    entries: impl IntoIterator<Item = &'a AuditEntry>,
) -> Result<(), StoreError> {
    let mut qb = QueryBuilder::new(
        "INSERT INTO audit (at, token, tenant, cmdlet, param_names, params_hash, status, code, duration_ms, \
         session_id, admin, invocation_id, batch_id) ",
    );
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
    qb.build().execute(&mut *conn).await?;
    Ok(())
}

const TOKEN_COLUMNS: &str =
    "name, token_hash, role, tenants, cmdlets, constraints, created_at, revoked_at, last_used_at";

fn token_row(row: &sqlx::sqlite::SqliteRow) -> Result<TokenRow, StoreError> {
    let constraints: String = row.try_get("constraints")?;
    Ok(TokenRow {
        name: row.try_get("name")?,
        token_hash: row.try_get("token_hash")?,
        role: row.try_get("role")?,
        tenants: row.try_get("tenants")?,
        cmdlets: row.try_get("cmdlets")?,
        constraints: serde_json::from_str(&constraints).unwrap_or_default(),
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

fn audit_row(row: &sqlx::sqlite::SqliteRow) -> Result<AuditRecord, StoreError> {
    let names: String = row.try_get("param_names")?;
    let uuid = |col: &str| -> Result<Option<Uuid>, StoreError> {
        let text: Option<String> = row.try_get(col)?;
        Ok(text.and_then(|t| Uuid::parse_str(&t).ok()))
    };
    Ok(AuditRecord {
        id: row.try_get("id")?,
        entry: AuditEntry {
            at: row.try_get("at")?,
            token: row.try_get("token")?,
            tenant: row.try_get("tenant")?,
            cmdlet: row.try_get("cmdlet")?,
            param_names: serde_json::from_str(&names).unwrap_or_default(),
            params_hash: row.try_get("params_hash")?,
            status: row.try_get("status")?,
            code: row.try_get("code")?,
            duration_ms: row.try_get("duration_ms")?,
            session_id: row.try_get("session_id")?,
            admin: row.try_get("admin")?,
            invocation_id: uuid("invocation_id")?,
            batch_id: uuid("batch_id")?,
        },
    })
}

impl Store {
    pub async fn create_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO api_tokens (name, token_hash, role, tenants, cmdlets, constraints, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&t.name)
        .bind(&t.token_hash)
        .bind(&t.role)
        .bind(&t.tenants)
        .bind(&t.cmdlets)
        .bind(Json::from(t.constraints.clone()).to_string())
        .bind(t.created_at)
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("a token named '{}' (names are never reused)", t.name)));
        }
        Ok(())
    }

    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = ?"))
            .bind(hash)
            .fetch_optional(&self.reads)
            .await?;
        row.as_ref().map(token_row).transpose()
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, name"))
            .fetch_all(&self.reads)
            .await?;
        rows.iter().map(token_row).collect()
    }

    /// All tokens ever created, revoked ones included.
    pub async fn token_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM api_tokens").fetch_one(&self.writer).await?.try_get("n")?)
    }

    /// Revokes a token. False if there is no such token or it was revoked already.
    pub async fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE api_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(name)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn touch_token(&self, name: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_tokens SET last_used_at = ? WHERE name = ?")
            .bind(at)
            .bind(name)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Appends one audit record (a request refused by authorization; ended invocations are
    /// audited by [`Store::finish`]).
    pub async fn audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        self.group.write(super::group::Op::Audit(Box::new(e.clone()))).await.map(|_| ())
    }

    /// One page of the audit, newest first.
    pub async fn audit_page(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
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
        let rows = qb.build().fetch_all(&self.reads).await?;
        rows.iter().map(audit_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, hash: &str) -> TokenRow {
        TokenRow {
            name: name.into(),
            token_hash: hash.into(),
            role: "operator".into(),
            tenants: "*".into(),
            cmdlets: "get-*".into(),
            constraints: vec!["Identity=user*".into()],
            created_at: now_ms(),
            revoked_at: None,
            last_used_at: None,
        }
    }

    #[tokio::test]
    async fn tokens_are_unique_by_name_and_revocable() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        assert_eq!(store.token_count().await.unwrap(), 0);
        store.create_token(&token("a", "h1")).await.unwrap();
        assert!(matches!(store.create_token(&token("a", "h2")).await, Err(StoreError::Conflict(_))));
        let row = store.token_by_hash("h1").await.unwrap().unwrap();
        assert_eq!((row.name.as_str(), row.constraints.len()), ("a", 1));
        assert!(store.revoke_token("a").await.unwrap());
        assert!(!store.revoke_token("a").await.unwrap(), "already revoked");
        assert!(store.token_by_hash("h1").await.unwrap().unwrap().revoked_at.is_some());
        assert_eq!(store.token_count().await.unwrap(), 1, "revoked tokens still count");
        assert_eq!(store.salt().len(), 64);
    }

    #[tokio::test]
    async fn audit_pages_newest_first_with_filters() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
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
