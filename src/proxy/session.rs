//! One authenticated client: waits for requests, answers what it can itself, routes
//! each request outside a transaction to a node, takes a server connection there for
//! the transaction (transaction mode) or for its whole life (session mode), and gives
//! the server back only when it is clean. The relaying itself is in `relay.rs`.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use shardgate_config::PoolMode;
use shardgate_pool::PooledConn;
use shardgate_router::{HintTarget, Reason, Role};
use shardgate_sql::{Classification, Classifier, TxnControl};
use shardgate_wire::{backend, peek_header, tag, ErrorFields, FrontendRef};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::cancel::Registration;
use super::errors::ClientError;
use super::flight::{ClientSide, Flight, ServerSide};
use super::multiplex::{Host, HostGuard, Pick};
use super::params::SessionParams;
use super::request::{scan, Scanned};
use super::routing::{choose, kind_of, Chosen, SessionRouting};
use super::shard_plan::Need;
use super::statements::ClientStatements;
use super::topology::{NodeRuntime, Snapshot};
use super::Shared;
use crate::decisions::{Draft, Kind};

/// The answer to a request cancelled before it reached a server: it never ran.
pub(super) fn cancelled_before_start() -> ErrorFields {
    ErrorFields::new(
        "ERROR",
        super::sqlstate::QUERY_CANCELED,
        "canceling statement due to user request",
    )
    .with(
        b'D',
        "The request was cancelled before it reached a server (while it waited for a server \
         connection); it did not run.",
    )
}

/// Read buffers grow in steps of this much, so that reads are large.
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// The read-your-writes probe, sent right behind a write in the same round trip.
pub(super) const PROBE_SQL: &[u8] = b"SELECT pg_current_wal_insert_lsn()";

/// A server connection held by the session, with what it was taken under.
pub(super) struct Checkout {
    pub(super) conn: PooledConn,
    pub(super) node: Arc<NodeRuntime>,
    pub(super) role: Role,
    pub(super) shard: usize,
    /// The config version the transaction started with; it finishes on it.
    pub(super) snapshot: Arc<Snapshot>,
    /// Other sessions' requests ride on the connection behind this one's (multiplexing).
    pub(super) host: Option<HostGuard>,
}

impl Checkout {
    /// Rolls back whatever transaction the connection has open and gives it back to its pool;
    /// one whose ROLLBACK failed is in an unknown state, so it is closed instead, and so is one
    /// a cancel may still be on its way to (`cancelling`: see `CancelSlot::clear`). Not cancel
    /// safe: dropped halfway, the connection is closed (never pooled mid-ROLLBACK).
    pub(super) async fn roll_back_and_release(self, cancelling: bool) {
        let mut conn = self.conn;
        if cancelling {
            // Closing is the rollback.
            conn.discard();
            return;
        }
        match conn.run_discarding("ROLLBACK").await {
            Ok(()) => conn.release(),
            Err(_) => conn.discard(),
        }
    }
}

