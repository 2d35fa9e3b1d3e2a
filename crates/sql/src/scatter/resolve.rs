//! Resolves `GROUP BY` keys, `HAVING` aggregates and `ORDER BY` keys to shard columns: a
//! select-list column when the key names one (by position, output name, or an expression
//! textually equal to the item's), else a hidden column appended to the shard's select list
//! where that is allowed, else a refusal.

use super::aggregates::{calls, fold, Call};
use super::build::{avg_parts, Item};
use super::collation::check_collation;
use super::shape::Code;
use super::splice::Splicer;
use super::{AggFn, SortCol, Unsupported};
use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectNamePart, OrderByExpr,
    OrderBySort, Value,
};
use std::ops::Range;

/// One `GROUP BY` key.
#[derive(Debug)]
pub(crate) struct GroupKey {
    pub(crate) col: usize,
    pub(crate) norm: Vec<Vec<u8>>,
    pub(crate) ident: Option<Vec<String>>,
}

pub(crate) fn ident_parts(e: &Expr) -> Option<Vec<String>> {
    match e {
        Expr::Identifier(i) => Some(vec![fold(i)]),
        Expr::CompoundIdentifier(parts) => Some(parts.iter().map(fold).collect()),
        _ => None,
    }
}

/// Built-in functions that return one value (never a set) and read no table: a call of one
/// of them over column-free arguments is column-free. Any other function might return a set
/// (one row per element on every shard) or read a shard's own tables.
const SCALAR_FUNCTIONS: &[&str] = &[
    "now",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtime",
    "localtimestamp",
    "transaction_timestamp",
    "statement_timestamp",
    "current_user",
    "session_user",
    "current_role",
    "current_database",
    "current_catalog",
    "current_schema",
    "current_setting",
    "version",
    "lower",
    "upper",
    "length",
    "abs",
    "round",
    "trunc",
    "concat",
    "coalesce",
    "nullif",
    "greatest",
    "least",
];

/// Whether `e` reads no column: literals, parameters, and casts, operators and calls of
/// [`SCALAR_FUNCTIONS`] over those (such as `1`, `'x'::text`, `now() IS NOT NULL`). Anything
/// this does not know counts as reading a column.
pub(crate) fn column_free(e: &Expr, depth: usize) -> bool {
    if depth > 50 {
        return false;
    }
    let free = |e: &Expr| column_free(e, depth + 1);
    match e {
        Expr::Value(_) | Expr::TypedString(_) => true,
        Expr::Nested(e)
        | Expr::UnaryOp { expr: e, .. }
        | Expr::IsNull(e)
        | Expr::IsNotNull(e)
        | Expr::IsTrue(e)
        | Expr::IsNotTrue(e)
        | Expr::IsFalse(e)
        | Expr::IsNotFalse(e) => free(e),
        Expr::Cast {
            expr, format: None, ..
        } => free(expr),
        Expr::BinaryOp { left, right, .. } => free(left) && free(right),
        Expr::Function(f) => {
            let name: Vec<String> = f
                .name
                .0
                .iter()
                .map(|p| match p {
                    ObjectNamePart::Identifier(i) => fold(i),
                    _ => String::new(),
                })
                .collect();
            let scalar = match name.as_slice() {
                [n] => SCALAR_FUNCTIONS.contains(&n.as_str()),
                [schema, n] => schema == "pg_catalog" && SCALAR_FUNCTIONS.contains(&n.as_str()),
                _ => false,
            };
            let plain = scalar
                && f.over.is_none()
                && f.filter.is_none()
                && f.within_group.is_empty()
                && f.null_treatment.is_none()
                && matches!(f.parameters, FunctionArguments::None);
            plain && match &f.args {
                FunctionArguments::None => true,
                FunctionArguments::List(l) => l.duplicate_treatment.is_none()
                    && l.clauses.is_empty()
                    && l.args.iter().all(
                        |a| matches!(a, FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) if free(e)),
                    ),
                FunctionArguments::Subquery(_) => false,
            }
        }
        _ => false,
    }
}

/// A positive integer literal, as `GROUP BY`/`ORDER BY` positions are written.
fn position(e: &Expr) -> Option<Result<usize, ()>> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, false) => Some(n.parse::<usize>().map_err(|_| ())),
            _ => Some(Err(())),
        },
        _ => None,
    }
}

/// The select-list item at 1-based `pos`, if it is a plain expression.
fn at_position(items: &[Item], pos: usize, clause: &str) -> Result<usize, Unsupported> {
    pos.checked_sub(1)
        .filter(|&i| items.get(i).is_some_and(|it| !it.wildcard))
        .ok_or_else(|| Unsupported::new(format!("{clause} position {pos}")))
}

