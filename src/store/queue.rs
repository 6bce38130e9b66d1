//! The durable queue: invocations and batches, from acceptance to their final status.
//!
//! The store is the source of truth for an invocation's status. In particular the move from
//! `queued` to `running` is a conditional update, so a cancelled invocation can never start.
//! Inserts, claims and results are committed in groups ([`super::group`], which uses the SQL
//! here); the rest runs on the pools directly.

use super::db::{on, uuid_text, Backend, Cols, Conn};
use super::{now_ms, Accepted, BatchCounts, InvocationRecord, NewInvocation, Status, Store, StoreError};
use serde_json::Value as Json;
use sqlx::QueryBuilder;
use uuid::Uuid;

/// How many invocations wait in one lane (tenant, pinned admin, priority).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneCount {
    pub tenant: String,
    pub admin: Option<String>,
    pub priority: String,
    pub count: i64,
}

impl LaneCount {
    /// From a row of `tenant, admin, priority, n`.
    pub(super) fn from_row(r: &impl Cols) -> Result<LaneCount, StoreError> {
        Ok(LaneCount {
            tenant: r.col("tenant")?,
            admin: r.col("admin")?,
            priority: r.col("priority")?,
            count: r.col("n")?,
        })
    }
}

pub(super) const COLUMNS: &str = "id, batch_id, seq, idempotency_key, tenant, admin, cmdlet, parameters, priority, idempotent, status, attempts, created_at, deadline_at, started_at, finished_at, session_id, admin_used, output, errors, warnings, error_code, error_message, owner, redacted, request_id";

/// A batch being stored: one transaction, written chunk by chunk while the caller prepares the
/// next chunk, committed by [`BatchInsert::commit`]. Dropped uncommitted, it is rolled back and
/// nothing of the batch is stored.
pub struct BatchInsert {
    tx: Backend<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Transaction<'static, sqlx::Postgres>>,
}

/// Rows per INSERT statement (a row binds 18 values; SQLite allows 32,766 per statement).
pub const ROWS_PER_STATEMENT: usize = 500;

impl BatchInsert {
    /// Stores `items`; returns the ids that were new (items whose idempotency key was seen before,
    /// in this batch too, are not stored again and must not run again).
    pub async fn insert(&mut self, items: &[NewInvocation]) -> Result<Vec<Uuid>, StoreError> {
        on!(&mut self.tx, tx => {
            let mut conn = Backend::from(&mut **tx);
            let mut inserted = Vec::with_capacity(items.len());
            for chunk in items.chunks(ROWS_PER_STATEMENT) {
                inserted.extend(insert_rows(&mut conn, chunk).await?);
            }
            if inserted.len() < items.len() {
                // Replayed keys must carry the same request; a different one is the caller's mistake.
                let inserted: std::collections::HashSet<&Uuid> = inserted.iter().collect();
                for item in items.iter().filter(|i| !inserted.contains(&i.accepted.id)) {
                    replay_in(&mut conn, item).await?;
                }
            }
            Ok(inserted)
        })
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        on!(self.tx, tx => tx.commit().await?);
        Ok(())
    }
}

impl Store {
    /// Opens the transaction that stores batch `batch_id` of `total` items (see [`BatchInsert`]).
    /// It holds the writer until committed or dropped.
    pub async fn begin_batch(&self, batch_id: Uuid, owner: &str, total: usize) -> Result<BatchInsert, StoreError> {
        let tx = match &self.writer {
            Backend::Sqlite(pool) => Backend::Sqlite(pool.begin().await?),
            Backend::Postgres(pool) => Backend::Postgres(pool.begin().await?),
        };
        let mut batch = BatchInsert { tx };
        on!(&mut batch.tx, tx => {
            sqlx::query("INSERT INTO batches (id, created_at, total, owner) VALUES ($1, $2, $3, $4)")
                .bind(batch_id.to_string())
                .bind(now_ms())
                .bind(total as i64)
                .bind(owner)
                .execute(&mut **tx)
                .await?;
        });
        Ok(batch)
    }

