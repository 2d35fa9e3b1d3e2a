//! Scatter analysis: whether a `SELECT` run on every shard can be merged into exactly the answer
//! one server would give, and if so the SQL each shard runs plus what the merge must do (sort
//! keys, limit and offset, group keys, aggregates to combine, `HAVING`, `DISTINCT`).
//!
//! The shard SQL is the client's own text spliced at token byte ranges, never a re-printed tree:
//! sqlparser's printer is not faithful (it loses `''` doubling, an injection bug), and `$n`
//! parameters must keep their numbers. sqlparser only decides what the statement means; the
//! crate's lexer says where to cut ([`shape`]). Where the two disagree the statement is refused.
//! This module never talks to a server and does not know which tables are sharded: the router
//! calls it only for statements it has already decided to scatter.

mod aggregates;
mod build;
mod collation;
mod having;
mod limit;
mod resolve;
mod shape;
mod splice;

use crate::ast::{MAX_OPERATORS, MAX_PARSE_LEN};
use crate::guards::{scan, WriteFunctions};
use sqlparser::ast::{Query, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::fmt;

/// A `SELECT` the merge cannot reproduce exactly; `construct` names what, for the client's
/// 0A000 message (e.g. "window functions", "count(DISTINCT ...)").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// The construct, as the client wrote it or as PostgreSQL's documentation names it.
    pub construct: String,
}

impl Unsupported {
    pub(crate) fn new(construct: impl Into<String>) -> Self {
        Unsupported {
            construct: construct.into(),
        }
    }

    /// The tree and the tokens disagree, or the text does not parse.
    pub(crate) fn unreadable() -> Self {
        Unsupported::new("a statement shardgate could not read as one plain SELECT")
    }
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not supported across shards: {}", self.construct)
    }
}

impl std::error::Error for Unsupported {}

/// What every shard runs and how the merge combines the shards' rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScatterSelect {
    /// What every shard runs: the client's text, spliced.
    pub shard_sql: Vec<u8>,
    /// Items in the shard query's select list: the client's columns (each `avg` as two, its sum
    /// and count) followed by hidden columns (group keys, `HAVING` aggregates and sort keys the
    /// client did not select). A `*` counts as one item: see [`ScatterSelect::wildcard`].
    pub shard_columns: usize,
    /// One entry per client-visible select-list item, in order.
    pub outputs: Vec<OutputCol>,
    /// Sort keys over shard column indexes. Without grouping the shards return rows sorted by
    /// them (the shard SQL keeps the `ORDER BY`) and the merge is a k-way merge. With grouping
    /// they sort the merged groups: a key naming the first column of an [`OutputCol::Agg`]
    /// sorts by that aggregate's final value.
    pub order_by: Vec<SortCol>,
    /// The client's `LIMIT` (or `FETCH FIRST`), applied by the merge.
    pub limit: Option<Count>,
    /// The client's `OFFSET`, applied by the merge (`OFFSET NULL` is `None`).
    pub offset: Option<Count>,
    /// Shard column indexes of the group keys (select-list or hidden).
    pub group_by: Vec<usize>,
    /// The query aggregates (aggregate calls, `GROUP BY` or `HAVING`): the merge combines the
    /// shards' rows per group (one group when there is no `GROUP BY`).
    pub aggregated: bool,
    /// Evaluated by the merge on each combined group.
    pub having: Option<HavingExpr>,
    /// `SELECT DISTINCT`, applied by the merge after grouping.
    pub distinct: bool,
    /// The select list holds `*` or `t.*`: the row width is only known from the shards' row
    /// description, and every column passes through unchanged. Accepted without grouping,
    /// aggregates or DISTINCT; with ORDER BY only when the select list is only `*` items and
    /// every key is a column name, fetched as a hidden column: `order_by` columns then count
    /// each `*` as one item, and the merge maps them from the end of the shards' rows.
    pub wildcard: bool,
    /// The names (folded) of the identifiers in what the merge compares as values: sort keys,
    /// group keys, `DISTINCT` items, `min`/`max` arguments and `HAVING`. The merge compares
    /// text bytewise, so a column among them whose own collation is not bytewise must be
    /// refused; only the catalog knows (an explicit non-C `COLLATE` there is refused here).
    pub compared_names: Vec<String>,
}

