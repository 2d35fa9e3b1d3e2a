//! The merge layer's error type: every way a merge can refuse rather than guess.

use thiserror::Error;

/// SQLSTATE for "numeric value out of range" (PostgreSQL's own code for the same failure).
pub const SQLSTATE_NUMERIC_OUT_OF_RANGE: &str = "22003";
/// SQLSTATE for "feature not supported": the merge cannot reproduce one server's answer.
pub const SQLSTATE_FEATURE_NOT_SUPPORTED: &str = "0A000";
/// SQLSTATE for a protocol-level inconsistency between shards and the plan.
pub const SQLSTATE_INTERNAL: &str = "XX000";

/// Why a merge step failed.
#[derive(Debug, Error)]
pub enum MergeError {
    /// The merge has no exact rule for this type (ordering, decoding or arithmetic).
    #[error("type oid {0} cannot be merged exactly")]
    UnsupportedType(u32),
    /// A text-format value of this type cannot be re-formatted exactly (DateStyle, TimeZone).
    #[error("type oid {0} cannot be formatted as text by the merge; its original bytes must be passed through")]
    CannotFormat(u32),
    /// A text date/timestamp/timestamptz that is not in the ISO DateStyle (the session set
    /// `DateStyle` to SQL, German or Postgres): the merge cannot order or compare it.
    #[error(
        "cannot order or compare type oid {0} across shards: the session's DateStyle is not ISO"
    )]
    NotIsoDateStyle(u32),
    /// A value a shard sent could not be decoded as its declared type.
    #[error("malformed value for type oid {type_oid}: {reason}")]
    Malformed { type_oid: u32, reason: &'static str },
    /// A format code other than 0 (text) or 1 (binary).
    #[error("unknown format code {0}")]
    BadFormat(i16),
    /// The result overflows its type, exactly as PostgreSQL reports it.
    #[error("{0}")]
    Overflow(&'static str),
    /// A numeric beyond the limits this crate computes exactly (see `numeric` module).
    #[error("numeric value exceeds the merge's exact range ({0})")]
    NumericLimit(&'static str),
    /// A shard sent a row with the wrong number of columns.
    #[error("shard row has {got} columns, expected {expected}")]
    ColumnCount { expected: usize, got: usize },
    /// A plan referenced a column that does not exist.
    #[error("column index {0} out of range")]
    NoSuchColumn(usize),
    /// A shard index beyond the number of shards, or a push after `finish`.
    #[error("shard {0} is unknown or already finished")]
    BadShard(usize),
    /// A shard's stream is not sorted by the merge keys: its order differs from ours
    /// (for example a non-C collation), so merging would produce a wrong order.
    #[error("shard {0} returned rows out of order for the merge keys")]
    Unsorted(usize),
    /// The executor pushed more rows for a shard than the bounded batch allows.
    #[error("shard {0} buffered more than the batch limit of rows")]
    BatchFull(usize),
    /// An aggregate whose argument type has no exact merge rule.
    #[error("aggregate over type oid {0} cannot be merged exactly")]
    UnsupportedAggregate(u32),
    /// Two values of types with no PostgreSQL comparison between them.
    #[error("cannot compare values of different types in HAVING")]
    Incomparable,
}

impl MergeError {
    /// The SQLSTATE the client edge should report for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            MergeError::Overflow(_) => SQLSTATE_NUMERIC_OUT_OF_RANGE,
            MergeError::UnsupportedType(_)
            | MergeError::CannotFormat(_)
            | MergeError::NumericLimit(_)
            | MergeError::UnsupportedAggregate(_)
            | MergeError::Incomparable
            | MergeError::NotIsoDateStyle(_)
            | MergeError::Unsorted(_) => SQLSTATE_FEATURE_NOT_SUPPORTED,
            MergeError::Malformed { .. }
            | MergeError::BadFormat(_)
            | MergeError::ColumnCount { .. }
            | MergeError::NoSuchColumn(_)
            | MergeError::BadShard(_)
            | MergeError::BatchFull(_) => SQLSTATE_INTERNAL,
        }
    }
}
