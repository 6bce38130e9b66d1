//! One WS-Management conversation over HTTP(S): POSTs envelopes with Basic authentication, keeps
//! the server's cookies, follows redirects only when the profile allows them, and turns whatever
//! comes back (an answer, a SOAP fault, an HTTP status, a transport failure) into a result.

// RemoteError is the connector seam's error type; these helpers return it as is.
#![allow(clippy::result_large_err)]

use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, COOKIE, LOCATION, RETRY_AFTER, SET_COOKIE};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use super::connection::Answer;
use super::encryption;
use super::negotiate::{self, NtlmLogin};
use crate::remote::fault::classify_bare_http;
use crate::remote::fault::WSMAN_SHELL_NOT_FOUND;
use crate::remote::http::transport_error;
use crate::remote::wsman::{self, RequestContext, WsmanError, WsmanFault};
use crate::remote::{classify, FaultClass, RemoteError};

/// The most redirects one request follows (when redirection is allowed at all).
const MAX_REDIRECTS: usize = 5;
/// How much of a non-SOAP error body is quoted in an error message.
const BODY_QUOTE_CHARS: usize = 400;

/// Why one request failed: a SOAP fault (kept whole, so callers can tell the benign Receive
/// timeout and shell-not-found apart) or anything else, already classified.
#[derive(Debug)]
pub(crate) enum CallError {
    Fault { status: u16, fault: WsmanFault, retry_after: Option<Duration> },
    Other(RemoteError),
}

/// How long to wait before repeating a request the service refused with 503 and no
/// `Retry-After`.
const UNAVAILABLE_WAIT: Duration = Duration::from_secs(1);

impl CallError {
    /// `Some(wait)` when the request never reached a server (HTTP 503), so repeating it is safe
    /// whatever it was; `wait` is the server's `Retry-After`, or a second.
    pub(crate) fn unavailable(&self) -> Option<Duration> {
        let (class, retry_after) = match self {
            CallError::Fault { status, fault, retry_after } => (fault.class(*status), *retry_after),
            CallError::Other(e) => (e.class, e.retry_after),
        };
        (class == FaultClass::ServiceUnavailable).then(|| retry_after.unwrap_or(UNAVAILABLE_WAIT))
    }

    /// The failure's class, without giving the error up.
    pub(crate) fn class(&self) -> FaultClass {
        match self {
            CallError::Fault { status, fault, .. } => fault.class(*status),
            CallError::Other(e) => e.class,
        }
    }

    pub(crate) fn is_operation_timeout(&self) -> bool {
        matches!(self, CallError::Fault { fault, .. } if fault.is_operation_timeout())
    }

    pub(crate) fn is_shell_not_found(&self) -> bool {
        matches!(self, CallError::Fault { fault, .. } if fault.code == Some(WSMAN_SHELL_NOT_FOUND))
    }

    pub(crate) fn into_remote(self) -> RemoteError {
        match self {
            CallError::Fault { status, fault, retry_after } => {
                RemoteError::new(fault.class(status), fault.to_string()).with_retry_after(retry_after)
            }
            CallError::Other(e) => e,
        }
    }
}

impl From<RemoteError> for CallError {
    fn from(e: RemoteError) -> Self {
        CallError::Other(e)
    }
}

fn protocol(message: impl Into<String>) -> RemoteError {
    RemoteError::new(FaultClass::Protocol, message)
}

/// The endpoint URL of a target: parsed, scheme checked, and with `BasicAuthToOAuthConversion=true`
/// when the credential is a bearer token (Exchange's modern auth riding on Basic).
pub(crate) fn endpoint_url(uri: &str, credential: &SecretString, allow_plain_http: bool) -> Result<Url, RemoteError> {
    let mut url = Url::parse(uri).map_err(|e| protocol(format!("invalid connection URI {uri:?}: {e}")))?;
    check_scheme(&url, allow_plain_http)?;
    if is_bearer(credential)
        && !url.query_pairs().any(|(k, v)| k.eq_ignore_ascii_case("BasicAuthToOAuthConversion") && v == "true")
    {
        url.query_pairs_mut().append_pair("BasicAuthToOAuthConversion", "true");
    }
    Ok(url)
}

