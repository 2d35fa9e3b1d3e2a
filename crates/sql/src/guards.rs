//! Token-level facts about one statement that must not depend on sqlparser: it is known to misparse
//! some PostgreSQL (`SELECT INTO t` reads as a plain SELECT, among others), so every fact that can
//! turn a read into a write is also looked for in the raw tokens. Each check errs towards "write":
//! a column that happens to be called `update` costs a replica, never correctness.

use crate::lexer::{LexOptions, Lexer, TokenKind};

/// Functions with side effects, or whose result depends on the session or node they run on.
/// Matched by name anywhere in a statement, whatever schema qualifies them.
const WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "lastval",
    "pg_notify",
    "txid_current",
    "txid_current_if_assigned",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "set_config",
    "loread",
    "lowrite",
    "pg_export_snapshot",
    "pg_create_restore_point",
    "pg_switch_wal",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_logical_emit_message",
    "pg_import_system_collations",
    "pg_log_backend_memory_contexts",
    "brin_summarize_new_values",
    "brin_summarize_range",
    "brin_desummarize_range",
    "gin_clean_pending_list",
    "pg_truncate_visibility_map",
    "pg_stat_statements_reset",
    "dblink",
    "dblink_connect",
    "dblink_connect_u",
    "dblink_exec",
    "dblink_send_query",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
];

/// Families of write functions; matched only when the name is called (followed by `(`), since
/// prefixes like `lo_` are also plausible column names.
const WRITE_FUNCTION_PREFIXES: &[&str] = &[
    "pg_advisory_",
    "pg_try_advisory_",
    "lo_",
    "pg_stat_reset",
    "pg_create_",
    "pg_drop_replication_slot",
    "pg_replication_origin_",
    "pg_replication_slot_",
    "pg_copy_",
    "pg_logical_slot_",
];

/// Session-level advisory locks outlive the transaction, so the session must stay on its node.
const SESSION_ADVISORY_LOCKS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// The configured extra write functions: lowercased, schema dropped (a name in any schema
/// counts, which can only make more statements writes).
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteFunctions {
    extra: Vec<Box<str>>,
}

impl WriteFunctions {
    pub(crate) fn new(names: &[String]) -> Self {
        let extra = names
            .iter()
            .filter_map(|n| {
                let last = n.rsplit('.').next()?.trim().trim_matches('"');
                (!last.is_empty()).then(|| last.to_ascii_lowercase().into_boxed_str())
            })
            .collect();
        WriteFunctions { extra }
    }

    fn exact(&self, name: &[u8]) -> bool {
        WRITE_FUNCTIONS
            .iter()
            .any(|f| f.as_bytes().eq_ignore_ascii_case(name))
            || self
                .extra
                .iter()
                .any(|f| f.as_bytes().eq_ignore_ascii_case(name))
    }

    fn prefix(name: &[u8]) -> bool {
        WRITE_FUNCTION_PREFIXES.iter().any(|p| {
            name.get(..p.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(p.as_bytes()))
        })
    }
}

/// What the token scan found in one statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Guards {
    /// An `INTO` keyword (SELECT INTO, or the INSERT/MERGE of a CTE).
    pub(crate) into: bool,
    /// `FOR UPDATE | SHARE | NO KEY UPDATE | KEY SHARE`.
    pub(crate) locking: bool,
    /// `INSERT`, `UPDATE`, `DELETE` or `MERGE` outside a locking clause.
    pub(crate) dml_word: bool,
    /// The first write function named, lowercased.
    pub(crate) write_function: Option<String>,
    /// A session-level advisory lock function is called.
    pub(crate) session_lock: bool,
    /// Creates (`CREATE [GLOBAL|LOCAL] TEMP`, `INTO TEMP`) or names (`pg_temp`) a temporary table.
    pub(crate) temp: bool,
    /// Names the `pg_temp` schema (a temporary function, type or table, created or used).
    pub(crate) pg_temp: bool,
    /// `ON COMMIT DROP`: a temporary table created here ends with its transaction.
    pub(crate) on_commit_drop: bool,
    /// `WITH HOLD`: a cursor that outlives its transaction.
    pub(crate) hold: bool,
    /// `set_config` is called without a literal `true` as its third argument (`is_local`):
    /// the setting lasts for the session, and shardgate cannot see its value to carry it.
    pub(crate) session_setting: bool,
    /// `dblink_connect` or `dblink_connect_u` is called: a named connection kept by the session.
    pub(crate) dblink_connection: bool,
    /// A `set_config` call names `pg_temp` (even with `is_local` true): with `pg_temp` first in
    /// `search_path`, a plain `CREATE TABLE` in the same transaction makes a temporary table.
    pub(crate) temp_search_path: bool,
    /// The word `LISTEN` (read only in `DO` bodies, where it starts a statement).
    pub(crate) listen: bool,
    /// A session-level `SET` or `RESET` in a `DO` body (see `sets_session`).
    pub(crate) do_set: bool,
    /// `FROM` at parenthesis depth 0 (for COPY: `COPY ... FROM`).
    pub(crate) from_top: bool,
    /// `FROM STDIN` at parenthesis depth 0.
    pub(crate) from_stdin: bool,
    /// Operators (symbols and keywords like `AND`, `UNION`): each can add a level to a left-deep
    /// tree that sqlparser builds in a loop, past its recursion limit, and that tree's drop
    /// recurses. Counting them bounds the depth of any tree we let sqlparser build.
    pub(crate) operators: usize,
}

