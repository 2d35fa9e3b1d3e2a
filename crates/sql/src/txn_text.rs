//! Transaction-control texts a proxy may answer without a server: `BEGIN` / `START TRANSACTION`
//! and `COMMIT` / `END` / `ROLLBACK` / `ABORT`, read strictly against PostgreSQL's grammar for
//! them (gram.y's `TransactionStmt`). A text this does not accept is not an error: it is one the
//! server must answer, since only the server knows exactly how it fails.

use crate::lexer::{LexOptions, Lexer, TokenKind};

/// A `BEGIN` or `START TRANSACTION` text PostgreSQL certainly accepts (on a primary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrictBegin {
    /// `START TRANSACTION` (its command tag is that, not `BEGIN`).
    pub start: bool,
    /// It names transaction modes (an isolation level, an access mode, deferrability).
    pub modes: bool,
    /// A mode a hot standby refuses at BEGIN: `READ WRITE`, `ISOLATION LEVEL SERIALIZABLE`.
    pub primary_only: bool,
    /// Its last access mode is `READ ONLY` (a later mode overrides an earlier one).
    pub read_only: bool,
}

/// A `COMMIT` / `END` / `ROLLBACK` / `ABORT` text PostgreSQL certainly accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrictEnd {
    /// `COMMIT` or `END` (otherwise `ROLLBACK` or `ABORT`).
    pub commit: bool,
    /// `AND CHAIN`: a transaction with the same modes opens right away.
    pub chain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    Word(&'a [u8]),
    Comma,
}

/// The words and commas of `sql`, comments skipped and one trailing `;` allowed; None if
/// anything else is there (a literal, a quoted identifier, an unterminated comment, a `;`
/// elsewhere). A vertical tab is refused outright: PostgreSQL 15's scanner does not take it for
/// whitespace, later ones do.
fn tokens(sql: &[u8]) -> Option<Vec<Tok<'_>>> {
    if sql.contains(&0x0b) {
        return None;
    }
    let mut out = Vec::with_capacity(8);
    let mut ended = false;
    for t in Lexer::new(sql, LexOptions::default()) {
        let text = sql.get(t.start..t.end)?;
        match t.kind {
            TokenKind::LineComment => continue,
            TokenKind::BlockComment if t.terminated => continue,
            _ if ended => return None,
            TokenKind::Word => out.push(Tok::Word(text)),
            TokenKind::Punct if text == b"," => out.push(Tok::Comma),
            TokenKind::Punct if text == b";" => ended = true,
            _ => return None,
        }
    }
    Some(out)
}

/// A cursor over the tokens, matching keywords case-insensitively.
struct Cursor<'a> {
    toks: Vec<Tok<'a>>,
    at: usize,
}

impl Cursor<'_> {
    fn eat(&mut self, kw: &str) -> bool {
        let hit = matches!(self.toks.get(self.at), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw.as_bytes()));
        self.at += usize::from(hit);
        hit
    }

    fn eat_comma(&mut self) -> bool {
        let hit = self.toks.get(self.at) == Some(&Tok::Comma);
        self.at += usize::from(hit);
        hit
    }

    fn done(&self) -> bool {
        self.at == self.toks.len()
    }
}

