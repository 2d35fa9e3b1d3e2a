//! SQL understanding for the proxy: splitting a simple-query string into statements, reading the
//! leading keywords and comments (routing hints) of a statement, and recognising the statements
//! that change session state a transaction pooler must track. It never talks to a server and
//! never rewrites SQL: it only reports byte ranges and facts about the text it was given.
//!
//! On top of the scanner, [`Classifier`] decides whether a message may run on a replica. It uses
//! sqlparser only to confirm reads and fails closed: anything it cannot prove read-only is a
//! write.
//!
//! Everything here rests on one PostgreSQL-aware scanner ([`split_statements`] and friends) that
//! agrees with the server's `scan.l` on where literals, quoted identifiers, dollar quotes and
//! (nested) comments end. It works on raw bytes, since a client's text need not be UTF-8, never
//! panics on any input, and does not allocate while scanning: it runs on every Query message.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod ast;
mod cache_key;
mod classification;
mod classifier;
mod guards;
mod keywords;
mod lexer;
pub mod scatter;
mod session;
pub mod shard_keys;
mod statement;
mod txn_text;

pub use classification::{
    pin_reason, Classification, Hint, ShardgateCommand, TxnControl, WhyWrite,
};
pub use classifier::{bind_thread_cache, Classifier};
pub use statement::SHARDGATE_COMMAND_WORDS;
pub use txn_text::{fold_set_transaction, strict_begin, strict_end, StrictBegin, StrictEnd};

/// Not part of the API: the classifier's cache key, public only so that `benches/` can time it
/// and `tests/cache_key.rs` can compare it with its reference implementation.
#[doc(hidden)]
pub mod cache_key_internals {
    pub use crate::cache_key::{cache_key, cache_key_reference};
}
pub use keywords::{has_keyword, leading_keywords, Keywords, MAX_KEYWORDS, MAX_KEYWORD_LEN};
pub use lexer::{called_functions, comments, for_each_statement, split_statements, LexOptions};
pub use scatter::{
    scatter_select, AggFn, CmpOp, Count, HavingExpr, HavingOperand, OutputCol, ScatterSelect,
    SortCol, Unsupported,
};
pub use session::{
    session_command, session_command_with, set_local_default, transaction_command, SessionCommand,
    TransactionCommand,
};
pub use shard_keys::{
    analyze, analyze_with, colocated_insert_select, splice_insert, AnalysisCache, InsertRows,
    KeyConstraint, KeySource, ShardAnalysis, ShardingSpec, SplicedInsert,
};
