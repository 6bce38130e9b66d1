//! The REST service's own state: its configuration (hosts can change at run time), calls in
//! flight against the per-identity and per-tenant limits (with high-water marks), open paging
//! cursors, the tenants' token cut-offs, and a short journal of the calls it saw.

use super::{RestCall, RestStats};
use crate::config::SimRestConfig;
use crate::remote::PsValue;
use crate::sim::Simulator;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long an untouched cursor lives.
const CURSOR_TTL: Duration = Duration::from_secs(600);
/// The most cursors kept; the least recently used goes first.
const MAX_CURSORS: usize = 256;
/// Calls kept in the journal.
const JOURNAL: usize = 512;

pub(crate) struct RestState {
    inner: Mutex<Inner>,
}

struct Inner {
    config: SimRestConfig,
    in_flight_by_identity: HashMap<String, u32>,
    in_flight_by_tenant: HashMap<String, u32>,
    max_by_identity: BTreeMap<String, u32>,
    max_by_tenant: BTreeMap<String, u32>,
    probes: BTreeMap<String, u64>,
    cursors: HashMap<String, Cursor>,
    /// Per tenant key: tokens issued before this (Unix seconds) get a claims challenge.
    not_before: HashMap<String, u64>,
    journal: VecDeque<RestCall>,
    requests: u64,
    refused_over_limit: u64,
    batches: u64,
}

/// The rest of a cmdlet's output, waiting for its next page.
struct Cursor {
    identity: String,
    tenant: String,
    items: VecDeque<PsValue>,
    touched: Instant,
}

/// Why a call was refused before it ran.
pub(super) struct OverLimit {
    pub retry_after_seconds: f64,
}

