//! WAL checkpoints off the writers' path.
//!
//! SQLite copies its write-ahead log back into the database (a checkpoint) in the commit that
//! takes the log past 1,000 pages, by default: with the invocation path's small, frequent
//! commits that was every few dozen groups, and that commit paid the copy and an fsync (a
//! sixth of the committer's SQLite time, and its slowest commits); a batch's commit paid for
//! the whole batch's pages. In WAL mode a checkpoint may run beside the writer, so no writing
//! connection does one (`wal_autocheckpoint = 0`): this thread runs a PASSIVE checkpoint (it
//! never waits for the writer or the readers) on a connection of its own, when the committer
//! asks (every [`COMMITS_PER_CHECKPOINT`] commits) and at least every [`EVERY`] (what the other
//! writes, batches among them, added). A checkpoint that could not copy everything (a reader
//! still used old pages) is simply tried again next time.

use rusqlite::Connection;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

/// Commits between two checkpoint requests: a few hundred log pages.
pub(super) const COMMITS_PER_CHECKPOINT: u32 = 64;

/// The longest between two checkpoints: a PASSIVE checkpoint of a log with nothing new to copy
/// only reads the log's index.
const EVERY: Duration = Duration::from_secs(1);

/// The committer's side: counts its commits and asks for checkpoints.
pub(super) struct Checkpointer {
    ask: SyncSender<()>,
    commits: u32,
}

impl Checkpointer {
    /// Starts the checkpoint thread on `db` (a connection of its own to the same file).
    pub fn start(db: Connection) -> std::io::Result<Checkpointer> {
        // One request waiting is enough: the next checkpoint copies whatever is in the log.
        let (ask, asked) = sync_channel(1);
        std::thread::Builder::new().name("sqlite-checkpoint".into()).spawn(move || run(db, asked))?;
        Ok(Checkpointer { ask, commits: 0 })
    }

    /// After each commit of the committer's connection.
    pub fn committed(&mut self) {
        self.commits += 1;
        if self.commits >= COMMITS_PER_CHECKPOINT {
            self.commits = 0;
            // Full: a checkpoint is already asked for, which will cover these pages too.
            if let Err(TrySendError::Disconnected(())) = self.ask.try_send(()) {
                tracing::warn!("the WAL checkpoint thread has stopped; the log grows until the next restart");
            }
        }
    }
}

/// Checkpoints when asked and every [`EVERY`]; when the committer is gone (the store closed),
/// once more and stops.
fn run(db: Connection, asked: Receiver<()>) {
    while !matches!(asked.recv_timeout(EVERY), Err(RecvTimeoutError::Disconnected)) {
        checkpoint(&db);
    }
    checkpoint(&db);
}

fn checkpoint(db: &Connection) {
    let done = db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
    });
    match done {
        Ok((_, log, copied)) => tracing::trace!(log, copied, "WAL checkpoint"),
        Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; tried again after the next commits"),
    }
}
