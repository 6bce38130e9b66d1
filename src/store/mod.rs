//! Durable queue and results in SQL (SQLite now; the schema and statements are kept portable so
//! a PostgreSQL backend can sit behind the same API for several nodes).
//!
//! The store is the source of truth for an invocation's status. In particular the move from
//! `queued` to `running` is a conditional update, so a cancelled invocation can never start.

mod auth;
mod group;
mod identity;
mod views;

pub use auth::{AuditEntry, AuditQuery, AuditRecord, TokenRow};
pub use identity::SealedRefreshToken;
pub use views::{BatchSummary, FailureGroup, FailureMessage, FailureQuery, TenantCount};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, SqlitePool};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("idempotency key '{0}' was already used for a different request")]
    IdempotencyConflict(String),
    #[error("cannot prepare the database location: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("the store's writer task has stopped")]
    WriterStopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 5] =
        [Status::Queued, Status::Running, Status::Succeeded, Status::Failed, Status::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Status {
        Status::ALL.into_iter().find(|x| x.as_str() == s).unwrap_or(Status::Failed)
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

/// What was accepted, exactly as stored: the part the insert and the read view share.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    pub id: Uuid,
    pub batch_id: Option<Uuid>,
    pub seq: i64,
    pub idempotency_key: Option<String>,
    pub tenant: String,
    pub admin: Option<String>,
    pub cmdlet: String,
    /// As stored: secret values already replaced (see `auth::secrets`).
    pub parameters: Json,
    pub priority: String,
    pub idempotent: bool,
    pub created_at: i64,
    pub deadline_at: i64,
    /// Some secret value was redacted: the invocation cannot be resumed after a restart.
    pub redacted: bool,
}

/// An accepted invocation, as stored before the API acknowledges it.
#[derive(Debug, Clone)]
pub struct NewInvocation {
    pub accepted: Accepted,
    /// Hash of the request's content, to tell a replay from a different request with the same key.
    pub request_hash: String,
    /// The name of the token that submitted it; idempotency keys are unique per owner.
    pub owner: String,
    /// Parameter names and the salted hash of their (redacted) values, for the audit.
    pub param_names: Vec<String>,
    pub params_hash: String,
}

/// A stored invocation and how far it got.
#[derive(Debug, Clone, Serialize)]
pub struct InvocationRecord {
    #[serde(flatten)]
    pub accepted: Accepted,
    /// `None` only for rows written before tokens existed.
    pub owner: Option<String>,
    pub status: Status,
    pub attempts: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub session_id: Option<String>,
    pub admin_used: Option<String>,
    pub output: Json,
    pub errors: Json,
    pub warnings: Json,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// The `client-request-id` of the last call to a REST service (see migration 0007).
    pub request_id: Option<String>,
}

/// How an invocation ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    pub output: Json,
    pub errors: Json,
    pub warnings: Json,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// The `client-request-id` the service saw (REST connectors), for support cases.
    pub request_id: Option<String>,
}

impl Outcome {
    pub fn failed(code: &str, message: impl Into<String>) -> Outcome {
        Outcome {
            status: Status::Failed,
            output: Json::Array(vec![]),
            errors: Json::Array(vec![]),
            warnings: Json::Array(vec![]),
            error_code: Some(code.to_string()),
            error_message: Some(message.into()),
            request_id: None,
        }
    }
}

/// Result of inserting one invocation.
#[derive(Debug)]
pub enum Inserted {
    New,
    /// The idempotency key was seen before with the same request: here is that invocation.
    Existing(Box<InvocationRecord>),
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct BatchCounts {
    pub id: Uuid,
    pub total: i64,
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub cancelled_at: Option<i64>,
    /// The token that submitted it (`None`: stored before owners existed).
    pub owner: Option<String>,
}

impl BatchCounts {
    pub fn done(&self) -> bool {
        self.queued == 0 && self.running == 0
    }

