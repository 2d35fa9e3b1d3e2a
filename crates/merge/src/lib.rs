//! Exact merging of per-shard query results into the answer one PostgreSQL server would send.
//!
//! Pure and synchronous: the executor feeds shard rows in (wire cells, text or binary) and
//! takes client rows out. This crate never does IO and never rounds where PostgreSQL would
//! not: anything it cannot reproduce exactly is an error (see [`MergeError::sqlstate`]).
//!
//! - [`value`]: decode/encode/compare cells by type (PostgreSQL btree order, C collation).
//! - [`kway`]: streaming ORDER BY merge of sorted shard streams, bounded memory.
//! - [`aggregate`]: combining partial aggregates, grouped or not.
//! - [`having`]: HAVING, DISTINCT and post-grouping sort.

mod accumulate;
mod bigint;
mod datetime;
mod error;
mod float;

pub mod aggregate;
pub mod having;
pub mod kway;
pub mod numeric;
pub mod value;

pub use aggregate::{order_sensitive, result_type, AggKind, AggSpec, GroupMerge, Output};
pub use error::{
    MergeError, SQLSTATE_FEATURE_NOT_SUPPORTED, SQLSTATE_INTERNAL, SQLSTATE_NUMERIC_OUT_OF_RANGE,
};
pub use float::{format_f32, format_f64};
pub use having::{decode_row, eval, sort_rows, CmpOp, Distinct, Operand, Pred};
pub use kway::{compare_keys, KWayMerge, Row, SortKey, DEFAULT_BATCH_LIMIT};
pub use numeric::Numeric;
pub use value::{compare, decode, encode, sortable, Column, Value, FORMAT_BINARY, FORMAT_TEXT};
