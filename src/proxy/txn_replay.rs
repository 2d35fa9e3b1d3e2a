//! What a shard that joins an open transaction must run first so that it is in the same
//! transaction state as the shards already in it: the client's BEGIN as written, then, in order,
//! every statement run so far that changed the transaction's state (`SET TRANSACTION`,
//! `SET LOCAL`, `SET CONSTRAINTS`, `set_config(..., true)`, a session-level `SET` or `RESET`,
//! `SAVEPOINT`, `RELEASE`, `ROLLBACK TO`). A parked shard catches up from where it left. Recorded only inside a
//! transaction on a sharded setup; never reads a socket.
//!
//! The whole history is replayed, not a summary of it: savepoints that were released or rolled
//! back to, and a statement that failed and was rolled back to a savepoint, come out the same
//! on the joining shard (each replayed statement is a request of its own, so a failure does not
//! skip the ones after it).

use bytes::Bytes;
use shardgate_sql::{called_functions, leading_keywords, Classifier, Keywords};
use shardgate_wire::{peek_header, ErrorFields, FrontendRef};
use tokio::io::{AsyncRead, AsyncWrite};

use super::errors::ClientError;
use super::session::Session;
use super::sqlstate;

/// Past this many recorded statements a transaction stops recording and may not join another
/// shard: replaying an unbounded history would make each join slower than the last.
const MAX_STEPS: usize = 4096;

/// The open transaction's replayable state.
#[derive(Debug, Default)]
pub(super) struct TxnReplay {
    /// The client's BEGIN or START TRANSACTION as written; None outside a transaction.
    begin: Option<Bytes>,
    /// The state-changing statements of requests already sent, in order.
    steps: Vec<Bytes>,
    /// Those of the request being planned: they join `steps` once it is sent, and are dropped
    /// if it is refused (it never ran).
    staged: Vec<Bytes>,
    /// Something changed the transaction's state in a way shardgate cannot replay (why): it
    /// may not join another shard from then on.
    opaque: Option<&'static str>,
    /// `opaque` of the request being planned.
    staged_opaque: Option<&'static str>,
    /// Portals the client opened on a query across shards in this transaction: their rows
    /// were merged in one Execute and no shard keeps the portal (see `scatter_request.rs`).
    pub(super) scatter_portals: Vec<Bytes>,
}

impl TxnReplay {
    /// The transaction ended: nothing to replay.
    pub(super) fn clear(&mut self) {
        self.begin = None;
        self.steps.clear();
        self.staged.clear();
        self.opaque = None;
        self.staged_opaque = None;
        self.scatter_portals.clear();
    }

    /// A transaction is being recorded.
    pub(super) fn active(&self) -> bool {
        self.begin.is_some()
    }

    /// The transaction's BEGIN, if one was seen.
    pub(super) fn begin(&self) -> Option<&Bytes> {
        self.begin.as_ref()
    }

    /// A held-back BEGIN starts the transaction.
    pub(super) fn start(&mut self, begin: Bytes) {
        self.clear();
        self.begin = Some(begin);
    }

    /// The request planned before this one was sent: its statements count from now on.
    pub(super) fn settle(&mut self) {
        if self.staged_opaque.is_some() && self.opaque.is_none() {
            self.opaque = self.staged_opaque.take();
        }
        self.staged_opaque = None;
        if self.steps.len() + self.staged.len() > MAX_STEPS {
            self.staged.clear();
            self.opaque.get_or_insert(
                "more than 4096 statements changed its state (savepoints, SET LOCAL)",
            );
            return;
        }
        self.steps.append(&mut self.staged);
    }

    /// The request being planned was refused: none of it ran.
    pub(super) fn drop_staged(&mut self) {
        self.staged.clear();
        self.staged_opaque = None;
    }

    /// How many steps a connection has run once it ran the request being planned.
    pub(super) fn position_after_request(&self) -> usize {
        self.steps.len() + self.staged.len()
    }

    /// How many steps a connection has run when it did not run the request being planned.
    pub(super) fn position(&self) -> usize {
        self.steps.len()
    }

