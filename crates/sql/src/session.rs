//! Recognises the statements that change session state a transaction pooler must track or
//! replay (`SET`, `RESET`, `DISCARD`, `DEALLOCATE`), following the shapes of PostgreSQL's
//! grammar (`VariableSetStmt`, `VariableResetStmt`, `DiscardStmt`, `DeallocateStmt`).
//!
//! It reads tokens from the shared scanner, so comments anywhere and odd whitespace are fine, and
//! it keeps a `SET` value as the raw source text: the pooler replays it verbatim rather than
//! re-printing a parsed form (re-printing is where quoting bugs come from).

use crate::lexer::{LexOptions, Lexer, Token, TokenKind};

/// A statement that changes session state that a transaction pooler must track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    /// `SET [SESSION] name {TO|=} value`, and the special forms mapped to their parameter:
    /// `SET TIME ZONE v` (`timezone`), `SET SCHEMA 'x'` (`search_path`), `SET NAMES 'x'`
    /// (`client_encoding`), `SET ROLE x` (`role`), `SET SESSION AUTHORIZATION x`
    /// (`session_authorization`), `SET XML OPTION x` (`xmloption`).
    ///
    /// `name` is lowercased (quoted identifiers keep their case), dotted names allowed
    /// (`myapp.tenant`). `value` is the raw source text after `TO`/`=` (or after the special
    /// form's keywords), with surrounding whitespace and comments trimmed, e.g. `'UTC'`, `10s`,
    /// `public, "My Schema"`.
    Set {
        /// The parameter name.
        name: String,
        /// The value as written.
        value: String,
    },
    /// `RESET name`, `SET name TO DEFAULT`, `SET TIME ZONE LOCAL`, `SET NAMES` and the like.
    Reset {
        /// The parameter name.
        name: String,
    },
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD ALL`.
    DiscardAll,
    /// `DISCARD PLANS | SEQUENCES | TEMP | TEMPORARY`.
    Discard,
    /// `DEALLOCATE [PREPARE] name`, or `DEALLOCATE [PREPARE] ALL` (`None`).
    Deallocate {
        /// The prepared statement's name; `None` for `ALL`.
        name: Option<String>,
    },
    /// `SET LOCAL ...`, `SET TRANSACTION ...`, `SET SESSION CHARACTERISTICS ...`,
    /// `SET CONSTRAINTS ...`, `SET name FROM CURRENT`, `RESET TRANSACTION ISOLATION LEVEL`:
    /// settings that end with the transaction, so there is nothing to track.
    Local,
}

/// `Some(cmd)` if `stmt` (one statement, as [`crate::split_statements`] cuts it) is one of the
/// [`SessionCommand`] forms; `None` otherwise, including for malformed ones the server would
/// reject and for names or values that are not valid UTF-8. Reads literals with the default
/// [`LexOptions`]; see [`session_command_with`].
pub fn session_command(stmt: &[u8]) -> Option<SessionCommand> {
    session_command_with(stmt, LexOptions::default())
}

/// [`session_command`] for a session whose `standard_conforming_strings` may be off, which
/// changes where a `'...'` value with backslashes ends.
pub fn session_command_with(stmt: &[u8], opts: LexOptions) -> Option<SessionCommand> {
    let mut c = Cursor {
        src: stmt,
        lexer: Lexer::new(stmt, opts),
    };
    let first = c.next()?;
    if c.is(first, "SET") {
        parse_set(&mut c)
    } else if c.is(first, "RESET") {
        parse_reset(&mut c)
    } else if c.is(first, "DISCARD") {
        let what = c.next()?;
        let cmd = if c.is(what, "ALL") {
            SessionCommand::DiscardAll
        } else if ["PLANS", "SEQUENCES", "TEMP", "TEMPORARY"]
            .iter()
            .any(|k| c.is(what, k))
        {
            SessionCommand::Discard
        } else {
            return None;
        };
        c.at_end().then_some(cmd)
    } else if c.is(first, "DEALLOCATE") {
        parse_deallocate(&mut c)
    } else {
        None
    }
}

/// A transaction-control statement, read as far as a pooler tracking session settings needs:
/// which transaction or savepoint it ends, and whether a new transaction follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionCommand {
    /// `BEGIN`, `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `END`; `chain`: `AND CHAIN`.
    Commit {
        /// A new transaction with the same characteristics starts at once.
        chain: bool,
    },
    /// `ROLLBACK`, `ABORT`; `chain`: `AND CHAIN`.
    Rollback {
        /// A new transaction with the same characteristics starts at once.
        chain: bool,
    },
    /// `PREPARE TRANSACTION 'gid'`: the session's part of the transaction ends as with COMMIT.
    Prepare,
    /// `SAVEPOINT name`.
    Savepoint {
        /// The savepoint's name, as the server folds it.
        name: String,
    },
    /// `RELEASE [SAVEPOINT] name`.
    Release {
        /// The savepoint's name, as the server folds it.
        name: String,
    },
    /// `ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name`.
    RollbackTo {
        /// The savepoint's name, as the server folds it.
        name: String,
    },
}

