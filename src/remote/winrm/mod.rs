//! The WinRM connector: [`Connector`] and [`RemoteSession`] over WS-Management (MS-WSMV) and the
//! PowerShell Remoting Protocol (MS-PSRP), on HTTPS with Basic authentication or a client
//! certificate, or with NTLM or Kerberos
//! ([`WinrmAuth::Ntlm`]: a logon per connection, [`negotiate`]) and WinRM message encryption over
//! plain HTTP ([`encryption`]).
//!
//! Layering: this module does the HTTP (reqwest), the request sequence and the fault mapping; the
//! envelopes come from [`crate::remote::wsman`], the PSRP framing and message bodies from
//! [`crate::remote::psrp`], the values from [`crate::remote::clixml`]. It knows nothing of pools
//! or callers: one [`WinrmSession`] is one remote shell.
//!
//! Every shell is created with the connector's [`WinrmOptions::shell_name`], so
//! [`Connector::reap_orphans`] can find and delete the shells a previous run left behind without
//! touching shells the same admin opened with other tools.

mod connection;
pub(crate) mod encryption;
pub(crate) mod kerberos;
mod negotiate;
pub(crate) mod ntlm;
mod session;
mod transport;

#[cfg(test)]
mod cert_wire_tests;
#[cfg(test)]
mod ntlm_wire_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod wire_tests;

use std::borrow::Cow;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

pub use session::WinrmSession;

use crate::remote::wsman::{envelope, response, RequestContext};
use crate::remote::{Connector, FaultClass, RemoteError, RemoteSession, SessionTarget};
use transport::{basic_auth, endpoint_url, CallError, Channel};

/// The bearer-in-Basic form with the admin's OAuth identity (`SessionTarget::tokens`): the Basic
/// password is `Bearer <access token>`, the token for the endpoint's origin
/// (`https://outlook.office365.com/.default` for Exchange Online's
/// `https://outlook.office365.com/powershell-liveid`). Every open asks the token source (which
/// caches), every command carries a current token (a session outlives a token), and a refused
/// token is forgotten so the next open gets a fresh one.
#[derive(Clone)]
pub(crate) struct Bearer {
    tokens: std::sync::Arc<dyn crate::identity::TokenSource>,
    upn: String,
    tenant: String,
    scope: String,
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bearer").field("tenant", &self.tenant).field("scope", &self.scope).finish_non_exhaustive()
    }
}

impl Bearer {
    #[allow(clippy::result_large_err)] // RemoteError is the connector seam's error type
    fn of(target: &SessionTarget) -> Result<Option<Bearer>, RemoteError> {
        let Some(tokens) = &target.tokens else { return Ok(None) };
        let url = reqwest::Url::parse(&target.connection_uri)
            .map_err(|e| RemoteError::new(FaultClass::Protocol, format!("invalid connection URI: {e}")))?;
        let scope = crate::identity::cloud::scope_for(&url.origin().ascii_serialization());
        Ok(Some(Bearer { tokens: tokens.clone(), upn: target.admin_upn.clone(), tenant: target.tenant.clone(), scope }))
    }

    /// `Bearer <token>`, the password of the Basic header.
    async fn credential(&self) -> Result<SecretString, RemoteError> {
        let token = self.tokens.token(&self.tenant, &self.scope, None).await?;
        Ok(SecretString::from(format!("Bearer {}", token.bearer.expose_secret())))
    }

    pub(crate) async fn header(&self) -> Result<reqwest::header::HeaderValue, RemoteError> {
        basic_auth(&self.upn, &self.credential().await?)
    }

    fn refused(&self) {
        self.tokens.invalidate(&self.tenant, &self.scope);
    }
}

/// A shell as another process can find it again (see `RemoteSession::resume_token`).
#[derive(serde::Serialize, serde::Deserialize)]
struct ResumeToken {
    url: String,
    shell_id: String,
    resource_uri: String,
    cookies: Vec<(String, String, String)>,
}

