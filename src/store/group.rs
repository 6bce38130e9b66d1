//! Group commit: the hot writes of the invocation path (inserts, claims, results, audit
//! appends) go to one task, which takes whatever is queued at that moment and commits it as ONE
//! transaction, then answers each caller with its own result. SQLite has a single writer, and
//! the cost per write is mostly per commit (and, through sqlx, per statement), not per row: on
//! SQLite the group runs in one go on the committer's own connection ([`super::sqlite_group`]);
//! on PostgreSQL with one multi-row statement per kind of write ([`apply`]).
//!
//! Semantics are those of the one-statement-per-call path it replaces:
//! - a caller is answered only after its write is committed (a claim is durable before the
//!   command it guards runs);
//! - the writes of one group were all pending at once (no caller had its answer), so any order
//!   among them is a valid serialization; the group applies inserts, then claims, then results,
//!   then audit records. Two claims (or two results) of the same id in one group: the first
//!   queued is tried, the later ones lose — exactly what running them one after the other does,
//!   because nothing in a group turns a claimed or final row back into a claimable or open one;
//! - no timer: the task waits for the first request, takes what else is queued right now, and
//!   commits. Groups form by themselves while the previous commit runs;
//! - if a group fails, it is rolled back and each of its writes is retried alone, so an error
//!   reaches only the callers it belongs to.
//!
//! Other writes (batches, cancellation, tokens, sessions) use the writer pool directly; the
//! task holds the single writer connection only while it commits a group. On PostgreSQL the
//! same saves a commit (a WAL flush) per write just as well, and a few such tasks commit
//! groups side by side ([`POSTGRES_WRITERS`]).
//!
//! A result's statement can hand back the final record it wrote (`RETURNING`), for a caller
//! waiting for that end ([`Store::finish_returning`]): the waiter then reads nothing.
//!
//! This module is where the queue's and the audit's SQL meet (a result and its audit record
//! are one transaction); neither of them knows about it.

use super::audit;
use super::db::{uuid_text, Cols, Conn, Pool};
use super::queue::{insert_rows, record, replay_in, COLUMNS};
use super::{now_ms, AuditEntry, Inserted, InvocationRecord, NewInvocation, Outcome, Store, StoreError};
use sqlx::{PgConnection, QueryBuilder};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// The most writes committed in one group (keeps statements well under SQLite's bound
/// parameter limit: an insert row binds 19 values).
const MAX_GROUP: usize = 256;

/// One write of the invocation path, with its values already rendered.
pub(super) enum Op {
    Insert(Box<NewInvocation>),
    Claim { id: Uuid, attempt: i64, at: i64, session: String, admin: String, node: Option<String> },
    Finish(Box<Finish>),
    Audit(Box<AuditEntry>),
}

pub(super) struct Finish {
    pub id: Uuid,
    pub at: i64,
    pub status: &'static str,
    pub output: String,
    pub errors: String,
    pub warnings: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub request_id: Option<String>,
    /// Answer with the final record as committed (someone waits for it and need not read it).
    pub want_record: bool,
}

impl Finish {
    pub fn new(id: Uuid, at: i64, outcome: &Outcome, want_record: bool) -> Finish {
        Finish {
            id,
            at,
            want_record,
            status: outcome.status.as_str(),
            output: outcome.output.to_string(),
            errors: outcome.errors.to_string(),
            warnings: outcome.warnings.to_string(),
            error_code: outcome.error_code.clone(),
            error_message: outcome.error_message.clone(),
            request_id: outcome.request_id.clone(),
        }
    }
}

/// What one write did.
#[derive(Debug)]
pub(super) enum Done {
    Inserted(Inserted),
    /// The claim won / the result ended the invocation.
    Changed(bool),
    /// The result ended the invocation; here is its final record, if it was asked for.
    Ended(Option<Box<InvocationRecord>>),
    Appended,
}