impl Guards {
    /// Adds what `other` (a `DO` body's scan) found about state left on the session.
    pub(crate) fn add_session_state(&mut self, other: &Guards) {
        self.temp |= other.temp;
        self.session_lock |= other.session_lock;
        self.session_setting |= other.session_setting;
        self.hold |= other.hold;
        self.dblink_connection |= other.dblink_connection;
        self.temp_search_path |= other.temp_search_path;
        self.listen |= other.listen;
        self.do_set |= other.do_set;
    }
}

/// Keywords that combine two operands (or chain onto one) in an expression or query.
const OPERATOR_WORDS: &[&str] = &[
    "AND",
    "OR",
    "NOT",
    "IS",
    "ISNULL",
    "NOTNULL",
    "LIKE",
    "ILIKE",
    "SIMILAR",
    "BETWEEN",
    "IN",
    "COLLATE",
    "AT",
    "OVERLAPS",
    "OPERATOR",
    "UNION",
    "INTERSECT",
    "EXCEPT",
];

fn is(word: &[u8], kw: &str) -> bool {
    word.eq_ignore_ascii_case(kw.as_bytes())
}

/// Scans `stmt` (comments skipped, literals opaque) for the facts in [`Guards`].
pub(crate) fn scan(stmt: &[u8], fns: &WriteFunctions) -> Guards {
    let mut g = Guards::default();
    let mut depth = 0usize;
    let mut prev: &[u8] = b"";
    // A prefix-matched function name waiting to see whether a `(` follows.
    let mut pending_call: Option<&[u8]> = None;
    for tok in Lexer::new(stmt, LexOptions::default()).filter(|t| !t.is_comment()) {
        let text = stmt.get(tok.start..tok.end).unwrap_or_default();
        let is_open = tok.kind == TokenKind::Punct && text == b"(";
        if let Some(name) = pending_call.take() {
            if is_open {
                note_function(&mut g, name);
            }
        }
        let word = match tok.kind {
            TokenKind::Word => text,
            // `"nextval"(...)` calls nextval too.
            TokenKind::QuotedIdent => text.get(1..text.len().saturating_sub(1)).unwrap_or(text),
            TokenKind::Punct => {
                match text {
                    b"(" => depth += 1,
                    b")" => depth = depth.saturating_sub(1),
                    // Lists and qualified names are flat in the tree.
                    b"," | b";" | b"." => {}
                    _ => g.operators += 1,
                }
                prev = b"";
                continue;
            }
            _ => {
                prev = b"";
                continue;
            }
        };
        if tok.kind == TokenKind::Word {
            scan_keyword(&mut g, prev, word, depth);
        } else if names_pg_temp(word) {
            // `"pg_temp".t` is `pg_temp.t`.
            g.temp = true;
            g.pg_temp = true;
        }
        if fns.exact(word) {
            note_function(&mut g, word);
        } else if WriteFunctions::prefix(word) {
            pending_call = Some(word);
        }
        prev = if tok.kind == TokenKind::Word {
            word
        } else {
            b""
        };
    }
    if g.session_setting {
        (g.session_setting, g.temp_search_path) = sets_config_for_the_session(stmt);
    }
    g
}

fn names_pg_temp(word: &[u8]) -> bool {
    word.get(..7).is_some_and(|h| is(h, "pg_temp"))
}

/// Whether `text` mentions `pg_temp` anywhere (case-insensitively).
pub(crate) fn mentions_pg_temp(text: &[u8]) -> bool {
    text.windows(7).any(|w| is(w, "pg_temp"))
}