    /// Sets the count of one status.
    pub fn set(&mut self, status: Status, n: i64) {
        match status {
            Status::Queued => self.queued = n,
            Status::Running => self.running = n,
            Status::Succeeded => self.succeeded = n,
            Status::Failed => self.failed = n,
            Status::Cancelled => self.cancelled = n,
        }
    }
}

/// A remote session a node holds, with the connector's token to delete it from elsewhere.
#[derive(Debug, Clone)]
pub struct OpenShell {
    pub shell_id: String,
    pub node: String,
    pub admin: String,
    pub tenant: String,
    pub token: String,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

const COLUMNS: &str = "id, batch_id, seq, idempotency_key, tenant, admin, cmdlet, parameters, priority, idempotent, status, attempts, created_at, deadline_at, started_at, finished_at, session_id, admin_used, output, errors, warnings, error_code, error_message, owner, redacted, request_id";

/// SQLite allows one writer at a time. Writes go through a single connection, so concurrent
/// writers queue in-process instead of sleeping in SQLite's busy handler (which costs whole
/// milliseconds per collision); reads use a pool of their own and never block the writer (WAL).
///
/// The writes of the invocation path (insert, claim, result, audit) go through [`group`], which
/// commits concurrent ones together.
#[derive(Clone)]
pub struct Store {
    writer: SqlitePool,
    group: group::GroupWriter,
    reads: SqlitePool,
    /// Random per database; salts the hashes of parameter values (audit, idempotency).
    salt: Arc<str>,
}

impl Store {
    /// Opens (creating if needed) the database and applies migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let memory = url.contains(":memory:");
        if let Some(path) = url.strip_prefix("sqlite://").filter(|_| !memory) {
            let path = path.split('?').next().unwrap_or(path);
            if let Some(dir) = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        // An in-memory database exists per connection: there, reads share the one connection.
        let reads = if memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new().max_connections(4).connect_with(options.read_only(true)).await?
        };
        let salt = auth::load_salt(&writer).await?;
        let group = group::GroupWriter::spawn(writer.clone());
        Ok(Store { writer, group, reads, salt })
    }

    /// The database's random salt for hashes of parameter values.
    pub fn salt(&self) -> &str {
        &self.salt
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reads).await?;
        Ok(())
    }

    pub async fn insert_invocation(&self, new: &NewInvocation) -> Result<Inserted, StoreError> {
        match self.group.write(group::Op::Insert(Box::new(new.clone()))).await? {
            group::Done::Inserted(inserted) => Ok(inserted),
            other => unreachable!("an insert answered {other:?}"),
        }
    }

