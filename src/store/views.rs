//! Read-only views for operators (the web console and anyone else on the API): a caller's
//! batches newest first, a batch's items filtered by status and code, and failures grouped by
//! code with the service's messages. Reads only, on the read pool; the same SQL on both backends.

use super::db::{on, uuid_text, Cols};
use super::queue::{record, COLUMNS};
use super::{BatchCounts, InvocationRecord, Status, Store, StoreError};
use serde::Serialize;
use sqlx::QueryBuilder;
use std::collections::BTreeMap;
use uuid::Uuid;

/// A batch in a listing: its counts and when it was accepted.
#[derive(Debug, Clone, Serialize)]
pub struct BatchSummary {
    #[serde(flatten)]
    pub counts: BatchCounts,
    pub created_at: i64,
}

/// Which failures to group. `owner` limits them to one token's invocations (every token that is
/// not an admin); the others narrow further.
#[derive(Debug, Clone, Default)]
pub struct FailureQuery {
    pub owner: Option<String>,
    pub batch: Option<Uuid>,
    pub tenant: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// One error code's failures in the window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FailureGroup {
    pub code: String,
    pub count: i64,
    pub last_at: i64,
    /// The most frequent distinct messages (the service's own words), most frequent first.
    pub messages: Vec<FailureMessage>,
    /// How many distinct tenants failed with this code, and the most affected ones.
    pub tenant_count: i64,
    pub tenants: Vec<TenantCount>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FailureMessage {
    pub message: String,
    pub count: i64,
    pub last_at: i64,
    /// The newest invocation that failed with exactly this message.
    pub example: Uuid,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TenantCount {
    pub tenant: String,
    pub count: i64,
}

/// Messages and tenants shown per code; the counts always cover all of them.
const SHOWN_PER_CODE: usize = 5;
/// Distinct (code, message) pairs read at most: messages that name objects can be unique per
/// failure, and the rarest ones are the least useful to show.
const MAX_MESSAGE_ROWS: i64 = 5000;

impl FailureQuery {
    /// ` AND ...` for every filter, on a statement over `invocations` of failed rows.
    fn push_filters<DB: sqlx::Database>(&self, qb: &mut QueryBuilder<'_, DB>)
    where
        String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        if let Some(o) = &self.owner {
            qb.push(" AND owner = ").push_bind(o.clone());
        }
        if let Some(b) = self.batch {
            qb.push(" AND batch_id = ").push_bind(b.to_string());
        }
        if let Some(t) = &self.tenant {
            qb.push(" AND tenant = ").push_bind(t.to_lowercase());
        }
        if let Some(s) = self.since_ms {
            qb.push(" AND finished_at >= ").push_bind(s);
        }
        if let Some(u) = self.until_ms {
            qb.push(" AND finished_at < ").push_bind(u);
        }
    }
}

impl Store {
    /// Batches newest first (ids are UUIDv7, so their order is acceptance order), optionally
    /// one owner's only, continuing below `before` (the last id of the previous page).
    pub async fn list_batches(
        &self,
        owner: Option<&str>,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<BatchSummary>, StoreError> {
        on!(&self.reads, pool => {
        let mut qb = QueryBuilder::new("SELECT id, total, cancelled_at, owner, created_at FROM batches WHERE 1 = 1");
        if let Some(o) = owner {
            qb.push(" AND owner = ").push_bind(o.to_string());
        }
        if let Some(b) = before {
            qb.push(" AND id < ").push_bind(b.to_string());
        }
        qb.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
        let heads = qb.build().fetch_all(pool).await?;
        let mut batches = Vec::with_capacity(heads.len());
        for row in &heads {
            let counts = BatchCounts {
                id: uuid_text(&row.col::<String>("id")?)?,
                total: row.col("total")?,
                cancelled_at: row.col("cancelled_at")?,
                owner: row.col("owner")?,
                ..BatchCounts::default()
            };
            batches.push(BatchSummary { counts, created_at: row.col("created_at")? });
        }
        if batches.is_empty() {
            return Ok(batches);
        }
        let mut qb = QueryBuilder::new("SELECT batch_id, status, COUNT(*) AS n FROM invocations WHERE batch_id IN (");
        let mut ids = qb.separated(", ");
        for b in &batches {
            ids.push_bind(b.counts.id.to_string());
        }
        ids.push_unseparated(") GROUP BY batch_id, status");
        let index: BTreeMap<String, usize> =
            batches.iter().enumerate().map(|(i, b)| (b.counts.id.to_string(), i)).collect();
        for row in qb.build().fetch_all(pool).await? {
            let Some(&i) = index.get(&row.col::<String>("batch_id")?) else { continue };
            batches[i].counts.set(Status::parse(&row.col::<String>("status")?), row.col("n")?);
        }
        Ok(batches)
        })
    }

    /// A batch's items in submission order after `after_seq`, only those with `status` and
    /// error `code` when given.
    pub async fn batch_items(
        &self,
        batch: Uuid,
        status: Option<Status>,
        code: Option<&str>,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<InvocationRecord>, StoreError> {
        on!(&self.reads, pool => {
        let mut qb = QueryBuilder::new(format!("SELECT {COLUMNS} FROM invocations WHERE batch_id = "));
        qb.push_bind(batch.to_string()).push(" AND seq > ").push_bind(after_seq);
        if let Some(s) = status {
            qb.push(" AND status = ").push_bind(s.as_str());
        }
        if let Some(c) = code {
            qb.push(" AND error_code = ").push_bind(c.to_string());
        }
        qb.push(" ORDER BY seq LIMIT ").push_bind(limit);
        let rows = qb.build().fetch_all(pool).await?;
        rows.iter().map(record).collect()
        })
    }

    /// Failed invocations grouped by error code, the most frequent code first.
    pub async fn failures(&self, q: &FailureQuery) -> Result<Vec<FailureGroup>, StoreError> {
        let mut groups: BTreeMap<String, FailureGroup> = BTreeMap::new();
        on!(&self.reads, pool => {
        // `status = 'failed'` literally, so SQLite can use the partial index on failed rows.
        let mut qb = QueryBuilder::new(
            "SELECT error_code, error_message, COUNT(*) AS n, MAX(finished_at) AS last_at, MAX(id) AS example \
             FROM invocations WHERE status = 'failed'",
        );
        q.push_filters(&mut qb);
        qb.push(" GROUP BY error_code, error_message ORDER BY n DESC LIMIT ").push_bind(MAX_MESSAGE_ROWS);
        for row in qb.build().fetch_all(pool).await? {
            let code: Option<String> = row.col("error_code")?;
            let code = code.unwrap_or_else(|| "unknown".into());
            let (count, last_at): (i64, i64) =
                (row.col("n")?, row.col::<Option<i64>>("last_at")?.unwrap_or(0));
            let example: String = row.col("example")?;
            let group = groups.entry(code.clone()).or_insert_with(|| FailureGroup {
                code,
                count: 0,
                last_at: 0,
                messages: vec![],
                tenant_count: 0,
                tenants: vec![],
            });
            group.count += count;
            group.last_at = group.last_at.max(last_at);
            if group.messages.len() < SHOWN_PER_CODE {
                group.messages.push(FailureMessage {
                    message: row.col::<Option<String>>("error_message")?.unwrap_or_default(),
                    count,
                    last_at,
                    example: uuid_text(&example)?,
                });
            }
        }
        let mut qb =
            QueryBuilder::new("SELECT error_code, tenant, COUNT(*) AS n FROM invocations WHERE status = 'failed'");
        q.push_filters(&mut qb);
        qb.push(" GROUP BY error_code, tenant ORDER BY n DESC, tenant");
        for row in qb.build().fetch_all(pool).await? {
            let code: Option<String> = row.col("error_code")?;
            let Some(group) = groups.get_mut(code.as_deref().unwrap_or("unknown")) else { continue };
            group.tenant_count += 1;
            if group.tenants.len() < SHOWN_PER_CODE {
                group.tenants.push(TenantCount { tenant: row.col("tenant")?, count: row.col("n")? });
            }
        }
        });
        let mut groups: Vec<FailureGroup> = groups.into_values().collect();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.code.cmp(&b.code)));
        Ok(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::item;
    use crate::store::Outcome;

    /// A batch of `n` items owned by `owner` on `tenant`; returns its id and the items' ids.
    async fn batch(store: &Store, owner: &str, tenant: &str, n: i64) -> (Uuid, Vec<Uuid>) {
        let id = Uuid::now_v7();
        let items: Vec<_> = (0..n)
            .map(|seq| {
                let mut new = item(None, "Get-User");
                new.accepted.id = Uuid::now_v7();
                new.accepted.batch_id = Some(id);
                new.accepted.seq = seq;
                new.accepted.tenant = tenant.into();
                new.owner = owner.into();
                new
            })
            .collect();
        store.insert_batch(id, owner, &items).await.unwrap();
        (id, items.iter().map(|i| i.accepted.id).collect())
    }

    #[tokio::test]
    async fn batches_list_newest_first_per_owner_with_counts() {
        for store in crate::store::tests::backends().await {
            let (first, items) = batch(&store, "ann", "a.example", 3).await;
            let (second, _) = batch(&store, "bob", "b.example", 2).await;
            let (third, _) = batch(&store, "ann", "a.example", 1).await;
            store.finish(items[0], &Outcome::failed("unknown_cmdlet", "nope")).await.unwrap();

            let all = store.list_batches(None, None, 10).await.unwrap();
            assert_eq!(all.iter().map(|b| b.counts.id).collect::<Vec<_>>(), vec![third, second, first]);
            let ann = store.list_batches(Some("ann"), None, 10).await.unwrap();
            assert_eq!(ann.iter().map(|b| b.counts.id).collect::<Vec<_>>(), vec![third, first]);
            let c = &ann[1].counts;
            assert_eq!((c.total, c.queued, c.failed, c.owner.as_deref()), (3, 2, 1, Some("ann")));
            let page = store.list_batches(Some("ann"), Some(third), 1).await.unwrap();
            assert_eq!(page.iter().map(|b| b.counts.id).collect::<Vec<_>>(), vec![first], "continues below the cursor");
        }
    }

    #[tokio::test]
    async fn items_filter_by_status_and_code_and_failures_group_by_code() {
        for store in crate::store::tests::backends().await {
            let (id, items) = batch(&store, "ann", "a.example", 6).await;
            let (_, other) = batch(&store, "bob", "b.example", 2).await;
            for (i, code, msg) in [
                (0, "unknown_cmdlet", "The term 'Get-Nope' is not recognized"),
                (2, "unknown_cmdlet", "The term 'Get-Nope' is not recognized"),
                (3, "logon_failed", "Logon failed for the user 'x'"),
            ] {
                store.finish(items[i], &Outcome::failed(code, msg)).await.unwrap();
            }
            store
                .finish(other[0], &Outcome::failed("unknown_cmdlet", "The term 'Get-Other' is not recognized"))
                .await
                .unwrap();

            let failed = store.batch_items(id, Some(Status::Failed), None, -1, 100).await.unwrap();
            assert_eq!(failed.iter().map(|r| r.accepted.seq).collect::<Vec<_>>(), vec![0, 2, 3]);
            let unknown = store.batch_items(id, None, Some("unknown_cmdlet"), 0, 100).await.unwrap();
            assert_eq!(unknown.iter().map(|r| r.accepted.seq).collect::<Vec<_>>(), vec![2], "after seq 0");
            let queued = store.batch_items(id, Some(Status::Queued), None, -1, 2).await.unwrap();
            assert_eq!(queued.iter().map(|r| r.accepted.seq).collect::<Vec<_>>(), vec![1, 4], "limited");

            let everyone = store.failures(&FailureQuery::default()).await.unwrap();
            assert_eq!(
                everyone.iter().map(|g| (g.code.as_str(), g.count)).collect::<Vec<_>>(),
                vec![("unknown_cmdlet", 3), ("logon_failed", 1)]
            );
            let unknown = &everyone[0];
            assert_eq!(unknown.messages[0].message, "The term 'Get-Nope' is not recognized");
            assert_eq!((unknown.messages[0].count, unknown.messages[0].example), (2, items[2]));
            assert_eq!(unknown.tenant_count, 2);
            assert_eq!(unknown.tenants[0], TenantCount { tenant: "a.example".into(), count: 2 });

            let bobs = store.failures(&FailureQuery { owner: Some("bob".into()), ..Default::default() }).await.unwrap();
            assert_eq!(bobs.len(), 1);
            assert_eq!((bobs[0].count, bobs[0].messages.len()), (1, 1), "only bob's own failures");
            let later = FailureQuery { since_ms: Some(crate::store::now_ms() + 60_000), ..Default::default() };
            assert!(store.failures(&later).await.unwrap().is_empty(), "outside the window");
            let in_batch = store.failures(&FailureQuery { batch: Some(id), ..Default::default() }).await.unwrap();
            assert_eq!(in_batch.iter().map(|g| g.count).sum::<i64>(), 3);
        }
    }
}
