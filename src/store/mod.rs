//! Everything durable, behind one facade, [`Store`], over SQLite (the default, embedded) or
//! PostgreSQL (`store.url = "postgres://..."`), each with its own migrations under
//! `migrations/`. One module per concern: the queue of invocations and batches
//! ([`queue`], its hot writes committed in groups by [`group`]), API tokens ([`tokens`]), the
//! audit log ([`audit`]), the remote sessions a node holds ([`sessions`]), identities' sealed
//! refresh tokens ([`identity`]) and the operators' read-only views ([`views`]).

mod audit;
mod checkpointer;
pub mod cluster;
mod db;
mod group;
mod identity;
mod queue;
pub mod scratch;
mod sessions;
mod sqlite_group;
mod tokens;
mod views;

pub use audit::{AuditEntry, AuditQuery, AuditRecord};
pub use group::WriterStats;
pub use identity::SealedRefreshToken;
pub use queue::{BatchInsert, LaneCount, ROWS_PER_STATEMENT};
pub use tokens::TokenRow;
pub use views::{BatchSummary, FailureGroup, FailureMessage, FailureQuery, TenantCount};

use db::{on, Backend, Pool};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::Connection;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// From the SQLite group committer's statements (`store::sqlite_group`).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
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
    #[error("unsupported store URL '{0}': use sqlite://PATH, sqlite::memory: or postgres://...")]
    UnsupportedUrl(String),
    #[error("several nodes share a store only on PostgreSQL")]
    NeedsPostgres,
    #[error(
        "the pooler in front of PostgreSQL loses prepared statements ({0}): with store.pgbouncer = true, \
         PgBouncer must be 1.21 or later with max_prepared_statements > 0 and pool_mode = transaction \
         (docs/cluster.md, \"Behind PgBouncer\")"
    )]
    PoolerPreparedStatements(String),
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
    /// The node it belongs to from the start (it holds secrets only that node has, or that
    /// node runs it at once); `None`: any node of the cluster may take it.
    pub node: Option<String>,
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
    /// A pipeline that completed with `output` and no error record.
    pub fn succeeded(output: Json) -> Outcome {
        Outcome {
            status: Status::Succeeded,
            output,
            errors: Json::Array(vec![]),
            warnings: Json::Array(vec![]),
            error_code: None,
            error_message: None,
            request_id: None,
        }
    }

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

/// Connections of PostgreSQL's pool: the group writer holds one while it commits, the other
/// writes and the reads share the rest.
const POSTGRES_CONNECTIONS: u32 = 16;

/// The store. SQLite allows one writer at a time: there, writes go through a single
/// connection, so concurrent writers queue in-process instead of sleeping in SQLite's busy
/// handler (which costs whole milliseconds per collision), and reads use a pool of their own
/// that never blocks the writer (WAL). PostgreSQL has one pool for both.
///
/// The writes of the invocation path (insert, claim, result, audit) go through [`group`], which
/// commits concurrent ones together, on either backend.
#[derive(Clone)]
pub struct Store {
    writer: Pool,
    group: group::GroupWriter,
    reads: Pool,
    /// Random per database; salts the hashes of parameter values (audit, idempotency).
    salt: Arc<str>,
    /// The node whose claims this handle records (`open_shells`, `invocations.node`).
    node: Option<Arc<str>>,
    /// PostgreSQL's own address when the pool goes through a pooler in transaction mode: where
    /// this node LISTENs ([`cluster::Wakeups`]).
    direct: Option<Arc<str>>,
}