impl RestState {
    pub(crate) fn new(config: &SimRestConfig) -> RestState {
        RestState {
            inner: Mutex::new(Inner {
                config: config.clone(),
                in_flight_by_identity: HashMap::new(),
                in_flight_by_tenant: HashMap::new(),
                max_by_identity: BTreeMap::new(),
                max_by_tenant: BTreeMap::new(),
                probes: BTreeMap::new(),
                cursors: HashMap::new(),
                not_before: HashMap::new(),
                journal: VecDeque::new(),
                requests: 0,
                refused_over_limit: 0,
                batches: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn config(&self) -> SimRestConfig {
        self.lock().config.clone()
    }

    pub(super) fn set_tenant_host(&self, tenant_key: &str, label: Option<&str>) {
        let mut st = self.lock();
        match label {
            Some(l) => st.config.tenant_hosts.insert(tenant_key.to_string(), l.to_ascii_lowercase()),
            None => st.config.tenant_hosts.remove(tenant_key),
        };
    }

    /// The label of the host a tenant is served from (`None`: the front door).
    pub(super) fn tenant_host(&self, tenant_key: &str) -> Option<String> {
        let st = self.lock();
        st.config
            .tenant_hosts
            .iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(tenant_key))
            .map(|(_, l)| l.to_ascii_lowercase())
    }

    pub(super) fn set_not_before(&self, tenant_key: &str, unix_seconds: u64) {
        self.lock().not_before.insert(tenant_key.to_string(), unix_seconds);
    }

    pub(super) fn not_before(&self, tenant_key: &str) -> Option<u64> {
        self.lock().not_before.get(tenant_key).copied()
    }

    /// An authenticated request arrived (journaled).
    pub(super) fn note(&self, call: RestCall) {
        let mut st = self.lock();
        st.requests += u64::from(call.operation != "BatchItem");
        st.batches += u64::from(call.operation == "Batch");
        if call.operation == "Probe" {
            *st.probes.entry(call.tenant.clone()).or_insert(0) += 1;
        }
        if st.journal.len() >= JOURNAL {
            st.journal.pop_front();
        }
        st.journal.push_back(call);
    }

    pub(super) fn stats(&self) -> RestStats {
        let st = self.lock();
        RestStats {
            max_in_flight_by_identity: st.max_by_identity.clone(),
            max_in_flight_by_tenant: st.max_by_tenant.clone(),
            in_flight: st.in_flight_by_identity.values().sum(),
            probes_by_tenant: st.probes.clone(),
            requests: st.requests,
            refused_over_limit: st.refused_over_limit,
            batches: st.batches,
            open_cursors: st.cursors.len(),
            calls: st.journal.iter().cloned().collect(),
        }
    }

    pub(super) fn reset_high_water_marks(&self) {
        let mut st = self.lock();
        st.max_by_identity = st.in_flight_by_identity.iter().map(|(k, v)| (k.clone(), *v)).collect();
        st.max_by_tenant = st.in_flight_by_tenant.iter().map(|(k, v)| (k.clone(), *v)).collect();
    }

    /// Keeps the rest of an answer for its next pages; returns the cursor's opaque token.
    pub(super) fn open_cursor(&self, identity: &str, tenant: &str, items: VecDeque<PsValue>) -> String {
        let mut st = self.lock();
        let now = Instant::now();
        st.cursors.retain(|_, c| now.duration_since(c.touched) < CURSOR_TTL);
        if st.cursors.len() >= MAX_CURSORS {
            let oldest = st.cursors.iter().min_by_key(|(_, c)| c.touched).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                st.cursors.remove(&k);
            }
        }
        let token = format!("{:032x}", rand::random::<u128>());
        st.cursors
            .insert(token.clone(), Cursor { identity: identity.into(), tenant: tenant.into(), items, touched: now });
        token
    }

    /// The next `size` items of a cursor and whether more remain. `None`: no such cursor (or
    /// another caller's, or expired).
    pub(super) fn next_page(
        &self,
        token: &str,
        identity: &str,
        tenant: &str,
        size: usize,
    ) -> Option<(Vec<PsValue>, bool)> {
        let mut st = self.lock();
        let cursor = st.cursors.get_mut(token)?;
        if cursor.identity != identity || cursor.tenant != tenant || cursor.touched.elapsed() >= CURSOR_TTL {
            return None;
        }
        let take = size.min(cursor.items.len());
        let page: Vec<PsValue> = cursor.items.drain(..take).collect();
        cursor.touched = Instant::now();
        let more = !cursor.items.is_empty();
        if !more {
            st.cursors.remove(token);
        }
        Some((page, more))
    }
}

/// A call in flight: counted against its identity's and its tenant's limits until dropped
/// (also when the client goes away and the handler is dropped with it).
pub(super) struct InFlight {
    sim: Simulator,
    identity: String,
    tenant: String,
}

impl InFlight {
    pub(super) fn enter(sim: &Simulator, identity: &str, tenant: &str) -> Result<InFlight, OverLimit> {
        let mut guard = sim.inner.rest.lock();
        let st = &mut *guard;
        let by_identity = st.in_flight_by_identity.get(identity).copied().unwrap_or(0);
        let by_tenant = st.in_flight_by_tenant.get(tenant).copied().unwrap_or(0);
        if by_identity >= st.config.calls_per_identity || by_tenant >= st.config.calls_per_tenant {
            st.refused_over_limit += 1;
            return Err(OverLimit { retry_after_seconds: st.config.retry_after_seconds });
        }
        for (map, key, now) in [
            (&mut st.in_flight_by_identity, identity, by_identity + 1),
            (&mut st.in_flight_by_tenant, tenant, by_tenant + 1),
        ] {
            map.insert(key.to_string(), now);
        }
        let mi = st.max_by_identity.entry(identity.to_string()).or_insert(0);
        *mi = (*mi).max(by_identity + 1);
        let mt = st.max_by_tenant.entry(tenant.to_string()).or_insert(0);
        *mt = (*mt).max(by_tenant + 1);
        Ok(InFlight { sim: sim.clone(), identity: identity.to_string(), tenant: tenant.to_string() })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut guard = self.sim.inner.rest.lock();
        let st = &mut *guard;
        for (map, key) in [(&mut st.in_flight_by_identity, &self.identity), (&mut st.in_flight_by_tenant, &self.tenant)]
        {
            if let Some(n) = map.get_mut(key.as_str()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(key.as_str());
                }
            }
        }
    }
}
