//! One authenticated client: waits for requests, takes a server connection for each
//! transaction (transaction mode) or for its whole life (session mode), relays both
//! directions through [`Flight`], and gives the server back only when it is clean.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use shardgate_config::PoolMode;
use shardgate_pool::{BackendError, PooledConn};
use shardgate_wire::{backend, peek_header, tag, FrontendRef};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::cancel::Registration;
use super::errors::ClientError;
use super::flight::{Flight, ServerSide};
use super::params::SessionParams;
use super::statements::{ClientStatements, Prepared};
use super::Shared;

/// Read buffers grow in steps of this much, so that reads are large.
const READ_CHUNK: usize = 16 * 1024;

/// How a stretch of relaying ended.
enum RelayEnd {
    /// The server went back to the pool (transaction mode, idle again).
    Released,
    /// The client is done (Terminate or EOF).
    ClientGone,
}

pub(crate) struct Session<S> {
    client: S,
    cbuf: BytesMut,
    out: BytesMut,
    sbuf: BytesMut,
    shared: Arc<Shared>,
    user: String,
    mode: PoolMode,
    max_len: usize,
    flight: Flight,
    statements: ClientStatements,
    params: SessionParams,
    server: Option<PooledConn>,
    registration: Registration,
    cycle_started: Option<Instant>,
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(crate) fn new(
        client: S,
        cbuf: BytesMut,
        shared: Arc<Shared>,
        user: String,
        params: SessionParams,
        registration: Registration,
    ) -> Self {
        let mode = shared.snapshot.load().config.pool.mode;
        Session {
            client,
            cbuf,
            out: BytesMut::with_capacity(READ_CHUNK),
            sbuf: BytesMut::with_capacity(1024),
            shared,
            user,
            mode,
            max_len: shardgate_wire::DEFAULT_MAX_MESSAGE_LEN,
            flight: Flight::default(),
            statements: ClientStatements::default(),
            params,
            server: None,
            registration,
            cycle_started: None,
        }
    }

    /// Runs the session to its end, then leaves no server connection dirty: a clean one
    /// goes back to the pool, anything else is closed. Not cancel safe.
    pub(crate) async fn run(mut self) -> Result<(), ClientError> {
        let result = self.serve().await;
        if let Err(e) = &result {
            if let Some((fields, _)) = e.to_response() {
                let mut out = BytesMut::new();
                backend::error_response(&fields, &mut out);
                let _ = self.client.write_all(&out).await;
            }
        }
        self.registration.slot.clear();
        if let Some(mut server) = self.server.take() {
            let clean = self.flight.idle() && self.flight.tx_status == b'I';
            if clean && self.mode == PoolMode::Session {
                // A session-mode server leaves with the client's state: reset it.
                match server.run_discarding("DISCARD ALL").await {
                    Ok(()) => {
                        server.prepared.clear();
                        server.state_fingerprint = 0;
                        server.release();
                    }
                    Err(_) => server.discard(),
                }
            } else if clean {
                server.release();
            } else {
                server.discard();
            }
        }
        let _ = self.client.shutdown().await;
        result
    }

    async fn serve(&mut self) -> Result<(), ClientError> {
        loop {
            if self.server.is_none() {
                if !self.wait_for_request().await? {
                    return Ok(());
                }
                if self.answer_prepare_locally().await? {
                    continue;
                }
                if !self.acquire().await? {
                    continue;
                }
            }
            match self.relay().await? {
                RelayEnd::Released => continue,
                RelayEnd::ClientGone => return Ok(()),
            }
        }
    }

