//! A multiplexing relay: the floor under a proxy that sends several clients' requests down one
//! server connection back to back, where a pooler gives each transaction a connection of its
//! own. Each worker thread keeps a few server connections; every complete request of a client
//! (up to its Query or Sync) is appended to the one with the fewest requests outstanding, and
//! each reply (up to its ReadyForQuery) goes back to the client that sent the request, in
//! order. PostgreSQL then answers several requests per wake-up of a backend.
//!
//! It is a measuring instrument, not a proxy: it authenticates nobody (every client is greeted
//! as logged in), logs in to PostgreSQL as the trusted superuser, tracks no session state or
//! statement names (it closes a client that names a statement, so pgbench `-M prepared`, whose
//! clients all name their statements alike, fails through it), and knows nothing of transactions (pgbench `-S` runs none). It runs as
//! its own process (this benchmark binary started again with [`CHILD_ENV`] set) with one
//! single-threaded runtime per core, like shardgate, so its CPU time is read from `/proc`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::rc::Rc;
use std::time::Duration;

use shardgate_testkit::free_port;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{oneshot, Notify};

use crate::{wait_listening, BenchError};

/// Set in the child's environment to `LISTEN_PORT PG_PORT DATABASE CONNECTIONS_PER_WORKER`.
const CHILD_ENV: &str = "SG_BENCH_MUX_CHILD";
/// How long the relay may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The PostgreSQL user the relay logs in as: trusted on loopback by the testkit.
const SERVER_USER: &str = "postgres";
/// Protocol 3.0, and the two negotiation requests answered with 'N'.
const PROTOCOL_3: u32 = 196_608;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
/// Longest message accepted from either side.
const MAX_MESSAGE: usize = 64 << 20;

/// A running multiplexing relay process; killed on drop.
#[derive(Debug)]
pub(crate) struct Mux {
    port: u16,
    child: Child,
}

impl Mux {
    /// Starts the relay on a free loopback port in front of PostgreSQL's `pg_port` (over TCP),
    /// with `per_worker` server connections per worker thread, serving `database`.
    pub(crate) fn start(
        pg_port: u16,
        database: &str,
        per_worker: usize,
    ) -> Result<Mux, BenchError> {
        let port = free_port();
        let child = Command::new(std::env::current_exe()?)
            .env(
                CHILD_ENV,
                format!("{port} {pg_port} {database} {per_worker}"),
            )
            .stdin(Stdio::null())
            .spawn()?;
        let mut mux = Mux { port, child };
        wait_listening(&mut mux.child, port, "mux", READY_TIMEOUT, &String::new)?;
        Ok(mux)
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the relay listens and what it connects to.
#[derive(Debug, Clone)]
struct Spec {
    port: u16,
    pg_port: u16,
    database: String,
    per_worker: usize,
}

/// When this process was started as the multiplexing relay, runs it (until killed) and
/// returns its exit code; otherwise `None`.
pub(crate) fn child_main() -> Option<ExitCode> {
    let text = std::env::var(CHILD_ENV).ok()?;
    let mut words = text.split(' ');
    let spec = (|| {
        Some(Spec {
            port: words.next()?.parse().ok()?,
            pg_port: words.next()?.parse().ok()?,
            database: words.next()?.to_owned(),
            per_worker: words.next()?.parse().ok().filter(|&n| n > 0)?,
        })
    })();
    let Some(spec) = spec else {
        eprintln!("mux: bad {CHILD_ENV}={text:?}");
        return Some(ExitCode::FAILURE);
    };
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let spec = spec.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()?;
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, worker(spec))
            })
        })
        .collect();
    for thread in threads {
        match thread.join() {
            Ok(Err(e)) => eprintln!("mux: {e}"),
            Err(_) => eprintln!("mux: a worker panicked"),
            Ok(Ok(())) => {}
        }
    }
    Some(ExitCode::FAILURE)
}

/// One server connection shared by the clients of a worker.
#[derive(Debug, Default)]
struct Shared {
    /// Requests appended since the writer last ran.
    outgoing: RefCell<Vec<u8>>,
    /// Where each outstanding request's reply goes, in the order sent.
    waiting: RefCell<VecDeque<oneshot::Sender<Vec<u8>>>>,
    wake_writer: Notify,
}

async fn worker(spec: Spec) -> io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    // Every worker listens on the port; the kernel spreads connections over them.
    socket.set_reuseport(true)?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], spec.port)))?;
    let listener = socket.listen(1024)?;
    let mut servers = Vec::with_capacity(spec.per_worker);
    for _ in 0..spec.per_worker {
        let (read, write) = login(spec.pg_port, &spec.database).await?.into_split();
        let shared = Rc::new(Shared::default());
        tokio::task::spawn_local(report("writer", write_requests(Rc::clone(&shared), write)));
        tokio::task::spawn_local(report("reader", read_replies(Rc::clone(&shared), read)));
        servers.push(shared);
    }
    let servers: Rc<[Rc<Shared>]> = servers.into();
    loop {
        let (client, _) = listener.accept().await?;
        client.set_nodelay(true)?;
        let servers = Rc::clone(&servers);
        tokio::task::spawn_local(async move {
            // A client that leaves is no concern of the others.
            let _ = serve_client(client, servers).await;
        });
    }
}

async fn report(what: &'static str, task: impl std::future::Future<Output = io::Result<()>>) {
    if let Err(e) = task.await {
        eprintln!("mux: server connection {what}: {e}");
        std::process::exit(1);
    }
}

fn protocol_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Appends one message of type `tag`.
fn put_message(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
}

