//! Per-client session state (startup parameters and SETs done outside transactions),
//! tracked so that it can be re-applied on whichever server connection the client
//! gets next, and never seen by another client.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use shardgate_sql::{for_each_statement, session_command, LexOptions, SessionCommand};

/// Startup parameters that are protocol plumbing, not session settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options"];

/// Settings PostgreSQL's RESET ALL leaves alone (GUC_NO_RESET_ALL) that SET can change
/// for a session.
const NOT_RESET_BY_RESET_ALL: &[&str] = &["role", "session_authorization"];

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
    /// Seen since the last ReadyForQuery.
    pending: Vec<SessionCommand>,
    /// Seen inside a still-open transaction block.
    in_transaction: Vec<SessionCommand>,
    /// A `SET LOCAL` (or `SET TRANSACTION`, `SET CONSTRAINTS`) was seen in the open
    /// transaction: statements parsed until it ends may be analysed under settings no
    /// fingerprint describes (see [`SessionParams::statement_settings`]).
    local_in_transaction: bool,
    /// The last CommandComplete of the cycle was ROLLBACK (only tracked while something is pending).
    last_was_rollback: bool,
    /// The session command of each of the client's prepared statements that is one, by name
    /// (empty: the unnamed statement).
    statement_commands: HashMap<Vec<u8>, SessionCommand>,
    /// The session command each bound portal runs when executed, by portal name.
    portal_commands: HashMap<Vec<u8>, SessionCommand>,
}

