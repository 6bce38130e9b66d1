//! NTLM logon and message encryption on the simulator's wire, as a Windows WinRM listener does
//! them: `Authorization: Negotiate <NTLM token>` (or `NTLM <token>`) on empty POSTs, the logon
//! held by the TCP connection, and then every body sealed with the connection's context over
//! plain HTTP (unless [`super::WireOptions::allow_unencrypted`]).

use super::sever::Peer;
use crate::remote::winrm::encryption;
use crate::remote::winrm::kerberos::KerberosServer;
use crate::remote::winrm::ntlm::{self, NtlmServer};
use crate::sim::{SimFault, Simulator};
use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

/// The NTLM state of one connection.
#[derive(Debug, Default)]
pub(crate) struct ConnectionLogon {
    /// Between CHALLENGE and AUTHENTICATE.
    pending: Option<NtlmServer>,
    /// After a successful AUTHENTICATE.
    established: Option<Established>,
}

struct Established {
    upn: String,
    password: String,
    server: ServerContext,
}

/// The acceptor's context of a logged-on connection.
enum ServerContext {
    Ntlm(Box<NtlmServer>),
    Kerberos(Box<KerberosServer>),
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established").field("upn", &self.upn).finish_non_exhaustive()
    }
}

/// The simulator's Kerberos service: its principal's name components (`["HTTP", "localhost"]`)
/// and key, from a keytab.
#[derive(Clone)]
pub struct SimKerberos {
    pub service: Vec<String>,
    pub key: Vec<u8>,
    /// The largest difference between the client's clock and this one (Windows: 5 minutes).
    pub max_skew: std::time::Duration,
}

impl std::fmt::Debug for SimKerberos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimKerberos").field("service", &self.service).finish_non_exhaustive()
    }
}

impl SimKerberos {
    /// The key of `principal` (`HTTP/localhost@REALM`) from an MIT keytab file.
    pub fn from_keytab(path: &std::path::Path, principal: &str) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read the keytab {}: {e}", path.display()))?;
        let key = crate::remote::winrm::kerberos::keytab_key(&bytes, principal)?;
        let name = principal.split('@').next().unwrap_or(principal);
        let max_skew = std::time::Duration::from_secs(300);
        Ok(Self { service: name.split('/').map(str::to_string).collect(), key, max_skew })
    }
}

/// A Kerberos AP-REQ on `peer`'s connection: logged on (with the AP-REP for the client) or
/// refused.
pub(super) fn kerberos_leg(sim: &Simulator, peer: &Peer, service: &SimKerberos, token: &[u8]) -> Leg {
    let names: Vec<&str> = service.service.iter().map(String::as_str).collect();
    let mut server = match KerberosServer::new(&names, service.key.clone(), service.max_skew) {
        Ok(s) => s,
        Err(e) => return Leg::Malformed(format!("Kerberos acceptor: {e}")),
    };
    let (ap_rep, upn) = match server.accept(token) {
        Ok(accepted) => accepted,
        Err(e) if e.error_type == sspi::ErrorKind::TimeSkew => {
            return Leg::Unauthorized("KRB_AP_ERR_SKEW: clock skew too great".into())
        }
        Err(e) => return Leg::Malformed(format!("Kerberos AP-REQ refused: {e}")),
    };
    let password = match sim.account_password(&upn) {
        Ok(p) => p,
        Err(fault) => return Leg::Refused(fault),
    };
    let mut logon = peer.logon.lock().unwrap_or_else(|p| p.into_inner());
    logon.pending = None;
    logon.established = Some(Established {
        upn: upn.clone(),
        password: password.clone(),
        server: ServerContext::Kerberos(Box::new(server)),
    });
    Leg::LoggedOn { upn, password, answer: Some(format!("Kerberos {}", B64.encode(ap_rep))) }
}

/// What an `Authorization: Negotiate|NTLM` leg comes to.
pub(super) enum Leg {
    /// 401 with `WWW-Authenticate: <scheme> <token>`.
    Challenge { scheme: String, token: String },
    /// The connection is logged on as `upn`; `answer`: a `WWW-Authenticate` value for the
    /// client (Kerberos' AP-REP).
    LoggedOn { upn: String, password: String, answer: Option<String> },
    /// 401: the logon is refused (logon failure, lockout).
    Refused(SimFault),
    /// 401 with this text (a Kerberos error).
    Unauthorized(String),
    /// 400: not a token this listener understands.
    Malformed(String),
}

