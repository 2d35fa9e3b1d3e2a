//! The connections a multi-shard request runs on: one leg per target shard, taken from the
//! session (its current or a parked connection) or checked out anew, and given back after.
//! While the request runs, the client's cancel goes to every leg (`start_legs`).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use shardgate_router::Role;
use shardgate_wire::ErrorFields;
use tokio::io::{AsyncRead, AsyncWrite};

use super::errors::ClientError;
use super::flight::Flight;
use super::params::SessionParams;
use super::request::Scanned;
use super::routing::choose;
use super::session::{Checkout, Session};
use super::sqlstate;
use super::statements::ClientStatements;
use super::topology::{NodeRuntime, Snapshot};
use super::txn_shards::Parked;

/// Where a leg's connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LegOrigin {
    /// The session's current connection.
    Current,
    /// A connection the open transaction parked on another shard.
    Parked,
    /// Checked out for this request.
    New,
}

/// One shard's part of a fanned-out request.
pub(super) struct Leg {
    pub(super) co: Checkout,
    pub(super) flight: Flight,
    /// Replies for the client, before merging.
    pub(super) out: BytesMut,
    /// The bytes this shard runs (None: the client's request as is).
    pub(super) request: Option<Bytes>,
    /// What shardgate sends first, each a query of its own whose replies the client never
    /// sees: the transaction's BEGIN and state (a transaction opening on this shard), what a
    /// parked connection missed, or a BEGIN of shardgate's own.
    pub(super) replay: Vec<Bytes>,
    /// `replay` starts with a BEGIN (a failed BEGIN leaves the shard outside the transaction).
    pub(super) replay_begins: bool,
    /// How many of the transaction's recorded state changes a parked connection had run.
    pub(super) replayed: usize,
    /// Copies of the client state for every leg but the first.
    pub(super) state: Option<(ClientStatements, SessionParams)>,
    /// Where the connection came from, and so where it goes back after a failure.
    pub(super) origin: LegOrigin,
    /// How many replies (to `replay`) a scatter has still to read and drop.
    pub(super) skip_replies: usize,
    /// The transaction status of the last ReadyForQuery a scatter read.
    pub(super) last_status: u8,
    /// A scatter read this leg's ReadyForQuery.
    pub(super) done: bool,
    /// shardgate's own COMMIT, ROLLBACK or probe failed here: the connection's state is
    /// unknown, so it is closed rather than pooled.
    pub(super) unsettled: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// One connection per target shard, in shard order: the transaction's own where it has
    /// one there, else a new checkout (a replica where a read may use one), opened with the
    /// transaction's BEGIN, or with a BEGIN of shardgate's own when `wrap`. None if a checkout
    /// failed and the client was told.
    pub(super) async fn take_legs(
        &mut self,
        snapshot: &Arc<Snapshot>,
        targets: Vec<(usize, Option<Bytes>)>,
        write: bool,
        wrap: bool,
        scanned: &Scanned,
    ) -> Result<Option<Vec<Leg>>, ClientError> {
        let in_txn = self.server.is_some() || self.deferred_begin.is_some();
        let read_only_txn = self
            .server
            .as_ref()
            .is_some_and(|c| c.role == Role::Replica);
        // A shard joining the transaction starts in its state, or the request is refused.
        let for_new = if in_txn {
            self.txn.for_new(self.deferred_begin.as_ref())
        } else {
            None
        };
        let joins = targets.iter().any(|(shard, _)| {
            self.server.as_ref().map(|c| c.shard) != Some(*shard)
                && !self.parked.iter().any(|p| p.co.shard == *shard)
        });
        let behind = self.parked.iter().any(|p| {
            targets.iter().any(|(s, _)| *s == p.co.shard) && self.txn.since(p.replayed).is_none()
        });
        if in_txn && ((joins && for_new.is_none()) || behind) {
            self.shared.metrics.refused("txn_state");
            let fields = self.txn.refusal();
            self.abort_locally().await;
            self.reject_request(fields).await?;
            return Ok(None);
        }
        // A cancel arriving while the legs are taken is kept for the request (`start_legs`),
        // not sent to the transaction's current connection, which may not even run it.
        self.registration.slot.begin_legs();
        let mut legs: Vec<Leg> = Vec::with_capacity(targets.len());
        for (shard, request) in targets {
            let leg = if self.server.as_ref().is_some_and(|c| c.shard == shard) {
                let co = self.server.take();
                co.map(|co| Leg {
                    co,
                    flight: std::mem::take(&mut self.flight),
                    out: BytesMut::new(),
                    request,
                    replay: Vec::new(),
                    replay_begins: false,
                    replayed: 0,
                    state: None,
                    origin: LegOrigin::Current,
                    skip_replies: 0,
                    last_status: b'I',
                    done: false,
                    unsettled: false,
                })
            } else if let Some(i) = self.parked.iter().position(|p| p.co.shard == shard) {
                let p = self.parked.swap_remove(i);
                let replay = self.txn.since(p.replayed).unwrap_or_default().to_vec();
                Some(Leg {
                    co: p.co,
                    flight: Flight::with_status(p.tx_status),
                    out: BytesMut::new(),
                    request,
                    replay,
                    replay_begins: false,
                    replayed: p.replayed,
                    state: None,
                    origin: LegOrigin::Parked,
                    skip_replies: 0,
                    last_status: b'I',
                    done: false,
                    unsettled: false,
                })
            } else {
                let replica_ok = !write && (!in_txn || read_only_txn);
                match self.checkout_on(snapshot, shard, replica_ok, scanned).await {
                    Ok(co) => Some(Leg {
                        co,
                        flight: Flight::default(),
                        out: BytesMut::new(),
                        request,
                        replay: if in_txn {
                            for_new.clone().unwrap_or_default()
                        } else if wrap {
                            vec![Bytes::from_static(b"BEGIN")]
                        } else {
                            Vec::new()
                        },
                        replay_begins: in_txn || wrap,
                        replayed: 0,
                        state: None,
                        origin: LegOrigin::New,
                        skip_replies: 0,
                        last_status: b'I',
                        done: false,
                        unsettled: false,
                    }),
                    Err(fields) => {
                        self.put_back(legs);
                        self.reject_request(fields).await?;
                        return Ok(None);
                    }
                }
            };
            if let Some(leg) = leg {
                legs.push(leg);
            }
        }
        Ok(Some(legs))
    }

