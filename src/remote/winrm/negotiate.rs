//! Connection-based logon (NTLM under `Negotiate`) for one WinRM conversation: the handshake on
//! the session's own connection, then every body sealed with the context (over `http://`).
//!
//! Windows ties an NTLM logon to the TCP connection, and the seal's sequence numbers tie the
//! conversation to one order of messages. So a session owns one connection
//! ([`super::connection::OwnConnection`]) and holds the conversation's lock for a whole request
//! and answer: requests of one session go one at a time, on the connection that logged on. When
//! that connection is lost, the channel logs on again on a new one before the next request; a
//! server that forgot the logon answers 401 without processing the request, so the channel logs
//! on again and sends it once more.

// RemoteError is the connector seam's error type; these helpers return it as is.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, COOKIE, WWW_AUTHENTICATE};
use reqwest::{StatusCode, Url};
use secrecy::SecretString;

use super::connection::{Answer, OwnConnection};
use super::encryption::{self, EncryptionError, PROTOCOL_KERBEROS, PROTOCOL_SPNEGO};
use super::kerberos::KerberosClient;
use super::ntlm::NtlmClient;
use crate::remote::wsman::WsmanFault;
use crate::remote::{classify, FaultClass, RemoteError};

/// How the channel logs on with NTLM, and the logged-on context once it has one.
pub(crate) struct NtlmLogin {
    pub(crate) user: String,
    pub(crate) password: SecretString,
    /// The service principal name (`HTTP/<host>` unless the profile says otherwise).
    pub(crate) spn: String,
    /// Seal every body (plain `http://` with encryption on).
    pub(crate) seal: bool,
    /// `Some(kdc URL)`: Kerberos with that KDC instead of NTLM.
    pub(crate) kerberos_kdc: Option<String>,
    /// Negotiate: when Kerberos cannot be used (no KDC answers, the KDC does not know the
    /// principal or the SPN, the endpoint does not take Kerberos), log on with NTLM, as Windows
    /// does.
    pub(crate) fallback_to_ntlm: bool,
    pub(crate) conversation: tokio::sync::Mutex<Conversation>,
}

/// A logged-on security context: it seals and unseals the conversation.
#[derive(Debug)]
pub(crate) enum Context {
    Ntlm(Box<NtlmClient>),
    Kerberos(Box<KerberosClient>),
}

impl Context {
    /// `(Content-Type, body)` of a sealed request.
    pub(crate) fn seal(&mut self, plain: &[u8]) -> Result<(String, Vec<u8>), EncryptionError> {
        let (protocol, body) = match self {
            Context::Ntlm(c) => (PROTOCOL_SPNEGO, encryption::seal(c.context(), PROTOCOL_SPNEGO, plain)?),
            Context::Kerberos(c) => (PROTOCOL_KERBEROS, encryption::seal(c.context(), PROTOCOL_KERBEROS, plain)?),
        };
        Ok((encryption::content_type(protocol), body))
    }

    pub(crate) fn unseal(&mut self, body: &[u8], boundary: &str) -> Result<Vec<u8>, EncryptionError> {
        match self {
            Context::Ntlm(c) => encryption::unseal(c.context(), body, boundary),
            Context::Kerberos(c) => encryption::unseal(c.context(), body, boundary),
        }
    }
}

/// The session's connection and the logon that belongs to it.
#[derive(Debug)]
pub(crate) struct Conversation {
    pub(crate) connection: OwnConnection,
    /// `None` before the handshake, after a 401 and when the connection was lost.
    pub(crate) context: Option<Context>,
}

impl std::fmt::Debug for NtlmLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtlmLogin").field("user", &self.user).field("spn", &self.spn).field("seal", &self.seal).finish()
    }
}

/// The default service principal of an endpoint: `HTTP/<host>`.
pub(crate) fn default_spn(url: &Url) -> String {
    format!("HTTP/{}", url.host_str().unwrap_or_default())
}

/// What an answer's `WWW-Authenticate` headers offer, for messages: `Basic, Negotiate`.
pub(crate) fn offered(headers: &HeaderMap) -> String {
    let schemes: Vec<&str> = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split_whitespace().next())
        .collect();
    if schemes.is_empty() {
        "no authentication method".to_string()
    } else {
        schemes.join(", ")
    }
}

/// The token of a `Negotiate <base64>` or `NTLM <base64>` challenge, with its scheme.
fn challenge_of(headers: &HeaderMap) -> Option<(String, Vec<u8>)> {
    headers.get_all(WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        let known = ["negotiate", "ntlm", "kerberos"].iter().any(|s| scheme.eq_ignore_ascii_case(s));
        let token = B64.decode(token.trim()).ok()?;
        (known && !token.is_empty()).then(|| (scheme.to_string(), token))
    })
}

fn offers_ntlm(headers: &HeaderMap) -> bool {
    offers(headers, "negotiate") || offers(headers, "ntlm")
}

