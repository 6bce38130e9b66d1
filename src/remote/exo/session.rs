//! One identity in one tenant: how a request gets its bearer token (and a second chance after a
//! 401), where the tenant is served, and how one cmdlet's pages are fetched.

use super::answer::Page;
use super::errors::{self, Call, ErrorBody};
use super::{host, request, Shared};
use crate::identity::{AccessToken, TokenSource};
use crate::remote::{Command, CommandOutput, FaultClass, RemoteError, RemoteSession, SessionTarget};
use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How often a next page refused with 429/503 (never processed, and safe to ask again: it only
/// reads what the cmdlet already produced) is asked for again before giving up.
const PAGE_RETRIES: u32 = 3;
/// The longest wait for a `Retry-After` before asking for a page again.
const MAX_PAGE_WAIT: Duration = Duration::from_secs(10);
/// A token closer than this to its expiry is not used for a new request.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// An identity acting in one tenant: it knows how to put a valid token on a request.
pub(crate) struct Caller {
    pub(super) shared: Arc<Shared>,
    tokens: Arc<dyn TokenSource>,
    /// The tenant as configured (what token requests and the host cache are keyed by).
    pub(super) tenant: String,
    /// The tenant in request paths: the token's `tid` when known (a GUID works everywhere), else
    /// the configured domain.
    pub(super) tenant_id: String,
    /// `X-AnchorMailbox`.
    pub(super) anchor: String,
    /// A token that answered a claims challenge: such tokens bypass the token source's cache,
    /// so the session keeps its own until it nears expiry.
    challenged: Mutex<Option<AccessToken>>,
}

impl Caller {
    async fn token(&self) -> Result<AccessToken, RemoteError> {
        let kept = self.challenged.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(token) = kept.filter(|t| t.expires_at > SystemTime::now() + TOKEN_MARGIN) {
            return Ok(token);
        }
        self.tokens.token(&self.tenant, &self.shared.scope, None).await
    }

    fn keep_challenged(&self, token: Option<AccessToken>) {
        *self.challenged.lock().unwrap_or_else(|p| p.into_inner()) = token;
    }

    /// Sends a request built by `build` (given the `Authorization` value). A 401 gets exactly
    /// one more try — with a token for the claims a challenge names, else with a fresh token
    /// after invalidating the refused one — and a second 401 is the identity's failure. A 401
    /// proves the request was not processed, so repeating it is safe for any cmdlet.
    pub(crate) async fn send(&self, build: impl Fn(HeaderValue) -> RequestBuilder) -> Result<Response, RemoteError> {
        let response = self.exchange(&build, &self.token().await?).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let claims = header(response.headers(), WWW_AUTHENTICATE).as_deref().and_then(errors::claims_challenge);
        let fresh = match claims {
            Some(claims) => {
                tracing::info!(tenant = %self.tenant, "claims challenge: asking for a token that satisfies it");
                let token = self.tokens.token(&self.tenant, &self.shared.scope, Some(&claims)).await?;
                self.keep_challenged(Some(token.clone()));
                token
            }
            None => {
                self.tokens.invalidate(&self.tenant, &self.shared.scope);
                self.keep_challenged(None);
                self.tokens.token(&self.tenant, &self.shared.scope, None).await?
            }
        };
        let response = self.exchange(&build, &fresh).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        // Refused again: no use keeping either token.
        self.tokens.invalidate(&self.tenant, &self.shared.scope);
        self.keep_challenged(None);
        let challenge = header(response.headers(), WWW_AUTHENTICATE);
        let bytes = read(response).await?;
        Err(errors::unauthorized(&ErrorBody::from_bytes(&bytes), challenge.as_deref()))
    }

    async fn exchange(
        &self,
        build: &impl Fn(HeaderValue) -> RequestBuilder,
        token: &AccessToken,
    ) -> Result<Response, RemoteError> {
        build(request::bearer(token)?).send().await.map_err(transport_error)
    }

    /// Finds where the tenant is served: the front door, or the host its 302 names.
    async fn probe(&self) -> Result<Url, RemoteError> {
        let shared = &self.shared;
        let url = host::under(&shared.base, &shared.options.service.probe_path(&self.tenant_id))?;
        let request_id = uuid::Uuid::new_v4().to_string();
        let headers = request::headers(&self.anchor, &request_id, None)?;
        let timeout = shared.options.request_timeout;
        let response = self
            .send(|bearer| {
                shared.http.get(url.clone()).headers(headers.clone()).header(AUTHORIZATION, bearer).timeout(timeout)
            })
            .await
            .map_err(|e| e.with_request_id(&request_id))?;
        let status = response.status();
        if status.is_redirection() {
            let location = header(response.headers(), LOCATION).ok_or_else(|| {
                RemoteError::new(
                    FaultClass::Protocol,
                    format!("tenant host discovery: HTTP {status} without a Location"),
                )
            })?;
            let base = host::tenant_base(&shared.base, &url, &location)
                .map_err(|m| RemoteError::new(FaultClass::Protocol, format!("tenant host discovery: {m}")))?;
            tracing::info!(tenant = %self.tenant, host = %base, "tenant served from its own host");
            return Ok(base);
        }
        let wait = retry_after(response.headers());
        let bytes = read(response).await?;
        if status.is_success() {
            return Ok(shared.base.clone());
        }
        Err(errors::from_status(status.as_u16(), wait, &ErrorBody::from_bytes(&bytes), Call::Probe)
            .with_request_id(request_id))
    }
}

/// A REST "session": no server state, only who, where and how.
pub struct ExoSession {
    pub(super) caller: Caller,
    /// The tenant's base (front door, tenant host or region).
    pub(super) host: Url,
    id: String,
}

impl std::fmt::Debug for ExoSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExoSession")
            .field("id", &self.id)
            .field("tenant", &self.caller.tenant)
            .field("host", &self.host.as_str())
            .finish_non_exhaustive()
    }
}

