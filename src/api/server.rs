//! The HTTP server: one accept loop for plain HTTP and HTTPS (tokio-rustls with the live,
//! SIGHUP-reloadable certificate), serving each connection with hyper-util's builder, and the
//! limits `axum::serve` does not have — in one place for both schemes:
//!
//! * at most `max_connections` connections: at the limit a new connection takes the place of
//!   the oldest one with no request in progress (an idle keep-alive or a slowloris still
//!   sending headers); when every connection is busy the new one is refused (plain HTTP: a
//!   canned 503), so idle or slow clients can never lock real callers out;
//! * a new connection (TLS handshake included) must deliver its first request's headers within
//!   `header_read_timeout`, and later requests' headers within it once they have started;
//! * an idle kept-alive connection is closed after `idle_timeout`;
//! * an answer the client does not read for `body_timeout` closes the connection (the request
//!   body's own deadline is in `api::read_body`);
//! * stopping: no new connections; HTTP/1 connections close once their answer is written
//!   (HTTP/2: GOAWAY); after `grace` whatever is still open is closed — whatever clients do.

use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The limits of [`serve`], from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    /// After a stop, how long open connections get to finish their answers.
    pub grace: Duration,
}

impl From<&crate::config::ServerConfig> for ConnectionLimits {
    fn from(c: &crate::config::ServerConfig) -> Self {
        ConnectionLimits {
            max_connections: c.max_connections,
            header_read_timeout: Duration::from_secs_f64(c.header_read_timeout_seconds),
            idle_timeout: Duration::from_secs_f64(c.idle_timeout_seconds),
            body_timeout: Duration::from_secs_f64(c.body_timeout_seconds),
            grace: Duration::from_secs_f64(c.shutdown_grace_seconds),
        }
    }
}

/// Serves `router` on `listener` (HTTPS when `tls` is given) until `stop` is cancelled, then
/// closes every connection within `limits.grace` and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<RustlsConfig>,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let registry = Arc::new(Registry::default());
    let tasks = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors (or the like): wait a little instead of spinning, and
                // say so at most once a second.
                if last_accept_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(1)) {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    last_accept_warning = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        match registry.make_room(limits.max_connections) {
            Room::Free => {}
            Room::Closing(ended) => {
                // The limit is on open sockets: wait until the connection making room has let
                // go of its socket (it is cancelled, so this is a moment). It counts itself in
                // the metrics, as evicted or for whatever else closed it.
                ended.cancelled().await;
            }
            Room::Full => {
                metrics.http_connections_closed.with_label_values(&["refused"]).inc();
                if tls.is_none() {
                    // Best effort and never waiting: the socket's buffer takes it or not.
                    let _ = tcp.try_write(&busy());
                }
                continue;
            }
        }
        let conn = registry.open();
        metrics.http_connections.inc();
        let task =
            Connection { conn, router: router.clone(), limits, stop: stop.clone(), hard_stop: hard_stop.clone() };
        let (registry, metrics, tls) = (registry.clone(), metrics.clone(), tls.clone());
        tasks.spawn(async move {
            let id = task.conn.id;
            let reason = task.run(tcp, tls).await;
            if let Some(reason) = reason {
                metrics.http_connections_closed.with_label_values(&[reason]).inc();
            }
            registry.close(id);
            metrics.http_connections.dec();
        });
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(limits.grace, tasks.wait()).await.is_err() {
        tracing::info!(open = tasks.len(), "closing the connections still open after the grace period");
        hard_stop.cancel();
        tasks.wait().await;
    }
}

/// What a client gets when every connection is busy (plain HTTP only).
fn busy() -> Vec<u8> {
    let body =
        r#"{"error":{"code":"too_many_connections","message":"every connection is busy; try again in a moment"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         cache-control: no-store\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// How often a connection looks at its own deadlines.
const TICK: Duration = Duration::from_millis(250);

/// Milliseconds since the registry started, plus one, so that 0 can mean "never".
fn now_ms(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64 + 1
}

#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    next: AtomicU64,
    epoch: OnceInstant,
}

/// The registry's time origin, fixed when it is created.
struct OnceInstant(Instant);

impl Default for OnceInstant {
    fn default() -> Self {
        OnceInstant(Instant::now())
    }
}