fn check_scheme(url: &Url, allow_plain_http: bool) -> Result<(), RemoteError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_plain_http => Ok(()),
        "http" => Err(protocol(format!(
            "refusing plain http:// to {}: credentials would travel unencrypted (use https://)",
            url.host_str().unwrap_or("?")
        ))),
        other => Err(protocol(format!("unsupported URI scheme {other:?} (expected https)"))),
    }
}

fn is_bearer(credential: &SecretString) -> bool {
    credential.expose_secret().starts_with("Bearer ")
}

/// `Authorization: Basic base64(upn:secret)`; a `Bearer …` secret is sent as the password as is.
pub(crate) fn basic_auth(upn: &str, credential: &SecretString) -> Result<HeaderValue, RemoteError> {
    let token = B64.encode(format!("{upn}:{}", credential.expose_secret()));
    let mut value = HeaderValue::from_str(&format!("Basic {token}"))
        .map_err(|_| protocol("the credential cannot be sent in an HTTP header"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The cookies of one conversation, per host (Exchange's load balancer pins a session to a server
/// with `MS-WSMAN=…`; a request without it lands elsewhere and gets invalid-selector faults).
#[derive(Debug, Default)]
pub(crate) struct CookieJar {
    cookies: Vec<(String, String, String)>,
}

impl CookieJar {
    /// Records a `Set-Cookie` header from `host`. `Max-Age=0` (or negative) deletes.
    pub(crate) fn store(&mut self, host: &str, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else { return };
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() {
            return;
        }
        let expired = parts.any(|attr| {
            let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
            k.trim().eq_ignore_ascii_case("max-age") && v.trim().parse::<i64>().is_ok_and(|age| age <= 0)
        });
        self.cookies.retain(|(h, n, _)| !(h == host && n == name));
        if !expired {
            self.cookies.push((host.to_string(), name.to_string(), value.to_string()));
        }
    }

    /// Every cookie as (host, name, value), to hand to another process.
    pub(crate) fn entries(&self) -> Vec<(String, String, String)> {
        self.cookies.clone()
    }

    pub(crate) fn from_entries(cookies: Vec<(String, String, String)>) -> Self {
        Self { cookies }
    }

    /// The `Cookie` header for a request to `host`, if any cookie applies.
    pub(crate) fn header(&self, host: &str) -> Option<String> {
        let pairs: Vec<String> =
            self.cookies.iter().filter(|(h, _, _)| h == host).map(|(_, n, v)| format!("{n}={v}")).collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }
}

fn host_of(url: &Url) -> String {
    match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    }
}

#[derive(Debug)]
struct ChannelState {
    url: Url,
    ctx: RequestContext,
    cookies: CookieJar,
}

/// One session's conversation with its endpoint: the (shared) HTTP client, this session's
/// credentials, URL (which a redirect may change) and cookies.
#[derive(Debug)]
pub(crate) struct Channel {
    http: reqwest::Client,
    /// Replaced when a bearer token is renewed (see `WinrmSession`). Unused with `ntlm`.
    auth: Mutex<HeaderValue>,
    /// Connection-based logon instead of Basic (the session's own HTTP client).
    ntlm: Option<NtlmLogin>,
    allow_redirection: bool,
    allow_plain_http: bool,
    request_timeout: Duration,
    state: Mutex<ChannelState>,
}

impl Channel {
    pub(crate) fn new(
        http: reqwest::Client,
        auth: HeaderValue,
        url: Url,
        ctx: RequestContext,
        allow_redirection: bool,
        allow_plain_http: bool,
        request_timeout: Duration,
    ) -> Self {
        Self {
            http,
            auth: Mutex::new(auth),
            ntlm: None,
            allow_redirection,
            allow_plain_http,
            request_timeout,
            state: Mutex::new(ChannelState { url, ctx, cookies: CookieJar::default() }),
        }
    }

    /// Logs on with NTLM instead of Basic, on the session's own connection.
    pub(crate) fn with_ntlm(mut self, login: NtlmLogin) -> Self {
        self.ntlm = Some(login);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChannelState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Authorization header for later requests (a renewed bearer token).
    pub(crate) fn set_auth(&self, auth: HeaderValue) {
        *self.auth.lock().unwrap_or_else(|p| p.into_inner()) = auth;
    }

    fn auth(&self) -> HeaderValue {
        self.auth.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A copy of the current request context (its `to` follows redirects).
    pub(crate) fn context(&self) -> RequestContext {
        self.lock().ctx.clone()
    }

    /// The cookies this conversation carries (load-balancer affinity).
    pub(crate) fn cookies(&self) -> Vec<(String, String, String)> {
        self.lock().cookies.entries()
    }

    /// Continues a conversation another process started: its URL and cookies.
    pub(crate) fn resume(&self, url: Url, cookies: Vec<(String, String, String)>) {
        let mut state = self.lock();
        state.ctx.to = url.to_string();
        state.url = url;
        state.cookies = CookieJar::from_entries(cookies);
    }

    /// The endpoint URL now in use.
    pub(crate) fn url(&self) -> Url {
        self.lock().url.clone()
    }

    /// The HTTP timeout of a Receive: the server may legitimately hold it for the whole
    /// OperationTimeout, then it has the time of any request to answer.
    pub(crate) fn timeout_for_receive(&self) -> Duration {
        self.lock().ctx.operation_timeout + self.request_timeout
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// POSTs the envelope `build` makes from the current context and parses the answer with
    /// `parse` (which checks wsa:RelatesTo against the MessageID `build` returned). A redirect,
    /// when allowed, moves the conversation to the new URL for good and rebuilds the envelope for
    /// it (its wsa:To names the URL).
    pub(crate) async fn call<T>(
        &self,
        what: &str,
        timeout: Duration,
        build: impl Fn(&RequestContext) -> (Uuid, String),
        parse: impl Fn(&str, Uuid) -> Result<T, WsmanError>,
    ) -> Result<T, CallError> {
        // NTLM: the conversation is held for the whole exchange (one connection, one order of
        // sealed messages); a refused request (401) logs on again once.
        let mut conversation = match &self.ntlm {
            Some(login) => Some(login.conversation.lock().await),
            None => None,
        };
        let mut logged_on_again = false;
        let mut redirects = 0;
        loop {
            let (url, cookie, (message_id, body)) = {
                let st = self.lock();
                (st.url.clone(), st.cookies.header(&host_of(&st.url)), build(&st.ctx))
            };
            let mut headers = HeaderMap::new();
            if let Some(cookie) = cookie.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
                headers.insert(COOKIE, cookie);
            }
            let (answer, sealed) = match (&self.ntlm, conversation.as_mut()) {
                (Some(login), Some(conv)) => {
                    if conv.context.is_none() || conv.connection.is_closed() {
                        let host = host_of(&url);
                        let client =
                            negotiate::logon(login, &mut conv.connection, &url, cookie.as_deref(), timeout, |h| {
                                self.store_cookies(&host, h)
                            })
                            .await?;
                        conv.context = Some(client);
                    }
                    let seal = login.seal && url.scheme() == "http";
                    let body = if seal {
                        let context = conv.context.as_mut().expect("logged on above");
                        let (content_type, sealed) =
                            context.seal(body.as_bytes()).map_err(|e| protocol(format!("{what}: {e}")))?;
                        headers.insert(CONTENT_TYPE, HeaderValue::from_str(&content_type).expect("ASCII"));
                        sealed
                    } else {
                        headers.insert(CONTENT_TYPE, HeaderValue::from_static(wsman::CONTENT_TYPE));
                        body.into_bytes()
                    };
                    let answer = conv.connection.send(what, &url, headers, body, timeout).await?;
                    (answer, seal)
                }
                _ => {
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static(wsman::CONTENT_TYPE));
                    headers.insert(AUTHORIZATION, self.auth());
                    (self.send_pooled(what, &url, headers, body, timeout).await?, false)
                }
            };
            self.store_cookies(&host_of(&url), &answer.headers);
            let status = answer.status;
            if status == StatusCode::UNAUTHORIZED {
                if let Some(conv) = conversation.as_mut() {
                    // The server forgot the logon (or never had it on this connection): the
                    // request was not processed. Log on again and send it once more.
                    conv.context = None;
                    if !logged_on_again {
                        logged_on_again = true;
                        continue;
                    }
                } else if self.auth().as_bytes().starts_with(b"Basic ") && !negotiate::offers(&answer.headers, "basic")
                {
                    return Err(protocol(format!(
                        "{what}: the endpoint does not accept Basic authentication (the profile's auth): it offers {}; \
                         set the profile's auth to one of them",
                        negotiate::offered(&answer.headers)
                    ))
                    .into());
                }
            }
            if status.is_redirection() {
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(protocol(format!("{what}: more than {MAX_REDIRECTS} redirects")).into());
                }
                let next = self.redirect_target(&url, answer.headers.get(LOCATION))?;
                if let Some(conv) = conversation.as_mut() {
                    if host_of(&next) != host_of(&url) || next.scheme() != url.scheme() {
                        // Another server: a new connection and a new logon there.
                        conv.context = None;
                        conv.connection.close();
                    }
                }
                let mut st = self.lock();
                st.ctx.to = next.to_string();
                st.url = next;
                continue;
            }
            let retry_after = retry_after(&answer.headers);
            let content_type = answer.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            let text = if encryption::is_encrypted(content_type) {
                let context = conversation.as_mut().and_then(|c| c.context.as_mut()).ok_or_else(|| {
                    protocol(format!("{what}: the server sent an encrypted answer, but this conversation has no key"))
                })?;
                let boundary = encryption::boundary_of(content_type).unwrap_or_else(|| encryption::BOUNDARY.into());
                let plain = context.unseal(&answer.body, &boundary).map_err(|e| protocol(format!("{what}: {e}")))?;
                String::from_utf8(plain).map_err(|_| protocol(format!("{what}: the decrypted answer is not UTF-8")))?
            } else {
                if sealed && status.is_success() {
                    // Windows answers a sealed request sealed; a clear answer is not the service.
                    return Err(protocol(format!("{what}: the server answered an encrypted request in clear")).into());
                }
                String::from_utf8_lossy(&answer.body).into_owned()
            };
            return self.answer(what, status, retry_after, &text, message_id, &parse);
        }
    }

    /// One request through the shared, pooled client (Basic: every request carries its logon).
    async fn send_pooled(
        &self,
        what: &str,
        url: &Url,
        headers: HeaderMap,
        body: String,
        timeout: Duration,
    ) -> Result<Answer, RemoteError> {
        let request = self.http.post(url.clone()).headers(headers).timeout(timeout).body(body);
        let response = request.send().await.map_err(|e| transport_error(what, e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| transport_error(what, e))?;
        Ok(Answer { status, headers, body })
    }

    fn store_cookies(&self, host: &str, headers: &HeaderMap) {
        let mut st = self.lock();
        for value in headers.get_all(SET_COOKIE) {
            if let Ok(v) = value.to_str() {
                st.cookies.store(host, v);
            }
        }
    }

    fn redirect_target(&self, from: &Url, location: Option<&HeaderValue>) -> Result<Url, RemoteError> {
        let location = location.and_then(|l| l.to_str().ok()).unwrap_or("");
        if !self.allow_redirection {
            return Err(protocol(format!(
                "the server redirected the request to {location:?}, but redirection is not allowed by the profile"
            )));
        }
        let next = from.join(location).map_err(|e| protocol(format!("bad redirect location {location:?}: {e}")))?;
        check_scheme(&next, self.allow_plain_http)?;
        Ok(next)
    }

    fn answer<T>(
        &self,
        what: &str,
        status: StatusCode,
        retry_after: Option<Duration>,
        text: &str,
        message_id: Uuid,
        parse: &impl Fn(&str, Uuid) -> Result<T, WsmanError>,
    ) -> Result<T, CallError> {
        let code = status.as_u16();
        if status == StatusCode::UNAUTHORIZED {
            // Some servers explain the refusal in a SOAP fault, others in plain text.
            let detail = WsmanFault::parse(text).map(|f| f.to_string()).unwrap_or_else(|_| quote(text));
            let class = classify(Some(code), None, &detail);
            let message = if detail.is_empty() {
                format!("{what}: HTTP 401: the server refused the credentials")
            } else {
                format!("{what}: HTTP 401: {detail}")
            };
            return Err(RemoteError::new(class, message).into());
        }
        if status.is_success() {
            return parse(text, message_id).map_err(|e| match e {
                WsmanError::Fault(fault) => CallError::Fault { status: code, fault: *fault, retry_after },
                other => protocol(format!("{what}: unusable answer: {other}")).into(),
            });
        }
        match WsmanFault::parse(text) {
            Ok(fault) => Err(CallError::Fault { status: code, fault, retry_after }),
            Err(_) => {
                // Not WinRM's answer: a load balancer, gateway or web server spoke.
                let detail = quote(text);
                let class = classify_bare_http(code, &detail);
                let message = format!("{what}: HTTP {code}: {detail}");
                Err(RemoteError::new(class, message).with_retry_after(retry_after).into())
            }
        }
    }
}

/// `Retry-After` in its delay-seconds form (the HTTP-date form is ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The start of a body, for an error message.
fn quote(text: &str) -> String {
    crate::remote::http::quote(text, BODY_QUOTE_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_jar_keeps_replaces_and_expires_per_host() {
        let mut jar = CookieJar::default();
        jar.store("a:1", "MS-WSMAN=abc; Path=/; HttpOnly");
        jar.store("a:1", "X=1");
        assert_eq!(jar.header("a:1").as_deref(), Some("MS-WSMAN=abc; X=1"));
        assert_eq!(jar.header("b:1"), None);
        jar.store("a:1", "MS-WSMAN=def");
        assert_eq!(jar.header("a:1").as_deref(), Some("X=1; MS-WSMAN=def"));
        jar.store("a:1", "X=; Max-Age=0");
        assert_eq!(jar.header("a:1").as_deref(), Some("MS-WSMAN=def"));
        jar.store("a:1", "garbage");
        jar.store("a:1", "=v");
        assert_eq!(jar.header("a:1").as_deref(), Some("MS-WSMAN=def"));
    }

    #[test]
    fn bearer_credentials_get_the_oauth_conversion_flag_once() {
        let bearer = SecretString::from("Bearer eyJ0eXAi");
        let plain = SecretString::from("hunter2");
        let base = "https://outlook.office365.com/powershell-liveid?DelegatedOrg=contoso.onmicrosoft.com";
        let url = endpoint_url(base, &bearer, false).unwrap();
        assert_eq!(url.as_str(), format!("{base}&BasicAuthToOAuthConversion=true"));
        assert_eq!(endpoint_url(url.as_str(), &bearer, false).unwrap(), url);
        assert_eq!(endpoint_url(base, &plain, false).unwrap().as_str(), base);
        let no_query = endpoint_url("https://h/powershell-liveid", &bearer, false).unwrap();
        assert_eq!(no_query.as_str(), "https://h/powershell-liveid?BasicAuthToOAuthConversion=true");
    }

    #[test]
    fn plain_http_needs_the_option_and_other_schemes_never_work() {
        let c = SecretString::from("x");
        let e = endpoint_url("http://127.0.0.1:5985/wsman", &c, false).unwrap_err();
        assert_eq!(e.class, FaultClass::Protocol);
        assert!(e.message.contains("http://"), "{}", e.message);
        assert!(endpoint_url("http://127.0.0.1:5985/wsman", &c, true).is_ok());
        assert_eq!(endpoint_url("ftp://h/", &c, true).unwrap_err().class, FaultClass::Protocol);
        assert_eq!(endpoint_url("not a url", &c, true).unwrap_err().class, FaultClass::Protocol);
    }

    #[test]
    fn basic_auth_is_sensitive_and_carries_the_bearer_verbatim() {
        let h = basic_auth("admin@contoso.com", &SecretString::from("Bearer tok")).unwrap();
        assert!(h.is_sensitive());
        let decoded = B64.decode(h.to_str().unwrap().strip_prefix("Basic ").unwrap()).unwrap();
        assert_eq!(decoded, b"admin@contoso.com:Bearer tok");
    }
}
