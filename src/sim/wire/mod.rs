//! The simulator on the real wire: a WS-Management (SOAP 1.2 over HTTP) + PSRP server in front
//! of the in-memory [`Simulator`], so WinRM clients (the broker's own connector, pypsrp,
//! PowerShell) can be tested against it without a Windows host.
//!
//! What it serves:
//! - `POST /powershell-liveid`, `/PowerShell` (path compared case-insensitively, a trailing `/`
//!   allowed) and `/wsman`, with `Content-Type: application/soap+xml;charset=UTF-8`.
//! - The tenant of a Create is the `DelegatedOrg` query parameter; failing that a `tenant`
//!   parameter; failing that [`WireOptions::default_tenant`]. Without any of them Create faults.
//! - Authentication on every request: `Authorization: Basic base64(upn:password)`. A missing or
//!   unreadable header is HTTP 401 with `WWW-Authenticate: Basic realm="WSMAN"`; a wrong password is
//!   HTTP 401 with the service's logon-failure text in a SOAP fault body. A locked account
//!   ([`Simulator::set_account_locked`]) is refused with Windows' lockout text.
//! - With [`WireOptions::ntlm`], NTLM under `Negotiate` (or `NTLM`), as a Windows listener: the
//!   NEGOTIATE and AUTHENTICATE legs on empty POSTs (401 with the CHALLENGE, then 200), checked
//!   against the named account's password, held by the TCP connection; afterwards bodies are
//!   sealed both ways (WinRM message encryption, `multipart/encrypted`), and a clear body on
//!   that connection is refused with 401 unless [`WireOptions::allow_unencrypted`]. The 401 then
//!   offers `Negotiate` (and Basic when [`WireOptions::basic`] is on).
//! - With [`WireOptions::kerberos`], Kerberos: `Authorization: Kerberos <AP-REQ>` on an empty
//!   POST, checked with the service key from a keytab ([`SimKerberos`]), answered 200 with the
//!   AP-REP in `WWW-Authenticate`; the client principal (`user@realm`) must be an account; then
//!   sealed as with NTLM (`application/HTTP-Kerberos-session-encrypted`). An authenticator whose
//!   time is outside the tolerance is 401 "clock skew too great".
//! - With a TLS configuration from [`client_auth_config`], WinRM certificate authentication: a
//!   verified client certificate is the account its subject CN names. With
//!   `BasicAuthToOAuthConversion=true` in the query, a password of the form `Bearer <token>` is
//!   an access token: one the simulator's identity provider issued (for an `aud` that is this
//!   listener's origin or an Exchange Online base, and the `tid` of the shell's tenant; a
//!   delegated token must name the user in `upn`, an app-only one have `Exchange.ManageAsApp`),
//!   or the older fixed form [`crate::sim::sim_token`]`(upn)`, i.e. `sim-token:<upn>`.
//! - The identity provider's endpoints on the same listener (see [`crate::sim::idp`]):
//!   `POST /{tenant}/oauth2/v2.0/token`, `POST /{tenant}/oauth2/v2.0/devicecode`, `/devicelogin`.
//! - The load-balancer affinity cookie: a request without `MS-WSMAN` gets
//!   `Set-Cookie: MS-WSMAN=<random>; path=/`. A shell remembers the cookie of the request that
//!   created it; a later request for that shell with another cookie, or none, gets the
//!   shell-not-found fault (2150858843, `w:InvalidSelectors`), as a request that lands on another
//!   server of the farm does.
//! - With [`WireOptions::redirect_first`], an authenticated request without the cookie and without
//!   `redirected=1` in its query is answered with HTTP 302 to the same URL plus `redirected=1`
//!   (for clients' AllowRedirection handling).
//! - Actions: Create (a PSRP runspace pool; SESSION_CAPABILITY + INIT_RUNSPACEPOOL in
//!   creationXml), Receive (pool and pipeline output, fragmented to the request's
//!   MaxEnvelopeSize and spread over as many Receives as needed), Command (CREATE_PIPELINE in
//!   rsp:Arguments, further fragments via Send), Send, Signal, Delete, Enumerate and Pull of the
//!   user's shells (with the Name each was created with). Anything else is a fault.
//! - Receive returns a pipeline's output: PIPELINE_OUTPUT per object, WARNING records,
//!   ERROR_RECORDs, and PIPELINE_STATE Completed (or Failed with the terminating error).
//! - A Receive with nothing to say waits for the smaller of its OperationTimeout and
//!   [`WireOptions::idle_receive_wait`] (1 s by default), then answers with the benign
//!   operation-timeout fault (2150858793, `w:TimedOut`).
//! - Latencies are the simulator's (open on Create, command on execution, close on Delete), in
//!   simulated time divided by the speedup, exactly as the in-process connector sleeps them.
//! - A pipeline executes as soon as its CREATE_PIPELINE is complete (on Command, or on the Send
//!   that completes it), as in WinRM: the simulator's command latency, then [`Simulator::run`];
//!   a shell-level failure (shell gone, too many commands) is the Command's fault.
//! - Injected faults ([`crate::config::FaultConfig`], [`Simulator::set_faults`]): per request,
//!   the connection may be closed before processing or after it (the answer lost), answered
//!   with a bare HTTP 500 (processed or not) or 503 with `Retry-After` (not processed), or
//!   answered late; a request naming a shell may find it expired early. docs/chaos.md.
//! - Not simulated: key exchange (PUBLIC_KEY is ignored, so SecureString arguments cannot be
//!   sent), host calls, pipeline input, Disconnect/Reconnect/Connect.
//!
//! Every error path answers with a SOAP fault in WinRM's shape; nothing a client sends panics the
//! server. Malformed XML is HTTP 400 with a fault naming the problem.

