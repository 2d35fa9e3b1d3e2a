//! The socket to a backend: TCP, or a Unix-domain socket when the node's host is a directory
//! (`/var/run/postgresql:5432`, as libpq spells it). A pooler on the database host saves the
//! whole TCP stack on every round trip that way, which is the usual PgBouncer deployment.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use shardgate_config::NodeAddr;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A connected backend socket.
#[derive(Debug)]
pub enum BackendStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl BackendStream {
    /// Connects to `addr`: its Unix socket if it names one, else TCP with Nagle off (every
    /// message the proxy writes is a whole request, so waiting to coalesce only adds latency).
    pub async fn connect(addr: &NodeAddr) -> io::Result<BackendStream> {
        match addr.unix_socket() {
            Some(path) => Ok(BackendStream::Unix(UnixStream::connect(path).await?)),
            None => {
                let stream = TcpStream::connect((addr.host.as_str(), addr.port)).await?;
                stream.set_nodelay(true)?;
                Ok(BackendStream::Tcp(stream))
            }
        }
    }

    /// The same socket, registered with the calling thread's runtime instead of the one it
    /// was registered with. Must be called inside a runtime; the socket's state is untouched.
    pub fn rebind(self) -> io::Result<BackendStream> {
        match self {
            BackendStream::Tcp(s) => Ok(BackendStream::Tcp(TcpStream::from_std(s.into_std()?)?)),
            BackendStream::Unix(s) => Ok(BackendStream::Unix(UnixStream::from_std(s.into_std()?)?)),
        }
    }

    /// A non-blocking read that never waits (`WouldBlock` when nothing is there).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BackendStream::Tcp(s) => s.try_read(buf),
            BackendStream::Unix(s) => s.try_read(buf),
        }
    }

    /// Runs `f` against the socket as tokio's `try_io` does; a `WouldBlock` from `f` clears
    /// the readiness tokio remembers for `interest`.
    pub fn try_io<R>(
        &self,
        interest: Interest,
        f: impl FnOnce() -> io::Result<R>,
    ) -> io::Result<R> {
        match self {
            BackendStream::Tcp(s) => s.try_io(interest, f),
            BackendStream::Unix(s) => s.try_io(interest, f),
        }
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