impl Done {
    pub fn changed(self) -> bool {
        matches!(self, Done::Changed(true) | Done::Ended(_))
    }
}

pub(super) type Answer = Result<Done, StoreError>;

struct Request {
    op: Op,
    reply: oneshot::Sender<Answer>,
}

/// The handle [`super::Store`] holds; the task stops when the last handle is dropped.
#[derive(Clone)]
pub(super) struct GroupWriter {
    queue: mpsc::UnboundedSender<Request>,
    stats: Arc<Counters>,
    committers: usize,
}

/// What the committers did so far: the tests read `groups` to see that concurrent writes were
/// committed together; `bench api` reads all three to say where a request's time goes.
#[derive(Default)]
struct Counters {
    /// Groups committed (one transaction, or one autocommit statement, each).
    groups: AtomicU64,
    writes: AtomicU64,
    /// Time spent committing (from the first statement to the answers), summed over committers.
    busy_ns: AtomicU64,
}

/// [`Counters`] as read at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriterStats {
    pub groups: u64,
    pub writes: u64,
    pub busy: std::time::Duration,
}

/// Groups committed at once on PostgreSQL. SQLite has one writer, so one group at a time; on
/// PostgreSQL each commit waits for its WAL flush, and a commit in flight while the next group
/// forms lets those flushes overlap (the server merges concurrent flushes). Concurrent groups
/// are safe for the same reason several nodes on one database are: every write is one
/// conditional statement under row locks (a claim or a result re-checks the status it
/// expects after waiting for a concurrent one), and inserts resolve key conflicts in the
/// statement. A deadlock between two groups (an id in both, locked in opposite orders) fails
/// one of them, whose writes are then retried one by one like any failed group.
const POSTGRES_WRITERS: usize = 4;

impl GroupWriter {
    /// `sqlite`: on SQLite, the connection the (single) committer writes on.
    pub fn spawn(pool: Pool, sqlite: Option<super::sqlite_group::SqliteCommitter>) -> GroupWriter {
        let (queue, requests) = mpsc::unbounded_channel();
        let stats = Arc::new(Counters::default());
        let requests = Arc::new(tokio::sync::Mutex::new(requests));
        let committers = match pool {
            Pool::Sqlite(_) => {
                let sqlite = sqlite.expect("SQLite's committer writes on a connection of its own");
                tokio::spawn(run(pool, Some(sqlite), requests, stats.clone()));
                1
            }
            Pool::Postgres(_) => {
                for _ in 0..POSTGRES_WRITERS {
                    tokio::spawn(run(pool.clone(), None, requests.clone(), stats.clone()));
                }
                POSTGRES_WRITERS
            }
        };
        GroupWriter { queue, stats, committers }
    }

    #[cfg(test)]
    pub fn groups(&self) -> u64 {
        self.stats.groups.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> WriterStats {
        WriterStats {
            groups: self.stats.groups.load(Ordering::Relaxed),
            writes: self.stats.writes.load(Ordering::Relaxed),
            busy: std::time::Duration::from_nanos(self.stats.busy_ns.load(Ordering::Relaxed)),
        }
    }

    /// Queues one write and waits until the group holding it is committed.
    pub async fn write(&self, op: Op) -> Answer {
        self.queue_now(op).await
    }

    /// Queues one write at once (not when first polled: writes queued one after the other are
    /// committed in that order on SQLite); the future answers once its group is committed. Dropped
    /// before that, the write is not made (unless its group is already being committed).
    pub fn queue_now(&self, op: Op) -> impl std::future::Future<Output = Answer> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let queued = self.queue.send(Request { op, reply });
        async move {
            queued.map_err(|_| StoreError::WriterStopped)?;
            answer.await.map_err(|_| StoreError::WriterStopped)?
        }
    }

    /// Whether writes are committed in the order they were queued: one committer (SQLite).
    pub fn in_order(&self) -> bool {
        self.committers == 1
    }
}