/// `BEGIN [WORK | TRANSACTION] [modes]` or `START TRANSACTION [modes]`, where modes are
/// `ISOLATION LEVEL {SERIALIZABLE | REPEATABLE READ | READ COMMITTED | READ UNCOMMITTED}`,
/// `READ WRITE`, `READ ONLY`, `[NOT] DEFERRABLE`, separated by commas or blanks.
pub fn strict_begin(sql: &[u8]) -> Option<StrictBegin> {
    let mut c = Cursor {
        toks: tokens(sql)?,
        at: 0,
    };
    let start = !c.eat("BEGIN");
    if !start {
        let _ = c.eat("WORK") || c.eat("TRANSACTION");
    } else if !(c.eat("START") && c.eat("TRANSACTION")) {
        return None;
    }
    let mut begin = StrictBegin {
        start,
        modes: false,
        primary_only: false,
        read_only: false,
    };
    while !c.done() {
        if begin.modes && c.eat_comma() && c.done() {
            return None;
        }
        if c.eat("ISOLATION") {
            if !c.eat("LEVEL") {
                return None;
            }
            if c.eat("SERIALIZABLE") {
                begin.primary_only = true;
            } else if !((c.eat("REPEATABLE") && c.eat("READ"))
                || (c.eat("READ") && (c.eat("COMMITTED") || c.eat("UNCOMMITTED"))))
            {
                return None;
            }
        } else if c.eat("READ") {
            if c.eat("WRITE") {
                begin.primary_only = true;
                begin.read_only = false;
            } else if c.eat("ONLY") {
                begin.read_only = true;
            } else {
                return None;
            }
        } else if !(c.eat("DEFERRABLE") || (c.eat("NOT") && c.eat("DEFERRABLE"))) {
            return None;
        }
        begin.modes = true;
    }
    Some(begin)
}

/// The `BEGIN` text equivalent to `begin` followed, as the transaction's first statement, by
/// `set`, when `set` is `SET TRANSACTION modes` in the grammar [`strict_begin`] reads: PostgreSQL
/// applies a BEGIN's modes one after the other as SET TRANSACTION does, so appending them gives
/// the same transaction (a later mode overriding an earlier one). None for any other text.
/// Written back from the tokens, comments dropped.
pub fn fold_set_transaction(begin: &[u8], set: &[u8]) -> Option<Vec<u8>> {
    strict_begin(begin)?;
    let set_toks = tokens(set)?;
    let mut c = Cursor {
        toks: set_toks,
        at: 0,
    };
    if !(c.eat("SET") && c.eat("TRANSACTION")) || c.done() || c.eat_comma() {
        return None;
    }
    let modes = c.toks.get(c.at..)?;
    let begin_toks = tokens(begin)?;
    let begin_has_modes = strict_begin(begin)?.modes;
    let mut out = Vec::with_capacity(begin.len() + set.len());
    let push = |t: &Tok<'_>, out: &mut Vec<u8>| match t {
        Tok::Word(w) => {
            if !out.is_empty() {
                out.push(b' ');
            }
            out.extend_from_slice(w);
        }
        Tok::Comma => out.push(b','),
    };
    for t in &begin_toks {
        push(t, &mut out);
    }
    if begin_has_modes {
        out.push(b',');
    }
    for t in modes {
        push(t, &mut out);
    }
    strict_begin(&out)?;
    Some(out)
}

