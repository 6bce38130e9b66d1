//! The built-in simulator of the remote service: an in-memory stand-in for Exchange Online remote
//! PowerShell. It keeps accounts, tenants with generated directories, live shells with the
//! service's quotas and lifetimes, and answers with the service's own error texts, so every fault
//! it emits classifies through [`crate::remote::classify`] exactly like the real one would.
//!
//! The service API ([`Simulator::open_shell`], [`Simulator::run`], [`Simulator::close_shell`]) is
//! synchronous and applies no latency; [`Simulator::connector`] wraps it as a
//! [`crate::remote::Connector`] that sleeps the configured latencies.

mod clock;
mod cmdlets;
mod connector;
mod faults;
pub mod idp;
pub mod rest;
pub mod tokens;
pub mod wire;
mod world;

#[cfg(test)]
mod tests;

pub use connector::{SimConnector, SimSession};
pub use faults::{CreateFault, FaultKind, RequestFault};

use crate::config::{Config, CredentialRef, FaultConfig, SimulatorConfig};
use crate::remote::{classify, classify_error_record, CommandOutput, ErrorRecord, FaultClass, PsValue, RemoteError};
use clock::SimClock;
use cmdlets::Outcome;
use secrecy::ExposeSecret;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use uuid::Uuid;
use world::TenantData;

/// WSManFault code of "the maximum number of concurrent shells for this user has been exceeded".
pub const WSMAN_QUOTA_LIMIT: u32 = crate::remote::fault::WSMAN_QUOTA_LIMIT;
/// WSManFault code of "the shell was not found".
pub const WSMAN_SHELL_NOT_FOUND: u32 = crate::remote::fault::WSMAN_SHELL_NOT_FOUND;

/// An account of the simulated identity service.
#[derive(Clone)]
pub struct SimAccount {
    pub upn: String,
    pub password: String,
    /// Tenant domains the account may manage, or `"*"` for all.
    pub tenants: Vec<String>,
}

impl fmt::Debug for SimAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimAccount")
            .field("upn", &self.upn)
            .field("password", &"[redacted]")
            .field("tenants", &self.tenants)
            .finish()
    }
}

/// How a client proves who it is when it opens a shell.
#[derive(Clone, Copy)]
pub enum SimCredential<'a> {
    Password(&'a str),
    /// An access token passed as `Bearer <token>` in the Basic password (the
    /// `BasicAuthToOAuthConversion=true` form). The simulator's identity service issues exactly one
    /// token per account: [`sim_token`]`(upn)`.
    BearerToken(&'a str),
}

impl fmt::Debug for SimCredential<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimCredential::Password(_) => f.write_str("Password([redacted])"),
            SimCredential::BearerToken(_) => f.write_str("BearerToken([redacted])"),
        }
    }
}

/// The access token the simulator accepts for `upn`: `sim-token:<upn>` (the UPN compared
/// case-insensitively).
pub fn sim_token(upn: &str) -> String {
    format!("sim-token:{}", upn.trim())
}

/// A failure as the service reports it. With `record` set it means "the pipeline failed with
/// this terminating error record" (then `http_status` is 200: the transport was fine).
#[derive(Debug, Clone)]
pub struct SimFault {
    pub http_status: u16,
    pub wsman_code: Option<u32>,
    pub message: String,
    pub record: Option<ErrorRecord>,
}

impl SimFault {
    /// The logon failure the service answers a wrong password with (HTTP 401).
    pub(crate) fn logon_failed(upn: &str) -> SimFault {
        SimFault::service(401, None, text_logon_failed(upn))
    }

    fn service(http_status: u16, wsman_code: Option<u32>, message: String) -> SimFault {
        SimFault { http_status, wsman_code, message, record: None }
    }

    fn pipeline(record: ErrorRecord) -> SimFault {
        SimFault { http_status: 200, wsman_code: None, message: record.message.clone(), record: Some(record) }
    }

    /// The class a client gives this fault (the same mapping the connector uses).
    pub fn class(&self) -> FaultClass {
        match &self.record {
            Some(record) => classify_error_record(record),
            None => classify(Some(self.http_status), self.wsman_code, &self.message),
        }
    }
}

