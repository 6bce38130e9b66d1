//! Connections the server can cut: how an injected "dropped connection" closes the TCP
//! connection without writing a byte of the answer.
//!
//! The listener wraps each accepted stream with a cut flag, and hands the flag to the request
//! handler as connect info ([`Peer`]). A handler that cuts returns any response; the stream then
//! refuses to write it, hyper gives up on the connection and drops it, and the client sees the
//! connection close before any answer.

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A TCP listener whose connections can be cut by the handler.
pub(super) struct SeverableListener(pub TcpListener);

impl Listener for SeverableListener {
    type Io = Severable;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = Listener::accept(&mut self.0).await;
        (Severable { stream, cut: Arc::new(AtomicBool::new(false)) }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// An accepted connection; once cut, it reads end-of-stream and fails every write.
pub(super) struct Severable {
    stream: TcpStream,
    cut: Arc<AtomicBool>,
}

impl Severable {
    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }
}

fn reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "connection cut by an injected fault")
}

impl AsyncRead for Severable {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.is_cut() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Severable {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.is_cut() {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_cut() {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The client of one request: its address, and the switch that cuts its connection.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// The connection's NTLM logon (Windows ties it to the TCP connection).
    pub(super) logon: Arc<std::sync::Mutex<super::negotiate::ConnectionLogon>>,
    /// The TLS client certificate the connection presented (DER), already verified against
    /// the listener's client CAs.
    pub(super) client_cert: Option<Arc<Vec<u8>>>,
}

impl Peer {
    /// Closes the connection without an answer (whatever the handler returns is not sent).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
    }
}

impl Peer {
    /// The peer at `addr` on `stream`, holding the switch that cuts it.
    pub(super) fn of(addr: SocketAddr, stream: &Severable) -> Self {
        Peer { addr, cut: stream.cut.clone(), logon: Arc::default(), client_cert: None }
    }
}

impl Connected<IncomingStream<'_, SeverableListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, SeverableListener>) -> Self {
        Peer::of(*stream.remote_addr(), stream.io())
    }
}
