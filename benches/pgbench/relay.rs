//! A bare TCP relay: the floor any proxy's cost stands on. It copies bytes between each client
//! and its own upstream connection to PostgreSQL (no parsing, no pooling, no authentication of
//! its own), so its cost per transaction is the two extra socket hops and the wake-ups they
//! cause, with almost no user-space work on top.
//!
//! It runs as a separate process (this benchmark binary started again with [`CHILD_ENV`] set),
//! so its CPU time is read from `/proc` like the proxies'. It uses a tokio multi-threaded runtime
//! with one worker per core and one task per direction of each connection. A direction waits
//! for readiness, reads once, and writes what it read; after a short read it marks the socket
//! not readable without another `recv`, so a round trip costs one `recv` and one `send` per hop,
//! as in shardgate.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use shardgate_testkit::free_port;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream, UnixStream};

use crate::shardgate::Backend;
use crate::{wait_listening, BenchError};

/// Set in the child's environment to `LISTEN_PORT TCP_PORT` or `LISTEN_PORT unix:SOCKET_PATH`.
const CHILD_ENV: &str = "SG_BENCH_RELAY_CHILD";
/// How long the relay may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read at once; a pgbench round trip is far smaller.
const BUFFER: usize = 16 * 1024;

/// Where the relay connects for each client.
#[derive(Debug, Clone)]
enum Upstream {
    Tcp(u16),
    Unix(PathBuf),
}

/// A running relay process; killed on drop.
#[derive(Debug)]
pub(crate) struct Relay {
    port: u16,
    child: Child,
}

impl Relay {
    /// Starts a relay on a free loopback port in front of PostgreSQL's `pg_port`, reached over
    /// `backend` (`socket_dir` holds its Unix socket).
    pub(crate) fn start(
        pg_port: u16,
        socket_dir: &std::path::Path,
        backend: Backend,
    ) -> Result<Relay, BenchError> {
        let port = free_port();
        let upstream = match backend {
            Backend::Tcp => pg_port.to_string(),
            Backend::Unix => format!(
                "unix:{}",
                socket_dir.join(format!(".s.PGSQL.{pg_port}")).display()
            ),
        };
        let child = Command::new(std::env::current_exe()?)
            .env(CHILD_ENV, format!("{port} {upstream}"))
            .stdin(Stdio::null())
            .spawn()?;
        let mut relay = Relay { port, child };
        wait_listening(&mut relay.child, port, "relay", READY_TIMEOUT, &String::new)?;
        Ok(relay)
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// When this process was started as a relay, runs it (until killed) and returns its exit code;
/// otherwise `None`.
pub(crate) fn child_main() -> Option<ExitCode> {
    let spec = std::env::var(CHILD_ENV).ok()?;
    let parsed = spec.split_once(' ').and_then(|(port, upstream)| {
        let port: u16 = port.parse().ok()?;
        let upstream = match upstream.strip_prefix("unix:") {
            Some(path) => Upstream::Unix(PathBuf::from(path)),
            None => Upstream::Tcp(upstream.parse().ok()?),
        };
        Some((port, upstream))
    });
    let Some((port, upstream)) = parsed else {
        eprintln!("relay: bad {CHILD_ENV}={spec:?}");
        return Some(ExitCode::FAILURE);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_io()
        .build();
    let result = runtime.and_then(|rt| rt.block_on(serve(port, upstream)));
    if let Err(e) = result {
        eprintln!("relay: {e}");
    }
    Some(ExitCode::FAILURE)
}

async fn serve(port: u16, upstream: Upstream) -> io::Result<()> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    loop {
        let (client, _) = listener.accept().await?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            if let Err(e) = relay_one(client, upstream).await {
                eprintln!("relay: connection: {e}");
            }
        });
    }
}

async fn relay_one(client: TcpStream, upstream: Upstream) -> io::Result<()> {
    client.set_nodelay(true)?;
    let client = Arc::new(client);
    match upstream {
        Upstream::Tcp(port) => {
            let server = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
            server.set_nodelay(true)?;
            both_ways(client, Arc::new(server)).await
        }
        Upstream::Unix(path) => {
            let server = UnixStream::connect(path).await?;
            both_ways(client, Arc::new(server)).await
        }
    }
}

async fn both_ways<S: Socket>(client: Arc<TcpStream>, server: Arc<S>) -> io::Result<()> {
    let up = tokio::spawn(pump(Arc::clone(&client), Arc::clone(&server)));
    let down = pump(server, client).await;
    up.abort();
    down
}

/// Copies `from` to `to` until `from` ends: one `recv` per readiness, one `send` per `recv`.
async fn pump<F: Socket, T: Socket>(from: Arc<F>, to: Arc<T>) -> io::Result<()> {
    let mut buf = vec![0u8; BUFFER];
    loop {
        from.wait(Interest::READABLE).await?;
        let n = match from.recv(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n < buf.len() {
            // A short read drained the socket: forget the readiness instead of paying a
            // failing `recv` to learn it. A later arrival raises a new event.
            from.forget_readable();
        }
        let mut sent = 0;
        while sent < n {
            match to.send(&buf[sent..n]) {
                Ok(k) => sent += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    to.wait(Interest::WRITABLE).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The readiness-based calls [`pump`] needs, for both kinds of upstream socket.
trait Socket: Send + Sync + 'static {
    fn wait(&self, interest: Interest) -> impl std::future::Future<Output = io::Result<()>> + Send;
    /// Clears the readable readiness without a system call.
    fn forget_readable(&self);
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn send(&self, buf: &[u8]) -> io::Result<usize>;
}

macro_rules! socket {
    ($ty:ty) => {
        impl Socket for $ty {
            async fn wait(&self, interest: Interest) -> io::Result<()> {
                self.ready(interest).await.map(|_| ())
            }
            fn forget_readable(&self) {
                let _ = self.try_io(Interest::READABLE, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
            }
            fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
                self.try_read(buf)
            }
            fn send(&self, buf: &[u8]) -> io::Result<usize> {
                self.try_write(buf)
            }
        }
    };
}
socket!(TcpStream);
socket!(UnixStream);