/// `{COMMIT | END | ROLLBACK | ABORT} [WORK | TRANSACTION] [AND [NO] CHAIN]`.
pub fn strict_end(sql: &[u8]) -> Option<StrictEnd> {
    let mut c = Cursor {
        toks: tokens(sql)?,
        at: 0,
    };
    let commit = if c.eat("COMMIT") || c.eat("END") {
        true
    } else if c.eat("ROLLBACK") || c.eat("ABORT") {
        false
    } else {
        return None;
    };
    let _ = c.eat("WORK") || c.eat("TRANSACTION");
    let mut chain = false;
    if c.eat("AND") {
        let no = c.eat("NO");
        if !c.eat("CHAIN") {
            return None;
        }
        chain = !no;
    }
    c.done().then_some(StrictEnd { commit, chain })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_transaction_folds_into_the_begin() {
        for (begin, set, want) in [
            (
                "BEGIN",
                "SET TRANSACTION READ ONLY",
                Some("BEGIN READ ONLY"),
            ),
            (
                "begin read only;",
                "set transaction isolation level serializable;",
                Some("begin read only, isolation level serializable"),
            ),
            (
                "START TRANSACTION /* c */ READ ONLY",
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
                Some("START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE, READ ONLY"),
            ),
            ("BEGIN", "SET TRANSACTION", None),
            ("BEGIN READ ONLY", "SET TRANSACTION , READ WRITE", None),
            ("BEGIN", "SET TRANSACTION SNAPSHOT '00000003-1'", None),
            ("BEGIN", "SET TRANSACTION READ ONLY; SELECT 1", None),
            ("BEGIN", "SET transaction_isolation = serializable", None),
            ("BEGIN", "SET TRANSACTION ISOLATION LEVEL SERIALIZ", None),
            ("BEGIN; SELECT 1", "SET TRANSACTION READ ONLY", None),
        ] {
            let got = fold_set_transaction(begin.as_bytes(), set.as_bytes());
            assert_eq!(got.as_deref(), want.map(str::as_bytes), "{begin} / {set}");
        }
        let folded = fold_set_transaction(
            b"BEGIN READ ONLY",
            b"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        );
        assert!(strict_begin(&folded.unwrap_or_default()).is_some_and(|b| b.primary_only));
    }

    #[test]
    fn begin_texts_postgres_accepts() {
        for (sql, start, modes, primary_only) in [
            ("BEGIN", false, false, false),
            ("begin;", false, false, false),
            ("BEGIN WORK", false, false, false),
            ("start transaction ;", true, false, false),
            (
                "/* c */ BEGIN -- x\n TRANSACTION /* y /* nested */ */",
                false,
                false,
                false,
            ),
            ("BEGIN ISOLATION LEVEL READ UNCOMMITTED", false, true, false),
            (
                "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                false,
                true,
                false,
            ),
            (
                "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                true,
                true,
                true,
            ),
            ("BEGIN READ WRITE", false, true, true),
            ("BEGIN READ ONLY, DEFERRABLE", false, true, false),
            (
                "BEGIN ISOLATION LEVEL READ COMMITTED NOT DEFERRABLE, READ ONLY",
                false,
                true,
                false,
            ),
        ] {
            assert_eq!(
                strict_begin(sql.as_bytes()),
                Some(StrictBegin {
                    start,
                    modes,
                    primary_only,
                    read_only: sql.contains("READ ONLY"),
                }),
                "{sql}"
            );
        }
    }

    #[test]
    fn the_last_access_mode_decides_read_only() {
        for (sql, read_only, primary_only) in [
            ("BEGIN READ ONLY", true, false),
            ("BEGIN READ ONLY, READ WRITE", false, true),
            // The standby refuses the READ WRITE step even though READ ONLY follows.
            ("BEGIN READ WRITE READ ONLY", true, true),
            ("BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY", true, true),
        ] {
            let b = strict_begin(sql.as_bytes()).map(|b| (b.read_only, b.primary_only));
            assert_eq!(b, Some((read_only, primary_only)), "{sql}");
        }
    }

    #[test]
    fn begin_texts_left_to_the_server() {
        for sql in [
            "BEGIN ISOLATION LEVEL READ UNCOMMITED",
            "BEGIN ISOLATION LEVEL bogus",
            "BEGIN ISOLATION LEVEL",
            "BEGIN READ",
            "BEGIN , READ ONLY",
            "BEGIN READ ONLY,",
            "BEGIN READ ONLY,, DEFERRABLE",
            "BEGIN WORK WORK",
            "BEGIN; SELECT 1",
            "BEGIN;;",
            "START WORK",
            "START",
            "\"BEGIN\"",
            "BEGIN /* unterminated",
            "BEGIN\x0b",
            "BEGIN 'x'",
            "SELECT 1",
            "",
        ] {
            assert_eq!(strict_begin(sql.as_bytes()), None, "{sql}");
        }
    }

    #[test]
    fn end_texts() {
        let end = |commit, chain| Some(StrictEnd { commit, chain });
        for (sql, want) in [
            ("COMMIT", end(true, false)),
            ("end work;", end(true, false)),
            ("COMMIT AND CHAIN", end(true, true)),
            ("END TRANSACTION AND NO CHAIN", end(true, false)),
            ("ROLLBACK AND CHAIN", end(false, true)),
            ("abort", end(false, false)),
            ("ROLLBACK TO SAVEPOINT a", None),
            ("COMMIT PREPARED 'x'", None),
            ("COMMIT AND", None),
            ("COMMIT AND NO", None),
            ("COMMIT garbage", None),
            ("COMMIT; COMMIT", None),
        ] {
            assert_eq!(strict_end(sql.as_bytes()), want, "{sql}");
        }
    }
}