/// One committer: takes what is queued (the queue is shared by the committers, one takes at a
/// time), commits it, answers, again.
async fn run(
    pool: Pool,
    mut sqlite: Option<super::sqlite_group::SqliteCommitter>,
    requests: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Request>>>,
    stats: Arc<Counters>,
) {
    let mut group: Vec<Request> = Vec::new();
    loop {
        {
            let mut requests = requests.lock().await;
            let first = match requests.try_recv() {
                Ok(first) => first,
                Err(_) => {
                    // Nothing to write: the other writers may go while this one waits.
                    if let Some(sqlite) = sqlite.as_mut() {
                        sqlite.yield_turn();
                    }
                    let Some(first) = requests.recv().await else { return };
                    first
                }
            };
            group.push(first);
            while group.len() < MAX_GROUP {
                match requests.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
        }
        // A caller that stopped waiting (its request was dropped) gets nothing written: the same
        // as dropping a statement's future before it was sent.
        group.retain(|r| !r.reply.is_closed());
        if group.is_empty() {
            continue;
        }
        let (ops, replies): (Vec<Op>, Vec<_>) = group.drain(..).map(|r| (r.op, r.reply)).unzip();
        let started = std::time::Instant::now();
        let answers = match commit(&pool, sqlite.as_mut(), &ops).await {
            Ok(answers) => answers,
            Err(e) if ops.len() == 1 => vec![Err(e)],
            Err(e) => {
                tracing::warn!(writes = ops.len(), error = %e, "group commit failed; committing its writes one by one");
                let mut answers = Vec::with_capacity(ops.len());
                for op in &ops {
                    answers.push(match commit(&pool, sqlite.as_mut(), std::slice::from_ref(op)).await {
                        Ok(mut one) => one.pop().expect("one answer per write"),
                        Err(e) => Err(e),
                    });
                }
                answers
            }
        };
        stats.groups.fetch_add(1, Ordering::Relaxed);
        stats.writes.fetch_add(replies.len() as u64, Ordering::Relaxed);
        for (reply, answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
        stats.busy_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Applies `ops` and commits them together: all are written, or none.
async fn commit(
    pool: &Pool,
    sqlite: Option<&mut super::sqlite_group::SqliteCommitter>,
    ops: &[Op],
) -> Result<Vec<Answer>, StoreError> {
    // One statement alone needs no BEGIN/COMMIT (autocommit is atomic); a result needs its audit
    // record in the same transaction.
    let single_statement = matches!(ops, [Op::Claim { .. }] | [Op::Audit(_)] | [Op::Insert(_)]);
    let p = match pool {
        Pool::Sqlite(p) => {
            let committer = sqlite.expect("SQLite's committer has its connection");
            return committer.commit(p, ops, single_statement).await;
        }
        Pool::Postgres(p) => p,
    };
    if single_statement {
        let mut conn = p.acquire().await?;
        return apply(&mut conn, ops).await;
    }
    let mut tx = p.begin().await?;
    match apply(&mut tx, ops).await {
        Ok(answers) => {
            tx.commit().await?;
            Ok(answers)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// Runs the writes of a group on PostgreSQL (SQLite's run in [`super::sqlite_group`]), one
/// multi-row statement per kind; `Err` means the group must not be committed. A caller's own
/// refusal (an idempotency key reused for another request) is its answer, not the group's error.
async fn apply(pg: &mut PgConnection, ops: &[Op]) -> Result<Vec<Answer>, StoreError> {
    let mut answers: Vec<Option<Answer>> = (0..ops.len()).map(|_| None).collect();

    let inserts: Vec<(usize, &NewInvocation)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            Op::Insert(new) => Some((i, &**new)),
            _ => None,
        })
        .collect();
    if !inserts.is_empty() {
        let stored: HashSet<Uuid> =
            insert_rows(&mut Conn::from(&mut *pg), inserts.iter().map(|(_, n)| *n)).await?.into_iter().collect();
        for (i, new) in inserts {
            answers[i] = Some(if stored.contains(&new.accepted.id) {
                Ok(Done::Inserted(Inserted::New))
            } else {
                match replay_in(&mut Conn::from(&mut *pg), new).await {
                    Ok(record) => Ok(Done::Inserted(Inserted::Existing(Box::new(record)))),
                    Err(e @ StoreError::IdempotencyConflict(_)) => Err(e),
                    Err(e) => return Err(e),
                }
            });
        }
    }

    // Claims: one UPDATE … FROM (VALUES …) for the first claim of each id.
    let claims = claims(ops);
    if !claims.candidates.is_empty() {
        let won = {
            let mut qb = QueryBuilder::new(
                "UPDATE invocations SET status = 'running', attempts = v.column2, started_at = v.column3, \
             session_id = v.column4, admin_used = v.column5, node = v.column6 FROM (",
            );
            values(&mut qb, &claims.candidates, |b, op| {
                if let Op::Claim { id, attempt, at, session, admin, node } = op {
                    b.push_bind(id.to_string())
                        .push_bind(*attempt)
                        .push_bind(*at)
                        .push_bind(session.clone())
                        .push_bind(admin.clone())
                        .push_bind(node.clone());
                }
            });
            qb.push(") AS v WHERE invocations.id = v.column1 AND invocations.status = 'queued' RETURNING id");
            returned_ids(qb.build().fetch_all(&mut *pg).await?)?
        };
        claims.answer(&mut answers, &won);
    }

    // Results: one UPDATE for the first result of each id, then one audit INSERT for those that
    // ended (an ended invocation has exactly one audit record, in the same transaction).
    let finishes = finishes(ops);
    if !finishes.candidates.is_empty() {
        // The final records come back from the same statement, for the results someone waits for.
        let want_records = finishes.candidates.iter().any(|(_, op)| matches!(op, Op::Finish(f) if f.want_record));
        let returning = if want_records { COLUMNS } else { "id" };
        let ended = {
            let mut qb = QueryBuilder::new(
                "UPDATE invocations SET status = v.column2, finished_at = v.column3, output = v.column4, \
             errors = v.column5, warnings = v.column6, error_code = v.column7, error_message = v.column8, \
             request_id = v.column9 FROM (",
            );
            values(&mut qb, &finishes.candidates, |b, op| {
                if let Op::Finish(f) = op {
                    b.push_bind(f.id.to_string())
                        .push_bind(f.status)
                        .push_bind(f.at)
                        .push_bind(f.output.clone())
                        .push_bind(f.errors.clone())
                        .push_bind(f.warnings.clone())
                        .push_bind(f.error_code.clone())
                        .push_bind(f.error_message.clone())
                        .push_bind(f.request_id.clone());
                }
            });
            qb.push(
                ") AS v WHERE invocations.id = v.column1 AND invocations.status IN ('queued', 'running') RETURNING ",
            );
            qb.push(returning);
            let rows = qb.build().fetch_all(&mut *pg).await?;
            if want_records {
                rows.iter()
                    .map(|r| record(r).map(|r| (r.accepted.id, Some(r))))
                    .collect::<Result<HashMap<_, _>, _>>()?
            } else {
                returned_ids(rows)?.into_iter().map(|id| (id, None)).collect()
            }
        };
        if !ended.is_empty() {
            let ids: Vec<Uuid> = ended.keys().copied().collect();
            audit::audit_finished(&mut Conn::from(&mut *pg), &ids).await?;
        }
        finishes.answer_ended(&mut answers, ended);
    }

    let audits = audits(ops);
    if !audits.is_empty() {
        audit::insert_audit(&mut Conn::from(&mut *pg), audits.iter().map(|(_, e)| *e)).await?;
        for (i, _) in audits {
            answers[i] = Some(Ok(Done::Appended));
        }
    }

    Ok(answers.into_iter().map(|a| a.expect("every write is answered")).collect())
}

/// The writes of one kind in a group: those tried (first of their id) and the later duplicates,
/// which lose whatever the first did (a claimed or final row cannot be claimed or ended again).
pub(super) struct Candidates<'a> {
    pub candidates: Vec<(usize, &'a Op)>,
    duplicates: Vec<usize>,
    ids: Vec<Uuid>,
}

impl Candidates<'_> {
    pub fn answer(&self, answers: &mut [Option<Answer>], changed: &HashSet<Uuid>) {
        for ((i, _), id) in self.candidates.iter().zip(&self.ids) {
            answers[*i] = Some(Ok(Done::Changed(changed.contains(id))));
        }
        for i in &self.duplicates {
            answers[*i] = Some(Ok(Done::Changed(false)));
        }
    }

    /// [`Candidates::answer`] for results: those that ended get their record if they asked.
    pub fn answer_ended(&self, answers: &mut [Option<Answer>], mut ended: HashMap<Uuid, Option<InvocationRecord>>) {
        for ((i, op), id) in self.candidates.iter().zip(&self.ids) {
            let wanted = matches!(op, Op::Finish(f) if f.want_record);
            answers[*i] = Some(Ok(match ended.remove(id) {
                Some(record) => Done::Ended(record.filter(|_| wanted).map(Box::new)),
                None => Done::Changed(false),
            }));
        }
        for i in &self.duplicates {
            answers[*i] = Some(Ok(Done::Changed(false)));
        }
    }
}

/// The group's claims: the first of each id tried, later ones lose.
pub(super) fn claims(ops: &[Op]) -> Candidates<'_> {
    first_of_each_id(ops, |op| match op {
        Op::Claim { id, .. } => Some(*id),
        _ => None,
    })
}

/// The group's results: the first of each id tried, later ones lose.
pub(super) fn finishes(ops: &[Op]) -> Candidates<'_> {
    first_of_each_id(ops, |op| match op {
        Op::Finish(f) => Some(f.id),
        _ => None,
    })
}

/// The group's audit appends, with their places in the group.
pub(super) fn audits(ops: &[Op]) -> Vec<(usize, &AuditEntry)> {
    ops.iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            Op::Audit(e) => Some((i, &**e)),
            _ => None,
        })
        .collect()
}

