//! Looking at a buffered request before it goes anywhere: its frames up to the Sync or
//! Query that ends it, reduced to what routing needs. Nothing is consumed here.

use std::ops::Range;

use bytes::Bytes;
use std::sync::Arc;

use shardgate_router::{HintTarget, RequestView};
use shardgate_sql::{Classification, Classifier, Hint, ShardgateCommand, TxnControl, WhyWrite};
use shardgate_wire::{peek_header, FrontendRef};

use super::errors::ClientError;
use super::statements::ClientStatements;

/// Where a request's SQL text is, without copying it.
#[derive(Debug, Clone, Default)]
pub(crate) enum SqlText {
    #[default]
    None,
    /// A range of the client buffer.
    Buffer(Range<usize>),
    /// A prepared statement's saved Parse frame and the query's range in it.
    Statement(Bytes, Range<usize>),
}

impl SqlText {
    pub(crate) fn bytes<'a>(&'a self, buf: &'a [u8]) -> &'a [u8] {
        match self {
            SqlText::None => b"",
            SqlText::Buffer(r) => buf.get(r.clone()).unwrap_or_default(),
            SqlText::Statement(b, r) => b.get(r.clone()).unwrap_or_default(),
        }
    }
}

/// What a buffered request is.
#[derive(Debug, Default)]
pub(crate) struct Scanned {
    pub(crate) view: RequestView,
    /// The whole request is buffered (its Sync or Query is there).
    pub(crate) complete: bool,
    /// It runs a COMMIT or ROLLBACK (a Query, or a bound statement; preparing one does not).
    pub(crate) ends_transaction: bool,
    /// It makes the session stick to the primary.
    pub(crate) sticky: bool,
    /// It leaves session state on its server connection (why, for messages): a
    /// transaction-pooled session keeps that connection from then on.
    pub(crate) pins: Option<&'static str>,
    /// It holds a COPY FROM: the server may enter copy-in mode, where any Query sent
    /// behind the request (the read-your-writes probe) would abort the COPY.
    pub(crate) copy_from: bool,
    /// The text the decision log shows.
    pub(crate) sql: SqlText,
    /// The classification that made it a write (or the first one).
    pub(crate) class: Option<Arc<Classification>>,
    /// A lone simple Query that is shardgate's own SET/RESET/SHOW.
    pub(crate) shardgate: Option<ShardgateCommand>,
    /// The same through the extended protocol: a request binding one statement that
    /// is shardgate's own command (or only preparing it), with only
    /// Parse/Bind/Describe/Execute/Sync in it.
    pub(crate) shardgate_extended: Option<ShardgateCommand>,
    /// A lone simple-protocol `BEGIN` with nothing else, in PostgreSQL's exact grammar (may
    /// be deferred).
    pub(crate) lone_begin: bool,
    /// The first transaction-control statement run, if the first statement the request runs is
    /// one (preparing BEGIN or COMMIT does not count: it changes no transaction state).
    pub(crate) first_txn: Option<TxnControl>,
    /// It runs one statement only, a plain COMMIT or ROLLBACK (not `AND CHAIN`): the request a
    /// transaction over several shards can be ended with.
    pub(crate) ends_alone: bool,
    /// Statements seen, over all Query/Parse messages.
    pub(crate) statements: usize,
    /// Statements run (in a Query, or bound), before the one being folded in.
    statements_run: usize,
    /// Transaction-control effects of the statements run (`COMMIT AND CHAIN` counts two).
    txn_run: usize,
    /// The last unnamed Parse's classification (for the session to remember).
    pub(crate) unnamed: Option<Arc<Classification>>,
    /// The last unnamed Parse frame's range in the buffer (sharding reads its parameter types
    /// when a later request binds it).
    pub(crate) unnamed_parse: Option<Range<usize>>,
    /// The first `shard=` or `shard_key=` hint.
    pub(crate) shard_hint: Option<Hint>,
    /// It runs something (a Query, Execute or FunctionCall), rather than only preparing or
    /// describing: only then can it write.
    pub(crate) executes: bool,
    /// Not complete, and so far only Parse and Describe ended by a Flush (asyncpg's prepare):
    /// it runs nothing, and what the client sends next is planned as a request of its own.
    pub(crate) prepare_flushed: bool,
}

