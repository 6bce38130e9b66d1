//! Typed configuration in layers: embedded demo defaults → `config/psbroker.toml` (or `--config`)
//! → `PSBROKER_*` environment variables (`__` separates levels, e.g.
//! `PSBROKER_SERVER__LISTEN=0.0.0.0:9000`). Validated once at start; a bad file is a clear error.

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The demo configuration compiled into the binary: `psbroker serve` works with no files at all.
pub const EMBEDDED_DEMO: &str = include_str!("../config/psbroker.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub simulator: SimulatorConfig,
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileConfig>,
    #[serde(default)]
    pub admins: Vec<AdminConfig>,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    /// The longest a `wait: true` request is held open before it answers 202.
    pub max_wait_seconds: u64,
    pub max_body_bytes: usize,
    pub max_batch_items: usize,
    /// Serve HTTPS with this certificate and key (rustls). Required for a non-loopback listener
    /// unless `allow_insecure_non_loopback` is set.
    pub tls: Option<TlsConfig>,
    /// Listening on a non-loopback address without `tls` sends API tokens in clear text:
    /// refused unless this is set, e.g. behind a TLS-terminating proxy.
    pub allow_insecure_non_loopback: bool,
}

/// PEM files for the API listener. Both are read at start (a missing or unreadable file stops
/// the daemon with its path) and again on SIGHUP, so certificates rotate without a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert_file: std::path::PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_wait_seconds: 30,
            max_body_bytes: 32 << 20,
            max_batch_items: 100_000,
            tls: None,
            allow_insecure_non_loopback: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Every `/v1` request needs an API token. `false` is accepted only on a loopback listener
    /// (and logged as a warning): then every local process acts as an admin.
    pub enabled: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` (created if missing) or `sqlite::memory:`.
    pub url: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { url: "sqlite://./data/psbroker.db".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// How long an admin's (or tenant's) cap stays lowered after a quota fault says someone
    /// outside the broker holds shells.
    pub quota_cooldown_seconds: u64,
    /// How long an admin is left alone for a tenant after logon / permission / MFA failures.
    pub auth_failure_cooldown_seconds: u64,
    /// A batch lane that has waited this long without a session may take one from a tenant that
    /// has had its turn. Interactive work never waits for the quantum.
    pub fairness_quantum_ms: u64,
    /// Deadline for an invocation that does not set `timeout_seconds`.
    pub default_timeout_seconds: u64,
    /// First and largest backoff between retries of an unreachable service.
    pub retry_backoff_initial_ms: u64,
    pub retry_backoff_max_ms: u64,
    /// How often a command is retried after its session died under it.
    pub max_attempts: u32,
    /// Idle sessions an admin keeps open (the most recently used) when none of its work is
    /// queued, so the next call finds a warm session instead of paying an open.
    pub warm_sessions_per_admin: u32,
    /// How long an admin's other idle sessions stay open once none of its work is queued; then
    /// they are closed, so people and other tools can use the account's shell quota. The
    /// profile's `idle_timeout_seconds` still bounds every idle session, the reserve included.
    pub idle_linger_seconds: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            quota_cooldown_seconds: 60,
            auth_failure_cooldown_seconds: 300,
            fairness_quantum_ms: 30_000,
            default_timeout_seconds: 1800,
            retry_backoff_initial_ms: 500,
            retry_backoff_max_ms: 30_000,
            max_attempts: 5,
            warm_sessions_per_admin: 1,
            idle_linger_seconds: 15,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Adds a `tenant` label to per-tenant series. Off by default: hundreds of tenants make
    /// thousands of series.
    pub tenant_labels: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProfileKind {
    /// The built-in simulated service, in process.
    Simulator,
    /// WS-Management / PSRP over HTTP(S) (a later release).
    Wsman,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    pub kind: ProfileKind,
    /// `{tenant}` is replaced by the tenant's domain.
    pub connection_uri: String,
    pub configuration_name: String,
    /// Sessions retire before this age; the service itself kills them at 60 minutes.
    pub session_max_age_seconds: f64,
    /// Each session's max age is lowered by a random share up to this, so sessions opened
    /// together do not all retire together.
    pub max_age_jitter_percent: u8,
    pub max_commands_per_session: u32,
    /// An idle session is closed after this long so its quota is free for other tools.
    pub idle_timeout_seconds: u64,
    pub open_timeout_seconds: u64,
    pub command_timeout_seconds: u64,
    /// wsman: follow an HTTP 302 from the service (PowerShell's -AllowRedirection).
    pub allow_redirection: bool,
    /// wsman: allow `http://` URIs (loopback tests and the embedded simulator); TLS otherwise.
    pub allow_plain_http: bool,
    /// wsman: accept any TLS certificate (lab endpoints only).
    pub accept_invalid_certs: bool,
    /// wsman: a PEM file of CA certificates to trust besides the system's (an on-premises
    /// Exchange signed by an internal CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// wsman: the largest SOAP envelope the service accepts (153600 classic, 512000 newer).
    pub max_envelope_size: u32,
    /// wsman: how long the service may hold a Receive before answering "nothing yet".
    pub operation_timeout_seconds: u64,
    /// wsman: the time limit of one HTTP request (a Receive gets the operation timeout on top).
    /// Unset: operation timeout + 40 s.
    pub request_timeout_seconds: Option<f64>,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        Self {
            kind: ProfileKind::Simulator,
            connection_uri: "https://ps.outlook.com/powershell-liveid?DelegatedOrg={tenant}".into(),
            configuration_name: "Microsoft.Exchange".into(),
            session_max_age_seconds: 55.0 * 60.0,
            max_age_jitter_percent: 5,
            max_commands_per_session: 900,
            idle_timeout_seconds: 300,
            open_timeout_seconds: 60,
            command_timeout_seconds: 600,
            allow_redirection: false,
            allow_plain_http: false,
            accept_invalid_certs: false,
            ca_file: None,
            max_envelope_size: 153_600,
            operation_timeout_seconds: 20,
            request_timeout_seconds: None,
        }
    }
}

