//! Running one request on several shards at once: each shard's connection (a leg, see
//! `shard_legs.rs`) gets its own flight, the replies are combined by `merge.rs`, and outside a
//! transaction a write runs in a transaction on each shard, committed only if every shard
//! succeeded (with two-phase commit when it is configured).

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use shardgate_pool::BackendError;
use shardgate_router::{bit, shards_in, Reason, ShardSet};
use shardgate_wire::{backend, peek_header, ErrorFields, FrontendRef};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::errors::{server_io, ClientError};
use super::fanout_commit::{not_in_block_error, Atomicity};
use super::flight::{ClientSide, ServerSide};
use super::merge::{merge_replies, ShardReplies};
use super::request::Scanned;
use super::routing::kind_of;
use super::session::{reserve, Session};
use super::shard_batch::{interleave_replies, BatchReplies};
use super::shard_legs::Leg;
use super::shard_plan::{Need, RequestPlan};
use super::sqlstate;
use super::topology::Snapshot;

/// The length of the request at the start of `buf`, up to and including its Query, Sync,
/// FunctionCall or Flush (a client that flushes waits for replies before it syncs), and whether
/// it ended with a Flush; None if it is not all there.
pub(super) fn request_len(
    buf: &[u8],
    max_len: usize,
) -> Result<Option<(usize, bool)>, ClientError> {
    let mut pos = 0;
    while let Some(h) = peek_header(&buf[pos..], max_len)? {
        if buf.len() - pos < h.len {
            return Ok(None);
        }
        pos += h.len;
        if matches!(h.tag, b'Q' | b'S' | b'F' | b'H') {
            return Ok(Some((pos, h.tag == b'H')));
        }
    }
    Ok(None)
}

/// A whole Sync message.
const SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];

