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
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
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
    /// The body of one `POST /v1/invocations` (a batch may use `max_body_bytes`).
    pub max_invocation_body_bytes: usize,
    /// JSON values (array elements and hashtable entries, at any depth) in one invocation's
    /// parameters; a single invocation's body is checked against it while it is scanned.
    pub max_parameter_values: usize,
    /// JSON values in one batch body, all items together, checked before any item is parsed.
    pub max_batch_values: usize,
    /// Open connections at most. At the limit a new connection takes the place of the oldest
    /// one that has no request in progress; when every one is busy the new one is refused.
    pub max_connections: usize,
    /// A new connection must send its first request's headers within this, and a request's
    /// headers, once started, must be complete within it (slowloris).
    pub header_read_timeout_seconds: f64,
    /// A kept-alive connection with no request in progress is closed after this long.
    pub idle_timeout_seconds: f64,
    /// A request body must arrive whole within this (else 408), and an answer the client does
    /// not read for this long closes the connection.
    pub body_timeout_seconds: f64,
    /// On SIGTERM, how long running commands get before their sessions are closed anyway.
    pub drain_timeout_seconds: f64,
    /// After the drain, how long open connections get to finish their answers before they are
    /// closed: the stop always ends within drain + session closing (at most 10 s) + this.
    pub shutdown_grace_seconds: f64,
    /// Host names (with or without `:port`) the API answers to besides `localhost`,
    /// `127.0.0.1` and `[::1]` on a loopback listener; any other `Host` is 421 (DNS rebinding).
    /// On a non-loopback listener the check applies only when this list is not empty.
    pub allowed_hosts: Vec<String>,
    pub rate_limit: RateLimitConfig,
}

/// Per-token limits on intake (`POST /v1/invocations` and `POST /v1/batches`), as token
/// buckets: a bucket holds `*_burst` and refills at `*_per_second`; 0 per second turns that
/// bucket off. Beyond it: 429 `rate_limited` with `Retry-After`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Intake requests (an invocation or a whole batch each).
    pub requests_per_second: u32,
    pub request_burst: u32,
    /// Invocations (one per single invocation, one per batch item).
    pub items_per_second: u32,
    pub item_burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { requests_per_second: 100, request_burst: 200, items_per_second: 2_000, item_burst: 100_000 }
    }
}

impl ServerConfig {
    fn check_limits(&self) -> Result<(), String> {
        let seconds = [
            ("header_read_timeout_seconds", self.header_read_timeout_seconds),
            ("idle_timeout_seconds", self.idle_timeout_seconds),
            ("body_timeout_seconds", self.body_timeout_seconds),
            ("drain_timeout_seconds", self.drain_timeout_seconds),
            ("shutdown_grace_seconds", self.shutdown_grace_seconds),
        ];
        if let Some((name, _)) = seconds.iter().find(|(_, s)| !(s.is_finite() && *s > 0.0 && *s <= 86_400.0)) {
            return Err(format!("server.{name} must be a number of seconds between 0 and 86400"));
        }
        let sizes = [
            ("max_body_bytes", self.max_body_bytes),
            ("max_invocation_body_bytes", self.max_invocation_body_bytes),
            ("max_parameter_values", self.max_parameter_values),
            ("max_batch_values", self.max_batch_values),
            ("max_batch_items", self.max_batch_items),
            ("max_connections", self.max_connections),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, n)| *n == 0) {
            return Err(format!("server.{name} must be positive"));
        }
        let r = &self.rate_limit;
        if (r.requests_per_second > 0 && r.request_burst == 0) || (r.items_per_second > 0 && r.item_burst == 0) {
            return Err("server.rate_limit: a bucket that is on needs a burst of at least 1".into());
        }
        for host in &self.allowed_hosts {
            if host.is_empty() || host.contains(['/', ' ', '@']) {
                return Err(format!("server.allowed_hosts: '{host}' is not a host name"));
            }
        }
        Ok(())
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.drain_timeout_seconds)
    }

    /// The longest a graceful stop can take with these settings (see [`crate::app::longest_stop`]).
    pub fn longest_stop(&self) -> Duration {
        self.drain_timeout() + crate::app::SESSION_CLOSE_BUDGET + Duration::from_secs_f64(self.shutdown_grace_seconds)
    }
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
            max_invocation_body_bytes: 4 << 20,
            max_parameter_values: 10_000,
            max_batch_values: 1_000_000,
            max_connections: 512,
            header_read_timeout_seconds: 10.0,
            idle_timeout_seconds: 60.0,
            body_timeout_seconds: 30.0,
            drain_timeout_seconds: crate::app::DRAIN_TIMEOUT.as_secs_f64(),
            shutdown_grace_seconds: crate::app::CONNECTION_GRACE.as_secs_f64(),
            allowed_hosts: vec![],
            rate_limit: RateLimitConfig::default(),
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
    /// `sqlite://PATH` (created if missing), `sqlite::memory:`, or `postgres://USER@HOST/DB`
    /// (see docs/store.md).
    pub url: String,
    /// This node's own files (the bootstrap API token, the node id). Default: the SQLite
    /// file's directory, or `./data` with PostgreSQL.
    pub data_dir: Option<std::path::PathBuf>,
    /// `url` goes through PgBouncer (or another pooler) in transaction mode: then `direct_url`
    /// is required, and no startup parameter is sent (docs/cluster.md, "Behind PgBouncer").
    pub pgbouncer: bool,
    /// PostgreSQL's own address, for what needs a session of its own and so must not go through
    /// the pooler: the migrations at start (under sqlx's session-level lock) and LISTEN (one
    /// connection per node). Only with `pgbouncer = true`.
    pub direct_url: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { url: "sqlite://./data/psbroker.db".into(), data_dir: None, pgbouncer: false, direct_url: None }
    }
}