/// Whether some call of `set_config` in `stmt` may change a setting for the whole session:
/// its third argument (`is_local`) is anything but a literal true (`true`, `'t'`, `'on'`, ...).
/// A parameter (`$3`) counts as session-wide, since its value is not known here. Also says
/// whether some call names `pg_temp` in its arguments (a `search_path` that makes plain
/// `CREATE TABLE` temporary), local or not.
fn sets_config_for_the_session(stmt: &[u8]) -> (bool, bool) {
    let tokens: Vec<(TokenKind, &[u8])> = Lexer::new(stmt, LexOptions::default())
        .filter(|t| !t.is_comment())
        .map(|t| (t.kind, stmt.get(t.start..t.end).unwrap_or_default()))
        .collect();
    let (mut session, mut temp_path) = (false, false);
    let mut rest = tokens.as_slice();
    while let Some((&(kind, text), after)) = rest.split_first() {
        rest = after;
        let name = match kind {
            TokenKind::Word => text,
            TokenKind::QuotedIdent => text
                .get(1..text.len().saturating_sub(1))
                .unwrap_or_default(),
            _ => continue,
        };
        let opens = matches!(rest.first(), Some((TokenKind::Punct, b"(")));
        if !is(name, "set_config") || !opens {
            continue;
        }
        // The third argument's tokens, up to the `)` that closes the call. The scan goes on
        // inside the call: a `set_config` nested in its arguments is a call too.
        let (mut depth, mut arg) = (0usize, 0usize);
        let mut third: Vec<(TokenKind, &[u8])> = Vec::new();
        for &(kind, text) in rest {
            let punct = kind == TokenKind::Punct;
            temp_path |= !punct && mentions_pg_temp(text);
            if punct && text == b"(" {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            } else if punct && text == b")" {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            } else if punct && text == b"," && depth == 1 {
                arg += 1;
                continue;
            }
            if arg == 2 {
                third.push((kind, text));
            }
        }
        let local = match third.as_slice() {
            [(TokenKind::Word, t)] => is(t, "true"),
            [(TokenKind::String, t)] => {
                let inner = t.get(1..t.len().saturating_sub(1)).unwrap_or_default();
                ["t", "true", "y", "yes", "on", "1"]
                    .iter()
                    .any(|v| is(inner, v))
            }
            _ => false,
        };
        session |= !local;
    }
    (session, temp_path)
}

fn scan_keyword(g: &mut Guards, prev: &[u8], word: &[u8], depth: usize) {
    if is(word, "INTO") {
        g.into = true;
    } else if is(prev, "FOR") && ["UPDATE", "SHARE", "NO", "KEY"].iter().any(|k| is(word, k)) {
        g.locking = true;
    } else if ["UPDATE", "INSERT", "DELETE", "MERGE"]
        .iter()
        .any(|k| is(word, k))
    {
        // `FOR NO KEY UPDATE` reaches here with `prev == KEY`: a lock, not DML.
        if is(prev, "KEY") {
            g.locking = true;
        } else {
            g.dml_word = true;
        }
    } else if is(prev, "COMMIT") && is(word, "DROP") {
        g.on_commit_drop = true;
    } else if is(prev, "WITH") && is(word, "HOLD") {
        g.hold = true;
    } else if is(word, "TEMP") || is(word, "TEMPORARY") {
        if ["CREATE", "GLOBAL", "LOCAL", "INTO", "REPLACE"]
            .iter()
            .any(|k| is(prev, k))
        {
            g.temp = true;
        }
    } else if names_pg_temp(word) {
        g.temp = true;
        g.pg_temp = true;
    } else if is(word, "LISTEN") {
        g.listen = true;
    } else if OPERATOR_WORDS.iter().any(|k| is(word, k)) {
        g.operators += 1;
    } else if depth == 0 && is(word, "FROM") {
        g.from_top = true;
    } else if depth == 0 && is(prev, "FROM") && is(word, "STDIN") {
        g.from_stdin = true;
    }
}

fn note_function(g: &mut Guards, name: &[u8]) {
    if SESSION_ADVISORY_LOCKS
        .iter()
        .any(|f| f.as_bytes().eq_ignore_ascii_case(name))
    {
        g.session_lock = true;
    }
    if is(name, "set_config") {
        // Settled after the scan, by looking at the arguments.
        g.session_setting = true;
    }
    if is(name, "dblink_connect") || is(name, "dblink_connect_u") {
        g.dblink_connection = true;
    }
    if g.write_function.is_none() {
        g.write_function = Some(String::from_utf8_lossy(name).to_ascii_lowercase());
    }
}