fn first_of_each_id(ops: &[Op], id_of: impl Fn(&Op) -> Option<Uuid>) -> Candidates<'_> {
    let mut seen = HashSet::new();
    let mut c = Candidates { candidates: Vec::new(), duplicates: Vec::new(), ids: Vec::new() };
    for (i, op) in ops.iter().enumerate() {
        if let Some(id) = id_of(op) {
            if seen.insert(id) {
                c.candidates.push((i, op));
                c.ids.push(id);
            } else {
                c.duplicates.push(i);
            }
        }
    }
    c
}

/// `VALUES (…), (…)` of the candidates (columns `column1`, `column2`, … in both SQLite and
/// PostgreSQL).
fn values<'q, DB: sqlx::Database>(
    qb: &mut QueryBuilder<'q, DB>,
    rows: &[(usize, &Op)],
    mut push: impl FnMut(&mut sqlx::query_builder::Separated<'_, 'q, DB, &'static str>, &Op),
) {
    qb.push("VALUES ");
    for (n, (_, op)) in rows.iter().enumerate() {
        if n > 0 {
            qb.push(", ");
        }
        qb.push("(");
        let mut row = qb.separated(", ");
        push(&mut row, op);
        qb.push(")");
    }
}

fn returned_ids(rows: Vec<impl Cols>) -> Result<HashSet<Uuid>, StoreError> {
    rows.iter().map(|r| Ok(uuid_text(&r.col::<String>("id")?)?)).collect()
}