impl StoreConfig {
    /// PostgreSQL's own address when `url` goes through a pooler in transaction mode.
    pub fn direct(&self) -> Option<&str> {
        self.direct_url.as_deref().filter(|_| self.pgbouncer)
    }

    fn check(&self) -> Result<(), String> {
        let postgres = crate::store::is_postgres_url(&self.url);
        match (self.pgbouncer, &self.direct_url) {
            (true, _) if !postgres => Err("store.pgbouncer = true needs store.url = \"postgres://...\"".into()),
            (true, None) => Err("store.pgbouncer = true needs store.direct_url: PostgreSQL's own address (not \
                 PgBouncer's), for the migrations and LISTEN, which need a session of their own"
                .into()),
            (true, Some(direct)) if !crate::store::is_postgres_url(direct) => {
                Err("store.direct_url must be a postgres:// URL (PostgreSQL's own address)".into())
            }
            (false, Some(_)) => Err("store.direct_url is used only with store.pgbouncer = true (store.url going \
                 through PgBouncer in transaction mode)"
                .into()),
            _ => Ok(()),
        }
    }
}

/// Several nodes on one PostgreSQL store (docs/cluster.md). Used only with `store.url =
/// "postgres://..."`; every node of a cluster should have the same values.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// How often a node beats: renews its leases, looks at the other nodes' and the queue.
    pub heartbeat_ms: u64,
    /// A lease lives this long past its last renewal: a node that dies gives its slots back
    /// within it, with no operator action.
    pub lease_ttl_seconds: u64,
    /// A node silent this long is dead: another node deletes its shells and rescues its work.
    /// Shorter than the lease, so its slots stay counted until its shells are gone.
    pub dead_after_seconds: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { heartbeat_ms: 2_000, lease_ttl_seconds: 15, dead_after_seconds: 10 }
    }
}

impl ClusterConfig {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_seconds)
    }

    pub fn dead_after(&self) -> Duration {
        Duration::from_secs(self.dead_after_seconds)
    }

    /// How long after its last renewal a node stops using its leases: a beat before the others
    /// may count it dead. The store stamps a beat after the node sent it, so the node's count
    /// starts first; the beat to spare covers the stop itself. A rescue (which re-queues the
    /// node's reads and ends its writes) then never meets a node still running them, and the
    /// leases, which live `dead_after` + 2 beats at least, are long unused when they expire.
    pub fn fence_after(&self) -> Duration {
        self.dead_after().saturating_sub(self.heartbeat())
    }

    fn check(&self) -> Result<(), String> {
        if self.heartbeat_ms < 100 {
            return Err("cluster.heartbeat_ms must be at least 100".into());
        }
        // A rescuer needs a beat or two between declaring a node dead and the lease's expiry, to
        // take the leases over before they stop counting.
        if self.heartbeat() * 3 > self.dead_after() || self.dead_after() + self.heartbeat() * 2 > self.lease_ttl() {
            return Err(format!(
                "cluster: need 3 x heartbeat ({} ms) <= dead_after_seconds ({}) and dead_after_seconds + 2 x \
                 heartbeat <= lease_ttl_seconds ({})",
                self.heartbeat_ms, self.dead_after_seconds, self.lease_ttl_seconds
            ));
        }
        Ok(())
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
    /// Exchange Online (or Security & Compliance) over the REST admin API with OAuth tokens.
    #[serde(rename = "exo_rest")]
    ExoRest,
}

/// exo_rest: which service behind the admin API.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RestService {
    /// Exchange Online (`https://outlook.office365.com` in the global cloud).
    #[default]
    Exchange,
    /// Security & Compliance (`https://ps.compliance.protection.outlook.com`).
    Compliance,
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
    /// exo_rest: of one request (each page, each `$batch` sub-request). Unset: operation
    /// timeout + 40 s.
    pub request_timeout_seconds: Option<f64>,
    /// exo_rest: `exchange` or `compliance`.
    pub service: RestService,
    /// exo_rest: the Microsoft cloud its tenants live in (`global`, `gcc_high`, `dod`,
    /// `china`): picks the service's base (and so its token scope) unless `base_url` is given.
    /// Its admins' `[admins.oauth] cloud` should match.
    pub cloud: crate::identity::cloud::Cloud,
    /// exo_rest: the service's base URL (token audience and front door). Unset: the global
    /// cloud's. `{simulator}` is replaced by the embedded simulator's address; `http://` needs
    /// `allow_plain_http`.
    pub base_url: Option<String>,
    /// exo_rest: `Prefer: odata.maxpagesize` (the service caps it at 1000).
    pub max_page_size: u32,
    /// exo_rest: bulk work may travel as `$batch` requests of up to ten cmdlets per tenant.
    pub batch: bool,
    /// exo_rest: the most calls in flight one admin identity makes (a session here is one call
    /// at a time, so this caps the admin's sessions on this profile's tenants together with its
    /// own `cap`, the smaller winning). Exchange Online allows 3 per identity.
    pub calls_per_admin: u32,
    /// exo_rest: the most calls in flight in one tenant of this profile (with the tenant's `cap`,
    /// the smaller winning). Exchange Online allows 20 per tenant (across identities).
    pub calls_per_tenant: u32,
    /// wsman: how sessions log on: `basic` (the default), `ntlm` (NTLMv2 under Negotiate, with
    /// WinRM message encryption over `http://`), `kerberos` (tickets from `kdc`, sealed the same
    /// way), `negotiate` (Kerberos when it can be used, NTLM otherwise) or `certificate` (a TLS
    /// client certificate over `https://`; each admin's credential is a PEM with the certificate
    /// and its key).
    pub auth: WsmanAuth,
    /// wsman, NTLM over `http://`: seal every message (on by default, as Windows and pypsrp).
    /// `false` is the explicit opt-out to clear SOAP, and then `http://` needs `allow_plain_http`.
    pub message_encryption: bool,
    /// wsman, NTLM/Kerberos: the service principal name; `HTTP/<host of the URI>` when unset.
    pub spn: Option<String>,
    /// wsman, Kerberos: the KDC, `tcp://host:88` (DNS discovery is not implemented).
    pub kdc: Option<String>,
}