/// A store URL fit for logs and error messages: a password in it (`user:password@`, or a
/// `password=` query parameter) is replaced by `***`.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let hide = |p: &str| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_string(),
            };
            format!("{path}?{}", query.split('&').map(hide).collect::<Vec<_>>().join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Whether a store URL names PostgreSQL (anything else is SQLite's).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// PostgreSQL's migrations. They run under sqlx's session-level advisory lock, so on a direct
/// connection when the pool goes through a pooler in transaction mode.
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Store {
    /// Opens (creating if needed) the database and applies migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::open(url, None).await
    }

    /// Like [`Store::connect`]; with `direct` (PostgreSQL's own address), `url` goes through a
    /// pooler in transaction mode such as PgBouncer (docs/cluster.md, "Behind PgBouncer"): a
    /// connection then lasts one transaction, so what needs a session of its own (the
    /// migrations' lock, LISTEN) goes to `direct` instead, and no startup parameter the pooler
    /// would refuse is sent.
    pub async fn open(url: &str, direct: Option<&str>) -> Result<Store, StoreError> {
        // SQLite's group committer writes on a connection of its own (`sqlite_group`).
        let mut direct_sqlite = None;
        let (writer, reads) = if is_postgres_url(url) {
            let mut options = sqlx::postgres::PgConnectOptions::from_str(url)?;
            if direct.is_some() {
                // PgBouncer refuses startup parameters it does not track, and sqlx sends this one.
                options = options.extra_float_digits(None);
            }
            let pool = PgPoolOptions::new().max_connections(POSTGRES_CONNECTIONS).connect_with(options).await?;
            match direct {
                Some(direct) => {
                    let mut conn = sqlx::PgConnection::connect(direct).await?;
                    POSTGRES_MIGRATIONS.run(&mut conn).await?;
                    conn.close().await?;
                    check_pooler(&pool).await?;
                }
                None => POSTGRES_MIGRATIONS.run(&pool).await?,
            }
            (Backend::Postgres(pool.clone()), Backend::Postgres(pool))
        } else if direct.is_some() {
            return Err(StoreError::NeedsPostgres);
        } else if url.starts_with("sqlite:") {
            let (writer, reads, committer) = connect_sqlite(url).await?;
            direct_sqlite = Some(committer);
            (Backend::Sqlite(writer), Backend::Sqlite(reads))
        } else {
            return Err(StoreError::UnsupportedUrl(url.split('@').next_back().unwrap_or_default().to_string()));
        };
        let salt = audit::load_salt(&writer).await?;
        let group = group::GroupWriter::spawn(writer.clone(), direct_sqlite);
        Ok(Store { writer, group, reads, salt, node: None, direct: direct.map(Arc::from) })
    }

    /// This handle, recording `node` as the runner of what it claims.
    pub fn for_node(mut self, node: &str) -> Store {
        self.node = Some(node.into());
        self
    }

    /// What the group committers did so far (for `bench api`).
    pub fn writer_stats(&self) -> WriterStats {
        self.group.stats()
    }

    /// Whether several nodes may share this store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.writer.is_postgres()
    }

    /// Which backend this is, for logs and benchmarks.
    pub fn backend(&self) -> &'static str {
        if self.writer.is_postgres() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// The database's random salt for hashes of parameter values.
    pub fn salt(&self) -> &str {
        &self.salt
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        on!(&self.reads, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }
}

/// sqlx prepares every statement with arguments under a name of its connection's own
/// (`sqlx_s_1`, ...) and binds it after a Sync, where a pooler in transaction mode may switch
/// server connections: that works only if the pooler tracks prepared statements (PgBouncer
/// 1.21+ with `max_prepared_statements`). Two fresh connections preparing the same name one
/// after the other on an idle pool show it now (an untracking pooler hands the second the
/// server the first prepared on, or the Bind lands on another) rather than on some later query.
async fn check_pooler(pool: &sqlx::PgPool) -> Result<(), StoreError> {
    let mut first = pool.acquire().await?;
    let mut second = pool.acquire().await?;
    for conn in [&mut first, &mut second] {
        let probe = sqlx::query("SELECT $1::int4").bind(1).execute(&mut **conn).await;
        if let Err(sqlx::Error::Database(e)) = &probe {
            // 42P05 duplicate_prepared_statement, 26000 invalid_sql_statement_name.
            if matches!(e.code().as_deref(), Some("42P05" | "26000")) {
                return Err(StoreError::PoolerPreparedStatements(e.message().to_string()));
            }
        }
        probe?;
    }
    Ok(())
}

/// SQLite's single writer connection and its pool of readers.
/// The SQLite writer's page cache, in the form `PRAGMA cache_size` takes (negative: KiB).
const WRITER_CACHE_KIB: &str = "-65536";
/// How long a SQLite connection waits for another's write lock (only the migrations of another
/// process on the same file contend: this one writes through one connection at a time).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The writer pool (one connection), the readers, and the group committer's own connection.
async fn connect_sqlite(
    url: &str,
) -> Result<(sqlx::SqlitePool, sqlx::SqlitePool, sqlite_group::SqliteCommitter), StoreError> {
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
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true);
    // No ping before each acquire (sqlx's default): a SQLite connection is a local file that
    // does not drop, and the ping is one more round trip to the connection's worker thread on
    // every read and every group commit.
    let pool = || SqlitePoolOptions::new().test_before_acquire(false);
    // The writer's page cache holds a whole NDJSON batch's pages (~65 MB for 100,000 items):
    // a smaller one spills them to the WAL mid-transaction and reads them back for the next
    // rows. Statement journals (one per multi-row INSERT) stay in memory too.
    // No checkpoint inside a writer's commit: `sqlite_group`'s checkpointer runs them beside.
    let writer_options = options
        .clone()
        .pragma("cache_size", WRITER_CACHE_KIB)
        .pragma("temp_store", "memory")
        .pragma("wal_autocheckpoint", "0");
    let writer = pool().max_connections(1).connect_with(writer_options).await?;
    sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
    let committer = sqlite_group::SqliteCommitter::open(&options, memory, BUSY_TIMEOUT)?;
    // An in-memory database lives in one shared cache, whose table locks would make readers and
    // the writer wait on each other: there, reads share the writer's connection.
    let reads =
        if memory { writer.clone() } else { pool().max_connections(4).connect_with(options.read_only(true)).await? };
    Ok((writer, reads, committer))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A store of each backend, for the tests that must hold on both: SQLite in memory, and
    /// PostgreSQL in a scratch schema of its own (dropped with the store).
    pub(crate) struct TestStore {
        store: Store,
        _schema: Option<scratch::ScratchSchema>,
    }

    impl std::ops::Deref for TestStore {
        type Target = Store;
        fn deref(&self) -> &Store {
            &self.store
        }
    }

    pub(crate) async fn backends() -> Vec<TestStore> {
        let sqlite = Store::connect("sqlite::memory:").await.unwrap();
        let schema = scratch::ScratchSchema::create().await;
        let postgres = Store::connect(&schema.url()).await.unwrap();
        assert_eq!((sqlite.backend(), postgres.backend()), ("sqlite", "postgres"));
        vec![TestStore { store: sqlite, _schema: None }, TestStore { store: postgres, _schema: Some(schema) }]
    }

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
            node: None,
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

    #[test]
    fn urls_in_messages_carry_no_password() {
        assert_eq!(
            redacted_url("postgres://app:s3cr3t@db:5432/psb?sslmode=require"),
            "postgres://app:***@db:5432/psb?sslmode=require"
        );
        assert_eq!(
            redacted_url("postgres://db/psb?user=app&password=s3cr3t"),
            "postgres://db/psb?user=app&password=***"
        );
        assert_eq!(redacted_url("postgres://app@db/psb"), "postgres://app@db/psb");
        assert_eq!(redacted_url("sqlite://./data/psbroker.db"), "sqlite://./data/psbroker.db");
    }

    #[tokio::test]
    async fn lifecycle_and_idempotency() {
        for store in crate::store::tests::backends().await {
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
            let outcome =
                Outcome { request_id: Some("0d6f9c1e-request".into()), ..Outcome::succeeded(json!([{"Name": "a"}])) };
            assert!(store.finish(first.accepted.id, &outcome).await.unwrap());
            assert!(!store.finish(first.accepted.id, &Outcome::failed("x", "y")).await.unwrap(), "final stays final");
            let r = store.get(first.accepted.id).await.unwrap().unwrap();
            assert_eq!(r.status, Status::Succeeded);
            assert_eq!(r.output[0]["Name"], "a");
            assert_eq!(r.attempts, 1);
            assert_eq!(r.request_id.as_deref(), Some("0d6f9c1e-request"), "the request id is kept");
        }
    }

    #[tokio::test]
    async fn batches_count_page_and_cancel() {
        for store in crate::store::tests::backends().await {
            let batch = Uuid::new_v4();
            let items: Vec<_> = (0..1200).map(|i| renumbered(item(None, "Get-User"), Some((batch, i)))).collect();
            assert_eq!(store.insert_batch(batch, "tester", &items).await.unwrap().len(), 1200);
            assert!(store.mark_running(items[0].accepted.id, 1, "s", "a").await.unwrap());
            let ids: Vec<Uuid> = items.iter().map(|i| i.accepted.id).collect();
            assert_eq!(
                store.cancel_batch(batch, &ids[..10], &ids[..1]).await.unwrap(),
                1199,
                "all but the started one"
            );
            assert!(!store.mark_running(items[1].accepted.id, 1, "s", "a").await.unwrap(), "cancelled cannot start");
            let c = store.batch_counts(batch).await.unwrap().unwrap();
            assert_eq!((c.total, c.running, c.cancelled), (1200, 1, 1199));
            let page = store.batch_page(batch, 10, 5).await.unwrap();
            assert_eq!(page.iter().map(|r| r.accepted.seq).collect::<Vec<_>>(), vec![11, 12, 13, 14, 15]);
            assert_eq!(store.unfinished().await.unwrap().len(), 1);
        }
    }
}