/// One client-visible column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputCol {
    /// This shard column, as is (after grouping: any shard's value for the group, since a
    /// non-aggregate column is the same for the whole group).
    Column(usize),
    /// After grouping, a select-list item that reads no column (a literal, a parameter, or
    /// operators, casts and function calls over those): its value is taken from any shard's
    /// row of the group, as it does not depend on the group's rows.
    Constant(usize),
    /// An aggregate to combine across shards; `avg` reads `[sum, count]`, the others one column.
    Agg {
        /// Which aggregate.
        kind: AggFn,
        /// Its shard columns.
        columns: Vec<usize>,
    },
}

/// An aggregate the merge combines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFn {
    /// `count(*)`: the sum of the shards' counts.
    CountStar,
    /// `count(x)`: the sum of the shards' counts.
    Count,
    /// `sum(x)`: the sum of the non-null shard sums, NULL if all are NULL.
    Sum,
    /// `min(x)`.
    Min,
    /// `max(x)`.
    Max,
    /// `bool_and(x)` or `every(x)`.
    BoolAnd,
    /// `bool_or(x)`.
    BoolOr,
    /// `avg(x)`, sent to shards as `sum(x), count(x)`.
    Avg,
}

/// One sort key, with PostgreSQL's defaults applied (`NULLS FIRST` exactly when `DESC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortCol {
    /// A shard column index.
    pub column: usize,
    /// `DESC`.
    pub descending: bool,
    /// NULLs come before every value.
    pub nulls_first: bool,
}

/// A `LIMIT`, `OFFSET` or `FETCH FIRST` count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// A literal number.
    Literal(u64),
    /// `$n`.
    Param(u16),
    /// `LIMIT ALL` or `LIMIT NULL`: no limit.
    All,
}

/// A `HAVING` condition over combined groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HavingExpr {
    /// `left op right`.
    Cmp(HavingOperand, CmpOp, HavingOperand),
    /// `a AND b`.
    And(Box<HavingExpr>, Box<HavingExpr>),
    /// `a OR b`.
    Or(Box<HavingExpr>, Box<HavingExpr>),
    /// `NOT a`.
    Not(Box<HavingExpr>),
    /// `x IS NULL` (true) or `x IS NOT NULL` (false).
    IsNull(HavingOperand, bool),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<>` or `!=`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
}

/// A value in a `HAVING` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HavingOperand {
    /// A group key's shard column.
    Column(usize),
    /// An aggregate's combined value, read from these shard columns (as in [`OutputCol::Agg`]).
    Agg {
        /// Which aggregate.
        kind: AggFn,
        /// Its shard columns.
        columns: Vec<usize>,
    },
    /// A constant, as the server would read its text (quotes and escapes undone): a quoted
    /// string or a boolean, which takes the type of what it is compared with.
    Literal(String),
    /// A numeric constant (`10`, `-2.5`, `1e3`), which PostgreSQL types as int4, int8 or
    /// numeric before it picks the comparison operator (`real > 0.1` compares in float8).
    Number(String),
    /// `$n`.
    Param(u16),
}

/// Decides whether the `SELECT` in `stmt` (one statement, as the crate's splitter cuts it) can be
/// scattered and merged exactly, and if so how. Never panics.
pub fn scatter_select(stmt: &[u8]) -> Result<ScatterSelect, Unsupported> {
    let q = parse(stmt)?;
    build::build(stmt, &q)
}

/// Parses exactly one query, within the bounds the classifier uses.
fn parse(stmt: &[u8]) -> Result<Query, Unsupported> {
    let text = std::str::from_utf8(stmt)
        .map_err(|_| Unsupported::new("a statement that is not valid UTF-8"))?;
    if text.len() > MAX_PARSE_LEN
        || scan(stmt, &WriteFunctions::default()).operators > MAX_OPERATORS
    {
        return Err(Unsupported::new("a statement too long to analyze"));
    }
    // As in the classifier: a panic inside sqlparser must cost one statement, not the proxy.
    let tree = std::panic::catch_unwind(|| {
        let mut v = Parser::new(&PostgreSqlDialect {})
            .with_recursion_limit(50)
            .try_with_sql(text)
            .and_then(|mut p| p.parse_statements())
            .ok()?;
        (v.len() == 1).then(|| v.pop()).flatten()
    })
    .ok()
    .flatten();
    match tree {
        Some(Statement::Query(q)) => Ok(*q),
        Some(_) => Err(Unsupported::new("a statement other than SELECT")),
        None => Err(Unsupported::unreadable()),
    }
}