/// wsman: how a profile's sessions log on.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum WsmanAuth {
    #[default]
    Basic,
    Negotiate,
    Ntlm,
    Kerberos,
    Certificate,
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
            service: RestService::Exchange,
            cloud: crate::identity::cloud::Cloud::Global,
            base_url: None,
            max_page_size: 1000,
            batch: false,
            calls_per_admin: 3,
            calls_per_tenant: 20,
            auth: WsmanAuth::Basic,
            message_encryption: true,
            spn: None,
            kdc: None,
        }
    }
}

impl ProfileConfig {
    /// exo_rest: the base URL, as configured or the profile's cloud's for the service.
    pub fn rest_base_url(&self) -> String {
        match (&self.base_url, self.service) {
            (Some(url), _) => url.trim().to_string(),
            (None, RestService::Exchange) => self.cloud.exo_base().into(),
            (None, RestService::Compliance) => self.cloud.ipps_base().into(),
        }
    }

    fn validate_rest(&self) -> Result<(), String> {
        if self.max_page_size == 0 {
            return Err("max_page_size must be at least 1".into());
        }
        if self.calls_per_admin == 0 || self.calls_per_tenant == 0 {
            return Err("calls_per_admin and calls_per_tenant must be at least 1".into());
        }
        let base = self.rest_base_url();
        if base.contains("{simulator}") {
            return Ok(());
        }
        match base.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase()) {
            Some(s) if s == "https" => Ok(()),
            Some(s) if s == "http" && self.allow_plain_http => Ok(()),
            Some(s) if s == "http" => {
                Err(format!("base_url {base} is plain http: bearer tokens would travel in clear (allow_plain_http for loopback tests)"))
            }
            _ => Err(format!("base_url {base:?} is not an https:// URL")),
        }
    }

    pub fn max_age(&self) -> Duration {
        Duration::from_secs_f64(self.session_max_age_seconds)
    }

    /// Bulk invocations one session call may carry: 10 for an `exo_rest` profile with `batch`
    /// (Exchange Online's `$batch`), else 1.
    pub fn cmdlets_per_call(&self) -> usize {
        match (self.kind, self.batch) {
            (ProfileKind::ExoRest, true) => 10,
            _ => 1,
        }
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
    /// The password for Basic authentication: `env:VAR`, `file:/path`, or `literal:secret`
    /// (demo only: logged as a warning). Not needed by an admin that signs in with `oauth`.
    #[serde(default)]
    pub credential: String,
    #[serde(default = "default_admin_cap")]
    pub cap: u32,
    /// Tenant domains this admin may manage, or `["*"]`.
    #[serde(default = "all_tenants")]
    pub tenants: Vec<String>,
    /// The admin's OAuth identity (Entra ID): endpoints that take bearer tokens get them from it.
    #[serde(default)]
    pub oauth: Option<OAuthConfig>,
}

/// `[identity]`: settings of the token service shared by every OAuth identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Seals stored refresh tokens (XChaCha20-Poly1305): `env:VAR` or `file:/path` holding 32
    /// random bytes as base64 or hex (e.g. `head -c 32 /dev/urandom | base64`). Required as soon
    /// as an admin uses `grant = "refresh_token"`.
    pub refresh_token_key: Option<String>,
    /// The time limit of one request to the identity provider.
    pub request_timeout_seconds: u64,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self { refresh_token_key: None, request_timeout_seconds: 30 }
    }
}

/// How an OAuth identity gets its tokens.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OAuthGrant {
    /// App-only: the application signs in as itself in each tenant (certificate or secret).
    ClientCredentials,
    /// Delegated (partners): a refresh token from `psbroker login --admin NAME`, exchanged at each
    /// customer tenant's token endpoint.
    RefreshToken,
}

/// `[admins.oauth]`: an admin's identity at Entra ID.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    pub grant: OAuthGrant,
    /// `global` (also GCC), `gcc_high`, `dod` or `china`: picks the login authority and the
    /// Exchange Online / Security & Compliance hosts.
    #[serde(default)]
    pub cloud: crate::identity::cloud::Cloud,
    /// The application (client) id.
    pub client_id: String,
    /// The application's secret: `env:`, `file:` or `literal:` (demo only).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// The application's certificate with its private key: a PEM file (certificate and
    /// unencrypted key) or a PFX file (`file:/path`; a PEM may also come from `env:`).
    #[serde(default)]
    pub certificate: Option<String>,
    /// The PFX file's password (`env:`, `file:`, `literal:`).
    #[serde(default)]
    pub certificate_password: Option<String>,
    /// refresh_token: the tenant `psbroker login` signs in at (the partner's own tenant, as a
    /// domain or GUID). Default `organizations`.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Overrides the cloud's login authority (e.g. `http://{simulator}` for the simulator's
    /// identity provider).
    #[serde(default)]
    pub login_url: Option<String>,
}

