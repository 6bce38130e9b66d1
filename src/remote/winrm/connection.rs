//! One HTTP/1.1 connection owned by one session, for connection-based logons (NTLM): the
//! handshake and every later request must travel on the same TCP connection, which a pooled
//! client cannot promise (it opens a new connection whenever the previous one is not back in
//! its pool yet). A new connection is opened only when the old one is gone, and the caller is
//! told, since the logon went with it.

// RemoteError is the connector seam's error type; these helpers return it as is.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use reqwest::header::{HeaderMap, HeaderValue, HOST, USER_AGENT};
use reqwest::{Method, StatusCode, Url};
use tokio::net::TcpStream;

use crate::remote::{FaultClass, RemoteError};

/// An answer read whole.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// The connection of one session; opened on first use and again after it was lost.
pub(crate) struct OwnConnection {
    sender: Option<SendRequest<Full<Bytes>>>,
    connect_timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for OwnConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnConnection").field("open", &!self.is_closed()).finish_non_exhaustive()
    }
}

impl OwnConnection {
    pub(crate) fn new(connect_timeout: Duration, tls: Arc<rustls::ClientConfig>) -> Self {
        Self { sender: None, connect_timeout, tls }
    }

    /// Drops the connection (the next request opens a new one).
    pub(crate) fn close(&mut self) {
        self.sender = None;
    }

    /// True when the next request opens a new connection (one never opened, or lost).
    pub(crate) fn is_closed(&self) -> bool {
        self.sender.as_ref().is_none_or(|s| s.is_closed())
    }

    /// Sends one request and reads its answer whole, within `timeout`. A failure closes the
    /// connection (its state is unknown).
    pub(crate) async fn send(
        &mut self,
        what: &str,
        url: &Url,
        mut headers: HeaderMap,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Answer, RemoteError> {
        let exchange = async {
            if self.is_closed() {
                self.sender = Some(self.connect(what, url).await?);
            }
            let sender = self.sender.as_mut().expect("connected above");
            sender.ready().await.map_err(|e| lost(what, &e))?;
            let path = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_string(),
            };
            let host = match url.port() {
                Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
                None => url.host_str().unwrap_or_default().to_string(),
            };
            headers.insert(HOST, HeaderValue::from_str(&host).map_err(|_| bad_url(url))?);
            headers.insert(USER_AGENT, HeaderValue::from_static(concat!("psbroker/", env!("CARGO_PKG_VERSION"))));
            let mut request = hyper::Request::builder()
                .method(Method::POST)
                .uri(path)
                .body(Full::new(Bytes::from(body)))
                .map_err(|_| bad_url(url))?;
            *request.headers_mut() = headers;
            let response = sender.send_request(request).await.map_err(|e| lost(what, &e))?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| lost(what, &e))?.to_bytes();
            Ok(Answer { status: parts.status, headers: parts.headers, body })
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(RemoteError::new(FaultClass::Timeout, format!("{what}: no answer within {timeout:?}"))),
        };
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn connect(&self, what: &str, url: &Url) -> Result<SendRequest<Full<Bytes>>, RemoteError> {
        let host = url.host_str().ok_or_else(|| bad_url(url))?.to_string();
        let port = url.port_or_known_default().ok_or_else(|| bad_url(url))?;
        let connect = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port));
        let tcp = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| {
                RemoteError::new(FaultClass::Timeout, format!("{what}: connecting to {host}:{port} timed out"))
            })?
            .map_err(|e| {
                RemoteError::new(FaultClass::ConnectionLost, format!("{what}: cannot connect to {host}:{port}: {e}"))
            })?;
        let _ = tcp.set_nodelay(true);
        match url.scheme() {
            "https" => {
                let name = rustls::pki_types::ServerName::try_from(
                    host.trim_start_matches('[').trim_end_matches(']').to_string(),
                )
                .map_err(|_| bad_url(url))?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| tls_failed(what, e))?;
                handshake(what, TokioIo::new(tls)).await
            }
            _ => handshake(what, TokioIo::new(tcp)).await,
        }
    }
}

async fn handshake<T>(what: &str, io: T) -> Result<SendRequest<Full<Bytes>>, RemoteError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| lost(what, &e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "WinRM connection ended");
        }
    });
    Ok(sender)
}

fn lost(what: &str, e: &dyn std::fmt::Display) -> RemoteError {
    RemoteError::new(FaultClass::ConnectionLost, format!("{what}: {e}"))
}

fn bad_url(url: &Url) -> RemoteError {
    RemoteError::new(FaultClass::Protocol, format!("unusable endpoint URL {url}"))
}

/// A TLS failure on the endpoint's certificate is a configuration problem (`ca_file`).
fn tls_failed(what: &str, e: std::io::Error) -> RemoteError {
    let certificate = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
    let class = if certificate { FaultClass::Protocol } else { FaultClass::ConnectionLost };
    RemoteError::new(class, format!("{what}: TLS: {e}"))
}

/// The TLS client configuration of NTLM sessions: the public roots and the profile's CA file.
pub(crate) fn tls_config(extra_roots_pem: &[Vec<u8>]) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for pem in extra_roots_pem {
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("CA file: {e}"))?;
            roots.add(cert).map_err(|e| format!("CA file: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
