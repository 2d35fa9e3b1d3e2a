//! Requests that need shards other than the one the session holds: planning them (with the
//! key column types learned from the first shard), running one request on several shards at
//! once (each connection with its own flight, replies combined by `merge.rs`), moving an open
//! transaction to another shard, and refusing a transaction that would write on two shards.
//!
//! A transaction keeps one connection per shard it touched: the current one (`server`) and the
//! parked ones. Only one shard may be written; at COMMIT or ROLLBACK the parked ones, which only
//! read, are rolled back and the client's statement decides on the one that matters.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use shardgate_config::PoolMode;
use shardgate_pool::BackendError;
use shardgate_router::{bit, shards_in, Reason, Role, ShardSet};
use shardgate_wire::{backend, frontend, peek_header, BackendMessage, ErrorFields, FrontendRef};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::errors::ClientError;
use super::flight::{ClientSide, Flight, ServerSide};
use super::merge::{merge_replies, ShardReplies};
use super::params::SessionParams;
use super::request::Scanned;
use super::routing::{choose, kind_of};
use super::session::{reserve, Checkout, Session};
use super::shard_plan::{plan_request, Need, RequestPlan, ShardingRuntime};
use super::sqlstate;
use super::statements::ClientStatements;
use super::topology::{NodeRuntime, Snapshot};

/// Largest request shardgate buffers whole to plan it (a pipeline up to its Sync).
const MAX_PLANNED_REQUEST: usize = 64 << 20;

/// A connection a transaction holds on a shard other than the current one.
pub(super) struct Parked {
    pub(super) co: Checkout,
    pub(super) tx_status: u8,
}