    /// What a new connection must run to join the transaction (None: no replayable state,
    /// the caller refuses). `held` is the held-back BEGIN when the transaction has not
    /// started on any server yet.
    pub(super) fn for_new(&self, held: Option<&Bytes>) -> Option<Vec<Bytes>> {
        if self.opaque.is_some() {
            return None;
        }
        let begin = self
            .begin
            .clone()
            .or_else(|| held.cloned())
            .unwrap_or_else(|| Bytes::from_static(b"BEGIN"));
        let mut out = Vec::with_capacity(1 + self.steps.len());
        out.push(begin);
        out.extend(self.steps.iter().cloned());
        Some(out)
    }

    /// What a parked connection that ran `pos` steps must run to catch up (None: it cannot).
    pub(super) fn since(&self, pos: usize) -> Option<&[Bytes]> {
        // The unreplayable statement ran on the current connection only, after this one was
        // parked.
        if self.opaque.is_some() {
            return None;
        }
        Some(self.steps.get(pos..).unwrap_or_default())
    }

    /// What a parked connection that ran `pos` steps missed, replayable or not: before it
    /// decides the transaction's end, where an unreplayable setting no longer matters but a
    /// rollback to a savepoint does.
    /// `SET TRANSACTION` is left out: after the connection's first query it could only fail
    /// (and abort what is to be committed), and it changes nothing a COMMIT does.
    pub(super) fn since_unchecked(&self, pos: usize) -> impl Iterator<Item = &Bytes> {
        self.steps
            .get(pos..)
            .unwrap_or_default()
            .iter()
            .filter(|s| !leading_keywords(s).starts_with(&["SET", "TRANSACTION"]))
    }

    /// Why the transaction cannot join another shard, for the client's error.
    pub(super) fn refusal(&self) -> ErrorFields {
        let why = self.opaque.unwrap_or("its state could not be recorded");
        ErrorFields::new(
            "ERROR",
            sqlstate::FEATURE_NOT_SUPPORTED,
            "shardgate: this statement needs a shard the transaction has not reached in the same state",
        )
        .with(
            b'D',
            format!(
                "The transaction's state cannot be replayed on another shard: {why}. Nothing of \
                 the request ran; the transaction was rolled back on every shard it touched."
            ),
        )
        .with(
            b'H',
            "Touch every shard the transaction needs before changing its state that way (or \
             use SET LOCAL / set_config(..., true) with literal values in a SELECT of its own), \
             or run the statement in a transaction of its own. Issue ROLLBACK to end this one.",
        )
    }

    /// Folds in one SQL text the request being planned runs (a Query's text, or a bound
    /// statement's), statement by statement.
    pub(super) fn note_text(&mut self, text: &[u8], classifier: &Classifier) {
        let class = classifier.classify(text);
        if class.txn.is_empty() && !contains_set(text) {
            return;
        }
        if class.statements <= 1 {
            self.note_statement(text, classifier);
            return;
        }
        for range in shardgate_sql::split_statements(text, shardgate_sql::LexOptions::default()) {
            if let Some(stmt) = text.get(range) {
                self.note_statement(stmt, classifier);
            }
        }
    }