    /// Stores a batch and its items in one transaction. Returns the ids that were new.
    pub async fn insert_batch(
        &self,
        batch_id: Uuid,
        owner: &str,
        items: &[NewInvocation],
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut batch = self.begin_batch(batch_id, owner, items.len()).await?;
        let inserted = batch.insert(items).await?;
        batch.commit().await?;
        Ok(inserted)
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<InvocationRecord>, StoreError> {
        on!(&self.reads, pool => {
            let row = sqlx::query(&format!("SELECT {COLUMNS} FROM invocations WHERE id = $1"))
                .bind(id.to_string())
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(record).transpose()
        })
    }

    /// Puts a running invocation back in the queue (its attempt did not start, or may be repeated).
    pub async fn mark_queued(&self, id: Uuid) -> Result<(), StoreError> {
        on!(&self.writer, pool => {
            sqlx::query("UPDATE invocations SET status = 'queued', session_id = NULL WHERE id = $1 AND status = 'running'")
                .bind(id.to_string())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    pub async fn batch_counts(&self, batch: Uuid) -> Result<Option<BatchCounts>, StoreError> {
        on!(&self.reads, pool => {
            let Some(head) = sqlx::query("SELECT total, cancelled_at, owner FROM batches WHERE id = $1")
                .bind(batch.to_string())
                .fetch_optional(pool)
                .await?
            else {
                return Ok(None);
            };
            let mut counts = BatchCounts {
                id: batch,
                total: head.col("total")?,
                cancelled_at: head.col("cancelled_at")?,
                owner: head.col("owner")?,
                ..BatchCounts::default()
            };
            let rows =
                sqlx::query("SELECT status, COUNT(*) AS n FROM invocations WHERE batch_id = $1 GROUP BY status")
                    .bind(batch.to_string())
                    .fetch_all(pool)
                    .await?;
            for row in rows {
                counts.set(Status::parse(&row.col::<String>("status")?), row.col("n")?);
            }
            Ok(Some(counts))
        })
    }

    /// One page of a batch's invocations in submission order, after `after_seq`.
    pub async fn batch_page(
        &self,
        batch: Uuid,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<InvocationRecord>, StoreError> {
        on!(&self.reads, pool => {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM invocations WHERE batch_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            ))
            .bind(batch.to_string())
            .bind(after_seq)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter().map(record).collect()
        })
    }

    /// Marks a batch cancelled and, of its invocations, those still queued that the scheduler
    /// had not started: `ids` (what it held in memory and gave back) and every one waiting in
    /// the store only, i.e. all but `started` (what it handed to sessions, whose claims may not
    /// be committed yet). Returns how many invocations were cancelled.
    pub async fn cancel_batch(&self, batch: Uuid, ids: &[Uuid], started: &[Uuid]) -> Result<u64, StoreError> {
        on!(&self.writer, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE batches SET cancelled_at = $1 WHERE id = $2 AND cancelled_at IS NULL")
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
            let mut qb = QueryBuilder::new(
                "UPDATE invocations SET status = 'cancelled', error_code = 'cancelled', \
                 error_message = 'the batch was cancelled before this invocation started', finished_at = ",
            );
            qb.push_bind(now_ms()).push(" WHERE batch_id = ").push_bind(batch.to_string());
            qb.push(" AND status = 'queued'");
            if !started.is_empty() {
                qb.push(" AND id NOT IN (");
                let mut list = qb.separated(", ");
                for id in started {
                    list.push_bind(id.to_string());
                }
                list.push_unseparated(")");
            }
            cancelled += qb.build().execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            Ok(cancelled)
        })
    }

    /// How many invocations wait in each lane: what a start reads instead of the queue itself.
    pub async fn queued_lanes(&self) -> Result<Vec<LaneCount>, StoreError> {
        on!(&self.reads, pool => {
            let rows = sqlx::query(
                "SELECT tenant, admin, priority, COUNT(*) AS n FROM invocations WHERE status = 'queued' \
                 GROUP BY tenant, admin, priority",
            )
            .fetch_all(pool)
            .await?;
            rows.iter().map(LaneCount::from_row).collect()
        })
    }

    /// Queued invocations whose secret values were redacted (they cannot run after a restart):
    /// of this node, when several share the store.
    pub async fn queued_redacted(&self) -> Result<Vec<InvocationRecord>, StoreError> {
        self.left_by_this_node("status = 'queued' AND redacted").await
    }

    /// Invocations that were running when the daemon (this node, when several share the
    /// store; the others' are theirs, or a rescuer's) last stopped.
    pub async fn running(&self) -> Result<Vec<InvocationRecord>, StoreError> {
        self.left_by_this_node("status = 'running'").await
    }

    async fn left_by_this_node(&self, condition: &str) -> Result<Vec<InvocationRecord>, StoreError> {
        let node = self.node.as_deref().filter(|_| self.is_shared());
        let mine = if node.is_some() { " AND (node = $1 OR node IS NULL)" } else { "" };
        on!(&self.writer, pool => {
            let sql = format!("SELECT {COLUMNS} FROM invocations WHERE {condition}{mine} ORDER BY id");
            let mut query = sqlx::query(&sql);
            if let Some(node) = node {
                query = query.bind(node);
            }
            let rows = query.fetch_all(pool).await?;
            rows.iter().map(record).collect()
        })
    }

    /// Up to `limit` queued invocations of one lane, oldest first, but for those in `exclude`
    /// (what the scheduler holds in memory already).
    pub async fn page_queued(
        &self,
        tenant: &str,
        admin: Option<&str>,
        priority: &str,
        exclude: &[Uuid],
        limit: i64,
    ) -> Result<Vec<InvocationRecord>, StoreError> {
        on!(&self.reads, pool => {
            let mut qb = QueryBuilder::new(format!("SELECT {COLUMNS} FROM invocations WHERE status = 'queued' AND tenant = "));
            qb.push_bind(tenant.to_string());
            match admin {
                Some(a) => qb.push(" AND admin = ").push_bind(a.to_string()),
                None => qb.push(" AND admin IS NULL"),
            };
            qb.push(" AND priority = ").push_bind(priority.to_string());
            if !exclude.is_empty() {
                qb.push(" AND id NOT IN (");
                let mut list = qb.separated(", ");
                for id in exclude {
                    list.push_bind(id.to_string());
                }
                list.push_unseparated(")");
            }
            qb.push(" ORDER BY id LIMIT ").push_bind(limit);
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter().map(record).collect()
        })
    }

    /// Invocations that were queued or running when the daemon last stopped.
    pub async fn unfinished(&self) -> Result<Vec<InvocationRecord>, StoreError> {
        on!(&self.writer, pool => {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM invocations WHERE status IN ('queued', 'running') ORDER BY created_at, seq"
            ))
            .fetch_all(pool)
            .await?;
            rows.iter().map(record).collect()
        })
    }
}