pub(crate) fn group_key(
    code: &Code,
    sp: &mut Splicer,
    items: &[Item],
    ast: &Expr,
    toks: &Range<usize>,
) -> Result<GroupKey, Unsupported> {
    if matches!(
        ast,
        Expr::Rollup(_) | Expr::Cube(_) | Expr::GroupingSets(_) | Expr::Tuple(_)
    ) || code.is_punct(toks.start, b'(') && code.is_punct(toks.start + 1, b')')
    {
        return Err(Unsupported::new("ROLLUP, CUBE and GROUPING SETS"));
    }
    if let Some(pos) = position(ast) {
        let pos = pos.map_err(|_| Unsupported::new("GROUP BY a constant"))?;
        let i = at_position(items, pos, "GROUP BY")?;
        let it = items.get(i).ok_or_else(Unsupported::unreadable)?;
        if it.agg.is_some() {
            return Err(Unsupported::new("GROUP BY an aggregate"));
        }
        let col = it.cols.first().copied().unwrap_or_default();
        // avg columns before it shift positions in the shard's select list.
        if col + 1 != pos {
            sp.replace(toks.clone(), (col + 1).to_string().into_bytes());
        }
        return Ok(GroupKey {
            col,
            norm: it.norm.clone(),
            ident: it.ident.clone(),
        });
    }
    if !calls(code, toks)?.is_empty() {
        return Err(Unsupported::new("aggregates in GROUP BY"));
    }
    let norm = code.normalized(toks);
    let col = match items
        .iter()
        .find(|it| it.agg.is_none() && !it.wildcard && it.norm == norm)
    {
        Some(it) => it.cols.first().copied().unwrap_or_default(),
        None => {
            // `GROUP BY alias`: PostgreSQL reads a bare name as a table column first and only
            // then as an output column; without the table's columns the shard query could
            // name neither correctly.
            if let Some([name]) = ident_parts(ast).as_deref() {
                if items
                    .iter()
                    .any(|it| it.name.as_deref() == Some(name.as_str()))
                {
                    return Err(Unsupported::new("GROUP BY an output column name"));
                }
            }
            sp.hide(code.slice(toks), 1)
        }
    };
    Ok(GroupKey {
        col,
        norm,
        ident: ident_parts(ast),
    })
}

/// Shard columns of an aggregate call in `HAVING`: the select list's if it holds the same call,
/// else new hidden columns.
pub(crate) fn agg_columns(
    code: &Code,
    sp: &mut Splicer,
    items: &[Item],
    call: &Call,
) -> Vec<usize> {
    let norm = code.normalized(&call.toks);
    if let Some(it) = items.iter().find(|it| it.agg.is_some() && it.norm == norm) {
        return it.cols.clone();
    }
    if call.kind == AggFn::Avg {
        let first = sp.hide(&avg_parts(code, call, None), 2);
        vec![first, first + 1]
    } else {
        vec![sp.hide(code.slice(&call.toks), 1)]
    }
}

/// Resolves one `ORDER BY` key; `grouping` holds the group keys when the merge sorts combined
/// groups or distinct rows, where no hidden column may be added.
pub(crate) fn sort_key(
    code: &Code,
    sp: &mut Splicer,
    items: &[Item],
    grouping: Option<&[GroupKey]>,
    ast: &OrderByExpr,
    toks: &Range<usize>,
) -> Result<SortCol, Unsupported> {
    let (descending, nulls_first) = direction(ast)?;
    check_collation(code, toks, "ORDER BY")?;
    let norm = code.normalized(toks);
    let item = if let Some(pos) = position(&ast.expr) {
        let pos = pos.map_err(|_| Unsupported::new("ORDER BY a constant"))?;
        Some(at_position(items, pos, "ORDER BY")?)
    } else if let Expr::Identifier(id) = &ast.expr {
        // A bare name means an output column first (SQL-92), then an input column.
        let name = fold(id);
        match items
            .iter()
            .position(|it| it.name.as_deref() == Some(name.as_str()))
        {
            Some(i) => Some(i),
            None if items.iter().any(|it| it.name.is_none()) => {
                return Err(Unsupported::new(
                    "ORDER BY a name when an output column's name is unknown (use a position)",
                ));
            }
            None => items.iter().position(|it| it.norm == norm),
        }
    } else {
        items.iter().position(|it| !it.wildcard && it.norm == norm)
    };
    let column = match (item.and_then(|i| items.get(i)), grouping) {
        (Some(it), _) => {
            check_collation(code, &it.expr, "ORDER BY")?;
            it.cols.first().copied().unwrap_or_default()
        }
        (None, Some(keys)) => keys
            .iter()
            .find(|k| k.norm == norm)
            .map(|k| k.col)
            .ok_or_else(|| Unsupported::new("ORDER BY an expression not in the select list"))?,
        (None, None) => {
            if !calls(code, toks)?.is_empty() {
                return Err(Unsupported::new(
                    "ORDER BY an aggregate not in the select list",
                ));
            }
            sp.hide(code.slice(toks), 1)
        }
    };
    Ok(SortCol {
        column,
        descending,
        nulls_first,
    })
}

/// One `ORDER BY` key of a `SELECT *`: a plain column reference, fetched as a hidden column
/// (its index counts the `*` as one item; the merge finds the real position from the shards'
/// row description).
pub(crate) fn wildcard_sort_key(
    code: &Code,
    sp: &mut Splicer,
    ast: &OrderByExpr,
    toks: &Range<usize>,
) -> Result<SortCol, Unsupported> {
    let (descending, nulls_first) = direction(ast)?;
    if !matches!(ast.expr, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
        return Err(Unsupported::new(
            "* in the select list with ORDER BY other than column names (list the columns)",
        ));
    }
    check_collation(code, toks, "ORDER BY")?;
    Ok(SortCol {
        column: sp.hide(code.slice(toks), 1),
        descending,
        nulls_first,
    })
}

/// A sort key's direction: (descending, nulls first), with PostgreSQL's default of NULLs first
/// exactly when descending. `USING` and `WITH FILL` cannot be merged.
fn direction(ast: &OrderByExpr) -> Result<(bool, bool), Unsupported> {
    if ast.with_fill.is_some() {
        return Err(Unsupported::new("WITH FILL"));
    }
    let descending = match &ast.options.sort {
        Some(OrderBySort::Using(_)) => return Err(Unsupported::new("ORDER BY ... USING")),
        Some(OrderBySort::Desc) => true,
        _ => false,
    };
    Ok((descending, ast.options.nulls_first.unwrap_or(descending)))
}