impl ProfileConfig {
    pub fn max_age(&self) -> Duration {
        Duration::from_secs_f64(self.session_max_age_seconds)
    }

    pub fn request_timeout(&self) -> Duration {
        match self.request_timeout_seconds {
            Some(s) => Duration::from_secs_f64(s),
            None => Duration::from_secs(self.operation_timeout_seconds + 40),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub name: String,
    pub upn: String,
    /// `env:VAR`, `file:/path`, or `literal:secret` (demo only: logged as a warning).
    pub credential: String,
    #[serde(default = "default_admin_cap")]
    pub cap: u32,
    /// Tenant domains this admin may manage, or `["*"]`.
    #[serde(default = "all_tenants")]
    pub tenants: Vec<String>,
}

fn default_admin_cap() -> u32 {
    3
}
fn all_tenants() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub domain: String,
    #[serde(default = "default_tenant_cap")]
    pub cap: u32,
    #[serde(default = "default_profile_name")]
    pub profile: String,
}

fn default_tenant_cap() -> u32 {
    20
}
fn default_profile_name() -> String {
    "default".into()
}

/// The simulated remote service. Unless `accounts`/`tenants` are given, its directory mirrors
/// the broker's: every configured tenant exists, every admin's credential is its password.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorConfig {
    pub mailboxes_per_tenant: u32,
    pub user_shell_cap: u32,
    pub tenant_shell_cap: u32,
    pub shell_lifetime_seconds: f64,
    /// Simulated time runs this many times faster than real time (lifetimes and latencies).
    pub time_speedup: f64,
    pub max_commands_per_shell: u32,
    pub open_latency_ms: u64,
    pub command_latency_ms: u64,
    pub close_latency_ms: u64,
    /// Tenants whose remote PowerShell policy is off.
    pub remote_powershell_disabled: Vec<String>,
    /// `upn:tenant` pairs where the account lacks permission to manage the tenant.
    pub denied: Vec<String>,
    /// Accounts that must pass MFA (and so cannot use remote PowerShell).
    pub mfa_required: Vec<String>,
    pub identity_service_down: bool,
    pub accounts: Vec<SimAccountConfig>,
    pub tenants: Vec<String>,
    /// Serve the simulated service over WS-Management/PSRP on this address (e.g.
    /// "127.0.0.1:0" for any free port). `{simulator}` in a profile's connection URI is replaced
    /// by the bound address, so the broker reaches it through the real wire protocol.
    pub listen: Option<String>,
    /// Answer a client's first request with HTTP 302 (tests -AllowRedirection handling).
    pub redirect_first: bool,
    /// Injected faults (all off by default); see docs/chaos.md.
    pub faults: FaultConfig,
}