enum Room {
    Free,
    /// A connection is closing to make room (evicted, or closing anyway); the token is
    /// cancelled once it has.
    Closing(CancellationToken),
    Full,
}

impl Registry {
    /// Makes room for one more connection under `limit`: free, by closing the oldest connection
    /// that has no request in progress, or not at all.
    fn make_room(&self, limit: usize) -> Room {
        let conns = self.conns.lock().expect("connection registry");
        if conns.len() < limit {
            return Room::Free;
        }
        if let Some(closing) = conns.values().find(|c| c.close.is_cancelled()) {
            return Room::Closing(closing.ended.clone());
        }
        let idle = conns.values().filter(|c| c.in_flight.load(Ordering::SeqCst) == 0);
        match idle.min_by_key(|c| c.last_active.load(Ordering::SeqCst)) {
            Some(oldest) => {
                oldest.close.cancel();
                Room::Closing(oldest.ended.clone())
            }
            None => Room::Full,
        }
    }

    fn open(&self) -> Arc<ConnState> {
        let epoch = self.epoch.0;
        let now = now_ms(epoch);
        let conn = Arc::new(ConnState {
            id: self.next.fetch_add(1, Ordering::SeqCst),
            epoch,
            opened: now,
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            pending_since: AtomicU64::new(0),
            last_active: AtomicU64::new(now),
            write_blocked_since: AtomicU64::new(0),
            close: CancellationToken::new(),
            ended: CancellationToken::new(),
        });
        self.conns.lock().expect("connection registry").insert(conn.id, conn.clone());
        conn
    }

    /// Forgets a connection whose socket is closed.
    fn close(&self, id: u64) {
        if let Some(conn) = self.conns.lock().expect("connection registry").remove(&id) {
            conn.ended.cancel();
        }
    }
}

/// What the server knows about one connection, updated by its I/O and its requests.
struct ConnState {
    id: u64,
    epoch: Instant,
    opened: u64,
    /// Requests whose answer has not been written out completely.
    in_flight: AtomicUsize,
    /// Requests received so far.
    served: AtomicU64,
    /// When bytes of a next request started to arrive while none was in progress (0: none).
    pending_since: AtomicU64,
    last_active: AtomicU64,
    /// Since when a write has been waiting for the client to read (0: not waiting).
    write_blocked_since: AtomicU64,
    /// Cancelled to close the connection (room for a newer one).
    close: CancellationToken,
    /// Cancelled once the connection's socket is closed.
    ended: CancellationToken,
}

impl ConnState {
    fn now(&self) -> u64 {
        now_ms(self.epoch)
    }

    fn on_read(&self) {
        let now = self.now();
        self.last_active.store(now, Ordering::SeqCst);
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            let _ = self.pending_since.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    fn on_write(&self, blocked: bool) {
        if blocked {
            let _ = self.write_blocked_since.compare_exchange(0, self.now(), Ordering::SeqCst, Ordering::SeqCst);
        } else {
            self.write_blocked_since.store(0, Ordering::SeqCst);
            self.last_active.store(self.now(), Ordering::SeqCst);
        }
    }

    fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.served.fetch_add(1, Ordering::SeqCst);
        self.pending_since.store(0, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// The deadline this connection has passed, if any.
    fn expired(&self, limits: &ConnectionLimits) -> Option<&'static str> {
        let now = self.now();
        let past = |since: u64, limit: Duration| since != 0 && now.saturating_sub(since) > limit.as_millis() as u64;
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return past(self.write_blocked_since.load(Ordering::SeqCst), limits.body_timeout)
                .then_some("write_timeout");
        }
        if self.served.load(Ordering::SeqCst) == 0 {
            return past(self.opened, limits.header_read_timeout).then_some("header_timeout");
        }
        if past(self.pending_since.load(Ordering::SeqCst), limits.header_read_timeout) {
            return Some("header_timeout");
        }
        past(self.last_active.load(Ordering::SeqCst), limits.idle_timeout).then_some("idle_timeout")
    }
}

/// One request in progress; it ends when its answer's body has been written (or dropped).
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.last_active.store(self.0.now(), Ordering::SeqCst);
    }
}