pub(crate) struct Session<S> {
    pub(super) client: S,
    pub(super) cbuf: BytesMut,
    pub(super) out: BytesMut,
    pub(super) sbuf: BytesMut,
    pub(super) shared: Arc<Shared>,
    pub(super) user: String,
    pub(super) mode: PoolMode,
    pub(super) max_len: usize,
    pub(super) flight: Flight,
    pub(super) statements: ClientStatements,
    pub(super) params: SessionParams,
    pub(super) server: Option<Checkout>,
    pub(super) registration: Registration,
    pub(super) cycle_started: Option<Instant>,
    pub(super) routing: SessionRouting,
    /// A lone BEGIN answered locally; sent ahead of the transaction's first request.
    pub(super) deferred_begin: Option<Bytes>,
    /// The unnamed statement's classification (Bind of "" routes by it).
    pub(super) unnamed: Option<Arc<Classification>>,
    /// The request being relayed still needs its read-your-writes probe.
    pub(super) probe_pending: bool,
    /// The probe waits until the server is idle again: the request holds a COPY FROM,
    /// and a probe pipelined behind it would land inside copy-in mode.
    pub(super) probe_after_idle: bool,
    /// The buffered request was already planned when its server was taken.
    pub(super) fresh_checkout: bool,
    /// The request just checked out for may host riders once it is sent (multiplexing).
    pub(super) may_host: bool,
    /// Transaction mode: the session left state on its server connection (why) and keeps
    /// that connection until it ends (see `pinning`).
    pub(super) pinned: Option<&'static str>,
    /// Session mode: the client ran `LOAD` or `dblink_connect`, which `DISCARD ALL` does not
    /// undo: its server connection is closed when it leaves, not reset and reused.
    pub(super) close_at_end: bool,
    /// A request failed inside the held-back transaction: it is aborted.
    pub(super) deferred_failed: bool,
    /// Connections the open transaction holds on shards other than the current one.
    pub(super) parked: Vec<super::txn_shards::Parked>,
    /// The open transaction's BEGIN and state changes, to open it on more shards in the same
    /// state (sharding only).
    pub(super) txn: super::txn_replay::TxnReplay,
    /// The shard the open transaction has written on.
    pub(super) txn_write_shard: Option<usize>,
    /// Every shard the open transaction has written on (more than one only with two-phase
    /// commit).
    pub(super) txn_written: shardgate_router::ShardSet,
    /// The last unnamed Parse frame (sharding reads a later Bind's parameter types from it).
    pub(super) unnamed_parse: Option<Bytes>,
    /// Resolves once shutdown starts. Made once and polled across waits: a fresh
    /// `changed()` per request registered with the channel every client shares, and left it.
    /// In a Mutex only so the session stays Sync; `get_mut` never locks.
    pub(super) shutdown: std::sync::Mutex<ShutdownSignal>,
}

/// Fails the transaction on the server (shardgate's own statement; its error is dropped).
const ABORT_ON_SERVER: &[u8] = b"DO $$BEGIN RAISE EXCEPTION 'shardgate: this transaction was \
    aborted before it reached the server'; END$$";

pub(super) type ShutdownSignal = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn shutdown_signal(mut rx: tokio::sync::watch::Receiver<bool>) -> ShutdownSignal {
    Box::pin(async move {
        if rx.wait_for(|stop| *stop).await.is_err() {
            // The sender is gone: no shutdown can be signalled any more.
            std::future::pending::<()>().await;
        }
    })
}

