//! Per-client session state (startup parameters and SETs done outside transactions),
//! tracked so that it can be re-applied on whichever server connection the client
//! gets next, and never seen by another client.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use shardgate_sql::{
    for_each_statement, session_command, session_command_with, set_local_default,
    transaction_command, LexOptions, SessionCommand, TransactionCommand,
};

/// Startup parameters that are protocol plumbing, not session settings.
pub(crate) const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options"];

/// Settings PostgreSQL's RESET ALL leaves alone (GUC_NO_RESET_ALL) that SET can change
/// for a session.
const NOT_RESET_BY_RESET_ALL: &[&str] = &["role", "session_authorization"];

/// Settings that hold for one transaction only (`SET transaction_isolation` is `SET
/// TRANSACTION ISOLATION LEVEL`): never a session's setting.
const PER_TRANSACTION: &[&str] = &[
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
];

/// Reported settings (PostgreSQL marks them GUC_REPORT: a change shows in a ParameterStatus)
/// that a session may change for itself and that `SET name TO 'reported value'` gives back.
/// Every report of one is taken into the client's settings (see
/// [`SessionParams::observe_parameter_status`]), as PgBouncer takes the ones it tracks.
const ADOPTED_REPORTS: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "timezone",
    "default_transaction_read_only",
    "standard_conforming_strings",
];

/// Reported facts about the server rather than settings of a session.
const SERVER_REPORTS: &[&str] = &[
    "server_version",
    "server_encoding",
    "integer_datetimes",
    "in_hot_standby",
];

/// Reported settings that follow the session's identity: `SET ROLE` and `SET SESSION
/// AUTHORIZATION` change them.
const IDENTITY_REPORTS: &[&str] = &["is_superuser", "session_authorization", "role"];

/// What the commands of the cycle under way (up to its ReadyForQuery) changed, to tell a
/// ParameterStatus they explain from one they do not.
#[derive(Debug, Default, Clone)]
struct Touched {
    /// Every setting may have changed: RESET ALL, DISCARD ALL, a rollback, a `SET LOCAL` in
    /// the transaction.
    all: bool,
    /// The settings SET or RESET by name.
    names: Vec<String>,
}

/// What a completed cycle (up to ReadyForQuery) asks the session to do besides SETs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Effects {
    /// DISCARD ALL or DEALLOCATE ALL ran: every prepared statement is gone.
    pub(crate) statements_dropped: bool,
    /// DISCARD ALL ran, or a RESET put startup parameters back to the server
    /// connection's own defaults rather than this client's: re-apply before reuse.
    pub(crate) server_reset: bool,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct SessionParams {
    /// From the startup packet, as quoted SQL literals.
    startup: BTreeMap<String, String>,
    /// From SET, as the client wrote the value.
    sets: BTreeMap<String, String>,
    fingerprint: u64,
    /// The session's `standard_conforming_strings` is off: `'...'` literals take backslash
    /// escapes, which changes where statements end.
    backslash_strings: bool,
    /// The server's own `standard_conforming_strings` is off (a database or role default),
    /// which the session has unless the client set it.
    server_backslash_strings: bool,
    /// Session commands and transaction-control statements sent to the server and not
    /// answered yet, in order, each with the number of the request (Query or Sync) it is in.
    /// Each takes effect when its CommandComplete arrives (see [`SessionParams::observe_command_tag`]);
    /// `true`: a statement of shardgate's restoring startup values follows it in the same text
    /// (see [`Restore::InText`]).
    queued: VecDeque<(u64, Op, bool)>,
    /// How many of `queued` change settings.
    queued_settings: usize,
    /// Requests sent and answered (or skipped by the server), numbering `queued`.
    requests_sent: u64,
    requests_answered: u64,
    /// Settings changed in the current implicit transaction (outside a transaction block):
    /// kept at its ReadyForQuery('I'), dropped by an error.
    implicit: Vec<SessionCommand>,
    /// The open transaction block, as the settings changed at each level: the block's own,
    /// then one per savepoint (with its name). Kept by COMMIT, dropped by ROLLBACK, cut back
    /// by ROLLBACK TO.
    block: Option<Vec<(Option<String>, Vec<SessionCommand>)>>,
    /// What settled commands did since the last ReadyForQuery.
    effects: Effects,
    /// A `SET LOCAL` (or `SET TRANSACTION`, `SET CONSTRAINTS`) was seen in the open
    /// transaction: statements parsed until it ends may be analysed under settings no
    /// fingerprint describes (see [`SessionParams::statement_settings`]).
    local_in_transaction: bool,
    /// The tracked command of each of the client's prepared statements that is one, by name
    /// (empty: the unnamed statement).
    statement_commands: HashMap<Vec<u8>, Op>,
    /// The tracked command each bound portal runs when executed, by portal name.
    portal_commands: HashMap<Vec<u8>, Op>,
    /// What the cycle under way changed (see [`SessionParams::observe_parameter_status`]).
    touched: Touched,
}

/// A statement whose outcome decides the settings a session has once its transaction ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Session(SessionCommand),
    Transaction(TransactionCommand),
    /// `SET LOCAL name TO DEFAULT`: a [`SessionCommand::Local`] that puts `name` back to the
    /// server connection's reset value, not this client's, for the rest of the transaction.
    LocalDefault(String),
}

impl Op {
    /// Whether `tag` (a CommandComplete tag without its NUL) is the server's answer to it.
    fn answered_by(&self, tag: &[u8]) -> bool {
        use TransactionCommand as T;
        match self {
            Op::Session(SessionCommand::DiscardAll | SessionCommand::Discard) => {
                tag.starts_with(b"DISCARD")
            }
            Op::Session(SessionCommand::Deallocate { .. }) => tag.starts_with(b"DEALLOCATE"),
            Op::Session(_) => matches!(tag, b"SET" | b"RESET" | b"SET CONSTRAINTS"),
            Op::LocalDefault(_) => tag == b"SET",
            Op::Transaction(T::Begin) => matches!(tag, b"BEGIN" | b"START TRANSACTION"),
            // A COMMIT of a failed transaction answers ROLLBACK.
            Op::Transaction(T::Commit { .. }) => matches!(tag, b"COMMIT" | b"ROLLBACK"),
            Op::Transaction(T::Prepare) => matches!(tag, b"PREPARE TRANSACTION" | b"ROLLBACK"),
            Op::Transaction(T::Rollback { .. } | T::RollbackTo { .. }) => tag == b"ROLLBACK",
            Op::Transaction(T::Savepoint { .. }) => tag == b"SAVEPOINT",
            Op::Transaction(T::Release { .. }) => tag == b"RELEASE",
        }
    }

    fn changes_settings(&self) -> bool {
        matches!(self, Op::Session(cmd) if *cmd != SessionCommand::Local)
    }

    /// A `SET LOCAL` of any kind: statements parsed until the transaction ends may be analysed
    /// under settings no fingerprint describes.
    fn is_local(&self) -> bool {
        matches!(
            self,
            Op::Session(SessionCommand::Local) | Op::LocalDefault(_)
        )
    }
}

/// Whether a CommandComplete tag is one that only the statements tracked here produce.
fn tracked_tag(tag: &[u8]) -> bool {
    matches!(
        tag,
        b"SET"
            | b"RESET"
            | b"SET CONSTRAINTS"
            | b"BEGIN"
            | b"START TRANSACTION"
            | b"COMMIT"
            | b"ROLLBACK"
            | b"SAVEPOINT"
            | b"RELEASE"
            | b"PREPARE TRANSACTION"
    ) || tag.starts_with(b"DISCARD")
        || tag.starts_with(b"DEALLOCATE")
}

/// Calls `f` with each tracked command in `sql`, in order, and where its statement ends.
fn tracked_commands(sql: &[u8], opts: LexOptions, mut f: impl FnMut(Op, usize)) {
    let mut one = |stmt: &[u8], end: usize| {
        if let Some(cmd) = session_command_with(stmt, opts) {
            let op = match cmd {
                SessionCommand::Local => set_local_default(stmt, opts)
                    .map_or(Op::Session(SessionCommand::Local), Op::LocalDefault),
                cmd => Op::Session(cmd),
            };
            f(op, end);
        } else if let Some(cmd) = transaction_command(stmt) {
            f(Op::Transaction(cmd), end);
        }
    };
    if let Some(stmt) = single_statement(sql) {
        // One statement: its first tokens decide, no need to split the whole text.
        if may_start_with(stmt, TRACKED_WORDS) {
            one(stmt, stmt.len());
        }
        return;
    }
    for_each_statement(sql, opts, |range| one(&sql[range.clone()], range.end));
}