    /// Stores a batch and its items in one transaction. Returns the ids that were new (items
    /// whose idempotency key was seen before are not stored again and must not run again).
    pub async fn insert_batch(
        &self,
        batch_id: Uuid,
        owner: &str,
        items: &[NewInvocation],
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("INSERT INTO batches (id, created_at, total, owner) VALUES (?, ?, ?, ?)")
            .bind(batch_id.to_string())
            .bind(now_ms())
            .bind(items.len() as i64)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        let mut inserted = Vec::with_capacity(items.len());
        for chunk in items.chunks(500) {
            inserted.extend(insert_rows(&mut tx, chunk).await?);
        }
        if inserted.len() < items.len() {
            // Replayed keys must carry the same request; a different one is the caller's mistake.
            for item in items.iter().filter(|i| !inserted.contains(&i.accepted.id)) {
                replay_in(&mut tx, item).await?;
            }
        }
        tx.commit().await?;
        Ok(inserted)
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<InvocationRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM invocations WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.reads)
            .await?;
        row.as_ref().map(record).transpose()
    }

    /// Claims a queued invocation for a session. False if it is no longer queued (cancelled).
    pub async fn mark_running(&self, id: Uuid, attempt: u32, session: &str, admin: &str) -> Result<bool, StoreError> {
        let claim = group::Op::Claim {
            id,
            attempt: attempt as i64,
            at: now_ms(),
            session: session.to_string(),
            admin: admin.to_string(),
        };
        self.group.write(claim).await.map(group::Done::changed)
    }

    /// Puts a running invocation back in the queue (its attempt did not start, or may be repeated).
    pub async fn mark_queued(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE invocations SET status = 'queued', session_id = NULL WHERE id = ? AND status = 'running'")
            .bind(id.to_string())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Records the end of an invocation that is not already final, and appends its audit record
    /// in the same transaction (so an ended invocation always has one, and only one).
    pub async fn finish(&self, id: Uuid, outcome: &Outcome) -> Result<bool, StoreError> {
        let finish = group::Finish::new(id, now_ms(), outcome);
        self.group.write(group::Op::Finish(Box::new(finish))).await.map(group::Done::changed)
    }

    pub async fn batch_counts(&self, batch: Uuid) -> Result<Option<BatchCounts>, StoreError> {
        let Some(head) = sqlx::query("SELECT total, cancelled_at, owner FROM batches WHERE id = ?")
            .bind(batch.to_string())
            .fetch_optional(&self.reads)
            .await?
        else {
            return Ok(None);
        };
        let mut counts = BatchCounts {
            id: batch,
            total: head.try_get("total")?,
            cancelled_at: head.try_get("cancelled_at")?,
            owner: head.try_get("owner")?,
            ..BatchCounts::default()
        };
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM invocations WHERE batch_id = ? GROUP BY status")
            .bind(batch.to_string())
            .fetch_all(&self.reads)
            .await?;
        for row in rows {
            counts.set(Status::parse(row.try_get::<&str, _>("status")?), row.try_get("n")?);
        }
        Ok(Some(counts))
    }

    /// One page of a batch's invocations in submission order, after `after_seq`.
    pub async fn batch_page(
        &self,
        batch: Uuid,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<InvocationRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM invocations WHERE batch_id = ? AND seq > ? ORDER BY seq LIMIT ?"
        ))
        .bind(batch.to_string())
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.reads)
        .await?;
        rows.iter().map(record).collect()
    }

    /// Marks a batch cancelled and, of `ids` (what the scheduler had not started), those still
    /// queued. Returns how many invocations were cancelled.
    pub async fn cancel_batch(&self, batch: Uuid, ids: &[Uuid]) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("UPDATE batches SET cancelled_at = ? WHERE id = ? AND cancelled_at IS NULL")
            .bind(now_ms())
            .bind(batch.to_string())
            .execute(&mut *tx)
            .await?;
        let mut cancelled = 0;
        for chunk in ids.chunks(500) {
            let mut qb = QueryBuilder::new(
                "UPDATE invocations SET status = 'cancelled', error_code = 'cancelled', \
                 error_message = 'the batch was cancelled before this invocation started', finished_at = ",
            );
            qb.push_bind(now_ms()).push(" WHERE status = 'queued' AND id IN (");
            let mut list = qb.separated(", ");
            for id in chunk {
                list.push_bind(id.to_string());
            }
            list.push_unseparated(")");
            cancelled += qb.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(cancelled)
    }

    /// Remembers a remote session this node opened (see `open_shells` in the migrations).
    pub async fn remember_shell(&self, shell: &OpenShell) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO open_shells (shell_id, node, admin, tenant, token, opened_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (shell_id) DO UPDATE SET token = excluded.token")
            .bind(&shell.shell_id)
            .bind(&shell.node)
            .bind(&shell.admin)
            .bind(&shell.tenant)
            .bind(&shell.token)
            .bind(now_ms())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn forget_shell(&self, shell_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM open_shells WHERE shell_id = ?").bind(shell_id).execute(&self.writer).await?;
        Ok(())
    }

    /// The sessions a node still had open when it last stopped.
    pub async fn open_shells(&self, node: &str) -> Result<Vec<OpenShell>, StoreError> {
        let rows = sqlx::query("SELECT shell_id, node, admin, tenant, token FROM open_shells WHERE node = ?")
            .bind(node)
            .fetch_all(&self.reads)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(OpenShell {
                    shell_id: r.try_get("shell_id")?,
                    node: r.try_get("node")?,
                    admin: r.try_get("admin")?,
                    tenant: r.try_get("tenant")?,
                    token: r.try_get("token")?,
                })
            })
            .collect()
    }

    /// Invocations that were queued or running when the daemon last stopped.
    pub async fn unfinished(&self) -> Result<Vec<InvocationRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM invocations WHERE status IN ('queued', 'running') ORDER BY created_at, seq"
        ))
        .fetch_all(&self.writer)
        .await?;
        rows.iter().map(record).collect()
    }
}

