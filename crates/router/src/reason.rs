//! Why a request went where it went, compact enough to record for every request and
//! rendered to text only when someone looks (logs, /api/decisions, errors).

use std::fmt;

/// The rule that decided a route. Node and statement details that need the topology
/// or the classification to render are looked up by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `routing.read_write_split: false`.
    SplitDisabled,
    /// Session pooling: the client keeps one primary connection for its life.
    SessionPooling,
    /// The request must go to the primary (the classification says why).
    Write,
    /// The parser could not read a statement: fail closed to the primary.
    Unparsed,
    /// The session is in a transaction that is not read-only.
    Transaction,
    /// A read-only transaction (BEGIN READ ONLY / SET TRANSACTION READ ONLY).
    ReadOnlyTransaction,
    /// A `/* shardgate: primary|replica */` comment.
    Hint(HintTarget),
    /// `SET shardgate.target`.
    SessionTarget(HintTarget),
    /// The session created a temp table or took a session advisory lock.
    StickyPrimary,
    /// A read on a routable replica.
    Read,
    /// Read-your-writes: no routable replica has replayed the session's last write yet.
    /// `best` is the highest replay LSN among routable replicas (0 if none).
    ReadYourWrites { best: u64, session: u64 },
    /// A read-your-writes read on a replica that has replayed the session's write.
    ReadYourWritesReplica { session: u64 },
    /// No replica is routable; `when_no_replica: primary`.
    NoRoutableReplica,
    /// A COMMIT or ROLLBACK with no transaction on a server (none open, or one that ran
    /// nothing yet): the primary answers it, whatever the replicas' state.
    TransactionEnd,
    /// Pipelined behind a request on the same server (sharding plans it, and it needs the
    /// same shard).
    Pipelined,
}

/// The role a hint or session setting asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintTarget {
    Primary,
    Replica,
}

/// PostgreSQL's text form of an LSN: two hex halves.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::SplitDisabled => f.write_str("read/write split disabled"),
            Reason::SessionPooling => f.write_str("session pooling: primary"),
            Reason::Write => f.write_str("write"),
            Reason::Unparsed => f.write_str("unparsed statement: primary (fail closed)"),
            Reason::Transaction => f.write_str("in transaction"),
            Reason::ReadOnlyTransaction => f.write_str("read-only transaction"),
            Reason::Hint(HintTarget::Primary) => f.write_str("hint: primary"),
            Reason::Hint(HintTarget::Replica) => f.write_str("hint: replica"),
            Reason::SessionTarget(HintTarget::Primary) => f.write_str("shardgate.target = primary"),
            Reason::SessionTarget(HintTarget::Replica) => f.write_str("shardgate.target = replica"),
            Reason::StickyPrimary => {
                f.write_str("session uses a temp table or session advisory lock: primary")
            }
            Reason::Read => f.write_str("read"),
            Reason::ReadYourWrites { best, session } => write!(
                f,
                "read-your-writes: replica replay {} < session {}",
                format_lsn(*best),
                format_lsn(*session)
            ),
            Reason::ReadYourWritesReplica { session } => write!(
                f,
                "read-your-writes: replica has replayed session {}",
                format_lsn(*session)
            ),
            Reason::NoRoutableReplica => f.write_str("no routable replica: primary"),
            Reason::Pipelined => f.write_str("pipelined behind the previous request"),
            Reason::TransactionEnd => f.write_str("transaction end: primary"),
        }
    }
}