/// The parameter a `SET LOCAL name {TO | =} DEFAULT` (or `SET LOCAL TIME ZONE LOCAL` and the
/// like) puts back to its reset value for the rest of the transaction; `None` for any other
/// statement, a `SET LOCAL` to a value included. [`session_command`] reads every `SET LOCAL` as
/// [`SessionCommand::Local`], which has nothing to track; a pooler that gives a client reset
/// values of its own needs the name.
pub fn set_local_default(stmt: &[u8], opts: LexOptions) -> Option<String> {
    let mut c = Cursor {
        src: stmt,
        lexer: Lexer::new(stmt, opts),
    };
    let first = c.next()?;
    if !c.is(first, "SET") || !c.eat("LOCAL") {
        return None;
    }
    match parse_set(&mut c)? {
        SessionCommand::Reset { name } => Some(name),
        _ => None,
    }
}

/// `Some(cmd)` if `stmt` (one statement) is a [`TransactionCommand`]. `COMMIT PREPARED` and
/// `ROLLBACK PREPARED` are not: they end another, prepared transaction. The options of `BEGIN`
/// are not checked; the server's answer says whether it ran.
pub fn transaction_command(stmt: &[u8]) -> Option<TransactionCommand> {
    let mut c = Cursor {
        src: stmt,
        lexer: Lexer::new(stmt, LexOptions::default()),
    };
    let first = c.next()?;
    if first.kind != TokenKind::Word {
        return None;
    }
    let word = std::str::from_utf8(c.text(first))
        .ok()?
        .to_ascii_uppercase();
    let (commit, rollback) = match word.as_str() {
        "BEGIN" => return Some(TransactionCommand::Begin),
        "START" => return c.eat("TRANSACTION").then_some(TransactionCommand::Begin),
        "PREPARE" => return c.eat("TRANSACTION").then_some(TransactionCommand::Prepare),
        "SAVEPOINT" => {
            let name = savepoint_name(&mut c)?;
            return Some(TransactionCommand::Savepoint { name });
        }
        "RELEASE" => {
            c.eat("SAVEPOINT");
            let name = savepoint_name(&mut c)?;
            return Some(TransactionCommand::Release { name });
        }
        "COMMIT" | "END" => (true, false),
        "ROLLBACK" | "ABORT" => (false, true),
        _ => return None,
    };
    if c.eat("PREPARED") {
        return None;
    }
    let _ = c.eat("WORK") || c.eat("TRANSACTION");
    if rollback && word == "ROLLBACK" && c.eat("TO") {
        c.eat("SAVEPOINT");
        let name = savepoint_name(&mut c)?;
        return Some(TransactionCommand::RollbackTo { name });
    }
    let chain = c.eat("AND") && !c.eat("NO") && c.eat("CHAIN");
    Some(if commit {
        TransactionCommand::Commit { chain }
    } else {
        TransactionCommand::Rollback { chain }
    })
}