impl ExoSession {
    /// Gets a token (identity failures surface here) and the tenant's host (probed once per
    /// tenant per connector).
    pub(super) async fn open(shared: Arc<Shared>, target: &SessionTarget) -> Result<ExoSession, RemoteError> {
        let tokens = target.tokens.clone().ok_or_else(|| {
            RemoteError::new(
                FaultClass::InvalidClient,
                format!(
                    "admin {} has no OAuth identity configured: Exchange Online over REST needs one",
                    target.admin_upn
                ),
            )
        })?;
        let token = tokens.token(&target.tenant, &shared.scope, None).await?;
        let tenant_id =
            token.tenant_id.clone().filter(|t| !t.trim().is_empty()).unwrap_or_else(|| target.tenant.clone());
        let caller = Caller {
            anchor: request::anchor_mailbox(&token, &tenant_id),
            shared: shared.clone(),
            tokens,
            tenant: target.tenant.clone(),
            tenant_id,
            challenged: Mutex::new(None),
        };
        let host = shared.hosts.get_or_probe(&target.tenant, || caller.probe()).await?;
        Ok(ExoSession { caller, host, id: format!("exo-rest:{}", uuid::Uuid::new_v4()) })
    }

    pub(super) fn endpoint(&self, operation: &str) -> Result<Url, RemoteError> {
        host::under(&self.host, &format!("adminapi/beta/{}/{operation}", self.caller.tenant_id))
    }

    /// The service answered from somewhere else: the cached host is stale. The call was not
    /// processed (a redirect is no answer), and the next session probes again.
    pub(super) fn moved(&self, status: StatusCode) -> RemoteError {
        self.caller.shared.hosts.forget(&self.caller.tenant, &self.host);
        RemoteError::new(
            FaultClass::SessionExpired,
            format!("HTTP {status}: the tenant is no longer served from {}; its host is looked up again", self.host),
        )
    }

    pub(super) fn request_timeout(&self) -> Duration {
        self.caller.shared.options.request_timeout
    }

    pub(super) fn prefer(&self) -> String {
        request::page_size_preference(self.caller.shared.options.max_page_size)
    }

    /// One cmdlet, all its pages.
    pub(super) async fn run(&self, command: &Command, request_id: &str) -> Result<CommandOutput, RemoteError> {
        let body = Bytes::from(request::invoke_body(command)?.to_string());
        let url = self.endpoint("InvokeCommand")?;
        let first = self.page(&url, &body, request_id, &command.cmdlet).await?;
        self.rest_of(first, &url, &body, request_id, &command.cmdlet).await
    }

    /// Follows a first page's `@odata.nextLink`s (POSTing the same body), appending each page as
    /// it is decoded. Once the first page is in, the cmdlet has run: a failure now must not
    /// claim otherwise, or the broker would run a write again.
    pub(super) async fn rest_of(
        &self,
        first: Page,
        url: &Url,
        body: &Bytes,
        request_id: &str,
        cmdlet: &str,
    ) -> Result<CommandOutput, RemoteError> {
        let mut output = first.output;
        let mut next = first.next_link;
        let mut at = url.clone();
        while let Some(link) = next {
            let url = same_origin(&at, &link).map_err(after_start)?;
            let page = self.page_patiently(&url, body, request_id, cmdlet).await.map_err(after_start)?;
            output.objects.extend(page.output.objects);
            output.warnings.extend(page.output.warnings);
            output.errors.extend(page.output.errors);
            next = page.next_link;
            at = url;
        }
        Ok(output)
    }

    async fn page(&self, url: &Url, body: &Bytes, request_id: &str, cmdlet: &str) -> Result<Page, RemoteError> {
        let mut headers = request::headers(&self.caller.anchor, request_id, Some(cmdlet))?;
        headers.insert("prefer", header_value(&self.prefer())?);
        let bytes = self.post(url, &headers, self.request_timeout(), |_| body.clone(), Call::Cmdlet(cmdlet)).await?;
        // The page is decoded and its bytes dropped before the next one is asked for.
        Page::decode(&bytes).map_err(|m| RemoteError::new(FaultClass::Protocol, m))
    }

