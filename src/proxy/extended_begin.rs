//! A BEGIN run through the extended protocol at the head of a request, as pgjdbc (Parse, Bind,
//! Execute of BEGIN pipelined in front of the transaction's first query) and psycopg 3 (Parse,
//! Bind, Describe, Execute of BEGIN, then Sync) send it: held back exactly like a lone
//! simple-protocol BEGIN (see `answer_locally`), so the transaction takes no server until its
//! first statement says which node and which shard it needs, and a statement across shards right
//! behind it is still the only statement of what reaches the shards.

use bytes::{Buf, Bytes};
use shardgate_sql::TxnControl;
use shardgate_wire::{backend, peek_header, tag, FrontendRef};
use tokio::io::{AsyncRead, AsyncWrite};

use super::errors::ClientError;
use super::mirror::{reply_before_results, Description, Msg};
use super::session::Session;

/// The BEGIN messages at the head of the client buffer.
struct HeadBegin {
    /// The BEGIN text, in PostgreSQL's exact grammar.
    sql: Bytes,
    /// It is spelled START TRANSACTION (the command tag says so).
    start: bool,
    /// Where its Execute ends.
    end: usize,
    /// A Sync follows the Execute: the request is the BEGIN alone.
    alone: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Holds back a BEGIN the buffered request starts with through the extended protocol, and
    /// answers its messages as PostgreSQL would (ParseComplete, BindComplete, NoData,
    /// CommandComplete, and ReadyForQuery `T` when a Sync follows). What follows it in the
    /// request stays buffered, to be planned as a request of its own inside the held-back
    /// transaction. The caller checked that the session is idle in transaction mode and that
    /// nodes or shards are chosen per transaction. True if it was held back. Not cancel safe.
    pub(super) async fn hold_back_extended_begin(&mut self) -> Result<bool, ClientError> {
        if self.deferred_begin.is_some() || self.flight.tx_status != b'I' {
            return Ok(false);
        }
        let Some(head) = self.head_begin()? else {
            return Ok(false);
        };
        let classifier = self.shared.snapshot.load().classifier.clone();
        let messages = self.cbuf.split_to(head.end).freeze();
        let mut pos = 0;
        while let Some(h) = peek_header(&messages[pos..], self.max_len)? {
            let frame = messages.slice(pos..pos + h.len);
            let msg = FrontendRef::decode(h.tag, &frame[5..])?;
            match &msg {
                FrontendRef::Parse(p) => {
                    self.params.observe_parse(p.name, p.query);
                    let class = classifier.classify(p.query);
                    if p.name.is_empty() {
                        // The client's unnamed statement is this BEGIN now: a later Bind of it
                        // re-creates it on whichever server it runs (`Flight::restore_unnamed`).
                        self.statements.parsed_unnamed(&frame);
                        self.unnamed = Some(class);
                        self.unnamed_parse = Some(frame.clone());
                    } else {
                        self.statements.remember(
                            p,
                            class,
                            self.params.statement_settings(),
                            self.shared.plan_epoch.current(),
                        );
                    }
                }
                FrontendRef::Bind(b) => self.params.observe_bind(b.portal, b.statement),
                FrontendRef::Execute { .. } => backend::command_complete(
                    if head.start {
                        "START TRANSACTION"
                    } else {
                        "BEGIN"
                    },
                    &mut self.out,
                ),
                _ => {}
            }
            if let Some(m) = Msg::of(&msg).filter(|m| *m != Msg::Execute) {
                reply_before_results(m, Description::default(), &mut self.out);
            }
            pos += h.len;
        }
        self.deferred_begin = Some(head.sql);
        if head.alone {
            if let Some(h) = peek_header(&self.cbuf, self.max_len)? {
                self.cbuf.advance(h.len);
            }
            backend::ready_for_query(b'T', &mut self.out);
        }
        self.flush_out().await
    }

