//! Classifies one statement (as the splitter cut it). The leading keywords decide first: they
//! settle transaction control, session and shardgate commands, and every statement kind that is
//! a write by its nature, without sqlparser. Only statements that may be reads (`SELECT`, `WITH`,
//! `VALUES`, `TABLE`, `EXPLAIN`, a parenthesis) are parsed, and a read needs both the tree and the
//! token guards to agree; any doubt is a write.

use crate::ast::{parse_and_check, MAX_OPERATORS, MAX_PARSE_LEN};
use crate::classification::{pin_reason, ShardgateCommand, TxnControl, WhyWrite};
use crate::guards::{
    and_chain, mentions_pg_temp, read_only_mode, scan, scan_do_body, Guards, WriteFunctions,
};
use crate::keywords::{leading_keywords, Keywords};
use crate::lexer::{LexOptions, Lexer, TokenKind};
use crate::session::{session_command, SessionCommand};

/// What one statement contributes to a message's classification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StatementFacts {
    pub(crate) write: Option<WhyWrite>,
    pub(crate) txn: Option<TxnControl>,
    /// `COMMIT AND CHAIN` / `ROLLBACK AND CHAIN`: a new transaction opens right away.
    pub(crate) chained: bool,
    pub(crate) sticky: bool,
    /// Why the statement pins a transaction-pooled session to its server connection.
    pub(crate) pins: Option<&'static str>,
    pub(crate) parsed: bool,
    pub(crate) shardgate: Option<ShardgateCommand>,
    pub(crate) copy_from_stdin: bool,
}

impl StatementFacts {
    fn write(why: WhyWrite) -> Self {
        StatementFacts {
            write: Some(why),
            parsed: true,
            ..Default::default()
        }
    }
}

pub(crate) fn classify_statement(stmt: &[u8], fns: &WriteFunctions) -> StatementFacts {
    let kw = leading_keywords(stmt);
    if let Some(facts) = txn_statement(&kw, stmt) {
        return facts;
    }
    if let Some(cmd) = shardgate_command(&kw, stmt) {
        return StatementFacts {
            shardgate: Some(cmd),
            parsed: true,
            ..Default::default()
        };
    }
    let first = kw.get(0).unwrap_or("");
    match first {
        "SET" | "RESET" | "DISCARD" | "DEALLOCATE" | "LOAD" => {
            let pins = if first == "LOAD" {
                Some(pin_reason::LOAD)
            } else if kw.starts_with(&["SET", "SESSION", "CHARACTERISTICS"]) {
                Some(pin_reason::SESSION_CHARACTERISTICS)
            } else if first == "SET" && mentions_pg_temp(stmt) {
                // Even SET LOCAL: a plain CREATE TABLE after it makes a temporary table.
                Some(pin_reason::TEMP_SEARCH_PATH)
            } else {
                None
            };
            StatementFacts {
                pins,
                ..StatementFacts::write(WhyWrite::Other("session"))
            }
        }
        "SHOW" if show_name(stmt).is_some() => StatementFacts {
            parsed: true,
            ..Default::default()
        },
        "SHOW" => StatementFacts::write(WhyWrite::Other("show")),
        "SELECT" | "WITH" | "VALUES" | "TABLE" | "EXPLAIN" | "" => maybe_read(first, stmt, fns),
        _ => by_keyword(&kw, first, stmt, fns),
    }
}

/// A statement whose kind is a write: the reason follows from its first keyword.
fn by_keyword(kw: &Keywords, first: &str, stmt: &[u8], fns: &WriteFunctions) -> StatementFacts {
    let mut g = scan(stmt, fns);
    if first == "DO" {
        g.add_session_state(&scan_do_body(stmt, fns));
    }
    let why = match first {
        "CREATE" if g.temp => WhyWrite::TempTable,
        "INSERT" | "UPDATE" | "DELETE" | "MERGE" => WhyWrite::Dml,
        "COPY" if g.from_top => WhyWrite::CopyFrom,
        "COPY" => WhyWrite::Other("copy to"),
        "CREATE" | "ALTER" | "DROP" | "TRUNCATE" | "COMMENT" | "SECURITY" | "IMPORT"
        | "REASSIGN" => WhyWrite::Ddl,
        "VACUUM" | "ANALYZE" | "ANALYSE" | "CLUSTER" | "REINDEX" | "REFRESH" | "CHECKPOINT" => {
            WhyWrite::Maintenance
        }
        "GRANT" | "REVOKE" => WhyWrite::Grant,
        "LOCK" => WhyWrite::Lock,
        "CALL" => WhyWrite::Call,
        "DO" => WhyWrite::Do,
        "LISTEN" | "UNLISTEN" | "NOTIFY" => WhyWrite::ListenNotify,
        // A cursor lives in one backend's transaction; every step must reach the same node.
        "DECLARE" | "FETCH" | "MOVE" | "CLOSE" => WhyWrite::Other("cursor"),
        "PREPARE" | "EXECUTE" => WhyWrite::Other("prepared statement"),
        _ => WhyWrite::Other("statement"),
    };
    let pins = match first {
        "LISTEN" => Some(pin_reason::LISTEN),
        // `listen` counts only from a body, where the word starts a statement.
        "DO" if g.listen => Some(pin_reason::LISTEN),
        "PREPARE" if kw.get(1) != Some("TRANSACTION") => Some(pin_reason::PREPARE),
        _ => pin_reason(&g),
    };
    StatementFacts {
        sticky: g.temp || g.session_lock,
        pins,
        copy_from_stdin: first == "COPY" && g.from_stdin,
        ..StatementFacts::write(why)
    }
}

