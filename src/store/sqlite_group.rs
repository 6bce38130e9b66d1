//! The SQLite half of group commit ([`super::group`]): a whole group in one go, on a connection
//! of the committer's own.
//!
//! sqlx runs every SQLite statement on the connection's worker thread and hands the answer back
//! through a channel, so a group (BEGIN, inserts, claims, results, audits, COMMIT) paid a round
//! trip between two threads per statement, each the wake-up of a sleeping thread. Measured on
//! `bench api`: the worker thread computed for a third of the time the committer waited for it.
//! Here the committer runs the group itself, through rusqlite, on a connection it opened to the
//! same database (prepared statements cached across groups, stepped once per row).
//!
//! It stays the single writer: the committer writes only while it holds the writer pool's one
//! connection (idle meanwhile), so every other write waits its turn in that pool as before, and
//! nothing waits in SQLite's busy handler. The committer keeps that turn while groups keep
//! coming, for a bounded time ([`MAX_TURN`]). The statements and their semantics are those of the
//! multi-row ones in [`super::group`], which PostgreSQL keeps (a round trip there is the
//! network's, and one statement per kind saves them).

use super::audit::{AUDIT_INSERT, AUDIT_OF_ENDED};
use super::checkpointer::Checkpointer;
use super::group::{audits, claims, finishes, Answer, Done, Op};
use super::queue::{record, COLUMNS, INSERT_INTO};
use super::{Inserted, InvocationRecord, NewInvocation, StoreError};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value as Json;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Sqlite, SqlitePool};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The committer's connection, and its turn as the writer.
pub(super) struct SqliteCommitter {
    db: Connection,
    /// The writer pool's one connection, held (idle) while this committer writes, and since when.
    /// Kept from one group to the next while groups keep coming, for up to [`MAX_TURN`]: giving
    /// it back costs sqlx a spawned task and a ping of the connection's worker thread, each a
    /// wake-up, which cost as much as the group itself.
    turn: Option<(PoolConnection<Sqlite>, Instant)>,
    /// Checkpoints the log beside the committer (a file; an in-memory database has no log).
    checkpoints: Option<Checkpointer>,
}

/// The longest the committer keeps the writer's turn while groups keep coming: the longest
/// another write (a batch, a session, a token) waits for it besides a group's commit.
const MAX_TURN: Duration = Duration::from_millis(10);

impl SqliteCommitter {
    /// Opens the committer's connection to the database `options` opened (after its migrations):
    /// the same file, or the same shared in-memory database, with the writer's settings.
    pub fn open(options: &SqliteConnectOptions, memory: bool, busy_timeout: Duration) -> Result<Self, StoreError> {
        let name = options.get_filename().to_string_lossy().into_owned();
        let connect = || -> Result<Connection, StoreError> {
            let db = if memory {
                // sqlx names an in-memory database `file:sqlx-in-memory-N` and shares its cache,
                // so a second connection in this process reaches the same one.
                let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_URI
                    | OpenFlags::SQLITE_OPEN_SHARED_CACHE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                Connection::open_with_flags(format!("{name}?mode=memory&cache=shared"), flags)?
            } else {
                Connection::open_with_flags(&name, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?
            };
            db.busy_timeout(busy_timeout)?;
            Ok(db)
        };
        let db = connect()?;
        db.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;")?;
        let checkpoints = if memory {
            None
        } else {
            db.execute_batch("PRAGMA wal_autocheckpoint = 0")?;
            Some(Checkpointer::start(connect()?)?)
        };
        Ok(SqliteCommitter { db, turn: None, checkpoints })
    }

    /// Commits `ops` together (`single`: one statement, which autocommit makes atomic without
    /// BEGIN/COMMIT), in the writer's turn.
    pub async fn commit(&mut self, writer: &SqlitePool, ops: &[Op], single: bool) -> Result<Vec<Answer>, StoreError> {
        if self.turn.as_ref().is_some_and(|(_, since)| since.elapsed() > MAX_TURN) {
            self.yield_turn();
        }
        if self.turn.is_none() {
            self.turn = Some((writer.acquire().await?, Instant::now()));
        }
        let answers = if single { apply(&self.db, ops)? } else { in_transaction(&self.db, ops)? };
        if let Some(checkpoints) = &mut self.checkpoints {
            checkpoints.committed();
        }
        Ok(answers)
    }

    /// Lets the other writers in (the committer has nothing to write, or had its turn).
    pub fn yield_turn(&mut self) {
        self.turn = None;
    }
}

fn in_transaction(db: &Connection, ops: &[Op]) -> Result<Vec<Answer>, StoreError> {
    db.execute_batch("BEGIN")?;
    let committed = apply(db, ops).and_then(|answers| {
        db.execute_batch("COMMIT")?;
        Ok(answers)
    });
    if committed.is_err() {
        let _ = db.execute_batch("ROLLBACK");
    }
    committed
}

/// Runs the writes of a group; `Err` means the group must not be committed. A caller's own
/// refusal (an idempotency key reused for another request) is its answer, not the group's error.
fn apply(db: &Connection, ops: &[Op]) -> Result<Vec<Answer>, StoreError> {
    let mut answers: Vec<Option<Answer>> = (0..ops.len()).map(|_| None).collect();

    // Inserts first, then the replays of keys already taken (by an earlier group or this one).
    let mut taken = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if let Op::Insert(new) = op {
            if insert(db, new)? {
                answers[i] = Some(Ok(Done::Inserted(Inserted::New)));
            } else {
                taken.push((i, &**new));
            }
        }
    }
    for (i, new) in taken {
        answers[i] = Some(match replay(db, new) {
            Ok(record) => Ok(Done::Inserted(Inserted::Existing(Box::new(record)))),
            Err(e @ StoreError::IdempotencyConflict(_)) => Err(e),
            Err(e) => return Err(e),
        });
    }