/// The stored invocation an idempotency key points to, if `new` is the same request.
pub(super) async fn replay_in(conn: &mut Conn<'_>, new: &NewInvocation) -> Result<InvocationRecord, StoreError> {
    let key = new.accepted.idempotency_key.clone().unwrap_or_default();
    let (record, hash) = on!(conn, c => {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS}, request_hash FROM invocations WHERE idempotency_key = $1 AND owner = $2"
        ))
        .bind(&key)
        .bind(&new.owner)
        .fetch_one(&mut **c)
        .await?;
        (record(&row)?, row.col::<String>("request_hash")?)
    });
    if hash != new.request_hash {
        return Err(StoreError::IdempotencyConflict(key));
    }
    Ok(record)
}

/// The head of an invocation's INSERT: its values are the [`NewInvocation`]'s, in this order,
/// with `status` 'queued' and `attempts` 0.
pub(super) const INSERT_INTO: &str = "INSERT INTO invocations (id, batch_id, seq, idempotency_key, request_hash, \
     tenant, admin, cmdlet, parameters, priority, idempotent, status, attempts, created_at, deadline_at, owner, \
     param_names, params_hash, redacted, node) ";

/// Inserts new invocations in one statement; returns the ids stored (not those whose
/// idempotency key was taken).
pub(super) async fn insert_rows<'a>(
    conn: &mut Conn<'_>,
    items: impl IntoIterator<Item = &'a NewInvocation>,
) -> Result<Vec<Uuid>, StoreError> {
    let items: Vec<&NewInvocation> = items.into_iter().collect();
    // Only an idempotency key can make a row of fresh ids collide; without one every row is
    // stored, and the statement need not hand each id back (a row at a time, on SQLite).
    let keyed = items.iter().any(|n| n.accepted.idempotency_key.is_some());
    on!(conn, c => {
        let mut qb = QueryBuilder::new(INSERT_INTO);
        qb.push_values(&items, |mut b, new| {
            let s = &new.accepted;
            b.push_bind(s.id.to_string())
                .push_bind(s.batch_id.map(|b| b.to_string()))
                .push_bind(s.seq)
                .push_bind(s.idempotency_key.clone())
                .push_bind(new.request_hash.clone())
                .push_bind(s.tenant.clone())
                .push_bind(s.admin.clone())
                .push_bind(s.cmdlet.clone())
                .push_bind(s.parameters.to_string())
                .push_bind(s.priority.clone())
                .push_bind(s.idempotent)
                .push("'queued'")
                .push("0")
                .push_bind(s.created_at)
                .push_bind(s.deadline_at)
                .push_bind(new.owner.clone())
                .push_bind(Json::from(new.param_names.clone()).to_string())
                .push_bind(new.params_hash.clone())
                .push_bind(s.redacted)
                .push_bind(new.node.clone());
        });
        if !keyed {
            // No ON CONFLICT: a colliding id would be an error, not a row silently left out.
            qb.build().execute(&mut **c).await?;
            return Ok(items.iter().map(|n| n.accepted.id).collect());
        }
        qb.push(" ON CONFLICT DO NOTHING RETURNING id");
        let rows = qb.build().fetch_all(&mut **c).await?;
        rows.iter().map(|r| Ok(uuid_text(&r.col::<String>("id")?)?)).collect()
    })
}

