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