impl OAuthConfig {
    /// The login authority requests go to.
    pub fn login_url(&self) -> String {
        self.login_url.clone().unwrap_or_else(|| self.cloud.login_url().to_string()).trim_end_matches('/').to_string()
    }

    /// Checks the combination and every credential reference (not their values).
    pub fn validate(&self) -> Result<(), String> {
        if self.client_id.trim().is_empty() {
            return Err("oauth.client_id is empty".into());
        }
        match (&self.client_secret, &self.certificate, self.grant) {
            (Some(_), Some(_), _) => return Err("oauth: give client_secret or certificate, not both".into()),
            (None, None, OAuthGrant::ClientCredentials) => {
                return Err("oauth: grant = \"client_credentials\" needs client_secret or certificate".into())
            }
            _ => {}
        }
        if self.certificate_password.is_some() && self.certificate.is_none() {
            return Err("oauth: certificate_password without certificate".into());
        }
        for (name, reference) in [
            ("client_secret", &self.client_secret),
            ("certificate", &self.certificate),
            ("certificate_password", &self.certificate_password),
        ] {
            if let Some(r) = reference {
                CredentialRef::parse(r).map_err(|e| format!("oauth.{name}: {e}"))?;
            }
        }
        if let Some(url) = &self.login_url {
            let probe = url.replace("{simulator}", "127.0.0.1:1");
            if !(probe.starts_with("https://") || probe.starts_with("http://")) || reqwest::Url::parse(&probe).is_err()
            {
                return Err(format!("oauth.login_url '{url}' is not an http(s) URL"));
            }
        }
        Ok(())
    }
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
    /// Accounts that must pass MFA (and so cannot use remote PowerShell with a password); the
    /// identity provider refuses them tokens from a sign-in without MFA (AADSTS50076).
    pub mfa_required: Vec<String>,
    /// The identity service is down: WinRM logons fail with Live ID's text, and the identity
    /// provider answers 503 with `Retry-After`.
    pub identity_service_down: bool,
    pub accounts: Vec<SimAccountConfig>,
    pub tenants: Vec<String>,
    /// Serve the simulated service over WS-Management/PSRP on this address (e.g.
    /// "127.0.0.1:0" for any free port). `{simulator}` in a profile's connection URI is replaced
    /// by the bound address, so the broker reaches it through the real wire protocol.
    pub listen: Option<String>,
    /// Answer a client's first request with HTTP 302 (tests -AllowRedirection handling).
    pub redirect_first: bool,
    /// How WS-Management clients may log on: `basic` and/or `ntlm` (NTLM under Negotiate,
    /// checked against each account's password, with WinRM message encryption).
    pub auth: Vec<SimAuth>,
    /// Serve clear SOAP on a connection logged on with NTLM (Windows' AllowUnencrypted).
    pub allow_unencrypted: bool,
    /// Accept Kerberos for this service principal (`HTTP/host@REALM`) with its key from
    /// `kerberos_keytab` (an MIT keytab); client principals must be `accounts`.
    pub kerberos_principal: Option<String>,
    pub kerberos_keytab: Option<PathBuf>,
    /// Injected faults (all off by default); see docs/chaos.md.
    pub faults: FaultConfig,
    /// The simulated identity provider (Entra ID's token and device-code endpoints).
    pub identity: SimIdentityConfig,
    /// The REST admin API (Exchange Online's `InvokeCommand`) on the same listener.
    pub rest: SimRestConfig,
}

/// The simulated REST admin API: paging, limits and hosts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SimRestConfig {
    /// The service's own cap on a page (also the page size when a client asks for none).
    pub max_page_size: u32,
    /// Calls in flight one admin identity (a user, or an application) may have; more are
    /// refused with 429 and `Retry-After`. A `$batch` is one call.
    pub calls_per_identity: u32,
    /// Calls in flight in one tenant, across identities.
    pub calls_per_tenant: u32,
    /// `Retry-After` of those 429s, in seconds (fractions allowed).
    pub retry_after_seconds: f64,
    /// Tenants served from a tenant-specific host: domain → host label. The front door answers
    /// their calls and the discovery probe with 302 to `/t/{label}/…`.
    pub tenant_hosts: BTreeMap<String, String>,
    /// The Security & Compliance region every tenant is served from (`/ipps/r/{region}/…`).
    pub compliance_region: String,
}

impl Default for SimRestConfig {
    fn default() -> Self {
        Self {
            max_page_size: 1000,
            calls_per_identity: 3,
            calls_per_tenant: 20,
            retry_after_seconds: 1.0,
            tenant_hosts: BTreeMap::new(),
            compliance_region: "nam12b".into(),
        }
    }
}

