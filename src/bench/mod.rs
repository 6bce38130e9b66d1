//! Benchmarks: commands that print figures (`psbroker bench …`), never timed unit tests.

pub mod api;
pub mod bulk;
pub mod chaos;
pub mod codec;
pub mod nodes;
pub mod scale;
pub mod transports;

use std::time::Duration;

pub use bulk::{bulk, BulkArgs};

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The value at quantile `q` (0..=1) of sorted samples.
pub(crate) fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
