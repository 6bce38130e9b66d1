//! Fault injection: the simulated service misbehaving on purpose, at configured rates.
//!
//! One seeded random sequence decides every fault, so a run with one client in one order is
//! reproducible; with concurrent clients the sequence is the same and its assignment to requests
//! follows their arrival. Every injected fault is counted by kind, and the faults that hit a
//! request naming a pipeline (CommandId = the broker's invocation id) are remembered per pipeline,
//! so a test can tell which invocations had their outcome hidden and how.

use crate::config::FaultConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use uuid::Uuid;

/// What kind of fault was injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The connection closed before the request was processed.
    DropBefore,
    /// The request was processed, then the connection closed: the answer is lost.
    DropAfter,
    /// HTTP 500 with a bare body (processed or not).
    Http500,
    /// HTTP 503 with `Retry-After`: not processed.
    Http503,
    /// HTTP 429 with `Retry-After`: not processed.
    Http429,
    /// The answer came late (after processing).
    LatencySpike,
    /// The shell was forgotten before its lifetime; the request got shell-not-found.
    ShellExpiry,
    /// Create refused with the per-user quota fault under the cap.
    UserQuota,
    /// Create refused with the per-tenant quota fault under the cap.
    TenantQuota,
    /// Create refused by budget throttling.
    Throttle,
}

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::DropBefore,
        FaultKind::DropAfter,
        FaultKind::Http500,
        FaultKind::Http503,
        FaultKind::Http429,
        FaultKind::LatencySpike,
        FaultKind::ShellExpiry,
        FaultKind::UserQuota,
        FaultKind::TenantQuota,
        FaultKind::Throttle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::DropBefore => "drop_before",
            FaultKind::DropAfter => "drop_after",
            FaultKind::Http500 => "http_500",
            FaultKind::Http503 => "http_503",
            FaultKind::Http429 => "http_429",
            FaultKind::LatencySpike => "latency_spike",
            FaultKind::ShellExpiry => "shell_expiry",
            FaultKind::UserQuota => "user_quota",
            FaultKind::TenantQuota => "tenant_quota",
            FaultKind::Throttle => "throttle",
        }
    }

    /// A refusal of a Create (drawn per Create), as opposed to a fault of any request.
    pub fn refuses_create(self) -> bool {
        matches!(self, FaultKind::UserQuota | FaultKind::TenantQuota | FaultKind::Throttle)
    }
}

/// A fault on one HTTP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFault {
    DropBefore,
    DropAfter,
    /// `processed`: the server did the work before failing.
    Http500 {
        processed: bool,
    },
    Http503 {
        retry_after_seconds: u64,
    },
    Http429 {
        retry_after_seconds: u64,
    },
    LatencySpike(Duration),
}

impl RequestFault {
    pub fn kind(self) -> FaultKind {
        match self {
            RequestFault::DropBefore => FaultKind::DropBefore,
            RequestFault::DropAfter => FaultKind::DropAfter,
            RequestFault::Http500 { .. } => FaultKind::Http500,
            RequestFault::Http503 { .. } => FaultKind::Http503,
            RequestFault::Http429 { .. } => FaultKind::Http429,
            RequestFault::LatencySpike(_) => FaultKind::LatencySpike,
        }
    }

    /// Whether the server does the request's work.
    pub fn processes(self) -> bool {
        !matches!(
            self,
            RequestFault::DropBefore
                | RequestFault::Http503 { .. }
                | RequestFault::Http429 { .. }
                | RequestFault::Http500 { processed: false }
        )
    }
}

/// A refusal of a shell creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateFault {
    UserQuota,
    TenantQuota,
    Throttle { wait_seconds: u64 },
}

/// The dice and the tally.
#[derive(Debug)]
pub(crate) struct Injector {
    config: FaultConfig,
    rng: StdRng,
    counts: BTreeMap<FaultKind, u64>,
    by_pipeline: HashMap<Uuid, Vec<FaultKind>>,
    /// Requests and Creates the dice were asked about (with or without a fault).
    requests: u64,
    creates: u64,
}

