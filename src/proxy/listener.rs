//! Accepting clients: one task per connection, the client limit, SSL/GSSENC
//! negotiation, cancel requests, and a graceful stop that lets transactions finish.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use shardgate_wire::{backend, StartupRequest, WireError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::errors::ClientError;
use super::params::{expand_options, SessionParams};
use super::session::Session;
use super::startup::{
    authenticate, greeting, read_startup, reported_settings, settings_need_server,
};
use super::workers::Workers;
use super::Shared;

/// How long SIGTERM waits for sessions holding a server connection.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The only protocol version shardgate speaks, as a startup packet codes it.
const PROTOCOL_3_0: i32 = 3 << 16;
/// A client must finish startup and authentication within this.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Accepts clients until shutdown is signalled, then waits (bounded) for the
/// sessions still running. Cancel safe only in the sense that dropping it stops accepting.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, workers: Workers) {
    let mut shutdown = shared.shutdown.clone();
    let tasks = tokio_util_tracker::Tracker::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let shared = shared.clone();
                let guard = tasks.enter();
                workers.run(stream, move |stream| async move {
                    let _guard = guard;
                    handle(stream, shared).await;
                    tracing::trace!(%peer, "client disconnected");
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    tracing::info!(
        sessions = tasks.count(),
        "stopped accepting; waiting for sessions to finish"
    );
    if tokio::time::timeout(DRAIN_TIMEOUT, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            sessions = tasks.count(),
            "drain timeout; closing remaining sessions"
        );
    }
}

async fn handle(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    if let Err(e) = negotiate(stream, &shared).await {
        match &e {
            ClientError::Io(_) => tracing::debug!(error = %e, "client connection ended"),
            _ => tracing::info!(error = %e, "client session ended with an error"),
        }
    }
}

/// SSLRequest / GSSENCRequest / CancelRequest, then the session on the plain or TLS
/// stream. Everything up to the startup packet (TLS handshake included) must arrive within
/// one [`STARTUP_TIMEOUT`]: this phase holds no client slot, so that a cancel is served and
/// a TLS client is told "too many clients" over TLS even when the proxy is full, as
/// PostgreSQL does; the deadline is what bounds a flood of connections that never start.
async fn negotiate(mut stream: TcpStream, shared: &Arc<Shared>) -> Result<(), ClientError> {
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    let mut buf = BytesMut::with_capacity(1024);
    // As PostgreSQL: the same request twice in a row is not a negotiation it knows.
    let mut last_refused = None;
    loop {
        let req = match read_startup_by(deadline, &mut stream, &mut buf).await {
            Ok(req) => req,
            Err(e) => return Err(refuse_startup(&mut stream, e).await),
        };
        match req {
            None => return Ok(()),
            Some(StartupRequest::Cancel { pid, secret }) => {
                shared.cancel.cancel(pid, secret).await;
                return Ok(());
            }
            Some(req @ (StartupRequest::GssEncRequest | StartupRequest::SslRequest))
                if last_refused.as_ref() == Some(&req) =>
            {
                return Err(refuse_startup(&mut stream, repeated(&req)).await);
            }
            Some(StartupRequest::GssEncRequest) => {
                stream.write_all(b"N").await?;
                last_refused = Some(StartupRequest::GssEncRequest);
            }
            Some(StartupRequest::SslRequest) => match &shared.tls {
                Some(acceptor) => {
                    if !buf.is_empty() {
                        // Bytes after SSLRequest would bypass TLS (CVE-2021-23214).
                        let e =
                            ClientError::Protocol("received unencrypted data after SSL request");
                        tell(&mut stream, &e).await;
                        return Err(e);
                    }
                    stream.write_all(b"S").await?;
                    let tls = tokio::time::timeout_at(deadline, acceptor.accept(stream))
                        .await
                        .map_err(|_| ClientError::Protocol("startup timed out"))?
                        .map_err(ClientError::Tls)?;
                    return start(tls, buf, deadline, shared).await;
                }
                None => {
                    stream.write_all(b"N").await?;
                    last_refused = Some(StartupRequest::SslRequest);
                }
            },
            Some(StartupRequest::Startup { minor, params }) => {
                return login_and_run(stream, buf, shared, None, minor, params).await
            }
        }
    }
}