    /// The BEGIN the buffered request starts with, if it is run through the extended protocol in
    /// a shape whose replies are known without a server: an optional Parse of a BEGIN text in
    /// PostgreSQL's exact grammar (no declared parameter types, not under a name the client
    /// has), optionally described; a Bind of it (or of the client's named statement of such a
    /// text) to the unnamed portal, without parameters; optionally a Describe of that portal;
    /// its Execute; then a Sync, or a Parse or Bind that starts the next statement (anything else
    /// could refer to the BEGIN's portal, which no server would have).
    fn head_begin(&self) -> Result<Option<HeadBegin>, ClientError> {
        if !matches!(self.cbuf.first(), Some(&tag::PARSE | &tag::BIND)) {
            return Ok(None);
        }
        // Whether `sql` is a BEGIN (and spelled START TRANSACTION).
        let begin_start = |sql: &[u8]| {
            // Every extended request passes here: a first word that cannot start a BEGIN
            // ends the look before any lexing.
            if !super::params::may_start_with(sql, &[b"BEGIN", b"START"]) {
                return None;
            }
            let c = self.shared.snapshot.load().classifier.classify(sql);
            let one_begin = c.statements == 1
                && c.write.is_none()
                && matches!(c.txn.as_slice(), [TxnControl::Begin { .. }]);
            one_begin
                .then(|| shardgate_sql::strict_begin(sql))
                .flatten()
                .map(|b| b.start)
        };
        let mut pos = 0;
        let mut parsed: Option<&[u8]> = None;
        let mut sql: Option<(Bytes, bool)> = None;
        let mut bound = false;
        loop {
            let Some(h) = peek_header(&self.cbuf[pos..], self.max_len)? else {
                return Ok(None);
            };
            if self.cbuf.len() - pos < h.len {
                return Ok(None);
            }
            let msg = FrontendRef::decode(h.tag, &self.cbuf[pos + 5..pos + h.len])?;
            match msg {
                FrontendRef::Parse(p) if pos == 0 => {
                    let taken = !p.name.is_empty() && self.statements.get(p.name).is_some();
                    if taken || !p.param_types.is_empty() {
                        return Ok(None);
                    }
                    let Some(start) = begin_start(p.query) else {
                        return Ok(None);
                    };
                    parsed = Some(p.name);
                    sql = Some((Bytes::copy_from_slice(p.query), start));
                }
                FrontendRef::Describe { kind: b'S', name } if !bound && parsed == Some(name) => {}
                FrontendRef::Bind(b) if !bound => {
                    if !b.portal.is_empty()
                        || b.param_count() != 0
                        || b.result_formats().count() > 1
                    {
                        return Ok(None);
                    }
                    match parsed {
                        Some(name) if name == b.statement => {}
                        Some(_) => return Ok(None),
                        None if b.statement.is_empty() => return Ok(None),
                        None => {
                            let Some(prep) = self.statements.get(b.statement) else {
                                return Ok(None);
                            };
                            let text = prep.parse.slice(prep.query.clone());
                            let Some(start) = begin_start(&text) else {
                                return Ok(None);
                            };
                            sql = Some((text, start));
                        }
                    }
                    bound = true;
                }
                FrontendRef::Describe { kind: b'P', name } if bound && name.is_empty() => {}
                FrontendRef::Execute { portal, .. } if bound && portal.is_empty() => {
                    let end = pos + h.len;
                    let next = match peek_header(&self.cbuf[end..], self.max_len)? {
                        Some(n) if self.cbuf.len() - end >= n.len => n.tag,
                        _ => return Ok(None),
                    };
                    if !matches!(next, tag::SYNC | tag::PARSE | tag::BIND) {
                        return Ok(None);
                    }
                    return Ok(sql.map(|(sql, start)| HeadBegin {
                        sql,
                        start,
                        end,
                        alone: next == tag::SYNC,
                    }));
                }
                _ => return Ok(None),
            }
            pos += h.len;
        }
    }
}
