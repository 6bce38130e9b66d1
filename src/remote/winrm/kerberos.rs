//! Kerberos for WinRM over HTTP, from the `sspi` crate: the client (tickets from the KDC over
//! TCP, then the AP-REQ in `Authorization: Kerberos <base64>`), and the acceptor the simulator
//! uses with its service key from a keytab. Sealing is the context's, as for NTLM.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sspi::network_client::NetworkClient;
use sspi::{
    AuthIdentity, BufferType, ClientRequestFlags, CredentialUse, CredentialsBuffers, DataRepresentation, Kerberos,
    KerberosConfig, SecurityBuffer, SecurityStatus, ServerRequestFlags, Sspi, SspiImpl, Username,
};

/// How long the KDC may take to answer one request.
const KDC_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends KDC requests over TCP (RFC 4120 7.2.2: the 4-byte length is already in the request).
struct KdcOverTcp;

impl NetworkClient for KdcOverTcp {
    fn send(&self, request: &sspi::NetworkRequest) -> sspi::Result<Vec<u8>> {
        let unreachable = |e: std::io::Error| {
            sspi::Error::new(sspi::ErrorKind::NoAuthenticatingAuthority, format!("KDC {}: {e}", request.url))
        };
        let host = request.url.host_str().unwrap_or_default();
        let addr = (host, request.url.port().unwrap_or(88))
            .to_socket_addrs()
            .map_err(unreachable)?
            .next()
            .ok_or_else(|| unreachable(std::io::Error::other("no address")))?;
        let mut stream = TcpStream::connect_timeout(&addr, KDC_TIMEOUT).map_err(unreachable)?;
        stream.set_read_timeout(Some(KDC_TIMEOUT)).map_err(unreachable)?;
        stream.write_all(&request.data).map_err(unreachable)?;
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).map_err(unreachable)?;
        let mut reply = vec![0u8; 4 + u32::from_be_bytes(len) as usize];
        reply[..4].copy_from_slice(&len);
        stream.read_exact(&mut reply[4..]).map_err(unreachable)?;
        Ok(reply)
    }
}

/// The client side of one Kerberos conversation.
pub(crate) struct KerberosClient {
    krb: Kerberos,
    credentials: Option<CredentialsBuffers>,
    target: String,
}

impl std::fmt::Debug for KerberosClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KerberosClient").field("target", &self.target).finish_non_exhaustive()
    }
}

impl KerberosClient {
    /// `user` as `REALM\user` or `user@REALM`; `kdc` as `tcp://host:88`; `target` the SPN.
    pub(crate) fn new(user: &str, password: &SecretString, kdc: &str, target: &str) -> Result<Self, String> {
        // `user@REALM` is asked for as `REALM\user`: a UPN would travel as an enterprise name,
        // which an MIT KDC does not resolve.
        let name = match user.rsplit_once('@') {
            Some((account, realm)) if !user.contains('\\') => format!("{}\\{account}", realm.to_ascii_uppercase()),
            _ => user.to_string(),
        };
        let username =
            Username::parse(&name).map_err(|e| format!("user name {user:?} is not usable for Kerberos: {e}"))?;
        let identity = AuthIdentity { username, password: password.expose_secret().to_string().into() };
        let config = KerberosConfig::new_with_kdc_url(kdc, "psbroker".into());
        let mut krb = Kerberos::new_client_from_config(config).map_err(|e| format!("Kerberos: {e}"))?;
        let credentials = krb
            .acquire_credentials_handle()
            .with_credential_use(CredentialUse::Outbound)
            .with_auth_data(&identity.into())
            .execute(&mut krb)
            .map_err(|e| format!("Kerberos credentials: {e}"))?
            .credentials_handle;
        Ok(Self { krb, credentials, target: target.to_string() })
    }

    /// One step: `None` first (asks the KDC for the tickets, returns the AP-REQ), then the
    /// server's AP-REP. Blocking: it may talk to the KDC.
    pub(crate) fn step(&mut self, input: Option<&[u8]>) -> Result<(SecurityStatus, Vec<u8>), sspi::Error> {
        let mut input = vec![SecurityBuffer::new(input.unwrap_or_default().to_vec(), BufferType::Token)];
        let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
        let mut builder = self
            .krb
            .initialize_security_context()
            .with_credentials_handle(&mut self.credentials)
            .with_context_requirements(
                ClientRequestFlags::MUTUAL_AUTH | ClientRequestFlags::CONFIDENTIALITY | ClientRequestFlags::INTEGRITY,
            )
            .with_target_data_representation(DataRepresentation::Native)
            .with_target_name(&self.target)
            .with_input(&mut input)
            .with_output(&mut output);
        let result = self.krb.initialize_security_context_impl(&mut builder)?.resolve_with_client(&KdcOverTcp)?;
        Ok((result.status, std::mem::take(&mut output[0].buffer)))
    }

    pub(crate) fn context(&mut self) -> &mut Kerberos {
        &mut self.krb
    }
}

/// The acceptor side (the simulator's): one AP-REQ, checked with the service key.
pub(crate) struct KerberosServer {
    krb: Kerberos,
}

impl std::fmt::Debug for KerberosServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KerberosServer").finish_non_exhaustive()
    }
}

impl KerberosServer {
    /// `service` is the SPN's components (`["HTTP", "localhost"]`), `key` its key from the keytab.
    pub(crate) fn new(service: &[&str], key: Vec<u8>, max_skew: Duration) -> Result<Self, sspi::Error> {
        let properties = sspi::kerberos::ServerProperties::new(service, None, max_skew, Some(key.into()))?;
        // The acceptor never talks to the KDC for a plain AP-REQ; the URL is not used.
        let config = KerberosConfig::new_with_kdc_url("tcp://127.0.0.1:88", "psbroker-sim".into());
        Ok(Self { krb: Kerberos::new_server_from_config(config, properties)? })
    }

