//! Who waits for which invocation to end. Each waiter is woken by its own invocation only: a
//! broadcast of every end to every waiter costs each end one wake-up per waiting caller, which
//! grows with the square of the callers waiting at once.
//!
//! An end can carry the final record as the store committed it (the result's `UPDATE …
//! RETURNING`): then the waiter answers from it and does not read the row back. An end without
//! one (someone else ended it first, or the write failed) sends the waiter to the store.

use crate::store::InvocationRecord;
use dashmap::DashMap;
use std::sync::Arc;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Default)]
pub struct Waiters {
    /// Per invocation someone waits for (the entry goes with the last of them).
    by_id: DashMap<Uuid, Entry>,
}

struct Entry {
    signal: Arc<Notify>,
    /// How many wait.
    count: usize,
    /// The committed final record, once the end that brought it has happened.
    record: Option<Arc<InvocationRecord>>,
}

impl Waiters {
    /// Registers interest in `id`'s end. Register before reading the invocation's state, and
    /// arm the signal ([`Waiter::ended`]) before that read too, so an end between the read and
    /// the wait still wakes.
    pub fn watch(self: &Arc<Self>, id: Uuid) -> Waiter {
        let signal = {
            let mut entry = self.by_id.entry(id).or_insert_with(|| Entry {
                signal: Arc::new(Notify::new()),
                count: 0,
                record: None,
            });
            entry.count += 1;
            entry.signal.clone()
        };
        Waiter { waiters: self.clone(), id, signal }
    }

    /// Whether anyone waits for `id` (so its end is worth handing over with its record).
    pub fn watched(&self, id: Uuid) -> bool {
        self.by_id.contains_key(&id)
    }

    /// `id` ended (or may have): wakes whoever waits for it. `record`: its final record as
    /// committed, if the caller has it.
    pub fn ended(&self, id: Uuid, record: Option<InvocationRecord>) {
        if let Some(mut entry) = self.by_id.get_mut(&id) {
            if let Some(record) = record {
                entry.record = Some(Arc::new(record));
            }
            entry.signal.notify_waiters();
        }
    }

    #[cfg(test)]
    fn watched_count(&self) -> usize {
        self.by_id.len()
    }
}

/// One caller's interest in one invocation; dropping it forgets the interest.
pub struct Waiter {
    waiters: Arc<Waiters>,
    id: Uuid,
    signal: Arc<Notify>,
}

impl Waiter {
    /// A future that completes at the invocation's next end signal; it counts from this call
    /// (`enable` makes a signal sent before the first poll count too).
    pub fn ended(&self) -> std::pin::Pin<Box<Notified<'_>>> {
        let mut notified = Box::pin(self.signal.notified());
        notified.as_mut().enable();
        notified
    }

    /// The final record an end brought, if one did.
    pub fn record(&self) -> Option<Arc<InvocationRecord>> {
        self.waiters.by_id.get(&self.id).and_then(|e| e.record.clone())
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.waiters.by_id.remove_if_mut(&self.id, |_, entry| {
            entry.count -= 1;
            entry.count == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn an_end_wakes_its_own_waiters_only_even_if_it_came_before_the_wait() {
        let waiters = Arc::new(Waiters::default());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (first, second, other) = (waiters.watch(a), waiters.watch(a), waiters.watch(b));
        let (armed_first, armed_second, armed_other) = (first.ended(), second.ended(), other.ended());
        // The end arrives between the caller's read and its wait: the armed signal keeps it.
        waiters.ended(a, None);
        let quick = Duration::from_millis(200);
        assert!(tokio::time::timeout(quick, armed_first).await.is_ok(), "the first waiter of a wakes");
        assert!(tokio::time::timeout(quick, armed_second).await.is_ok(), "so does the second");
        assert!(tokio::time::timeout(quick, armed_other).await.is_err(), "b's waiter sleeps on");
        drop((first, second));
        assert_eq!(waiters.watched_count(), 1, "a is forgotten with its last waiter");
        drop(other);
        assert_eq!(waiters.watched_count(), 0);
    }

    #[tokio::test]
    async fn an_end_with_its_record_hands_it_to_the_waiter_and_only_while_watched() {
        let waiters = Arc::new(Waiters::default());
        let (id, unwatched) = (Uuid::new_v4(), Uuid::new_v4());
        let record = |id| {
            let mut accepted = crate::store::tests::item(None, "Get-User").accepted;
            accepted.id = id;
            InvocationRecord {
                accepted,
                owner: Some("tester".into()),
                status: crate::store::Status::Succeeded,
                attempts: 1,
                started_at: None,
                finished_at: None,
                session_id: None,
                admin_used: None,
                output: serde_json::json!([]),
                errors: serde_json::json!([]),
                warnings: serde_json::json!([]),
                error_code: None,
                error_message: None,
                request_id: None,
            }
        };
        let waiter = waiters.watch(id);
        assert!(waiters.watched(id) && !waiters.watched(unwatched));
        let armed = waiter.ended();
        assert!(waiter.record().is_none(), "no end yet");
        waiters.ended(id, Some(record(id)));
        assert!(tokio::time::timeout(Duration::from_millis(200), armed).await.is_ok());
        let got = waiter.record().expect("the end brought its record");
        assert_eq!((got.accepted.id, got.status), (id, crate::store::Status::Succeeded));
        // An end nobody waits for keeps nothing.
        waiters.ended(unwatched, Some(record(unwatched)));
        assert_eq!(waiters.watched_count(), 1);
        drop(waiter);
        assert_eq!(waiters.watched_count(), 0, "the record goes with the last waiter");
    }
}