/// [`read_startup`] bounded by the negotiation's deadline. Cancel safe.
async fn read_startup_by<S: AsyncRead + Unpin>(
    deadline: tokio::time::Instant,
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Option<StartupRequest>, ClientError> {
    tokio::time::timeout_at(deadline, read_startup(stream, buf))
        .await
        .map_err(|_| ClientError::Protocol("startup timed out"))?
}

/// Tells a client why its startup packet is refused when PostgreSQL would tell it (a
/// protocol version or a packet layout it cannot read); closes silently otherwise (a bad
/// length, a timeout), as PostgreSQL does. Returns the error.
async fn refuse_startup<S: AsyncWrite + Unpin>(stream: &mut S, e: ClientError) -> ClientError {
    if matches!(
        e,
        ClientError::Wire(WireError::UnsupportedVersion { .. } | WireError::StartupLayout)
    ) {
        tell(stream, &e).await;
    }
    e
}

/// The same request twice in a row: PostgreSQL reads it as a protocol version it does not
/// support (1234.5679 is SSLRequest's code, 1234.5680 GSSENCRequest's).
fn repeated(req: &StartupRequest) -> ClientError {
    let minor = if *req == StartupRequest::SslRequest {
        5679
    } else {
        5680
    };
    ClientError::Wire(WireError::UnsupportedVersion { major: 1234, minor })
}

/// Sends the error's ErrorResponse, best effort.
async fn tell<S: AsyncWrite + Unpin>(stream: &mut S, e: &ClientError) {
    if let Some((fields, _)) = e.to_response() {
        let mut out = BytesMut::new();
        backend::error_response(&fields, &mut out);
        let _ = stream.write_all(&out).await;
    }
}

/// The startup message on an already-encrypted stream.
async fn start<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    mut buf: BytesMut,
    deadline: tokio::time::Instant,
    shared: &Arc<Shared>,
) -> Result<(), ClientError> {
    let req = match read_startup_by(deadline, &mut stream, &mut buf).await {
        Ok(req) => req,
        Err(e) => return Err(refuse_startup(&mut stream, e).await),
    };
    match req {
        None => Ok(()),
        Some(StartupRequest::Startup { minor, params }) => {
            let end_point = shared.tls_end_point.as_deref();
            login_and_run(stream, buf, shared, end_point, minor, params).await
        }
        Some(StartupRequest::Cancel { pid, secret }) => {
            shared.cancel.cancel(pid, secret).await;
            Ok(())
        }
        // Encrypted already: PostgreSQL takes either request as an unknown version now.
        Some(req) => Err(refuse_startup(&mut stream, repeated(&req)).await),
    }
}

/// The client limit is checked here, at the startup packet, as PostgreSQL checks it: a client
/// turned away then reads a plain FATAL 53300 (over TLS if it asked for TLS). `end_point`: the
/// channel-binding data of a TLS connection.
async fn login_and_run<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    buf: BytesMut,
    shared: &Arc<Shared>,
    end_point: Option<&[u8]>,
    minor: u16,
    mut params: Vec<(String, String)>,
) -> Result<(), ClientError> {
    // Protocol 3.0 only: a newer minor version or `_pq_.` options are answered the
    // way PostgreSQL answers them, before authentication.
    let unrecognized: Vec<String> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if minor > 0 || !unrecognized.is_empty() {
        params.retain(|(k, _)| !k.starts_with("_pq_."));
        let mut out = BytesMut::new();
        shardgate_wire::BackendMessage::NegotiateProtocolVersion {
            newest_version: PROTOCOL_3_0,
            unrecognized,
        }
        .encode(&mut out);
        stream.write_all(&out).await?;
    }
    let Ok(_slot) = shared.client_slots.clone().try_acquire_owned() else {
        return Err(refuse_login(&mut stream, ClientError::TooManyClients).await);
    };
    shared.metrics.clients.inc();
    let result = login_and_serve(stream, buf, shared, end_point, params).await;
    shared.metrics.clients.dec();
    result
}