/// The type and total length of the complete message at the start of `buf`, if there is one.
fn next_message(buf: &[u8]) -> io::Result<Option<(u8, usize)>> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(4..=MAX_MESSAGE).contains(&len) {
        return Err(protocol_error("bad message length"));
    }
    Ok((buf.len() > len).then_some((header[0], len + 1)))
}

async fn login(pg_port: u16, database: &str) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], pg_port))).await?;
    stream.set_nodelay(true)?;
    let mut body = PROTOCOL_3.to_be_bytes().to_vec();
    for (key, value) in [("user", SERVER_USER), ("database", database)] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    let mut packet = len.to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    stream.write_all(&packet).await?;
    loop {
        let tag = stream.read_u8().await?;
        let len = stream.read_u32().await? as usize;
        if !(4..=MAX_MESSAGE).contains(&len) {
            return Err(protocol_error("bad message length at login"));
        }
        let mut body = vec![0; len - 4];
        stream.read_exact(&mut body).await?;
        match tag {
            b'R' if body.get(..4) != Some(&[0, 0, 0, 0]) => {
                return Err(protocol_error("the server asked for a password"))
            }
            b'E' => return Err(protocol_error(&String::from_utf8_lossy(&body))),
            b'Z' => return Ok(stream),
            _ => {}
        }
    }
}

/// Sends whatever clients appended, in one write per wake-up: requests that arrive while a
/// write is under way go out together in the next.
async fn write_requests(shared: Rc<Shared>, mut server: impl AsyncWrite + Unpin) -> io::Result<()> {
    let mut batch = Vec::new();
    loop {
        shared.wake_writer.notified().await;
        std::mem::swap(&mut batch, &mut *shared.outgoing.borrow_mut());
        if !batch.is_empty() {
            server.write_all(&batch).await?;
            batch.clear();
        }
    }
}

/// Splits the server's replies at each ReadyForQuery and hands each to the client next in line.
async fn read_replies(shared: Rc<Shared>, mut server: impl AsyncRead + Unpin) -> io::Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    // Where the reply being gathered starts, and how far messages have been scanned.
    let (mut start, mut scanned) = (0, 0);
    loop {
        if server.read_buf(&mut buf).await? == 0 {
            return Err(protocol_error("the server closed the connection"));
        }
        while let Some((tag, len)) = next_message(&buf[scanned..])? {
            scanned += len;
            if tag == b'Z' {
                let reply = buf[start..scanned].to_vec();
                start = scanned;
                let Some(client) = shared.waiting.borrow_mut().pop_front() else {
                    return Err(protocol_error("a reply nobody asked for"));
                };
                // A client that left no longer wants its reply.
                let _ = client.send(reply);
            }
        }
        buf.drain(..start);
        scanned -= start;
        start = 0;
    }
}

async fn serve_client(mut client: TcpStream, servers: Rc<[Rc<Shared>]>) -> io::Result<()> {
    loop {
        let len = client.read_u32().await? as usize;
        if !(8..=10_000).contains(&len) {
            return Err(protocol_error("bad startup packet"));
        }
        let mut body = vec![0; len - 4];
        client.read_exact(&mut body).await?;
        match u32::from_be_bytes([body[0], body[1], body[2], body[3]]) {
            SSL_REQUEST | GSSENC_REQUEST => client.write_all(b"N").await?,
            PROTOCOL_3 => break,
            _ => return Ok(()),
        }
    }
    let mut greeting = Vec::new();
    put_message(&mut greeting, b'R', &0u32.to_be_bytes());
    for (name, value) in [
        ("server_version", "15.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
    ] {
        let mut body = Vec::new();
        for text in [name, value] {
            body.extend_from_slice(text.as_bytes());
            body.push(0);
        }
        put_message(&mut greeting, b'S', &body);
    }
    put_message(&mut greeting, b'K', &[0, 0, 0, 1, 0, 0, 0, 1]);
    put_message(&mut greeting, b'Z', b"I");
    client.write_all(&greeting).await?;

    let mut buf = Vec::with_capacity(16 * 1024);
    let mut replies = VecDeque::new();
    let mut out = Vec::new();
    loop {
        if client.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        // Every complete request goes out now, each to the least busy server connection.
        let (mut start, mut scanned) = (0, 0);
        while let Some((tag, len)) = next_message(&buf[scanned..])? {
            scanned += len;
            match tag {
                b'X' => return Ok(()),
                // Clients name their statements alike (pgbench: `P_0`): on a shared server
                // connection the second Parse would fail, or a Bind run another's statement.
                b'P' if buf.get(scanned - len + 5) != Some(&0) => {
                    return Err(protocol_error("named statements are not multiplexed"))
                }
                b'Q' | b'S' => {
                    let Some(server) = servers.iter().min_by_key(|s| s.waiting.borrow().len())
                    else {
                        return Err(protocol_error("no server connection"));
                    };
                    let (tx, rx) = oneshot::channel();
                    server
                        .outgoing
                        .borrow_mut()
                        .extend_from_slice(&buf[start..scanned]);
                    server.waiting.borrow_mut().push_back(tx);
                    server.wake_writer.notify_one();
                    replies.push_back(rx);
                    start = scanned;
                }
                _ => {}
            }
        }
        buf.drain(..start);
        while let Some(reply) = replies.pop_front() {
            let reply = reply
                .await
                .map_err(|_| protocol_error("the server connection failed"))?;
            out.extend_from_slice(&reply);
        }
        if !out.is_empty() {
            client.write_all(&out).await?;
            out.clear();
        }
    }
}
