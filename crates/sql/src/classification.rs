//! What the classifier reports about one Query message: whether it may run on a replica, the
//! transaction-control statements it holds, routing hints from comments, and shardgate's own
//! settings commands. Plain data; the deciding happens in `statement.rs` and `classifier.rs`.

use crate::lexer::comments;

/// A routing hint written in a comment anywhere in the message, e.g. `/* shardgate: replica */`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// `shardgate: primary`.
    Primary,
    /// `shardgate: replica`.
    Replica,
    /// `shardgate: shard=<name>`.
    Shard(String),
    /// `shardgate: shard_key=<key>`.
    ShardKey(String),
}

/// A transaction-control statement, read from its leading keywords.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnControl {
    /// `BEGIN` / `START TRANSACTION`; `read_only` when its modes say `READ ONLY`.
    Begin {
        /// The transaction was opened `READ ONLY` (and not also `READ WRITE`).
        read_only: bool,
    },
    /// `COMMIT` / `END`.
    Commit,
    /// `ROLLBACK` / `ABORT`.
    Rollback,
    /// `SET TRANSACTION ... READ ONLY`.
    SetTransactionReadOnly,
    /// `SAVEPOINT`, `RELEASE [SAVEPOINT]`, `ROLLBACK TO [SAVEPOINT]`.
    Savepoint,
    /// Two-phase commit: `PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK PREPARED`.
    Other,
}

/// Why a statement must go to the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhyWrite {
    /// `INSERT`, `UPDATE`, `DELETE`, `MERGE`.
    Dml,
    /// `COPY ... FROM`.
    CopyFrom,
    /// `CREATE`, `ALTER`, `DROP`, `TRUNCATE`, `COMMENT`, ...
    Ddl,
    /// `VACUUM`, `ANALYZE`, `CLUSTER`, `REINDEX`, `REFRESH`, `CHECKPOINT`.
    Maintenance,
    /// `GRANT`, `REVOKE`.
    Grant,
    /// `LOCK`.
    Lock,
    /// `CALL`.
    Call,
    /// `DO`.
    Do,
    /// `LISTEN`, `UNLISTEN`, `NOTIFY`.
    ListenNotify,
    /// `SELECT ... FOR UPDATE | NO KEY UPDATE | SHARE | KEY SHARE`.
    Locking,
    /// A `WITH` whose CTE (or a nested query) modifies data.
    WritableCte,
    /// `SELECT ... INTO`.
    SelectInto,
    /// A call to a function with side effects (built in, or configured); its lowercased name.
    WriteFunction(String),
    /// Creates or uses a temporary table.
    TempTable,
    /// sqlparser could not read a statement that might have been a read (fail closed).
    Unparsed,
    /// `COPY ... FROM STDIN` followed by more statements in the same message.
    CopyFromStdinThenMore,
    /// Anything else not provably read-only: session commands, cursors, `COPY ... TO`, ...
    Other(&'static str),
}

/// Why a statement pins a transaction-pooled session ([`Classification::pins_session`]), as
/// messages name it. The proxy also matches a few of them (which `DISCARD ALL` does not undo).
pub mod pin_reason {
    /// `CREATE TEMP TABLE` and the like, unless `ON COMMIT DROP`.
    pub const TEMP_TABLE: &str = "a temporary table";
    /// Anything naming the `pg_temp` schema (a temporary function, type or table).
    pub const PG_TEMP: &str = "an object in pg_temp";
    /// A `search_path` naming `pg_temp`: a plain `CREATE TABLE` then makes a temporary table.
    pub const TEMP_SEARCH_PATH: &str = "a search_path naming pg_temp";
    /// `pg_advisory_lock`, `pg_try_advisory_lock` and their `_shared` forms.
    pub const SESSION_LOCK: &str = "a session-level advisory lock";
    /// `DECLARE ... WITH HOLD`.
    pub const WITH_HOLD: &str = "a cursor WITH HOLD";
    /// `set_config` unless its `is_local` is a literal true.
    pub const SESSION_SETTING: &str = "set_config(..., false)";
    /// A session-level `SET` or `RESET` inside a `DO` block, whose value shardgate cannot see.
    pub const SET_IN_DO: &str = "SET inside a DO block";
    /// `dblink_connect` or `dblink_connect_u` (not undone by `DISCARD ALL`).
    pub const DBLINK_CONNECT: &str = "dblink_connect()";
    /// `LISTEN`.
    pub const LISTEN: &str = "LISTEN";
    /// SQL `PREPARE` (not `PREPARE TRANSACTION`).
    pub const PREPARE: &str = "PREPARE";
    /// `LOAD` (not undone by `DISCARD ALL`).
    pub const LOAD: &str = "LOAD";
    /// `SET SESSION CHARACTERISTICS AS TRANSACTION ...`.
    pub const SESSION_CHARACTERISTICS: &str = "SET SESSION CHARACTERISTICS";
    /// Not the classifier's: a FunctionCall message calls a function by OID, unreadable here.
    pub const FASTPATH_CALL: &str = "a fastpath function call";
}