fn json_col(row: &impl Cols, name: &str) -> Result<Json, sqlx::Error> {
    let text: Option<String> = row.col(name)?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Json::Array(vec![])))
}

fn uuid_col(row: &impl Cols, name: &str) -> Result<Option<Uuid>, sqlx::Error> {
    let text: Option<String> = row.col(name)?;
    text.map(|t| uuid_text(&t)).transpose()
}

/// An invocation from a row of [`COLUMNS`].
pub(super) fn record(row: &impl Cols) -> Result<InvocationRecord, StoreError> {
    let accepted = Accepted {
        id: uuid_col(row, "id")?.ok_or_else(|| sqlx::Error::ColumnNotFound("id".into()))?,
        batch_id: uuid_col(row, "batch_id")?,
        seq: row.col("seq")?,
        idempotency_key: row.col("idempotency_key")?,
        tenant: row.col("tenant")?,
        admin: row.col("admin")?,
        cmdlet: row.col("cmdlet")?,
        parameters: json_col(row, "parameters")?,
        priority: row.col("priority")?,
        idempotent: row.col("idempotent")?,
        created_at: row.col("created_at")?,
        deadline_at: row.col("deadline_at")?,
        redacted: row.col("redacted")?,
    };
    Ok(InvocationRecord {
        accepted,
        owner: row.col("owner")?,
        status: Status::parse(&row.col::<String>("status")?),
        attempts: row.col("attempts")?,
        started_at: row.col("started_at")?,
        finished_at: row.col("finished_at")?,
        session_id: row.col("session_id")?,
        admin_used: row.col("admin_used")?,
        output: json_col(row, "output")?,
        errors: json_col(row, "errors")?,
        warnings: json_col(row, "warnings")?,
        error_code: row.col("error_code")?,
        error_message: row.col("error_message")?,
        request_id: row.col("request_id")?,
    })
}