impl fmt::Display for SimFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.http_status)?;
        if let Some(code) = self.wsman_code {
            write!(f, " (WSManFault {code})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for SimFault {}

impl From<SimFault> for RemoteError {
    fn from(fault: SimFault) -> RemoteError {
        let class = fault.class();
        match fault.record {
            Some(record) => RemoteError::from_record(class, record),
            None => RemoteError::new(class, fault.message),
        }
    }
}

/// Counters and gauges of the simulated service.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SimStats {
    /// Live shells per account (only accounts holding shells are listed).
    pub open_by_user: BTreeMap<String, u32>,
    /// Live shells per tenant (only tenants with shells are listed).
    pub open_by_tenant: BTreeMap<String, u32>,
    /// High-water marks since start or the last [`Simulator::reset_high_water_marks`].
    pub max_by_user: BTreeMap<String, u32>,
    pub max_by_tenant: BTreeMap<String, u32>,
    /// Pipeline id → how many times a command with that id actually executed.
    pub executions: HashMap<Uuid, u32>,
    pub shells_opened: u64,
    pub shells_closed: u64,
    pub shells_expired: u64,
    /// Shells that ended (expired, or were forgotten early) without a single request reaching
    /// them after their creation: created for a client that never learned of them, i.e.
    /// leaked. A client that got the Create's answer at least opens the pool or deletes it.
    pub shells_never_used: u64,
    /// Commands that executed (binding failures and rejected commands are not counted).
    pub commands_run: u64,
    /// Injected faults by kind (kinds never injected are absent).
    pub injected: BTreeMap<FaultKind, u64>,
    /// Pipeline id → the injected faults that hit requests naming it (CommandId).
    pub pipeline_faults: HashMap<Uuid, Vec<FaultKind>>,
    /// Authenticated, well-formed requests the wire server handled (WS-Management, and REST
    /// calls: see also [`Simulator::rest_stats`]).
    pub requests: u64,
    /// Shell creations that passed the service's own checks (credentials, permission, policy).
    pub creates: u64,
    /// Creations refused because the account or the tenant held its cap of shells (not the
    /// injected refusals): a client that respects the caps never sees one.
    pub quota_refusals: u64,
}

/// One live shell, as [`Simulator::list_shells`] shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShellInfo {
    pub shell_id: String,
    /// The owning account's UPN.
    pub owner: String,
    /// The tenant domain.
    pub tenant: String,
    /// Simulated seconds since the simulator started, at creation.
    pub created: f64,
    /// Commands (pipelines) the shell has accepted, whether or not they bound and executed.
    pub commands: u32,
}

// ---- the service's texts -------------------------------------------------------------------

fn text_identity_down() -> String {
    "Failed to connect live id servers. Make sure proxy is enabled or machine has network connection to live id servers."
        .to_string()
}

/// Windows' message for STATUS_ACCOUNT_LOCKED_OUT.
fn text_account_locked() -> String {
    "The referenced account is currently locked out and may not be logged on to.".into()
}

fn text_logon_failed(upn: &str) -> String {
    format!(
        "Logon failed for the user '{upn}'. Please create a new PSCredential object, making sure that you have used the \
         correct user name and password."
    )
}

fn text_mfa_required() -> String {
    "AADSTS50076: Due to a configuration change made by your administrator, or because you moved to a new location, you \
     must use multi-factor authentication to access '00000002-0000-0ff1-ce00-000000000000'."
        .to_string()
}

fn text_permission_denied(upn: &str) -> String {
    format!(
        "The user '{upn}' does not have permission to manage this tenant. Permissions can be granted by assigning the \
         user to the appropriate RBAC role."
    )
}

fn text_remote_powershell_disabled() -> String {
    "The ability to connect to this tenant by using a remote PowerShell session has been disabled. Please contact Lync \
     Help to check Tenant Powershell Policy of this tenant."
        .to_string()
}

fn text_shell_quota(scope: &str) -> String {
    format!(
        "The WS-Management service cannot process the request. The maximum number of concurrent shells for this {scope} \
         has been exceeded. Close existing shells or raise the quota for this {scope}."
    )
}

fn text_shell_not_found(shell_id: &str) -> String {
    format!(
        "The request for the Windows Remote Shell with ShellId {shell_id} failed because the shell was not found on the \
         server. Possible causes are: the specified ShellId is incorrect or the shell no longer exists on the server. \
         Provide the correct ShellId or create a new shell and try again."
    )
}

fn text_shell_exists(shell_id: &str) -> String {
    format!(
        "The WS-Management service cannot create the resource because a shell with ShellId {shell_id} already exists."
    )
}

fn text_budget_throttled(wait_seconds: u64) -> String {
    format!(
        "[AuthZRequestId={}][FailureCategory=AuthZ-AuthorizationException] Fail to create runspace because you have \
         exceeded your budget to create runspace. Please wait for {wait_seconds} seconds.",
        Uuid::new_v4()
    )
}

fn text_max_commands() -> String {
    "The WS-Management service cannot process the request because the maximum number of commands for this shell has \
     been exceeded. Create a new shell and try again."
        .to_string()
}

// ---- state ---------------------------------------------------------------------------------

#[derive(Debug)]
struct Account {
    upn: String,
    password: String,
    all_tenants: bool,
    tenants: HashSet<String>,
}

