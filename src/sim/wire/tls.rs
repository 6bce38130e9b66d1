//! HTTPS for the wire simulator, so clients that insist on TLS for Basic authentication
//! (PowerShell's `New-PSSession` without `AllowUnencrypted`) and the connector's certificate
//! checks can be tried against it. Connections stay severable for injected faults.

use super::sever::{Peer, Severable, SeverableListener};
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A TLS configuration that asks clients for a certificate issued by one of `client_ca_pem`'s
/// CAs (WinRM certificate authentication) without requiring one (Basic and NTLM still work):
/// `cert_pem` is the listener's chain, `key_pem` its private key.
pub fn client_auth_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem).collect::<Result<_, _>>().map_err(|e| format!("certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("private key: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(client_ca_pem) {
        roots.add(ca.map_err(|e| format!("client CA: {e}"))?).map_err(|e| format!("client CA: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client CA: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate: {e}"))?;
    Ok(Arc::new(config))
}

/// How long a client may take over its handshake before the listener moves on.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections and completes the TLS handshake before handing them to the server.
/// Handshakes are done one at a time: plenty for a simulator, bounded by [`HANDSHAKE_TIMEOUT`].
pub(super) struct TlsListener {
    inner: SeverableListener,
    acceptor: TlsAcceptor,
}

impl TlsListener {
    pub fn new(inner: SeverableListener, config: Arc<rustls::ServerConfig>) -> Self {
        Self { inner, acceptor: TlsAcceptor::from(config) }
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<Severable>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = self.inner.accept().await;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
                Ok(Ok(tls)) => return (tls, addr),
                // A client that does not trust the certificate ends here; the next one is served.
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "simulator: TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "simulator: TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let (io, tls) = stream.io().get_ref();
        let mut peer = Peer::of(*stream.remote_addr(), io);
        peer.client_cert = tls.peer_certificates().and_then(|c| c.first()).map(|c| Arc::new(c.to_vec()));
        peer
    }
}
