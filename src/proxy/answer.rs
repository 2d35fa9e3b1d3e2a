//! Requests a session answers without a server: a Parse-only request (statements are
//! prepared lazily), shardgate's own `SET/RESET/SHOW shardgate.*` in either protocol,
//! and a lone BEGIN held back until the transaction's first statement (with a COMMIT
//! or ROLLBACK right after it).

use bytes::{Buf, Bytes};
use shardgate_config::PoolMode;
use shardgate_sql::TxnControl;
use shardgate_wire::{backend, peek_header, tag, ErrorFields, FrontendRef};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::errors::ClientError;
use super::local;
use super::mirror::{reply_before_results, Description, Msg};
use super::request::Scanned;
use super::session::Session;
use super::sqlstate;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// A request made only of named Parse messages and a Sync needs no server in
    /// transaction mode: the statements are recorded and prepared on a server when a
    /// Bind or Describe first needs them (a parse error surfaces there). Answering
    /// here matters: synchronous clients that prepare while other clients of theirs
    /// hold every server connection would otherwise wait on themselves.
    pub(super) async fn answer_prepare_locally(&mut self) -> Result<bool, ClientError> {
        // In a held-back transaction that failed, the server answers the Parse with 25P02.
        if self.mode != PoolMode::Transaction
            || self.flight.tx_status != b'I'
            || self.deferred_failed
        {
            return Ok(false);
        }
        let mut pos = 0;
        let mut parses = 0usize;
        // A name the client has, or one the request prepares twice, is refused by the
        // server (see `Flight::refuse_duplicate`), after it analyses the text.
        let mut names: Vec<&[u8]> = Vec::new();
        let end = loop {
            let Some(h) = peek_header(&self.cbuf[pos..], self.max_len)? else {
                return Ok(false);
            };
            if self.cbuf.len() - pos < h.len {
                return Ok(false);
            }
            match FrontendRef::decode(h.tag, &self.cbuf[pos + 5..pos + h.len])? {
                FrontendRef::Parse(p) if !p.name.is_empty() => {
                    if self.statements.get(p.name).is_some() || names.contains(&p.name) {
                        return Ok(false);
                    }
                    names.push(p.name);
                    parses += 1;
                }
                FrontendRef::Sync if parses > 0 => break pos + h.len,
                _ => return Ok(false),
            }
            pos += h.len;
        };
        let classifier = self.shared.snapshot.load().classifier.clone();
        let mut pos = 0;
        while pos < end {
            let Some(h) = peek_header(&self.cbuf[pos..], self.max_len)? else {
                break;
            };
            if let FrontendRef::Parse(p) =
                FrontendRef::decode(h.tag, &self.cbuf[pos + 5..pos + h.len])?
            {
                // Its session command, if it is one, counts when a portal bound to it runs.
                self.params.observe_parse(p.name, p.query);
                self.statements.remember(
                    &p,
                    classifier.classify(p.query),
                    self.params.statement_settings(),
                    self.shared.plan_epoch.current(),
                );
                backend::parse_complete(&mut self.out);
            }
            pos += h.len;
        }
        self.cbuf.advance(end);
        // Inside a held-back transaction: the client sees the transaction open.
        let status = if self.deferred_begin.is_some() {
            b'T'
        } else {
            b'I'
        };
        backend::ready_for_query(status, &mut self.out);
        self.flush_out().await
    }

    /// shardgate's own settings, and BEGIN held back until the transaction's first
    /// statement says whether it is read-only.
    pub(super) async fn answer_locally(&mut self, scanned: &Scanned) -> Result<bool, ClientError> {
        let status = match (&self.deferred_begin, self.deferred_failed) {
            (Some(_), true) => b'E',
            (Some(_), false) => b'T',
            (None, _) => self.flight.tx_status,
        };
        if self.answer_own_command(scanned, status).await? {
            return Ok(true);
        }
        if self.mode != PoolMode::Transaction {
            return Ok(false);
        }
        let snapshot = self.shared.snapshot.load();
        // A transaction's node (with read/write splitting) or shard (with sharding) is known
        // only from its first statement.
        if !snapshot.policy.read_write_split && snapshot.sharding.is_none() && !self.deferred_failed
        {
            return Ok(false);
        }
        drop(snapshot);
        if self.hold_back_extended_begin().await? {
            return Ok(true);
        }
        if self.deferred_begin.is_none() && scanned.lone_begin && self.flight.tx_status == b'I' {
            let sql = self.consume_first_message()?;
            let start = shardgate_sql::strict_begin(&sql).is_some_and(|b| b.start);
            self.deferred_begin = Some(sql);
            local::answer_deferred_begin(start, &mut self.out);
            return self.flush_out().await;
        }
        if self.deferred_begin.is_some() && self.first_message_is_query()? {
            // Only a text in PostgreSQL's exact grammar: any other goes to the server (after
            // the BEGIN), which answers it as it would directly.
            let end = match scanned.first_txn {
                Some(TxnControl::Commit | TxnControl::Rollback) if scanned.statements == 1 => {
                    shardgate_sql::strict_end(scanned.sql.bytes(&self.cbuf))
                }
                _ => None,
            };
            if let Some(end) = end {
                self.consume_first_message()?;
                // An aborted transaction's COMMIT is a ROLLBACK, as in PostgreSQL.
                let commit = end.commit && !self.deferred_failed;
                self.deferred_failed = false;
                if !end.chain {
                    self.deferred_begin = None;
                }
                // AND CHAIN: a transaction with the same modes opens at once, so the same BEGIN
                // stays held back.
                let status = if end.chain { b'T' } else { b'I' };
                local::answer_empty_transaction_end(commit, status, &mut self.out);
                return self.flush_out().await;
            }
            if self.deferred_failed {
                self.consume_first_message()?;
                local::answer_aborted_transaction(&mut self.out);
                return self.flush_out().await;
            }
            // `SET TRANSACTION modes` as the first statement joins the held-back BEGIN's modes,
            // so that the node is chosen for the whole transaction's modes: `BEGIN READ ONLY`
            // then `SET TRANSACTION ISOLATION LEVEL SERIALIZABLE` is serializable, which a hot
            // standby refuses, and `BEGIN; SET TRANSACTION READ ONLY` then a SERIALIZABLE one
            // alike.
            let folded = match (&self.deferred_begin, &scanned.view.hint) {
                (Some(begin), None) if scanned.statements == 1 => {
                    shardgate_sql::fold_set_transaction(begin, scanned.sql.bytes(&self.cbuf))
                }
                _ => None,
            };
            if let Some(folded) = folded {
                self.consume_first_message()?;
                self.deferred_begin = Some(Bytes::from(folded));
                backend::command_complete("SET", &mut self.out);
                backend::ready_for_query(b'T', &mut self.out);
                return self.flush_out().await;
            }
        }
        Ok(false)
    }

    /// shardgate's own `SET/RESET/SHOW shardgate.*`, in either protocol. True if the
    /// buffered request was one and has been answered.
    pub(super) async fn answer_own_command(
        &mut self,
        scanned: &Scanned,
        tx_status: u8,
    ) -> Result<bool, ClientError> {
        let own = scanned.shardgate.is_some() || scanned.shardgate_extended.is_some();
        if own && tx_status == b'E' {
            // As PostgreSQL: nothing but the end runs in a failed transaction, not even SHOW.
            let fields = ErrorFields::new(
                "ERROR",
                super::sqlstate::IN_FAILED_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            );
            self.reject_request(fields).await?;
            return Ok(true);
        }
        if let Some(cmd) = &scanned.shardgate {
            self.consume_first_message()?;
            let shards = self.shared.snapshot.load().shard_names();
            let failed = local::answer_shardgate(cmd, &mut self.routing, &shards, &mut self.out);
            let status = self.status_after_own_command(failed, tx_status).await;
            backend::ready_for_query(status, &mut self.out);
            return self.flush_out().await;
        }
        if let Some(cmd) = &scanned.shardgate_extended {
            self.answer_shardgate_extended(cmd, tx_status).await?;
            return self.flush_out().await;
        }
        self.answer_deallocate(tx_status).await
    }

    /// A request that is exactly `DEALLOCATE [PREPARE] name` of one of the client's statements,
    /// in transaction mode: the server has it only under its shared internal name, so only the
    /// client's name is forgotten, as a protocol Close of it is. psycopg 3 (with libpq before
    /// 17) evicts statements from its cache this way, through the unnamed statement; a simple
    /// Query is answered too. In a failed transaction the server answers, with 25P02, as it
    /// would directly; a name the client does not have goes to the server.
    async fn answer_deallocate(&mut self, tx_status: u8) -> Result<bool, ClientError> {
        if self.mode != PoolMode::Transaction || tx_status == b'E' || self.statements.is_empty() {
            return Ok(false);
        }
        let Some((name, end)) = self.buffered_deallocate()? else {
            return Ok(false);
        };
        self.statements.remove(name.as_bytes());
        let request = self.cbuf.split_to(end);
        let mut pos = 0;
        while let Some(h) = peek_header(&request[pos..], self.max_len)? {
            let msg = FrontendRef::decode(h.tag, &request[pos + 5..pos + h.len])?;
            match msg {
                FrontendRef::Query { .. } | FrontendRef::Execute { .. } => {
                    backend::command_complete("DEALLOCATE", &mut self.out);
                }
                _ => {}
            }
            if let Some(m) = Msg::of(&msg) {
                reply_before_results(m, Description::default(), &mut self.out);
            }
            if matches!(msg, FrontendRef::Query { .. } | FrontendRef::Sync) {
                backend::ready_for_query(tx_status, &mut self.out);
            }
            pos += h.len;
        }
        self.flush_out().await
    }

    /// The client statement the buffered request deallocates, and where the request ends: a
    /// simple Query of one `DEALLOCATE name`, or an unnamed Parse of it followed by nothing but
    /// its Bind, Describe and Execute, each at most once (as libpq sends them), and a Sync; the
    /// Execute is required.
    fn buffered_deallocate(&self) -> Result<Option<(String, usize)>, ClientError> {
        let Some(h) = peek_header(&self.cbuf, self.max_len)? else {
            return Ok(None);
        };
        if self.cbuf.len() < h.len || !matches!(h.tag, tag::QUERY | tag::PARSE) {
            return Ok(None);
        }
        let sql = match FrontendRef::decode(h.tag, &self.cbuf[5..h.len])? {
            FrontendRef::Query { sql } => sql,
            FrontendRef::Parse(p) if p.name.is_empty() => p.query,
            _ => return Ok(None),
        };
        let Some(name) = super::params::lone_deallocate(sql)
            .filter(|name| self.statements.get(name.as_bytes()).is_some())
        else {
            return Ok(None);
        };
        if h.tag == tag::QUERY {
            return Ok(Some((name, h.len)));
        }
        // Bind, Describe, Execute: each may come once, the Bind first.
        let (mut pos, mut seen) = (h.len, [false; 3]);
        while let Some(h) = peek_header(&self.cbuf[pos..], self.max_len)? {
            if self.cbuf.len() - pos < h.len {
                return Ok(None);
            }
            let step = match FrontendRef::decode(h.tag, &self.cbuf[pos + 5..pos + h.len])? {
                // Without an Execute nothing is deallocated.
                FrontendRef::Sync => return Ok(seen[2].then_some((name, pos + h.len))),
                FrontendRef::Bind(b) if b.statement.is_empty() => 0,
                FrontendRef::Describe { .. } if seen[0] => 1,
                FrontendRef::Execute { .. } if seen[0] => 2,
                _ => return Ok(None),
            };
            if std::mem::replace(&mut seen[step], true) {
                return Ok(None);
            }
            pos += h.len;
        }
        Ok(None)
    }

    /// The status after one of shardgate's own commands: its error inside a transaction block
    /// fails the transaction, as a server's error would (25P02 until it ends).
    async fn status_after_own_command(&mut self, failed: bool, tx_status: u8) -> u8 {
        if !failed || tx_status != b'T' {
            return tx_status;
        }
        self.abort_locally().await;
        b'E'
    }

    /// shardgate's own command through the extended protocol: every message of the
    /// request up to its Sync is answered here, in order, and the command applied once.
    async fn answer_shardgate_extended(
        &mut self,
        cmd: &shardgate_sql::ShardgateCommand,
        tx_status: u8,
    ) -> Result<(), ClientError> {
        let classifier = self.shared.snapshot.load().classifier.clone();
        let rows = local::returns_row(cmd).then(|| local::show_description(cmd));
        let described = Description {
            params: None,
            rows: rows.as_ref(),
        };
        let mut failed = false;
        while let Some(h) = peek_header(&self.cbuf, self.max_len)? {
            if self.cbuf.len() < h.len {
                break;
            }
            let frame = self.cbuf.split_to(h.len).freeze();
            let msg = FrontendRef::decode(h.tag, &frame[5..])?;
            if failed && !matches!(msg, FrontendRef::Sync) {
                continue;
            }
            match msg {
                FrontendRef::Parse(p) if self.statements.get(p.name).is_some() => {
                    // As PostgreSQL: the name is taken, the old statement stays.
                    let message = format!(
                        "prepared statement \"{}\" already exists",
                        String::from_utf8_lossy(p.name)
                    );
                    let fields =
                        ErrorFields::new("ERROR", sqlstate::DUPLICATE_PREPARED_STATEMENT, message);
                    backend::error_response(&fields, &mut self.out);
                    failed = true;
                }
                FrontendRef::Parse(p) => {
                    let class = classifier.classify(p.query);
                    if p.name.is_empty() {
                        self.unnamed = Some(class);
                    } else {
                        self.statements.remember(
                            &p,
                            class,
                            self.params.statement_settings(),
                            self.shared.plan_epoch.current(),
                        );
                    }
                    backend::parse_complete(&mut self.out);
                }
                FrontendRef::Bind(_) | FrontendRef::Describe { .. } => {
                    if let Some(m) = Msg::of(&msg) {
                        reply_before_results(m, described, &mut self.out);
                    }
                }
                FrontendRef::Execute { .. } => {
                    let shards = self.shared.snapshot.load().shard_names();
                    let answer = local::apply_shardgate(cmd, &mut self.routing, &shards);
                    failed = matches!(answer, local::Answer::Error(_));
                    local::write_result(&answer, &mut self.out);
                }
                FrontendRef::Sync => {
                    let status = self.status_after_own_command(failed, tx_status).await;
                    backend::ready_for_query(status, &mut self.out);
                    break;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn first_message_is_query(&self) -> Result<bool, ClientError> {
        Ok(matches!(peek_header(&self.cbuf, self.max_len)?, Some(h) if h.tag == tag::QUERY))
    }

    /// Drops the first buffered message, returning a simple Query's SQL text.
    fn consume_first_message(&mut self) -> Result<Bytes, ClientError> {
        let Some(h) = peek_header(&self.cbuf, self.max_len)? else {
            return Ok(Bytes::new());
        };
        let frame = self.cbuf.split_to(h.len).freeze();
        let sql = match FrontendRef::decode(h.tag, &frame[5..])? {
            FrontendRef::Query { sql } => frame.slice_ref(sql),
            _ => Bytes::new(),
        };
        Ok(sql)
    }

    pub(super) async fn flush_out(&mut self) -> Result<bool, ClientError> {
        self.client.write_all(&self.out).await?;
        self.out.clear();
        Ok(true)
    }
}