pub(super) fn reserve(buf: &mut BytesMut) {
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
        let shutdown = std::sync::Mutex::new(shutdown_signal(shared.shutdown.clone()));
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
            routing: SessionRouting::new(),
            deferred_begin: None,
            unnamed: None,
            probe_pending: false,
            probe_after_idle: false,
            fresh_checkout: false,
            may_host: false,
            pinned: None,
            close_at_end: false,
            deferred_failed: false,
            parked: Vec::new(),
            txn: Default::default(),
            txn_write_shard: None,
            txn_written: 0,
            unnamed_parse: None,
            shutdown,
        }
    }

    /// Runs the session to its end, then leaves no server connection dirty: a clean one
    /// goes back to the pool, anything else is closed. Not cancel safe.
    pub(crate) async fn run(mut self) -> Result<(), ClientError> {
        let result = self.serve().await;
        if let Err(e) = &result {
            // The server's own FATAL (57P01 from pg_terminate_backend, say) already told the
            // client why its connection ends, and PostgreSQL sends nothing after it.
            let told = self.flight.server_fatal
                && matches!(
                    e,
                    ClientError::Backend(
                        shardgate_pool::BackendError::Closed { .. }
                            | shardgate_pool::BackendError::Io { .. }
                    )
                );
            if let Some((fields, _)) = e.to_response().filter(|_| !told) {
                let mut out = BytesMut::new();
                backend::error_response(&fields, &mut out);
                let _ = self.client.write_all(&out).await;
            }
        }
        let cancelling = self.registration.slot.clear();
        for p in std::mem::take(&mut self.parked) {
            // Mid-transaction: closing is the rollback.
            p.co.conn.discard();
        }
        if let Some(Checkout {
            conn,
            host: Some(guard),
            ..
        }) = self.server.take_if(|c| c.host.is_some())
        {
            // Riders wait behind this session's request: past its reply the connection is
            // theirs, unless it failed.
            if matches!(result, Err(ClientError::Backend(_))) {
                drop(conn);
                drop(guard);
            } else {
                guard.finish(conn, u32::from(!self.flight.idle()), cancelling);
            }
        }
        if let Some(Checkout { mut conn, .. }) = self.server.take() {
            let clean = self.flight.idle() && self.flight.tx_status == b'I';
            // A cancel of this client's query may still arrive: nobody else may get it.
            if self.pinned.is_some() || self.close_at_end || cancelling {
                // What pinned it may be state DISCARD ALL leaves behind (dblink's named
                // connections, a LOADed library), and a pipelined request after the pin is
                // never classified: only closing is sure to end it.
                conn.discard();
            } else if clean && self.mode == PoolMode::Session {
                // A session-mode server leaves with the client's state: reset it.
                match conn.run_discarding("DISCARD ALL").await {
                    Ok(()) => {
                        conn.prepared.clear();
                        conn.state_fingerprint = 0;
                        conn.release();
                    }
                    Err(_) => conn.discard(),
                }
            } else if clean {
                conn.release();
            } else {
                conn.discard();
            }
        }
        if self.pinned.is_some() {
            self.shared.metrics.pinned_sessions.dec();
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
                if self.pinned.is_some() {
                    // Its state went with that connection: running on another would be wrong.
                    return Err(ClientError::PinLost);
                }
                if self.answer_prepare_locally().await? {
                    continue;
                }
                let snapshot = self.shared.snapshot.load_full();
                let scanned = self.scan_request(&snapshot.classifier)?;
                if self.answer_locally(&scanned).await? {
                    continue;
                }
                if !self.acquire(snapshot, scanned).await? {
                    continue;
                }
            }
            if !self.relay().await? {
                return Ok(());
            }
        }
    }

    /// Waits until a whole client message is buffered. False when the client is done.
    /// Cancel safe.
    async fn wait_for_request(&mut self) -> Result<bool, ClientError> {
        loop {
            // Refused on its type byte, as PostgreSQL does, not after the body it announces.
            if let Some(&t) = self.cbuf.first().filter(|t| !tag::is_frontend(**t)) {
                return Err(shardgate_wire::WireError::UnknownTag(t).into());
            }
            let complete = match peek_header(&self.cbuf, self.max_len)? {
                Some(h) if self.cbuf.len() >= h.len => Some(h.tag),
                _ => None,
            };
            if complete == Some(tag::TERMINATE) {
                return Ok(false);
            }
            // Checked before a request is taken, so that once shutdown has begun an idle
            // session starts nothing new, even when the request's bytes and the signal arrive
            // together (the read below wins such a tie); and before each wait, so the signal
            // is never polled after it resolved.
            if *self.shared.shutdown.borrow() {
                return Err(ClientError::Shutdown);
            }
            if complete.is_some() {
                return Ok(true);
            }
            reserve(&mut self.cbuf);
            let signal = self
                .shutdown
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            tokio::select! {
                // The read first: when it is ready the signal is not polled at all.
                biased;
                n = self.client.read_buf(&mut self.cbuf) => {
                    if n? == 0 {
                        return Ok(false);
                    }
                }
                () = signal.as_mut() => {}
            }
        }
    }

    /// What the buffered request is (nothing consumed).
    pub(super) fn scan_request(&self, classifier: &Classifier) -> Result<Scanned, ClientError> {
        scan(
            &self.cbuf,
            self.max_len,
            classifier,
            &self.statements,
            self.unnamed.as_ref(),
        )
    }

    /// Routes the buffered request and takes a server connection on the chosen node.
    /// False if that failed and the client was told (its request answered with the error).
    async fn acquire(
        &mut self,
        snapshot: Arc<Snapshot>,
        mut scanned: Scanned,
    ) -> Result<bool, ClientError> {
        // A cancel sent before this request (while the client was idle) is not for it.
        self.registration.slot.begin_request();
        let in_transaction = self.deferred_begin.is_some();
        if !in_transaction && self.txn.active() {
            // A held-back transaction ended without reaching a server.
            self.txn.clear();
        }
        // The held-back transaction failed here, without the server: the request ending it
        // finds it aborted on the server too, which then ends it exactly as PostgreSQL ends
        // an aborted transaction (tag ROLLBACK for a COMMIT, AND CHAIN, in either protocol).
        let mut abort_first = false;
        if self.deferred_failed && in_transaction {
            if !scanned.ends_transaction {
                let fields = ErrorFields::new(
                    "ERROR",
                    super::sqlstate::IN_FAILED_TRANSACTION,
                    "current transaction is aborted, commands ignored until end of transaction block",
                );
                self.reject_request(fields).await?;
                return Ok(false);
            }
            self.deferred_failed = false;
            abort_first = true;
        }
        let mut shard_index = 0;
        let mut shard_why = String::new();
        if let Some(plan) = self.plan_shards(&snapshot, &mut scanned).await? {
            if in_transaction || scanned.view.begins.is_some() || self.txn.active() {
                if let Some(begin) = self.deferred_begin.clone().filter(|_| !self.txn.active()) {
                    self.txn.start(begin);
                }
                self.note_txn_state(&snapshot.classifier)?;
            }
            if let Some(fields) = self.pin_problem(&scanned, Some(&plan.need), Role::Primary) {
                self.refuse_pin(fields, false).await?;
                return Ok(false);
            }
            match plan.need {
                Need::Refuse(fields) => {
                    self.shared.metrics.refused("unroutable");
                    self.reject_request(fields).await?;
                    return Ok(false);
                }
                Need::Any | Need::AnyReference => {}
                Need::One(i) => shard_index = i,
                Need::Scatter { .. } => {
                    self.scatter(snapshot, scanned, plan).await?;
                    return Ok(false);
                }
                Need::Many { .. } | Need::Split { .. } => {
                    self.fan_out(snapshot, scanned, plan).await?;
                    return Ok(false);
                }
            }
            shard_why = plan.why;
        }
        if in_transaction {
            // The held-back BEGIN starts now: read-only only if the first statement says so,
            // and on the primary if its modes are ones a hot standby refuses.
            let begin = self
                .deferred_begin
                .as_deref()
                .and_then(shardgate_sql::strict_begin);
            let standby_ok = begin.is_some_and(|b| !b.primary_only);
            let read_only = standby_ok
                && (begin.is_some_and(|b| b.read_only)
                    || scanned.first_txn == Some(TxnControl::SetTransactionReadOnly));
            scanned.view.begins = Some(read_only);
        }
        let multiplex = snapshot.config.pool.multiplex;
        let ride_ok = multiplex > 0 && self.may_ride(&snapshot, &scanned);
        let mut failed_replicas = 0;
        let (chosen, conn) = loop {
            let chosen = if self.mode == PoolMode::Session {
                Chosen {
                    shard: 0,
                    node: snapshot.shards[0].primary.clone(),
                    role: Role::Primary,
                    reason: Reason::SessionPooling,
                    kind: kind_of(&scanned, in_transaction),
                }
            } else {
                match choose(
                    &snapshot,
                    shard_index,
                    &self.user,
                    &scanned,
                    &mut self.routing,
                    in_transaction,
                ) {
                    Ok(c) => c,
                    Err(fields) => {
                        self.reject_request(fields).await?;
                        return Ok(false);
                    }
                }
            };
            snapshot.routed[chosen.shard].inc(chosen.role, chosen.kind);
            self.record_sharded(
                &snapshot,
                chosen.shard,
                &chosen.node,
                chosen.role,
                chosen.reason,
                chosen.kind,
                &scanned,
                None,
                &shard_why,
            );
            let Some(pool) = chosen.node.pool(&self.user).cloned() else {
                return Err(ClientError::AuthFailed {
                    user: self.user.clone(),
                });
            };
            let mut fallback = None;
            if ride_ok {
                match super::multiplex::pick(&pool, self.params.fingerprint(), multiplex) {
                    Pick::Ride(host) => {
                        return self.ride(host, chosen, snapshot, scanned, &pool).await;
                    }
                    Pick::Otherwise(host) => fallback = host,
                }
            }
            if let Some(conn) = pool.try_checkout() {
                break (chosen, conn);
            }
            if let Some(host) = fallback {
                return self.ride(host, chosen, snapshot, scanned, &pool).await;
            }
            let slot = self.registration.slot.clone();
            let checkout = tokio::select! {
                // The cancel first: a connection that came in the same poll is given back.
                biased;
                () = slot.cancel_requested() => {
                    self.reject_request(cancelled_before_start()).await?;
                    return Ok(false);
                }
                r = pool.checkout(snapshot.checkout_timeout()) => r,
            };
            match checkout {
                Ok(conn) => break (chosen, conn),
                Err(e) => {
                    let backend = matches!(e, shardgate_pool::PoolError::Backend(_));
                    if let (Some(h), true) = (&chosen.node.health, backend) {
                        h.mark_failed(&e.to_string());
                        // Nothing reached a server yet and the replica is now excluded: route
                        // the request again (another replica or the primary).
                        if failed_replicas < snapshot.shards[chosen.shard].replicas.len() {
                            failed_replicas += 1;
                            continue;
                        }
                    }
                    let e = ClientError::Pool(e);
                    match e.to_response() {
                        Some((fields, true)) => {
                            tracing::warn!(user = %self.user, error = %e, "request failed before reaching a server");
                            self.reject_request(fields).await?;
                            return Ok(false);
                        }
                        _ => return Err(e),
                    }
                }
            }
        };
        let mut conn = conn;
        if self.registration.slot.cancel_pending() {
            // Cancelled in the same instant the connection came: nothing ran on it yet.
            conn.release();
            self.reject_request(cancelled_before_start()).await?;
            return Ok(false);
        }
        if let Some(fields) = self.pin_problem(&scanned, None, chosen.role) {
            conn.release();
            self.refuse_pin(fields, false).await?;
            return Ok(false);
        }
        if let Some(fields) = super::relay::apply_session_state(&mut conn, &self.params).await? {
            // Its settings are unknown now: close it rather than hand them to anyone.
            conn.discard();
            self.reject_request(fields).await?;
            return Ok(false);
        }
        let begin_with_modes = self
            .deferred_begin
            .as_deref()
            .filter(|b| shardgate_sql::strict_begin(b).is_none_or(|b| b.modes));
        let begun = match begin_with_modes {
            Some(begin) => {
                if let Some(fields) = super::relay::open_held_back_begin(&mut conn, begin).await? {
                    conn.release();
                    // The client was told BEGIN succeeded: its transaction is now aborted.
                    self.reject_request(fields).await?;
                    return Ok(false);
                }
                true
            }
            None => false,
        };
        // After the last wait before the request is sent: a cancel that came during the
        // checkout or the re-application above is kept in the slot and found here; one
        // coming later sees the target and goes to the server.
        if self
            .registration
            .slot
            .start_on(&conn.addr, conn.key)
            .is_err()
        {
            if begun {
                // Closing rolls back the transaction just opened; the held-back BEGIN stays
                // with the session, which the rejection marks failed (as PostgreSQL would).
                conn.discard();
            } else {
                conn.release();
            }
            self.reject_request(cancelled_before_start()).await?;
            return Ok(false);
        }
        if begun {
            self.flight.tx_status = b'T';
            if let Some(begin) = self.deferred_begin.take() {
                if !self.txn.active() {
                    self.txn.start(begin);
                }
            }
        }
        self.note_routed(
            &snapshot,
            &scanned,
            chosen.shard,
            chosen.role,
            in_transaction,
        );
        self.unnamed = scanned.unnamed.take();
        if let Some(begin) = self.deferred_begin.take() {
            self.flight
                .send_hidden(&begin, false, &mut self.sbuf, &mut conn.unnamed_owner);
            if !self.txn.active() {
                self.txn.start(begin);
            }
        }
        if abort_first {
            self.flight.send_hidden(
                ABORT_ON_SERVER,
                false,
                &mut self.sbuf,
                &mut conn.unnamed_owner,
            );
        }
        self.fresh_checkout = true;
        self.may_host = ride_ok;
        self.server = Some(Checkout {
            conn,
            node: chosen.node,
            role: chosen.role,
            shard: chosen.shard,
            snapshot,
            host: None,
        });
        Ok(true)
    }

    /// Whether the buffered request may ride on another session's server connection, or
    /// host riders on its own (see `multiplex`): transaction pooling without sharding, by a
    /// session that holds nothing and has no transaction or setting change under way.
    fn may_ride(&self, snapshot: &Snapshot, scanned: &Scanned) -> bool {
        self.mode == PoolMode::Transaction
            && snapshot.sharding.is_none()
            && self.pinned.is_none()
            && self.deferred_begin.is_none()
            && self.parked.is_empty()
            && !self.txn.active()
            && self.flight.idle()
            && self.flight.tx_status == b'I'
            && !self.params.unsettled()
            && super::multiplex::may_ride(scanned, &self.cbuf, scanned.sql.bytes(&self.cbuf))
    }

    /// Sends the buffered request down `host`'s connection behind the requests already there,
    /// then waits for the connection to be handed over and relays the reply as its holder.
    /// False if the request was answered here (or already fully relayed).
    async fn ride(
        &mut self,
        host: Arc<Host>,
        chosen: Chosen,
        snapshot: Arc<Snapshot>,
        mut scanned: Scanned,
        pool: &Arc<shardgate_pool::NodePool>,
    ) -> Result<bool, ClientError> {
        if self.registration.slot.cancel_pending() {
            self.reject_request(cancelled_before_start()).await?;
            return Ok(false);
        }
        let lost = || {
            ClientError::Backend(shardgate_pool::BackendError::Closed {
                addr: pool.addr().clone(),
            })
        };
        // The request depends on nothing a connection holds (see `multiplex::may_ride`): it
        // is translated against an empty one.
        let mut prepared = std::collections::HashMap::new();
        let mut unnamed_owner = 0;
        let classifier = snapshot.classifier.clone();
        let t = self.flight.translate(
            &self.cbuf,
            self.max_len,
            self.mode,
            ClientSide {
                statements: &mut self.statements,
                params: &mut self.params,
                classifier: &classifier,
                plan_epoch: self.shared.plan_epoch.current(),
                check_shapes: false,
            },
            ServerSide {
                prepared: &mut prepared,
                unnamed_owner: &mut unnamed_owner,
            },
            &mut self.sbuf,
            &mut self.out,
        )?;
        let whole = t.consumed == self.cbuf.len() && !t.terminate;
        let boarded = if whole && self.flight.awaiting_replies_only() {
            let bytes = if t.direct {
                &self.cbuf[..t.consumed]
            } else {
                &self.sbuf[..]
            };
            host.board(bytes)
        } else {
            None
        };
        self.sbuf.clear();
        self.cbuf.advance(t.consumed);
        let Some(handover) = boarded else {
            // Not reached: `may_ride` admits only whole requests the flight sends as they are,
            // and `pick` found the host open with room, with nothing run since.
            tracing::error!(
                "shardgate could not queue a request behind another on its server connection"
            );
            return Err(lost());
        };
        if !self.out.is_empty() {
            self.client.write_all(&self.out).await?;
            self.out.clear();
        }
        self.cycle_started = Some(Instant::now());
        self.shared.metrics.multiplexed.inc();
        self.note_routed(&snapshot, &scanned, chosen.shard, chosen.role, false);
        self.unnamed = scanned.unnamed.take();
        let conn = handover.await.map_err(|_| {
            if host.settings_changed() {
                ClientError::RideAbandoned
            } else {
                lost()
            }
        })?;
        let (addr, key) = (conn.addr.clone(), conn.key);
        self.fresh_checkout = false;
        self.flight.stop_at_idle = true;
        self.server = Some(Checkout {
            conn,
            node: chosen.node,
            role: chosen.role,
            shard: chosen.shard,
            snapshot,
            host: Some(HostGuard::adopt(host)),
        });
        self.send_riders().await?;
        // The request runs on the server now, or will once the one ahead of it ends.
        let slot = &self.registration.slot;
        if slot.start_on(&addr, key).is_err() {
            // Cancelled while it waited behind another: it cannot be taken back, so the
            // cancel goes to the server that runs it.
            slot.set(&addr, key);
            slot.set_hosted(pool.credentials());
            let registry = self.shared.cancel.clone();
            let own = self.registration.key;
            tokio::spawn(async move { registry.cancel(own.pid, own.secret).await });
        } else {
            slot.set_hosted(pool.credentials());
            slot.mark_sent();
        }
        let buffered = self
            .server
            .as_ref()
            .is_some_and(|c| !c.conn.rbuf.is_empty());
        if buffered {
            self.forward_server_data().await?;
        }
        Ok(!self.release_if_done())
    }

    /// What a routed request changes in the session: stickiness, whether the open
    /// transaction wrote, and whether a read-your-writes probe must follow it.
    pub(super) fn note_routed(
        &mut self,
        snapshot: &Snapshot,
        scanned: &Scanned,
        shard: usize,
        role: Role,
        in_transaction: bool,
    ) {
        if scanned.sticky {
            self.routing.sticky = true;
        }
        self.pin_if_needed(scanned);
        let in_txn = in_transaction || scanned.view.begins.is_some();
        // A prepare waiting on its Flush runs nothing; its execution is planned (and noted)
        // as a request of its own.
        let may_run = scanned.executes || (!scanned.complete && !scanned.prepare_flushed);
        if scanned.view.write && in_txn && may_run {
            self.routing.txn_wrote = true;
            self.txn_write_shard = Some(shard);
            self.txn_written |= shardgate_router::bit(shard);
        }
        // What runs on the primary may write through a function no classifier knows (one
        // missing from write_functions): a transaction there that was not declared READ ONLY,
        // and a statement hinted there, get the probe a write gets.
        if role == Role::Primary && scanned.view.begins == Some(false) {
            self.routing.txn_wrote = true;
        }
        let hinted = scanned.executes && scanned.view.hint == Some(HintTarget::Primary);
        let tracks = snapshot.policy.read_your_writes
            && snapshot.policy.read_write_split
            && role == Role::Primary
            && self.mode == PoolMode::Transaction
            && snapshot.shards.iter().any(|s| !s.replicas.is_empty());
        self.probe_pending = tracks
            && (((scanned.view.write || hinted) && !in_txn)
                || ((self.routing.txn_wrote || scanned.view.write) && scanned.ends_transaction));
        self.probe_after_idle = self.probe_pending && scanned.copy_from;
    }

    /// Logs a routing decision and keeps it for `/api/decisions`, with the shards a
    /// fanned-out request ran on and the sharding reason (empty without sharding). The
    /// caller counts it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_sharded(
        &self,
        snapshot: &Snapshot,
        shard: usize,
        node: &NodeRuntime,
        role: Role,
        reason: Reason,
        kind: Kind,
        scanned: &Scanned,
        shards: Option<Arc<[Arc<str>]>>,
        shard_why: &str,
    ) {
        if !scanned.view.parsed {
            self.shared.metrics.unparsed.inc();
        }
        let draft = Draft {
            session: u64::from(self.registration.key.pid as u32),
            config_version: snapshot.version,
            sql: scanned.sql.bytes(&self.cbuf),
            kind,
            shard: &snapshot.shards[shard].name,
            node: &node.addr,
            role,
            reason,
            class: scanned.class.as_ref().filter(|c| c.write.is_some()),
            // Only a degraded shard pays for naming its replicas.
            detail: (reason == Reason::NoRoutableReplica)
                .then(|| super::routing::replicas_detail_shared(snapshot, shard)),
            shards,
            shard_reason: (!shard_why.is_empty()).then(|| Arc::from(shard_why)),
        };
        if tracing::enabled!(tracing::Level::DEBUG) {
            let decision = draft.to_decision(std::time::SystemTime::now());
            tracing::debug!(
                session = decision.session,
                config_version = decision.config_version,
                node = %decision.node,
                role = ?role,
                kind = kind.as_str(),
                reason = %decision.reason_text(),
                sql = %decision.sql(),
                "routed"
            );
        }
        self.shared.decisions.record_draft(draft);
    }

    /// Answers the buffered request with an error, skipping the client's messages up to
    /// the end of that request as PostgreSQL would, then ReadyForQuery. Inside a transaction
    /// block the error fails the transaction, as a server's error would: 25P02 until it ends,
    /// and COMMIT answers ROLLBACK.
    pub(super) async fn reject_request(&mut self, fields: ErrorFields) -> Result<(), ClientError> {
        if self.flight.tx_status == b'T' && (self.server.is_some() || !self.parked.is_empty()) {
            self.abort_locally().await;
        }
        // Nothing of the request runs; a transaction it would have begun never starts.
        self.txn.drop_staged();
        if self.server.is_none() && self.parked.is_empty() && self.deferred_begin.is_none() {
            self.txn.clear();
        }
        backend::error_response(&fields, &mut self.out);
        // Sent now: a client that ended its messages with Flush waits for it before it syncs.
        self.flush_out().await?;
        loop {
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
        let status = if self.deferred_begin.is_some() {
            self.deferred_failed = true;
            b'E'
        } else {
            self.flight.tx_status
        };
        backend::ready_for_query(status, &mut self.out);
        self.flush_out().await?;
        Ok(())
    }
}
