//! The HTTP face of the wire server: paths, Basic authentication, the affinity cookie, the
//! optional first-request redirect; the SOAP work is [`super::shell::Wire`]'s.

use super::negotiate;
use super::sever::Peer;
use super::shell::{Caller, Reply, Wire};
use crate::remote::winrm::encryption;
use crate::remote::wsman::{server, WsmanError, WsmanFault, CONTENT_TYPE};
use crate::sim::RequestFault;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::sync::Arc;
use uuid::Uuid;

/// The name of the load balancer's affinity cookie.
pub(super) const AFFINITY_COOKIE: &str = "MS-WSMAN";
const REALM: &str = r#"Basic realm="WSMAN""#;

/// The WS-Management endpoint, with the simulated identity provider's routes beside it
/// (`tls`: the listener serves HTTPS).
pub(super) fn router(wire: Arc<Wire>, tls: bool) -> Router {
    crate::sim::idp::router(wire.sim().clone(), tls).merge(Router::new().fallback(handle).with_state(wire))
}

fn served_path(path: &str) -> bool {
    let p = path.trim_end_matches('/').to_ascii_lowercase();
    matches!(p.as_str(), "/powershell-liveid" | "/powershell" | "/wsman")
}

fn plain(status: StatusCode, text: &str) -> Response {
    let mut r = Response::new(Body::from(text.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// HTTP 401 offering the listener's methods (`Negotiate` and/or Basic).
fn unauthorized(wire: &Wire, body: Option<String>) -> Response {
    let mut r = match body {
        Some(b) => soap(StatusCode::UNAUTHORIZED, b),
        None => Response::new(Body::empty()),
    };
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    if wire.options().ntlm {
        r.headers_mut().append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Negotiate"));
    }
    if wire.options().kerberos.is_some() {
        r.headers_mut().append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Kerberos"));
    }
    if wire.options().basic {
        r.headers_mut().append(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
    }
    r
}

/// Who is calling, and how the answer travels.
struct Logon {
    upn: String,
    secret: String,
    bearer: bool,
    /// The request came sealed (NTLM over HTTP): the answer is sealed too.
    sealed: bool,
    body: Bytes,
}

/// Authenticates a request: a Basic header, an NTLM handshake leg (answered here), or a
/// connection that logged on with NTLM. `Err` is the answer to send instead of serving.
#[allow(clippy::result_large_err)] // the error is the HTTP answer itself, sent as is
fn logon(
    wire: &Wire,
    peer: &Peer,
    headers: &HeaderMap,
    query: &[(String, String)],
    body: Bytes,
) -> Result<Logon, Response> {
    let machine = || {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost")
            .split(':')
            .next()
            .unwrap_or("localhost")
            .to_string()
    };
    if wire.options().ntlm || wire.options().kerberos.is_some() {
        if let Some((scheme, token)) = negotiate::token_of(headers) {
            let leg = match &wire.options().kerberos {
                Some(service) if scheme.eq_ignore_ascii_case("kerberos") => {
                    negotiate::kerberos_leg(wire.sim(), peer, service, &token)
                }
                _ if wire.options().ntlm && !scheme.eq_ignore_ascii_case("kerberos") => {
                    negotiate::leg(wire.sim(), peer, &scheme, &token)
                }
                _ => return Err(unauthorized(wire, None)),
            };
            match leg {
                negotiate::Leg::Challenge { scheme, token } => {
                    let mut r = unauthorized(wire, None);
                    r.headers_mut().remove(header::WWW_AUTHENTICATE);
                    if let Ok(v) = HeaderValue::from_str(&format!("{scheme} {token}")) {
                        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                    }
                    return Err(r);
                }
                negotiate::Leg::Refused(fault) => {
                    return Err(unauthorized(wire, Some(wire.refusal(&fault, &machine()).body)));
                }
                negotiate::Leg::Unauthorized(text) => {
                    let mut r = unauthorized(wire, None);
                    *r.body_mut() = Body::from(text);
                    return Err(r);
                }
                negotiate::Leg::Malformed(text) => {
                    let caller_machine = machine();
                    let fault = WsmanFault {
                        code: None,
                        subcode: Some("w:InvalidMessageInformationHeader".into()),
                        reason: format!("The WS-Management service cannot process the request: {text}."),
                        message: format!("The WS-Management service cannot process the request: {text}."),
                        soap_code: Some("s:Sender".into()),
                        machine: Some(caller_machine),
                    };
                    return Err(soap(StatusCode::BAD_REQUEST, server::fault_response(None, &fault)));
                }
                negotiate::Leg::LoggedOn { upn, password, answer } => {
                    if body.is_empty() {
                        // The logon's own empty request: accepted, nothing to serve.
                        let mut r = Response::new(Body::empty());
                        if let Some(v) = answer.and_then(|a| HeaderValue::from_str(&a).ok()) {
                            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                        }
                        return Err(r);
                    }
                    return plain_logon(wire, upn, password, body);
                }
            }
        }
        if headers.get(header::AUTHORIZATION).is_none() {
            if let Some((upn, password)) = negotiate::logged_on(peer) {
                let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
                if !encryption::is_encrypted(content_type) {
                    return plain_logon(wire, upn, password, body);
                }
                return match negotiate::unseal(peer, content_type, &body) {
                    Ok(plain) => {
                        Ok(Logon { upn, secret: password, bearer: false, sealed: true, body: Bytes::from(plain) })
                    }
                    Err(text) => Err(plain(StatusCode::BAD_REQUEST, &format!("cannot decrypt the request: {text}"))),
                };
            }
        }
    }
    if let Some(logon) = certificate_logon(wire, peer, headers, body.clone()) {
        return logon;
    }
    if !wire.options().basic {
        return Err(unauthorized(wire, None));
    }
    let Some((upn, secret)) = basic_credentials(headers) else { return Err(unauthorized(wire, None)) };
    let bearer = query_value(query, "BasicAuthToOAuthConversion").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        && secret.trim_start().to_ascii_lowercase().starts_with("bearer ");
    let secret = if bearer { secret.trim_start()[7..].trim().to_string() } else { secret };
    Ok(Logon { upn, secret, bearer, sealed: false, body })
}

/// WinRM certificate authentication: the `Authorization` header names the mutual-TLS profile,
/// and the connection's client certificate (verified by the TLS layer against the listener's
/// client CAs) is mapped to the account named by its subject's common name. `None`: another
/// method.
fn certificate_logon(wire: &Wire, peer: &Peer, headers: &HeaderMap, body: Bytes) -> Option<Result<Logon, Response>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if !value.trim().eq_ignore_ascii_case(crate::remote::winrm::CERTIFICATE_AUTH) {
        return None;
    }
    let upn = peer.client_cert.as_deref().and_then(|der| certificate_user(der));
    let Some(upn) = upn else {
        return Some(Err(plain(StatusCode::UNAUTHORIZED, "no client certificate was presented on this connection")));
    };
    Some(match wire.sim().account_password(&upn) {
        Ok(password) => Ok(Logon { upn, secret: password, bearer: false, sealed: false, body }),
        Err(fault) => Err(unauthorized(wire, Some(wire.refusal(&fault, "localhost").body))),
    })
}

/// The account a client certificate maps to: its subject's common name (a UPN).
fn certificate_user(der: &[u8]) -> Option<String> {
    let cert = picky::x509::Cert::from_der(der).ok()?;
    let cn = cert.subject_name().find_common_name()?.to_string();
    (!cn.trim().is_empty()).then(|| cn.trim().to_string())
}

/// A clear body on a connection logged on with NTLM: served only when the listener allows
/// unencrypted traffic (Windows' AllowUnencrypted, false by default).
#[allow(clippy::result_large_err)] // the error is the HTTP answer itself, sent as is
fn plain_logon(wire: &Wire, upn: String, password: String, body: Bytes) -> Result<Logon, Response> {
    if wire.options().allow_unencrypted {
        return Ok(Logon { upn, secret: password, bearer: false, sealed: false, body });
    }
    Err(plain(
        StatusCode::UNAUTHORIZED,
        "unencrypted traffic is refused by this listener (AllowUnencrypted is false): seal the messages",
    ))
}

fn soap(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r
}

/// `(upn, secret)` from `Authorization: Basic ...`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(B64.decode(encoded.trim()).ok()?).ok()?;
    let (upn, secret) = decoded.split_once(':')?;
    if upn.trim().is_empty() {
        return None;
    }
    Some((upn.trim().to_string(), secret.to_string()))
}

fn affinity_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| name.trim() == AFFINITY_COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn query_value<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).filter(|v| !v.trim().is_empty())
}