/// The stored invocation an idempotency key points to, if `new` is the same request.
async fn replay_in(conn: &mut sqlx::SqliteConnection, new: &NewInvocation) -> Result<InvocationRecord, StoreError> {
    let key = new.accepted.idempotency_key.clone().unwrap_or_default();
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS}, request_hash FROM invocations WHERE idempotency_key = ? AND owner = ?"
    ))
    .bind(&key)
    .bind(&new.owner)
    .fetch_one(&mut *conn)
    .await?;
    let hash: String = row.try_get("request_hash")?;
    if hash != new.request_hash {
        return Err(StoreError::IdempotencyConflict(key));
    }
    record(&row)
}

async fn insert_rows<'a>(
    tx: &mut sqlx::SqliteConnection,
    items: impl IntoIterator<Item = &'a NewInvocation>,
) -> Result<Vec<Uuid>, StoreError> {
    let mut qb = QueryBuilder::new(
        "INSERT INTO invocations (id, batch_id, seq, idempotency_key, request_hash, tenant, admin, cmdlet, parameters, \
         priority, idempotent, status, attempts, created_at, deadline_at, owner, param_names, params_hash, redacted) ",
    );
    qb.push_values(items, |mut b, new| {
        let s = &new.accepted;
        b.push_bind(s.id.to_string())
            .push_bind(s.batch_id.map(|b| b.to_string()))
            .push_bind(s.seq)
            .push_bind(&s.idempotency_key)
            .push_bind(&new.request_hash)
            .push_bind(&s.tenant)
            .push_bind(&s.admin)
            .push_bind(&s.cmdlet)
            .push_bind(s.parameters.to_string())
            .push_bind(&s.priority)
            .push_bind(s.idempotent)
            .push_bind("queued")
            .push_bind(0i64)
            .push_bind(s.created_at)
            .push_bind(s.deadline_at)
            .push_bind(&new.owner)
            .push_bind(Json::from(new.param_names.clone()).to_string())
            .push_bind(&new.params_hash)
            .push_bind(s.redacted);
    });
    qb.push(" ON CONFLICT DO NOTHING RETURNING id");
    let rows = qb.build().fetch_all(&mut *tx).await?;
    rows.iter()
        .map(|r| {
            let id: &str = r.try_get("id")?;
            Ok(Uuid::parse_str(id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?)
        })
        .collect()
}

fn json_col(row: &sqlx::sqlite::SqliteRow, name: &str) -> Result<Json, sqlx::Error> {
    let text: Option<String> = row.try_get(name)?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Json::Array(vec![])))
}

fn uuid_col(row: &sqlx::sqlite::SqliteRow, name: &str) -> Result<Option<Uuid>, sqlx::Error> {
    let text: Option<String> = row.try_get(name)?;
    text.map(|t| Uuid::parse_str(&t).map_err(|e| sqlx::Error::Decode(Box::new(e)))).transpose()
}