    /// POSTs to `url` with a bearer token ([`Caller::send`]; `body` is built for the token it
    /// goes with) and answers a 2xx's body. A redirect means the tenant moved; anything else is
    /// classified.
    pub(super) async fn post<B: Into<reqwest::Body>>(
        &self,
        url: &Url,
        headers: &HeaderMap,
        timeout: Duration,
        body: impl Fn(&HeaderValue) -> B,
        call: Call<'_>,
    ) -> Result<Bytes, RemoteError> {
        let http = &self.caller.shared.http;
        let response = self
            .caller
            .send(|bearer| {
                let body = body(&bearer);
                http.post(url.clone())
                    .headers(headers.clone())
                    .header(AUTHORIZATION, bearer)
                    .body(body)
                    .timeout(timeout)
            })
            .await?;
        let status = response.status();
        if status.is_redirection() {
            return Err(self.moved(status));
        }
        let wait = retry_after(response.headers());
        let bytes = read(response).await?;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(errors::from_status(status.as_u16(), wait, &ErrorBody::from_bytes(&bytes), call))
    }

    /// A next page, asked for again while the service refuses it unprocessed (429/503).
    async fn page_patiently(
        &self,
        url: &Url,
        body: &Bytes,
        request_id: &str,
        cmdlet: &str,
    ) -> Result<Page, RemoteError> {
        let mut tries = 0;
        loop {
            match self.page(url, body, request_id, cmdlet).await {
                Err(e) if e.class.proves_not_started() && tries < PAGE_RETRIES => {
                    tries += 1;
                    tokio::time::sleep(e.retry_after.unwrap_or(Duration::from_secs(1)).min(MAX_PAGE_WAIT)).await;
                }
                other => return other,
            }
        }
    }

    /// Logs the outcome with its request id and puts the id on it.
    pub(super) fn report(
        &self,
        cmdlet: &str,
        request_id: &str,
        result: Result<CommandOutput, RemoteError>,
    ) -> Result<CommandOutput, RemoteError> {
        match result {
            Ok(mut output) => {
                tracing::debug!(request_id, cmdlet, tenant = %self.caller.tenant, objects = output.objects.len(), "InvokeCommand");
                output.request_id = Some(request_id.to_string());
                Ok(output)
            }
            Err(e) => {
                let request_id = e.request_id.clone().unwrap_or_else(|| request_id.to_string());
                tracing::info!(%request_id, cmdlet, tenant = %self.caller.tenant, class = %e.class, error = %e.message, "InvokeCommand failed");
                Err(e.with_request_id(request_id))
            }
        }
    }
}

#[async_trait]
impl RemoteSession for ExoSession {
    fn remote_id(&self) -> String {
        self.id.clone()
    }

    async fn invoke(&self, command: &Command) -> Result<CommandOutput, RemoteError> {
        let request_id = command.invocation_id.to_string();
        let result = self.run(command, &request_id).await;
        self.report(&command.cmdlet, &request_id, result)
    }

    async fn invoke_many(&self, commands: &[Command]) -> Vec<Result<CommandOutput, RemoteError>> {
        if self.caller.shared.options.batch && commands.len() > 1 {
            return super::batch::invoke(self, commands).await;
        }
        let mut results = Vec::with_capacity(commands.len());
        for command in commands {
            results.push(self.invoke(command).await);
        }
        results
    }

    /// Nothing to remove on the server: a REST session holds no server state.
    async fn close(&self) -> Result<(), RemoteError> {
        Ok(())
    }
}

/// A failure once the cmdlet has run (its first page came back): whatever the class says, the
/// rest of its output is lost, so no class may claim it never started.
pub(super) fn after_start(e: RemoteError) -> RemoteError {
    if !e.class.proves_not_started() {
        return e;
    }
    let message = format!("{} (fetching a further page: the cmdlet ran, the rest of its output is lost)", e.message);
    RemoteError { class: FaultClass::ConnectionLost, message, retry_after: None, ..e }
}

/// A next link, resolved against the page it came from, and refused unless it stays on the same
/// scheme, host and port: the bearer token goes nowhere else.
fn same_origin(at: &Url, link: &str) -> Result<Url, RemoteError> {
    let next =
        at.join(link.trim()).map_err(|e| RemoteError::new(FaultClass::Protocol, format!("next link {link:?}: {e}")))?;
    if next.scheme() != at.scheme()
        || next.host_str() != at.host_str()
        || next.port_or_known_default() != at.port_or_known_default()
    {
        return Err(RemoteError::new(FaultClass::Protocol, format!("refusing a next link to another host: {next}")));
    }
    Ok(next)
}

pub(super) fn header(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

pub(super) fn header_value(text: &str) -> Result<HeaderValue, RemoteError> {
    HeaderValue::from_str(text)
        .map_err(|_| RemoteError::new(FaultClass::Protocol, format!("bad header value {text:?}")))
}

pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    header(headers, RETRY_AFTER).as_deref().and_then(errors::retry_after)
}

/// The whole body as bytes: never decoded by the transport, so a body that is not what its
/// headers claim cannot hide the status.
pub(super) async fn read(response: Response) -> Result<Bytes, RemoteError> {
    response.bytes().await.map_err(transport_error)
}

fn transport_error(e: reqwest::Error) -> RemoteError {
    crate::remote::http::transport_error("Exchange Online", e)
}