impl Injector {
    pub fn new(config: FaultConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Self { config, rng, counts: BTreeMap::new(), by_pipeline: HashMap::new(), requests: 0, creates: 0 }
    }

    /// New rates (and a new sequence from the new seed); what was counted stays.
    pub fn configure(&mut self, config: FaultConfig) {
        self.rng = StdRng::seed_from_u64(config.seed);
        self.config = config;
    }

    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    fn applies(&self, action: &str) -> bool {
        self.config.actions.is_empty() || self.config.actions.iter().any(|a| a.eq_ignore_ascii_case(action))
    }

    fn count(&mut self, kind: FaultKind) {
        *self.counts.entry(kind).or_insert(0) += 1;
    }

    /// At most one request-level fault for a request with this action (a WS-Management action,
    /// or the REST service's InvokeCommand, Batch, Probe).
    pub fn request(&mut self, action: &str) -> Option<RequestFault> {
        self.requests += 1;
        let c = &self.config;
        let rates = [c.drop_before, c.drop_after, c.http_500, c.http_503, c.http_429, c.latency_spike];
        if rates.iter().all(|&r| r <= 0.0) || !self.applies(action) {
            return None;
        }
        let mut roll: f64 = self.rng.random();
        let mut pick = None;
        for (i, rate) in rates.into_iter().enumerate() {
            if roll < rate {
                pick = Some(i);
                break;
            }
            roll -= rate;
        }
        let fault = match pick? {
            0 => RequestFault::DropBefore,
            1 => RequestFault::DropAfter,
            2 => RequestFault::Http500 { processed: self.rng.random_bool(0.5) },
            3 => RequestFault::Http503 { retry_after_seconds: self.config.retry_after_seconds },
            4 => RequestFault::Http429 { retry_after_seconds: self.config.retry_after_seconds },
            _ => {
                let max = self.config.latency_spike_ms.max(1);
                let min = self.config.latency_spike_min_ms.clamp(1, max);
                RequestFault::LatencySpike(Duration::from_millis(self.rng.random_range(min..=max)))
            }
        };
        self.count(fault.kind());
        Some(fault)
    }

    /// Whether the shell a request with this action names is forgotten now.
    pub fn shell_expiry(&mut self, action: &str) -> bool {
        if self.config.shell_expiry <= 0.0 || !self.applies(action) {
            return false;
        }
        let hit = self.rng.random::<f64>() < self.config.shell_expiry;
        if hit {
            self.count(FaultKind::ShellExpiry);
        }
        hit
    }

    /// At most one refusal of a shell creation.
    pub fn create(&mut self) -> Option<CreateFault> {
        self.creates += 1;
        let c = &self.config;
        let rates = [c.user_quota, c.tenant_quota, c.throttle];
        if rates.iter().all(|&r| r <= 0.0) || !self.applies("Create") {
            return None;
        }
        let roll: f64 = self.rng.random();
        let fault = if roll < rates[0] {
            CreateFault::UserQuota
        } else if roll < rates[0] + rates[1] {
            CreateFault::TenantQuota
        } else if roll < rates[0] + rates[1] + rates[2] {
            CreateFault::Throttle { wait_seconds: self.config.throttle_wait_seconds }
        } else {
            return None;
        };
        self.count(match fault {
            CreateFault::UserQuota => FaultKind::UserQuota,
            CreateFault::TenantQuota => FaultKind::TenantQuota,
            CreateFault::Throttle { .. } => FaultKind::Throttle,
        });
        Some(fault)
    }

    /// Remembers that a fault hit a request for this pipeline.
    pub fn note_pipeline(&mut self, pid: Uuid, kind: FaultKind) {
        self.by_pipeline.entry(pid).or_default().push(kind);
    }

    pub fn counts(&self) -> BTreeMap<FaultKind, u64> {
        self.counts.clone()
    }

    /// How many requests, and how many shell creations, could have been faulted.
    pub fn seen(&self) -> (u64, u64) {
        (self.requests, self.creates)
    }

