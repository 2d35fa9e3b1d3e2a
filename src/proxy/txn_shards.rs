//! An open transaction across shards: moving it to another shard, settling the connections it
//! parked before it ends, and refusing (rolling back everywhere) one that would write on two
//! shards, or a request that would end it beside other statements it cannot place.
//!
//! A transaction keeps one connection per shard it touched: the current one (`server`) and the
//! parked ones. Only one shard may be written; at COMMIT or ROLLBACK the parked ones, which only
//! read, are rolled back and the client's statement decides on the one that matters.

use std::sync::Arc;

use bytes::Bytes;
use shardgate_router::{bit, shards_in, Role, ShardSet};
use shardgate_wire::ErrorFields;
use tokio::io::{AsyncRead, AsyncWrite};

use super::errors::ClientError;
use super::flight::Flight;
use super::request::Scanned;
use super::session::{Checkout, Session};
use super::shard_plan::Need;
use super::sqlstate;
use super::topology::Snapshot;

/// A connection a transaction holds on a shard other than the current one.
pub(super) struct Parked {
    pub(super) co: Checkout,
    pub(super) tx_status: u8,
    /// How many of the transaction's recorded state changes it has run (see `TxnReplay`).
    pub(super) replayed: usize,
}

/// 0A000 for a statement that would make a transaction write on a second shard.
fn spanning_error(snapshot: &Snapshot, shards: ShardSet) -> ErrorFields {
    let names: Vec<&str> = shards_in(shards)
        .filter_map(|i| snapshot.shards.get(i).map(|s| &*s.name))
        .collect();
    let list = match names.as_slice() {
        [a, b] => format!("{a} and {b}"),
        _ => names.join(", "),
    };
    ErrorFields::new(
        "ERROR",
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!("shardgate: transaction spans shards {list}"),
    )
    .with(
        b'D',
        "A transaction may write on one shard only, and this statement needs another. The \
         transaction was rolled back on every shard it touched.",
    )
    .with(
        b'H',
        "Keep each transaction's writes on one shard key's shard, or run the statement outside \
         the transaction. Issue ROLLBACK to end this one.",
    )
}