/// Faults the simulator injects, each with its probability (0 to 1). Request-level kinds apply
/// to every WS-Management request on the wire (at most one per request), shell expiry to every
/// request naming a shell, the Create kinds to every shell creation. Decisions come from one
/// random sequence started from `seed`. docs/chaos.md says where each is injected and what the
/// broker does about it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    pub seed: u64,
    /// Only requests with these WS-Management actions (Create, Command, Receive, Send, Signal,
    /// Delete, Enumerate, Pull) get request-level faults and shell expiry; empty: all.
    pub actions: Vec<String>,
    /// The connection is closed before the request is processed.
    pub drop_before: f64,
    /// The request is processed, then the connection is closed: the answer is lost.
    pub drop_after: f64,
    /// HTTP 500 with a bare body; the request was processed or not (half each).
    pub http_500: f64,
    /// HTTP 503 with `Retry-After` and a bare body, as a load balancer sends: not processed.
    pub http_503: f64,
    pub retry_after_seconds: u64,
    /// The answer comes late: processed, then held `latency_spike_min_ms` to `latency_spike_ms`
    /// (uniformly).
    pub latency_spike: f64,
    pub latency_spike_min_ms: u64,
    pub latency_spike_ms: u64,
    /// The server forgets the shell before its lifetime: this request gets shell-not-found.
    pub shell_expiry: f64,
    /// Create refused with the per-user quota fault although the user is under the cap.
    pub user_quota: f64,
    /// Create refused with the per-tenant quota fault although the tenant is under the cap.
    pub tenant_quota: f64,
    /// Create refused by Exchange's budget throttling ("Please wait for N seconds").
    pub throttle: f64,
    pub throttle_wait_seconds: u64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            actions: vec![],
            drop_before: 0.0,
            drop_after: 0.0,
            http_500: 0.0,
            http_503: 0.0,
            retry_after_seconds: 1,
            latency_spike: 0.0,
            latency_spike_min_ms: 0,
            latency_spike_ms: 2000,
            shell_expiry: 0.0,
            user_quota: 0.0,
            tenant_quota: 0.0,
            throttle: 0.0,
            throttle_wait_seconds: 2,
        }
    }
}