/// A savepoint's name as the server keeps it: like every identifier, cut to its first 63 bytes
/// (NAMEDATALEN - 1, on a character boundary), so that two long names sharing those bytes name
/// the same savepoint.
fn savepoint_name(c: &mut Cursor<'_>) -> Option<String> {
    const MAX_IDENTIFIER_BYTES: usize = 63;
    let t = c.next()?;
    let mut name = ident(c, t)?;
    if name.len() > MAX_IDENTIFIER_BYTES {
        let mut end = MAX_IDENTIFIER_BYTES;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    c.at_end().then_some(name)
}

/// The statement's tokens with comments skipped. Cloning it is a cheap look-ahead.
#[derive(Clone)]
struct Cursor<'a> {
    src: &'a [u8],
    lexer: Lexer<'a>,
}

impl<'a> Cursor<'a> {
    fn next(&mut self) -> Option<Token> {
        self.lexer.by_ref().find(|t| !t.is_comment())
    }

    fn peek(&self) -> Option<Token> {
        self.clone().next()
    }

    fn at_end(&self) -> bool {
        self.peek().is_none()
    }

    fn text(&self, t: Token) -> &'a [u8] {
        self.src.get(t.start..t.end).unwrap_or_default()
    }

    /// True when `t` is the bare word `kw` (given in uppercase), in any case.
    fn is(&self, t: Token, kw: &str) -> bool {
        t.kind == TokenKind::Word && self.text(t).eq_ignore_ascii_case(kw.as_bytes())
    }

    fn is_punct(&self, t: Token, p: u8) -> bool {
        t.kind == TokenKind::Punct && self.text(t) == [p]
    }

    /// Consumes the next token if it is the word `kw`.
    fn eat(&mut self, kw: &str) -> bool {
        match self.peek() {
            Some(t) if self.is(t, kw) => {
                self.next();
                true
            }
            _ => false,
        }
    }

    /// The rest of the statement as raw text, trimmed of whitespace and comments at both ends,
    /// and whether it is exactly one word `DEFAULT`-like keyword from `resets`.
    fn rest(&mut self, resets: &[&str]) -> Option<Value> {
        let first = self.next()?;
        let mut last = first;
        while let Some(t) = self.next() {
            last = t;
        }
        let is_reset = first == last && resets.iter().any(|k| self.is(first, k));
        let text = std::str::from_utf8(self.src.get(first.start..last.end)?).ok()?;
        Some(if is_reset {
            Value::Default
        } else {
            Value::Text(text.to_owned())
        })
    }
}

enum Value {
    Default,
    Text(String),
}

fn set_or_reset(name: &str, value: Value) -> SessionCommand {
    match value {
        Value::Default => SessionCommand::Reset {
            name: name.to_owned(),
        },
        Value::Text(value) => SessionCommand::Set {
            name: name.to_owned(),
            value,
        },
    }
}

/// One name part: a bare word lowercased as the server downcases it, or a quoted identifier with
/// `""` undoubled. `U&"..."` names are not decoded and give `None`.
fn ident(c: &Cursor<'_>, t: Token) -> Option<String> {
    let text = std::str::from_utf8(c.text(t)).ok()?;
    match t.kind {
        TokenKind::Word => Some(text.to_ascii_lowercase()),
        TokenKind::QuotedIdent if t.terminated && text.starts_with('"') => {
            Some(text.get(1..text.len() - 1)?.replace("\"\"", "\""))
        }
        _ => None,
    }
}

/// `var_name: ColId | var_name '.' ColId`.
fn var_name(c: &mut Cursor<'_>) -> Option<String> {
    let first = c.next()?;
    let mut name = ident(c, first)?;
    while let Some(dot) = c.peek() {
        if !c.is_punct(dot, b'.') {
            break;
        }
        c.next();
        let part = c.next()?;
        name.push('.');
        name.push_str(&ident(c, part)?);
    }
    Some(name)
}

/// If the cursor is at `var_name {TO | =}`, consumes it and returns the name. Checked before the
/// special forms so a parameter that happens to share a keyword (`SET role TO x`) reads as one.
fn generic_name(c: &mut Cursor<'_>) -> Option<String> {
    let mut ahead = c.clone();
    let name = var_name(&mut ahead)?;
    let op = ahead.next()?;
    if ahead.is(op, "TO") || ahead.is_punct(op, b'=') {
        *c = ahead;
        Some(name)
    } else {
        None
    }
}

