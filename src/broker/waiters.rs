//! Who waits for which invocation to end. Each waiter is woken by its own invocation only: a
//! broadcast of every end to every waiter costs each end one wake-up per waiting caller, which
//! grows with the square of the callers waiting at once.

use dashmap::DashMap;
use std::sync::Arc;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Default)]
pub struct Waiters {
    /// Per invocation someone waits for: its signal and how many wait (the entry goes with the
    /// last of them).
    by_id: DashMap<Uuid, (Arc<Notify>, usize)>,
}

impl Waiters {
    /// Registers interest in `id`'s end. Register before reading the invocation's state, and
    /// arm the signal ([`Waiter::ended`]) before that read too, so an end between the read and
    /// the wait still wakes.
    pub fn watch(self: &Arc<Self>, id: Uuid) -> Waiter {
        let signal = {
            let mut entry = self.by_id.entry(id).or_insert_with(|| (Arc::new(Notify::new()), 0));
            entry.1 += 1;
            entry.0.clone()
        };
        Waiter { waiters: self.clone(), id, signal }
    }

    /// `id` ended (or may have): wakes whoever waits for it.
    pub fn ended(&self, id: Uuid) {
        if let Some(entry) = self.by_id.get(&id) {
            entry.0.notify_waiters();
        }
    }

    #[cfg(test)]
    fn watched(&self) -> usize {
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
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.waiters.by_id.remove_if_mut(&self.id, |_, entry| {
            entry.1 -= 1;
            entry.1 == 0
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
        waiters.ended(a);
        let quick = Duration::from_millis(200);
        assert!(tokio::time::timeout(quick, armed_first).await.is_ok(), "the first waiter of a wakes");
        assert!(tokio::time::timeout(quick, armed_second).await.is_ok(), "so does the second");
        assert!(tokio::time::timeout(quick, armed_other).await.is_err(), "b's waiter sleeps on");
        drop((first, second));
        assert_eq!(waiters.watched(), 1, "a is forgotten with its last waiter");
        drop(other);
        assert_eq!(waiters.watched(), 0);
    }
}