/// Whether `buf` starts with a Sync.
pub(super) fn starts_with_sync(buf: &[u8]) -> bool {
    buf.starts_with(&SYNC)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Runs the buffered request on several shards and answers the client with the combined
    /// replies. Outside a transaction a write runs inside a transaction on each shard, committed
    /// only if every shard succeeded. Inside one, only reads may fan out.
    pub(super) async fn fan_out(
        &mut self,
        snapshot: Arc<Snapshot>,
        mut scanned: Scanned,
        plan: RequestPlan,
    ) -> Result<(), ClientError> {
        if let Some(fields) = self.fanned_request_problem(&scanned) {
            return self.reject_request(fields).await;
        }
        let in_txn = self.server.is_some() || self.deferred_begin.is_some();
        let mut sum = true;
        let mut split_rows = Vec::new();
        let mut batch = Vec::new();
        let (targets, skip_parse): (Vec<(usize, Option<Bytes>)>, bool) = match plan.need {
            Need::Many { shards, sum: s } => {
                sum = s;
                (shards_in(shards).map(|s| (s, None)).collect(), false)
            }
            Need::Split {
                requests,
                client_parse,
                rows,
                batch: steps,
            } => (
                {
                    split_rows = rows;
                    batch = steps;
                    requests
                        .into_iter()
                        .map(|(s, b)| (s, Some(b.freeze())))
                        .collect()
                },
                !client_parse,
            ),
            _ => return Ok(()),
        };
        let mut set: ShardSet = targets.iter().fold(0, |acc, (s, _)| acc | bit(*s));
        if in_txn && plan.write && snapshot.two_phase.is_none() {
            if let Some(c) = &self.server {
                set |= bit(c.shard);
            }
            return self.refuse_spanning(&snapshot, set).await;
        }
        if in_txn && plan.write {
            // Two-phase commit makes every shard's part commit or none.
            self.txn_written |= set;
            self.routing.txn_wrote = true;
        }
        if scanned.copy_from {
            let fields = ErrorFields::new(
                "ERROR",
                sqlstate::FEATURE_NOT_SUPPORTED,
                "shardgate: COPY FROM into more than one shard is not supported",
            )
            .with(
                b'H',
                "Use INSERT (multi-row INSERTs are split by shard), or COPY into one shard with /* shardgate: shard=<name> */.",
            );
            return self.reject_request(fields).await;
        }
        let atomicity = if !in_txn && plan.write && scanned.first_txn.is_none() {
            self.atomicity(&scanned)?
        } else {
            Atomicity::Alone
        };
        if atomicity == Atomicity::Refuse {
            return self.reject_request(not_in_block_error()).await;
        }
        let wrap = atomicity == Atomicity::Wrap;
        let Some(mut legs) = self
            .take_legs(&snapshot, targets, plan.write, wrap, &scanned)
            .await?
        else {
            return Ok(());
        };
        let (mut req_len, mut flushed) = match request_len(&self.cbuf, self.max_len)? {
            Some(r) => r,
            None => {
                self.put_back(legs);
                return Err(ClientError::Protocol("incomplete request"));
            }
        };
        if flushed && self.cbuf.get(req_len..).is_some_and(starts_with_sync) {
            // A Flush right before the request's Sync asks for nothing the Sync does not.
            (req_len, flushed) = (req_len + SYNC.len(), false);
        }
        if flushed {
            self.put_back(legs);
            let fields = ErrorFields::new(
                "ERROR",
                sqlstate::FEATURE_NOT_SUPPORTED,
                "shardgate: a request for several shards must end with Sync, not Flush",
            );
            return self.reject_request(fields).await;
        }
        if !self.start_legs(&mut legs).await? {
            return Ok(());
        }
        self.record_legs(&snapshot, &legs, &scanned, &plan.why, in_txn);
        let request = self.cbuf.split_to(req_len).freeze();
        // A batch sends the client's own Parses to every shard: translating them records them
        // (into the session's statements on the first leg, into copies on the others), and
        // recording them before would make each shard refuse the name with 42P05.
        if batch.is_empty() && (skip_parse || legs.iter().any(|l| l.request.is_some())) {
            self.register_parses(&request, &snapshot)?;
        }
        for leg in legs.iter_mut().skip(1) {
            leg.state = Some((self.statements.clone(), self.params.clone()));
        }
        let classifier = snapshot.classifier.clone();
        let mut sbuf = BytesMut::new();
        for leg in &mut legs {
            for sql in &leg.replay {
                leg.flight
                    .send_hidden(sql, false, &mut sbuf, &mut leg.co.conn.unnamed_owner);
            }
            let input: &[u8] = leg.request.as_deref().unwrap_or(&request);
            let (statements, params) = match &mut leg.state {
                Some((st, pa)) => (st, pa),
                None => (&mut self.statements, &mut self.params),
            };
            let conn = &mut *leg.co.conn;
            let t = leg.flight.translate(
                input,
                self.max_len,
                self.mode,
                ClientSide {
                    statements,
                    params,
                    classifier: &classifier,
                    plan_epoch: self.shared.plan_epoch.current(),
                    // A leg takes its whole request at once: it cannot wait for a check.
                    check_shapes: false,
                },
                ServerSide {
                    prepared: &mut conn.prepared,
                    unnamed_owner: &mut conn.unnamed_owner,
                },
                &mut sbuf,
                &mut leg.out,
            )?;
            if t.direct {
                sbuf.extend_from_slice(&input[..t.consumed]);
            }
            let sent = conn.stream.write_all(&sbuf).await;
            sbuf.clear();
            sent.map_err(|source| server_io(conn, source))?;
        }
        // The request is on every shard now: a cancel for it may follow it there.
        self.registration.slot.mark_sent();
        for leg in &mut legs {
            let (statements, params) = match &mut leg.state {
                Some((st, pa)) => (st, pa),
                None => (&mut self.statements, &mut self.params),
            };
            let conn = &mut *leg.co.conn;
            while !leg.flight.idle() {
                if conn.rbuf.is_empty() {
                    read_more(conn).await?;
                }
                let r = leg.flight.relay(
                    &conn.rbuf,
                    params,
                    statements,
                    ServerSide {
                        prepared: &mut conn.prepared,
                        unnamed_owner: &mut conn.unnamed_owner,
                    },
                    &mut leg.out,
                )?;
                if r.direct {
                    leg.out.extend_from_slice(&conn.rbuf[..r.consumed]);
                }
                if r.stale_statement {
                    // As the relay does (fan-out runs in transaction mode only).
                    self.shared.plan_epoch.advance();
                }
                if r.cycles_ended > 0 {
                    // As the relay does: the connection now carries these settings.
                    conn.state_fingerprint = if r.effects.server_reset {
                        0
                    } else {
                        params.fingerprint()
                    };
                }
                conn.rbuf.advance(r.consumed);
                if r.consumed == 0 && !conn.rbuf.is_empty() {
                    // A partial frame: read the rest.
                    read_more(conn).await?;
                }
            }
        }
        let failed = legs.iter().any(|l| l.flight.tx_status == b'E');
        let commit_error = if wrap {
            self.end_wrapped(&snapshot, &mut legs, failed).await
        } else {
            None
        };
        if wrap && self.params.end_unseen(!failed && commit_error.is_none()) {
            // A SET the wrapping transaction ran: each leg's settings are unknown now.
            for leg in &mut legs {
                leg.co.conn.state_fingerprint = 0;
            }
        }
        let status = if in_txn {
            if failed {
                b'E'
            } else {
                b'T'
            }
        } else {
            b'I'
        };
        if let Some(fields) = commit_error {
            backend::error_response(&fields, &mut self.out);
            backend::ready_for_query(status, &mut self.out);
        } else if !batch.is_empty() {
            let replies: Vec<BatchReplies<'_>> = legs
                .iter()
                .map(|l| BatchReplies {
                    shard: l.co.shard,
                    name: &snapshot.shards[l.co.shard].name,
                    bytes: &l.out,
                })
                .collect();
            let mark = self.out.len();
            if let Err(m) = interleave_replies(&batch, &replies, status, &mut self.out) {
                self.out.truncate(mark);
                let fields = ErrorFields::new(
                    "ERROR",
                    sqlstate::INTERNAL_ERROR,
                    format!("shardgate: shards answered a batch unexpectedly: {}", m.0),
                );
                backend::error_response(&fields, &mut self.out);
                backend::ready_for_query(status, &mut self.out);
            }
        } else {
            let replies: Vec<ShardReplies<'_>> = legs
                .iter()
                .map(|l| ShardReplies {
                    shard: &snapshot.shards[l.co.shard].name,
                    bytes: &l.out,
                    rows: split_rows
                        .iter()
                        .find(|(shard, _)| *shard == l.co.shard)
                        .map(|(_, rows)| rows.as_slice()),
                })
                .collect();
            let mark = self.out.len();
            if let Err(m) = merge_replies(&replies, skip_parse, sum, status, &mut self.out) {
                self.out.truncate(mark);
                let fields = ErrorFields::new(
                    "ERROR",
                    "XX000",
                    format!("shardgate: shards answered differently: {}", m.0),
                );
                backend::error_response(&fields, &mut self.out);
                backend::ready_for_query(status, &mut self.out);
            }
        }
        self.unnamed = scanned.unnamed.take();
        self.finish_legs(legs, in_txn);
        if super::shard_catalog::is_ddl(&scanned) {
            if let Some(rt) = &snapshot.sharding {
                rt.forget_catalog();
            }
        }
        self.flush_out().await?;
        Ok(())
    }

    /// Named Parses of a request that is rewritten per shard are recorded here, since the
    /// shards see only the rewrite.
    pub(super) fn register_parses(
        &mut self,
        request: &[u8],
        snapshot: &Snapshot,
    ) -> Result<(), ClientError> {
        let mut pos = 0;
        while let Some(h) = peek_header(&request[pos..], self.max_len)? {
            if request.len() - pos < h.len {
                break;
            }
            if let FrontendRef::Parse(p) =
                FrontendRef::decode(h.tag, &request[pos + 5..pos + h.len])?
            {
                if !p.name.is_empty() {
                    self.statements.remember(
                        &p,
                        snapshot.classifier.classify(p.query),
                        self.params.statement_settings(),
                        self.shared.plan_epoch.current(),
                    );
                }
            }
            pos += h.len;
        }
        Ok(())
    }

    pub(super) fn record_legs(
        &self,
        snapshot: &Snapshot,
        legs: &[Leg],
        scanned: &Scanned,
        why: &str,
        in_txn: bool,
    ) {
        let kind = kind_of(scanned, in_txn);
        let names: Vec<Arc<str>> = legs
            .iter()
            .map(|l| snapshot.shards[l.co.shard].name.clone())
            .collect();
        for l in legs {
            snapshot.routed[l.co.shard].inc(l.co.role, kind);
        }
        let Some(first) = legs.first() else {
            return;
        };
        let reason = if scanned.view.write {
            Reason::Write
        } else {
            Reason::Read
        };
        self.record_sharded(
            snapshot,
            first.co.shard,
            &first.co.node,
            first.co.role,
            reason,
            kind,
            scanned,
            Some(names.into()),
            why,
        );
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Why a request may not run on several shards at once, if it may not: inside a transaction
    /// that already failed (the server would say 25P02 on the failed shard), or holding
    /// transaction control of its own (its shards' transaction states would part ways).
    pub(super) fn fanned_request_problem(&self, scanned: &Scanned) -> Option<ErrorFields> {
        let failed = self.server.is_some()
            && (self.flight.tx_status == b'E' || self.parked.iter().any(|p| p.tx_status == b'E'));
        if failed || (self.deferred_begin.is_some() && self.deferred_failed) {
            return Some(ErrorFields::new(
                "ERROR",
                sqlstate::IN_FAILED_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        if scanned.first_txn.is_some() || scanned.ends_transaction || scanned.view.begins.is_some()
        {
            return Some(
                ErrorFields::new(
                    "ERROR",
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "shardgate: a request that runs on several shards cannot also begin or end a transaction",
                )
                .with(b'H', "Send BEGIN, COMMIT and ROLLBACK as requests of their own."),
            );
        }
        None
    }
}

/// Reads whatever the server has sent next into its buffer.
pub(super) async fn read_more(conn: &mut shardgate_pool::ServerConn) -> Result<(), ClientError> {
    reserve(&mut conn.rbuf);
    let n = conn
        .stream
        .read_buf(&mut conn.rbuf)
        .await
        .map_err(|source| server_io(conn, source))?;
    if n == 0 {
        return Err(ClientError::Backend(BackendError::Closed {
            addr: conn.addr.clone(),
        }));
    }
    Ok(())
}
