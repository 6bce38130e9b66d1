//! The simulator's Exchange Online REST admin API, on the same listener as its WS-Management
//! endpoint and over the same world (tenants, mailboxes, cmdlets: a Set over REST is seen by a
//! Get over PSRP).
//!
//! What it serves (hosts are path prefixes on the one loopback address, see [`route`]):
//! - `POST …/adminapi/{version}/{tenant}/InvokeCommand` with `{"CmdletInput":{"CmdletName",
//!   "Parameters"}}`, parameters typed as the module sends them ([`crate::remote::exo::odata`]);
//!   200 with `value` (a page of at most `Prefer: odata.maxpagesize`, capped by
//!   `simulator.rest.max_page_size`), `@odata.nextLink` (an opaque `$skiptoken`: the rest of the
//!   answer waits in a cursor; a further page runs nothing again), `@adminapi.warnings` and
//!   `@adminapi.errors` (the cmdlet's non-terminating errors).
//! - Failures as Exchange answers them: parameter binding 400 BadRequest; a terminating error
//!   404 NotFound (object not found) or 400; an unknown cmdlet 403 with `Content-Encoding: gzip`
//!   on a body that is not gzip. OData error bodies carry the cmdlet's words in
//!   `error.details[0].message`.
//! - Bearer tokens checked on every request ([`auth`]): audience = the service's base
//!   (`http://{host}` for Exchange, `http://{host}/ipps` for Security & Compliance), `tid` = the
//!   path's tenant, `Exchange.ManageAsApp` for app-only tokens, the account's tenants and MFA for
//!   users, and a claims challenge for tokens older than a tenant's cut-off
//!   ([`Simulator::require_tokens_issued_after`]).
//! - Tenant-specific hosts (`simulator.rest.tenant_hosts`): the front door answers those
//!   tenants' calls, and the clients' discovery GET (`…/EXOModuleFile`), with 302 to
//!   `/t/{label}/…`; Security & Compliance answers every tenant's with 302 to
//!   `/ipps/r/{region}/…`. Probes are counted per tenant.
//! - `$batch` (`{"requests":[{id, method, url, headers, body}]}`, at most 20): sub-requests run
//!   one after another; each answers on its own, pages on its own (`client-request-id` and
//!   `Prefer` from its own headers). A batch is one call in flight.
//! - Limits of calls in flight per identity and per tenant (`simulator.rest.calls_per_identity`,
//!   `calls_per_tenant`): more are refused with 429 and `Retry-After`; high-water marks in
//!   [`RestStats`].
//! - Injected faults (`simulator.faults`, actions `InvokeCommand`, `Batch`, `Probe`): dropped
//!   connections before or after processing, bare 500 (processed or not), 503 and 429 with
//!   `Retry-After` (not processed), late answers. A fault is noted for the pipeline id of the
//!   call (its `client-request-id`), and for each sub-request of a batch.
//!
//! Security & Compliance serves the same cmdlets as Exchange here: the simulator has one world.

mod auth;
mod route;
mod service;
mod state;

pub use auth::MANAGE_AS_APP;
pub(crate) use state::RestState;

use crate::sim::Simulator;
use axum::routing::any;
use axum::Router;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The REST service's counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestStats {
    /// High-water marks of calls in flight per identity (a user's UPN, or `app:<appid>`) and per
    /// tenant, since start or [`Simulator::reset_rest_high_water_marks`].
    pub max_in_flight_by_identity: BTreeMap<String, u32>,
    pub max_in_flight_by_tenant: BTreeMap<String, u32>,
    pub in_flight: u32,
    /// Discovery probes (`EXOModuleFile`, `EXOBanner`) per tenant.
    pub probes_by_tenant: BTreeMap<String, u64>,
    /// Authenticated requests (a batch is one).
    pub requests: u64,
    /// Calls refused with 429 for the limits of calls in flight.
    pub refused_over_limit: u64,
    pub batches: u64,
    /// Answers with further pages not yet fetched.
    pub open_cursors: usize,
    /// The latest authenticated calls (and batch sub-requests), oldest first.
    pub calls: Vec<RestCall>,
}

/// One authenticated call as the service saw it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RestCall {
    /// `InvokeCommand`, `Batch`, `Probe`, or `BatchItem` (a sub-request).
    pub operation: String,
    /// The tenant's domain (lowercase).
    pub tenant: String,
    pub identity: String,
    /// The tenant host or region label it arrived on (`None`: a front door).
    pub host: Option<String>,
    pub anchor_mailbox: Option<String>,
    pub client_request_id: Option<String>,
    /// `Prefer: odata.maxpagesize`, as asked.
    pub max_page_size: Option<u32>,
    pub cmdlet: Option<String>,
}

/// The REST routes, to merge into the wire server's router. `secure`: the listener is HTTPS.
pub(crate) fn router(sim: Simulator, secure: bool) -> Router {
    let rest = Arc::new(service::Rest { sim, scheme: if secure { "https" } else { "http" } });
    Router::new()
        .route("/adminapi/{*path}", any(service::handle))
        .route("/t/{*path}", any(service::handle))
        .route("/ipps/{*path}", any(service::handle))
        .with_state(rest)
}

impl Simulator {
    pub fn rest_stats(&self) -> RestStats {
        self.inner.rest.stats()
    }

    /// Restarts the REST high-water marks from the calls in flight now.
    pub fn reset_rest_high_water_marks(&self) {
        self.inner.rest.reset_high_water_marks();
    }

    /// Serves a tenant from a tenant-specific host (`Some(label)`) or from the front door.
    pub fn set_rest_tenant_host(&self, tenant: &str, label: Option<&str>) {
        self.inner.rest.set_tenant_host(&super::key(tenant), label);
    }

    /// Continuous access evaluation: the tenant's sessions were revoked at `unix_seconds`, so
    /// tokens issued before then get a 401 claims challenge (`nbf`) until a newer one is used.
    pub fn require_tokens_issued_after(&self, tenant: &str, unix_seconds: u64) {
        self.inner.rest.set_not_before(&super::key(tenant), unix_seconds);
    }
}

#[cfg(test)]
mod tests;