/// True when a 401's `WWW-Authenticate` offers `scheme`, or names no scheme at all (then nothing
/// can be told from it).
pub(crate) fn offers(headers: &HeaderMap, scheme: &str) -> bool {
    let mut schemes = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').filter_map(|part| part.split_whitespace().next()).collect::<Vec<_>>())
        .peekable();
    schemes.peek().is_none() || schemes.any(|s| s.eq_ignore_ascii_case(scheme))
}

/// One leg of the handshake: an empty POST carrying `token` (the body itself must not travel
/// before the context can seal it).
async fn leg(
    connection: &mut OwnConnection,
    url: &Url,
    cookie: Option<&str>,
    scheme: &str,
    token: &[u8],
    timeout: Duration,
) -> Result<Answer, RemoteError> {
    let mut auth = HeaderValue::from_str(&format!("{scheme} {}", B64.encode(token)))
        .map_err(|_| RemoteError::new(FaultClass::Protocol, "the NTLM token cannot be sent in a header"))?;
    auth.set_sensitive(true);
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, auth);
    if let Some(cookie) = cookie.and_then(|c| HeaderValue::from_str(c).ok()) {
        headers.insert(COOKIE, cookie);
    }
    connection.send("NTLM logon", url, headers, Vec::new(), timeout).await
}

/// Logs on with NTLM on the conversation's connection to `url` (a new one when it has none);
/// `Ok` holds the context that seals the conversation. Each answer's headers go to
/// `on_headers` (cookies).
pub(crate) async fn logon(
    login: &NtlmLogin,
    connection: &mut OwnConnection,
    url: &Url,
    cookie: Option<&str>,
    timeout: Duration,
    mut on_headers: impl FnMut(&HeaderMap),
) -> Result<Context, RemoteError> {
    if let Some(kdc) = &login.kerberos_kdc {
        match kerberos_logon(login, kdc, connection, url, cookie, timeout, &mut on_headers).await {
            Err(e) if login.fallback_to_ntlm && kerberos_unusable(&e) => {
                tracing::debug!(error = %e.message, "Kerberos cannot be used; falling back to NTLM");
            }
            other => return other,
        }
    }
    ntlm_logon(login, connection, url, cookie, timeout, on_headers).await.map(|c| Context::Ntlm(Box::new(c)))
}

/// Kerberos failed for a reason NTLM does not share (a wrong password or a locked account is
/// not one: NTLM would only repeat it).
fn kerberos_unusable(e: &RemoteError) -> bool {
    matches!(e.class, FaultClass::IdentityServiceUnreachable | FaultClass::PrincipalUnknown)
        || (e.class == FaultClass::Protocol && e.message.contains("does not accept Kerberos"))
}

/// Kerberos: the AP-REQ (tickets from the KDC first) on an empty POST; the server answers 200
/// with its AP-REP (mutual authentication).
async fn kerberos_logon(
    login: &NtlmLogin,
    kdc: &str,
    connection: &mut OwnConnection,
    url: &Url,
    cookie: Option<&str>,
    timeout: Duration,
    mut on_headers: impl FnMut(&HeaderMap),
) -> Result<Context, RemoteError> {
    let client = KerberosClient::new(&login.user, &login.password, kdc, &login.spn)
        .map_err(|m| RemoteError::new(FaultClass::Protocol, m))?;
    // The first step talks to the KDC (blocking I/O).
    let (mut client, first) = tokio::task::spawn_blocking(move || {
        let mut client = client;
        let first = client.step(None);
        (client, first)
    })
    .await
    .map_err(|e| RemoteError::new(FaultClass::Protocol, format!("Kerberos: {e}")))?;
    let (_, ap_req) = first.map_err(kerberos_failure)?;
    let answer = leg(connection, url, cookie, "Kerberos", &ap_req, timeout).await?;
    on_headers(&answer.headers);
    if answer.status.is_success() {
        if let Some((_, ap_rep)) = challenge_of(&answer.headers) {
            client.step(Some(&ap_rep)).map_err(kerberos_failure)?;
        }
        return Ok(Context::Kerberos(Box::new(client)));
    }
    if answer.status == StatusCode::UNAUTHORIZED && !offers(&answer.headers, "kerberos") {
        return Err(RemoteError::new(
            FaultClass::Protocol,
            format!(
                "the endpoint does not accept Kerberos (the profile's auth): it offers {}; set the profile's auth to one of them",
                offered(&answer.headers)
            ),
        ));
    }
    Err(logon_refused(answer.status, &String::from_utf8_lossy(&answer.body)))
}