/// How the connector talks to WinRM endpoints.
#[derive(Debug, Clone)]
pub struct WinrmOptions {
    /// Follow HTTP redirects (PowerShell's `-AllowRedirection`); Exchange Online redirects some
    /// requests to another server. Without it a redirect is a protocol error.
    pub allow_redirection: bool,
    /// Accept `http://` endpoints (loopback tests only: credentials travel in the clear).
    pub allow_plain_http: bool,
    /// The time limit of one HTTP request. A Receive gets the operation timeout on top, since
    /// the server may hold it that long before answering.
    pub request_timeout: Duration,
    /// wsman:OperationTimeout: how long the server may hold a Receive open.
    pub operation_timeout: Duration,
    /// wsman:MaxEnvelopeSize; PSRP messages are fragmented to fit.
    pub max_envelope_size: u32,
    /// The `Name` of every shell this connector creates (e.g. `psbroker:<instance-id>`).
    pub shell_name: String,
    /// Skip TLS certificate verification (lab endpoints with self-signed certificates).
    pub accept_invalid_certs: bool,
    /// Before each Create, pin the conversation to one server of the farm with a cheap request
    /// (Enumerate), so that a Create whose answer is lost can still be cleaned up: the
    /// load balancer's affinity cookie is what makes the shell reachable.
    pub affinity_probe: bool,
    /// Roots trusted besides the built-in ones: the internal CA of an on-premises Exchange.
    pub extra_roots: Vec<reqwest::Certificate>,
    /// The same roots as PEM (NTLM sessions' own connections use rustls directly).
    pub extra_roots_pem: Vec<Vec<u8>>,
    /// How sessions log on.
    pub auth: WinrmAuth,
    /// NTLM over `http://`: seal every message (MS-WSMV message encryption), as Windows and
    /// pypsrp do by default. Off is the explicit opt-out to plain SOAP (then `http://` needs
    /// `allow_plain_http`). Never layered on HTTPS.
    pub message_encryption: bool,
    /// The service principal name for NTLM/Kerberos; `HTTP/<host of the URI>` when unset.
    pub spn: Option<String>,
}

/// How the connector logs on to the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum WinrmAuth {
    /// `Authorization: Basic` on every request (user and password, or a bearer token).
    #[default]
    Basic,
    /// NTLM (v2) under `Negotiate`, once per connection, with message encryption over HTTP.
    Ntlm,
    /// Kerberos (`Authorization: Kerberos`) with tickets from `kdc` (`tcp://host:88`), once per
    /// connection, with message encryption over HTTP.
    Kerberos { kdc: String },
    /// Kerberos when it can be used (a `kdc` is given, it answers, it knows the principals, the
    /// endpoint takes it), NTLM otherwise, as Windows' Negotiate chooses. Raw tokens under each
    /// scheme (no SPNEGO wrapping), which Windows accepts.
    Negotiate { kdc: Option<String> },
    /// A client certificate over HTTPS (WinRM's certificate mapping): the admin's credential is
    /// a PEM holding the certificate and its private key.
    Certificate,
}

/// The `Authorization` value of WinRM certificate authentication (the TLS client certificate
/// is the credential).
pub(crate) const CERTIFICATE_AUTH: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/mutual";

impl WinrmOptions {
    /// Whether an `http://` endpoint may be used: allowed outright, or sealed by NTLM.
    fn plain_http_allowed(&self) -> bool {
        self.allow_plain_http || (self.logs_on_per_connection() && self.message_encryption)
    }

    /// NTLM and Kerberos log on once per connection (and can seal).
    fn logs_on_per_connection(&self) -> bool {
        matches!(self.auth, WinrmAuth::Ntlm | WinrmAuth::Kerberos { .. } | WinrmAuth::Negotiate { .. })
    }
}

impl Default for WinrmOptions {
    fn default() -> Self {
        Self {
            allow_redirection: false,
            allow_plain_http: false,
            request_timeout: Duration::from_secs(60),
            operation_timeout: RequestContext::DEFAULT_OPERATION_TIMEOUT,
            max_envelope_size: RequestContext::DEFAULT_MAX_ENVELOPE_SIZE,
            shell_name: "psbroker".into(),
            accept_invalid_certs: false,
            affinity_probe: true,
            extra_roots: Vec::new(),
            extra_roots_pem: Vec::new(),
            auth: WinrmAuth::Basic,
            message_encryption: true,
            spn: None,
        }
    }
}