/// Folds one text's classification into the request's. `runs`: the text is run by this
/// request (a Query, or a statement bound), not only prepared (a Parse): preparing BEGIN does
/// not open a transaction (nor make the request's reads a read-only transaction's), and
/// preparing COMMIT does not end one.
fn merge(s: &mut Scanned, c: &Arc<Classification>, sql: SqlText, runs: bool) {
    if s.class.is_none() {
        s.class = Some(c.clone());
        s.sql = sql.clone();
    }
    if c.write.is_some() && !s.view.write {
        s.view.write = true;
        s.class = Some(c.clone());
        s.sql = sql;
    }
    if !c.parsed {
        s.view.parsed = false;
    }
    if s.shard_hint.is_none() && matches!(c.hint, Some(Hint::Shard(_) | Hint::ShardKey(_))) {
        s.shard_hint = c.hint.clone();
    }
    if s.view.hint.is_none() {
        s.view.hint = match &c.hint {
            Some(Hint::Primary) => Some(HintTarget::Primary),
            Some(Hint::Replica) => Some(HintTarget::Replica),
            _ => None,
        };
    }
    let txn: &[TxnControl] = if runs { &c.txn } else { &[] };
    s.txn_run += txn.len();
    for t in txn {
        if s.first_txn.is_none() && s.statements_run == 0 {
            s.first_txn = Some(*t);
        }
        match t {
            TxnControl::Begin { read_only } if s.view.begins.is_none() => {
                s.view.begins = Some(*read_only)
            }
            // `BEGIN; SET TRANSACTION READ ONLY` in one request: the transaction is
            // read-only (a read-write one may turn read-only at any point, and the
            // request holds no write, or it goes to the primary anyway).
            TxnControl::SetTransactionReadOnly if s.view.begins == Some(false) => {
                s.view.begins = Some(true)
            }
            TxnControl::Commit | TxnControl::Rollback => s.ends_transaction = true,
            _ => {}
        }
    }
    s.sticky |= c.sticky_primary;
    if s.pins.is_none() {
        s.pins = c.pins_session;
    }
    s.copy_from |= matches!(
        c.write,
        Some(WhyWrite::CopyFrom | WhyWrite::CopyFromStdinThenMore)
    );
    s.statements += c.statements;
    if runs {
        s.statements_run += c.statements;
    }
}

