//! Relaying between a client and the server connection it holds: requests inside a
//! transaction are scanned and recorded too, client frames are translated through the
//! flight, server replies forwarded (straight from the read buffer when untouched),
//! and the connection goes back to the pool the moment it is idle and clean.

use bytes::Buf;
use shardgate_config::PoolMode;
use shardgate_pool::BackendError;
use shardgate_router::{Reason, Role};
use shardgate_wire::peek_header;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::errors::ClientError;
use super::flight::{ClientSide, ServerSide};
use super::params::SessionParams;
use super::routing::kind_of;
use super::session::{reserve, Session, PROBE_SQL};
use shardgate_wire::ErrorFields;
use std::time::Instant;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Relays until the server connection goes back to the pool (true) or the client
    /// leaves (false). Not cancel safe.
    pub(super) async fn relay(&mut self) -> Result<bool, ClientError> {
        let result = self.relay_inner().await;
        if let Err(ClientError::Backend(e)) = &result {
            if let Some(h) = self.server.as_ref().and_then(|c| c.node.health.clone()) {
                h.mark_failed(&e.to_string());
            }
        }
        result
    }

    async fn relay_inner(&mut self) -> Result<bool, ClientError> {
        loop {
            if self.flight.idle() && self.whole_message_buffered()? {
                if !std::mem::take(&mut self.fresh_checkout) && self.plan_in_transaction().await? {
                    continue;
                }
                if !self.sync_session_state().await? {
                    continue;
                }
                if self.cycle_started.is_none() {
                    self.cycle_started = Some(Instant::now());
                }
            }
            let Some(checkout) = self.server.as_mut() else {
                return Ok(true);
            };
            let conn = &mut *checkout.conn;
            let classifier = checkout.snapshot.classifier.clone();
            let t = self.flight.translate(
                &self.cbuf,
                self.max_len,
                self.mode,
                ClientSide {
                    statements: &mut self.statements,
                    params: &mut self.params,
                    classifier: &classifier,
                },
                ServerSide {
                    prepared: &mut conn.prepared,
                },
                &mut self.sbuf,
                &mut self.out,
            )?;
            let mut direct = t.direct;
            if self.probe_pending
                && !self.probe_after_idle
                && t.consumed > 0
                && self.flight.at_request_boundary()
            {
                if direct {
                    self.sbuf.extend_from_slice(&self.cbuf[..t.consumed]);
                    direct = false;
                }
                self.flight.send_hidden(PROBE_SQL, true, &mut self.sbuf);
                self.probe_pending = false;
            }
            let sent = if direct {
                conn.stream.write_all(&self.cbuf[..t.consumed]).await
            } else if !self.sbuf.is_empty() {
                conn.stream.write_all(&self.sbuf).await
            } else {
                Ok(())
            };
            sent.map_err(|source| server_io(conn, source))?;
            self.sbuf.clear();
            self.cbuf.advance(t.consumed);
            if !self.out.is_empty() {
                self.client.write_all(&self.out).await?;
                self.out.clear();
            }
            if t.terminate {
                return Ok(false);
            }
            if self.release_if_done() {
                return Ok(true);
            }
            // Wait for either side.
            let Some(checkout) = self.server.as_mut() else {
                return Ok(true);
            };
            let conn = &mut *checkout.conn;
            reserve(&mut conn.rbuf);
            reserve(&mut self.cbuf);
            // While the server owes only replies, read just the server: polling the client
            // as well would cost a failed read per request.
            let read_client = !self.flight.awaiting_replies_only();
            tokio::select! {
                n = conn.stream.read_buf(&mut conn.rbuf) => {
                    let n = n.map_err(|source| server_io(conn, source))?;
                    if n == 0 {
                        return Err(ClientError::Backend(BackendError::Closed { addr: conn.addr.clone() }));
                    }
                    self.forward_server_data().await?;
                    self.send_probe_if_idle().await?;
                    self.forget_server_readiness();
                    if self.release_if_done() {
                        return Ok(true);
                    }
                }
                n = self.client.read_buf(&mut self.cbuf), if read_client => {
                    if n? == 0 {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Once every reply has arrived the server sends nothing until asked (a late
    /// notice or FATAL raises a new readiness event). Clearing readiness now saves the
    /// failed read the next request would otherwise start with.
    fn forget_server_readiness(&mut self) {
        let Some(checkout) = self.server.as_mut() else {
            return;
        };
        if self.flight.idle() && checkout.conn.rbuf.is_empty() {
            let _ = checkout
                .conn
                .stream
                .try_io(tokio::io::Interest::READABLE, || {
                    Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                });
        }
    }

    /// Sends a held-back read-your-writes probe (see `probe_after_idle`) once the
    /// server has answered everything, before the connection can be released. Not
    /// cancel safe.
    async fn send_probe_if_idle(&mut self) -> Result<(), ClientError> {
        if !(self.probe_pending && self.probe_after_idle && self.flight.idle()) {
            return Ok(());
        }
        let Some(checkout) = self.server.as_mut() else {
            return Ok(());
        };
        let conn = &mut *checkout.conn;
        self.flight.send_hidden(PROBE_SQL, true, &mut self.sbuf);
        self.probe_pending = false;
        self.probe_after_idle = false;
        let sent = conn.stream.write_all(&self.sbuf).await;
        self.sbuf.clear();
        sent.map_err(|source| server_io(conn, source))
    }

    fn whole_message_buffered(&self) -> Result<bool, ClientError> {
        Ok(matches!(peek_header(&self.cbuf, self.max_len)?, Some(h) if self.cbuf.len() >= h.len))
    }

    /// A request on a held connection (inside a transaction, or session pooling): it
    /// stays on this node, but is answered locally when it is shardgate's own, and is
    /// recorded like any other. True if it was answered locally.
    async fn plan_in_transaction(&mut self) -> Result<bool, ClientError> {
        let Some(checkout) = self.server.as_ref() else {
            return Ok(false);
        };
        let snapshot = checkout.snapshot.clone();
        let (shard, node, role) = (checkout.shard, checkout.node.clone(), checkout.role);
        let scanned = self.scan_request(&snapshot.classifier)?;
        if self
            .answer_own_command(&scanned, self.flight.tx_status)
            .await?
        {
            return Ok(true);
        }
        let in_transaction = self.flight.tx_status != b'I';
        let reason = match (self.mode, role) {
            (PoolMode::Session, _) => Reason::SessionPooling,
            (_, Role::Replica) => Reason::ReadOnlyTransaction,
            (_, Role::Primary) => Reason::Transaction,
        };
        let kind = kind_of(&scanned, in_transaction);
        self.record(&snapshot, shard, &node, role, reason, kind, &scanned);
        self.note_routed(&snapshot, &scanned, role, in_transaction);
        self.unnamed = scanned.unnamed;
        Ok(false)
    }

    /// Re-applies the client's settings inside a held connection (after a DISCARD ALL
    /// reset it). False if that failed: the request was answered with the error and the
    /// connection's state is marked unknown, so the next request tries again.
    async fn sync_session_state(&mut self) -> Result<bool, ClientError> {
        let Some(checkout) = self.server.as_mut() else {
            return Ok(true);
        };
        match apply_session_state(&mut checkout.conn, &self.params).await? {
            None => Ok(true),
            Some(fields) => {
                self.reject_request(fields).await?;
                Ok(false)
            }
        }
    }

    /// Handles what the server sent and forwards it to the client.
    async fn forward_server_data(&mut self) -> Result<(), ClientError> {
        let Some(checkout) = self.server.as_mut() else {
            return Ok(());
        };
        let conn = &mut *checkout.conn;
        let r = self.flight.relay(
            &conn.rbuf,
            &mut self.params,
            &mut self.statements,
            ServerSide {
                prepared: &mut conn.prepared,
            },
            &mut self.out,
        )?;
        if r.direct {
            if r.consumed > 0 {
                self.client.write_all(&conn.rbuf[..r.consumed]).await?;
            }
        } else {
            self.client.write_all(&self.out).await?;
            self.out.clear();
        }
        conn.rbuf.advance(r.consumed);
        if let Some((Some(lsn), b'I')) = r.probe {
            self.routing.ryw_lsn = self.routing.ryw_lsn.max(lsn);
        }
        if r.cycles_ended > 0 {
            conn.state_fingerprint = if r.effects.server_reset {
                0
            } else {
                self.params.fingerprint()
            };
            if self.flight.tx_status == b'I' {
                self.routing.txn_wrote = false;
            }
            if self.flight.idle() {
                if let Some(start) = self.cycle_started.take() {
                    self.shared.metrics.observe_query(start.elapsed());
                }
            }
        }
        Ok(())
    }

    /// Gives the connection back when nothing is in flight and no transaction is open
    /// (transaction mode). True if it was released.
    fn release_if_done(&mut self) -> bool {
        if self.mode != PoolMode::Transaction
            || !self.flight.idle()
            || self.flight.tx_status != b'I'
        {
            return false;
        }
        if let Some(checkout) = self.server.take() {
            self.registration.slot.clear();
            checkout.conn.release();
            self.shared.metrics.transactions.inc();
        }
        true
    }
}

/// Makes a server connection carry the client's settings (`RESET ALL` and the client's
/// SETs, in one round trip) unless it already does. `Some(error)` when the server refused
/// them: it runs that string as one implicit transaction, so a failure undoes the RESET
/// too and the connection keeps whatever settings it had. It is then marked as carrying
/// nobody's settings, and the caller must not run the client's request on it.
pub(super) async fn apply_session_state(
    conn: &mut shardgate_pool::ServerConn,
    params: &SessionParams,
) -> Result<Option<ErrorFields>, ClientError> {
    if conn.state_fingerprint == params.fingerprint() {
        return Ok(None);
    }
    match conn.run_discarding(&params.sync_sql()).await {
        Ok(()) => {
            conn.state_fingerprint = params.fingerprint();
            Ok(None)
        }
        Err(BackendError::Server { mut fields, .. }) => {
            conn.state_fingerprint = UNKNOWN_STATE;
            tracing::warn!(
                error = fields.message().unwrap_or_default(),
                "re-applying a client's settings failed"
            );
            if let Some(m) = fields.fields.iter_mut().find(|(c, _)| *c == b'M') {
                m.1 = format!(
                    "shardgate could not re-apply this session's settings: {}",
                    m.1
                );
            }
            fields.fields.retain(|(c, _)| *c != b'H');
            fields.fields.push((
                b'H',
                "A setting this session made no longer applies (for example a role it SET was \
                 revoked). Running without it would be silently wrong, so this session's \
                 requests fail until you reconnect."
                    .to_owned(),
            ));
            Ok(Some(fields))
        }
        Err(e) => Err(e.into()),
    }
}

/// A fingerprint no client has (theirs always have the low bit set): forces the next
/// checkout to re-apply from scratch.
const UNKNOWN_STATE: u64 = 2;

fn server_io(conn: &shardgate_pool::ServerConn, source: std::io::Error) -> ClientError {
    ClientError::Backend(BackendError::Io {
        addr: conn.addr.clone(),
        source,
    })
}