    let claims = claims(ops);
    if !claims.candidates.is_empty() {
        let mut claim = db.prepare_cached(
            "UPDATE invocations SET status = 'running', attempts = ?2, started_at = ?3, session_id = ?4, \
             admin_used = ?5, node = ?6 WHERE id = ?1 AND status = 'queued'",
        )?;
        let mut won = HashSet::new();
        for (_, op) in &claims.candidates {
            if let Op::Claim { id, attempt, at, session, admin, node } = op {
                if claim.execute(params![id.to_string(), attempt, at, session, admin, node])? == 1 {
                    won.insert(*id);
                }
            }
        }
        claims.answer(&mut answers, &won);
    }

    // Results, each with its audit record when it ended the invocation (in the same transaction).
    let finishes = finishes(ops);
    if !finishes.candidates.is_empty() {
        let mut ended: HashMap<Uuid, Option<InvocationRecord>> = HashMap::new();
        let mut audit = db.prepare_cached(&format!("{AUDIT_INSERT}{AUDIT_OF_ENDED} WHERE id = ?1"))?;
        for (_, op) in &finishes.candidates {
            let Op::Finish(f) = op else { continue };
            let returning = if f.want_record { COLUMNS } else { "id" };
            let mut finish = db.prepare_cached(&format!(
                "UPDATE invocations SET status = ?2, finished_at = ?3, output = ?4, errors = ?5, warnings = ?6, \
                 error_code = ?7, error_message = ?8, request_id = ?9 \
                 WHERE id = ?1 AND status IN ('queued', 'running') RETURNING {returning}"
            ))?;
            let values = params![
                f.id.to_string(),
                f.status,
                f.at,
                f.output,
                f.errors,
                f.warnings,
                f.error_code,
                f.error_message,
                f.request_id
            ];
            let row = finish
                .query_row(values, |row| if f.want_record { Ok(Some(record(row))) } else { Ok(None) })
                .optional()?;
            if let Some(record) = row {
                audit.execute([f.id.to_string()])?;
                ended.insert(f.id, record.transpose()?);
            }
        }
        finishes.answer_ended(&mut answers, ended);
    }