/// 0A000 for a request that runs other statements beside the COMMIT or ROLLBACK that ends a
/// transaction shardgate cannot end with them.
fn end_beside_statements_error() -> ErrorFields {
    ErrorFields::new(
        "ERROR",
        sqlstate::FEATURE_NOT_SUPPORTED,
        "shardgate: COMMIT or ROLLBACK must be sent in a request of its own in this transaction",
    )
    .with(
        b'D',
        "The transaction touched several shards, or the request needs another shard than the \
         transaction's: its statements and the end of the transaction cannot run together. \
         Nothing of the request ran; the transaction was rolled back on every shard it touched.",
    )
    .with(
        b'H',
        "Send COMMIT (or ROLLBACK) in its own request, after the other statements' replies. \
         Issue ROLLBACK to end this transaction.",
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// For a request that ends the open transaction: unless it runs a lone COMMIT or ROLLBACK,
    /// it goes whole to one connection, which is right only if the transaction wrote on one
    /// shard at most, no part of it on another shard failed, and the request's statements
    /// belong on that shard (the parked readers are rolled back first). Otherwise it is refused (0A000) and the
    /// transaction rolled back everywhere, leaving a failed transaction the client ends with
    /// ROLLBACK. True if the request was answered.
    pub(super) async fn refuse_end_beside_statements(
        &mut self,
        snapshot: &Snapshot,
        scanned: &mut Scanned,
    ) -> Result<bool, ClientError> {
        if scanned.ends_alone {
            return Ok(false);
        }
        let Some(plan) = self.plan_shards(snapshot, scanned).await? else {
            return Ok(false);
        };
        // `plan_shards` reads the rest of a request that was not complete, and scans it again.
        if scanned.ends_alone {
            return Ok(false);
        }
        let Some(current) = self.server.as_ref().map(|c| c.shard) else {
            return Ok(false);
        };
        // The shard the transaction lives on: the one it wrote, else the current one. The
        // others only read, and ending it there loses nothing.
        let home = self.txn_write_shard.unwrap_or(current);
        let here = match plan.need {
            Need::Any | Need::AnyReference => true,
            Need::One(i) => i == home,
            _ => false,
        };
        // A failed part settles on its own connection, which may not be the home one.
        let failed = !self.parked.is_empty()
            && (self.flight.tx_status == b'E' || self.parked.iter().any(|p| p.tx_status == b'E'));
        if here && !failed && self.txn_written & !bit(home) == 0 {
            // The home connection becomes current; the request runs there whole.
            self.settle_parked().await;
            return Ok(false);
        }
        self.shared.metrics.refused("end_beside_statements");
        self.abort_locally().await;
        self.reject_request(end_beside_statements_error()).await?;
        Ok(true)
    }

    /// Moves the open transaction's current connection to `shard` (parking the old one),
    /// opening the transaction there if it is new. False if the request was answered (refused).
    pub(super) async fn switch_shard(
        &mut self,
        snapshot: &Arc<Snapshot>,
        scanned: &Scanned,
        shard: usize,
        write: bool,
    ) -> Result<bool, ClientError> {
        let Some(current) = self.server.as_ref() else {
            return Ok(true);
        };
        if self.flight.tx_status == b'E' {
            // A failed transaction stays where it failed: the server says 25P02.
            return Ok(true);
        }
        if let Some(w) = self
            .txn_write_shard
            .filter(|&w| write && w != shard && snapshot.two_phase.is_none())
        {
            return self
                .refuse_spanning(snapshot, bit(w) | bit(shard))
                .await
                .map(|()| false);
        }
        if current.shard == shard {
            return Ok(true);
        }
        let parked = self.parked.iter().position(|p| p.co.shard == shard);
        // What the shard must run first to be in the transaction's state: a parked one what
        // it missed, a new one the BEGIN and everything since.
        let replay: Option<Vec<Bytes>> = match parked {
            Some(i) => self
                .txn
                .since(self.parked[i].replayed)
                .map(<[Bytes]>::to_vec),
            None => self.txn.for_new(None),
        };
        let Some(replay) = replay else {
            self.shared.metrics.refused("txn_state");
            let fields = self.txn.refusal();
            self.abort_locally().await;
            self.reject_request(fields).await?;
            return Ok(false);
        };
        let co = match parked {
            Some(i) => {
                let p = self.parked.swap_remove(i);
                (p.co, Flight::with_status(p.tx_status))
            }
            None => {
                let replica_ok = !write && current.role == Role::Replica;
                match self.checkout_on(snapshot, shard, replica_ok, scanned).await {
                    Ok(co) => (co, Flight::with_status(b'I')),
                    Err(fields) => {
                        self.reject_request(fields).await?;
                        return Ok(false);
                    }
                }
            }
        };
        let (co, flight) = co;
        let old = self.server.replace(co);
        let old_flight = std::mem::replace(&mut self.flight, flight);
        if let Some(old) = old {
            self.parked.push(Parked {
                co: old,
                tx_status: old_flight.tx_status,
                replayed: self.txn.position(),
            });
        }
        let mut no_server = 0;
        let owner = match self.server.as_mut() {
            Some(c) => &mut c.conn.unnamed_owner,
            None => &mut no_server,
        };
        for sql in &replay {
            self.flight.send_hidden(sql, false, &mut self.sbuf, owner);
        }
        if let Some(c) = &self.server {
            self.registration.slot.set(&c.conn.addr, c.conn.key);
        }
        Ok(true)
    }

    /// Before COMMIT or ROLLBACK: the connection that decides becomes current (a failed one,
    /// else the one that wrote) and the parked ones, which only read, are rolled back.
    pub(super) async fn settle_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let decider = self
            .parked
            .iter()
            .position(|p| p.tx_status == b'E')
            .filter(|_| self.flight.tx_status != b'E')
            .or_else(|| {
                let w = self.txn_write_shard?;
                let current = self.server.as_ref()?.shard;
                (w != current)
                    .then(|| self.parked.iter().position(|p| p.co.shard == w))
                    .flatten()
            });
        if let Some(i) = decider {
            let mut p = self.parked.swap_remove(i);
            let old_flight = std::mem::replace(&mut self.flight, Flight::with_status(p.tx_status));
            // It decides: what it missed first (a ROLLBACK TO SAVEPOINT run elsewhere undoes
            // its writes too).
            for sql in self.txn.since_unchecked(p.replayed) {
                self.flight
                    .send_hidden(sql, false, &mut self.sbuf, &mut p.co.conn.unnamed_owner);
            }
            if let Some(old) = self.server.replace(p.co) {
                self.parked.push(Parked {
                    co: old,
                    tx_status: old_flight.tx_status,
                    replayed: self.txn.position(),
                });
            }
            if let Some(c) = &self.server {
                self.registration.slot.set(&c.conn.addr, c.conn.key);
            }
        }
        // A parked connection ran a multi-shard request: a cancel of it may still be on its way.
        let cancelling = self.registration.slot.in_flight();
        for p in std::mem::take(&mut self.parked) {
            p.co.roll_back_and_release(cancelling).await;
        }
    }

    /// Refuses a statement that would make the transaction span shards: every shard's part is
    /// rolled back and the session answers 25P02 until the client ends the transaction.
    pub(super) async fn refuse_spanning(
        &mut self,
        snapshot: &Snapshot,
        shards: ShardSet,
    ) -> Result<(), ClientError> {
        let fields = spanning_error(snapshot, shards);
        self.shared.metrics.refused("spans_shards");
        self.abort_locally().await;
        self.reject_request(fields).await
    }

    /// Rolls back every connection of the open transaction, gives them back, and leaves the
    /// session in a failed transaction answered locally. A connection the session keeps
    /// (pinned, or session mode) fails its transaction on the server instead.
    pub(super) async fn abort_locally(&mut self) {
        let keeps = self.pinned.is_some() || self.mode == shardgate_config::PoolMode::Session;
        if keeps && self.parked.is_empty() && self.fail_pinned_transaction().await {
            return;
        }
        let mut conns: Vec<Checkout> = self.parked.drain(..).map(|p| p.co).collect();
        conns.extend(self.server.take());
        // A cancel of this client's query may still arrive: its connections then go nowhere.
        let cancelling = self.registration.slot.clear();
        for co in conns {
            co.roll_back_and_release(cancelling).await;
        }
        self.flight = Flight::default();
        // The transaction's settings go with it, as at the ROLLBACK that will end it.
        self.params.end_unseen(false);
        let begin = self
            .deferred_begin
            .take()
            .or_else(|| self.txn.begin().cloned())
            .unwrap_or_else(|| Bytes::from_static(b"BEGIN"));
        self.txn.clear();
        self.deferred_begin = Some(begin);
        self.deferred_failed = true;
        self.txn_write_shard = None;
        self.txn_written = 0;
        self.routing.txn_wrote = false;
    }
}