    /// Accepts the AP-REQ: the AP-REP for the client and the client's principal (`user@realm`).
    pub(crate) fn accept(&mut self, token: &[u8]) -> Result<(Vec<u8>, String), sspi::Error> {
        let mut input = vec![SecurityBuffer::new(token.to_vec(), BufferType::Token)];
        let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
        let mut credentials: Option<CredentialsBuffers> = None;
        let builder = self
            .krb
            .accept_security_context()
            .with_credentials_handle(&mut credentials)
            .with_context_requirements(ServerRequestFlags::MUTUAL_AUTH)
            .with_target_data_representation(DataRepresentation::Native)
            .with_input(&mut input)
            .with_output(&mut output);
        self.krb.accept_security_context_impl(builder)?.resolve_with_client(&KdcOverTcp)?;
        let names = self.krb.query_context_names()?;
        let principal = super::ntlm::account_key(&names.username);
        Ok((std::mem::take(&mut output[0].buffer), principal))
    }

    pub(crate) fn context(&mut self) -> &mut Kerberos {
        &mut self.krb
    }
}

/// The key of `principal` (`HTTP/localhost@REALM`) in an MIT keytab (format 0x0502), preferring
/// AES-256 (enctype 18) over AES-128 (17). The keytab's layout is read here; no cryptography.
pub(crate) fn keytab_key(keytab: &[u8], principal: &str) -> Result<Vec<u8>, String> {
    let bad = || "the keytab is not an MIT keytab (version 0x0502)".to_string();
    if keytab.get(..2) != Some(&[0x05, 0x02]) {
        return Err(bad());
    }
    let mut best: Option<(u16, Vec<u8>)> = None;
    let mut at = 2;
    while at + 4 <= keytab.len() {
        let size = i32::from_be_bytes(keytab[at..at + 4].try_into().map_err(|_| bad())?);
        at += 4;
        if size <= 0 {
            at += size.unsigned_abs() as usize; // a deleted entry
            continue;
        }
        let entry = keytab.get(at..at + size as usize).ok_or_else(bad)?;
        at += size as usize;
        let mut r = Reader { b: entry, at: 0 };
        let components = r.u16().ok_or_else(bad)?;
        let realm = r.text().ok_or_else(bad)?;
        let mut names = Vec::new();
        for _ in 0..components {
            names.push(r.text().ok_or_else(bad)?);
        }
        r.skip(4 + 4 + 1).ok_or_else(bad)?; // name type, timestamp, key version
        let enctype = r.u16().ok_or_else(bad)?;
        let len = r.u16().ok_or_else(bad)? as usize;
        let key = r.bytes(len).ok_or_else(bad)?.to_vec();
        let name = format!("{}@{realm}", names.join("/"));
        let wanted = name.eq_ignore_ascii_case(principal) && matches!(enctype, 17 | 18);
        if wanted && best.as_ref().is_none_or(|(e, _)| enctype > *e) {
            best = Some((enctype, key));
        }
    }
    best.map(|(_, key)| key).ok_or_else(|| format!("the keytab has no AES key for {principal}"))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.b.get(self.at..self.at + n)?;
        self.at += n;
        Some(out)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.bytes(n).map(drop)
    }
    fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn text(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        self.bytes(n).map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One keytab entry in MIT's layout.
    fn entry(components: &[&str], realm: &str, enctype: u16, key: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&(components.len() as u16).to_be_bytes());
        for text in std::iter::once(&realm).chain(components) {
            e.extend_from_slice(&(text.len() as u16).to_be_bytes());
            e.extend_from_slice(text.as_bytes());
        }
        e.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0, 0, 2]); // name type, timestamp, kvno
        e.extend_from_slice(&enctype.to_be_bytes());
        e.extend_from_slice(&(key.len() as u16).to_be_bytes());
        e.extend_from_slice(key);
        let mut out = (e.len() as i32).to_be_bytes().to_vec();
        out.extend(e);
        out
    }

    #[test]
    fn the_strongest_aes_key_of_the_principal_is_taken_and_garbage_is_refused() {
        let mut keytab = vec![0x05, 0x02];
        keytab.extend(entry(&["HTTP", "other"], "PSB.TEST", 18, &[9; 32]));
        keytab.extend((-12i32).to_be_bytes());
        keytab.extend([0u8; 12]); // a deleted entry
        keytab.extend(entry(&["HTTP", "localhost"], "PSB.TEST", 17, &[1; 16]));
        keytab.extend(entry(&["HTTP", "localhost"], "PSB.TEST", 18, &[2; 32]));
        keytab.extend(entry(&["HTTP", "localhost"], "PSB.TEST", 23, &[3; 16])); // RC4: not used
        assert_eq!(keytab_key(&keytab, "HTTP/localhost@PSB.TEST").unwrap(), vec![2; 32]);
        assert!(keytab_key(&keytab, "HTTP/nowhere@PSB.TEST").unwrap_err().contains("no AES key"));
        for bad in [&b""[..], b"\x05\x01", b"\x05\x02\x00\x00\x01\x00", &keytab[..keytab.len() - 7]] {
            let _ = keytab_key(bad, "HTTP/localhost@PSB.TEST"); // refused or partial, never a panic
        }
        assert!(keytab_key(b"\x05\x01", "x").is_err());
    }
}