/// `SELECT`, `WITH`, `VALUES`, `TABLE`, `EXPLAIN`, or no leading word (`(SELECT ...)`).
fn maybe_read(first: &str, stmt: &[u8], fns: &WriteFunctions) -> StatementFacts {
    let g = scan(stmt, fns);
    let sticky = g.temp || g.session_lock;
    let tree = if first == "TABLE" && g == Guards::default() && is_plain_table(stmt) {
        // sqlparser rejects `TABLE t`; the lexer reads this shape in full.
        Ok(None)
    } else {
        match std::str::from_utf8(stmt) {
            Ok(text) if text.len() <= MAX_PARSE_LEN && g.operators <= MAX_OPERATORS => {
                parse_and_check(text)
            }
            _ => Err(()),
        }
    };
    let (write, parsed) = match tree {
        Err(()) => (Some(WhyWrite::Unparsed), false),
        Ok(Some(why)) => (Some(why), true),
        // The tree looks read-only; the tokens get the last word, since the tree can be wrong.
        Ok(None) => (guard_reason(&g), true),
    };
    StatementFacts {
        write,
        sticky,
        pins: pin_reason(&g),
        parsed,
        ..Default::default()
    }
}

/// Why the facts found by the token scan pin a transaction-pooled session, if they do.
fn pin_reason(g: &Guards) -> Option<&'static str> {
    if g.temp && !g.on_commit_drop && !g.pg_temp {
        Some(pin_reason::TEMP_TABLE)
    } else if g.pg_temp {
        Some(pin_reason::PG_TEMP)
    } else if g.session_lock {
        Some(pin_reason::SESSION_LOCK)
    } else if g.hold {
        Some(pin_reason::WITH_HOLD)
    } else if g.session_setting {
        Some(pin_reason::SESSION_SETTING)
    } else if g.do_set {
        Some(pin_reason::SET_IN_DO)
    } else if g.dblink_connection {
        Some(pin_reason::DBLINK_CONNECT)
    } else if g.temp_search_path {
        Some(pin_reason::TEMP_SEARCH_PATH)
    } else {
        None
    }
}

fn guard_reason(g: &Guards) -> Option<WhyWrite> {
    if let Some(f) = &g.write_function {
        Some(WhyWrite::WriteFunction(f.clone()))
    } else if g.temp {
        Some(WhyWrite::TempTable)
    } else if g.into {
        Some(WhyWrite::SelectInto)
    } else if g.locking {
        Some(WhyWrite::Locking)
    } else if g.dml_word {
        Some(WhyWrite::WritableCte)
    } else {
        None
    }
}

/// `TABLE [ONLY] name[.name...] [*]` and nothing else.
fn is_plain_table(stmt: &[u8]) -> bool {
    let mut toks = Lexer::new(stmt, LexOptions::default()).filter(|t| !t.is_comment());
    toks.next(); // TABLE
    let mut want_name = true;
    let mut seen_name = false;
    for t in toks {
        let text = stmt.get(t.start..t.end).unwrap_or_default();
        match (t.kind, want_name) {
            (TokenKind::Word, true) if !seen_name && text.eq_ignore_ascii_case(b"ONLY") => {}
            (TokenKind::Word | TokenKind::QuotedIdent, true) => {
                want_name = false;
                seen_name = true;
            }
            (TokenKind::Punct, false) if text == b"." => want_name = true,
            (TokenKind::Punct, false) if text == b"*" => {}
            _ => return false,
        }
    }
    seen_name && !want_name
}