/// A load balancer's or web server's error page: no SOAP, maybe `Retry-After`.
pub(crate) fn bare(status: StatusCode, html: &str, retry_after_seconds: Option<u64>) -> Response {
    let mut r =
        Response::new(Body::from(format!("<html><head><title>{status}</title></head><body>{html}</body></html>")));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    if let Some(secs) = retry_after_seconds {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

pub(crate) fn server_error() -> Response {
    bare(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The page cannot be displayed because an internal server error has occurred.",
        None,
    )
}

async fn handle(
    State(wire): State<Arc<Wire>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !served_path(uri.path()) {
        return plain(StatusCode::NOT_FOUND, "not a WS-Management endpoint");
    }
    if method != Method::POST {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "WS-Management requests are POSTed");
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let query: Vec<(String, String)> = Query::try_from_uri(&uri).map(|Query(q)| q).unwrap_or_default();
    let Logon { upn, secret, bearer, sealed, body } = match logon(&wire, &peer, &headers, &query, body) {
        Ok(logon) => logon,
        Err(answer) => return answer,
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost").to_string();
    let cookie = affinity_cookie(&headers);
    let caller = Caller {
        upn,
        secret,
        bearer,
        tenant: query_value(&query, "DelegatedOrg").or_else(|| query_value(&query, "tenant")).map(str::to_string),
        cookie: cookie.clone().unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
        client_ip: peer.addr.ip().to_string(),
        machine: host.split(':').next().unwrap_or("localhost").to_string(),
        address: format!("http://{host}{}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")),
    };
    if let Err(reply) = wire.authenticate(&caller) {
        return unauthorized(&wire, Some(reply.body));
    }
    if wire.redirect_first() && cookie.is_none() && query_value(&query, "redirected") != Some("1") {
        let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let sep = if uri.query().is_some() { '&' } else { '?' };
        let location = format!("http://{host}{pq}{sep}redirected=1");
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::FOUND;
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }

    let request = match std::str::from_utf8(&body) {
        Err(_) => Err(malformed(&caller, "the request body is not UTF-8")),
        Ok(text) => match server::parse_request(text.trim_start_matches('\u{feff}')) {
            Ok(request) => Ok(request),
            Err(WsmanError::Xml(e)) => Err(malformed(&caller, &format!("the request is not well-formed XML: {e}"))),
            Err(e) => Err(Reply::fault(500, None, bad_request(&caller, &format!("the request is not valid: {e}")))),
        },
    };
    let reply = match request {
        Err(reply) => reply,
        Ok(request) => {
            let sim = wire.sim();
            let fault = sim.roll_request_fault(request.action.name());
            if let (Some(f), Some(pid)) = (fault, request.command_id().and_then(|c| Uuid::parse_str(c.trim()).ok())) {
                sim.note_pipeline_fault(pid, f.kind());
            }
            // Faults in front of the service: the request is not processed.
            match fault {
                Some(RequestFault::DropBefore) => return severed(&peer),
                Some(RequestFault::Http503 { retry_after_seconds }) => {
                    let text = "No server is available to handle this request.";
                    return bare(StatusCode::SERVICE_UNAVAILABLE, text, Some(retry_after_seconds));
                }
                Some(RequestFault::Http429 { retry_after_seconds }) => {
                    return bare(StatusCode::TOO_MANY_REQUESTS, "Too many requests.", Some(retry_after_seconds));
                }
                Some(RequestFault::Http500 { processed: false }) => return server_error(),
                _ => {}
            }
            let reply = wire.handle(&caller, request).await;
            // Faults after the work was done: the answer is lost, replaced or late.
            match fault {
                Some(RequestFault::DropAfter) => return severed(&peer),
                Some(RequestFault::Http500 { processed: true }) => return server_error(),
                Some(RequestFault::LatencySpike(delay)) => tokio::time::sleep(delay).await,
                _ => {}
            }
            reply
        }
    };
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = if status == StatusCode::UNAUTHORIZED {
        unauthorized(&wire, Some(reply.body))
    } else if sealed {
        match negotiate::seal(&peer, reply.body.as_bytes()) {
            Ok((content_type, body)) => {
                let mut r = Response::new(Body::from(body));
                *r.status_mut() = status;
                if let Ok(v) = HeaderValue::from_str(&content_type) {
                    r.headers_mut().insert(header::CONTENT_TYPE, v);
                }
                r
            }
            Err(text) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot encrypt the answer: {text}")),
        }
    } else {
        soap(status, reply.body)
    };
    if cookie.is_none() {
        if let Ok(v) = HeaderValue::from_str(&format!("{AFFINITY_COOKIE}={}; path=/", caller.cookie)) {
            response.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    response
}

/// Closes the client's connection without an answer.
fn severed(peer: &Peer) -> Response {
    peer.cut();
    Response::new(Body::empty())
}

fn bad_request(caller: &Caller, text: &str) -> WsmanFault {
    WsmanFault {
        code: None,
        subcode: Some("w:InvalidMessageInformationHeader".into()),
        reason: format!("The WS-Management service cannot process the request: {text}."),
        message: format!("The WS-Management service cannot process the request: {text}."),
        soap_code: Some("s:Sender".into()),
        machine: Some(caller.machine.clone()),
    }
}

fn malformed(caller: &Caller, text: &str) -> Reply {
    Reply::fault(400, None, bad_request(caller, text))
}