    fn note_statement(&mut self, stmt: &[u8], classifier: &Classifier) {
        let kw = leading_keywords(stmt);
        let w = |i: usize| kw.get(i).unwrap_or("");
        match w(0) {
            "BEGIN" | "START" if w(0) == "BEGIN" || w(1) == "TRANSACTION" => {
                // A BEGIN inside a transaction only warns.
                if self.begin.is_none() {
                    self.start(Bytes::copy_from_slice(stmt));
                }
                return;
            }
            "ROLLBACK" | "ABORT" if rolls_back_to(&kw) => self.record(stmt),
            "COMMIT" | "ROLLBACK" if w(1) == "PREPARED" => {}
            "COMMIT" | "END" | "ROLLBACK" | "ABORT" => {
                if and_chain(stmt) {
                    self.chain();
                } else {
                    self.clear();
                }
                return;
            }
            "PREPARE" if w(1) == "TRANSACTION" => {
                self.clear();
                return;
            }
            "SAVEPOINT" | "RELEASE" => self.record(stmt),
            // Its body is not read here: one that may set a value for the transaction
            // (`SET LOCAL`, `set_config(..., true)`) cannot be replayed. A session-level SET in
            // it pins the session.
            "DO" if contains_ci(stmt, b"local") || contains_ci(stmt, b"set_config") => {
                self.mark_opaque(
                    "a DO block ran that may have set a value with SET LOCAL or \
                     set_config(..., true)",
                );
                return;
            }
            "SET" if w(1) == "TRANSACTION" && w(2) == "SNAPSHOT" => {
                self.mark_opaque("SET TRANSACTION SNAPSHOT names one server's snapshot")
            }
            "SET" if matches!(w(1), "LOCAL" | "TRANSACTION" | "CONSTRAINTS") => self.record(stmt),
            // A session-level SET or RESET holds for the rest of the transaction on the
            // connection it ran on (`SET transaction_isolation` is SET TRANSACTION; a RESET
            // undoes a SET LOCAL) and is undone by its rollback: the other shards run it too,
            // and the written shard before it commits it. Not shardgate's own settings.
            "SET" | "RESET" if classifier.classify(stmt).shardgate.is_none() => self.record(stmt),
            _ => {}
        }
        if !contains_set(stmt) {
            return;
        }
        let functions = called_functions(stmt);
        if functions.iter().any(|f| f == "set_config") {
            if classifier.classify(stmt).pins_session.is_some() {
                // A session setting: not the transaction's state (the session is pinned).
                return;
            }
            let only_settings = functions
                .iter()
                .all(|f| matches!(f.as_str(), "set_config" | "current_setting"));
            if w(0) == "SELECT"
                && only_settings
                && !shardgate_sql::has_keyword(stmt, "FROM")
                && !has_parameter(stmt)
            {
                // `SELECT set_config(...)` with values written out: running it again has no
                // other effect.
                self.record(stmt);
            } else {
                self.mark_opaque(
                    "set_config(..., true) ran in a statement shardgate cannot run again \
                     (only SELECT set_config(...) with values written out can be)",
                );
            }
        }
    }

    fn record(&mut self, stmt: &[u8]) {
        if self.begin.is_some() {
            self.staged.push(Bytes::copy_from_slice(stmt));
        }
    }

    fn mark_opaque(&mut self, why: &'static str) {
        if self.begin.is_some() {
            self.staged_opaque.get_or_insert(why);
        }
    }