/// Authentication, the greeting, then the session; the client holds a slot.
async fn login_and_serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    mut buf: BytesMut,
    shared: &Arc<Shared>,
    end_point: Option<&[u8]>,
    params: Vec<(String, String)>,
) -> Result<(), ClientError> {
    let snapshot = shared.snapshot.load_full();
    let auth = tokio::time::timeout(
        STARTUP_TIMEOUT,
        authenticate(&mut stream, &mut buf, shared, &snapshot, end_point, params),
    )
    .await
    .map_err(|_| ClientError::Protocol("authentication timed out"));
    // As on the server, `options` is read once the client is authenticated.
    let startup = match auth.and_then(|r| r).and_then(|mut s| {
        s.params = expand_options(s.params).map_err(ClientError::StartupOption)?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            if let Some((fields, _)) = e.to_response() {
                let mut out = BytesMut::new();
                backend::error_response(&fields, &mut out);
                let _ = stream.write_all(&out).await;
            }
            return Err(e);
        }
    };
    let Some(pool) = snapshot.shards[0].primary.pool(&startup.user).cloned() else {
        return Err(ClientError::AuthFailed { user: startup.user });
    };
    let server_params = match pool.server_params(snapshot.checkout_timeout()).await {
        Ok(p) => p,
        Err(e) => return Err(refuse_login(&mut stream, ClientError::Pool(e)).await),
    };
    let params = SessionParams::from_startup(&startup.params).with_server_params(&server_params);
    // The greeting carries what the server would report under the client's settings, which
    // only a server applying them can tell (and it may refuse one, failing the login as a
    // direct one fails).
    let reported = if settings_need_server(&startup.params, &server_params) {
        let timeout = snapshot.checkout_timeout();
        match reported_settings(&pool, timeout, &params, &server_params).await {
            Ok(r) => r,
            Err(e) => return Err(refuse_login(&mut stream, e).await),
        }
    } else {
        startup.params.clone()
    };
    let registration = shared.cancel.register();
    let mut out = BytesMut::with_capacity(512);
    greeting(&server_params, &reported, registration.key, &mut out);
    stream.write_all(&out).await?;
    Session::new(
        stream,
        buf,
        shared.clone(),
        startup.user,
        params,
        registration,
    )
    .run()
    .await
}

/// Tells a client that has authenticated why its connection cannot start (FATAL, whatever
/// the error would be mid-session), best effort; returns the error.
async fn refuse_login<S: AsyncWrite + Unpin>(stream: &mut S, e: ClientError) -> ClientError {
    if let Some((mut fields, _)) = e.to_response() {
        for (code, value) in fields.fields.iter_mut() {
            if *code == b'S' || *code == b'V' {
                "FATAL".clone_into(value);
            }
        }
        let mut out = BytesMut::new();
        backend::error_response(&fields, &mut out);
        let _ = stream.write_all(&out).await;
    }
    e
}

/// A tiny task tracker (count + wait for zero) so shutdown can drain sessions.
mod tokio_util_tracker {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::sync::Notify;

    #[derive(Debug, Default, Clone)]
    pub(crate) struct Tracker(Arc<Inner>);

    #[derive(Debug, Default)]
    pub(crate) struct Inner {
        count: AtomicUsize,
        zero: Notify,
    }

    #[derive(Debug)]
    pub(crate) struct Guard(Arc<Inner>);

    impl Drop for Guard {
        fn drop(&mut self) {
            if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.0.zero.notify_waiters();
            }
        }
    }

    impl Tracker {
        pub(crate) fn enter(&self) -> Guard {
            self.0.count.fetch_add(1, Ordering::AcqRel);
            Guard(self.0.clone())
        }

        pub(crate) fn count(&self) -> usize {
            self.0.count.load(Ordering::Acquire)
        }

        pub(crate) async fn wait(&self) {
            loop {
                let notified = self.0.zero.notified();
                if self.count() == 0 {
                    return;
                }
                notified.await;
            }
        }
    }
}