/// `[simulator.identity]`: the simulated identity provider, served on the simulator's listener
/// (`POST /{tenant}/oauth2/v2.0/token`, `/{tenant}/oauth2/v2.0/devicecode`, `/devicelogin`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SimIdentityConfig {
    /// Lifetime of the access tokens it issues (Entra: about an hour). Seconds, so tests can
    /// make it short.
    pub token_lifetime_seconds: u64,
    /// A refresh token expires after this long (Entra: 90 days of inactivity).
    pub refresh_token_lifetime_seconds: u64,
    /// Device-code sign-in: the polling interval it asks for, and how long a code lives.
    pub device_code_interval_seconds: u64,
    pub device_code_lifetime_seconds: u64,
    /// Users who sign in with a password only: their delegated tokens have no `mfa` in `amr`.
    /// Everyone else signs in with multi-factor authentication.
    pub users_without_mfa: Vec<String>,
    /// Registered applications. Empty: one per distinct `client_id` of the `[[admins]]` OAuth
    /// identities, with their secret or certificate, consented in every tenant.
    pub apps: Vec<SimAppConfig>,
    /// Probability (0 to 1) that a token request is answered 503 with `Retry-After`.
    pub unavailable: f64,
    pub retry_after_seconds: u64,
    pub seed: u64,
}

impl Default for SimIdentityConfig {
    fn default() -> Self {
        Self {
            token_lifetime_seconds: 3600,
            refresh_token_lifetime_seconds: 90 * 24 * 3600,
            device_code_interval_seconds: 5,
            device_code_lifetime_seconds: 900,
            users_without_mfa: vec![],
            apps: vec![],
            unavailable: 0.0,
            retry_after_seconds: 1,
            seed: 0,
        }
    }
}

impl SimIdentityConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.unavailable) {
            return Err(format!("simulator.identity.unavailable = {} is not a probability (0 to 1)", self.unavailable));
        }
        if self.token_lifetime_seconds == 0 || self.device_code_interval_seconds == 0 {
            return Err(
                "simulator.identity: token_lifetime_seconds and device_code_interval_seconds must be positive".into()
            );
        }
        for app in &self.apps {
            for secret in &app.secrets {
                CredentialRef::parse(secret)
                    .map_err(|e| format!("simulator.identity.apps '{}': secret: {e}", app.client_id))?;
            }
        }
        Ok(())
    }
}

/// An application registered at the simulated identity provider.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimAppConfig {
    pub client_id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Its client secrets (`env:`, `file:`, `literal:`).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// PEM files of its certificates (the public part is enough).
    #[serde(default)]
    pub certificates: Vec<PathBuf>,
    /// Tenants where it is consented (has a service principal), or `["*"]`.
    #[serde(default = "all_tenants")]
    pub tenants: Vec<String>,
    /// Allows public-client flows (device code, refresh without a client credential).
    #[serde(default = "yes")]
    pub public_client: bool,
}