impl FaultConfig {
    /// The probabilities, by name (for validation and reports).
    pub fn rates(&self) -> [(&'static str, f64); 9] {
        [
            ("drop_before", self.drop_before),
            ("drop_after", self.drop_after),
            ("http_500", self.http_500),
            ("http_503", self.http_503),
            ("latency_spike", self.latency_spike),
            ("shell_expiry", self.shell_expiry),
            ("user_quota", self.user_quota),
            ("tenant_quota", self.tenant_quota),
            ("throttle", self.throttle),
        ]
    }

    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in self.rates() {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("simulator.faults.{name} = {rate} is not a probability (0 to 1)"));
            }
        }
        let per_request = self.drop_before + self.drop_after + self.http_500 + self.http_503 + self.latency_spike;
        if per_request > 1.0 {
            return Err(format!("simulator.faults: the request-level rates add up to {per_request} (more than 1)"));
        }
        if self.user_quota + self.tenant_quota + self.throttle > 1.0 {
            return Err("simulator.faults: the Create rates add up to more than 1".into());
        }
        const ACTIONS: [&str; 8] = ["Create", "Command", "Receive", "Send", "Signal", "Delete", "Enumerate", "Pull"];
        if let Some(a) = self.actions.iter().find(|a| !ACTIONS.iter().any(|k| k.eq_ignore_ascii_case(a))) {
            return Err(format!("simulator.faults.actions: unknown action '{a}' (one of {})", ACTIONS.join(", ")));
        }
        Ok(())
    }
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            mailboxes_per_tenant: 25,
            user_shell_cap: 3,
            tenant_shell_cap: 20,
            shell_lifetime_seconds: 3600.0,
            time_speedup: 1.0,
            max_commands_per_shell: 1000,
            open_latency_ms: 200,
            command_latency_ms: 20,
            close_latency_ms: 10,
            remote_powershell_disabled: vec![],
            denied: vec![],
            mfa_required: vec![],
            identity_service_down: false,
            accounts: vec![],
            tenants: vec![],
            listen: None,
            redirect_first: false,
            faults: FaultConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimAccountConfig {
    pub upn: String,
    pub password: String,
    #[serde(default = "all_tenants")]
    pub tenants: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("credential of admin '{admin}': {reason}")]
    Credential { admin: String, reason: String },
}

impl Config {
    /// Loads the layers. `explicit` is `--config`; without it `./config/psbroker.toml` is used
    /// when present, else the embedded demo.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let base = match explicit {
            Some(path) => Figment::from(Toml::file_exact(path)),
            None if Path::new("config/psbroker.toml").exists() => {
                Figment::from(Toml::file_exact("config/psbroker.toml"))
            }
            None => Figment::from(Toml::string(EMBEDDED_DEMO)),
        };
        // Every key lives in a section, so only PSBROKER_SECTION__KEY names are configuration;
        // PSBROKER_LOG, PSBROKER_URL, PSBROKER_CONFIG and the like belong to the command line.
        let env = Env::prefixed("PSBROKER_").filter(|key| key.as_str().contains("__")).split("__");
        let config: Config = base.merge(env).extract().map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Toml::string(text)).extract().map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    pub fn demo() -> Config {
        Self::from_toml(EMBEDDED_DEMO).expect("embedded demo config is valid")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let Ok(listen) = self.server.listen.parse::<std::net::SocketAddr>() else {
            return bad(format!("server.listen '{}' is not an address:port", self.server.listen));
        };
        if !listen.ip().is_loopback() && !self.auth.enabled {
            return bad(format!(
                "auth.enabled = false is allowed only on a loopback address, and server.listen is {listen}"
            ));
        }
        if !listen.ip().is_loopback() && self.server.tls.is_none() && !self.server.allow_insecure_non_loopback {
            return bad(format!(
                "refusing to listen on {listen} without TLS: API tokens would cross the network in clear text. \
                 Configure [server.tls] cert_file and key_file (PEM), listen on 127.0.0.1, or put a \
                 TLS-terminating proxy in front and set [server] allow_insecure_non_loopback = true \
                 (PSBROKER_SERVER__ALLOW_INSECURE_NON_LOOPBACK=true)"
            ));
        }
        if self.admins.is_empty() {
            return bad("no [[admins]] configured".into());
        }
        if self.tenants.is_empty() {
            return bad("no [[tenants]] configured".into());
        }
        let mut names = HashSet::new();
        for a in &self.admins {
            if !names.insert(a.name.to_ascii_lowercase()) {
                return bad(format!("admin name '{}' is used twice", a.name));
            }
            if a.cap == 0 {
                return bad(format!("admin '{}' has cap 0", a.name));
            }
            if !a.upn.contains('@') {
                return bad(format!("admin '{}' upn '{}' is not a user principal name", a.name, a.upn));
            }
            CredentialRef::parse(&a.credential)
                .map_err(|reason| ConfigError::Credential { admin: a.name.clone(), reason })?;
        }
        let mut domains = HashSet::new();
        for t in &self.tenants {
            if !domains.insert(t.domain.to_ascii_lowercase()) {
                return bad(format!("tenant '{}' is listed twice", t.domain));
            }
            if t.cap == 0 {
                return bad(format!("tenant '{}' has cap 0", t.domain));
            }
            if !self.profiles.contains_key(&t.profile) {
                return bad(format!(
                    "tenant '{}' uses profile '{}', which is not defined under [profiles]",
                    t.domain, t.profile
                ));
            }
        }
        for a in &self.admins {
            for t in &a.tenants {
                if t != "*" && !domains.contains(&t.to_ascii_lowercase()) {
                    return bad(format!("admin '{}' lists tenant '{}', which is not configured", a.name, t));
                }
            }
        }
        for (name, p) in &self.profiles {
            if p.max_commands_per_session == 0 || p.session_max_age_seconds.is_nan() || p.session_max_age_seconds <= 0.0
            {
                return bad(format!("profile '{name}': max commands and max age must be positive"));
            }
            if p.max_age_jitter_percent > 50 {
                return bad(format!("profile '{name}': max_age_jitter_percent must be at most 50"));
            }
        }
        if self.simulator.time_speedup <= 0.0 {
            return bad("simulator.time_speedup must be positive".into());
        }
        if let Err(e) = self.simulator.faults.validate() {
            return bad(e);
        }
        for (name, p) in &self.profiles {
            if p.request_timeout_seconds.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
                return bad(format!("profile '{name}': request_timeout_seconds must be positive"));
            }
        }
        Ok(())
    }
}

