//! The Exchange Online REST connector: cmdlets over the admin API's `InvokeCommand` endpoint with
//! OAuth bearer tokens, as the ExchangeOnlineManagement module (v3) runs them since remote
//! PowerShell over WinRM was retired. The same connector serves Security & Compliance (IPPS)
//! with its own base and token scope.
//!
//! One cmdlet is one `POST {host}/adminapi/beta/{tenantId}/InvokeCommand` with
//! `{"CmdletInput":{"CmdletName":…,"Parameters":{…}}}` ([`request`], typed by [`odata`]); the
//! answer's pages are followed and decoded as they arrive ([`answer`]); refusals become classes of
//! the taxonomy ([`errors`]); the tenant's host is discovered once ([`host`]); up to ten cmdlets
//! travel together in one `$batch` ([`batch`]).
//!
//! A session here holds no server state: it is an identity (its [`TokenSource`]), a tenant, the
//! tenant's resolved host and the connector's shared HTTP/2-capable client. `open` fetches a
//! token and resolves the host, so identity failures surface where the broker's pool policy
//! applies; `close` has nothing to do remotely.
//!
//! Every call carries a `client-request-id`: the invocation id (kept across the pages and the
//! broker's retries of one invocation, as Azure SDKs keep theirs across retries), logged, and
//! returned in [`CommandOutput::request_id`] / [`RemoteError::request_id`], since it is what
//! Microsoft support asks for.
//!
//! [`TokenSource`]: crate::identity::TokenSource
//! [`CommandOutput::request_id`]: crate::remote::CommandOutput::request_id
//! [`RemoteError::request_id`]: crate::remote::RemoteError::request_id

// RemoteError is the connector seam's error type; this module's helpers return it as is.
#![allow(clippy::result_large_err)]

pub(crate) mod answer;
mod batch;
pub(crate) mod errors;
mod host;
pub mod odata;
mod request;
mod session;

#[cfg(test)]
mod tests;

pub use session::ExoSession;

use crate::remote::{Connector, FaultClass, RemoteError, RemoteSession, SessionTarget};
use async_trait::async_trait;
use host::HostCache;
use reqwest::Url;
use std::sync::Arc;
use std::time::Duration;

/// Which service behind the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Service {
    /// Exchange Online: some tenants live on a tenant-specific host (found by a probe).
    #[default]
    Exchange,
    /// Security & Compliance: every tenant is served from a regional host (found by a probe).
    Compliance,
}

impl Service {
    /// The base in Microsoft's global cloud (token audience and front door).
    pub fn global_base(self) -> &'static str {
        match self {
            Service::Exchange => "https://outlook.office365.com",
            Service::Compliance => "https://ps.compliance.protection.outlook.com",
        }
    }

    /// The discovery request: a cheap GET the front door answers with 302 when the tenant is
    /// served elsewhere (the module's `EXOModuleFile` / `EXOBanner` requests).
    fn probe_path(self, tenant_id: &str) -> String {
        match self {
            Service::Exchange => format!("adminapi/v1.0/{tenant_id}/EXOModuleFile"),
            Service::Compliance => format!("adminapi/beta/{tenant_id}/EXOBanner('AutogenSession')"),
        }
    }
}

/// How the connector talks to the service.
#[derive(Debug, Clone)]
pub struct ExoOptions {
    pub service: Service,
    /// The service's base URL: the token audience (scope `{base}/.default`) and the front door
    /// tenant hosts are discovered from. Defaults to the global cloud's.
    pub base_url: String,
    /// `Prefer: odata.maxpagesize` (the service caps it at its own maximum).
    pub max_page_size: u32,
    /// The time limit of one HTTP request (each page is one).
    pub request_timeout: Duration,
    /// Send [`RemoteSession::invoke_many`] as `$batch` requests of up to ten cmdlets; without it
    /// they run one by one.
    pub batch: bool,
    /// Accept an `http://` base (loopback tests only: tokens would travel in clear).
    pub allow_plain_http: bool,
    /// Skip TLS certificate verification (lab endpoints only).
    pub accept_invalid_certs: bool,
    /// Roots trusted besides the built-in ones.
    pub extra_roots: Vec<reqwest::Certificate>,
}

impl Default for ExoOptions {
    fn default() -> Self {
        Self {
            service: Service::Exchange,
            base_url: Service::Exchange.global_base().into(),
            max_page_size: 1000,
            request_timeout: Duration::from_secs(60),
            batch: false,
            allow_plain_http: false,
            accept_invalid_certs: false,
            extra_roots: Vec::new(),
        }
    }
}

/// What the connector's sessions share: options, one HTTP client (connections are pooled and
/// multiplexed over HTTP/2 where the service offers it), and the tenants' hosts.
pub(crate) struct Shared {
    options: ExoOptions,
    /// The front door, parsed.
    base: Url,
    /// `{base}/.default`.
    scope: String,
    http: reqwest::Client,
    hosts: HostCache,
}

/// Opens REST "sessions" for `kind = "exo_rest"` profiles.
#[derive(Clone)]
pub struct ExoConnector {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ExoConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExoConnector").field("base", &self.shared.base.as_str()).finish_non_exhaustive()
    }
}

impl ExoConnector {
    pub fn new(options: ExoOptions) -> Result<Self, RemoteError> {
        let invalid = |m: String| RemoteError::new(FaultClass::Protocol, m);
        let base = Url::parse(options.base_url.trim())
            .map_err(|e| invalid(format!("invalid base_url {:?}: {e}", options.base_url)))?;
        match base.scheme() {
            "https" => {}
            "http" if options.allow_plain_http => {}
            "http" => {
                return Err(invalid(format!("refusing plain http:// to {base}: bearer tokens would travel in clear")))
            }
            other => return Err(invalid(format!("unsupported base_url scheme {other:?} (expected https)"))),
        }
        if options.max_page_size == 0 {
            return Err(invalid("max_page_size must be at least 1".into()));
        }
        let scope = format!("{}/.default", base.as_str().trim_end_matches('/'));
        let http = options
            .extra_roots
            .iter()
            .cloned()
            .fold(reqwest::Client::builder(), |b, root| b.add_root_certificate(root))
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .danger_accept_invalid_certs(options.accept_invalid_certs)
            .connect_timeout(options.request_timeout)
            .user_agent(concat!("psbroker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(format!("HTTP client: {e}")))?;
        Ok(Self { shared: Arc::new(Shared { options, base, scope, http, hosts: HostCache::default() }) })
    }

    pub fn options(&self) -> &ExoOptions {
        &self.shared.options
    }

    /// The token scope of the service (`{base}/.default`).
    pub fn scope(&self) -> &str {
        &self.shared.scope
    }
}

#[async_trait]
impl Connector for ExoConnector {
    async fn open(&self, target: &SessionTarget) -> Result<Box<dyn RemoteSession>, RemoteError> {
        Ok(Box::new(ExoSession::open(self.shared.clone(), target).await?))
    }
}