    /// `COMMIT AND CHAIN` / `ROLLBACK AND CHAIN`: a new transaction with the same
    /// characteristics (its BEGIN and SET TRANSACTION), without its SET LOCALs or savepoints.
    fn chain(&mut self) {
        if self.begin.is_none() {
            return;
        }
        let mut kept: Vec<Bytes> = Vec::new();
        let mut savepoints = false;
        for s in self.steps.iter().chain(&self.staged) {
            let kw = leading_keywords(s);
            match (kw.get(0), kw.get(1)) {
                (Some("SET"), Some("TRANSACTION")) => kept.push(s.clone()),
                (Some("SAVEPOINT" | "RELEASE" | "ROLLBACK" | "ABORT"), _) => savepoints = true,
                _ => {}
            }
        }
        let opaque = self.opaque.or(self.staged_opaque);
        self.steps.clear();
        self.staged = kept;
        self.staged_opaque = if savepoints {
            // A SET TRANSACTION under a savepoint rolled back to no longer holds; which ones
            // do is not worked out here.
            Some("it was chained (AND CHAIN) after savepoints")
        } else {
            opaque
        };
        self.opaque = None;
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Records what the buffered request (inside a transaction, or beginning one) changes in
    /// the transaction's state: the SQL of each Query and of each statement it binds, in order.
    /// The request planned before it was sent, so its changes count from now on.
    pub(super) fn note_txn_state(&mut self, classifier: &Classifier) -> Result<(), ClientError> {
        self.txn.settle();
        let buf = &self.cbuf[..];
        // Statements this request prepares, for its own Binds.
        let mut parsed: Vec<(&[u8], &[u8])> = Vec::new();
        let mut pos = 0;
        while let Some(h) = peek_header(&buf[pos..], self.max_len)? {
            if buf.len() - pos < h.len {
                break;
            }
            match FrontendRef::decode(h.tag, &buf[pos + 5..pos + h.len])? {
                FrontendRef::Query { sql } => {
                    self.txn.note_text(sql, classifier);
                    break;
                }
                FrontendRef::Parse(p) => parsed.push((p.name, p.query)),
                FrontendRef::Bind(b) => {
                    let own = parsed.iter().rev().find(|(n, _)| *n == b.statement);
                    if let Some((_, sql)) = own {
                        self.txn.note_text(sql, classifier);
                    } else if b.statement.is_empty() {
                        let frame = self.unnamed_parse.as_ref().and_then(|f| f.get(5..));
                        if let Some(Ok(FrontendRef::Parse(p))) =
                            frame.map(|f| FrontendRef::decode(b'P', f))
                        {
                            self.txn.note_text(p.query, classifier);
                        }
                    } else if let Some(p) = self.statements.get(b.statement) {
                        if let Some(sql) = p.parse.get(p.query.clone()) {
                            self.txn.note_text(sql, classifier);
                        }
                    }
                }
                FrontendRef::Sync | FrontendRef::FunctionCall(_) => break,
                _ => {}
            }
            pos += h.len;
        }
        Ok(())
    }
}

/// `ROLLBACK [WORK | TRANSACTION] TO ...` (also with ABORT).
fn rolls_back_to(kw: &Keywords) -> bool {
    kw.get(1) == Some("TO")
        || (matches!(kw.get(1), Some("WORK" | "TRANSACTION")) && kw.get(2) == Some("TO"))
}

/// `... AND CHAIN`, not `AND NO CHAIN`.
fn and_chain(stmt: &[u8]) -> bool {
    shardgate_sql::has_keyword(stmt, "CHAIN") && !shardgate_sql::has_keyword(stmt, "NO")
}

/// A quick filter: every statement recorded here but a transaction-control one holds `set`.
fn contains_set(text: &[u8]) -> bool {
    contains_ci(text, b"set")
}

/// `text` holds `word` (lowercase), in any case.
fn contains_ci(text: &[u8], word: &[u8]) -> bool {
    text.windows(word.len())
        .any(|w| w.eq_ignore_ascii_case(word))
}

/// `$1` and the like anywhere (a literal holding one counts too: replaying is refused then,
/// which is safe).
fn has_parameter(stmt: &[u8]) -> bool {
    stmt.windows(2)
        .any(|w| w[0] == b'$' && w[1].is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier() -> Classifier {
        Classifier::new(64, &[])
    }

    fn texts(v: &[Bytes]) -> Vec<&str> {
        v.iter()
            .map(|b| std::str::from_utf8(b).unwrap_or("?"))
            .collect()
    }

    fn run(r: &mut TxnReplay, c: &Classifier, sql: &str) {
        r.settle();
        r.note_text(sql.as_bytes(), c);
    }

    #[test]
    fn replays_begin_as_written_then_state_in_order() {
        let c = classifier();
        let mut r = TxnReplay::default();
        run(&mut r, &c, "begin isolation level serializable, read only");
        run(&mut r, &c, "SELECT 1");
        run(
            &mut r,
            &c,
            "SET LOCAL TimeZone = 'Asia/Tokyo'; SAVEPOINT a; SELECT 2",
        );
        run(&mut r, &c, "SELECT set_config('app.t', 'x', true)");
        r.settle();
        let new = r.for_new(None).unwrap_or_default();
        assert_eq!(
            texts(&new),
            [
                "begin isolation level serializable, read only",
                "SET LOCAL TimeZone = 'Asia/Tokyo'",
                "SAVEPOINT a",
                "SELECT set_config('app.t', 'x', true)"
            ]
        );
        assert_eq!(
            texts(r.since(1).unwrap_or_default()),
            ["SAVEPOINT a", "SELECT set_config('app.t', 'x', true)"]
        );
    }

    #[test]
    fn refused_request_leaves_nothing_and_end_clears() {
        let c = classifier();
        let mut r = TxnReplay::default();
        run(&mut r, &c, "BEGIN");
        run(&mut r, &c, "SAVEPOINT a");
        r.drop_staged();
        r.settle();
        assert_eq!(texts(&r.for_new(None).unwrap_or_default()), ["BEGIN"]);
        run(&mut r, &c, "ROLLBACK TO SAVEPOINT a");
        run(&mut r, &c, "COMMIT");
        assert!(!r.active());
        run(&mut r, &c, "SET LOCAL a.b = 1");
        r.settle();
        assert_eq!(r.position(), 0);
    }

    #[test]
    fn unreplayable_state_refuses_joins() {
        let c = classifier();
        for sql in [
            "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
            "SELECT set_config('a.b', $1, true)",
            "SELECT set_config('a.b', 'c', true), nextval('s')",
            "SELECT set_config('a.b', x, true) FROM t",
            "UPDATE t SET x = 1 WHERE set_config('a.b', 'c', true) IS NOT NULL",
            "DO $$BEGIN PERFORM set_config('a.b', 'c', true); END$$",
            "DO $$BEGIN SET LOCAL a.b = 'c'; END$$",
        ] {
            let mut r = TxnReplay::default();
            run(&mut r, &c, "BEGIN");
            run(&mut r, &c, sql);
            assert!(r.for_new(None).is_some(), "{sql}: not before it was sent");
            r.settle();
            assert!(r.for_new(None).is_none(), "{sql}");
            assert!(r.since(0).is_none(), "{sql}");
        }
        let mut r = TxnReplay::default();
        run(&mut r, &c, "BEGIN");
        run(&mut r, &c, "SELECT set_config('a.b', 'c', false)");
        r.settle();
        assert_eq!(texts(&r.for_new(None).unwrap_or_default()), ["BEGIN"]);
    }

    #[test]
    fn session_sets_in_the_transaction_are_replayed_but_not_shardgates_own() {
        let c = classifier();
        let mut r = TxnReplay::default();
        run(&mut r, &c, "BEGIN");
        run(&mut r, &c, "SET transaction_isolation = 'serializable'");
        run(&mut r, &c, "SET shardgate.target = 'primary'");
        run(
            &mut r,
            &c,
            "SET LOCAL TimeZone = 'Asia/Tokyo'; RESET TimeZone; RESET ALL",
        );
        r.settle();
        assert_eq!(
            texts(&r.for_new(None).unwrap_or_default()),
            [
                "BEGIN",
                "SET transaction_isolation = 'serializable'",
                "SET LOCAL TimeZone = 'Asia/Tokyo'",
                "RESET TimeZone",
                "RESET ALL"
            ]
        );
    }

    #[test]
    fn chain_keeps_characteristics_only() {
        let c = classifier();
        let mut r = TxnReplay::default();
        run(&mut r, &c, "START TRANSACTION");
        run(&mut r, &c, "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE");
        run(&mut r, &c, "SET LOCAL a.b = 1");
        run(&mut r, &c, "COMMIT AND CHAIN");
        r.settle();
        assert_eq!(
            texts(&r.for_new(None).unwrap_or_default()),
            [
                "START TRANSACTION",
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"
            ]
        );
        run(&mut r, &c, "SAVEPOINT s");
        run(&mut r, &c, "ROLLBACK AND CHAIN");
        r.settle();
        assert!(r.for_new(None).is_none());
        run(&mut r, &c, "ROLLBACK AND NO CHAIN");
        assert!(!r.active());
    }

    #[test]
    fn held_begin_opens_a_new_shard() {
        let r = TxnReplay::default();
        let held = Bytes::from_static(b"BEGIN ISOLATION LEVEL REPEATABLE READ");
        assert_eq!(
            texts(&r.for_new(Some(&held)).unwrap_or_default()),
            ["BEGIN ISOLATION LEVEL REPEATABLE READ"]
        );
        assert_eq!(
            texts(&TxnReplay::default().for_new(None).unwrap_or_default()),
            ["BEGIN"]
        );
    }
}