/// Where an admin's secret comes from. Resolved at start so a missing variable fails early.
#[derive(Debug, Clone, PartialEq)]
pub enum CredentialRef {
    Env(String),
    File(PathBuf),
    Literal(String),
}

impl CredentialRef {
    pub fn parse(text: &str) -> Result<CredentialRef, String> {
        if let Some(var) = text.strip_prefix("env:") {
            if var.is_empty() {
                return Err("env: needs a variable name".into());
            }
            Ok(CredentialRef::Env(var.to_string()))
        } else if let Some(path) = text.strip_prefix("file:") {
            Ok(CredentialRef::File(PathBuf::from(path)))
        } else if let Some(lit) = text.strip_prefix("literal:") {
            Ok(CredentialRef::Literal(lit.to_string()))
        } else {
            Err("must start with env:, file: or literal:".into())
        }
    }

    pub fn resolve(&self) -> Result<SecretString, String> {
        match self {
            CredentialRef::Env(var) => {
                std::env::var(var).map(SecretString::from).map_err(|_| format!("environment variable {var} is not set"))
            }
            CredentialRef::File(path) => std::fs::read_to_string(path)
                .map(|s| SecretString::from(s.trim_end_matches(['\r', '\n']).to_string()))
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            CredentialRef::Literal(s) => Ok(SecretString::from(s.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_demo_is_valid() {
        let c = Config::demo();
        assert!(!c.admins.is_empty());
        assert!(c.profiles.contains_key("default"));
    }

    #[test]
    fn unknown_profile_is_rejected_with_its_name() {
        let text = EMBEDDED_DEMO.replacen("profile = \"default\"", "profile = \"nope\"", 1);
        let err = Config::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("'nope'"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
    fn environment_overrides_sections_and_ignores_other_variables() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PSBROKER_SERVER__LISTEN", "127.0.0.1:9999");
            jail.set_env("PSBROKER_LOG", "debug");
            jail.set_env("PSBROKER_URL", "http://x");
            let c = Config::load(None).expect("loads");
            assert_eq!(c.server.listen, "127.0.0.1:9999");
            Ok(())
        });
    }

    #[test]
    fn non_loopback_needs_tls_or_an_explicit_override_and_auth() {
        let open = EMBEDDED_DEMO.replacen("listen = \"127.0.0.1:8080\"", "listen = \"0.0.0.0:8080\"", 1);
        let err = Config::from_toml(&open).unwrap_err().to_string();
        assert!(err.contains("without TLS") && err.contains("allow_insecure_non_loopback"), "{err}");
        assert!(err.contains("[server.tls]"), "the message names the TLS settings: {err}");
        let with_tls = format!("{open}\n[server.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n");
        let tls = Config::from_toml(&with_tls).expect("TLS makes a non-loopback listener acceptable");
        assert_eq!(tls.server.tls.unwrap().key_file, std::path::PathBuf::from("k.pem"));
        let allowed = open.replacen("[server]\n", "[server]\nallow_insecure_non_loopback = true\n", 1);
        assert!(Config::from_toml(&allowed).is_ok());
        let no_auth = format!("{allowed}\n[auth]\nenabled = false\n");
        assert!(Config::from_toml(&no_auth).unwrap_err().to_string().contains("loopback"));
        let local_no_auth = format!("{EMBEDDED_DEMO}\n[auth]\nenabled = false\n");
        assert!(!Config::from_toml(&local_no_auth).unwrap().auth.enabled);
        assert!(Config::demo().auth.enabled, "secure by default");
    }

    #[test]
    fn fault_rates_are_probabilities_and_actions_are_known() {
        let with = |faults: &str| Config::from_toml(&format!("{EMBEDDED_DEMO}\n[simulator.faults]\n{faults}\n"));
        let ok = with("seed = 7\ndrop_after = 0.01\nthrottle = 0.5\nactions = [\"Receive\", \"create\"]").unwrap();
        assert_eq!((ok.simulator.faults.seed, ok.simulator.faults.drop_after), (7, 0.01));
        assert!(with("http_503 = 1.5").unwrap_err().to_string().contains("http_503"));
        assert!(with("drop_before = 0.6\ndrop_after = 0.6").unwrap_err().to_string().contains("add up"));
        assert!(with("actions = [\"Reboot\"]").unwrap_err().to_string().contains("Reboot"));
        assert!(with("colour = 0.1").is_err(), "unknown keys are refused");
        assert_eq!(Config::demo().simulator.faults, FaultConfig::default(), "no faults unless asked for");
    }

    #[test]
    fn the_commented_fault_example_in_the_demo_is_valid() {
        let start = EMBEDDED_DEMO.find("# [simulator.faults]").expect("the demo shows the fault keys");
        let block: Vec<&str> = EMBEDDED_DEMO[start..].lines().map(|l| l.strip_prefix("# ").unwrap_or(l)).collect();
        let c = Config::from_toml(&format!("{}\n{}\n", &EMBEDDED_DEMO[..start], block.join("\n"))).unwrap();
        assert_eq!((c.simulator.faults.drop_after, c.simulator.faults.actions.len()), (0.009, 1));
    }

    #[test]
    fn credential_refs_parse_and_resolve() {
        assert_eq!(CredentialRef::parse("env:X").unwrap(), CredentialRef::Env("X".into()));
        assert!(CredentialRef::parse("hunter2").is_err());
        let dir = std::env::temp_dir().join(format!("psb-cred-{}", std::process::id()));
        std::fs::write(&dir, "s3cret\n").unwrap();
        let secret = CredentialRef::File(dir.clone()).resolve().unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(secret.expose_secret(), "s3cret");
        assert!(!format!("{secret:?}").contains("s3cret"));
        std::fs::remove_file(dir).unwrap();
    }
}