    let audits = audits(ops);
    if !audits.is_empty() {
        let mut append = db.prepare_cached(&format!(
            "{AUDIT_INSERT} VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        ))?;
        for (i, e) in audits {
            append.execute(params![
                e.at,
                e.token,
                e.tenant,
                e.cmdlet,
                Json::from(e.param_names.clone()).to_string(),
                e.params_hash,
                e.status,
                e.code,
                e.duration_ms,
                e.session_id,
                e.admin,
                e.invocation_id.map(|u| u.to_string()),
                e.batch_id.map(|u| u.to_string())
            ])?;
            answers[i] = Some(Ok(Done::Appended));
        }
    }

    Ok(answers.into_iter().map(|a| a.expect("every write is answered")).collect())
}

/// Inserts one invocation; false when its idempotency key is taken. Without a key there is no
/// ON CONFLICT: a colliding id is an error, not a row silently left out.
fn insert(db: &Connection, new: &NewInvocation) -> Result<bool, StoreError> {
    let on_conflict = if new.accepted.idempotency_key.is_some() { " ON CONFLICT DO NOTHING" } else { "" };
    let mut insert = db.prepare_cached(&format!(
        "{INSERT_INTO} VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'queued', 0, ?12, ?13, ?14, ?15, ?16, \
         ?17, ?18){on_conflict}"
    ))?;
    let s = &new.accepted;
    let stored = insert.execute(params![
        s.id.to_string(),
        s.batch_id.map(|b| b.to_string()),
        s.seq,
        s.idempotency_key,
        new.request_hash,
        s.tenant,
        s.admin,
        s.cmdlet,
        s.parameters.to_string(),
        s.priority,
        s.idempotent,
        s.created_at,
        s.deadline_at,
        new.owner,
        Json::from(new.param_names.clone()).to_string(),
        new.params_hash,
        s.redacted,
        new.node
    ])?;
    Ok(stored == 1)
}

/// The stored invocation an idempotency key points to, if `new` is the same request.
fn replay(db: &Connection, new: &NewInvocation) -> Result<InvocationRecord, StoreError> {
    let key = new.accepted.idempotency_key.clone().unwrap_or_default();
    let mut select = db.prepare_cached(&format!(
        "SELECT {COLUMNS}, request_hash FROM invocations WHERE idempotency_key = ?1 AND owner = ?2"
    ))?;
    let (stored, hash) =
        select.query_row(params![key, new.owner], |row| Ok((record(row), row.get::<_, String>("request_hash")?)))?;
    if hash != new.request_hash {
        return Err(StoreError::IdempotencyConflict(key));
    }
    stored
}

#[cfg(test)]
mod tests {
    use super::super::tests::item;
    use super::super::{Status, Store};
    use futures::future::join_all;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    async fn file_store(dir: &tempfile::TempDir) -> (Store, std::path::PathBuf) {
        let path = dir.path().join("psbroker.db");
        (Store::connect(&format!("sqlite://{}", path.display())).await.unwrap(), path)
    }

    /// The committer's connection does no checkpoint of its own: the thread beside it copies
    /// the log into the database file as commits add up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_is_copied_back_beside_the_committer() {
        let dir = tempfile::tempdir().unwrap();
        let (store, path) = file_store(&dir).await;
        let before = std::fs::metadata(&path).unwrap().len();
        for _ in 0..(2 * super::super::checkpointer::COMMITS_PER_CHECKPOINT) {
            store.insert_invocation(&item(None, "Get-User")).await.unwrap();
        }
        let started = Instant::now();
        while std::fs::metadata(&path).unwrap().len() <= before {
            assert!(started.elapsed() < Duration::from_secs(10), "no checkpoint copied the log into the file");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Other writers (a batch) get their turn while groups keep coming, and what both wrote is
    /// there: one writer at a time, nobody waiting on SQLite's busy handler.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_gets_the_writer_while_groups_keep_coming() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = file_store(&dir).await;
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (store, stop) = (store.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let new = item(None, "Get-User");
                        store.insert_invocation(&new).await.unwrap();
                        ids.push(new.accepted.id);
                    }
                    ids
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let batch: Vec<_> = (0..2_000).map(|_| item(None, "Set-User")).collect();
        let started = Instant::now();
        let stored = store.insert_batch(uuid::Uuid::now_v7(), "owner", &batch).await.unwrap();
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let singles: Vec<_> = join_all(writers).await.into_iter().flat_map(Result::unwrap).collect();
        assert_eq!(stored.len(), 2_000);
        assert!(took < Duration::from_secs(5), "the batch waited {took:?} for the writer");
        assert!(singles.len() > 100, "the groups kept coming: {}", singles.len());
        for id in singles.iter().step_by(50).chain(stored.iter().step_by(500)) {
            assert_eq!(store.get(*id).await.unwrap().unwrap().status, Status::Queued);
        }
    }
}