fn parse_set(c: &mut Cursor<'_>) -> Option<SessionCommand> {
    if let Some(name) = generic_name(c) {
        return generic_value(c, &name);
    }
    if c.eat("LOCAL") {
        return Some(SessionCommand::Local);
    }
    if c.eat("SESSION") {
        if let Some(name) = generic_name(c) {
            return generic_value(c, &name);
        }
        if c.eat("AUTHORIZATION") {
            return Some(set_or_reset("session_authorization", c.rest(&["DEFAULT"])?));
        }
    }
    let before_kw = c.clone();
    let kw = c.next()?;
    if ["TRANSACTION", "CHARACTERISTICS", "CONSTRAINTS"]
        .iter()
        .any(|k| c.is(kw, k))
    {
        Some(SessionCommand::Local)
    } else if c.is(kw, "TIME") && c.eat("ZONE") {
        Some(set_or_reset("timezone", c.rest(&["DEFAULT", "LOCAL"])?))
    } else if c.is(kw, "SCHEMA") {
        Some(set_or_reset(
            "search_path",
            Value::Text(text_of(c.rest(&[])?)),
        ))
    } else if c.is(kw, "NAMES") {
        // `SET NAMES` with no encoding restores the default, as the grammar's `opt_encoding`.
        match c.rest(&["DEFAULT"]) {
            None => Some(set_or_reset("client_encoding", Value::Default)),
            Some(v) => Some(set_or_reset("client_encoding", v)),
        }
    } else if c.is(kw, "ROLE") {
        Some(set_or_reset("role", Value::Text(text_of(c.rest(&[])?))))
    } else if c.is(kw, "XML") && c.eat("OPTION") {
        Some(set_or_reset("xmloption", c.rest(&["DEFAULT"])?))
    } else {
        // `SET name FROM CURRENT` copies the current value into the session: no change.
        let mut ahead = before_kw;
        var_name(&mut ahead)?;
        let from_current = ahead.eat("FROM") && ahead.eat("CURRENT") && ahead.at_end();
        from_current.then_some(SessionCommand::Local)
    }
}

fn text_of(v: Value) -> String {
    match v {
        Value::Default => String::new(),
        Value::Text(t) => t,
    }
}

fn generic_value(c: &mut Cursor<'_>, name: &str) -> Option<SessionCommand> {
    Some(set_or_reset(name, c.rest(&["DEFAULT"])?))
}

fn parse_reset(c: &mut Cursor<'_>) -> Option<SessionCommand> {
    let mut ahead = c.clone();
    let first = ahead.next()?;
    let cmd = if ahead.is(first, "ALL") && ahead.at_end() {
        SessionCommand::ResetAll
    } else if ahead.is(first, "TIME") && ahead.eat("ZONE") && ahead.at_end() {
        SessionCommand::Reset {
            name: "timezone".to_owned(),
        }
    } else if ahead.is(first, "SESSION") && ahead.eat("AUTHORIZATION") && ahead.at_end() {
        SessionCommand::Reset {
            name: "session_authorization".to_owned(),
        }
    } else if ahead.is(first, "TRANSACTION") && ahead.eat("ISOLATION") && ahead.eat("LEVEL") {
        ahead.at_end().then_some(SessionCommand::Local)?
    } else {
        let name = var_name(c)?;
        return c.at_end().then_some(SessionCommand::Reset { name });
    };
    Some(cmd)
}

fn parse_deallocate(c: &mut Cursor<'_>) -> Option<SessionCommand> {
    // `DEALLOCATE prepare` deallocates a statement named "prepare".
    let mut ahead = c.clone();
    if ahead.eat("PREPARE") && !ahead.at_end() {
        *c = ahead;
    }
    let t = c.next()?;
    let name = if c.is(t, "ALL") {
        None
    } else {
        Some(ident(c, t)?)
    };
    c.at_end().then_some(SessionCommand::Deallocate { name })
}