/// `(scheme, token)` of an `Authorization: Negotiate|NTLM <base64>` header.
pub(super) fn token_of(headers: &HeaderMap) -> Option<(String, Vec<u8>)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !["negotiate", "ntlm", "kerberos"].iter().any(|s| scheme.eq_ignore_ascii_case(s)) {
        return None;
    }
    Some((scheme.to_string(), B64.decode(token.trim()).unwrap_or_default()))
}

/// One handshake leg on `peer`'s connection.
pub(super) fn leg(sim: &Simulator, peer: &Peer, scheme: &str, token: &[u8]) -> Leg {
    if !ntlm::is_ntlm(token) {
        return Leg::Malformed("only raw NTLM tokens are accepted under Negotiate by this listener".into());
    }
    let mut logon = peer.logon.lock().unwrap_or_else(|p| p.into_inner());
    // Message type: byte 8 (1 NEGOTIATE, 3 AUTHENTICATE).
    match token.get(8) {
        Some(1) => {
            let mut server = NtlmServer::default();
            match server.challenge(token) {
                Ok(challenge) => {
                    logon.pending = Some(server);
                    logon.established = None;
                    Leg::Challenge { scheme: scheme.to_string(), token: B64.encode(challenge) }
                }
                Err(e) => Leg::Malformed(format!("unreadable NTLM NEGOTIATE: {e}")),
            }
        }
        Some(3) => {
            let Some(mut server) = logon.pending.take() else {
                return Leg::Malformed("NTLM AUTHENTICATE without a NEGOTIATE on this connection".into());
            };
            let named = match server.user_of(token) {
                Ok(named) => named,
                Err(e) => return Leg::Malformed(format!("unreadable NTLM AUTHENTICATE: {e}")),
            };
            let upn = ntlm::account_key(&named);
            let password = match sim.account_password(&upn) {
                Ok(p) => p,
                Err(fault) => return Leg::Refused(fault),
            };
            if server.verify(named, &password).is_err() {
                return Leg::Refused(SimFault::logon_failed(&upn));
            }
            logon.established = Some(Established {
                upn: upn.clone(),
                password: password.clone(),
                server: ServerContext::Ntlm(Box::new(server)),
            });
            Leg::LoggedOn { upn, password, answer: None }
        }
        _ => Leg::Malformed("not an NTLM NEGOTIATE or AUTHENTICATE message".into()),
    }
}

/// The user the connection logged on as, with the account's password: `None` when it has not.
pub(super) fn logged_on(peer: &Peer) -> Option<(String, String)> {
    let logon = peer.logon.lock().unwrap_or_else(|p| p.into_inner());
    logon.established.as_ref().map(|e| (e.upn.clone(), e.password.clone()))
}

/// Unseals a request body with the connection's context.
pub(super) fn unseal(peer: &Peer, content_type: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    let mut logon = peer.logon.lock().unwrap_or_else(|p| p.into_inner());
    let established =
        logon.established.as_mut().ok_or("an encrypted request on a connection that has not logged on")?;
    let boundary = encryption::boundary_of(content_type).unwrap_or_else(|| encryption::BOUNDARY.into());
    match &mut established.server {
        ServerContext::Ntlm(s) => encryption::unseal(s.context(), body, &boundary),
        ServerContext::Kerberos(s) => encryption::unseal(s.context(), body, &boundary),
    }
    .map_err(|e| e.to_string())
}

/// Seals an answer with the connection's context: `(content type, body)`.
pub(super) fn seal(peer: &Peer, plain: &[u8]) -> Result<(String, Vec<u8>), String> {
    let mut logon = peer.logon.lock().unwrap_or_else(|p| p.into_inner());
    let established = logon.established.as_mut().ok_or("the connection has no security context")?;
    let (protocol, body) = match &mut established.server {
        ServerContext::Ntlm(s) => {
            (encryption::PROTOCOL_SPNEGO, encryption::seal(s.context(), encryption::PROTOCOL_SPNEGO, plain))
        }
        ServerContext::Kerberos(s) => {
            (encryption::PROTOCOL_KERBEROS, encryption::seal(s.context(), encryption::PROTOCOL_KERBEROS, plain))
        }
    };
    Ok((encryption::content_type(protocol), body.map_err(|e| e.to_string())?))
}