/// The connector's pooled HTTP client (Basic sessions).
fn http_client(options: &WinrmOptions) -> Result<reqwest::Client, String> {
    http_client_with(options, None)
}

/// A pooled HTTP client presenting `identity` as its TLS client certificate (one per session
/// with certificate authentication: each admin has their own).
fn http_client_with(options: &WinrmOptions, identity: Option<reqwest::Identity>) -> Result<reqwest::Client, String> {
    let roots = options.extra_roots.iter().cloned();
    let builder = match identity {
        Some(identity) => reqwest::Client::builder().identity(identity),
        None => reqwest::Client::builder(),
    };
    roots
        .fold(builder, |b, root| b.add_root_certificate(root))
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .danger_accept_invalid_certs(options.accept_invalid_certs)
        .connect_timeout(options.request_timeout)
        .user_agent(concat!("psbroker/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// A shell of the user's, as the endpoint lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteShell {
    pub shell_id: String,
    /// The name the creating client gave it (ours are [`WinrmOptions::shell_name`]).
    pub name: Option<String>,
    /// The configuration hosting it (`http://schemas.microsoft.com/powershell/Microsoft.Exchange`).
    pub resource_uri: Option<String>,
    pub owner: Option<String>,
}

/// The page size of shell enumeration.
const ENUMERATION_BATCH: u32 = 100;
/// A bound on Pull round trips, against a server that never ends the sequence.
const MAX_PULLS: usize = 1000;

/// Opens [`WinrmSession`]s. One HTTP client (connection pool, TLS configuration) serves every
/// session; each session keeps its own cookies and URL.
#[derive(Debug, Clone)]
pub struct WinrmConnector {
    options: WinrmOptions,
    http: reqwest::Client,
    /// The TLS configuration of NTLM sessions' own connections.
    ntlm_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl WinrmConnector {
    #[allow(clippy::result_large_err)] // RemoteError is the connector seam's error type
    pub fn new(options: WinrmOptions) -> Result<Self, RemoteError> {
        let invalid = |m: &str| RemoteError::new(FaultClass::Protocol, format!("invalid WinRM options: {m}"));
        if options.shell_name.trim().is_empty() {
            return Err(invalid("shell_name is empty"));
        }
        if options.request_timeout.is_zero() || options.operation_timeout.is_zero() {
            return Err(invalid("timeouts must be positive"));
        }
        if options.max_envelope_size < 1024 {
            return Err(invalid("max_envelope_size below 1024 bytes"));
        }
        let http = http_client(&options).map_err(|e| invalid(&e))?;
        let ntlm_tls = match options.auth {
            WinrmAuth::Ntlm | WinrmAuth::Kerberos { .. } | WinrmAuth::Negotiate { .. } => {
                if options.accept_invalid_certs {
                    return Err(invalid("accept_invalid_certs is not supported with auth = \"ntlm\" (use ca_file)"));
                }
                Some(connection::tls_config(&options.extra_roots_pem).map_err(|e| invalid(&e))?)
            }
            WinrmAuth::Basic | WinrmAuth::Certificate => None,
        };
        Ok(Self { options, http, ntlm_tls })
    }

    pub fn options(&self) -> &WinrmOptions {
        &self.options
    }

    /// The target with its credential: a bearer token from its OAuth identity, when it has one.
    async fn signed_in<'t>(
        &self,
        target: &'t SessionTarget,
    ) -> Result<(Cow<'t, SessionTarget>, Option<Bearer>), RemoteError> {
        match Bearer::of(target)? {
            None => Ok((Cow::Borrowed(target), None)),
            Some(bearer) => {
                let mut with_token = target.clone();
                with_token.credential = bearer.credential().await?;
                Ok((Cow::Owned(with_token), Some(bearer)))
            }
        }
    }

    /// A fresh conversation with the target's endpoint (new cookies, new WS-Man SessionId).
    async fn channel(&self, target: &SessionTarget) -> Result<Channel, RemoteError> {
        self.channel_with(&self.signed_in(target).await?.0)
    }

    #[allow(clippy::result_large_err)]
    fn channel_with(&self, target: &SessionTarget) -> Result<Channel, RemoteError> {
        let url = endpoint_url(&target.connection_uri, &target.credential, self.options.plain_http_allowed())?;
        let protocol = |m: String| RemoteError::new(FaultClass::Protocol, m);
        let mut http = self.http.clone();
        let auth = match self.options.auth {
            WinrmAuth::Basic => basic_auth(&target.admin_upn, &target.credential)?,
            WinrmAuth::Certificate => {
                if url.scheme() != "https" {
                    return Err(protocol("certificate authentication needs an https:// endpoint".into()));
                }
                let identity =
                    reqwest::Identity::from_pem(target.credential.expose_secret().as_bytes()).map_err(|_| {
                        protocol("the admin's credential is not a PEM client certificate with its private key".into())
                    })?;
                http = http_client_with(&self.options, Some(identity)).map_err(protocol)?;
                reqwest::header::HeaderValue::from_static(CERTIFICATE_AUTH)
            }
            WinrmAuth::Ntlm | WinrmAuth::Kerberos { .. } | WinrmAuth::Negotiate { .. } if target.tokens.is_some() => {
                return Err(protocol(
                    "an OAuth identity signs in with Basic (bearer tokens), not NTLM or Kerberos".into(),
                ))
            }
            WinrmAuth::Ntlm | WinrmAuth::Kerberos { .. } | WinrmAuth::Negotiate { .. } => {
                reqwest::header::HeaderValue::from_static("")
            }
        };
        let mut ctx = RequestContext::powershell(url.as_str(), &target.configuration_name);
        ctx.max_envelope_size = self.options.max_envelope_size;
        ctx.operation_timeout = self.options.operation_timeout;
        let channel = Channel::new(
            http,
            auth,
            url.clone(),
            ctx,
            self.options.allow_redirection,
            self.options.plain_http_allowed(),
            self.options.request_timeout,
        );
        match &self.options.auth {
            WinrmAuth::Basic | WinrmAuth::Certificate => Ok(channel),
            WinrmAuth::Ntlm | WinrmAuth::Kerberos { .. } | WinrmAuth::Negotiate { .. } => {
                let tls = self.ntlm_tls.clone().ok_or_else(|| protocol("NTLM: no TLS configuration".into()))?;
                let connection = connection::OwnConnection::new(self.options.request_timeout, tls);
                let login = negotiate::NtlmLogin {
                    user: target.admin_upn.clone(),
                    password: target.credential.clone(),
                    spn: self.options.spn.clone().unwrap_or_else(|| negotiate::default_spn(&url)),
                    seal: self.options.message_encryption,
                    kerberos_kdc: match &self.options.auth {
                        WinrmAuth::Kerberos { kdc } => Some(kdc.clone()),
                        WinrmAuth::Negotiate { kdc } => kdc.clone(),
                        _ => None,
                    },
                    fallback_to_ntlm: matches!(self.options.auth, WinrmAuth::Negotiate { .. }),
                    conversation: tokio::sync::Mutex::new(negotiate::Conversation { connection, context: None }),
                };
                Ok(channel.with_ntlm(login))
            }
        }
    }

    /// Opens a session and returns it with its concrete type.
    pub async fn open_session(&self, target: &SessionTarget) -> Result<WinrmSession, RemoteError> {
        let (target, bearer) = self.signed_in(target).await?;
        let opened = session::open(
            self.channel_with(&target)?,
            &self.options.shell_name,
            self.options.affinity_probe,
            bearer.clone(),
        )
        .await;
        if let (Err(e), Some(bearer)) = (&opened, &bearer) {
            if e.class == FaultClass::LogonFailed {
                bearer.refused();
            }
        }
        opened
    }

    /// Lists the admin's shells at the target's endpoint (all configurations, any client).
    pub async fn enumerate_shells(&self, target: &SessionTarget) -> Result<Vec<RemoteShell>, RemoteError> {
        let channel = self.channel(target).await?;
        let timeout = self.options.request_timeout;
        let mut page = channel
            .call(
                "Enumerate",
                timeout,
                |ctx| envelope::enumerate_shells(ctx, ENUMERATION_BATCH),
                response::parse_enumerate_response,
            )
            .await
            .map_err(CallError::into_remote)?;
        let mut shells = Vec::new();
        for _ in 0..MAX_PULLS {
            shells.extend(page.items.drain(..).map(|s| RemoteShell {
                shell_id: s.shell_id,
                name: s.name,
                resource_uri: s.resource_uri,
                owner: s.owner,
            }));
            let context = match (&page.context, page.end_of_sequence) {
                (Some(c), false) => c.clone(),
                _ => return Ok(shells),
            };
            page = channel
                .call(
                    "Pull",
                    timeout,
                    |ctx| envelope::pull_shells(ctx, &context, ENUMERATION_BATCH),
                    response::parse_pull_response,
                )
                .await
                .map_err(CallError::into_remote)?;
        }
        Err(RemoteError::new(FaultClass::Protocol, "shell enumeration did not end"))
    }

    /// Deletes one shell found by [`Self::enumerate_shells`] (its ResourceURI is the shell's own).
    /// A shell that is already gone counts as deleted.
    pub async fn delete_shell(
        &self,
        target: &SessionTarget,
        shell_id: &str,
        resource_uri: &str,
    ) -> Result<(), RemoteError> {
        self.try_delete_shell(target, shell_id, resource_uri).await.map(drop)
    }

    /// Deletes a shell; `Ok(false)` when the server did not know it.
    async fn try_delete_shell(
        &self,
        target: &SessionTarget,
        shell_id: &str,
        resource_uri: &str,
    ) -> Result<bool, RemoteError> {
        let channel = self.channel(target).await?;
        self.delete_on(&channel, shell_id, resource_uri).await
    }

    /// Deletes a shell through `channel`; `Ok(false)` when the server did not know it.
    async fn delete_on(&self, channel: &Channel, shell_id: &str, resource_uri: &str) -> Result<bool, RemoteError> {
        let result = channel
            .call(
                "Delete",
                self.options.request_timeout,
                |ctx| envelope::delete_with_resource_uri(ctx, resource_uri, shell_id),
                response::parse_empty_response,
            )
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.is_shell_not_found() => Ok(false),
            Err(e) => Err(e.into_remote()),
        }
    }
}

#[async_trait]
impl Connector for WinrmConnector {
    async fn open(&self, target: &SessionTarget) -> Result<Box<dyn RemoteSession>, RemoteError> {
        Ok(Box::new(self.open_session(target).await?))
    }

    /// Deletes the admin's shells at the target's endpoint named `name`; others are left alone.
    /// Counts the shells actually deleted: one the server no longer knows (it expired meanwhile,
    /// or lives behind another load-balanced server) is not counted; one that fails to delete is
    /// logged and skipped.
    async fn delete_orphan(&self, target: &SessionTarget, token: &str) -> Result<bool, RemoteError> {
        let token: ResumeToken = serde_json::from_str(token)
            .map_err(|e| RemoteError::new(FaultClass::Protocol, format!("unreadable shell token: {e}")))?;
        let url = endpoint_url(&token.url, &target.credential, self.options.plain_http_allowed())?;
        let channel = self.channel(target).await?;
        channel.resume(url, token.cookies);
        self.delete_on(&channel, &token.shell_id, &token.resource_uri).await
    }

    async fn reap_orphans(&self, target: &SessionTarget, name: &str) -> Result<u32, RemoteError> {
        let shells = self.enumerate_shells(target).await?;
        let default_uri = crate::remote::wsman::powershell_resource_uri(&target.configuration_name);
        let mut deleted = 0;
        for shell in shells.iter().filter(|s| s.name.as_deref() == Some(name)) {
            let uri = shell.resource_uri.as_deref().unwrap_or(&default_uri);
            match self.try_delete_shell(target, &shell.shell_id, uri).await {
                Ok(true) => deleted += 1,
                Ok(false) => tracing::debug!(shell = %shell.shell_id, "orphaned shell already gone"),
                Err(e) => tracing::warn!(shell = %shell.shell_id, error = %e, "could not delete an orphaned shell"),
            }
        }
        Ok(deleted)
    }
}