    /// Gives legs back: outside a transaction to their pools, inside it to the session (an
    /// aborted shard becomes the current one, so that the next statement fails as it should).
    pub(super) fn finish_legs(&mut self, legs: Vec<Leg>, in_txn: bool) {
        if !in_txn {
            // A cancel of the request may still be on its way to any leg: nobody else may get one.
            let cancelling = self.registration.slot.clear();
            for leg in legs {
                if leg.flight.idle()
                    && leg.flight.tx_status == b'I'
                    && !leg.unsettled
                    && !cancelling
                {
                    leg.co.conn.release();
                } else {
                    leg.co.conn.discard();
                }
            }
            self.shared.metrics.transactions.inc();
            return;
        }
        if let Some(begin) = self.deferred_begin.take() {
            if !self.txn.active() {
                self.txn.start(begin);
            }
        }
        // Every leg ran the request, state changes included.
        let replayed = self.txn.position_after_request();
        let mut legs = legs;
        let current = legs
            .iter()
            .position(|l| l.flight.tx_status == b'E')
            .or_else(|| legs.iter().position(|l| l.origin == LegOrigin::Current))
            .unwrap_or(0);
        if current < legs.len() {
            let leg = legs.swap_remove(current);
            if let Some(old) = self.server.take() {
                self.parked.push(Parked {
                    co: old,
                    tx_status: self.flight.tx_status,
                    replayed: self.txn.position(),
                });
            }
            self.flight = leg.flight;
            self.server = Some(leg.co);
        }
        for leg in legs {
            self.parked.push(Parked {
                co: leg.co,
                tx_status: leg.flight.tx_status,
                replayed,
            });
        }
        self.cancel_to_current();
    }