/// Scans the request at the start of `buf`. `unnamed` is the session's unnamed
/// statement from an earlier request, if any.
pub(crate) fn scan(
    buf: &[u8],
    max_len: usize,
    classifier: &Classifier,
    statements: &ClientStatements,
    unnamed: Option<&Arc<Classification>>,
) -> Result<Scanned, ClientError> {
    let mut s = Scanned {
        view: RequestView {
            parsed: true,
            ..RequestView::default()
        },
        ..Scanned::default()
    };
    let mut unnamed = unnamed.cloned();
    // Named statements this request parses: a Bind later in it runs them (JDBC with
    // prepareThreshold=1 sends `BEGIN READ ONLY` as a named Parse+Bind+Execute in front of
    // the transaction's first query), before the session has recorded them.
    let mut parsed_here: Vec<(&[u8], Arc<Classification>, SqlText)> = Vec::new();
    let mut pos = 0;
    let mut messages = 0;
    // For shardgate's own commands in the extended protocol: the bound command, and
    // whether anything else is in the request.
    let mut bound_cmd: Option<ShardgateCommand> = None;
    let mut parsed_cmd: Option<ShardgateCommand> = None;
    let mut binds = 0;
    let mut executes = 0;
    let mut other = false;
    // Only Parse, Describe and Flush so far, ending with the Flush (asyncpg's prepare).
    let mut prepare_flushed = true;
    let mut last_flush = false;
    while let Some(h) = peek_header(&buf[pos..], max_len)? {
        if buf.len() - pos < h.len {
            break;
        }
        let body_start = pos + 5;
        let msg = FrontendRef::decode(h.tag, &buf[body_start..pos + h.len])?;
        messages += 1;
        last_flush = matches!(msg, FrontendRef::Flush);
        prepare_flushed &= matches!(
            msg,
            FrontendRef::Parse(_) | FrontendRef::Describe { .. } | FrontendRef::Flush
        );
        match msg {
            FrontendRef::Query { sql } => {
                s.executes = true;
                let c = classifier.classify(sql);
                let start = body_start;
                merge(&mut s, &c, SqlText::Buffer(start..start + sql.len()), true);
                if messages == 1 {
                    s.shardgate = c.shardgate.clone();
                    // Only a text the server certainly accepts: a held-back BEGIN is
                    // answered before the server sees it.
                    s.lone_begin = c.statements == 1
                        && c.write.is_none()
                        && matches!(c.txn.as_slice(), [TxnControl::Begin { .. }])
                        && shardgate_sql::strict_begin(sql).is_some();
                }
                s.complete = true;
                break;
            }
            FrontendRef::Parse(p) => {
                let c = classifier.classify(p.query);
                let start = p.query.as_ptr() as usize - buf.as_ptr() as usize;
                merge(
                    &mut s,
                    &c,
                    SqlText::Buffer(start..start + p.query.len()),
                    false,
                );
                match &c.shardgate {
                    Some(cmd) => parsed_cmd = Some(cmd.clone()),
                    None => other = true,
                }
                if p.name.is_empty() {
                    unnamed = Some(c);
                    s.unnamed_parse = Some(pos..pos + h.len);
                } else {
                    let text = SqlText::Buffer(start..start + p.query.len());
                    parsed_here.retain(|(name, _, _)| *name != p.name);
                    parsed_here.push((p.name, c, text));
                }
            }
            FrontendRef::Bind(b) => {
                let here = parsed_here
                    .iter()
                    .find(|(name, _, _)| !b.statement.is_empty() && *name == b.statement);
                let c = if b.statement.is_empty() {
                    unnamed.clone().map(|c| (c, SqlText::None))
                } else if let Some((_, c, text)) = here {
                    Some((c.clone(), text.clone()))
                } else {
                    statements.get(b.statement).map(|p| {
                        (
                            p.class.clone(),
                            SqlText::Statement(p.parse.clone(), p.query.clone()),
                        )
                    })
                };
                binds += 1;
                if let Some((c, _)) = &c {
                    bound_cmd = c.shardgate.clone();
                }
                match c {
                    Some((c, text)) => merge(&mut s, &c, text, true),
                    // A statement shardgate does not know: the server will say so; be safe.
                    None => s.view.write = true,
                }
            }
            FrontendRef::Sync | FrontendRef::FunctionCall(_) => {
                if matches!(msg, FrontendRef::FunctionCall(_)) {
                    s.executes = true;
                    executes += 1;
                    s.view.write = true;
                    other = true;
                    // Called by OID: it may take a session advisory lock, say, and nothing
                    // here can tell.
                    s.pins = s.pins.or(Some(shardgate_sql::pin_reason::FASTPATH_CALL));
                }
                s.complete = true;
                break;
            }
            FrontendRef::Execute { .. } => {
                s.executes = true;
                executes += 1;
            }
            FrontendRef::Describe { .. } => {}
            _ => other = true,
        }
        pos += h.len;
    }
    s.prepare_flushed = !s.complete && prepare_flushed && last_flush;
    if !s.complete && !s.prepare_flushed {
        // The rest of the request is not here yet: it could write. A prepare that waits on its
        // Flush ran nothing: the statements it prepares decide (a write or an unparsed one
        // already made it a write), and whatever follows on that connection before its Sync is
        // the server's to refuse (a write on a replica fails with 25006, never silently).
        s.view.write = true;
    }
    if s.complete && !other {
        // One command bound and run, or only prepared/described (Parse, Describe, Sync).
        s.shardgate_extended = match binds {
            1 => bound_cmd,
            0 => parsed_cmd,
            _ => None,
        };
    }
    s.view.ends_transaction =
        matches!(s.first_txn, Some(TxnControl::Commit | TxnControl::Rollback));
    // Binds and Executes counted too: a statement bound that shardgate does not know is not
    // folded in, and a portal may run twice.
    s.ends_alone = s.complete
        && s.statements_run == 1
        && s.txn_run == 1
        && binds <= 1
        && executes <= 1
        && matches!(s.first_txn, Some(TxnControl::Commit | TxnControl::Rollback));
    s.unnamed = unnamed;
    Ok(s)
}