mod http;
mod negotiate;

pub use negotiate::SimKerberos;
mod sever;
mod shell;
mod tls;

#[cfg(test)]
mod tests;

pub(crate) use http::{bare, server_error};
pub(crate) use sever::Peer;
pub use tls::client_auth_config;

use crate::config::Config;
use crate::sim::Simulator;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How the wire server behaves beyond what the [`Simulator`] decides.
#[derive(Debug, Clone)]
pub struct WireOptions {
    /// Answer the first request of a client that has no `MS-WSMAN` cookie with HTTP 302 to the
    /// same URL with `redirected=1` added to the query (requests that already carry
    /// `redirected=1` are served).
    pub redirect_first: bool,
    /// Stops the server when cancelled: no new connections are accepted, requests in flight
    /// finish, then [`serve`] returns. `None`: serve until the task is dropped or aborted.
    pub shutdown: Option<CancellationToken>,
    /// The tenant of a Create whose URL has neither `DelegatedOrg` nor `tenant` in its query
    /// (e.g. an on-premises style `/PowerShell` URL).
    pub default_tenant: Option<String>,
    /// The longest a Receive with nothing to say waits before the operation-timeout fault (it
    /// also never waits longer than the request's OperationTimeout).
    pub idle_receive_wait: Duration,
    /// Serve HTTPS with this configuration (see [`crate::tls::load`]); plain HTTP without.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Accept `Authorization: Basic` (on by default).
    pub basic: bool,
    /// Accept NTLM under `Negotiate` (checked against each account's password), logged on per
    /// connection, with WinRM message encryption.
    pub ntlm: bool,
    /// Serve clear SOAP on a connection logged on with NTLM (Windows' `AllowUnencrypted`; off:
    /// such a request is refused with 401).
    pub allow_unencrypted: bool,
    /// Accept Kerberos (`Authorization: Kerberos <AP-REQ>`) for this service principal, whose
    /// key comes from a keytab; the client principal (`user@realm`) must be an account.
    pub kerberos: Option<SimKerberos>,
}

impl Default for WireOptions {
    fn default() -> Self {
        Self {
            redirect_first: false,
            shutdown: None,
            default_tenant: None,
            idle_receive_wait: Duration::from_secs(1),
            tls: None,
            basic: true,
            ntlm: false,
            allow_unencrypted: false,
            kerberos: None,
        }
    }
}