#[derive(Debug)]
struct Tenant {
    domain: String,
    /// Generated on first use, so hundreds of configured tenants cost nothing until touched.
    data: Option<TenantData>,
}

#[derive(Debug)]
struct Shell {
    /// A request other than its Create reached it.
    used: bool,
    owner: String,
    owner_key: String,
    tenant: String,
    tenant_key: String,
    created: f64,
    commands: u32,
}

#[derive(Debug)]
struct State {
    clock: SimClock,
    lifetime_secs: f64,
    user_cap: u32,
    tenant_cap: u32,
    max_commands: u32,
    mailboxes_per_tenant: u32,
    accounts: HashMap<String, Account>,
    tenants: HashMap<String, Tenant>,
    disabled: HashSet<String>,
    denied: HashSet<(String, String)>,
    mfa: HashSet<String>,
    /// Accounts locked out (or disabled): every logon is refused with Windows' words.
    locked: HashSet<String>,
    identity_down: bool,
    shells: HashMap<String, Shell>,
    max_by_user: BTreeMap<String, u32>,
    max_by_tenant: BTreeMap<String, u32>,
    quota_refusals: u64,
    executions: HashMap<Uuid, u32>,
    /// The parameters of the latest commands as the service received them, by pipeline id.
    received: VecDeque<Received>,
    /// Each tenant's GUID (its `tid`), to the tenant's key.
    tenant_ids: HashMap<Uuid, String>,
    shells_opened: u64,
    shells_closed: u64,
    shells_expired: u64,
    shells_never_used: u64,
    commands_run: u64,
}

impl State {
    /// Removes shells older than the lifetime (the service's idle/age timeout).
    fn reap(&mut self) {
        let now = self.clock.now();
        let lifetime = self.lifetime_secs;
        let before = self.shells.len();
        let mut never_used = 0;
        self.shells.retain(|_, s| {
            let alive = now - s.created < lifetime;
            never_used += u64::from(!alive && !s.used);
            alive
        });
        self.shells_expired += (before - self.shells.len()) as u64;
        self.shells_never_used += never_used;
    }

    fn open_by_user(&self) -> BTreeMap<String, u32> {
        let mut m = BTreeMap::new();
        for s in self.shells.values() {
            *m.entry(s.owner.clone()).or_insert(0) += 1;
        }
        m
    }

    fn open_by_tenant(&self) -> BTreeMap<String, u32> {
        let mut m = BTreeMap::new();
        for s in self.shells.values() {
            *m.entry(s.tenant.clone()).or_insert(0) += 1;
        }
        m
    }

    fn shell_not_found(shell_id: &str) -> SimFault {
        SimFault::service(500, Some(WSMAN_SHELL_NOT_FOUND), text_shell_not_found(shell_id))
    }

    /// Runs one command against a tenant's directory (generated on first use). `None`: no such
    /// tenant.
    fn execute(
        &mut self,
        tenant_key: &str,
        pipeline_id: Uuid,
        cmdlet: &str,
        params: &[(String, PsValue)],
    ) -> Option<Result<CommandOutput, SimFault>> {
        if self.received.len() >= RECEIVED_KEPT {
            self.received.pop_front();
        }
        self.received.push_back((pipeline_id, cmdlet.to_string(), params.to_vec()));
        let mailboxes = self.mailboxes_per_tenant;
        let tenant = self.tenants.get_mut(tenant_key)?;
        let data = tenant.data.get_or_insert_with(|| TenantData::generate(&tenant.domain, mailboxes));
        Some(match cmdlets::invoke(data, cmdlet, params) {
            Outcome::NotExecuted(record) => Err(SimFault::pipeline(record)),
            Outcome::Executed(result) => {
                *self.executions.entry(pipeline_id).or_insert(0) += 1;
                self.commands_run += 1;
                result.map_err(SimFault::pipeline)
            }
        })
    }
}

/// A command as the service received it: pipeline id, cmdlet, parameters.
type Received = (Uuid, String, Vec<(String, PsValue)>);

/// How many commands' received parameters [`Simulator::received_parameters`] remembers.
const RECEIVED_KEPT: usize = 4096;

/// A tenant's GUID (the `tid` of its tokens): derived from its domain, so every simulator agrees.
fn tenant_guid(domain: &str) -> Uuid {
    world::det_guid(&["tenant-id", &key(domain)])
}

