//! Taking in a batch: every item authorized and validated, all stored in one transaction, then
//! queued. Items come in chunks; each chunk's INSERT is handed to the store's writer (SQLite's
//! thread, or the PostgreSQL server) and, while it runs, the next chunk is parsed, authorized
//! and prepared here: the two overlap instead of taking turns. (Not a spawned task for the
//! write: tokio would keep it in this thread's LIFO slot, unstealable, until the preparing
//! task yields.) Nothing is stored unless every item passes: the first refusal or bad item
//! drops the transaction.

use super::request::InvocationRequest;
use super::scheduler::Job;
use super::{Broker, SubmitError};
use crate::auth::Principal;
use crate::store::{NewInvocation, StoreError};
use std::collections::HashSet;
use std::task::Poll;
use uuid::Uuid;

/// Items per chunk: one INSERT statement's worth (a chunk written in one statement is what
/// overlaps with preparing the next).
pub const BATCH_CHUNK: usize = crate::store::ROWS_PER_STATEMENT;

/// Why a batch was not taken: its items' source failed (`Source`: the API's parse error of an
/// item, say), or the broker refused it.
#[derive(Debug)]
pub enum BatchError<E> {
    Source(E),
    Submit(SubmitError),
}

impl<E> From<SubmitError> for BatchError<E> {
    fn from(e: SubmitError) -> Self {
        BatchError::Submit(e)
    }
}

impl<E> From<StoreError> for BatchError<E> {
    fn from(e: StoreError) -> Self {
        BatchError::Submit(e.into())
    }
}

/// A chunk ready to store: its rows, and the scheduler's job of each (queued if the row is new).
struct Prepared {
    rows: Vec<NewInvocation>,
    jobs: Vec<Job>,
}

impl Broker {
    /// [`Broker::submit_batch_chunks`] of a list already parsed. Returns the batch id and size.
    pub async fn submit_batch(
        &self,
        items: &[InvocationRequest],
        caller: &Principal,
    ) -> Result<(Uuid, usize), SubmitError> {
        let chunks = items.chunks(BATCH_CHUNK).map(|c| Ok::<_, std::convert::Infallible>(c.to_vec()));
        match self.submit_batch_chunks(items.len(), chunks, caller).await {
            Ok(id) => Ok((id, items.len())),
            Err(BatchError::Submit(e)) => Err(e),
            Err(BatchError::Source(never)) => match never {},
        }
    }

    /// Takes a batch of `total` items from `chunks` (in order; item indexes in errors count
    /// across chunks). Returns the batch id.
    pub async fn submit_batch_chunks<E>(
        &self,
        total: usize,
        mut chunks: impl Iterator<Item = Result<Vec<InvocationRequest>, E>>,
        caller: &Principal,
    ) -> Result<Uuid, BatchError<E>> {
        self.check_accepting()?;
        let batch = Uuid::now_v7();
        let mut tx = self.shared.store.begin_batch(batch, &caller.name, total).await?;
        let mut jobs = Vec::with_capacity(total);
        let mut next_index = 0;
        let mut ready: Option<Prepared> = None;
        loop {
            let mut prepare = || match chunks.next() {
                None => None,
                Some(Err(e)) => Some(Err(Refused::Source(e))),
                Some(Ok(items)) => Some(self.prepare_chunk(items, batch, &mut next_index, caller)),
            };
            let prepared = match ready.take() {
                None => prepare(),
                Some(Prepared { rows, jobs: chunk_jobs }) => {
                    // The write is started (its statement handed to the writer) before the next
                    // chunk is prepared here, and its answer collected after.
                    let write = tx.insert(&rows);
                    tokio::pin!(write);
                    let early = futures::poll!(&mut write);
                    let prepared = prepare();
                    let written = match early {
                        Poll::Ready(written) => written,
                        Poll::Pending => write.await,
                    };
                    let new: HashSet<Uuid> = written?.into_iter().collect();
                    let stored = rows.iter().zip(chunk_jobs).filter(|(n, _)| new.contains(&n.accepted.id));
                    jobs.extend(stored.map(|(n, job)| (job, n.accepted.redacted)));
                    prepared
                }
            };
            match prepared {
                None => break,
                Some(Ok(chunk)) => ready = Some(chunk),
                Some(Err(refused)) => {
                    // Rolled back before the refusal is audited: on SQLite the audit needs the
                    // writer this transaction holds.
                    drop(tx);
                    return Err(match refused {
                        Refused::Source(e) => BatchError::Source(e),
                        Refused::Item(e, None) => BatchError::Submit(e),
                        Refused::Item(e, Some(req)) => {
                            if let SubmitError::Forbidden { refusal, .. } = &e {
                                self.audit_refusal(caller, &req, refusal).await;
                            }
                            BatchError::Submit(e)
                        }
                    });
                }
            }
        }
        tx.commit().await?;
        self.enqueue(jobs);
        Ok(batch)
    }

    /// Authorizes, validates and renders one chunk; `next_index` is the batch index of its first
    /// item, moved past it.
    fn prepare_chunk<E>(
        &self,
        items: Vec<InvocationRequest>,
        batch: Uuid,
        next_index: &mut usize,
        caller: &Principal,
    ) -> Result<Prepared, Refused<E>> {
        let first = *next_index;
        *next_index += items.len();
        // Authorization first, for the whole chunk: a refusal is what a caller most needs to see.
        for (i, req) in items.iter().enumerate() {
            if let Err(refusal) = caller.authorize(&req.tenant, &req.cmdlet, &req.parameters) {
                let error = SubmitError::Forbidden { index: Some(first + i), refusal };
                return Err(Refused::Item(error, Some(Box::new(req.clone()))));
            }
        }
        let tuning = &self.shared.tuning;
        let mut prepared = Prepared { rows: Vec::with_capacity(items.len()), jobs: Vec::with_capacity(items.len()) };
        for (i, req) in items.iter().enumerate() {
            let mut valid = req
                .validate(&self.shared.directory, tuning.default_timeout_seconds)
                .map_err(|error| Refused::Item(SubmitError::InvalidItem { index: first + i, error }, None))?;
            // Batch items are batch work unless the caller says otherwise.
            valid.priority = req.priority.unwrap_or(super::Priority::Batch);
            let new = self.new_invocation(req, &valid, Some(batch), (first + i) as i64, caller);
            prepared.jobs.push(self.job(&new, valid));
            prepared.rows.push(new);
        }
        Ok(prepared)
    }
}

/// Why preparing a chunk stopped: the source's own error, or an item refused (with the request
/// when the refusal is audited).
enum Refused<E> {
    Source(E),
    Item(SubmitError, Option<Box<InvocationRequest>>),
}