    /// Waits until a whole client message is buffered. False when the client is done.
    /// Cancel safe.
    async fn wait_for_request(&mut self) -> Result<bool, ClientError> {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            if let Some(h) = peek_header(&self.cbuf, self.max_len)? {
                if self.cbuf.len() >= h.len {
                    return Ok(h.tag != tag::TERMINATE);
                }
            }
            if *shutdown.borrow() {
                return Err(ClientError::Shutdown);
            }
            reserve(&mut self.cbuf);
            tokio::select! {
                n = self.client.read_buf(&mut self.cbuf) => {
                    if n? == 0 {
                        return Ok(false);
                    }
                }
                _ = shutdown.changed() => {}
            }
        }
    }

    /// A request made only of named Parse messages and a Sync needs no server in
    /// transaction mode: the statements are recorded and prepared on a server when a
    /// Bind or Describe first needs them (a parse error surfaces there). Answering
    /// here matters: synchronous clients that prepare while other clients of theirs
    /// hold every server connection would otherwise wait on themselves.
    async fn answer_prepare_locally(&mut self) -> Result<bool, ClientError> {
        if self.mode != PoolMode::Transaction || self.flight.tx_status != b'I' {
            return Ok(false);
        }
        let mut pos = 0;
        let mut parses = 0usize;
        let end = loop {
            let Some(h) = peek_header(&self.cbuf[pos..], self.max_len)? else {
                return Ok(false);
            };
            if self.cbuf.len() - pos < h.len {
                return Ok(false);
            }
            match FrontendRef::decode(h.tag, &self.cbuf[pos + 5..pos + h.len])? {
                FrontendRef::Parse(p) if !p.name.is_empty() => parses += 1,
                FrontendRef::Sync if parses > 0 => break pos + h.len,
                _ => return Ok(false),
            }
            pos += h.len;
        };
        let mut pos = 0;
        while pos < end {
            let Some(h) = peek_header(&self.cbuf[pos..], self.max_len)? else {
                break;
            };
            if let FrontendRef::Parse(p) =
                FrontendRef::decode(h.tag, &self.cbuf[pos + 5..pos + h.len])?
            {
                self.statements.insert(p.name, Prepared::new(&p));
                backend::parse_complete(&mut self.out);
            }
            pos += h.len;
        }
        self.cbuf.advance(end);
        backend::ready_for_query(b'I', &mut self.out);
        self.client.write_all(&self.out).await?;
        self.out.clear();
        Ok(true)
    }

    /// Takes a server connection for the buffered request. False if that failed and
    /// the client was told (its request is answered with the error).
    async fn acquire(&mut self) -> Result<bool, ClientError> {
        let snapshot = self.shared.snapshot.load();
        let Some(pool) = snapshot.primary_pools.get(&self.user).cloned() else {
            return Err(ClientError::AuthFailed {
                user: self.user.clone(),
            });
        };
        match pool.checkout(snapshot.checkout_timeout()).await {
            Ok(conn) => {
                self.registration.slot.set(&conn.addr, conn.key);
                self.server = Some(conn);
                Ok(true)
            }
            Err(e) => {
                self.reject_request(ClientError::Pool(e)).await?;
                Ok(false)
            }
        }
    }

    /// Answers the buffered request with an error, skipping the client's messages up to
    /// the end of that request as PostgreSQL would, then ReadyForQuery.
    async fn reject_request(&mut self, error: ClientError) -> Result<(), ClientError> {
        tracing::warn!(user = %self.user, error = %error, "request failed before reaching a server");
        let Some((fields, survives)) = error.to_response() else {
            return Err(error);
        };
        if !survives {
            return Err(error);
        }
        backend::error_response(&fields, &mut self.out);
        loop {
            // Skip until a Query, FunctionCall or Sync ends the request.
            let mut ended = false;
            while let Some(h) = peek_header(&self.cbuf, self.max_len)? {
                if self.cbuf.len() < h.len {
                    break;
                }
                let ends_request = matches!(
                    FrontendRef::decode(h.tag, &self.cbuf[5..h.len])?,
                    FrontendRef::Query { .. } | FrontendRef::FunctionCall(_) | FrontendRef::Sync
                );
                self.cbuf.advance(h.len);
                if ends_request {
                    ended = true;
                    break;
                }
            }
            if ended {
                break;
            }
            reserve(&mut self.cbuf);
            if self.client.read_buf(&mut self.cbuf).await? == 0 {
                return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
        backend::ready_for_query(self.flight.tx_status, &mut self.out);
        self.client.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Relays between the client and its server connection until the connection can
    /// go back to the pool or the client leaves. Not cancel safe.
    async fn relay(&mut self) -> Result<RelayEnd, ClientError> {
        let Session {
            client,
            cbuf,
            out,
            sbuf,
            server,
            flight,
            statements,
            params,
            mode,
            max_len,
            cycle_started,
            shared,
            registration,
            ..
        } = self;
        let Some(pooled) = server.as_mut() else {
            return Ok(RelayEnd::Released);
        };
        let conn: &mut shardgate_pool::ServerConn = pooled;
        loop {
            if flight.idle() && !cbuf.is_empty() {
                if conn.state_fingerprint != params.fingerprint() {
                    conn.run_discarding(&params.sync_sql())
                        .await
                        .or_else(|e| match e {
                            // The settings themselves failed: the client set them, so it hears
                            // about it on its next statement; the connection is still usable.
                            BackendError::Server { .. } => {
                                tracing::warn!(error = %e, "re-applying client settings failed");
                                Ok(())
                            }
                            other => Err(other),
                        })?;
                    conn.state_fingerprint = params.fingerprint();
                }
                if cycle_started.is_none() {
                    *cycle_started = Some(Instant::now());
                }
            }
            let t = flight.translate(
                cbuf,
                *max_len,
                *mode,
                statements,
                params,
                ServerSide {
                    prepared: &mut conn.prepared,
                },
                sbuf,
                out,
            )?;
            if t.direct {
                if t.consumed > 0 {
                    conn.stream
                        .write_all(&cbuf[..t.consumed])
                        .await
                        .map_err(|source| server_io(conn, source))?;
                }
            } else if !sbuf.is_empty() {
                conn.stream
                    .write_all(sbuf)
                    .await
                    .map_err(|source| server_io(conn, source))?;
                sbuf.clear();
            }
            cbuf.advance(t.consumed);
            if !out.is_empty() {
                client.write_all(out).await?;
                out.clear();
            }
            if t.terminate {
                return Ok(RelayEnd::ClientGone);
            }
            if *mode == PoolMode::Transaction && flight.idle() && flight.tx_status == b'I' {
                release(server, shared, registration);
                return Ok(RelayEnd::Released);
            }
            // Wait for either side.
            reserve(&mut conn.rbuf);
            reserve(cbuf);
            tokio::select! {
                n = conn.stream.read_buf(&mut conn.rbuf) => {
                    let n = n.map_err(|source| server_io(conn, source))?;
                    if n == 0 {
                        return Err(ClientError::Backend(BackendError::Closed { addr: conn.addr.clone() }));
                    }
                    let r = flight.relay(
                        &conn.rbuf,
                        params,
                        statements,
                        ServerSide { prepared: &mut conn.prepared },
                        out,
                    )?;
                    if r.direct {
                        if r.consumed > 0 {
                            client.write_all(&conn.rbuf[..r.consumed]).await?;
                        }
                    } else {
                        client.write_all(out).await?;
                        out.clear();
                    }
                    conn.rbuf.advance(r.consumed);
                    if r.cycles_ended > 0 {
                        conn.state_fingerprint = if r.effects.server_reset { 0 } else { params.fingerprint() };
                        if flight.idle() {
                            if let Some(start) = cycle_started.take() {
                                shared.metrics.observe_query(start.elapsed());
                            }
                        }
                    }
                    if *mode == PoolMode::Transaction && flight.idle() && flight.tx_status == b'I' {
                        release(server, shared, registration);
                        return Ok(RelayEnd::Released);
                    }
                }
                n = client.read_buf(cbuf) => {
                    if n? == 0 {
                        return Ok(RelayEnd::ClientGone);
                    }
                }
            }
        }
    }
}

fn release(server: &mut Option<PooledConn>, shared: &Shared, registration: &Registration) {
    // A later cancel from this client must not reach whoever gets the server next.
    registration.slot.clear();
    if let Some(conn) = server.take() {
        conn.release();
        shared.metrics.transactions.inc();
    }
}

fn server_io(conn: &shardgate_pool::ServerConn, source: std::io::Error) -> ClientError {
    ClientError::Backend(BackendError::Io {
        addr: conn.addr.clone(),
        source,
    })
}