/// Transaction control, read from the leading keywords alone so that it is right whatever
/// sqlparser thinks of the statement.
fn txn_statement(kw: &Keywords, stmt: &[u8]) -> Option<StatementFacts> {
    let w = |i| kw.get(i).unwrap_or("");
    let txn = |t: TxnControl, chained: bool| StatementFacts {
        txn: Some(t),
        chained,
        parsed: true,
        ..Default::default()
    };
    let two_phase = StatementFacts {
        txn: Some(TxnControl::Other),
        ..StatementFacts::write(WhyWrite::Other("two-phase commit"))
    };
    let facts = match w(0) {
        "BEGIN" => txn(
            TxnControl::Begin {
                read_only: read_only_mode(stmt),
            },
            false,
        ),
        "START" if w(1) == "TRANSACTION" => txn(
            TxnControl::Begin {
                read_only: read_only_mode(stmt),
            },
            false,
        ),
        "COMMIT" | "ROLLBACK" if w(1) == "PREPARED" => two_phase,
        "PREPARE" if w(1) == "TRANSACTION" => two_phase,
        "ROLLBACK" | "ABORT"
            if w(1) == "TO" || (matches!(w(1), "WORK" | "TRANSACTION") && w(2) == "TO") =>
        {
            txn(TxnControl::Savepoint, false)
        }
        "COMMIT" | "END" => txn(TxnControl::Commit, and_chain(stmt)),
        "ROLLBACK" | "ABORT" => txn(TxnControl::Rollback, and_chain(stmt)),
        "SAVEPOINT" | "RELEASE" => txn(TxnControl::Savepoint, false),
        "SET" if w(1) == "TRANSACTION" && read_only_mode(stmt) => {
            txn(TxnControl::SetTransactionReadOnly, false)
        }
        _ => return None,
    };
    Some(facts)
}

/// The first words of shardgate's own commands (`SET`/`RESET`/`SHOW shardgate.*`, read by
/// [`shardgate_command`]): a text starting with any other word is none of them.
pub const SHARDGATE_COMMAND_WORDS: &[&[u8]] = &[b"SET", b"RESET", b"SHOW"];

fn shardgate_command(kw: &Keywords, stmt: &[u8]) -> Option<ShardgateCommand> {
    match kw.get(0)? {
        "SET" | "RESET" => match session_command(stmt)? {
            SessionCommand::Set { name, value } => Some(ShardgateCommand::Set {
                name: own_name(&name)?,
                value: unquote(&value),
            }),
            SessionCommand::Reset { name } => Some(ShardgateCommand::Reset {
                name: own_name(&name)?,
            }),
            _ => None,
        },
        "SHOW" => Some(ShardgateCommand::Show {
            name: own_name(&show_name(stmt)?)?,
        }),
        _ => None,
    }
}

/// `shardgate.<name>` -> `<name>`, lowercased.
fn own_name(full: &str) -> Option<String> {
    let lower = full.to_ascii_lowercase();
    let name = lower.strip_prefix("shardgate.")?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// `'primary'` -> `primary` (with `''` undoubled); a bare word is folded to lowercase as the
/// server folds identifiers; anything else is kept as written.
fn unquote(value: &str) -> String {
    if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return inner.replace("''", "'");
    }
    if value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return value.to_ascii_lowercase();
    }
    value.to_owned()
}

/// The setting a `SHOW` names (`SHOW a.b`, `SHOW ALL`, `SHOW TIME ZONE`), lowercased, or `None`
/// if anything other than words and dots follows `SHOW`.
fn show_name(stmt: &[u8]) -> Option<String> {
    let mut toks = Lexer::new(stmt, LexOptions::default()).filter(|t| !t.is_comment());
    toks.next(); // SHOW
    let mut name = String::new();
    for t in toks {
        let text = std::str::from_utf8(stmt.get(t.start..t.end)?).ok()?;
        match t.kind {
            TokenKind::Word => {
                if !name.is_empty() && !name.ends_with('.') {
                    name.push(' ');
                }
                name.push_str(&text.to_ascii_lowercase());
            }
            TokenKind::QuotedIdent if t.terminated => {
                name.push_str(
                    &text
                        .get(1..text.len().saturating_sub(1))?
                        .replace("\"\"", "\""),
                );
            }
            TokenKind::Punct if text == "." && !name.is_empty() => name.push('.'),
            _ => return None,
        }
    }
    (!name.is_empty() && !name.ends_with('.')).then_some(name)
}