/// What a Kerberos failure means: the KDC's error codes as sspi reports them.
pub(crate) fn kerberos_failure(e: sspi::Error) -> RemoteError {
    use sspi::ErrorKind as K;
    let text = e.description.to_ascii_lowercase();
    let class = match e.error_type {
        K::NoAuthenticatingAuthority => FaultClass::IdentityServiceUnreachable,
        K::TimeSkew => FaultClass::ClockSkew,
        _ if text.contains("clock skew") => FaultClass::ClockSkew,
        _ if text.contains("revoked") => FaultClass::AccountLocked,
        _ if text.contains("not found in kerberos database") => FaultClass::PrincipalUnknown,
        _ if text.contains("pre-authentication information was invalid") => FaultClass::LogonFailed,
        K::LogonDenied => FaultClass::LogonFailed,
        _ => FaultClass::Protocol,
    };
    RemoteError::new(class, format!("Kerberos logon: {e}"))
}

async fn ntlm_logon(
    login: &NtlmLogin,
    connection: &mut OwnConnection,
    url: &Url,
    cookie: Option<&str>,
    timeout: Duration,
    mut on_headers: impl FnMut(&HeaderMap),
) -> Result<NtlmClient, RemoteError> {
    let failed = |m: String| RemoteError::new(FaultClass::Protocol, m);
    let mut client = NtlmClient::new(&login.user, &login.password, &login.spn).map_err(failed)?;
    let negotiate = client.negotiate().map_err(|e| failed(format!("NTLM: {e}")))?;
    let first = leg(connection, url, cookie, "Negotiate", &negotiate, timeout).await?;
    on_headers(&first.headers);
    let Some((scheme, challenge)) = challenge_of(&first.headers).filter(|_| first.status == StatusCode::UNAUTHORIZED)
    else {
        return Err(refused_first_leg(first.status, &first.headers, &String::from_utf8_lossy(&first.body)));
    };
    if connection.is_closed() {
        return Err(RemoteError::new(
            FaultClass::ConnectionLost,
            "NTLM logon: the server closed the connection after its challenge",
        ));
    }
    let authenticate = client.authenticate(&challenge).map_err(|e| failed(format!("NTLM challenge: {e}")))?;
    let second = leg(connection, url, cookie, &scheme, &authenticate, timeout).await?;
    on_headers(&second.headers);
    if second.status.is_success() {
        return Ok(client);
    }
    Err(logon_refused(second.status, &String::from_utf8_lossy(&second.body)))
}

/// The first leg got no challenge: the endpoint does not speak NTLM (say what it offers), or
/// something in front of it answered.
fn refused_first_leg(status: StatusCode, headers: &HeaderMap, text: &str) -> RemoteError {
    if status == StatusCode::UNAUTHORIZED && !offers_ntlm(headers) {
        return RemoteError::new(
            FaultClass::Protocol,
            format!(
                "the endpoint does not accept NTLM (the profile's auth): it offers {}; set the profile's auth to one of them",
                offered(headers)
            ),
        );
    }
    logon_refused(status, text)
}

/// The server refused the logon: the class follows the status and the words of the answer.
fn logon_refused(status: StatusCode, text: &str) -> RemoteError {
    let detail =
        WsmanFault::parse(text).map(|f| f.to_string()).unwrap_or_else(|_| crate::remote::http::quote(text, 400));
    let class = classify(Some(status.as_u16()), None, &detail);
    let message = if detail.is_empty() {
        format!("NTLM logon: HTTP {}: the server refused the credentials", status.as_u16())
    } else {
        format!("NTLM logon: HTTP {}: {detail}", status.as_u16())
    };
    RemoteError::new(class, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(WWW_AUTHENTICATE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn an_endpoint_without_ntlm_is_a_protocol_error_naming_what_it_offers() {
        let e = refused_first_leg(StatusCode::UNAUTHORIZED, &headers(&[r#"Basic realm="WSMAN""#]), "");
        assert_eq!(e.class, FaultClass::Protocol);
        assert!(e.message.contains("offers Basic"), "{}", e.message);
        assert_eq!(offered(&headers(&[])), "no authentication method");
        assert_eq!(offered(&headers(&["Negotiate", "Kerberos"])), "Negotiate, Kerberos");
    }

    #[test]
    fn challenges_are_found_under_either_scheme() {
        let token = B64.encode(b"NTLMSSP\0\x02");
        let h = headers(&["Basic realm=\"x\"", &format!("NTLM {token}")]);
        assert_eq!(challenge_of(&h), Some(("NTLM".into(), b"NTLMSSP\0\x02".to_vec())));
        assert_eq!(challenge_of(&headers(&["Negotiate"])), None);
        assert!(offers_ntlm(&headers(&["Negotiate"])));
    }

    #[test]
    fn a_refused_logon_is_a_logon_failure_and_a_lockout_is_told_apart() {
        assert_eq!(logon_refused(StatusCode::UNAUTHORIZED, "").class, FaultClass::LogonFailed);
        let locked = "The referenced account is currently locked out and may not be logged on to.";
        assert_eq!(logon_refused(StatusCode::UNAUTHORIZED, locked).class, FaultClass::AccountLocked);
    }
}