/// How a request that puts startup parameters back to the server connection's own defaults
/// gets this client's startup values again, in the same transaction, before anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Restore {
    /// A simple Query holding `RESET`s: each SQL text goes into the Query right after the
    /// statement that ends at that offset.
    InText(Vec<(usize, String)>),
    /// A simple Query that is one `DISCARD ALL`, which refuses to run in a longer text: the
    /// SQL runs after it as a statement of its own in the same request.
    AfterDiscard(String),
}

/// The statement a simple Query deallocates when its text is exactly one `DEALLOCATE [PREPARE]
/// name` (not `ALL`).
pub(crate) fn lone_deallocate(sql: &[u8]) -> Option<String> {
    let one = single_statement(sql)?;
    if !may_start_with(one, &[b"DEALLOCATE"]) {
        return None;
    }
    match session_command(one)? {
        SessionCommand::Deallocate { name } => name,
        _ => None,
    }
}

/// The text as one statement, without a trailing `;`, when it has no `;` or only blanks after
/// its first one (`SELECT ... WHERE aid = 7;`, as pgbench and many drivers send). A `;` inside
/// a literal or comment that ends the text just leaves that literal or comment unterminated,
/// which the server rejects. Anything else may hold several statements: `None`.
fn single_statement(sql: &[u8]) -> Option<&[u8]> {
    match memchr::memchr(b';', sql) {
        None => Some(sql),
        Some(i) if sql[i + 1..].iter().all(u8::is_ascii_whitespace) => Some(&sql[..i]),
        Some(_) => None,
    }
}

/// Whether a boolean setting's value, as written in SQL or a startup packet, is false.
const SCS: &str = "standard_conforming_strings";

fn is_off(value: &str) -> bool {
    let v = value.trim_matches(|c: char| c == '\'' || c == '"' || c.is_whitespace());
    [
        "off", "of", "false", "fals", "fal", "fa", "f", "no", "n", "0",
    ]
    .iter()
    .any(|w| v.eq_ignore_ascii_case(w))
}

/// The words every command `session_command` or `transaction_command` recognises starts with.
const TRACKED_WORDS: &[&[u8]] = &[
    b"SET",
    b"RESET",
    b"DISCARD",
    b"DEALLOCATE",
    b"BEGIN",
    b"START",
    b"COMMIT",
    b"END",
    b"ROLLBACK",
    b"ABORT",
    b"SAVEPOINT",
    b"RELEASE",
    b"PREPARE",
];

/// False only when the first word of `sql`, after ASCII blanks, is a run of letters that is
/// none of `words` (compared case-insensitively). Anything else (a comment first, an unusual
/// character) may still start with one of them, as far as this cheap look can tell.
pub(crate) fn may_start_with(sql: &[u8], words: &[&[u8]]) -> bool {
    let mut end = 0;
    while sql.get(end).is_some_and(u8::is_ascii_whitespace) {
        end += 1;
    }
    let start = end;
    while sql.get(end).is_some_and(u8::is_ascii_alphabetic) {
        end += 1;
    }
    let word = sql.get(start..end).unwrap_or_default();
    word.is_empty() || words.iter().any(|k| word.eq_ignore_ascii_case(k))
}

/// Why a startup packet's `options` cannot be honoured: SQLSTATE and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadOption {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

/// The settings in a startup packet's `options` (libpq's `PGOPTIONS`), read as PostgreSQL
/// reads them: split at whitespace (a backslash keeps the next character, a space included),
/// then each `-c name=value`, `-cname=value` or `--name=value` sets `name` (a `-` in it read
/// as `_`). PostgreSQL's other switches (`-B`, `-d`, `-S`, ...) are refused rather than ignored.
pub(crate) fn options_settings(options: &str) -> Result<Vec<(String, String)>, BadOption> {
    let mut args: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        if c.is_ascii_whitespace() {
            args.extend(current.take());
            continue;
        }
        let c = if c == '\\' {
            chars.next().unwrap_or('\\')
        } else {
            c
        };
        current.get_or_insert_with(String::new).push(c);
    }
    args.extend(current);
    let mut out = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let pair = if arg == "-c" {
            args.next().ok_or_else(|| BadOption {
                code: super::sqlstate::SYNTAX_ERROR,
                message: "option -c requires a value (-c name=value)".to_owned(),
            })?
        } else if let Some(rest) = arg.strip_prefix("--").or_else(|| arg.strip_prefix("-c")) {
            rest.to_owned()
        } else {
            return Err(BadOption {
                code: super::sqlstate::FEATURE_NOT_SUPPORTED,
                message: format!(
                    "startup option \"{arg}\" is not supported by shardgate: only -c name=value \
                     and --name=value settings are"
                ),
            });
        };
        match pair.split_once('=') {
            Some((name, value)) if !name.is_empty() => {
                out.push((name.replace('-', "_"), value.to_owned()));
            }
            _ => {
                return Err(BadOption {
                    code: super::sqlstate::SYNTAX_ERROR,
                    message: format!("startup option -c {pair} requires a value"),
                })
            }
        }
    }
    Ok(out)
}