fn record(row: &sqlx::sqlite::SqliteRow) -> Result<InvocationRecord, StoreError> {
    let accepted = Accepted {
        id: uuid_col(row, "id")?.ok_or_else(|| sqlx::Error::ColumnNotFound("id".into()))?,
        batch_id: uuid_col(row, "batch_id")?,
        seq: row.try_get("seq")?,
        idempotency_key: row.try_get("idempotency_key")?,
        tenant: row.try_get("tenant")?,
        admin: row.try_get("admin")?,
        cmdlet: row.try_get("cmdlet")?,
        parameters: json_col(row, "parameters")?,
        priority: row.try_get("priority")?,
        idempotent: row.try_get("idempotent")?,
        created_at: row.try_get("created_at")?,
        deadline_at: row.try_get("deadline_at")?,
        redacted: row.try_get("redacted")?,
    };
    Ok(InvocationRecord {
        accepted,
        owner: row.try_get("owner")?,
        status: Status::parse(row.try_get::<&str, _>("status")?),
        attempts: row.try_get("attempts")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        session_id: row.try_get("session_id")?,
        admin_used: row.try_get("admin_used")?,
        output: json_col(row, "output")?,
        errors: json_col(row, "errors")?,
        warnings: json_col(row, "warnings")?,
        error_code: row.try_get("error_code")?,
        error_message: row.try_get("error_message")?,
        request_id: row.try_get("request_id")?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn item(key: Option<&str>, cmdlet: &str) -> NewInvocation {
        NewInvocation {
            accepted: Accepted {
                id: Uuid::new_v4(),
                batch_id: None,
                seq: 0,
                idempotency_key: key.map(str::to_string),
                tenant: "contoso.onmicrosoft.com".into(),
                admin: None,
                cmdlet: cmdlet.into(),
                parameters: json!({"ResultSize": 5}),
                priority: "batch".into(),
                idempotent: true,
                created_at: now_ms(),
                deadline_at: now_ms() + 60_000,
                redacted: false,
            },
            request_hash: format!("hash-{cmdlet}"),
            owner: "tester".into(),
            param_names: vec!["ResultSize".into()],
            params_hash: "h".into(),
        }
    }

    /// `item` with another id (and, if given, a place in a batch).
    fn renumbered(mut new: NewInvocation, batch: Option<(Uuid, i64)>) -> NewInvocation {
        new.accepted.id = Uuid::new_v4();
        if let Some((id, seq)) = batch {
            (new.accepted.batch_id, new.accepted.seq) = (Some(id), seq);
        }
        new
    }

    #[tokio::test]
    async fn lifecycle_and_idempotency() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let first = item(Some("k1"), "Get-Mailbox");
        assert!(matches!(store.insert_invocation(&first).await.unwrap(), Inserted::New));
        let replay = renumbered(first.clone(), None);
        match store.insert_invocation(&replay).await.unwrap() {
            Inserted::Existing(r) => assert_eq!(r.accepted.id, first.accepted.id),
            other => panic!("expected replay, got {other:?}"),
        }
        let different = item(Some("k1"), "Set-Mailbox");
        assert!(matches!(store.insert_invocation(&different).await, Err(StoreError::IdempotencyConflict(_))));

        assert!(store.mark_running(first.accepted.id, 1, "s1", "alice").await.unwrap());
        assert!(!store.mark_running(first.accepted.id, 1, "s1", "alice").await.unwrap(), "claim is exclusive");
        let outcome = Outcome {
            status: Status::Succeeded,
            output: json!([{"Name": "a"}]),
            errors: json!([]),
            warnings: json!([]),
            error_code: None,
            error_message: None,
            request_id: Some("0d6f9c1e-request".into()),
        };
        assert!(store.finish(first.accepted.id, &outcome).await.unwrap());
        assert!(!store.finish(first.accepted.id, &Outcome::failed("x", "y")).await.unwrap(), "final stays final");
        let r = store.get(first.accepted.id).await.unwrap().unwrap();
        assert_eq!(r.status, Status::Succeeded);
        assert_eq!(r.output[0]["Name"], "a");
        assert_eq!(r.attempts, 1);
        assert_eq!(r.request_id.as_deref(), Some("0d6f9c1e-request"), "the request id is kept");
    }

    #[tokio::test]
    async fn batches_count_page_and_cancel() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let batch = Uuid::new_v4();
        let items: Vec<_> = (0..1200).map(|i| renumbered(item(None, "Get-User"), Some((batch, i)))).collect();
        assert_eq!(store.insert_batch(batch, "tester", &items).await.unwrap().len(), 1200);
        assert!(store.mark_running(items[0].accepted.id, 1, "s", "a").await.unwrap());
        let ids: Vec<Uuid> = items.iter().map(|i| i.accepted.id).collect();
        assert_eq!(store.cancel_batch(batch, &ids).await.unwrap(), 1199, "the running one is not cancelled");
        assert!(!store.mark_running(items[1].accepted.id, 1, "s", "a").await.unwrap(), "cancelled cannot start");
        let c = store.batch_counts(batch).await.unwrap().unwrap();
        assert_eq!((c.total, c.running, c.cancelled), (1200, 1, 1199));
        let page = store.batch_page(batch, 10, 5).await.unwrap();
        assert_eq!(page.iter().map(|r| r.accepted.seq).collect::<Vec<_>>(), vec![11, 12, 13, 14, 15]);
        assert_eq!(store.unfinished().await.unwrap().len(), 1);
    }
}