fn yes() -> bool {
    true
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
    /// HTTP 429 with `Retry-After` (the REST service's throttling): not processed.
    pub http_429: f64,
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
            http_429: 0.0,
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
    pub fn rates(&self) -> [(&'static str, f64); 10] {
        [
            ("drop_before", self.drop_before),
            ("drop_after", self.drop_after),
            ("http_500", self.http_500),
            ("http_503", self.http_503),
            ("http_429", self.http_429),
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
        let per_request =
            self.drop_before + self.drop_after + self.http_500 + self.http_503 + self.http_429 + self.latency_spike;
        if per_request > 1.0 {
            return Err(format!("simulator.faults: the request-level rates add up to {per_request} (more than 1)"));
        }
        if self.user_quota + self.tenant_quota + self.throttle > 1.0 {
            return Err("simulator.faults: the Create rates add up to more than 1".into());
        }
        // WS-Management actions, then the REST service's requests.
        const ACTIONS: [&str; 11] = [
            "Create",
            "Command",
            "Receive",
            "Send",
            "Signal",
            "Delete",
            "Enumerate",
            "Pull",
            "InvokeCommand",
            "Batch",
            "Probe",
        ];
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
            auth: vec![SimAuth::Basic],
            allow_unencrypted: false,
            kerberos_principal: None,
            kerberos_keytab: None,
            faults: FaultConfig::default(),
            identity: SimIdentityConfig::default(),
            rest: SimRestConfig::default(),
        }
    }
}

/// A logon method of the simulator's WS-Management listener.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SimAuth {
    Basic,
    Ntlm,
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
        if let Err(e) = self.server.check_limits() {
            return bad(e);
        }
        if let Err(e) = self.store.check() {
            return bad(e);
        }
        if let Err(e) = self.cluster.check() {
            return bad(e);
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
            match &a.oauth {
                Some(oauth) => {
                    oauth.validate().map_err(|reason| ConfigError::Credential { admin: a.name.clone(), reason })?
                }
                None if a.credential.is_empty() => {
                    return Err(ConfigError::Credential {
                        admin: a.name.clone(),
                        reason: "needs a credential (or an [admins.oauth] identity)".into(),
                    })
                }
                None => {}
            }
            if !a.credential.is_empty() {
                CredentialRef::parse(&a.credential)
                    .map_err(|reason| ConfigError::Credential { admin: a.name.clone(), reason })?;
            }
        }
        if let Some(a) =
            self.admins.iter().find(|a| a.oauth.as_ref().is_some_and(|o| o.grant == OAuthGrant::RefreshToken))
        {
            match &self.identity.refresh_token_key {
                None => {
                    return bad(format!(
                        "admin '{}' uses grant = \"refresh_token\": set [identity] refresh_token_key (env: or file:, 32 random bytes as base64 or hex) so its refresh token is sealed at rest",
                        a.name
                    ))
                }
                Some(r) => {
                    CredentialRef::parse(r).map_err(|e| ConfigError::Invalid(format!("identity.refresh_token_key: {e}")))?;
                }
            }
        }
        if self.identity.request_timeout_seconds == 0 {
            return bad("identity.request_timeout_seconds must be positive".into());
        }
        if let Err(e) = self.simulator.identity.validate() {
            return bad(e);
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
            if p.kind == ProfileKind::ExoRest {
                p.validate_rest().map_err(|e| ConfigError::Invalid(format!("profile '{name}': {e}")))?;
            }

            if p.auth == WsmanAuth::Kerberos && !p.kdc.as_deref().is_some_and(|k| k.starts_with("tcp://")) {
                return bad(format!("profile '{name}': auth = \"kerberos\" needs kdc = \"tcp://<kdc host>:88\""));
            }
        }
        let rest = &self.simulator.rest;
        if rest.max_page_size == 0 || rest.calls_per_identity == 0 || rest.calls_per_tenant == 0 {
            return bad("simulator.rest: max_page_size and the call limits must be positive".into());
        }
        if !(rest.retry_after_seconds.is_finite() && rest.retry_after_seconds >= 0.0) {
            return bad("simulator.rest.retry_after_seconds must be a number of seconds".into());
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

    /// The referenced bytes as they are (a file is not trimmed): for binary secrets such as a
    /// PFX file.
    pub fn resolve_bytes(&self) -> Result<secrecy::zeroize::Zeroizing<Vec<u8>>, String> {
        let bytes = match self {
            CredentialRef::Env(var) => std::env::var(var)
                .map(String::into_bytes)
                .map_err(|_| format!("environment variable {var} is not set"))?,
            CredentialRef::File(path) => {
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
            }
            CredentialRef::Literal(s) => s.clone().into_bytes(),
        };
        Ok(secrecy::zeroize::Zeroizing::new(bytes))
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
        assert_eq!(c.profiles["rest"].kind, ProfileKind::ExoRest, "the demo shows both transports");
        assert!(c.tenants.iter().any(|t| t.profile == "rest"));
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
    fn an_exo_rest_profile_finds_its_service_in_its_cloud() {
        let with = |keys: &str| {
            let c =
                Config::from_toml(&format!("{EMBEDDED_DEMO}\n[profiles.exo]\nkind = \"exo_rest\"\n{keys}\n")).unwrap();
            c.profiles["exo"].rest_base_url()
        };
        assert_eq!(with(""), "https://outlook.office365.com");
        assert_eq!(with("cloud = \"gcc_high\""), "https://outlook.office365.us");
        assert_eq!(
            with("cloud = \"dod\"\nservice = \"compliance\""),
            "https://l5.ps.compliance.protection.office365.us"
        );
        assert_eq!(with("cloud = \"china\"\nbase_url = \"https://example.test\""), "https://example.test");
    }

    #[test]
    fn exo_rest_profiles_take_their_keys_and_refuse_clear_text_tokens() {
        let with = |profile: &str| {
            Config::from_toml(&format!("{EMBEDDED_DEMO}\n[profiles.exo]\nkind = \"exo_rest\"\n{profile}\n"))
        };
        let c = with("").unwrap();
        let p = &c.profiles["exo"];
        assert_eq!(
            (p.kind, p.service, p.max_page_size, p.batch),
            (ProfileKind::ExoRest, RestService::Exchange, 1000, false)
        );
        assert_eq!(p.rest_base_url(), "https://outlook.office365.com");
        let c = with("service = \"compliance\"\nmax_page_size = 200\nbatch = true").unwrap();
        let p = &c.profiles["exo"];
        assert_eq!((p.service, p.max_page_size, p.batch), (RestService::Compliance, 200, true));
        assert_eq!(p.rest_base_url(), "https://ps.compliance.protection.outlook.com");
        let sim = with("base_url = \"http://{simulator}\"\nallow_plain_http = true").unwrap();
        assert_eq!(sim.profiles["exo"].rest_base_url(), "http://{simulator}");
        let err = with("base_url = \"http://exo.example\"").unwrap_err().to_string();
        assert!(err.contains("profile 'exo'") && err.contains("plain http"), "{err}");
        assert!(with("base_url = \"ftp://x\"").is_err());
        assert!(with("max_page_size = 0").is_err());
        assert!(with("service = \"teams\"").is_err());
    }

    #[test]
    fn wsman_profiles_take_an_auth_method_and_the_simulator_its_logon_methods() {
        let with = |profile: &str| {
            Config::from_toml(&format!("{EMBEDDED_DEMO}\n[profiles.onprem]\nkind = \"wsman\"\n{profile}\n"))
        };
        let p = with("").unwrap().profiles["onprem"].clone();
        assert_eq!((p.auth, p.message_encryption, p.spn), (WsmanAuth::Basic, true, None));
        let p = with("auth = \"ntlm\"\nmessage_encryption = false\nspn = \"HTTP/ex1.contoso.com\"").unwrap().profiles
            ["onprem"]
            .clone();
        assert_eq!(
            (p.auth, p.message_encryption, p.spn.as_deref()),
            (WsmanAuth::Ntlm, false, Some("HTTP/ex1.contoso.com"))
        );
        assert_eq!(with("auth = \"negotiate\"").unwrap().profiles["onprem"].auth, WsmanAuth::Negotiate);
        let err = with("auth = \"kerberos\"").unwrap_err().to_string();
        assert!(err.contains("needs kdc"), "{err}");
        let p = with("auth = \"kerberos\"\nkdc = \"tcp://dc1.contoso.com:88\"").unwrap().profiles["onprem"].clone();
        assert_eq!((p.auth, p.kdc.as_deref()), (WsmanAuth::Kerberos, Some("tcp://dc1.contoso.com:88")));
        assert!(with("auth = \"digest\"").is_err());
        let text = EMBEDDED_DEMO.replacen("[simulator]\n", "[simulator]\nauth = [\"basic\", \"ntlm\"]\n", 1);
        let sim = Config::from_toml(&text).unwrap();
        assert_eq!(sim.simulator.auth, vec![SimAuth::Basic, SimAuth::Ntlm]);
        assert_eq!(Config::demo().simulator.auth, vec![SimAuth::Basic]);
    }

    /// The commented examples of the REST keys in the demo are valid as they stand.
    #[test]
    fn the_commented_rest_examples_in_the_demo_are_valid() {
        let text = format!(
            "{EMBEDDED_DEMO}\n{}\n{}\n",
            commented_block("# [profiles.exo]"),
            commented_block("# [simulator.rest]")
        );
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(c.profiles["exo"].kind, ProfileKind::ExoRest);
        assert_eq!(c.simulator.rest.tenant_hosts.len(), 1);
    }

    #[test]
    fn pgbouncer_needs_postgresql_and_its_direct_address() {
        let with =
            |store: &str| Config::from_toml(&EMBEDDED_DEMO.replacen("url = \"sqlite://./data/psbroker.db\"", store, 1));
        let pooled = "url = \"postgres://psbroker@pgbouncer:6432/psbroker\"\npgbouncer = true\n";
        let invalid = |store: &str| match with(store) {
            Err(ConfigError::Invalid(m)) => m,
            other => panic!("{store}: {other:?}"),
        };
        let m = invalid(pooled);
        assert!(m.contains("store.pgbouncer") && m.contains("store.direct_url"), "names both settings: {m}");
        let c = with(&format!("{pooled}direct_url = \"postgres://psbroker@db:5432/psbroker\"")).unwrap();
        assert_eq!(c.store.direct(), Some("postgres://psbroker@db:5432/psbroker"));
        assert!(invalid(&format!("{pooled}direct_url = \"db:5432\"")).contains("store.direct_url"));
        assert!(invalid("url = \"sqlite://x.db\"\npgbouncer = true\ndirect_url = \"postgres://db/p\"")
            .contains("postgres://"));
        let unpooled = invalid("url = \"postgres://db/p\"\ndirect_url = \"postgres://db/p\"");
        assert!(unpooled.contains("store.pgbouncer = true"), "{unpooled}");
        // The demo's commented example, uncommented, is valid.
        let example = commented_block("# pgbouncer = true");
        let c = with(&format!("url = \"postgres://psbroker@pgbouncer:6432/psbroker\"\n{example}")).unwrap();
        assert!(c.store.pgbouncer && c.store.direct().is_some());
    }

    #[test]
    fn the_simulated_rest_service_is_configurable() {
        let with = |rest: &str| Config::from_toml(&format!("{EMBEDDED_DEMO}\n[simulator.rest]\n{rest}\n"));
        let c = with("max_page_size = 50\ncalls_per_identity = 2\nretry_after_seconds = 0.5\ncompliance_region = \"eur03b\"\n[simulator.rest.tenant_hosts]\n\"contoso.onmicrosoft.com\" = \"nam12b\"").unwrap();
        let r = &c.simulator.rest;
        assert_eq!(
            (r.max_page_size, r.calls_per_identity, r.calls_per_tenant, r.retry_after_seconds),
            (50, 2, 20, 0.5)
        );
        assert_eq!(r.tenant_hosts["contoso.onmicrosoft.com"], "nam12b");
        assert!(with("calls_per_tenant = 0").is_err());
        assert!(with("retry_after_seconds = -1").is_err());
        assert!(with("pages = 3").is_err(), "unknown keys are refused");
        assert_eq!(Config::demo().simulator.rest, SimRestConfig::default());
        let faults = Config::from_toml(&format!("{EMBEDDED_DEMO}\n[simulator.faults]\nhttp_429 = 0.1\nactions = [\"InvokeCommand\", \"Batch\", \"Probe\"]\n")).unwrap();
        assert_eq!(faults.simulator.faults.http_429, 0.1);
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

    /// The commented block starting at `marker` (up to the next empty line) with its settings
    /// uncommented (prose stays a comment).
    fn commented_block(marker: &str) -> String {
        let start = EMBEDDED_DEMO.find(marker).unwrap_or_else(|| panic!("the demo shows {marker}"));
        let setting = |l: &str| {
            let key: String = l.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            l.starts_with('[') || (!key.is_empty() && l[key.len()..].trim_start().starts_with('='))
        };
        let lines = EMBEDDED_DEMO[start..].lines().take_while(|l| !l.trim().is_empty());
        lines.map(|l| l.strip_prefix("# ").filter(|rest| setting(rest)).unwrap_or(l)).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn the_commented_identity_examples_in_the_demo_are_valid() {
        let tenants = EMBEDDED_DEMO.find("[[tenants]]").unwrap();
        let text = format!(
            "{}\n{}\n{}\n{}\n",
            commented_block("# [identity]"),
            &EMBEDDED_DEMO[..tenants],
            commented_block("# [[admins]]\n# name = \"exo-app\""),
            &EMBEDDED_DEMO[tenants..],
        );
        let c = Config::from_toml(&text).unwrap();
        // The demo's own REST identity aside, the two commented examples.
        let oauth: Vec<_> =
            c.admins.iter().filter(|a| a.name != "exo-demo-app").filter_map(|a| a.oauth.as_ref()).collect();
        assert_eq!(oauth.len(), 2);
        assert_eq!((oauth[0].grant, oauth[1].grant), (OAuthGrant::ClientCredentials, OAuthGrant::RefreshToken));
        assert_eq!(oauth[0].login_url(), "https://login.microsoftonline.com");
        assert!(c.identity.refresh_token_key.is_some());
        let sim = commented_block("# [simulator.identity]");
        let start = EMBEDDED_DEMO.find("# [simulator.identity]").unwrap();
        let c = Config::from_toml(&format!("{}\n{sim}\n", &EMBEDDED_DEMO[..start])).unwrap();
        assert_eq!(c.simulator.identity.apps.len(), 1);
        let defaults = SimIdentityConfig { apps: c.simulator.identity.apps.clone(), ..Default::default() };
        assert_eq!(c.simulator.identity, defaults, "the documented values are the defaults");
    }

    #[test]
    fn oauth_identities_are_checked_at_start() {
        let admin = |oauth: &str| {
            format!("{EMBEDDED_DEMO}\n[[admins]]\nname = \"o\"\nupn = \"o@p.example\"\n[admins.oauth]\nclient_id = \"c\"\n{oauth}\n")
        };
        let err = |oauth: &str| Config::from_toml(&admin(oauth)).unwrap_err().to_string();
        assert!(err("grant = \"client_credentials\"").contains("needs client_secret or certificate"));
        assert!(err("grant = \"client_credentials\"\nclient_secret = \"env:A\"\ncertificate = \"file:b\"")
            .contains("not both"));
        assert!(err("grant = \"client_credentials\"\nclient_secret = \"plain\"").contains("oauth.client_secret"));
        assert!(err("grant = \"client_credentials\"\nclient_secret = \"env:A\"\nlogin_url = \"ftp://x\"")
            .contains("login_url"));
        assert!(err("grant = \"refresh_token\"").contains("refresh_token_key"), "delegated tokens are sealed at rest");
        assert!(err("grant = \"device\"\nclient_secret = \"env:A\"").contains("grant"));
        let ok = Config::from_toml(&admin(
            "grant = \"client_credentials\"\nclient_secret = \"env:A\"\ncloud = \"gcc_high\"",
        ))
        .unwrap();
        let oauth = ok.admins.last().unwrap().oauth.clone().unwrap();
        assert_eq!(oauth.login_url(), "https://login.microsoftonline.us");
        assert!(ok.admins.last().unwrap().credential.is_empty(), "an OAuth admin needs no credential");
        let no_credential = format!("{EMBEDDED_DEMO}\n[[admins]]\nname = \"n\"\nupn = \"n@p.example\"\n");
        assert!(Config::from_toml(&no_credential).unwrap_err().to_string().contains("needs a credential"));
    }

    #[test]
    fn the_commented_server_limits_in_the_demo_are_the_defaults() {
        let start = EMBEDDED_DEMO.find("# What one client may cost").expect("the demo shows the server limits");
        let end = start + EMBEDDED_DEMO[start..].find("\n\n").unwrap();
        let block: Vec<&str> = EMBEDDED_DEMO[start..end]
            .lines()
            .skip(1)
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .map(|l| l.split("   #").next().unwrap_or(l))
            .collect();
        let text = format!("{}\n{}\n{}", &EMBEDDED_DEMO[..start], block.join("\n"), &EMBEDDED_DEMO[end..]);
        let c = Config::from_toml(&text).unwrap();
        let d = ServerConfig::default();
        assert_eq!(c.server.max_invocation_body_bytes, d.max_invocation_body_bytes);
        assert_eq!((c.server.max_body_bytes, c.server.max_batch_values), (d.max_body_bytes, d.max_batch_values));
        assert_eq!(
            (c.server.max_connections, c.server.drain_timeout_seconds),
            (d.max_connections, d.drain_timeout_seconds)
        );
        assert_eq!(c.server.rate_limit.item_burst, d.rate_limit.item_burst);
        assert_eq!(c.server.allowed_hosts, vec!["psbroker.example.com".to_string()]);
        let bad =
            EMBEDDED_DEMO.replacen("max_wait_seconds = 30\n", "max_wait_seconds = 30\nidle_timeout_seconds = 0\n", 1);
        assert!(Config::from_toml(&bad).unwrap_err().to_string().contains("idle_timeout_seconds"));
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

    #[test]
    fn every_valid_cluster_timing_fences_before_a_rescue_and_long_before_expiry() {
        let mut valid = 0;
        for heartbeat_ms in [100, 250, 500, 1_000, 2_000, 5_000] {
            for dead_after_seconds in 1..=30 {
                for lease_ttl_seconds in 1..=40 {
                    let c = ClusterConfig { heartbeat_ms, lease_ttl_seconds, dead_after_seconds };
                    if c.check().is_err() {
                        continue;
                    }
                    valid += 1;
                    let (beat, fence) = (c.heartbeat(), c.fence_after());
                    assert!(fence + beat <= c.dead_after(), "{c:?}: a beat to spare before a rescue may start");
                    assert!(fence >= beat * 2, "{c:?}: one late beat alone does not fence");
                    assert!(fence + beat * 3 <= c.lease_ttl(), "{c:?}");
                }
            }
        }
        assert!(valid > 100, "the loop saw {valid} valid timings");
        assert_eq!(ClusterConfig::default().fence_after(), Duration::from_secs(8));
    }
}