impl WireOptions {
    /// The options `[simulator]` sets: the first-request redirect and the logon methods.
    pub fn from_config(cfg: &crate::config::SimulatorConfig) -> Result<Self, String> {
        use crate::config::SimAuth;
        let kerberos = match (&cfg.kerberos_principal, &cfg.kerberos_keytab) {
            (Some(principal), Some(keytab)) => Some(SimKerberos::from_keytab(keytab, principal)?),
            (None, None) => None,
            _ => return Err("simulator: kerberos_principal and kerberos_keytab go together".into()),
        };
        Ok(Self {
            redirect_first: cfg.redirect_first,
            basic: cfg.auth.contains(&SimAuth::Basic),
            ntlm: cfg.auth.contains(&SimAuth::Ntlm),
            allow_unencrypted: cfg.allow_unencrypted,
            kerberos,
            ..Self::default()
        })
    }
}

/// Serves the WS-Management endpoint for `sim` on `listener` until `options.shutdown` is
/// cancelled (or forever without one).
pub async fn serve(sim: Simulator, listener: TcpListener, options: WireOptions) -> std::io::Result<()> {
    let shutdown = options.shutdown.clone().unwrap_or_default();
    let stopped = shutdown.cancelled_owned();
    let tls = options.tls.clone();
    if let Ok(addr) = listener.local_addr() {
        sim.add_origin(&format!("{}://{addr}", if tls.is_some() { "https" } else { "http" }));
    }
    let rest = crate::sim::rest::router(sim.clone(), tls.is_some());
    let app = http::router(Arc::new(shell::Wire::new(sim, options)), tls.is_some()).merge(rest);
    let listener = sever::SeverableListener(listener);
    match tls {
        None => {
            let app = app.into_make_service_with_connect_info::<sever::Peer>();
            axum::serve(listener, app).with_graceful_shutdown(stopped).await
        }
        Some(config) => {
            let app = app.into_make_service_with_connect_info::<sever::Peer>();
            axum::serve(tls::TlsListener::new(listener, config), app).with_graceful_shutdown(stopped).await
        }
    }
}

/// Binds `addr` (port 0 picks a free one) and serves `sim` there in a background task with
/// default options. Returns the bound address and the server task.
pub async fn spawn(sim: Simulator, addr: SocketAddr) -> std::io::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    spawn_with(sim, addr, WireOptions::default()).await
}

/// [`spawn`] with options.
pub async fn spawn_with(
    sim: Simulator,
    addr: SocketAddr,
    options: WireOptions,
) -> std::io::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, tokio::spawn(serve(sim, listener, options))))
}

/// `psbroker sim --listen ADDR`: builds the simulator from the configuration, binds `listen`,
/// logs the endpoint and serves until Ctrl-C (or until `options.shutdown` is cancelled).
pub async fn run_standalone(config: &Config, listen: &str, mut options: WireOptions) -> anyhow::Result<()> {
    let sim = Simulator::from_config(config).map_err(|e| anyhow::anyhow!("simulator configuration: {e}"))?;
    let listener = TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let token = options.shutdown.get_or_insert_with(CancellationToken::new).clone();
    let on_ctrl_c = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C: stopping the simulator");
            on_ctrl_c.cancel();
        }
    });
    let scheme = if options.tls.is_some() { "https" } else { "http" };
    let mut methods: Vec<&str> = Vec::new();
    if options.basic {
        methods.push("Basic");
    }
    if options.ntlm {
        methods.push("NTLM with message encryption");
    }
    if options.kerberos.is_some() {
        methods.push("Kerberos with message encryption");
    }
    let methods = methods.join(", ");
    tracing::info!(
        %addr,
        "simulated remote PowerShell endpoint at {scheme}://{addr}/powershell-liveid?DelegatedOrg=<tenant> ({methods}); \
         identity provider at {scheme}://{addr}/<tenant>/oauth2/v2.0/token (sign-in page {scheme}://{addr}/devicelogin)"
    );
    tracing::info!(
        %addr,
        "simulated Exchange Online admin API at {scheme}://{addr}/adminapi/beta/<tenant>/InvokeCommand (bearer tokens; \
         Security & Compliance under /ipps)"
    );
    serve(sim, listener, options).await?;
    Ok(())
}