/// Calls `f` with each session command in `sql`, in order.
fn session_commands(sql: &[u8], mut f: impl FnMut(SessionCommand)) {
    if let Some(one) = single_statement(sql) {
        // One statement: its first tokens decide, no need to split the whole text.
        if may_start_with(one, SESSION_COMMAND_WORDS) {
            if let Some(cmd) = session_command(one) {
                f(cmd);
            }
        }
        return;
    }
    for_each_statement(sql, LexOptions::default(), |range| {
        if let Some(cmd) = session_command(&sql[range]) {
            f(cmd);
        }
    });
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

/// The words every command [`session_command`] recognises starts with.
const SESSION_COMMAND_WORDS: &[&[u8]] = &[b"SET", b"RESET", b"DISCARD", b"DEALLOCATE"];

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
fn quote_literal(v: &str) -> String {
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

    /// Changes whenever the effective settings change; equal fingerprints mean a server
    /// connection already carries this client's settings.
    pub(crate) fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The settings key of a statement parsed now: the fingerprint, unless a session command
    /// seen this cycle or in the open transaction is not settled yet, when the server may
    /// analyse the statement under settings no fingerprint describes.
    pub(crate) fn statement_settings(&self) -> u64 {
        if self.watching() || self.local_in_transaction {
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
    }

    /// SQL that turns a server connection's settings into this client's.
    pub(crate) fn sync_sql(&self) -> String {
        // RESET ALL leaves the role and session authorization alone (PostgreSQL marks
        // them GUC_NO_RESET_ALL): reset those explicitly, or one client's SET ROLE
        // would follow the connection to the next client.
        let mut sql = String::from("RESET ALL;RESET ROLE;SET SESSION AUTHORIZATION DEFAULT");
        // A startup parameter's value is read as the server reads it from the startup packet,
        // which set_config does and SET does not: `SET search_path TO 'a,b'` names one schema
        // called "a,b", where the startup parameter `search_path=a,b` names two.
        for (name, value) in self
            .startup
            .iter()
            .filter(|(k, _)| !self.sets.contains_key(*k))
        {
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

    /// Looks for session commands in a simple-protocol Query, which runs them now.
    pub(crate) fn observe(&mut self, sql: &[u8]) {
        let (pending, mut local) = (&mut self.pending, false);
        session_commands(sql, |cmd| match cmd {
            SessionCommand::Local => local = true,
            cmd => pending.push(cmd),
        });
        self.local_in_transaction |= local;
    }

    /// Looks for a session command in a Parse of statement `name` (empty: the unnamed one). It
    /// takes effect when a portal bound to the statement runs ([`SessionParams::observe_bind`],
    /// [`SessionParams::observe_execute`]), not when it is prepared: a SET that is parsed and
    /// never executed changes nothing on the server. A `SET LOCAL` counts from the Parse on,
    /// which only keeps the statements parsed meanwhile to this client.
    pub(crate) fn observe_parse(&mut self, name: &[u8], sql: &[u8]) {
        let (mut found, mut local) = (None, false);
        session_commands(sql, |cmd| match cmd {
            SessionCommand::Local => local = true,
            cmd => found = Some(cmd),
        });
        self.local_in_transaction |= local;
        match found {
            Some(cmd) => {
                self.statement_commands.insert(name.to_vec(), cmd);
            }
            None if !self.statement_commands.is_empty() => {
                self.statement_commands.remove(name);
            }
            None => {}
        }
    }

    /// A Bind of `portal` to `statement`: the portal runs the statement's session command.
    pub(crate) fn observe_bind(&mut self, portal: &[u8], statement: &[u8]) {
        if self.statement_commands.is_empty() && self.portal_commands.is_empty() {
            return;
        }
        match self.statement_commands.get(statement) {
            Some(cmd) => {
                self.portal_commands.insert(portal.to_vec(), cmd.clone());
            }
            None => {
                self.portal_commands.remove(portal);
            }
        }
    }

    /// An Execute of `portal`: its session command, if any, runs now.
    pub(crate) fn observe_execute(&mut self, portal: &[u8]) {
        if self.portal_commands.is_empty() {
            return;
        }
        if let Some(cmd) = self.portal_commands.get(portal) {
            self.pending.push(cmd.clone());
        }
    }

    /// Whether CommandComplete tags matter this cycle.
    pub(crate) fn watching(&self) -> bool {
        !self.pending.is_empty() || !self.in_transaction.is_empty()
    }

    pub(crate) fn observe_command_tag(&mut self, tag: &[u8]) {
        self.last_was_rollback = tag.starts_with(b"ROLLBACK");
    }

    /// Called at each ReadyForQuery with its status and whether the cycle saw an error.
    pub(crate) fn end_cycle(&mut self, status: u8, had_error: bool) -> Effects {
        let rollback = std::mem::take(&mut self.last_was_rollback);
        if status == b'I' {
            self.local_in_transaction = false;
        }
        if self.pending.is_empty() && self.in_transaction.is_empty() {
            return Effects::default();
        }
        if had_error && status == b'I' {
            // Outside a block an error undoes the whole implicit transaction.
            self.pending.clear();
            self.in_transaction.clear();
            return Effects::default();
        }
        if status != b'I' {
            let pending = std::mem::take(&mut self.pending);
            self.in_transaction.extend(pending);
            return Effects::default();
        }
        let mut cmds = std::mem::take(&mut self.in_transaction);
        cmds.append(&mut self.pending);
        if rollback {
            return Effects::default();
        }
        let mut effects = Effects::default();
        for cmd in cmds {
            match cmd {
                SessionCommand::Set { name, value } => {
                    self.sets.insert(name, value);
                }
                SessionCommand::Reset { name } => {
                    effects.server_reset |= self.startup.contains_key(&name);
                    self.sets.remove(&name);
                }
                SessionCommand::ResetAll => {
                    effects.server_reset |= !self.startup.is_empty();
                    // As on the server, RESET ALL keeps the role and session authorization.
                    self.sets
                        .retain(|name, _| NOT_RESET_BY_RESET_ALL.contains(&name.as_str()));
                }
                SessionCommand::DiscardAll => {
                    self.sets.clear();
                    effects.statements_dropped = true;
                    effects.server_reset = true;
                }
                SessionCommand::Deallocate { name: None } => effects.statements_dropped = true,
                SessionCommand::Deallocate { name: Some(_) }
                | SessionCommand::Discard
                | SessionCommand::Local => {}
            }
        }
        self.refingerprint();
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn set_outside_transaction_applies_at_ready() {
        let mut p = startup();
        let before = p.fingerprint();
        p.observe(b"SET statement_timeout = '5s'");
        assert_eq!(p.fingerprint(), before);
        p.end_cycle(b'I', false);
        assert_ne!(p.fingerprint(), before);
        assert_eq!(
            p.sync_sql(),
            "RESET ALL;RESET ROLE;SET SESSION AUTHORIZATION DEFAULT;\
             SELECT pg_catalog.set_config('application_name', 'it''s', false);\
             SET statement_timeout TO '5s'"
        );
    }

    #[test]
    fn a_prepared_set_applies_when_it_runs_not_when_it_is_parsed() {
        let mut p = startup();
        let before = p.fingerprint();
        p.observe_parse(b"s", b"SET search_path = a");
        p.observe_parse(b"", b"SELECT 1");
        p.observe_bind(b"", b"");
        p.observe_execute(b"");
        p.end_cycle(b'I', false);
        assert_eq!(p.fingerprint(), before, "parsed, never executed");
        // Run later, in a cycle of its own, through a named portal.
        p.observe_bind(b"pt", b"s");
        p.observe_execute(b"pt");
        p.end_cycle(b'I', false);
        let with_a = p.fingerprint();
        assert_ne!(with_a, before);
        assert!(
            p.sync_sql().ends_with(";SET search_path TO a"),
            "{}",
            p.sync_sql()
        );
        // A SET by simple query, then the prepared one again: the prepared one wins.
        p.observe(b"SET search_path = b");
        p.end_cycle(b'I', false);
        assert!(p.sync_sql().ends_with(";SET search_path TO b"));
        p.observe_bind(b"", b"s");
        p.observe_execute(b"");
        p.end_cycle(b'I', false);
        assert_eq!(p.fingerprint(), with_a);
        // The unnamed statement replaced by one that is no session command.
        p.observe_parse(b"", b"SET search_path = c");
        p.observe_parse(b"", b"SELECT 2");
        p.observe_bind(b"", b"");
        p.observe_execute(b"");
        p.end_cycle(b'I', false);
        assert_eq!(p.fingerprint(), with_a);
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
        p.end_cycle(b'T', false);
        assert_ne!(p.statement_settings(), p.fingerprint());
        p.end_cycle(b'I', false);
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
        for text in [
            &b"SET search_path TO x"[..],
            b"SET search_path TO x;",
            b"SET search_path TO x ;\n",
            b"SELECT 1; SET search_path TO x",
        ] {
            let mut p = startup();
            let before = p.fingerprint();
            p.observe(text);
            p.end_cycle(b'I', false);
            assert_ne!(p.fingerprint(), before, "{}", String::from_utf8_lossy(text));
            assert!(
                p.sync_sql().ends_with("SET search_path TO x"),
                "{}",
                p.sync_sql()
            );
        }
    }

    #[test]
    fn rolled_back_or_failed_sets_are_dropped() {
        let mut p = startup();
        let before = p.fingerprint();
        p.observe(b"BEGIN; SET search_path TO x");
        p.end_cycle(b'T', false);
        p.observe_command_tag(b"ROLLBACK");
        p.end_cycle(b'I', false);
        assert_eq!(p.fingerprint(), before);
        p.observe(b"SET search_path TO x; SELECT 1/0");
        p.end_cycle(b'I', true);
        assert_eq!(p.fingerprint(), before);
    }

    #[test]
    fn committed_transaction_sets_apply_and_reset_all_clears() {
        let mut p = startup();
        let before = p.fingerprint();
        p.observe(b"SET TimeZone = 'UTC'");
        p.end_cycle(b'T', false);
        p.observe_command_tag(b"COMMIT");
        p.end_cycle(b'I', false);
        assert_ne!(p.fingerprint(), before);
        p.observe(b"RESET ALL");
        p.end_cycle(b'I', false);
        assert_eq!(p.fingerprint(), before);
    }

    #[test]
    fn reset_of_startup_parameters_asks_for_reapply() {
        let mut p = startup();
        p.observe(b"RESET ALL");
        assert!(p.end_cycle(b'I', false).server_reset);
        p.observe(b"RESET application_name");
        assert!(p.end_cycle(b'I', false).server_reset);
        p.observe(b"RESET statement_timeout");
        assert!(!p.end_cycle(b'I', false).server_reset);
    }

    #[test]
    fn reset_all_keeps_the_role_as_the_server_does() {
        let mut p = startup();
        p.observe(b"SET ROLE other; SET search_path TO x");
        p.end_cycle(b'I', false);
        p.observe(b"RESET ALL");
        p.end_cycle(b'I', false);
        let sql = p.sync_sql();
        assert!(sql.ends_with(";SET role TO other"), "{sql}");
        assert!(!sql.contains("search_path"), "{sql}");
    }

    #[test]
    fn discard_all_drops_statements() {
        let mut p = startup();
        p.observe(b"discard all");
        let e = p.end_cycle(b'I', false);
        assert!(e.statements_dropped && e.server_reset);
    }
}