/// An answer's body that keeps its request counted as in progress until it is done.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The TCP stream, reporting reads and blocked writes to its [`ConnState`] (under TLS, so the
/// handshake counts as header bytes).
struct Watched {
    tcp: TcpStream,
    conn: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.conn.on_read();
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.tcp).poll_write(cx, data);
        this.conn.on_write(poll.is_pending());
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.conn.on_write(poll.is_pending());
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// One accepted connection and what it needs to serve itself.
struct Connection {
    conn: Arc<ConnState>,
    router: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
    hard_stop: CancellationToken,
}

impl Connection {
    /// Serves the connection to its end; returns why the server ended it, if it did.
    async fn run(self, tcp: TcpStream, tls: Option<RustlsConfig>) -> Option<&'static str> {
        let io = Watched { tcp, conn: self.conn.clone() };
        let Some(tls) = tls else { return self.http(io).await };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.get_inner());
        let handshake = tokio::time::timeout(self.limits.header_read_timeout, acceptor.accept(io));
        let stream = tokio::select! {
            done = handshake => match done {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return None;
                }
                Err(_) => return Some("tls_handshake"),
            },
            _ = self.conn.close.cancelled() => return Some("evicted"),
            _ = self.stop.cancelled() => return Some("shutdown"),
        };
        self.http(stream).await
    }

    async fn http<I>(self, io: I) -> Option<&'static str>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (conn, router) = (self.conn.clone(), self.router.clone());
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let in_flight = conn.begin_request();
            let router = router.clone();
            async move {
                let response: Response = match router.oneshot(req.map(Body::new)).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| Tracked { body, _in_flight: in_flight }))
            }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // Header and idle deadlines are this module's (hyper's header timer would also run
        // while a kept-alive connection idles).
        builder.http1().timer(TokioTimer::new()).header_read_timeout(None).keep_alive(true);
        builder.http2().timer(TokioTimer::new()).max_concurrent_streams(64);
        let served = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(served);
        let mut draining = false;
        loop {
            tokio::select! {
                _ = served.as_mut() => return None,
                _ = self.stop.cancelled(), if !draining => {
                    served.as_mut().graceful_shutdown();
                    draining = true;
                }
                _ = self.hard_stop.cancelled() => return Some("shutdown"),
                _ = self.conn.close.cancelled() => return Some("evicted"),
                _ = tokio::time::sleep(TICK) => {
                    if let Some(reason) = self.conn.expired(&self.limits) {
                        tracing::debug!(reason, "closing a connection");
                        return Some(reason);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 2,
            header_read_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(300),
            body_timeout: Duration::from_millis(100),
            grace: Duration::from_millis(100),
        }
    }

    #[test]
    fn deadlines_follow_what_the_connection_is_doing() {
        let registry = Registry::default();
        let c = registry.open();
        assert_eq!(c.expired(&limits()), None);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(c.expired(&limits()), Some("header_timeout"), "no first request in time");
        let request = c.begin_request();
        assert_eq!(c.expired(&limits()), None, "a request in progress may take its time");
        c.on_write(true);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(c.expired(&limits()), Some("write_timeout"), "the client does not read the answer");
        c.on_write(false);
        drop(request);
        assert_eq!(c.expired(&limits()), None, "kept alive");
        c.on_read();
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(c.expired(&limits()), Some("header_timeout"), "a next request that never completes");
        let _second = c.begin_request();
        assert_eq!(c.expired(&limits()), None);
    }

    #[test]
    fn the_oldest_idle_connection_makes_room_and_busy_ones_do_not() {
        let registry = Registry::default();
        let (a, b) = (registry.open(), registry.open());
        let _busy = b.begin_request();
        assert!(matches!(registry.make_room(3), Room::Free));
        let Room::Closing(ended) = registry.make_room(2) else { panic!("the idle one makes room") };
        assert!(a.close.is_cancelled() && !b.close.is_cancelled() && !ended.is_cancelled());
        assert!(matches!(registry.make_room(2), Room::Closing(_)), "still closing: wait for it");
        registry.close(a.id);
        assert!(ended.is_cancelled(), "its socket is gone");
        assert!(matches!(registry.make_room(2), Room::Free));
        assert!(matches!(registry.make_room(1), Room::Full), "the only one left is busy");
    }
}
