//! Broker: caps, sessions and scheduling. No XML, no HTTP.

pub mod directory;
pub mod scheduler;