/// The startup parameters with `options` expanded into the settings it holds. As on the
/// server, a parameter given on its own wins over the same one in `options`.
pub(crate) fn expand_options(
    params: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, BadOption> {
    let Some(options) = params
        .iter()
        .find(|(k, _)| k == "options")
        .map(|(_, v)| v.clone())
    else {
        return Ok(params);
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in options_settings(&options)? {
        let given = params.iter().any(|(k, _)| k.eq_ignore_ascii_case(&name));
        if !given {
            out.retain(|(k, _)| !k.eq_ignore_ascii_case(&name));
            out.push((name, value));
        }
    }
    out.extend(params.into_iter().filter(|(k, _)| k != "options"));
    Ok(out)
}

/// A SQL string literal, quoted the way PostgreSQL reads it with standard_conforming_strings.
pub(crate) fn quote_literal(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 3);
    // With a backslash, an E'' literal: it reads the same whatever standard_conforming_strings
    // the server connection was left with (a plain '' literal does not).
    let escape = v.contains('\\');
    if escape {
        s.push('E');
    }
    s.push('\'');
    for c in v.chars() {
        if c == '\'' || (escape && c == '\\') {
            s.push(c);
        }
        s.push(c);
    }
    s.push('\'');
    s
}

/// Quotes a setting name as an identifier when it is not a plain lowercase (dotted) name.
fn quote_name(name: &str) -> String {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
    if plain && !name.is_empty() {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

impl SessionParams {
    pub(crate) fn from_startup(params: &[(String, String)]) -> SessionParams {
        let mut startup = BTreeMap::new();
        for (k, v) in params {
            if NOT_SETTINGS.contains(&k.as_str()) {
                continue;
            }
            startup.insert(k.to_ascii_lowercase(), quote_literal(v));
        }
        let mut p = SessionParams {
            startup,
            ..SessionParams::default()
        };
        p.refingerprint();
        p
    }

    /// What the server reported at login (ParameterStatus): its `standard_conforming_strings`,
    /// which a database or role default may turn off, decides how this session's texts split
    /// into statements unless the client sets it.
    pub(crate) fn with_server_params(mut self, server: &[(String, String)]) -> SessionParams {
        self.server_backslash_strings = server
            .iter()
            .any(|(name, value)| name == "standard_conforming_strings" && is_off(value));
        self.refingerprint();
        self
    }

    /// Changes whenever the effective settings change; equal fingerprints mean a server
    /// connection already carries this client's settings.
    pub(crate) fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The settings key of a statement parsed now: the fingerprint, unless a session command
    /// seen this cycle or in the open transaction is not settled yet, when the server may
    /// analyse the statement under settings no fingerprint describes.
    pub(crate) fn statement_settings(&self) -> u64 {
        if self.unsettled() || self.local_in_transaction {
            super::statements::unshared_settings()
        } else {
            self.fingerprint
        }
    }

    fn refingerprint(&mut self) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.startup.hash(&mut h);
        self.sets.hash(&mut h);
        // 0 is reserved for "server defaults".
        self.fingerprint = h.finish() | 1;
        let scs = self
            .sets
            .get("standard_conforming_strings")
            .or_else(|| self.startup.get("standard_conforming_strings"))
            .filter(|v| !v.eq_ignore_ascii_case("default"));
        self.backslash_strings = match scs {
            Some(v) => is_off(v),
            None => self.server_backslash_strings,
        };
    }

    /// How the server reads the client's next message: the settled `standard_conforming_strings`,
    /// then, in order, those set in the open transaction (the server applies a SET when it
    /// completes, not at COMMIT) and those sent and not answered yet (the server runs them
    /// before it reads what follows). A rolled-back SET is gone from both.
    fn lex_options(&self) -> LexOptions {
        let mut backslash = self.backslash_strings;
        let pending = self
            .block
            .iter()
            .flatten()
            .flat_map(|(_, cmds)| cmds)
            .chain(&self.implicit)
            .chain(self.queued.iter().filter_map(|(_, op, _)| match op {
                Op::Session(cmd) => Some(cmd),
                Op::Transaction(_) | Op::LocalDefault(_) => None,
            }));
        for cmd in pending {
            backslash = match cmd {
                SessionCommand::Set { name, value } if name == SCS => {
                    if value.eq_ignore_ascii_case("default") {
                        self.default_backslash_strings()
                    } else {
                        is_off(value)
                    }
                }
                SessionCommand::Reset { name } if name == SCS => self.default_backslash_strings(),
                SessionCommand::ResetAll | SessionCommand::DiscardAll => {
                    self.default_backslash_strings()
                }
                _ => backslash,
            };
        }
        LexOptions {
            standard_conforming_strings: !backslash,
        }
    }

    /// `standard_conforming_strings` is off without a SET: from the startup packet, or the
    /// server's own default.
    fn default_backslash_strings(&self) -> bool {
        self.startup
            .get(SCS)
            .filter(|v| !v.eq_ignore_ascii_case("default"))
            .map_or(self.server_backslash_strings, |v| is_off(v))
    }

    /// SQL that turns a server connection's settings into this client's.
    pub(crate) fn sync_sql(&self) -> String {
        // RESET ALL leaves the role and session authorization alone (PostgreSQL marks
        // them GUC_NO_RESET_ALL): reset those explicitly, or one client's SET ROLE
        // would follow the connection to the next client.
        let mut sql = String::from("RESET ALL;RESET ROLE;SET SESSION AUTHORIZATION DEFAULT");
        // A startup parameter's value is read as the server reads it from the startup packet,
        // which set_config does and SET does not: `SET search_path TO 'a,b'` names one schema
        // called "a,b", where the startup parameter `search_path=a,b` names two. Each one
        // is applied even when a SET changed it since, as a direct session has it under the
        // SET: `SET DateStyle = ISO` keeps the startup value's day order (session 10 found
        // `ISO, MDY` where PostgreSQL shows `ISO, DMY` after a re-application).
        for (name, value) in &self.startup {
            sql.push_str(&format!(
                ";SELECT pg_catalog.set_config({}, {value}, false)",
                quote_literal(name)
            ));
        }
        for (name, value) in &self.sets {
            if name == "timezone" {
                // `SET TIME ZONE` takes forms `SET timezone TO` does not (`INTERVAL '+05:30'
                // HOUR TO MINUTE`), and every value `SET timezone TO` takes.
                sql.push_str(&format!(";SET TIME ZONE {value}"));
            } else {
                sql.push_str(&format!(";SET {} TO {}", quote_name(name), value));
            }
        }
        sql
    }

    /// For a command putting startup parameters back (`RESET x` or `SET x TO DEFAULT`, `RESET
    /// ALL`, `DISCARD ALL`): SQL that gives them this client's startup values again, to run
    /// right after it on the same connection, in its transaction. The server's own reset values
    /// are those of shardgate's login, not the client's, where a direct connection resets to the
    /// startup packet's (session 8 showed the server's default until the transaction ended).
    /// `is_local`: for the rest of the transaction only (`SET LOCAL x TO DEFAULT`).
    fn restore_sql(&self, cmd: &SessionCommand, is_local: bool) -> Option<String> {
        if self.startup.is_empty() {
            return None;
        }
        let restore: Vec<(&String, &String)> = match cmd {
            SessionCommand::Reset { name } => {
                vec![self.startup.get_key_value(name.as_str())?]
            }
            // Not the role, as RESET ALL. After DISCARD ALL the connection's settings are
            // re-applied from scratch, startup role included, before the next request; that
            // matches a direct connection step by step (tests/session_state.rs,
            // `a_startup_role_through_discard_all_matches_a_direct_connection`).
            SessionCommand::ResetAll | SessionCommand::DiscardAll => self
                .startup
                .iter()
                .filter(|(name, _)| !NOT_RESET_BY_RESET_ALL.contains(&name.as_str()))
                .collect(),
            _ => return None,
        };
        // A per-transaction setting cannot be set after the transaction's first statement.
        let restore: Vec<_> = restore
            .into_iter()
            .filter(|(name, _)| !PER_TRANSACTION.contains(&name.as_str()))
            .collect();
        if restore.is_empty() {
            return None;
        }
        let calls: Vec<String> = restore
            .into_iter()
            .map(|(name, value)| {
                format!(
                    "pg_catalog.set_config({}, {value}, {is_local})",
                    quote_literal(name)
                )
            })
            .collect();
        Some(format!("SELECT {}", calls.join(", ")))
    }

    /// [`SessionParams::restore_sql`] for a tracked command; `more`: more may run in its
    /// transaction even outside a transaction block (a simple Query of several statements, which
    /// PostgreSQL runs as one implicit block, or an Execute, whose transaction lasts until Sync).
    fn restore_for(&self, op: &Op, more: bool) -> Option<String> {
        match op {
            Op::Session(cmd) => self.restore_sql(cmd, false),
            // A lone SET LOCAL outside a block warns and its value ends with it: nothing to
            // restore, and a restore in the text would make it a block and drop the warning.
            Op::LocalDefault(name) if more || self.in_block_once_queued_run() => self.restore_sql(
                &SessionCommand::Reset {
                    name: name.to_owned(),
                },
                true,
            ),
            Op::LocalDefault(_) | Op::Transaction(_) => None,
        }
    }

    /// Whether a transaction block is open once what is queued so far has run (if it succeeds).
    fn in_block_once_queued_run(&self) -> bool {
        use TransactionCommand as T;
        let mut open = self.block.is_some();
        for (_, op, _) in &self.queued {
            match op {
                Op::Transaction(T::Begin | T::Savepoint { .. }) => open = true,
                Op::Transaction(T::Commit { chain } | T::Rollback { chain }) => open = *chain,
                Op::Transaction(T::Prepare) => open = false,
                _ => {}
            }
        }
        open
    }

    /// Looks for tracked commands in a simple-protocol Query, which runs them now; what must
    /// run with it to give startup parameters it resets their startup values.
    pub(crate) fn observe(&mut self, sql: &[u8]) -> Option<Restore> {
        let opts = self.lex_options();
        let mut ops = Vec::new();
        tracked_commands(sql, opts, |op, end| ops.push((op, end)));
        let mut in_text = Vec::new();
        let mut after_discard = None;
        let lone = ops.len() == 1 && single_statement(sql).is_some();
        for (op, end) in ops {
            let restore = self.restore_for(&op, !lone);
            let in_text_restore = match restore {
                // In a longer text DISCARD ALL fails, and so would the text around a restore.
                Some(restore) if op == Op::Session(SessionCommand::DiscardAll) => {
                    if lone {
                        after_discard = Some(restore);
                    }
                    false
                }
                Some(restore) => {
                    in_text.push((end, restore));
                    true
                }
                None => false,
            };
            self.queue(op, in_text_restore);
        }
        self.requests_sent += 1;
        match after_discard {
            Some(restore) => Some(Restore::AfterDiscard(restore)),
            None if in_text.is_empty() => None,
            None => Some(Restore::InText(in_text)),
        }
    }

    /// Whether `sql` holds a `DEALLOCATE [PREPARE] name` of a statement `has` says the client
    /// has, read as the session reads it.
    pub(crate) fn deallocates_any(&self, sql: &[u8], has: impl Fn(&[u8]) -> bool) -> bool {
        const WORD: &[u8] = b"deallocate";
        let mentioned = memchr::memchr2_iter(b'd', b'D', sql).any(|i| {
            sql.get(i..i + WORD.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(WORD))
        });
        let mut hit = false;
        if mentioned {
            tracked_commands(sql, self.lex_options(), |op, _| {
                if let Op::Session(SessionCommand::Deallocate { name: Some(name) }) = &op {
                    hit |= has(name.as_bytes());
                }
            });
        }
        hit
    }

    /// A request ended by a Sync (the client's, or shardgate's own) was sent.
    pub(crate) fn observe_sync(&mut self) {
        self.requests_sent += 1;
    }

    fn queue(&mut self, op: Op, restore_follows: bool) {
        if op.is_local() {
            self.local_in_transaction = true;
        }
        if op.changes_settings() {
            self.queued_settings += 1;
        }
        self.queued
            .push_back((self.requests_sent, op, restore_follows));
    }

    /// Looks for a tracked command in a Parse of statement `name` (empty: the unnamed one). It
    /// takes effect when a portal bound to the statement runs ([`SessionParams::observe_bind`],
    /// [`SessionParams::observe_execute`]), not when it is prepared: a SET that is parsed and
    /// never executed changes nothing on the server. A `SET LOCAL` counts from the Parse on,
    /// which only keeps the statements parsed meanwhile to this client.
    pub(crate) fn observe_parse(&mut self, name: &[u8], sql: &[u8]) {
        let mut found = None;
        tracked_commands(sql, self.lex_options(), |op, _| found = Some(op));
        if found.as_ref().is_some_and(Op::is_local) {
            self.local_in_transaction = true;
        }
        match found {
            Some(op) => {
                self.statement_commands.insert(name.to_vec(), op);
            }
            None if !self.statement_commands.is_empty() => {
                self.statement_commands.remove(name);
            }
            None => {}
        }
    }

    /// A Bind of `portal` to `statement`: the portal runs the statement's tracked command.
    pub(crate) fn observe_bind(&mut self, portal: &[u8], statement: &[u8]) {
        if self.statement_commands.is_empty() && self.portal_commands.is_empty() {
            return;
        }
        match self.statement_commands.get(statement) {
            Some(op) => {
                self.portal_commands.insert(portal.to_vec(), op.clone());
            }
            None => {
                self.portal_commands.remove(portal);
            }
        }
    }

    /// The statement name a `DEALLOCATE name` bound to `portal` deallocates, if it is one.
    pub(crate) fn portal_deallocates(&self, portal: &[u8]) -> Option<&str> {
        match self.portal_commands.get(portal)? {
            Op::Session(SessionCommand::Deallocate { name: Some(name) }) => Some(name),
            _ => None,
        }
    }

    /// An Execute of `portal`: its tracked command, if any, runs now. Returns the SQL that must
    /// run right after it when it puts startup parameters back (see `restore_sql`).
    pub(crate) fn observe_execute(&mut self, portal: &[u8]) -> Option<String> {
        if self.portal_commands.is_empty() {
            return None;
        }
        let op = self.portal_commands.get(portal).cloned()?;
        let restore = self.restore_for(&op, true);
        self.queue(op, false);
        restore
    }

    /// Whether settings may be changing: a command that changes them was sent and not
    /// answered, or ran in a transaction that has not ended.
    pub(crate) fn unsettled(&self) -> bool {
        self.queued_settings > 0
            || !self.implicit.is_empty()
            || self
                .block
                .as_ref()
                .is_some_and(|levels| levels.iter().any(|(_, cmds)| !cmds.is_empty()))
    }

    /// A CommandComplete (`tag`, with its NUL) arrived. Tracked commands take effect in the
    /// order the server completes them; one the server completed that was not seen being sent
    /// means the server connection's settings are no longer known. True when the command it
    /// answers has shardgate's restore of startup values behind it in the same text.
    pub(crate) fn observe_command_tag(&mut self, tag: &[u8]) -> bool {
        let tag = tag.strip_suffix(&[0]).unwrap_or(tag);
        let matches = match self.queued.front() {
            Some((_, op, _)) => op.answered_by(tag),
            None => false,
        };
        if matches {
            if let Some((_, op, restore_follows)) = self.queued.pop_front() {
                if op.changes_settings() {
                    self.queued_settings -= 1;
                }
                self.apply(op, tag);
                return restore_follows;
            }
        } else if tracked_tag(tag) {
            self.lost_track();
        }
        false
    }

    /// A transaction shardgate ended itself, unseen by this tracking (the COMMIT or ROLLBACK of
    /// a fan-out it wrapped in one, a two-phase commit): what the transaction changed is kept
    /// if it committed. True if it had changed settings, which the server connections it ran
    /// on may now carry or not: they must be re-applied from scratch.
    pub(crate) fn end_unseen(&mut self, committed: bool) -> bool {
        let changed = self.unsettled();
        self.local_in_transaction = false;
        if self.block.is_some() || !self.implicit.is_empty() {
            self.end_block(committed, false);
        }
        changed
    }

    /// An ErrorResponse: the rest of the request is skipped by the server, and an implicit
    /// transaction is undone (a transaction block is failed, and its end will undo it).
    pub(crate) fn observe_error(&mut self) {
        self.drop_answered(false);
        self.implicit.clear();
    }

    /// Drops what the request being answered still has queued; `unexpected`: it should have
    /// been answered.
    fn drop_answered(&mut self, unexpected: bool) {
        while let Some((request, _, _)) = self.queued.front() {
            if *request > self.requests_answered {
                break;
            }
            if let Some((_, op, _)) = self.queued.pop_front() {
                if op.changes_settings() {
                    self.queued_settings -= 1;
                }
                if unexpected {
                    self.lost_track();
                }
            }
        }
    }

    /// The server connection may carry settings this client's fingerprint does not describe:
    /// the next checkout re-applies the client's settings from scratch (`RESET ALL` first).
    fn lost_track(&mut self) {
        tracing::debug!("session settings changed in a way shardgate did not follow");
        self.effects.server_reset = true;
    }

    fn begin_block(&mut self) {
        if self.block.is_none() {
            // A BEGIN inside a multi-statement request takes what ran before it in.
            self.block = Some(vec![(None, std::mem::take(&mut self.implicit))]);
        }
    }

    fn end_block(&mut self, keep: bool, chain: bool) {
        let levels = match self.block.take() {
            Some(levels) => levels,
            // COMMIT or ROLLBACK outside a block ends the implicit transaction.
            None => vec![(None, std::mem::take(&mut self.implicit))],
        };
        if keep {
            for (_, cmds) in levels {
                for cmd in cmds {
                    self.settle(cmd);
                }
            }
        }
        if chain {
            self.block = Some(vec![(None, Vec::new())]);
        }
    }

    /// What a tracked command does once the server completed it with `tag`.
    fn apply(&mut self, op: Op, tag: &[u8]) {
        use TransactionCommand as T;
        self.touch(&op, tag);
        match op {
            Op::Session(SessionCommand::Local) | Op::LocalDefault(_) => {}
            // Not transactional: they take effect at once, whatever follows.
            Op::Session(
                cmd @ (SessionCommand::Deallocate { .. }
                | SessionCommand::Discard
                | SessionCommand::DiscardAll),
            ) => self.settle(cmd),
            Op::Session(cmd) => match self.block.as_mut().and_then(|levels| levels.last_mut()) {
                Some((_, cmds)) => cmds.push(cmd),
                None => self.implicit.push(cmd),
            },
            Op::Transaction(T::Begin) => self.begin_block(),
            Op::Transaction(T::Commit { chain }) => self.end_block(tag == b"COMMIT", chain),
            Op::Transaction(T::Prepare) => self.end_block(tag != b"ROLLBACK", false),
            Op::Transaction(T::Rollback { chain }) => self.end_block(false, chain),
            Op::Transaction(T::Savepoint { name }) => {
                self.begin_block();
                if let Some(levels) = self.block.as_mut() {
                    levels.push((Some(name), Vec::new()));
                }
            }
            Op::Transaction(T::Release { name }) => match self.savepoint(&name) {
                // Its level and those above it join the level below.
                Some(i) => {
                    if let Some(levels) = self.block.as_mut() {
                        let merged: Vec<SessionCommand> =
                            levels.drain(i..).flat_map(|(_, cmds)| cmds).collect();
                        if let Some((_, below)) = levels.last_mut() {
                            below.extend(merged);
                        }
                    }
                }
                None => self.lost_track(),
            },
            Op::Transaction(T::RollbackTo { name }) => match self.savepoint(&name) {
                // The savepoint stays; what ran since it is undone.
                Some(i) => {
                    if let Some(levels) = self.block.as_mut() {
                        levels.truncate(i + 1);
                        if let Some((_, cmds)) = levels.last_mut() {
                            cmds.clear();
                        }
                    }
                }
                None => self.lost_track(),
            },
        }
    }

    /// Notes what `op`, completed with `tag`, may have changed in the cycle under way.
    fn touch(&mut self, op: &Op, tag: &[u8]) {
        use TransactionCommand as T;
        match op {
            Op::Session(SessionCommand::Set { name, .. } | SessionCommand::Reset { name }) => {
                self.touched.names.push(name.clone());
            }
            Op::Session(
                SessionCommand::ResetAll | SessionCommand::DiscardAll | SessionCommand::Local,
            )
            | Op::LocalDefault(_)
            | Op::Transaction(T::Rollback { .. } | T::RollbackTo { .. }) => {
                self.touched.all = true;
            }
            // A failed transaction's COMMIT answers ROLLBACK.
            Op::Transaction(T::Commit { .. } | T::Prepare) => {
                self.touched.all |= tag == b"ROLLBACK";
            }
            Op::Session(SessionCommand::Deallocate { .. } | SessionCommand::Discard)
            | Op::Transaction(T::Begin | T::Savepoint { .. } | T::Release { .. }) => {}
        }
    }

    /// Whether a change of the reported setting `name` (lowercased) is one a command this
    /// cycle explains: one completed (see `touch`), or one sent and not answered yet (servers
    /// before PostgreSQL 14 report a change as it happens, before its CommandComplete).
    fn explains(&self, name: &str) -> bool {
        // `SET "TimeZone"` keeps its case.
        let same = |n: &str| {
            n.eq_ignore_ascii_case(name)
                || (IDENTITY_REPORTS.contains(&n) && IDENTITY_REPORTS.contains(&name))
        };
        // Only the request being answered: a pipelined request behind it explains nothing yet.
        let mut current = self
            .queued
            .iter()
            .take_while(|(request, _, _)| *request <= self.requests_answered);
        self.touched.all
            || self.local_in_transaction
            || self.touched.names.iter().any(|n| same(n))
            || current.any(|(_, op, _)| match op {
                Op::Session(
                    SessionCommand::Set { name: n, .. } | SessionCommand::Reset { name: n },
                ) => same(n),
                Op::Session(SessionCommand::ResetAll | SessionCommand::DiscardAll)
                | Op::LocalDefault(_)
                | Op::Transaction(_) => true,
                Op::Session(_) => false,
            })
    }

    /// A ParameterStatus (`body`) the server sent with a reply for this client: a reported
    /// setting changed, maybe where shardgate cannot see (a function calling `set_config(name,
    /// value, false)`). The server reports each change, at the ReadyForQuery after it, so the
    /// last report is the connection's value: a re-appliable setting's reported value is taken
    /// into the client's settings as a SET would be, in the transaction under way, whatever
    /// else the request did (a SET LOCAL and a function's set_config in one transaction leave
    /// the function's value, which no command of the client's shows). The connection's
    /// settings stay the ones the client's fingerprint describes and the client keeps them on
    /// its next connection, as on a direct one. A change of the session's identity, or of a
    /// setting not re-applied that way, that no command of the request explains leaves the
    /// connection's settings unknown: the next checkout re-applies from scratch.
    pub(crate) fn observe_parameter_status(&mut self, body: &[u8]) {
        let mut fields = body.split(|&b| b == 0);
        let (Some(name), Some(value)) = (fields.next(), fields.next()) else {
            return;
        };
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        if SERVER_REPORTS.contains(&name.as_str()) {
            return;
        }
        if !ADOPTED_REPORTS.contains(&name.as_str()) {
            if !self.explains(&name) {
                self.lost_track();
            }
            return;
        }
        let value = String::from_utf8_lossy(value);
        tracing::trace!(name, value = %value, "a reported setting changed");
        let cmd = SessionCommand::Set {
            value: quote_literal(&value),
            name,
        };
        match self.block.as_mut().and_then(|levels| levels.last_mut()) {
            Some((_, cmds)) => cmds.push(cmd),
            None => self.implicit.push(cmd),
        }
    }

    /// The level of the innermost savepoint called `name`.
    fn savepoint(&self, name: &str) -> Option<usize> {
        let levels = self.block.as_ref()?;
        levels
            .iter()
            .rposition(|(n, _)| n.as_deref() == Some(name))
            .filter(|&i| i > 0)
    }

    /// A command whose effect is final: it changes the client's settings.
    fn settle(&mut self, cmd: SessionCommand) {
        match cmd {
            // These hold for the transaction they ran in only: the server sets them afresh at
            // every transaction's start. Re-applied on another connection, after the
            // set_config of a startup parameter, `transaction_isolation` fails ("must be
            // called before any query") and so would every later request of the session.
            SessionCommand::Set { name, .. } if PER_TRANSACTION.contains(&name.as_str()) => {}
            SessionCommand::Set { name, value } => {
                self.sets.insert(name, value);
            }
            SessionCommand::Reset { name } => {
                self.effects.server_reset |= self.startup.contains_key(&name);
                self.sets.remove(&name);
            }
            SessionCommand::ResetAll => {
                self.effects.server_reset |= !self.startup.is_empty();
                // As on the server, RESET ALL keeps the role and session authorization.
                self.sets
                    .retain(|name, _| NOT_RESET_BY_RESET_ALL.contains(&name.as_str()));
            }
            SessionCommand::DiscardAll => {
                self.sets.clear();
                self.effects.statements_dropped = true;
                self.effects.server_reset = true;
            }
            SessionCommand::Deallocate { name: None } => self.effects.statements_dropped = true,
            SessionCommand::Deallocate { name: Some(_) }
            | SessionCommand::Discard
            | SessionCommand::Local => {}
        }
        self.refingerprint();
    }

    /// Called at each ReadyForQuery with its status: what the request's commands did.
    pub(crate) fn end_cycle(&mut self, status: u8) -> Effects {
        self.drop_answered(true);
        self.touched.all = false;
        self.touched.names.clear();
        self.requests_answered += 1;
        if status == b'I' {
            self.local_in_transaction = false;
            if self.block.take().is_some() {
                // The block ended without an end the server reported to this session.
                self.lost_track();
            }
            for cmd in std::mem::take(&mut self.implicit) {
                self.settle(cmd);
            }
        } else {
            // In a block (one whose BEGIN shardgate sent itself, too).
            self.begin_block();
        }
        std::mem::take(&mut self.effects)
    }

    /// The server skipped `n` Syncs the client sent during a COPY: they get no answer.
    pub(crate) fn syncs_skipped(&mut self, n: u64) {
        self.requests_answered += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_deallocate_names_its_statement() {
        for (sql, name) in [
            (&b"DEALLOCATE _pg3_0"[..], Some("_pg3_0")),
            (b"  deallocate prepare St1 ;\n", Some("st1")),
            (b"/* psycopg */ DEALLOCATE \"Mixed\"", Some("Mixed")),
            (b"DEALLOCATE prepare", Some("prepare")),
            (b"DEALLOCATE ALL", None),
            (b"DEALLOCATE PREPARE ALL", None),
            (b"DEALLOCATE a; DEALLOCATE b", None),
            (b"DEALLOCATE a; SELECT 1", None),
            (b"SELECT 1", None),
            (b"DEALLOCATE", None),
        ] {
            let got = lone_deallocate(sql);
            assert_eq!(got.as_deref(), name, "{}", String::from_utf8_lossy(sql));
        }
    }

    #[test]
    fn only_texts_starting_with_another_word_are_ruled_out() {
        let words: &[&[u8]] = &[b"SET", b"RESET", b"SHOW"];
        for (sql, maybe) in [
            (&b"SET shardgate.target = primary"[..], true),
            (b"  \n\treset shardgate.target", true),
            (b"Show shardgate.route", true),
            (b"/* hint */ SET shardgate.target = primary", true),
            (b"-- c\nSHOW shardgate.route", true),
            (b"set/**/shardgate.target = primary", true),
            (b"\x0bSET x = 1", true),
            (b"", true),
            (b"SELECT 'shardgate'", false),
            (b" select shardgate.x()", false),
            (b"SETTINGS shardgate", false),
            (b"SHOWS shardgate", false),
        ] {
            assert_eq!(
                may_start_with(sql, words),
                maybe,
                "{}",
                String::from_utf8_lossy(sql)
            );
        }
    }

    fn startup() -> SessionParams {
        SessionParams::from_startup(&[
            ("user".into(), "app".into()),
            ("application_name".into(), "it's".into()),
        ])
    }

    /// Sends `sql` as a simple Query and answers it as the server would: `replies` are the
    /// CommandComplete tags in order (`"E"` an ErrorResponse), then ReadyForQuery(`status`).
    fn query(p: &mut SessionParams, sql: &str, replies: &[&str], status: u8) -> Effects {
        p.observe(sql.as_bytes());
        answer(p, replies, status)
    }

    fn answer(p: &mut SessionParams, replies: &[&str], status: u8) -> Effects {
        for r in replies {
            if *r == "E" {
                p.observe_error();
            } else {
                p.observe_command_tag(format!("{r}\0").as_bytes());
            }
        }
        p.end_cycle(status)
    }

    fn search_path(p: &SessionParams) -> Option<String> {
        let sql = p.sync_sql();
        let (_, tail) = sql.rsplit_once("SET search_path TO ")?;
        Some(tail.split(';').next()?.to_owned())
    }

    fn report(p: &mut SessionParams, name: &str, value: &str) {
        p.observe_parameter_status(format!("{name}\0{value}\0").as_bytes());
    }

    #[test]
    fn a_reported_change_is_kept_where_a_set_would_be() {
        // Outside a transaction: kept at ReadyForQuery, and re-applied on other connections.
        let mut p = startup();
        let before = p.fingerprint();
        p.observe(b"SELECT f()");
        report(&mut p, "TimeZone", "Asia/Tokyo");
        let effects = p.end_cycle(b'I');
        assert!(!effects.server_reset);
        assert_ne!(p.fingerprint(), before);
        assert!(
            p.sync_sql().ends_with(";SET TIME ZONE 'Asia/Tokyo'"),
            "{}",
            p.sync_sql()
        );
        // In a transaction that rolls back: gone, and the server's report of the old value
        // back is the rollback's.
        let kept = p.fingerprint();
        query(&mut p, "BEGIN", &["BEGIN"], b'T');
        p.observe(b"SELECT f()");
        report(&mut p, "DateStyle", "SQL, DMY");
        p.end_cycle(b'T');
        p.observe(b"ROLLBACK");
        p.observe_command_tag(b"ROLLBACK\0");
        report(&mut p, "DateStyle", "ISO, MDY");
        p.end_cycle(b'I');
        assert_ne!(p.fingerprint(), kept);
        assert!(
            p.sync_sql().contains(";SET datestyle TO 'ISO, MDY'"),
            "{}",
            p.sync_sql()
        );
        // A SET LOCAL, then a function's set_config: the server keeps the function's value at
        // COMMIT, and reports nothing then.
        query(&mut p, "BEGIN", &["BEGIN"], b'T');
        p.observe(b"SET LOCAL TimeZone = 'Europe/Paris'");
        p.observe_command_tag(b"SET\0");
        report(&mut p, "TimeZone", "Europe/Paris");
        p.end_cycle(b'T');
        p.observe(b"SELECT f()");
        report(&mut p, "TimeZone", "America/Lima");
        p.end_cycle(b'T');
        query(&mut p, "COMMIT", &["COMMIT"], b'I');
        assert!(
            p.sync_sql().contains(";SET TIME ZONE 'America/Lima'"),
            "{}",
            p.sync_sql()
        );
        // A SET's own report: the value as the server reports it.
        p.observe(b"SET application_name = 'x'");
        p.observe_command_tag(b"SET\0");
        report(&mut p, "application_name", "x");
        p.end_cycle(b'I');
        assert!(
            p.sync_sql().contains(";SET application_name TO 'x'"),
            "{}",
            p.sync_sql()
        );
        // Before PostgreSQL 14 the report comes before the CommandComplete.
        p.observe(b"RESET application_name");
        report(&mut p, "application_name", "it's");
        p.observe_command_tag(b"RESET\0");
        p.end_cycle(b'I');
        assert!(
            !p.sync_sql().contains("SET application_name"),
            "{}",
            p.sync_sql()
        );
        // Facts about the server are not settings.
        let now = p.fingerprint();
        report(&mut p, "in_hot_standby", "off");
        assert!(!p.end_cycle(b'I').server_reset);
        assert_eq!(p.fingerprint(), now);
    }

    #[test]
    fn a_reported_change_of_identity_or_of_an_unknown_setting_leaves_the_connection_unknown() {
        let mut p = startup();
        report(&mut p, "is_superuser", "off");
        assert!(p.end_cycle(b'I').server_reset);
        p.observe(b"SET ROLE nobody");
        p.observe_command_tag(b"SET\0");
        report(&mut p, "is_superuser", "off");
        assert!(!p.end_cycle(b'I').server_reset);
        report(&mut p, "search_path", "a, b");
        assert!(p.end_cycle(b'I').server_reset);
        // A pipelined request behind explains nothing of the one being answered.
        p.observe(b"SELECT f()");
        p.observe(b"RESET ALL");
        report(&mut p, "is_superuser", "on");
        assert!(p.end_cycle(b'I').server_reset);
        answer(&mut p, &["RESET"], b'I');
        // The request being answered does, before its CommandComplete too (PostgreSQL < 14).
        p.observe(b"SET ROLE other");
        report(&mut p, "is_superuser", "off");
        p.observe_command_tag(b"SET\0");
        assert!(!p.end_cycle(b'I').server_reset);
    }

    #[test]
    fn set_outside_transaction_applies_at_ready() {
        let mut p = startup();
        let before = p.fingerprint();
        p.observe(b"SET statement_timeout = '5s'");
        p.observe_command_tag(b"SET\0");
        assert_eq!(p.fingerprint(), before);
        p.end_cycle(b'I');
        assert_ne!(p.fingerprint(), before);
        assert_eq!(
            p.sync_sql(),
            "RESET ALL;RESET ROLE;SET SESSION AUTHORIZATION DEFAULT;\
             SELECT pg_catalog.set_config('application_name', 'it''s', false);\
             SET statement_timeout TO '5s'"
        );
    }

    /// Runs a prepared statement's portal in a request of its own.
    fn execute(p: &mut SessionParams, statement: &str, replies: &[&str]) -> Effects {
        p.observe_bind(b"", statement.as_bytes());
        p.observe_execute(b"");
        p.observe_sync();
        answer(p, replies, b'I')
    }

    #[test]
    fn a_prepared_set_applies_when_it_runs_not_when_it_is_parsed() {
        let mut p = startup();
        let before = p.fingerprint();
        p.observe_parse(b"s", b"SET search_path = a");
        p.observe_parse(b"", b"SELECT 1");
        execute(&mut p, "", &["SELECT 1"]);
        assert_eq!(p.fingerprint(), before, "parsed, never executed");
        // Run later, in a request of its own.
        execute(&mut p, "s", &["SET"]);
        let with_a = p.fingerprint();
        assert_ne!(with_a, before);
        assert_eq!(search_path(&p).as_deref(), Some("a"));
        // A SET by simple query, then the prepared one again: the prepared one wins.
        query(&mut p, "SET search_path = b", &["SET"], b'I');
        assert_eq!(search_path(&p).as_deref(), Some("b"));
        execute(&mut p, "s", &["SET"]);
        assert_eq!(p.fingerprint(), with_a);
        // The unnamed statement replaced by one that is no session command.
        p.observe_parse(b"", b"SET search_path = c");
        p.observe_parse(b"", b"SELECT 2");
        execute(&mut p, "", &["SELECT 1"]);
        assert_eq!(p.fingerprint(), with_a);
    }

    #[test]
    fn multi_statement_requests_and_savepoints_keep_what_the_server_keeps() {
        let path = |sql: &str, replies: &[&str]| {
            let mut p = startup();
            let e = query(&mut p, sql, replies, b'I');
            assert!(!e.server_reset, "{sql}: lost track");
            search_path(&p)
        };
        let x = Some("x".to_owned());
        // Committed, then a later transaction in the same request rolls back.
        assert_eq!(
            path(
                "BEGIN; SET search_path TO x; COMMIT; BEGIN; SELECT 1; ROLLBACK",
                &["BEGIN", "SET", "COMMIT", "BEGIN", "SELECT 1", "ROLLBACK"]
            ),
            x
        );
        // Committed, then a later statement of the request fails.
        assert_eq!(
            path(
                "BEGIN; SET search_path TO x; COMMIT; SELECT 1/0",
                &["BEGIN", "SET", "COMMIT", "E"]
            ),
            x
        );
        // Rolled back, then a later statement succeeds.
        assert_eq!(
            path(
                "BEGIN; SET search_path TO x; ROLLBACK; SELECT 1",
                &["BEGIN", "SET", "ROLLBACK", "SELECT 1"]
            ),
            None
        );
        // Undone by ROLLBACK TO; the savepoint stays.
        assert_eq!(
            path(
                "BEGIN; SAVEPOINT s; SET search_path TO x; ROLLBACK TO SAVEPOINT s; COMMIT",
                &["BEGIN", "SAVEPOINT", "SET", "ROLLBACK", "COMMIT"]
            ),
            None
        );
        // Kept by RELEASE, then COMMIT.
        assert_eq!(
            path(
                "BEGIN; SAVEPOINT s; SET search_path TO x; RELEASE s; COMMIT",
                &["BEGIN", "SAVEPOINT", "SET", "RELEASE", "COMMIT"]
            ),
            x
        );
        // The implicit transaction of a request fails as a whole.
        assert_eq!(
            path("SET search_path TO x; SELECT 1/0", &["SET", "E"]),
            None
        );
        // A failed transaction's COMMIT answers ROLLBACK.
        assert_eq!(
            path(
                "BEGIN; SET search_path TO x; COMMIT",
                &["BEGIN", "SET", "ROLLBACK"]
            ),
            None
        );
        // COMMIT AND CHAIN keeps what ran, and what follows is in a new block.
        let mut p = startup();
        query(
            &mut p,
            "BEGIN; SET search_path TO x; COMMIT AND CHAIN; SET search_path TO y",
            &["BEGIN", "SET", "COMMIT", "SET"],
            b'T',
        );
        query(&mut p, "ROLLBACK", &["ROLLBACK"], b'I');
        assert_eq!(search_path(&p), x);
    }

    #[test]
    fn a_set_the_server_ran_unseen_forces_a_fresh_reapply() {
        let mut p = startup();
        // As if the text had been misread: the server says SET, nothing was expected.
        let e = query(&mut p, "SELECT 1", &["SET"], b'I');
        assert!(e.server_reset);
        // Expected but never answered, without an error.
        let e = query(&mut p, "SET search_path TO x", &[], b'I');
        assert!(e.server_reset);
        assert_eq!(search_path(&p), None);
    }

    #[test]
    fn backslash_strings_are_read_as_the_session_reads_them() {
        let mut p = startup();
        query(
            &mut p,
            "SET standard_conforming_strings = off",
            &["SET"],
            b'I',
        );
        let e = query(
            &mut p,
            "SELECT 'it\\'s'; SET search_path TO x",
            &["SELECT 1", "SET"],
            b'I',
        );
        assert!(!e.server_reset);
        assert_eq!(search_path(&p).as_deref(), Some("x"));
    }

    #[test]
    fn backslash_strings_count_from_the_set_not_the_commit() {
        let mut p = startup();
        query(&mut p, "BEGIN", &["BEGIN"], b'T');
        query(
            &mut p,
            "SET standard_conforming_strings = off",
            &["SET"],
            b'T',
        );
        // One literal now: nothing to track.
        let e = query(
            &mut p,
            "SELECT 'a\\'; SET search_path TO x; --'",
            &["SELECT 1"],
            b'T',
        );
        assert!(!e.server_reset);
        query(
            &mut p,
            "SET standard_conforming_strings = on",
            &["SET"],
            b'T',
        );
        // Two statements again, the SET a real one.
        let e = query(
            &mut p,
            "SELECT 'a\\'; SET search_path TO y; --'",
            &["SELECT 1", "SET"],
            b'T',
        );
        assert!(!e.server_reset);
        query(&mut p, "COMMIT", &["COMMIT"], b'I');
        assert_eq!(search_path(&p).as_deref(), Some("y"));
        // A rolled-back SET no longer counts.
        query(&mut p, "BEGIN", &["BEGIN"], b'T');
        query(
            &mut p,
            "SET standard_conforming_strings = off",
            &["SET"],
            b'T',
        );
        query(&mut p, "ROLLBACK", &["ROLLBACK"], b'I');
        query(
            &mut p,
            "SELECT 'a\\'; SET search_path TO z; --'",
            &["SELECT 1", "SET"],
            b'I',
        );
        assert_eq!(search_path(&p).as_deref(), Some("z"));
    }

    #[test]
    fn options_are_read_as_the_server_reads_them() {
        let got = options_settings(
            " -c search_path=a,b  -cstatement_timeout=5s --application-name=my\\ app\\\\x ",
        )
        .expect("valid");
        assert_eq!(
            got,
            vec![
                ("search_path".to_owned(), "a,b".to_owned()),
                ("statement_timeout".to_owned(), "5s".to_owned()),
                ("application_name".to_owned(), "my app\\x".to_owned()),
            ]
        );
        assert_eq!(options_settings("").expect("empty"), vec![]);
        for (bad, code) in [
            ("-c", "42601"),
            ("-c search_path", "42601"),
            ("--=x", "42601"),
            ("-B 100", "0A000"),
            ("search_path=x", "0A000"),
        ] {
            assert_eq!(
                options_settings(bad).map_err(|e| e.code),
                Err(code),
                "{bad}"
            );
        }
        let params = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect()
        };
        // A parameter given on its own wins; the last of a repeated setting wins.
        assert_eq!(
            expand_options(params(&[
                ("user", "app"),
                ("options", "-c a.x=1 -c TimeZone=UTC -c a.x=2"),
                ("timezone", "Japan"),
            ]))
            .expect("valid"),
            params(&[("a.x", "2"), ("user", "app"), ("timezone", "Japan")])
        );
    }

    #[test]
    fn statements_parsed_after_set_local_are_shared_with_nobody_until_the_transaction_ends() {
        let mut p = startup();
        assert_eq!(p.statement_settings(), p.fingerprint());
        p.observe(b"BEGIN; SET LOCAL search_path = tenant_a");
        let (a, b) = (p.statement_settings(), p.statement_settings());
        assert!(a != p.fingerprint() && b != a, "unshared keys");
        answer(&mut p, &["BEGIN", "SET"], b'T');
        assert_ne!(p.statement_settings(), p.fingerprint());
        query(&mut p, "COMMIT", &["COMMIT"], b'I');
        assert_eq!(p.statement_settings(), p.fingerprint());
    }

    #[test]
    fn literals_read_the_same_whatever_standard_conforming_strings() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"C:\app's"), r"E'C:\\app''s'");
    }

    #[test]
    fn a_trailing_semicolon_leaves_one_statement() {
        assert_eq!(single_statement(b"SELECT 1"), Some(&b"SELECT 1"[..]));
        assert_eq!(single_statement(b"SET a = 1; \n"), Some(&b"SET a = 1"[..]));
        assert_eq!(single_statement(b"SET a = 1;;"), None);
        assert_eq!(single_statement(b"SELECT 1; SET a = 1"), None);
        assert_eq!(single_statement(b"SET a = ';'"), None);
        // Every form reaches the same tracked state.
        for (text, replies) in [
            ("SET search_path TO x", &["SET"][..]),
            ("SET search_path TO x;", &["SET"]),
            ("SET search_path TO x ;\n", &["SET"]),
            ("SELECT 1; SET search_path TO x", &["SELECT 1", "SET"]),
        ] {
            let mut p = startup();
            let before = p.fingerprint();
            query(&mut p, text, replies, b'I');
            assert_ne!(p.fingerprint(), before, "{text}");
            assert_eq!(search_path(&p).as_deref(), Some("x"), "{text}");
        }
    }

    #[test]
    fn rolled_back_or_failed_sets_are_dropped() {
        let mut p = startup();
        let before = p.fingerprint();
        query(
            &mut p,
            "BEGIN; SET search_path TO x",
            &["BEGIN", "SET"],
            b'T',
        );
        query(&mut p, "ROLLBACK", &["ROLLBACK"], b'I');
        assert_eq!(p.fingerprint(), before);
        query(
            &mut p,
            "SET search_path TO x; SELECT 1/0",
            &["SET", "E"],
            b'I',
        );
        assert_eq!(p.fingerprint(), before);
    }

    #[test]
    fn committed_transaction_sets_apply_and_reset_all_clears() {
        let mut p = startup();
        let before = p.fingerprint();
        query(
            &mut p,
            "BEGIN; SET TimeZone = 'UTC'",
            &["BEGIN", "SET"],
            b'T',
        );
        query(&mut p, "COMMIT", &["COMMIT"], b'I');
        assert_ne!(p.fingerprint(), before);
        query(&mut p, "RESET ALL", &["RESET"], b'I');
        assert_eq!(p.fingerprint(), before);
    }

    #[test]
    fn per_transaction_settings_are_not_session_settings() {
        let mut p = startup();
        let before = p.fingerprint();
        for sql in [
            "SET transaction_isolation = 'serializable'",
            "SET transaction_read_only TO on",
            "SET SESSION transaction_deferrable = on",
        ] {
            query(&mut p, &format!("BEGIN; {sql}"), &["BEGIN", "SET"], b'T');
            query(&mut p, "COMMIT", &["COMMIT"], b'I');
            query(&mut p, sql, &["SET"], b'I');
            assert_eq!(p.fingerprint(), before, "{sql}");
            assert!(!p.sync_sql().contains("transaction_"), "{sql}");
        }
    }

    #[test]
    fn reset_of_startup_parameters_asks_for_reapply() {
        let mut p = startup();
        assert!(query(&mut p, "RESET ALL", &["RESET"], b'I').server_reset);
        assert!(query(&mut p, "RESET application_name", &["RESET"], b'I').server_reset);
        assert!(!query(&mut p, "RESET statement_timeout", &["RESET"], b'I').server_reset);
    }

    #[test]
    fn reset_all_keeps_the_role_as_the_server_does() {
        let mut p = startup();
        query(
            &mut p,
            "SET ROLE other; SET search_path TO x",
            &["SET", "SET"],
            b'I',
        );
        query(&mut p, "RESET ALL", &["RESET"], b'I');
        let sql = p.sync_sql();
        assert!(sql.ends_with(";SET role TO other"), "{sql}");
        assert!(!sql.contains("search_path"), "{sql}");
    }

    #[test]
    fn resets_of_startup_parameters_get_their_startup_values_back_where_they_run() {
        let app = "SELECT pg_catalog.set_config('application_name', 'it''s', false)";
        let in_text = |points: &[usize]| {
            Some(Restore::InText(
                points.iter().map(|&end| (end, app.to_owned())).collect(),
            ))
        };
        for (sql, want) in [
            ("RESET application_name", in_text(&[22])),
            ("SET application_name TO DEFAULT;", in_text(&[31])),
            ("RESET ALL", in_text(&[9])),
            ("SELECT 1; RESET ALL", in_text(&[19])),
            ("RESET ALL; SELECT 1", in_text(&[9])),
            (
                "RESET ALL /* a */; SHOW x; reset application_name -- b",
                in_text(&[17, 54]),
            ),
            (
                " discard all ;",
                Some(Restore::AfterDiscard(app.to_owned())),
            ),
            ("SELECT 1; DISCARD ALL", None),
            ("RESET statement_timeout", None),
            ("SET application_name = 'x'", None),
            ("SELECT 1", None),
        ] {
            assert_eq!(startup().observe(sql.as_bytes()), want, "{sql}");
        }
        let none = SessionParams::from_startup(&[("user".into(), "app".into())]);
        assert_eq!(none.clone().observe(b"RESET ALL"), None);
        // As on the server, RESET ALL keeps the role (a SET ROLE since included).
        let role = SessionParams::from_startup(&[("role".into(), "r".into())]);
        assert_eq!(role.clone().observe(b"RESET ALL"), None);
        assert!(role.clone().observe(b"RESET ROLE").is_some());
        // Through the extended protocol: when the portal runs.
        let mut p = startup();
        p.observe_parse(b"r", b"RESET ALL");
        p.observe_bind(b"", b"r");
        assert_eq!(p.observe_execute(b"").as_deref(), Some(app));
    }

    #[test]
    fn set_local_to_default_gets_the_startup_value_back_for_the_transaction() {
        let app = "SELECT pg_catalog.set_config('application_name', 'it''s', true)";
        let in_text = |end: usize| Some(Restore::InText(vec![(end, app.to_owned())]));
        let mut p = startup();
        query(&mut p, "BEGIN", &["BEGIN"], b'T');
        for (sql, want) in [
            ("SET LOCAL application_name TO DEFAULT", in_text(37)),
            ("set local application_name = default;", in_text(36)),
            ("SET LOCAL application_name = 'x'", None),
            ("SET LOCAL statement_timeout TO DEFAULT", None),
        ] {
            assert_eq!(p.clone().observe(sql.as_bytes()), want, "{sql}");
        }
        // Outside a transaction block a lone SET LOCAL changes nothing; in a longer text it
        // runs in the text's implicit block, or in the block a BEGIN before it opens.
        let mut p = startup();
        assert_eq!(p.observe(b"SET LOCAL application_name TO DEFAULT"), None);
        assert_eq!(
            startup().observe(b"SET LOCAL application_name TO DEFAULT; SHOW x"),
            in_text(37)
        );
        let mut p = startup();
        p.observe(b"BEGIN");
        assert_eq!(
            p.observe(b"SET LOCAL application_name TO DEFAULT"),
            in_text(37)
        );
        // Through the extended protocol, in a block or not: the value holds until the Sync.
        let mut p = startup();
        p.observe_parse(b"l", b"SET LOCAL application_name TO DEFAULT");
        p.observe_bind(b"", b"l");
        assert_eq!(p.observe_execute(b"").as_deref(), Some(app));
    }

    #[test]
    fn the_restore_behind_a_reset_is_told_apart_from_the_client_statements() {
        let mut p = startup();
        p.observe(b"SET search_path TO x; RESET ALL; SET search_path TO y");
        assert!(!p.observe_command_tag(b"SET\0"));
        assert!(p.observe_command_tag(b"RESET\0"));
        assert!(!p.observe_command_tag(b"SELECT 1\0"));
        assert!(!p.observe_command_tag(b"SET\0"));
        p.end_cycle(b'I');
        assert_eq!(search_path(&p).as_deref(), Some("y"));
    }

    #[test]
    fn discard_all_drops_statements() {
        let mut p = startup();
        let e = query(&mut p, "discard all", &["DISCARD ALL"], b'I');
        assert!(e.statements_dropped && e.server_reset);
    }
}
