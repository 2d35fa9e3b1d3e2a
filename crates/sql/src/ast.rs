//! The sqlparser half of the classifier: parses one statement that might be a read and says
//! whether its tree proves it read-only. It is only ever asked to confirm a read; anything it
//! cannot parse, or parses into a shape not listed here, is a write. The tree is inspected, never
//! re-printed or forwarded (re-printing is lossy, see the corpus README).

use crate::classification::WhyWrite;
use sqlparser::ast::{Query, SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// sqlparser's own nesting limit (subqueries, parentheses): deeper input is an error, not a stack
/// overflow.
const RECURSION_LIMIT: usize = 50;
/// Statements longer than this are not parsed: parse time grows with length, and a cache miss on
/// a huge unique text would stall the proxy. They are classified as unparsed (writes).
pub(crate) const MAX_PARSE_LEN: usize = 256 * 1024;
/// Long operator chains (`1+1+...`, `a OR b OR ...`, `UNION ...`) build left-deep trees that
/// sqlparser's recursion limit does not bound, since it folds them in a loop; dropping such a
/// tree recurses once per level and overflowed a 2 MiB stack at about 30k levels. Statements with
/// more operators than this are not parsed (they are rare, and become writes).
pub(crate) const MAX_OPERATORS: usize = 4000;
/// Our own walk's depth limit, a second line behind [`RECURSION_LIMIT`].
const MAX_WALK_DEPTH: usize = 200;

/// `Ok(None)` when the statement parses and its tree is read-only, `Ok(Some(why))` when the tree
/// shows a write, `Err(())` when sqlparser cannot read it as exactly one statement.
pub(crate) fn parse_and_check(stmt: &str) -> Result<Option<WhyWrite>, ()> {
    // sqlparser is not supposed to panic; if it ever does on some input, that input is a write
    // rather than a dead proxy.
    let parsed = std::panic::catch_unwind(|| {
        let dialect = PostgreSqlDialect {};
        let statements = Parser::new(&dialect)
            .with_recursion_limit(RECURSION_LIMIT)
            .try_with_sql(stmt)
            .and_then(|mut p| p.parse_statements());
        match statements {
            // Our splitter already cut one statement; if sqlparser sees more or fewer, the two
            // disagree about the text and neither reading can be trusted.
            Ok(mut v) if v.len() == 1 => v.pop().map(|s| statement_write(&s)).ok_or(()),
            _ => Err(()),
        }
    });
    parsed.unwrap_or(Err(()))
}

fn statement_write(stmt: &Statement) -> Option<WhyWrite> {
    match stmt {
        Statement::Query(q) => query_write(q, false, 0),
        // Plain EXPLAIN does not run its statement, but EXPLAIN ANALYZE does; treating both
        // alike keeps the rule simple and errs towards the primary.
        Statement::Explain { statement, .. } => match &**statement {
            Statement::Query(q) => query_write(q, false, 0),
            Statement::Insert(_)
            | Statement::Update(_)
            | Statement::Delete(_)
            | Statement::Merge(_) => Some(WhyWrite::Dml),
            _ => Some(WhyWrite::Other("explain of a non-query")),
        },
        Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge(_) => Some(WhyWrite::Dml),
        _ => Some(WhyWrite::Other("statement")),
    }
}

/// `nested` is true inside a CTE or subquery, where DML means a data-modifying CTE.
fn query_write(q: &Query, nested: bool, depth: usize) -> Option<WhyWrite> {
    if depth > MAX_WALK_DEPTH {
        return Some(WhyWrite::Other("query nested too deeply"));
    }
    if !q.locks.is_empty() {
        return Some(WhyWrite::Locking);
    }
    if !q.pipe_operators.is_empty() || q.for_clause.is_some() || q.settings.is_some() {
        return Some(WhyWrite::Other("syntax PostgreSQL does not have"));
    }
    if let Some(with) = &q.with {
        for cte in &with.cte_tables {
            if let Some(why) = query_write(&cte.query, true, depth + 1) {
                return Some(match why {
                    WhyWrite::Dml => WhyWrite::WritableCte,
                    other => other,
                });
            }
        }
    }
    set_expr_write(&q.body, nested, depth + 1)
}

fn set_expr_write(body: &SetExpr, nested: bool, depth: usize) -> Option<WhyWrite> {
    if depth > MAX_WALK_DEPTH {
        return Some(WhyWrite::Other("query nested too deeply"));
    }
    match body {
        SetExpr::Select(s) if s.into.is_some() => Some(WhyWrite::SelectInto),
        SetExpr::Select(_) | SetExpr::Values(_) | SetExpr::Table(_) => None,
        SetExpr::Query(q) => query_write(q, true, depth + 1),
        SetExpr::SetOperation { left, right, .. } => set_expr_write(left, nested, depth + 1)
            .or_else(|| set_expr_write(right, nested, depth + 1)),
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
            Some(if nested {
                WhyWrite::WritableCte
            } else {
                WhyWrite::Dml
            })
        }
    }
}