    pub fn by_pipeline(&self) -> HashMap<Uuid, Vec<FaultKind>> {
        self.by_pipeline.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(f: impl FnOnce(&mut FaultConfig)) -> FaultConfig {
        let mut c = FaultConfig { seed: 42, ..FaultConfig::default() };
        f(&mut c);
        c
    }

    #[test]
    fn nothing_is_injected_by_default() {
        let mut i = Injector::new(FaultConfig::default());
        for _ in 0..1000 {
            assert_eq!(i.request("Receive"), None);
            assert!(!i.shell_expiry("Command"));
            assert_eq!(i.create(), None);
        }
        assert!(i.counts().is_empty());
        assert_eq!(i.seen(), (1000, 1000));
    }

    #[test]
    fn rates_are_kept_and_counted_by_kind() {
        let c = config(|c| {
            c.drop_before = 0.02;
            c.drop_after = 0.03;
            c.http_500 = 0.01;
            c.http_503 = 0.04;
            c.http_429 = 0.02;
            c.latency_spike = 0.05;
            c.latency_spike_ms = 300;
        });
        let mut i = Injector::new(c);
        let n = 200_000.0;
        let mut processed_500 = 0;
        for _ in 0..n as u32 {
            match i.request("Command") {
                Some(RequestFault::LatencySpike(d)) => assert!(d > Duration::ZERO && d <= Duration::from_millis(300)),
                Some(RequestFault::Http503 { retry_after_seconds }) => assert_eq!(retry_after_seconds, 1),
                Some(RequestFault::Http500 { processed: true }) => processed_500 += 1,
                _ => {}
            }
        }
        let counts = i.counts();
        for (kind, rate) in [
            (FaultKind::DropBefore, 0.02),
            (FaultKind::DropAfter, 0.03),
            (FaultKind::Http500, 0.01),
            (FaultKind::Http503, 0.04),
            (FaultKind::Http429, 0.02),
            (FaultKind::LatencySpike, 0.05),
        ] {
            let seen = counts[&kind] as f64 / n;
            assert!((seen - rate).abs() < rate * 0.1, "{kind:?}: {seen} vs {rate}");
        }
        let share = processed_500 as f64 / counts[&FaultKind::Http500] as f64;
        assert!((0.4..0.6).contains(&share), "half the 500s are processed: {share}");
    }

    #[test]
    fn one_seed_one_sequence() {
        let c = config(|c| {
            c.drop_after = 0.3;
            c.shell_expiry = 0.2;
            c.throttle = 0.5;
        });
        let run = |c: &FaultConfig| {
            let mut i = Injector::new(c.clone());
            (0..200).map(|_| (i.request("Receive"), i.shell_expiry("Receive"), i.create())).collect::<Vec<_>>()
        };
        assert_eq!(run(&c), run(&c));
        assert_ne!(run(&c), run(&FaultConfig { seed: 43, ..c.clone() }));
    }

    #[test]
    fn the_action_filter_and_create_kinds() {
        let mut i = Injector::new(config(|c| {
            c.http_503 = 1.0;
            c.shell_expiry = 1.0;
            c.throttle = 1.0;
            c.throttle_wait_seconds = 7;
            c.actions = vec!["receive".into(), "Create".into()];
        }));
        assert_eq!(i.request("Command"), None);
        assert!(!i.shell_expiry("Delete"));
        assert_eq!(i.request("Receive"), Some(RequestFault::Http503 { retry_after_seconds: 1 }));
        assert!(i.shell_expiry("Receive"));
        assert_eq!(i.create(), Some(CreateFault::Throttle { wait_seconds: 7 }));
        i.configure(config(|c| c.user_quota = 1.0));
        assert_eq!(i.create(), Some(CreateFault::UserQuota));
        let counts = i.counts();
        assert_eq!(
            (counts[&FaultKind::Http503], counts[&FaultKind::ShellExpiry], counts[&FaultKind::Throttle]),
            (1, 1, 1),
            "counts survive a reconfiguration"
        );
        assert!(!RequestFault::DropBefore.processes() && RequestFault::DropAfter.processes());
        assert!(!RequestFault::Http500 { processed: false }.processes());
        assert!(!RequestFault::Http429 { retry_after_seconds: 1 }.processes());
    }
}