/// shardgate's own settings, handled by the proxy itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardgateCommand {
    /// `SET shardgate.<name> = <value>` (`TO` works too).
    Set {
        /// The setting's name without the `shardgate.` prefix, lowercased.
        name: String,
        /// The value with quotes removed; a bare word is lowercased as the server would.
        value: String,
    },
    /// `RESET shardgate.<name>` or `SET shardgate.<name> TO DEFAULT`.
    Reset {
        /// The setting's name without the `shardgate.` prefix, lowercased.
        name: String,
    },
    /// `SHOW shardgate.<name>`.
    Show {
        /// The setting's name without the `shardgate.` prefix, lowercased.
        name: String,
    },
}

/// Everything the router needs to know about one Query message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// None = read-only (may go to a replica); Some(why) = must go to the primary.
    pub write: Option<WhyWrite>,
    /// Transaction-control statements in the text, in order (BEGIN/COMMIT/...).
    pub txn: Vec<TxnControl>,
    /// The first routing hint found in a comment.
    pub hint: Option<Hint>,
    /// The session must stick to the primary from now on: creates a temp table, or takes a
    /// SESSION-level advisory lock (`pg_advisory_lock` / `pg_try_advisory_lock`, not `_xact_`).
    pub sticky_primary: bool,
    /// The first statement that leaves state on the server session which outlives its
    /// transaction and which no other server connection could be given (a temporary table, a
    /// session-level advisory lock, an object in `pg_temp`, `LISTEN`, a cursor `WITH HOLD`, SQL `PREPARE`,
    /// `set_config(..., false)`, `LOAD`, `SET SESSION CHARACTERISTICS`, `dblink_connect`),
    /// named for messages. A transaction-pooled session that runs one keeps its server
    /// connection from then on.
    pub pins_session: Option<&'static str>,
    /// False if sqlparser could not parse at least one statement that needed it (a statement whose
    /// leading keywords already prove a write, or a transaction or session command, is read by
    /// the lexer alone and never handed to sqlparser).
    pub parsed: bool,
    /// How many statements the message holds.
    pub statements: usize,
    /// A shardgate settings command; only when it is the message's single statement.
    pub shardgate: Option<ShardgateCommand>,
}

impl Classification {
    /// True when the message may run on a replica.
    pub fn is_read(&self) -> bool {
        self.write.is_none()
    }
}

/// The first `shardgate: ...` hint among the comments of `sql`.
pub(crate) fn find_hint(sql: &[u8]) -> Option<Hint> {
    comments(sql).find_map(parse_hint)
}

fn parse_hint(comment: &[u8]) -> Option<Hint> {
    let text = std::str::from_utf8(comment).ok()?.trim();
    let prefix = text.get(..10)?;
    if !prefix.eq_ignore_ascii_case("shardgate:") {
        return None;
    }
    let directive = text.get(10..)?.trim();
    if directive.eq_ignore_ascii_case("primary") {
        return Some(Hint::Primary);
    }
    if directive.eq_ignore_ascii_case("replica") {
        return Some(Hint::Replica);
    }
    let (key, value) = directive.split_once('=')?;
    let (key, value) = (key.trim(), value.trim());
    if value.is_empty() || value.contains(char::is_whitespace) {
        return None;
    }
    if key.eq_ignore_ascii_case("shard") {
        Some(Hint::Shard(value.to_owned()))
    } else if key.eq_ignore_ascii_case("shard_key") {
        Some(Hint::ShardKey(value.to_owned()))
    } else {
        None
    }
}