struct Inner {
    state: Mutex<State>,
    speedup: f64,
    /// Latencies in simulated microseconds (real sleep = latency / speedup).
    open_latency_us: AtomicU64,
    command_latency_us: AtomicU64,
    close_latency_us: AtomicU64,
    /// Fault dice and tally; locked after `state` when both are needed.
    faults: Mutex<faults::Injector>,
    /// Signs and checks the access tokens the identity provider issues and the services accept.
    tokens: tokens::SimTokens,
    /// The identity provider's state; locked after `state` when both are needed.
    idp: idp::Idp,
    /// `scheme://address` of each listener serving this simulator: what access tokens for its
    /// WinRM side name in `aud`.
    origins: Mutex<Vec<String>>,
    /// The REST service's own state (paging cursors, calls in flight, hosts).
    rest: rest::RestState,
}

/// The simulated service. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator").field("speedup", &self.inner.speedup).finish_non_exhaustive()
    }
}

fn key(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Simulator {
    pub fn new(cfg: &SimulatorConfig, accounts: Vec<SimAccount>, tenants: Vec<String>) -> Simulator {
        let accounts = accounts
            .into_iter()
            .map(|a| {
                let all = a.tenants.iter().any(|t| t.trim() == "*");
                let tenants = a.tenants.iter().filter(|t| t.trim() != "*").map(|t| key(t)).collect();
                (
                    key(&a.upn),
                    Account { upn: a.upn.trim().to_string(), password: a.password, all_tenants: all, tenants },
                )
            })
            .collect();
        let tenants: HashMap<String, Tenant> =
            tenants.into_iter().map(|d| (key(&d), Tenant { domain: d.trim().to_string(), data: None })).collect();
        let tenant_ids = tenants.keys().map(|k| (tenant_guid(k), k.clone())).collect();
        let denied = cfg
            .denied
            .iter()
            .filter_map(|pair| {
                // "upn:tenant"; a UPN has no ':' so the first one separates.
                let (upn, tenant) = pair.split_once(':')?;
                Some((key(upn), key(tenant)))
            })
            .collect();
        let state = State {
            clock: SimClock::new(cfg.time_speedup),
            lifetime_secs: cfg.shell_lifetime_seconds,
            user_cap: cfg.user_shell_cap,
            tenant_cap: cfg.tenant_shell_cap,
            max_commands: cfg.max_commands_per_shell,
            mailboxes_per_tenant: cfg.mailboxes_per_tenant,
            accounts,
            tenants,
            disabled: cfg.remote_powershell_disabled.iter().map(|t| key(t)).collect(),
            denied,
            mfa: cfg.mfa_required.iter().map(|u| key(u)).collect(),
            locked: HashSet::new(),
            identity_down: cfg.identity_service_down,
            shells: HashMap::new(),
            max_by_user: BTreeMap::new(),
            max_by_tenant: BTreeMap::new(),
            quota_refusals: 0,
            executions: HashMap::new(),
            received: VecDeque::new(),
            tenant_ids,
            shells_opened: 0,
            shells_closed: 0,
            shells_expired: 0,
            shells_never_used: 0,
            commands_run: 0,
        };
        let speedup = if cfg.time_speedup.is_finite() && cfg.time_speedup > 0.0 { cfg.time_speedup } else { 1.0 };
        Simulator {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                speedup,
                open_latency_us: AtomicU64::new(cfg.open_latency_ms.saturating_mul(1000)),
                command_latency_us: AtomicU64::new(cfg.command_latency_ms.saturating_mul(1000)),
                close_latency_us: AtomicU64::new(cfg.close_latency_ms.saturating_mul(1000)),
                faults: Mutex::new(faults::Injector::new(cfg.faults.clone())),
                tokens: tokens::SimTokens::new(),
                idp: idp::Idp::new(&cfg.identity),
                origins: Mutex::new(Vec::new()),
                rest: rest::RestState::new(&cfg.rest),
            }),
        }
    }

    /// Builds the simulator the configuration describes: `simulator.accounts` if given, else one
    /// account per `[[admins]]` whose password is the admin's resolved credential; and
    /// `simulator.tenants` if given, else every `[[tenants]]` domain.
    pub fn from_config(cfg: &Config) -> Result<Simulator, String> {
        let accounts = if !cfg.simulator.accounts.is_empty() {
            cfg.simulator
                .accounts
                .iter()
                .map(|a| SimAccount { upn: a.upn.clone(), password: a.password.clone(), tenants: a.tenants.clone() })
                .collect()
        } else {
            cfg.admins
                .iter()
                .map(|a| {
                    let password = match a.credential.as_str() {
                        // An admin that only signs in with OAuth has no password.
                        "" => String::new(),
                        credential => CredentialRef::parse(credential)
                            .and_then(|c| c.resolve())
                            .map_err(|reason| format!("credential of admin '{}': {reason}", a.name))?
                            .expose_secret()
                            .to_string(),
                    };
                    Ok(SimAccount { upn: a.upn.clone(), password, tenants: a.tenants.clone() })
                })
                .collect::<Result<Vec<_>, String>>()?
        };
        let tenants = if !cfg.simulator.tenants.is_empty() {
            cfg.simulator.tenants.clone()
        } else {
            cfg.tenants.iter().map(|t| t.domain.clone()).collect()
        };
        let sim = Simulator::new(&cfg.simulator, accounts, tenants);
        for app in idp::apps_from_config(cfg)? {
            sim.register_app(app)?;
        }
        Ok(sim)
    }

    /// A listener now serves this simulator at `origin` (`http://127.0.0.1:5985`): access tokens
    /// whose `aud` names it are for this simulator's Exchange.
    pub fn add_origin(&self, origin: &str) {
        let mut origins = self.inner.origins.lock().unwrap_or_else(|p| p.into_inner());
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if !origins.contains(&origin) {
            origins.push(origin);
        }
    }

    /// The claims of a bearer token this simulator issued, if it is one, unexpired, and for its
    /// Exchange (`aud` one of its listeners, or an Exchange Online base of any cloud).
    fn bearer_claims(&self, token: &str) -> Option<tokens::SimClaims> {
        let mut audiences: Vec<String> =
            crate::identity::cloud::Cloud::ALL.iter().map(|c| c.exo_base().to_string()).collect();
        audiences.extend(self.inner.origins.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned());
        audiences.iter().find_map(|aud| self.inner.tokens.verify(token.trim(), aud).ok())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The in-process connector: the service API behind the configured latencies.
    pub fn connector(&self) -> Arc<dyn crate::remote::Connector> {
        Arc::new(SimConnector::new(self.clone()))
    }

    fn injector(&self) -> MutexGuard<'_, faults::Injector> {
        self.inner.faults.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces the fault rates at run time (the random sequence restarts from the new seed;
    /// counts are kept).
    pub fn set_faults(&self, config: FaultConfig) {
        self.injector().configure(config);
    }

    pub fn faults(&self) -> FaultConfig {
        self.injector().config().clone()
    }

    /// The fault (if any) for one request with this WS-Management action; counted.
    pub(crate) fn roll_request_fault(&self, action: &str) -> Option<RequestFault> {
        self.injector().request(action)
    }

    /// Whether the shell named by a request with this action expires now; counted.
    pub(crate) fn roll_shell_expiry(&self, action: &str) -> bool {
        self.injector().shell_expiry(action)
    }

    pub(crate) fn note_pipeline_fault(&self, pid: Uuid, kind: FaultKind) {
        self.injector().note_pipeline(pid, kind);
    }

    /// Forgets a shell before its lifetime (an injected early expiry). False if it was gone.
    pub(crate) fn expire_shell(&self, shell_id: &str) -> bool {
        let mut st = self.lock();
        let Some(shell) = st.shells.remove(&shell_id.trim().to_ascii_uppercase()) else { return false };
        st.shells_expired += 1;
        st.shells_never_used += u64::from(!shell.used);
        true
    }

    /// A request reached the shell (the wire server calls this for every request naming it).
    pub(crate) fn mark_used(&self, shell_id: &str) {
        if let Some(shell) = self.lock().shells.get_mut(&shell_id.trim().to_ascii_uppercase()) {
            shell.used = true;
        }
    }

    pub fn stats(&self) -> SimStats {
        let mut st = self.lock();
        st.reap();
        let injector = self.injector();
        SimStats {
            open_by_user: st.open_by_user(),
            open_by_tenant: st.open_by_tenant(),
            max_by_user: st.max_by_user.clone(),
            max_by_tenant: st.max_by_tenant.clone(),
            executions: st.executions.clone(),
            shells_opened: st.shells_opened,
            shells_closed: st.shells_closed,
            shells_expired: st.shells_expired,
            shells_never_used: st.shells_never_used,
            commands_run: st.commands_run,
            injected: injector.counts(),
            pipeline_faults: injector.by_pipeline(),
            requests: injector.seen().0,
            creates: injector.seen().1,
            quota_refusals: st.quota_refusals,
        }
    }

    /// Restarts the high-water marks from the shells open now.
    pub fn reset_high_water_marks(&self) {
        let mut st = self.lock();
        st.reap();
        st.max_by_user = st.open_by_user();
        st.max_by_tenant = st.open_by_tenant();
    }

    pub fn set_remote_powershell_enabled(&self, tenant: &str, enabled: bool) {
        let mut st = self.lock();
        if enabled {
            st.disabled.remove(&key(tenant));
        } else {
            st.disabled.insert(key(tenant));
        }
    }

    pub fn set_identity_service_down(&self, down: bool) {
        self.lock().identity_down = down;
    }

    pub fn set_denied(&self, upn: &str, tenant: &str, denied: bool) {
        let mut st = self.lock();
        let pair = (key(upn), key(tenant));
        if denied {
            st.denied.insert(pair);
        } else {
            st.denied.remove(&pair);
        }
    }

    /// Changes an account's password (existing shells stay open, as on the service). Unknown
    /// accounts are ignored.
    pub fn set_password(&self, upn: &str, password: &str) {
        if let Some(a) = self.lock().accounts.get_mut(&key(upn)) {
            a.password = password.to_string();
        }
    }

    /// Adds an account to the MFA-required set, or removes it.
    pub fn set_mfa_required(&self, upn: &str, required: bool) {
        let mut st = self.lock();
        if required {
            st.mfa.insert(key(upn));
        } else {
            st.mfa.remove(&key(upn));
        }
    }

    /// Locks an account out (or lets it in again): its logons are refused with Windows' text for
    /// a locked-out account, whatever the password.
    pub fn set_account_locked(&self, upn: &str, locked: bool) {
        let mut st = self.lock();
        if locked {
            st.locked.insert(key(upn));
        } else {
            st.locked.remove(&key(upn));
        }
    }

    /// The password an NTLM logon of `upn` is checked against (the acceptor needs it to verify
    /// the client's proof); an unknown or locked account is refused as [`Self::authenticate`]
    /// refuses it.
    #[allow(clippy::result_large_err)] // SimFault is the service API's error type by design
    pub(crate) fn account_password(&self, upn: &str) -> Result<String, SimFault> {
        let st = self.lock();
        if st.locked.contains(&key(upn)) {
            return Err(SimFault::service(401, None, text_account_locked()));
        }
        match st.accounts.get(&key(upn)) {
            Some(a) => Ok(a.password.clone()),
            None => Err(SimFault::service(401, None, text_logon_failed(upn))),
        }
    }

    /// The shell lifetime in simulated time; applies to shells already open too.
    pub fn set_shell_lifetime(&self, lifetime: Duration) {
        self.lock().lifetime_secs = lifetime.as_secs_f64();
    }

    /// Moves simulated time forward (on top of real time × speedup).
    pub fn advance_time(&self, by: Duration) {
        self.lock().clock.advance(by.as_secs_f64());
    }

    /// Simulated seconds since start.
    pub fn now(&self) -> f64 {
        self.lock().clock.now()
    }

    /// Changes the connector's latencies at run time. They are in simulated time: the connector
    /// sleeps `latency / time_speedup` (so with speedup 1 these are exact real latencies).
    pub fn set_latency(&self, open: Duration, command: Duration, close: Duration) {
        self.inner.open_latency_us.store(micros(open), Ordering::Relaxed);
        self.inner.command_latency_us.store(micros(command), Ordering::Relaxed);
        self.inner.close_latency_us.store(micros(close), Ordering::Relaxed);
    }

    /// The current (open, command, close) latencies in simulated time.
    pub fn latency(&self) -> (Duration, Duration, Duration) {
        let get = |a: &AtomicU64| Duration::from_micros(a.load(Ordering::Relaxed));
        (get(&self.inner.open_latency_us), get(&self.inner.command_latency_us), get(&self.inner.close_latency_us))
    }

    /// Real time to sleep for a simulated latency.
    pub(crate) fn real_delay(&self, simulated: Duration) -> Duration {
        simulated.div_f64(self.inner.speedup)
    }

    /// Opens a shell (New-PSSession) for `upn` on `tenant`. Returns the ShellId (uppercase GUID).
    #[allow(clippy::result_large_err)] // SimFault is the service API's error type by design
    pub fn open_shell(
        &self,
        upn: &str,
        password: &str,
        tenant: &str,
        configuration_name: &str,
    ) -> Result<String, SimFault> {
        self.open_shell_as(upn, SimCredential::Password(password), tenant, configuration_name, None)
    }

    /// A password, the old-style `sim-token:<upn>`, or an access token of this simulator's
    /// identity provider for its Exchange: a delegated one naming the account (`upn`), or an
    /// app-only one with the role `Exchange.ManageAsApp`.
    fn credential_matches(&self, account: &Account, credential: SimCredential<'_>) -> bool {
        match credential {
            SimCredential::Password(p) => account.password == p,
            SimCredential::BearerToken(t) => {
                if let Some(u) = t.trim().strip_prefix("sim-token:") {
                    return key(u) == key(&account.upn);
                }
                self.bearer_claims(t).is_some_and(|c| match &c.upn {
                    Some(upn) => key(upn) == key(&account.upn),
                    None => c.roles.iter().any(|r| r == "Exchange.ManageAsApp"),
                })
            }
        }
    }

    /// Checks an account's credential the way every request to the service is checked: an unknown
    /// account, a wrong password or a wrong token is the logon failure (HTTP 401). Tenant
    /// permissions, MFA and quotas are checked when a shell is opened.
    #[allow(clippy::result_large_err)] // SimFault is the service API's error type by design
    pub fn authenticate(&self, upn: &str, credential: SimCredential<'_>) -> Result<(), SimFault> {
        let st = self.lock();
        if st.locked.contains(&key(upn)) {
            return Err(SimFault::service(401, None, text_account_locked()));
        }
        match st.accounts.get(&key(upn)) {
            Some(a) if self.credential_matches(a, credential) => Ok(()),
            _ => Err(SimFault::service(401, None, text_logon_failed(upn))),
        }
    }

    /// [`Simulator::open_shell`] with a password or a bearer token, and optionally the ShellId the
    /// client proposes (WinRM keeps a PSRP client's RunspacePool id as the ShellId); a proposed id
    /// already in use is refused.
    #[allow(clippy::result_large_err)] // SimFault is the service API's error type by design
    pub fn open_shell_as(
        &self,
        upn: &str,
        credential: SimCredential<'_>,
        tenant: &str,
        configuration_name: &str,
        shell_id: Option<Uuid>,
    ) -> Result<String, SimFault> {
        let _ = configuration_name; // every configuration name is served (the sim has one endpoint)
        let mut st = self.lock();
        st.reap();
        if st.identity_down {
            return Err(SimFault::service(500, None, text_identity_down()));
        }
        let upn_key = key(upn);
        let owner = match st.accounts.get(&upn_key) {
            Some(a) if self.credential_matches(a, credential) => a,
            _ => return Err(SimFault::service(401, None, text_logon_failed(upn))),
        };
        // An access token is for one tenant: its `tid`.
        if let SimCredential::BearerToken(t) = credential {
            if let Some(claims) = self.bearer_claims(t) {
                if !claims.tid.eq_ignore_ascii_case(&tenant_guid(tenant).to_string()) {
                    return Err(SimFault::service(401, None, text_logon_failed(upn)));
                }
            }
        }
        if st.mfa.contains(&upn_key) {
            return Err(SimFault::service(401, None, text_mfa_required()));
        }
        let tenant_key = key(tenant);
        let permitted = st.tenants.contains_key(&tenant_key)
            && (owner.all_tenants || owner.tenants.contains(&tenant_key))
            && !st.denied.contains(&(upn_key.clone(), tenant_key.clone()));
        if !permitted {
            return Err(SimFault::service(500, None, text_permission_denied(upn)));
        }
        let owner = owner.upn.clone();
        if st.disabled.contains(&tenant_key) {
            return Err(SimFault::service(500, None, text_remote_powershell_disabled()));
        }
        // Injected refusals: as if someone else held shells, or the budget were spent.
        match self.injector().create() {
            Some(CreateFault::UserQuota) => {
                return Err(SimFault::service(500, Some(WSMAN_QUOTA_LIMIT), text_shell_quota("user")))
            }
            Some(CreateFault::TenantQuota) => return Err(SimFault::service(500, None, text_shell_quota("tenant"))),
            Some(CreateFault::Throttle { wait_seconds }) => {
                return Err(SimFault::service(500, None, text_budget_throttled(wait_seconds)))
            }
            None => {}
        }
        let by_user = st.shells.values().filter(|s| s.owner_key == upn_key).count() as u32;
        if by_user >= st.user_cap {
            st.quota_refusals += 1;
            return Err(SimFault::service(500, Some(WSMAN_QUOTA_LIMIT), text_shell_quota("user")));
        }
        let by_tenant = st.shells.values().filter(|s| s.tenant_key == tenant_key).count() as u32;
        if by_tenant >= st.tenant_cap {
            st.quota_refusals += 1;
            return Err(SimFault::service(500, None, text_shell_quota("tenant")));
        }
        let domain = st.tenants[&tenant_key].domain.clone();
        let shell_id = shell_id.unwrap_or_else(Uuid::new_v4).to_string().to_ascii_uppercase();
        if st.shells.contains_key(&shell_id) {
            return Err(SimFault::service(500, None, text_shell_exists(&shell_id)));
        }
        let created = st.clock.now();
        st.shells.insert(
            shell_id.clone(),
            Shell {
                used: false,
                owner: owner.clone(),
                owner_key: upn_key,
                tenant: domain.clone(),
                tenant_key,
                created,
                commands: 0,
            },
        );
        st.shells_opened += 1;
        let (u, t) = (by_user + 1, by_tenant + 1);
        let mu = st.max_by_user.entry(owner).or_insert(0);
        *mu = (*mu).max(u);
        let mt = st.max_by_tenant.entry(domain).or_insert(0);
        *mt = (*mt).max(t);
        Ok(shell_id)
    }

    /// Runs one command on a shell. The pipeline id tells retries of one invocation apart.
    #[allow(clippy::result_large_err)] // SimFault is the service API's error type by design
    pub fn run(
        &self,
        shell_id: &str,
        pipeline_id: Uuid,
        cmdlet: &str,
        params: &[(String, PsValue)],
    ) -> Result<CommandOutput, SimFault> {
        let mut guard = self.lock();
        let st = &mut *guard;
        st.reap();
        let id = shell_id.trim().to_ascii_uppercase();
        let Some(shell) = st.shells.get_mut(&id) else {
            return Err(State::shell_not_found(shell_id));
        };
        shell.used = true;
        if shell.commands >= st.max_commands {
            return Err(SimFault::service(500, None, text_max_commands()));
        }
        shell.commands += 1;
        let tenant_key = shell.tenant_key.clone();
        st.execute(&tenant_key, pipeline_id, cmdlet, params).unwrap_or_else(|| Err(State::shell_not_found(shell_id)))
    }

    /// Runs one command in a tenant with no shell: the REST service, where every call stands
    /// alone. Counted like a shell's commands (executions by pipeline id, commands run).
    #[allow(clippy::result_large_err)] // SimFault is the service API's error type by design
    pub(crate) fn run_stateless(
        &self,
        tenant: &str,
        pipeline_id: Uuid,
        cmdlet: &str,
        params: &[(String, PsValue)],
    ) -> Result<CommandOutput, SimFault> {
        let mut st = self.lock();
        st.execute(&key(tenant), pipeline_id, cmdlet, params)
            .unwrap_or_else(|| Err(SimFault::service(404, None, format!("The tenant '{tenant}' does not exist."))))
    }

    /// The cmdlet and parameters of a recent command as the service received them (after the
    /// wire's decoding: the types are what arrived), by pipeline id (the broker's invocation id).
    pub fn received_parameters(&self, pipeline_id: Uuid) -> Option<(String, Vec<(String, PsValue)>)> {
        let st = self.lock();
        st.received.iter().rev().find(|(id, _, _)| *id == pipeline_id).map(|(_, c, p)| (c.clone(), p.clone()))
    }

    /// The signer of the access tokens the identity provider ([`idp`]) issues and the services
    /// (REST, and WinRM's bearer-in-Basic) accept; tests may mint their own.
    pub fn access_tokens(&self) -> &tokens::SimTokens {
        &self.inner.tokens
    }

    /// A tenant's GUID (the `tid` its tokens carry), from its domain or its GUID; `None` for a
    /// tenant the simulator does not serve.
    pub fn tenant_id(&self, tenant: &str) -> Option<Uuid> {
        self.tenant_domain_key(tenant).map(|k| tenant_guid(&k))
    }

    /// The key (lowercase domain) of a tenant named by domain or GUID.
    fn tenant_domain_key(&self, tenant: &str) -> Option<String> {
        let st = self.lock();
        match Uuid::parse_str(tenant.trim()) {
            Ok(id) => st.tenant_ids.get(&id).cloned(),
            Err(_) => st.tenants.contains_key(&key(tenant)).then(|| key(tenant)),
        }
    }

    /// Closes a shell (Remove-PSSession), freeing its quota.
    #[allow(clippy::result_large_err)] // SimFault is the service API's error type by design
    pub fn close_shell(&self, shell_id: &str) -> Result<(), SimFault> {
        let mut st = self.lock();
        st.reap();
        match st.shells.remove(&shell_id.trim().to_ascii_uppercase()) {
            Some(_) => {
                st.shells_closed += 1;
                Ok(())
            }
            None => Err(State::shell_not_found(shell_id)),
        }
    }

    /// The live shells of an account, oldest first.
    pub fn list_shells(&self, upn: &str) -> Vec<ShellInfo> {
        let mut st = self.lock();
        st.reap();
        let upn_key = key(upn);
        let mut shells: Vec<ShellInfo> = st
            .shells
            .iter()
            .filter(|(_, s)| s.owner_key == upn_key)
            .map(|(id, s)| ShellInfo {
                shell_id: id.clone(),
                owner: s.owner.clone(),
                tenant: s.tenant.clone(),
                created: s.created,
                commands: s.commands,
            })
            .collect();
        shells.sort_by(|a, b| a.created.total_cmp(&b.created).then_with(|| a.shell_id.cmp(&b.shell_id)));
        shells
    }

    /// The cmdlet names the simulated endpoint knows.
    pub fn cmdlets() -> Vec<&'static str> {
        cmdlets::known_cmdlets()
    }
}