/// The writes committed in groups, as the rest of the daemon sees them.
impl Store {
    pub async fn insert_invocation(&self, new: &NewInvocation) -> Result<Inserted, StoreError> {
        match self.group.write(Op::Insert(Box::new(new.clone()))).await? {
            Done::Inserted(inserted) => Ok(inserted),
            other => unreachable!("an insert answered {other:?}"),
        }
    }

    /// Claims a queued invocation for a session. False if it is no longer queued (cancelled).
    /// Queued for the committer when called (`GroupWriter::queue_now`).
    pub fn mark_running(
        &self,
        id: Uuid,
        attempt: u32,
        session: &str,
        admin: &str,
    ) -> impl std::future::Future<Output = Result<bool, StoreError>> + Send + 'static {
        let claim = Op::Claim {
            id,
            attempt: attempt as i64,
            at: now_ms(),
            session: session.to_string(),
            admin: admin.to_string(),
            node: self.node.as_deref().map(str::to_string),
        };
        let answer = self.group.queue_now(claim);
        async move { answer.await.map(Done::changed) }
    }

    /// Whether the invocation path's writes commit in the order they were queued (SQLite's one
    /// committer): a result queued after its claim then cannot overtake it.
    pub fn writes_in_order(&self) -> bool {
        self.group.in_order()
    }

    /// Records the end of an invocation that is not already final, and appends its audit record
    /// in the same transaction (so an ended invocation always has one, and only one).
    pub async fn finish(&self, id: Uuid, outcome: &Outcome) -> Result<bool, StoreError> {
        let finish = Finish::new(id, now_ms(), outcome, false);
        self.group.write(Op::Finish(Box::new(finish))).await.map(Done::changed)
    }

    /// [`Store::finish`], answering with the final record as committed when this result ended
    /// the invocation (`None`: it was already final). Read from the statement that wrote it, so
    /// whoever waits for the end need not read the row back.
    pub async fn finish_returning(&self, id: Uuid, outcome: &Outcome) -> Result<Option<InvocationRecord>, StoreError> {
        let finish = Finish::new(id, now_ms(), outcome, true);
        match self.group.write(Op::Finish(Box::new(finish))).await? {
            Done::Ended(record) => Ok(record.map(|r| *r)),
            Done::Changed(false) => Ok(None),
            other => unreachable!("a result answered {other:?}"),
        }
    }

    /// Appends one audit record (a request refused by authorization; ended invocations are
    /// audited by [`Store::finish`]).
    pub async fn audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        self.group.write(Op::Audit(Box::new(e.clone()))).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::super::db::on;
    use super::super::tests::item;
    use super::super::{Status, Store};
    use super::*;
    use futures::future::join_all;

    async fn audit_rows(store: &Store) -> i64 {
        on!(&store.writer, pool => {
            sqlx::query("SELECT COUNT(*) AS n FROM audit").fetch_one(pool).await.unwrap().col("n").unwrap()
        })
    }

    fn entry(cmdlet: &str) -> AuditEntry {
        AuditEntry::refused_for_test(1, "t", cmdlet)
    }

    #[tokio::test]
    async fn concurrent_claims_of_one_id_in_one_group_exactly_one_wins() {
        for store in crate::store::tests::backends().await {
            let new = item(None, "Set-Mailbox");
            store.insert_invocation(&new).await.unwrap();
            let id = new.accepted.id;
            let before = store.group.groups();
            let sessions: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
            let claims = join_all(sessions.iter().map(|s| store.mark_running(id, 1, s, "admin"))).await;
            assert_eq!(store.group.groups() - before, 1, "the twenty claims were committed as one group");
            let won: Vec<usize> =
                claims.iter().enumerate().filter(|(_, c)| *c.as_ref().unwrap()).map(|(i, _)| i).collect();
            assert_eq!(won, vec![0], "exactly one claim wins: the first queued");
            let r = store.get(id).await.unwrap().unwrap();
            assert_eq!((r.status, r.session_id.as_deref(), r.attempts), (Status::Running, Some("s0"), 1));
        }
    }

    #[tokio::test]
    async fn one_group_mixes_inserts_claims_results_and_audits() {
        for store in crate::store::tests::backends().await {
            let items: Vec<_> = (0..4).map(|_| item(None, "Get-User")).collect();
            for new in &items[..3] {
                store.insert_invocation(new).await.unwrap();
            }
            let [a, b, c, d] = [0, 1, 2, 3].map(|i| items[i].accepted.id);
            assert!(store.mark_running(a, 1, "s", "x").await.unwrap());
            let ok = Outcome::failed("x", "y");
            let keyed = item(Some("k"), "Get-Group");
            let replay = item(Some("k"), "Get-Group");
            let conflict = item(Some("k"), "Remove-Group");
            let (late, secret) = (Outcome::failed("late", "loses"), entry("Get-Secret"));
            let before = (store.group.groups(), audit_rows(&store).await);
            let (d_new, keyed_new, replayed, conflicted, fin_a, fin_a_again, claim_a, claim_b, claim_c, fin_c, audited) = tokio::join!(
                store.insert_invocation(&items[3]),
                store.insert_invocation(&keyed),
                store.insert_invocation(&replay),
                store.insert_invocation(&conflict),
                store.finish(a, &ok),
                store.finish(a, &late),
                store.mark_running(a, 2, "s", "x"),
                store.mark_running(b, 1, "s", "x"),
                store.mark_running(c, 1, "s", "x"),
                store.finish(c, &ok),
                store.audit(&secret),
            );
            assert_eq!(store.group.groups() - before.0, 1, "everything was one group");
            assert!(matches!(d_new.unwrap(), Inserted::New));
            assert!(matches!(keyed_new.unwrap(), Inserted::New));
            match replayed.unwrap() {
                Inserted::Existing(r) => assert_eq!(r.accepted.id, keyed.accepted.id, "a replay within the group"),
                other => panic!("expected a replay, got {other:?}"),
            }
            assert!(matches!(conflicted, Err(StoreError::IdempotencyConflict(_))), "a refusal is that caller's alone");
            assert!(fin_a.unwrap(), "the running one ends");
            assert!(!fin_a_again.unwrap(), "final stays final, within a group too");
            assert!(!claim_a.unwrap(), "a running one cannot be claimed");
            assert!(claim_b.unwrap() && claim_c.unwrap());
            assert!(fin_c.unwrap(), "claimed then ended in the same group");
            audited.unwrap();
            assert_eq!(
                audit_rows(&store).await - before.1,
                3,
                "one record per ended invocation, plus the appended one"
            );
            let status = |id| {
                let store = store.clone();
                async move { store.get(id).await.unwrap().unwrap().status }
            };
            assert_eq!(
                [status(a).await, status(b).await, status(c).await, status(d).await],
                [Status::Failed, Status::Running, Status::Failed, Status::Queued]
            );
            let a_row = store.get(a).await.unwrap().unwrap();
            assert_eq!(a_row.error_code.as_deref(), Some("x"), "the first result is the one kept");
        }
    }

    /// What lets the runner queue a read's result without waiting for its claim's commit.
    #[tokio::test]
    async fn on_one_committer_a_result_queued_after_its_claim_never_overtakes_it() {
        for store in crate::store::tests::backends().await {
            if !store.writes_in_order() {
                assert!(store.writer.is_postgres(), "several committers: no order between groups");
                continue;
            }
            let ok = Outcome::succeeded(serde_json::json!([]));
            for _ in 0..50 {
                let new = item(None, "Get-User");
                store.insert_invocation(&new).await.unwrap();
                let id = new.accepted.id;
                // Queued when called; not awaited until the result is in.
                let claim = store.mark_running(id, 1, "s1", "alice");
                let ended = store.finish_returning(id, &ok).await.unwrap().expect("the result ended it");
                assert!(claim.await.unwrap(), "the claim was applied first");
                assert_eq!((ended.attempts, ended.session_id.as_deref()), (1, Some("s1")));
                assert!(ended.started_at.is_some() && ended.status == Status::Succeeded);
            }
        }
    }

    #[tokio::test]
    async fn a_result_hands_back_the_record_it_committed_once() {
        for store in crate::store::tests::backends().await {
            let (waited, unwaited) = (item(None, "Get-User"), item(None, "Get-Group"));
            for new in [&waited, &unwaited] {
                store.insert_invocation(new).await.unwrap();
                assert!(store.mark_running(new.accepted.id, 1, "s1", "alice").await.unwrap());
            }
            let ok = Outcome::succeeded(serde_json::json!([{"Name": "a"}]));
            let before = audit_rows(&store).await;
            // In one group: one result wants its record, the other does not.
            let (got, plain) =
                tokio::join!(store.finish_returning(waited.accepted.id, &ok), store.finish(unwaited.accepted.id, &ok));
            let got = got.unwrap().expect("the result ended it");
            assert!(plain.unwrap());
            assert_eq!(audit_rows(&store).await - before, 2, "each audited in the same transaction");
            let stored = store.get(waited.accepted.id).await.unwrap().unwrap();
            assert_eq!(
                (got.status, got.attempts, got.session_id.as_deref(), &got.output, got.finished_at),
                (Status::Succeeded, 1, Some("s1"), &stored.output, stored.finished_at),
                "the record as committed"
            );
            assert_eq!(got.accepted.cmdlet, "Get-User");
            assert!(store.finish_returning(waited.accepted.id, &ok).await.unwrap().is_none(), "final stays final");
        }
    }

    #[tokio::test]
    async fn a_failed_write_fails_alone_and_does_not_poison_the_next_group() {
        for store in crate::store::tests::backends().await {
            let poison_trigger: &[&str] = if store.writer.is_postgres() {
                &[
                    "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 IF NEW.cmdlet = 'Poison' THEN RAISE EXCEPTION 'poisoned audit record'; END IF; RETURN NEW; END $$",
                    "CREATE TRIGGER poison BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION poison()",
                ]
            } else {
                // Not TEMP: the committer writes on a connection of its own.
                &["CREATE TRIGGER poison BEFORE INSERT ON audit WHEN NEW.cmdlet = 'Poison' \
               BEGIN SELECT RAISE(ABORT, 'poisoned audit record'); END"]
            };
            for statement in poison_trigger {
                on!(&store.writer, pool => {
                    sqlx::query(statement).execute(pool).await.unwrap();
                });
            }
            let items: Vec<_> = (0..3).map(|_| item(None, "Get-User")).collect();
            for new in &items {
                store.insert_invocation(new).await.unwrap();
            }
            let [a, b, c] = [0, 1, 2].map(|i| items[i].accepted.id);
            let (poison, fine, failed) = (entry("Poison"), entry("Get-Fine"), Outcome::failed("x", "y"));
            let (poisoned, fine_done, claim_a, fin_b) = tokio::join!(
                store.audit(&poison),
                store.audit(&fine),
                store.mark_running(a, 1, "s", "x"),
                store.finish(b, &failed),
            );
            let err = poisoned.unwrap_err().to_string();
            assert!(err.contains("poisoned audit record"), "{err}");
            fine_done.unwrap();
            assert!(claim_a.unwrap() && fin_b.unwrap(), "the others in the group were committed");
            assert_eq!(audit_rows(&store).await, 2, "the fine record and b's, each once");
            // The next group works as usual.
            let (claim_c, again) = tokio::join!(store.mark_running(c, 1, "s", "x"), store.audit(&fine));
            assert!(claim_c.unwrap());
            again.unwrap();
            assert_eq!(audit_rows(&store).await, 3);
            assert_eq!(store.get(a).await.unwrap().unwrap().status, Status::Running);
        }
    }
}