    /// The legs are about to be sent the request: from now on the client's cancel goes to every
    /// one of them. False if a cancel already came for the request (while the legs were
    /// taken): they went back, and the client was answered 57014 as for one connection.
    pub(super) async fn start_legs(&mut self, legs: &mut Vec<Leg>) -> Result<bool, ClientError> {
        let targets = legs
            .iter()
            .map(|l| (Arc::clone(&l.co.conn.addr), l.co.conn.key));
        if self.registration.slot.start_on_all(targets).is_ok() {
            return Ok(true);
        }
        self.put_back(std::mem::take(legs));
        // Inside a transaction the rejection fails it, as a cancelled statement does.
        self.reject_request(super::session::cancelled_before_start())
            .await?;
        Ok(false)
    }

    /// Between requests a cancel goes where a single connection's would: the transaction's
    /// current connection, or nowhere outside one.
    fn cancel_to_current(&self) {
        match &self.server {
            Some(c) => self.registration.slot.set(&c.conn.addr, c.conn.key),
            None => {
                self.registration.slot.clear();
            }
        }
    }

    /// Legs taken before a failure go back where they came from.
    pub(super) fn put_back(&mut self, legs: Vec<Leg>) {
        for leg in legs {
            match leg.origin {
                LegOrigin::Current => {
                    self.flight = leg.flight;
                    self.server = Some(leg.co);
                }
                LegOrigin::Parked => self.parked.push(Parked {
                    co: leg.co,
                    tx_status: leg.flight.tx_status,
                    replayed: leg.replayed,
                }),
                LegOrigin::New => leg.co.conn.release(),
            }
        }
        // None of them ran the request: no cancel was sent to any (`begin_legs`).
        self.cancel_to_current();
    }

    /// A server connection on `shard`: a replica if `replica_ok` and routing picks one, else
    /// the primary; with the client's settings applied. Err is the client's error.
    pub(super) async fn checkout_on(
        &mut self,
        snapshot: &Arc<Snapshot>,
        shard: usize,
        replica_ok: bool,
        scanned: &Scanned,
    ) -> Result<Checkout, ErrorFields> {
        let (node, role): (Arc<NodeRuntime>, Role) = if replica_ok {
            match choose(
                snapshot,
                shard,
                &self.user,
                scanned,
                &mut self.routing,
                false,
            ) {
                Ok(c) => (c.node, c.role),
                Err(fields) => return Err(fields),
            }
        } else {
            (snapshot.shards[shard].primary.clone(), Role::Primary)
        };
        let Some(pool) = node.pool(&self.user).cloned() else {
            return Err(ErrorFields::new(
                "FATAL",
                sqlstate::INVALID_PASSWORD,
                "password authentication failed",
            ));
        };
        let mut conn = match pool.checkout(snapshot.checkout_timeout()).await {
            Ok(c) => c,
            Err(e) => {
                let e = ClientError::Pool(e);
                return Err(e.to_response().map(|(f, _)| f).unwrap_or_else(|| {
                    ErrorFields::new("ERROR", sqlstate::CONNECTION_FAILURE, e.to_string())
                }));
            }
        };
        match super::relay::apply_session_state(&mut conn, &self.params).await {
            Ok(None) => {}
            Ok(Some(fields)) => {
                conn.discard();
                return Err(fields);
            }
            Err(e) => {
                conn.discard();
                return Err(ErrorFields::new(
                    "ERROR",
                    sqlstate::CONNECTION_FAILURE,
                    e.to_string(),
                ));
            }
        }
        Ok(Checkout {
            conn,
            node,
            role,
            shard,
            snapshot: snapshot.clone(),
            host: None,
        })
    }
}
