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

use super::errors::{server_io, ClientError};
use super::flight::{ClientSide, ServerSide};
use super::params::SessionParams;
use super::routing::kind_of;
use super::session::{reserve, Session, PROBE_SQL};
use super::shard_plan::Need;
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
            let limit = self.translate_limit()?;
            if limit == 0 && self.flight.waits_on_client_sync() && self.request_held_back()? {
                // Held back behind a run only the client's Sync would end: that Sync comes
                // after this request.
                if !self.flight.can_end_run_in_transaction() {
                    self.refuse_behind_unsynced().await?;
                    return Ok(true);
                }
                self.send_hidden_sync().await?;
            }
            let Some(checkout) = self.server.as_mut() else {
                return Ok(true);
            };
            let conn = &mut *checkout.conn;
            let classifier = checkout.snapshot.classifier.clone();
            let t = self.flight.translate(
                &self.cbuf[..limit],
                self.max_len,
                self.mode,
                ClientSide {
                    statements: &mut self.statements,
                    params: &mut self.params,
                    classifier: &classifier,
                    plan_epoch: self.shared.plan_epoch.current(),
                    check_shapes: true,
                },
                ServerSide {
                    prepared: &mut conn.prepared,
                    unnamed_owner: &mut conn.unnamed_owner,
                },
                &mut self.sbuf,
                &mut self.out,
            )?;
            let mut direct = t.direct;
            if t.consumed > 0 {
                // The request acquire() planned is on its way; the next one is planned here.
                self.fresh_checkout = false;
            }
            if self.probe_pending
                && !self.probe_after_idle
                && t.consumed > 0
                && self.flight.at_request_boundary()
            {
                if direct {
                    self.sbuf.extend_from_slice(&self.cbuf[..t.consumed]);
                    direct = false;
                }
                self.flight
                    .send_hidden(PROBE_SQL, true, &mut self.sbuf, &mut conn.unnamed_owner);
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
            if t.consumed > 0 {
                // The query is on the server now: a cancel for it may follow it there.
                self.registration.slot.mark_sent();
            }
            self.sbuf.clear();
            self.cbuf.advance(t.consumed);
            if t.consumed > 0 && std::mem::take(&mut self.may_host) {
                self.open_host();
            }
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
            // Riders' requests that came meanwhile go out before the wait.
            self.send_riders().await?;
            // Wait for either side.
            let Some(checkout) = self.server.as_mut() else {
                return Ok(true);
            };
            let conn = &mut *checkout.conn;
            let host = checkout.host.as_ref().and_then(|g| g.host());
            reserve(&mut conn.rbuf);
            reserve(&mut self.cbuf);
            // While the server owes only replies, read just the server: polling the client
            // as well would cost a failed read per request.
            let read_client = !self.flight.awaiting_replies_only();
            // A session that keeps its server connection between transactions (session mode,
            // or pinned) ends when shutdown starts while it has no transaction open, as an
            // idle transaction-pooled one does in `wait_for_request`.
            let keeps = self.mode == PoolMode::Session || self.pinned.is_some();
            let watch_shutdown = keeps && self.flight.idle() && self.flight.tx_status == b'I';
            if watch_shutdown && *self.shared.shutdown.borrow() {
                return Err(ClientError::Shutdown);
            }
            let signal = self
                .shutdown
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            tokio::select! {
                n = conn.stream.read_buf(&mut conn.rbuf) => {
                    let n = n.map_err(|source| server_io(conn, source))?;
                    if n == 0 {
                        return Err(ClientError::Backend(BackendError::Closed { addr: conn.addr.clone() }));
                    }
                    self.forward_server_data().await?;
                    self.send_probe_if_idle().await?;
                    self.end_prepares_if_answered().await?;
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
                () = super::multiplex::riders_arrived(host), if host.is_some() => {}
                () = signal.as_mut(), if watch_shutdown => return Err(ClientError::Shutdown),
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
        // A hosted connection's next replies (riders') may already be on their way.
        if self.flight.idle() && checkout.conn.rbuf.is_empty() && checkout.host.is_none() {
            let _ = checkout
                .conn
                .stream
                .try_io(tokio::io::Interest::READABLE, || {
                    Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                });
        }
    }

    /// Ends, with a Sync of its own, a run that only prepared and described named statements
    /// once the server has answered it (see `Flight::can_end_prepares`), so that a client
    /// waiting after a Flush does not hold its server connection (transaction mode, when
    /// nothing more from the client is waiting; with sharding, whatever it sent meanwhile: a
    /// request for another shard is held back until the flight is idle). Not cancel safe.
    async fn end_prepares_if_answered(&mut self) -> Result<(), ClientError> {
        let sharded = self
            .server
            .as_ref()
            .is_some_and(|c| c.snapshot.sharding.is_some());
        if self.mode != PoolMode::Transaction
            || self.pinned.is_some()
            || (!self.cbuf.is_empty() && !sharded)
            || !self.flight.can_end_prepares()
        {
            return Ok(());
        }
        self.send_hidden_sync().await
    }

    /// Ends the unsynced run with a Sync of shardgate's own, whose ReadyForQuery the client never
    /// sees. Not cancel safe.
    async fn send_hidden_sync(&mut self) -> Result<(), ClientError> {
        let Some(checkout) = self.server.as_mut() else {
            return Ok(());
        };
        let conn = &mut *checkout.conn;
        self.flight.end_prepares(&mut self.sbuf);
        self.params.observe_sync();
        let sent = conn.stream.write_all(&self.sbuf).await;
        self.sbuf.clear();
        sent.map_err(|source| server_io(conn, source))
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
        self.flight
            .send_hidden(PROBE_SQL, true, &mut self.sbuf, &mut conn.unnamed_owner);
        self.probe_pending = false;
        self.probe_after_idle = false;
        let sent = conn.stream.write_all(&self.sbuf).await;
        self.sbuf.clear();
        sent.map_err(|source| server_io(conn, source))
    }

    /// How much of the client buffer may be translated now. Without sharding: all of it
    /// (pipelined requests follow the first on its server). With sharding every request needs
    /// its own plan: the planned one goes; a pipelined one behind it goes now only if it needs
    /// this same shard, else it waits until the server is idle and is planned then.
    fn translate_limit(&mut self) -> Result<usize, ClientError> {
        if self.server.as_ref().is_some_and(|c| c.host.is_some()) {
            // Riders' requests follow this one on the connection: nothing more of this
            // client's may, until the connection is taken anew.
            return Ok(0);
        }
        let sharded = self
            .server
            .as_ref()
            .is_some_and(|c| c.snapshot.sharding.is_some());
        let unpinned = match self.mode {
            PoolMode::Transaction => self.pinned.is_none(),
            // Session mode keeps its connection anyway, but closes it at the end after a
            // LOAD or dblink_connect, pipelined or not (DISCARD ALL leaves them behind).
            PoolMode::Session => !self.close_at_end,
        };
        if unpinned && (!sharded || self.mode == PoolMode::Session) {
            return self.unplanned_pins();
        }
        if !sharded || self.mode != PoolMode::Transaction || self.flight.in_copy() {
            return Ok(self.cbuf.len());
        }
        let Some((len, _)) = super::fanout::request_len(&self.cbuf, self.max_len)? else {
            // A request still arriving: only the one already planned may be streamed.
            return Ok(if self.flight.idle() {
                self.cbuf.len()
            } else {
                0
            });
        };
        if self.flight.idle() {
            return Ok(len);
        }
        Ok(if self.plan_pipelined()? { len } else { 0 })
    }

    /// A whole request is buffered but held back (see `translate_limit`).
    fn request_held_back(&self) -> Result<bool, ClientError> {
        Ok(
            self.server.is_some()
                && super::fanout::request_len(&self.cbuf, self.max_len)?.is_some(),
        )
    }

    /// Refuses a request that cannot follow the unsynced run before it (it needs another shard,
    /// or its own planning) while that run holds its connection, outside a transaction block or
    /// after an error: the server owes nothing, and the flight goes idle only with the client's
    /// Sync, which comes after this request. A Sync of shardgate's own would commit the
    /// implicit transaction the run is in, which the client's request may still fail. The
    /// run's connection is closed, which ends it as the error would on one server: an open
    /// transaction is rolled back everywhere (the client ends it with ROLLBACK), an implicit
    /// one with it.
    async fn refuse_behind_unsynced(&mut self) -> Result<(), ClientError> {
        self.shared.metrics.refused("behind_unsynced");
        if self.flight.tx_status == b'I' && self.parked.is_empty() {
            if let Some(co) = self.server.take() {
                // Whatever it left unsynced (portals, an implicit transaction) dies with it.
                self.registration.slot.clear();
                co.conn.discard();
            }
            self.flight = super::flight::Flight::default();
        } else {
            self.abort_locally().await;
        }
        let fields = ErrorFields::new(
            "ERROR",
            super::sqlstate::FEATURE_NOT_SUPPORTED,
            "shardgate: this request needs another shard than the unfinished one before it",
        )
        .with(
            b'D',
            "The messages before it were ended with Flush, not Sync, outside a transaction \
             block (or after an error), and left something open on their shard: the request \
             cannot run elsewhere until a Sync ends that.",
        )
        .with(
            b'H',
            "End each request with Sync before one that needs another shard, or run them in a \
             transaction block.",
        );
        self.reject_request(fields).await
    }

    /// Plans a complete request pipelined behind one in flight: true if it can follow on the
    /// current server (and it is recorded as routed), false to wait until the server is idle.
    fn plan_pipelined(&mut self) -> Result<bool, ClientError> {
        let Some(checkout) = self.server.as_ref() else {
            return Ok(false);
        };
        let snapshot = checkout.snapshot.clone();
        let Some(rt) = snapshot.sharding.clone() else {
            return Ok(true);
        };
        let (shard, node, role) = (checkout.shard, checkout.node.clone(), checkout.role);
        let scanned = self.scan_request(&snapshot.classifier)?;
        if scanned.shardgate.is_some()
            || scanned.shardgate_extended.is_some()
            || (scanned.ends_transaction && !self.parked.is_empty())
            || scanned.first_txn.is_some()
        {
            return Ok(false);
        }
        if let Some(r) = scanned.unnamed_parse.clone() {
            self.unnamed_parse = Some(bytes::Bytes::copy_from_slice(&self.cbuf[r]));
        }
        let plan = self.plan_once(&rt, &scanned);
        if self.pin_problem(&scanned, Some(&plan.need), role).is_some() {
            // Refused once the server is idle.
            return Ok(false);
        }
        let here = match plan.need {
            Need::One(i) => i == shard,
            Need::Any | Need::AnyReference => true,
            _ => false,
        };
        let conflict = plan.write
            && self.txn_write_shard.is_some_and(|w| w != shard)
            && snapshot.two_phase.is_none();
        if !here || conflict || !plan.missing_types.is_empty() {
            return Ok(false);
        }
        let in_transaction = self.flight.tx_status != b'I';
        let reason = match role {
            Role::Replica if in_transaction => Reason::ReadOnlyTransaction,
            _ if in_transaction => Reason::Transaction,
            _ => Reason::Pipelined,
        };
        if role == Role::Replica && scanned.view.write {
            // A write must not follow a read onto a replica.
            return Ok(false);
        }
        if in_transaction || self.txn.active() || scanned.view.begins.is_some() {
            self.note_txn_state(&snapshot.classifier)?;
        }
        let kind = kind_of(&scanned, in_transaction);
        snapshot.routed[shard].inc(role, kind);
        self.record_sharded(
            &snapshot, shard, &node, role, reason, kind, &scanned, None, &plan.why,
        );
        self.note_routed(&snapshot, &scanned, shard, role, in_transaction);
        self.unnamed = scanned.unnamed;
        Ok(true)
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
        let mut scanned = self.scan_request(&snapshot.classifier)?;
        if self
            .answer_own_command(&scanned, self.flight.tx_status)
            .await?
        {
            return Ok(true);
        }
        let in_transaction = self.flight.tx_status != b'I';
        let sharded = snapshot.sharding.is_some() && self.mode == PoolMode::Transaction;
        // Whether the transaction's state is recorded for the shards it may join.
        let records =
            sharded && (in_transaction || self.txn.active() || scanned.view.begins.is_some());
        if records {
            // The request before this one was sent: the catch-up below must include it.
            self.txn.settle();
        }
        let mut shard_why = String::new();
        if in_transaction && scanned.ends_transaction {
            if self
                .refuse_end_beside_statements(&snapshot, &mut scanned)
                .await?
            {
                return Ok(true);
            }
            if snapshot.two_phase.is_some() && self.distributed() {
                self.end_distributed(&snapshot, &scanned).await?;
                return Ok(true);
            }
            self.settle_parked().await;
            if records {
                // After the catch-up above: the end clears what it replayed.
                self.note_txn_state(&snapshot.classifier)?;
            }
        } else if let Some(plan) = self.plan_shards(&snapshot, &mut scanned).await? {
            if records {
                self.note_txn_state(&snapshot.classifier)?;
            }
            let role = self.server.as_ref().map_or(Role::Primary, |c| c.role);
            if let Some(fields) = self.pin_problem(&scanned, Some(&plan.need), role) {
                self.refuse_pin(fields, in_transaction).await?;
                return Ok(true);
            }
            match plan.need {
                Need::Refuse(fields) if in_transaction => {
                    self.shared.metrics.refused("unroutable");
                    // As a server error would, the refusal fails the whole transaction.
                    self.abort_locally().await;
                    self.reject_request(fields).await?;
                    return Ok(true);
                }
                Need::Refuse(fields) => {
                    self.shared.metrics.refused("unroutable");
                    self.reject_request(fields).await?;
                    return Ok(true);
                }
                Need::Any | Need::AnyReference => {
                    let current = self.server.as_ref().map_or(0, |c| c.shard);
                    if !self
                        .switch_shard(&snapshot, &scanned, current, plan.write)
                        .await?
                    {
                        return Ok(true);
                    }
                }
                Need::One(i) => {
                    if !self
                        .switch_shard(&snapshot, &scanned, i, plan.write)
                        .await?
                    {
                        return Ok(true);
                    }
                }
                Need::Scatter { .. } => {
                    self.scatter(snapshot, scanned, plan).await?;
                    return Ok(true);
                }
                Need::Many { .. } | Need::Split { .. } => {
                    self.fan_out(snapshot, scanned, plan).await?;
                    return Ok(true);
                }
            }
            shard_why = plan.why;
        }
        let Some(checkout) = self.server.as_ref() else {
            return Ok(true);
        };
        let (shard, node, role) = (checkout.shard, checkout.node.clone(), checkout.role);
        if let Some(fields) = self.pin_problem(&scanned, None, role) {
            self.refuse_pin(fields, in_transaction).await?;
            return Ok(true);
        }
        let reason = match (self.mode, role) {
            (PoolMode::Session, _) => Reason::SessionPooling,
            (_, Role::Replica) => Reason::ReadOnlyTransaction,
            (_, Role::Primary) => Reason::Transaction,
        };
        let kind = kind_of(&scanned, in_transaction);
        snapshot.routed[shard].inc(role, kind);
        self.record_sharded(
            &snapshot, shard, &node, role, reason, kind, &scanned, None, &shard_why,
        );
        self.note_routed(&snapshot, &scanned, shard, role, in_transaction);
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
    pub(super) async fn forward_server_data(&mut self) -> Result<(), ClientError> {
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
                unnamed_owner: &mut conn.unnamed_owner,
            },
            &mut self.out,
        )?;
        let written = if r.direct {
            if r.consumed > 0 {
                self.client.write_all(&conn.rbuf[..r.consumed]).await
            } else {
                Ok(())
            }
        } else {
            let written = self.client.write_all(&self.out).await;
            self.out.clear();
            written
        };
        // Consumed even when the client is gone: the flight has moved past these frames, and
        // on a multiplexed connection what follows them is others' (see `multiplex`).
        conn.rbuf.advance(r.consumed);
        written?;
        if r.stale_statement && self.mode == PoolMode::Transaction {
            // In session mode the client's own statement failed, as on a direct connection.
            self.shared.plan_epoch.advance();
        }
        if let Some((Some(lsn), b'I')) = r.probe {
            self.routing
                .note_lsn(&checkout.snapshot, checkout.shard, lsn);
        }
        if r.cycles_ended > 0 {
            conn.state_fingerprint = if r.effects.server_reset {
                0
            } else {
                self.params.fingerprint()
            };
            if self.flight.tx_status == b'I' {
                self.routing.txn_wrote = false;
                self.txn_write_shard = None;
                self.txn_written = 0;
                if self.txn.active() {
                    self.txn.clear();
                }
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
    pub(super) fn release_if_done(&mut self) -> bool {
        if self.mode != PoolMode::Transaction
            || self.pinned.is_some()
            || !self.flight.idle()
            || self.flight.tx_status != b'I'
        {
            return false;
        }
        if let Some(checkout) = self.server.take() {
            let cancelling = self.registration.slot.clear();
            match checkout.host {
                Some(guard) => {
                    // The next rider's reply follows; a cancel of this client's query still
                    // on its way may stop that request (see docs/design/multiplexing.md).
                    self.flight.stop_at_idle = false;
                    guard.finish(checkout.conn, 0, cancelling);
                }
                // A cancel of this client's query may still arrive: nobody else may get it.
                None if cancelling => checkout.conn.discard(),
                None => checkout.conn.release(),
            }
            self.shared.metrics.transactions.inc();
        }
        true
    }

    /// Opens the connection to riders once this session's request is on it, if that request
    /// may host them (see `Session::may_ride`) and nothing else is in flight or buffered.
    fn open_host(&mut self) {
        let Some(checkout) = self.server.as_mut() else {
            return;
        };
        if checkout.host.is_some()
            || !self.cbuf.is_empty()
            || !self.flight.awaiting_replies_only()
            || self.flight.tx_status != b'I'
            || self.probe_pending
            || checkout.conn.state_fingerprint != self.params.fingerprint()
        {
            return;
        }
        let pool = checkout.conn.pool().clone();
        checkout.host = Some(super::multiplex::HostGuard::open(
            &pool,
            self.params.fingerprint(),
        ));
        // A cancel for this request must not stop the riders queued behind it.
        self.registration.slot.set_hosted(pool.credentials());
        self.flight.stop_at_idle = true;
    }

    /// Writes the requests riders queued on this session's connection since it last looked.
    /// Not cancel safe.
    pub(super) async fn send_riders(&mut self) -> Result<(), ClientError> {
        let Some(checkout) = self.server.as_mut() else {
            return Ok(());
        };
        let Some(host) = checkout.host.as_ref().and_then(|g| g.host()) else {
            return Ok(());
        };
        if !host.take_outgoing(&mut self.sbuf) {
            return Ok(());
        }
        let conn = &mut *checkout.conn;
        let sent = conn.stream.write_all(&self.sbuf).await;
        self.sbuf.clear();
        sent.map_err(|source| server_io(conn, source))
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
                "A setting this session asked for (with SET, as a startup parameter, or in \
                 options) cannot be applied on a pooled server connection: a role it SET was \
                 revoked since, say, or a setting only a new backend takes \
                 (ignore_system_indexes). Running without it would be silently wrong, so this \
                 session's requests fail until you reconnect: without that setting, or, for \
                 one only a new backend takes, through pool.mode session."
                    .to_owned(),
            ));
            Ok(Some(fields))
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens the held-back transaction on `conn` and waits for the server's answer, for a BEGIN
/// that names modes: one a node may refuse (a hot standby refuses `READ WRITE` and
/// `SERIALIZABLE`). Pipelined in front of the client's request, a refused BEGIN would leave
/// that request to run, and commit, on its own. A plain `BEGIN` cannot fail so and is
/// pipelined. `Some(error)`: the server refused it; the connection is idle.
pub(super) async fn open_held_back_begin(
    conn: &mut shardgate_pool::ServerConn,
    begin: &[u8],
) -> Result<Option<ErrorFields>, ClientError> {
    match conn.run_discarding(&String::from_utf8_lossy(begin)).await {
        Ok(()) => Ok(None),
        Err(BackendError::Server { mut fields, .. }) => {
            if !fields.fields.iter().any(|(c, _)| *c == b'D') {
                fields.fields.push((
                    b'D',
                    "shardgate answered this transaction's BEGIN itself and sent it with the \
                     transaction's first statement; the server refused it then, so the \
                     transaction is aborted and that statement did not run."
                        .to_owned(),
                ));
            }
            Ok(Some(fields))
        }
        Err(e) => Err(e.into()),
    }
}

/// A fingerprint no client has (theirs always have the low bit set): forces the next
/// checkout to re-apply from scratch.
const UNKNOWN_STATE: u64 = 2;