/// One shard's part of a fanned-out request.
pub(super) struct Leg {
    pub(super) co: Checkout,
    pub(super) flight: Flight,
    /// Replies for the client, before merging.
    out: BytesMut,
    /// The bytes this shard runs (None: the client's request as is).
    request: Option<Bytes>,
    /// shardgate's BEGIN to send first (a transaction opening on this shard).
    pub(super) begin: Option<Bytes>,
    /// Copies of the client state for every leg but the first.
    state: Option<(ClientStatements, SessionParams)>,
    /// Where it came from: 0 the session's current connection, 1 parked, 2 new.
    pub(super) origin: u8,
    /// A scatter is reading the replies to shardgate's BEGIN, which the client never sees.
    pub(super) skip_replies: bool,
    /// The transaction status of the last ReadyForQuery a scatter read.
    pub(super) last_status: u8,
    /// A scatter read this leg's ReadyForQuery.
    pub(super) done: bool,
}

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

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Which shards the buffered request needs; None without sharding. Reads the rest of the
    /// request first if it is not all buffered (its Bind may carry the key).
    pub(super) async fn plan_shards(
        &mut self,
        snapshot: &Snapshot,
        scanned: &mut Scanned,
    ) -> Result<Option<RequestPlan>, ClientError> {
        let Some(rt) = snapshot.sharding.clone() else {
            return Ok(None);
        };
        if self.mode != PoolMode::Transaction {
            return Ok(None);
        }
        if !scanned.complete {
            while request_len(&self.cbuf, self.max_len)?.is_none() {
                if self.cbuf.len() > MAX_PLANNED_REQUEST {
                    return Err(ClientError::Protocol(
                        "a pipelined request without Sync exceeds 64 MiB",
                    ));
                }
                reserve(&mut self.cbuf);
                if self.client.read_buf(&mut self.cbuf).await? == 0 {
                    return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
            *scanned = self.scan_request(&snapshot.classifier)?;
        }
        if let Some(r) = scanned.unnamed_parse.clone() {
            self.unnamed_parse = Some(Bytes::copy_from_slice(&self.cbuf[r]));
        }
        let mut plan = self.plan_once(&rt, scanned);
        if !plan.missing_types.is_empty() {
            self.learn_key_types(snapshot, &rt, &plan.missing_types)
                .await;
            plan = self.plan_once(&rt, scanned);
        }
        if let Need::Scatter { .. } = plan.need {
            self.check_scatter(snapshot, &rt, &mut plan).await;
        }
        Ok(Some(plan))
    }

    /// What a scatter needs from the catalog (read once from the first shard and kept): no
    /// function it calls may be an aggregate shardgate does not know, and whether text sorts
    /// as in C. A catalog that cannot be read refuses the scatter rather than guess.
    async fn check_scatter(
        &self,
        snapshot: &Snapshot,
        rt: &ShardingRuntime,
        plan: &mut RequestPlan,
    ) {
        const MERGEABLE: &[&str] = &[
            "count", "sum", "min", "max", "avg", "bool_and", "bool_or", "every",
        ];
        let Need::Scatter {
            select, text_order, ..
        } = &mut plan.need
        else {
            return;
        };
        let names: Vec<String> = shardgate_sql::called_functions(&select.shard_sql)
            .into_iter()
            .filter(|n| !MERGEABLE.contains(&n.as_str()))
            .collect();
        let unknown: Vec<String> = {
            let known = super::shard_plan::lock(&rt.aggregates);
            names
                .iter()
                .filter(|n| !known.contains_key(*n))
                .cloned()
                .collect()
        };
        let collation = *super::shard_plan::lock(&rt.collation_c);
        if !unknown.is_empty() || collation.is_none() {
            let quoted: Vec<String> = unknown
                .iter()
                .map(|n| format!("'{}'", n.replace('\'', "''")))
                .collect();
            let learned = self.catalog(snapshot, &quoted).await;
            match learned {
                Some((aggs, c)) => {
                    let mut known = super::shard_plan::lock(&rt.aggregates);
                    for n in &unknown {
                        known.insert(n.clone(), aggs.contains(n));
                    }
                    *super::shard_plan::lock(&rt.collation_c) = Some(c);
                }
                None => {
                    plan.need = Need::Refuse(ErrorFields::new(
                        "ERROR",
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "shardgate: cannot read the catalog of the first shard to check a query across shards",
                    ));
                    return;
                }
            }
        }
        let aggregate = {
            let known = super::shard_plan::lock(&rt.aggregates);
            names.into_iter().find(|n| known.get(n) == Some(&true))
        };
        if let Some(name) = aggregate {
            plan.need = Need::Refuse(
                ErrorFields::new(
                    "ERROR",
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("shardgate: cannot merge this query across shards exactly: aggregate function {name}"),
                )
                .with(b'H', "Add a shard-key filter, or pin it with /* shardgate: shard=<name> */ to run it on one shard."),
            );
            return;
        }
        *text_order = super::shard_plan::lock(&rt.collation_c).unwrap_or(false);
    }

    /// Which of the (quoted) names are aggregates, and whether the database collates as C.
    async fn catalog(&self, snapshot: &Snapshot, quoted: &[String]) -> Option<(Vec<String>, bool)> {
        let pool = snapshot.shards[0].primary.pool(&self.user).cloned()?;
        let mut conn = pool.checkout(snapshot.checkout_timeout()).await.ok()?;
        let aggs = if quoted.is_empty() {
            Vec::new()
        } else {
            let sql = format!(
                "SELECT DISTINCT p.proname FROM pg_proc p JOIN pg_aggregate a ON a.aggfnoid = p.oid WHERE p.proname IN ({})",
                quoted.join(", ")
            );
            match all_values(&mut conn, &sql).await {
                Ok(v) => v,
                Err(_) => {
                    conn.discard();
                    return None;
                }
            }
        };
        let collate = match first_value(
            &mut conn,
            "SELECT datcollate FROM pg_database WHERE datname = current_database()",
        )
        .await
        {
            Ok(v) => v.unwrap_or_default(),
            Err(_) => {
                conn.discard();
                return None;
            }
        };
        conn.release();
        // C.UTF-8 orders by code point, which for UTF-8 is byte order, as C does.
        let c = matches!(
            collate.as_str(),
            "C" | "POSIX" | "C.UTF-8" | "C.utf8" | "C.UTF8" | "ucs_basic"
        );
        Some((aggs, c))
    }

    pub(super) fn plan_once(&self, rt: &ShardingRuntime, scanned: &Scanned) -> RequestPlan {
        plan_request(
            rt,
            &self.cbuf,
            self.max_len,
            &self.statements,
            self.unnamed_parse.as_ref(),
            &self.routing,
            scanned.shard_hint.as_ref(),
        )
    }

    /// Reads each table's key column type on the first shard's primary. A table that does
    /// not exist yet stays unknown (its keys are read by the hash rule's text form).
    async fn learn_key_types(&self, snapshot: &Snapshot, rt: &ShardingRuntime, tables: &[String]) {
        let Some(pool) = snapshot.shards[0].primary.pool(&self.user).cloned() else {
            return;
        };
        let Ok(mut conn) = pool.checkout(snapshot.checkout_timeout()).await else {
            return;
        };
        for table in tables {
            let Some(sql) = rt.key_type_sql(table) else {
                continue;
            };
            match first_value(&mut conn, &sql).await {
                Ok(Some(v)) => {
                    if let Ok(oid) = v.parse::<u32>() {
                        rt.learn_key_type(table, oid);
                    }
                }
                Ok(None) => {}
                Err(_) => {
                    conn.discard();
                    return;
                }
            }
        }
        conn.release();
    }

    /// Runs the buffered request on several shards and answers the client with the combined
    /// replies. Outside a transaction a write runs inside a transaction on each shard, committed
    /// only if every shard succeeded. Inside one, only reads may fan out.
    pub(super) async fn fan_out(
        &mut self,
        snapshot: Arc<Snapshot>,
        mut scanned: Scanned,
        plan: RequestPlan,
    ) -> Result<(), ClientError> {
        let in_txn = self.server.is_some() || self.deferred_begin.is_some();
        let mut sum = true;
        let (targets, skip_parse): (Vec<(usize, Option<Bytes>)>, bool) = match plan.need {
            Need::Many { shards, sum: s } => {
                sum = s;
                (shards_in(shards).map(|s| (s, None)).collect(), false)
            }
            Need::Split {
                requests,
                client_parse,
            } => (
                requests
                    .into_iter()
                    .map(|(s, b)| (s, Some(b.freeze())))
                    .collect(),
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
        let wrap = !in_txn
            && plan.write
            && scanned.first_txn.is_none()
            && transactional(scanned.sql.bytes(&self.cbuf), &scanned);
        let Some(mut legs) = self
            .take_legs(&snapshot, targets, plan.write, wrap, &scanned)
            .await?
        else {
            return Ok(());
        };
        let (req_len, flushed) = match request_len(&self.cbuf, self.max_len)? {
            Some(r) => r,
            None => {
                self.put_back(legs);
                return Err(ClientError::Protocol("incomplete request"));
            }
        };
        if flushed {
            self.put_back(legs);
            let fields = ErrorFields::new(
                "ERROR",
                sqlstate::FEATURE_NOT_SUPPORTED,
                "shardgate: a request for several shards must end with Sync, not Flush",
            );
            return self.reject_request(fields).await;
        }
        self.record_legs(&snapshot, &legs, &scanned, &plan.why, in_txn);
        let request = self.cbuf.split_to(req_len).freeze();
        if skip_parse || legs.iter().any(|l| l.request.is_some()) {
            self.register_parses(&request, &snapshot)?;
        }
        for leg in legs.iter_mut().skip(1) {
            leg.state = Some((self.statements.clone(), self.params.clone()));
        }
        let classifier = snapshot.classifier.clone();
        let mut sbuf = BytesMut::new();
        for leg in &mut legs {
            if let Some(b) = &leg.begin {
                leg.flight.send_hidden(b, false, &mut sbuf);
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
                },
                ServerSide {
                    prepared: &mut conn.prepared,
                },
                &mut sbuf,
                &mut leg.out,
            )?;
            if t.direct {
                sbuf.extend_from_slice(&input[..t.consumed]);
            }
            let sent = conn.stream.write_all(&sbuf).await;
            sbuf.clear();
            sent.map_err(|source| io_error(conn, source))?;
        }
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
                    },
                    &mut leg.out,
                )?;
                if r.direct {
                    leg.out.extend_from_slice(&conn.rbuf[..r.consumed]);
                }
                conn.rbuf.advance(r.consumed);
                if r.consumed == 0 && !conn.rbuf.is_empty() {
                    // A partial frame: read the rest.
                    read_more(conn).await?;
                }
            }
        }
        let failed = legs.iter().any(|l| l.flight.tx_status == b'E');
        let mut commit_error: Option<ErrorFields> = None;
        let two_phase = snapshot.two_phase.clone().filter(|_| legs.len() > 1);
        if let (true, false, Some(tp)) = (wrap, failed, &two_phase) {
            let mut conns: Vec<(&str, &mut shardgate_pool::ServerConn)> = legs
                .iter_mut()
                .map(|l| (&*snapshot.shards[l.co.shard].name, &mut *l.co.conn))
                .collect();
            if let Err(fields) =
                super::two_phase::commit_all(tp, &mut conns, &self.shared.metrics).await
            {
                commit_error = Some(fields);
            }
            for leg in &mut legs {
                leg.flight.tx_status = b'I';
            }
            if snapshot.policy.read_your_writes && snapshot.policy.read_write_split {
                for leg in &mut legs {
                    let lsn =
                        first_value(&mut leg.co.conn, "SELECT pg_current_wal_insert_lsn()").await?;
                    if let Some(lsn) = lsn.as_deref().and_then(shardgate_pool::lag::parse_lsn) {
                        self.routing.note_lsn(leg.co.shard, lsn);
                    }
                }
            }
        } else if wrap {
            let track = snapshot.policy.read_your_writes && snapshot.policy.read_write_split;
            for leg in &mut legs {
                let sql = match (failed || commit_error.is_some(), track) {
                    (true, _) => "ROLLBACK",
                    (false, true) => "COMMIT; SELECT pg_current_wal_insert_lsn()",
                    (false, false) => "COMMIT",
                };
                match first_value(&mut leg.co.conn, sql).await {
                    Ok(lsn) => {
                        if let Some(lsn) = lsn.as_deref().and_then(shardgate_pool::lag::parse_lsn) {
                            self.routing.note_lsn(leg.co.shard, lsn);
                        }
                        leg.flight.tx_status = b'I';
                    }
                    Err(BackendError::Server { fields, .. }) if commit_error.is_none() => {
                        let name = &snapshot.shards[leg.co.shard].name;
                        commit_error = Some(
                            ErrorFields::new(
                                "ERROR",
                                fields.code().unwrap_or("XX000"),
                                format!(
                                    "shardgate: COMMIT failed on shard {name}: {}",
                                    fields.message().unwrap_or_default()
                                ),
                            )
                            .with(
                                b'D',
                                "Shards before it in config order may have committed; the rest were rolled back.",
                            ),
                        );
                        leg.flight.tx_status = b'I';
                    }
                    Err(e) => return Err(e.into()),
                }
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
        } else {
            let replies: Vec<ShardReplies<'_>> = legs
                .iter()
                .map(|l| ShardReplies {
                    shard: &snapshot.shards[l.co.shard].name,
                    bytes: &l.out,
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
        self.flush_out().await?;
        Ok(())
    }

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
        let txn_begin = self
            .txn_begin
            .clone()
            .or_else(|| self.deferred_begin.clone())
            .unwrap_or_else(|| Bytes::from_static(b"BEGIN"));
        let mut legs: Vec<Leg> = Vec::with_capacity(targets.len());
        for (shard, request) in targets {
            let leg = if self.server.as_ref().is_some_and(|c| c.shard == shard) {
                let co = self.server.take();
                co.map(|co| Leg {
                    co,
                    flight: std::mem::take(&mut self.flight),
                    out: BytesMut::new(),
                    request,
                    begin: None,
                    state: None,
                    origin: 0,
                    skip_replies: false,
                    last_status: b'I',
                    done: false,
                })
            } else if let Some(i) = self.parked.iter().position(|p| p.co.shard == shard) {
                let p = self.parked.swap_remove(i);
                Some(Leg {
                    co: p.co,
                    flight: Flight::with_status(p.tx_status),
                    out: BytesMut::new(),
                    request,
                    begin: None,
                    state: None,
                    origin: 1,
                    skip_replies: false,
                    last_status: b'I',
                    done: false,
                })
            } else {
                let replica_ok = !write && (!in_txn || read_only_txn);
                match self.checkout_on(snapshot, shard, replica_ok, scanned).await {
                    Ok(co) => Some(Leg {
                        co,
                        flight: Flight::default(),
                        out: BytesMut::new(),
                        request,
                        begin: if in_txn {
                            Some(txn_begin.clone())
                        } else if wrap {
                            Some(Bytes::from_static(b"BEGIN"))
                        } else {
                            None
                        },
                        state: None,
                        origin: 2,
                        skip_replies: false,
                        last_status: b'I',
                        done: false,
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
            for leg in legs {
                if leg.flight.idle() && leg.flight.tx_status == b'I' {
                    leg.co.conn.release();
                } else {
                    leg.co.conn.discard();
                }
            }
            self.shared.metrics.transactions.inc();
            return;
        }
        if let Some(begin) = self.deferred_begin.take() {
            self.txn_begin = Some(begin);
        }
        let mut legs = legs;
        let current = legs
            .iter()
            .position(|l| l.flight.tx_status == b'E')
            .or_else(|| legs.iter().position(|l| l.origin == 0))
            .unwrap_or(0);
        if current < legs.len() {
            let leg = legs.swap_remove(current);
            if let Some(old) = self.server.take() {
                self.parked.push(Parked {
                    co: old,
                    tx_status: self.flight.tx_status,
                });
            }
            self.registration
                .slot
                .set(&leg.co.conn.addr, leg.co.conn.key);
            self.flight = leg.flight;
            self.server = Some(leg.co);
        }
        for leg in legs {
            self.parked.push(Parked {
                co: leg.co,
                tx_status: leg.flight.tx_status,
            });
        }
    }

    /// Legs taken before a failure go back where they came from.
    pub(super) fn put_back(&mut self, legs: Vec<Leg>) {
        for leg in legs {
            match leg.origin {
                0 => {
                    self.flight = leg.flight;
                    self.server = Some(leg.co);
                }
                1 => self.parked.push(Parked {
                    co: leg.co,
                    tx_status: leg.flight.tx_status,
                }),
                _ => leg.co.conn.release(),
            }
        }
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
                    let class = snapshot.classifier.classify(p.query);
                    self.statements
                        .insert(p.name, super::statements::Prepared::new(&p, class));
                }
            }
            pos += h.len;
        }
        Ok(())
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
        })
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
        let co = match self.parked.iter().position(|p| p.co.shard == shard) {
            Some(i) => {
                let p = self.parked.swap_remove(i);
                (p.co, Flight::with_status(p.tx_status), false)
            }
            None => {
                let replica_ok = !write && current.role == Role::Replica;
                match self.checkout_on(snapshot, shard, replica_ok, scanned).await {
                    Ok(co) => (co, Flight::with_status(b'I'), true),
                    Err(fields) => {
                        self.reject_request(fields).await?;
                        return Ok(false);
                    }
                }
            }
        };
        let (co, flight, new) = co;
        let old = self.server.replace(co);
        let old_flight = std::mem::replace(&mut self.flight, flight);
        if let Some(old) = old {
            self.parked.push(Parked {
                co: old,
                tx_status: old_flight.tx_status,
            });
        }
        if new {
            let begin = self
                .txn_begin
                .clone()
                .unwrap_or_else(|| Bytes::from_static(b"BEGIN"));
            self.flight.send_hidden(&begin, false, &mut self.sbuf);
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
            let p = self.parked.swap_remove(i);
            let old_flight = std::mem::replace(&mut self.flight, Flight::with_status(p.tx_status));
            if let Some(old) = self.server.replace(p.co) {
                self.parked.push(Parked {
                    co: old,
                    tx_status: old_flight.tx_status,
                });
            }
            if let Some(c) = &self.server {
                self.registration.slot.set(&c.conn.addr, c.conn.key);
            }
        }
        for p in std::mem::take(&mut self.parked) {
            let mut conn = p.co.conn;
            match conn.run_discarding("ROLLBACK").await {
                Ok(()) => conn.release(),
                Err(_) => conn.discard(),
            }
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
    /// session in a failed transaction answered locally.
    pub(super) async fn abort_locally(&mut self) {
        let mut conns: Vec<Checkout> = self.parked.drain(..).map(|p| p.co).collect();
        conns.extend(self.server.take());
        for co in conns {
            let mut conn = co.conn;
            match conn.run_discarding("ROLLBACK").await {
                Ok(()) => conn.release(),
                Err(_) => conn.discard(),
            }
        }
        self.registration.slot.clear();
        self.flight = Flight::default();
        let begin = self
            .deferred_begin
            .take()
            .or_else(|| self.txn_begin.take())
            .unwrap_or_else(|| Bytes::from_static(b"BEGIN"));
        self.deferred_begin = Some(begin);
        self.deferred_failed = true;
        self.txn_write_shard = None;
        self.txn_written = 0;
        self.routing.txn_wrote = false;
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

/// Runs one simple query string and returns the first column of its first row (if any).
async fn first_value(
    conn: &mut shardgate_pool::ServerConn,
    sql: &str,
) -> Result<Option<String>, BackendError> {
    Ok(all_values(conn, sql).await?.into_iter().next())
}

/// Runs one simple query string and returns the first column of every row (NULLs skipped).
pub(super) async fn all_values(
    conn: &mut shardgate_pool::ServerConn,
    sql: &str,
) -> Result<Vec<String>, BackendError> {
    let mut out = BytesMut::with_capacity(sql.len() + 8);
    frontend::query(sql.as_bytes(), &mut out);
    conn.stream
        .write_all(&out)
        .await
        .map_err(|source| BackendError::Io {
            addr: conn.addr.clone(),
            source,
        })?;
    let mut values = Vec::new();
    let mut error = None;
    loop {
        match conn.read_message().await? {
            BackendMessage::ReadyForQuery(_) => break,
            BackendMessage::ErrorResponse(f) if error.is_none() => error = Some(f),
            BackendMessage::DataRow(body) => {
                if let Ok(row) = shardgate_wire::DataRow::decode(&body) {
                    if let Some(Some(b)) = row.values.first() {
                        values.push(String::from_utf8_lossy(b).into_owned());
                    }
                }
            }
            _ => {}
        }
    }
    match error {
        Some(fields) => Err(BackendError::Server {
            addr: conn.addr.clone(),
            fields,
        }),
        None => Ok(values),
    }
}

/// Statements PostgreSQL refuses inside a transaction block cannot be wrapped in one.
fn transactional(sql: &[u8], scanned: &Scanned) -> bool {
    if scanned.statements > 1 {
        // A multi-statement string already runs as one implicit transaction.
        return false;
    }
    if matches!(
        scanned.class.as_ref().and_then(|c| c.write.as_ref()),
        Some(shardgate_sql::WhyWrite::Maintenance)
    ) {
        return false;
    }
    let kw = shardgate_sql::leading_keywords(sql);
    let first_two = (kw.get(0).unwrap_or(""), kw.get(1).unwrap_or(""));
    if matches!(
        first_two,
        (
            "CREATE" | "DROP" | "ALTER",
            "DATABASE" | "TABLESPACE" | "SYSTEM" | "SUBSCRIPTION"
        )
    ) {
        return false;
    }
    !sql.windows(12)
        .any(|w| w.eq_ignore_ascii_case(b"CONCURRENTLY"))
}

/// Reads whatever the server has sent next into its buffer.
pub(super) async fn read_more(conn: &mut shardgate_pool::ServerConn) -> Result<(), ClientError> {
    reserve(&mut conn.rbuf);
    let n = conn
        .stream
        .read_buf(&mut conn.rbuf)
        .await
        .map_err(|source| io_error(conn, source))?;
    if n == 0 {
        return Err(ClientError::Backend(BackendError::Closed {
            addr: conn.addr.clone(),
        }));
    }
    Ok(())
}

fn io_error(conn: &shardgate_pool::ServerConn, source: std::io::Error) -> ClientError {
    ClientError::Backend(BackendError::Io {
        addr: conn.addr.clone(),
        source,
    })
}