/// Whether `READ ONLY` appears among `stmt`'s words and neither `READ WRITE` nor
/// `SERIALIZABLE` does (a transaction's modes: the conservative reading of a contradictory list
/// is read-write). A serializable transaction, read-only or not, must run on a primary: a hot
/// standby refuses it ("cannot use serializable mode in a hot standby").
pub(crate) fn read_only_mode(stmt: &[u8]) -> bool {
    let mut prev_read = false;
    let (mut ro, mut rw) = (false, false);
    for w in words(stmt) {
        ro |= prev_read && is(w, "ONLY");
        rw |= (prev_read && is(w, "WRITE")) || is(w, "SERIALIZABLE");
        prev_read = is(w, "READ");
    }
    ro && !rw
}

/// Whether `AND CHAIN` (not `AND NO CHAIN`) ends a COMMIT or ROLLBACK.
pub(crate) fn and_chain(stmt: &[u8]) -> bool {
    let mut prev_and = false;
    for w in words(stmt) {
        if prev_and && is(w, "CHAIN") {
            return true;
        }
        prev_and = is(w, "AND");
    }
    false
}

/// The bare words of `stmt` in order (comments skipped, other tokens dropped).
pub(crate) fn words(stmt: &[u8]) -> impl Iterator<Item = &[u8]> {
    Lexer::new(stmt, LexOptions::default())
        .filter(|t| t.kind == TokenKind::Word)
        .filter_map(move |t| stmt.get(t.start..t.end))
}

/// Sticky facts hidden in a `DO` body: a dollar-quoted or quoted string is scanned as SQL, since
/// the plpgsql inside can create temp tables or take session advisory locks.
pub(crate) fn scan_do_body(stmt: &[u8], fns: &WriteFunctions) -> Guards {
    let mut out = Guards::default();
    for tok in Lexer::new(stmt, LexOptions::default()) {
        let body = match tok.kind {
            TokenKind::DollarString | TokenKind::String => stmt.get(tok.start..tok.end),
            _ => None,
        };
        let Some(body) = body else { continue };
        let inner = literal_body(body);
        out.add_session_state(&scan(inner, fns));
        out.do_set |= sets_session(inner);
    }
    out
}

/// A string token's text without its delimiters: `$tag$...$tag$`, or `'...'` with any prefix
/// (`E'...'`, `U&'...'`).
fn literal_body(text: &[u8]) -> &[u8] {
    if text.first() == Some(&b'$') {
        let tag = text
            .iter()
            .skip(1)
            .position(|&b| b == b'$')
            .map_or(0, |p| p + 2);
        return text
            .get(tag..text.len().saturating_sub(tag))
            .unwrap_or_default();
    }
    let open = text.iter().position(|&b| b == b'\'').map_or(0, |p| p + 1);
    text.get(open..text.len().saturating_sub(1))
        .unwrap_or_default()
}

/// Whether a `DO` body may change a setting for the session: a `SET` or `RESET` at the start
/// of a statement (after `;`, `BEGIN`, `THEN`, `ELSE` or `LOOP`), or opening a string (`EXECUTE
/// 'SET search_path TO ' || ...`), unless it is `SET LOCAL`, `SET TRANSACTION` or `SET
/// CONSTRAINTS`, which end with the transaction. shardgate cannot see such a setting's value
/// to carry it to another server connection. Errs on the side of yes: a string that merely
/// starts with "set" counts too.
fn sets_session(body: &[u8]) -> bool {
    let words_of = |text: &[u8]| -> Vec<Vec<u8>> {
        words(text)
            .take(2)
            .map(<[u8]>::to_ascii_uppercase)
            .collect()
    };
    let session_level = |w: &[Vec<u8>]| match w {
        [first, second, ..] if first == b"SET" => !matches!(
            second.as_slice(),
            b"LOCAL" | b"TRANSACTION" | b"CONSTRAINTS"
        ),
        [first, ..] => first == b"RESET",
        [] => false,
    };
    let mut at_start = true;
    for tok in Lexer::new(body, LexOptions::default()).filter(|t| !t.is_comment()) {
        let text = body.get(tok.start..tok.end).unwrap_or_default();
        match tok.kind {
            TokenKind::Word => {
                if at_start
                    && (is(text, "SET") || is(text, "RESET"))
                    && session_level(&words_of(body.get(tok.start..).unwrap_or_default()))
                {
                    return true;
                }
                at_start = ["BEGIN", "THEN", "ELSE", "LOOP"]
                    .iter()
                    .any(|k| is(text, k));
            }
            TokenKind::String | TokenKind::DollarString => {
                let inner = literal_body(text);
                if session_level(&words_of(inner)) {
                    return true;
                }
                at_start = false;
            }
            TokenKind::Punct => at_start = text == b";",
            _ => at_start = false,
        }
    }
    false
}
