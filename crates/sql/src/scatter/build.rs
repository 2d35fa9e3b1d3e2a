//! Builds a [`ScatterSelect`] from the parsed tree and the token shape: refuses what the merge
//! cannot reproduce, resolves select-list items, group keys, `HAVING` and sort keys to shard
//! columns, and collects the text edits that turn the client's statement into the shard's.

use super::aggregates::{aggregate, calls, output_name, Call};
use super::collation::{check_collation, compared_names};
use super::having::{self, Ctx};
use super::limit::{self, Limits};
use super::resolve::{
    agg_columns, column_free, group_key, ident_parts, sort_key, wildcard_sort_key, GroupKey,
};
use super::shape::{Code, Shape};
use super::splice::Splicer;
use super::{AggFn, OutputCol, ScatterSelect, SortCol, Unsupported};
use crate::lexer::TokenKind;
use sqlparser::ast::{
    Distinct, GroupByExpr, Ident, OrderByExpr, OrderByKind, Query, Select, SelectFlavor,
    SelectItem, SetExpr, TableFactor,
};
use std::ops::Range;

/// One select-list item as the rest of the analysis sees it.
#[derive(Debug)]
pub(crate) struct Item {
    /// The expression's tokens (alias excluded).
    pub(crate) expr: Range<usize>,
    pub(crate) norm: Vec<Vec<u8>>,
    /// The output column name, when known.
    pub(crate) name: Option<String>,
    /// The folded parts of a plain column reference.
    pub(crate) ident: Option<Vec<String>>,
    pub(crate) agg: Option<AggFn>,
    pub(crate) cols: Vec<usize>,
    pub(crate) wildcard: bool,
    /// A non-aggregate expression that reads no column.
    pub(crate) column_free: bool,
}

pub(crate) fn build(stmt: &[u8], q: &Query) -> Result<ScatterSelect, Unsupported> {
    let sel = check_query(q)?;
    check_select(sel)?;
    let code = Code::new(stmt);
    // One statement as the splitter cuts it has no top-level `;`; tokens past one would be
    // spliced as if they belonged to this SELECT.
    if (0..code.toks.len()).any(|i| code.is_punct(i, b';')) {
        return Err(Unsupported::unreadable());
    }
    let selects = (0..code.toks.len())
        .filter(|&i| code.is_word(i, "SELECT"))
        .count();
    if selects > 1 {
        return Err(Unsupported::new("subqueries"));
    }
    let shape = Shape::read(&code).ok_or_else(Unsupported::unreadable)?;
    let group_exprs = match &sel.group_by {
        GroupByExpr::Expressions(e, mods) if mods.is_empty() => e.as_slice(),
        GroupByExpr::All(_) => return Err(Unsupported::new("GROUP BY ALL")),
        GroupByExpr::Expressions(..) => return Err(Unsupported::new("GROUP BY ... WITH")),
    };
    let order_exprs: &[OrderByExpr] = match &q.order_by {
        None => &[],
        Some(o) if o.interpolate.is_some() => return Err(Unsupported::new("INTERPOLATE")),
        Some(o) => match &o.kind {
            OrderByKind::Expressions(v) => v,
            OrderByKind::All(_) => return Err(Unsupported::new("ORDER BY ALL")),
        },
    };
    let order_toks = shape
        .order
        .as_ref()
        .map(|(_, k)| k.as_slice())
        .unwrap_or_default();
    if shape.items.len() != sel.projection.len()
        || shape.group.len() != group_exprs.len()
        || shape.having.is_some() != sel.having.is_some()
        || order_toks.len() != order_exprs.len()
        || shape.distinct_kw != matches!(sel.distinct, Some(Distinct::Distinct))
    {
        return Err(Unsupported::unreadable());
    }
    let limits = limit::read(q, &code, shape.limit)?;
    let mut sp = Splicer::new(&code);

    let mut items = Vec::with_capacity(shape.items.len());
    for (ast, toks) in sel.projection.iter().zip(&shape.items) {
        items.push(item(&code, &mut sp, ast, toks.clone())?);
    }

    let mut keys = Vec::with_capacity(group_exprs.len());
    for (ast, toks) in group_exprs.iter().zip(&shape.group) {
        keys.push(group_key(&code, &mut sp, &items, ast, toks)?);
    }

    let having = match (&sel.having, &shape.having) {
        (Some(h), Some(toks)) => {
            let inner = toks.start + 1..toks.end;
            let mut columns_of = |call: &Call| agg_columns(&code, &mut sp, &items, call);
            let mut ctx = Ctx {
                calls: calls(&code, &inner)?,
                next_call: 0,
                group_columns: keys
                    .iter()
                    .filter_map(|k| k.ident.clone().map(|i| (i, k.col)))
                    .collect(),
                columns_of: &mut columns_of,
            };
            let expr = having::translate(h, &mut ctx)?;
            if inner
                .clone()
                .any(|i| code.toks.get(i).is_some_and(|t| t.kind == TokenKind::Param))
            {
                // Removing it would drop parameters from the shard statement (and their
                // types); `OR true` keeps them while letting every group through (the planner
                // folds the condition away).
                let mut text = b"(".to_vec();
                text.extend_from_slice(code.slice(&inner));
                text.extend_from_slice(b") OR true");
                sp.replace(inner, text);
            } else {
                sp.remove_with_space_before(toks.clone());
            }
            Some(expr)
        }
        _ => None,
    };

    let wildcard = items.iter().any(|i| i.wildcard);
    let aggregated = items.iter().any(|i| i.agg.is_some()) || !keys.is_empty() || having.is_some();
    let distinct = shape.distinct_kw;
    let only_wildcards = items.iter().all(|i| i.wildcard);
    if wildcard && (aggregated || distinct || (!order_exprs.is_empty() && !only_wildcards)) {
        return Err(Unsupported::new(
            "* in the select list with ORDER BY, DISTINCT or aggregates (list the columns)",
        ));
    }

    let mut order_by = Vec::with_capacity(order_exprs.len());
    for (ast, toks) in order_exprs.iter().zip(order_toks) {
        if wildcard {
            order_by.push(wildcard_sort_key(&code, &mut sp, ast, toks)?);
            continue;
        }
        let grouping = (aggregated || distinct).then_some(keys.as_slice());
        order_by.push(sort_key(&code, &mut sp, &items, grouping, ast, toks)?);
    }

    // What follows the select list: without grouping the shards keep ORDER BY and get the
    // widened limit; with grouping the merge sorts and limits the combined groups, so shards
    // return every group (and a shard ORDER BY could name an avg column that no longer exists).
    let first = if aggregated {
        shape.order.as_ref().map(|(o, _)| *o).or(shape.limit)
    } else {
        shape.limit
    };
    if let Some(first) = first {
        let mut text = if aggregated || distinct {
            Vec::new()
        } else {
            limit::shard_limit(&limits)
        };
        if text.is_empty() {
            text = limit::unlimited_keeping_params(&limits);
        }
        if text.is_empty() {
            sp.remove_with_space_before(first..code.toks.len());
        } else {
            sp.replace_to_end(first, text);
        }
    }

    let compared_names = compared(&code, &shape, &items, &keys, &order_by)?;

    let after_list = shape.items.last().map_or(0, |r| r.end);
    let shard_columns = sp.next_col;
    let shard_sql = sp.finish(after_list)?;
    let Limits { limit, offset } = limits;
    Ok(ScatterSelect {
        shard_sql,
        shard_columns,
        outputs: items
            .iter()
            .map(|i| match i.agg {
                Some(kind) => OutputCol::Agg {
                    kind,
                    columns: i.cols.clone(),
                },
                None if aggregated && i.column_free => {
                    OutputCol::Constant(i.cols.first().copied().unwrap_or_default())
                }
                None => OutputCol::Column(i.cols.first().copied().unwrap_or_default()),
            })
            .collect(),
        order_by,
        limit,
        offset,
        group_by: keys.iter().map(|k| k.col).collect(),
        aggregated,
        having,
        distinct,
        wildcard,
        compared_names,
    })
}

/// What the merge compares as values (group keys, sort keys, `DISTINCT` items, `min`/`max`
/// arguments, `HAVING`), each key with the select-list item it resolved to: refuses an explicit
/// collation there that is not bytewise, and returns the names those expressions read.
fn compared(
    code: &Code,
    shape: &Shape,
    items: &[Item],
    keys: &[GroupKey],
    order_by: &[SortCol],
) -> Result<Vec<String>, Unsupported> {
    let order_toks = shape.order.as_ref().map(|(_, k)| k.as_slice());
    let item_of = |col: usize| {
        items
            .iter()
            .filter(move |it| !it.wildcard && it.cols.first() == Some(&col))
            .map(|it| it.expr.clone())
    };
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for (toks, key) in shape.group.iter().zip(keys) {
        ranges.push(toks.clone());
        ranges.extend(item_of(key.col));
    }
    for (toks, key) in order_toks.unwrap_or_default().iter().zip(order_by) {
        ranges.push(toks.clone());
        ranges.extend(item_of(key.column));
    }
    ranges.extend(shape.having.clone());
    for it in items {
        if shape.distinct_kw || matches!(it.agg, Some(AggFn::Min | AggFn::Max)) {
            ranges.push(it.expr.clone());
        }
    }
    for r in &ranges {
        check_collation(code, r, "GROUP BY, DISTINCT, min/max or HAVING")?;
    }
    compared_names(code, &ranges)
}

/// Query-level refusals; returns the one plain `SELECT`.
fn check_query(q: &Query) -> Result<&Select, Unsupported> {
    if q.with.is_some() {
        return Err(Unsupported::new("CTEs (WITH)"));
    }
    if !q.locks.is_empty() {
        return Err(Unsupported::new("FOR UPDATE/FOR SHARE"));
    }
    if q.for_clause.is_some()
        || q.settings.is_some()
        || q.format_clause.is_some()
        || !q.pipe_operators.is_empty()
    {
        return Err(Unsupported::new("syntax PostgreSQL does not have"));
    }
    match q.body.as_ref() {
        SetExpr::Select(s) => Ok(s),
        SetExpr::SetOperation { .. } => {
            Err(Unsupported::new("set operations (UNION/INTERSECT/EXCEPT)"))
        }
        SetExpr::Query(_) => Err(Unsupported::new("a parenthesized SELECT")),
        SetExpr::Values(_) => Err(Unsupported::new("VALUES")),
        SetExpr::Table(_) => Err(Unsupported::new("TABLE")),
        _ => Err(Unsupported::new("a statement other than SELECT")),
    }
}

fn check_select(s: &Select) -> Result<(), Unsupported> {
    if let Some(Distinct::On(_)) = s.distinct {
        return Err(Unsupported::new("DISTINCT ON"));
    }
    if s.into.is_some() {
        return Err(Unsupported::new("SELECT INTO"));
    }
    if !s.named_window.is_empty() {
        return Err(Unsupported::new("window functions"));
    }
    if s.top.is_some()
        || !s.lateral_views.is_empty()
        || s.prewhere.is_some()
        || !s.connect_by.is_empty()
        || !s.cluster_by.is_empty()
        || !s.distribute_by.is_empty()
        || !s.sort_by.is_empty()
        || s.qualify.is_some()
        || s.value_table_mode.is_some()
        || s.exclude.is_some()
        || s.select_modifiers.is_some()
        || !s.optimizer_hints.is_empty()
        || s.flavor != SelectFlavor::Standard
    {
        return Err(Unsupported::new("syntax PostgreSQL does not have"));
    }
    let derived = s.from.iter().any(|twj| {
        std::iter::once(&twj.relation)
            .chain(twj.joins.iter().map(|j| &j.relation))
            .any(|f| matches!(f, TableFactor::Derived { .. }))
    });
    if derived {
        return Err(Unsupported::new("subqueries in FROM"));
    }
    Ok(())
}

fn item(
    code: &Code,
    sp: &mut Splicer,
    ast: &SelectItem,
    toks: Range<usize>,
) -> Result<Item, Unsupported> {
    let (e, expr) = match ast {
        SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
            return Ok(Item {
                expr: toks.clone(),
                norm: code.normalized(&toks),
                name: None,
                ident: None,
                agg: None,
                cols: vec![sp.column()],
                wildcard: true,
                column_free: false,
            });
        }
        SelectItem::UnnamedExpr(e) => (e, toks.clone()),
        SelectItem::ExprWithAlias { expr, alias } => (
            expr,
            strip_alias(code, toks.clone(), alias).ok_or_else(Unsupported::unreadable)?,
        ),
        SelectItem::ExprWithAliases { .. } => return Err(Unsupported::unreadable()),
    };
    let agg = aggregate(e)?;
    let found = calls(code, &expr)?;
    let cols = match (agg, found.as_slice()) {
        (None, []) => vec![sp.column()],
        (None, _) => {
            return Err(Unsupported::new(
                "aggregates nested in expressions (such as sum(x) + 1)",
            ))
        }
        (Some(AggFn::Avg), [call]) if call.toks == expr => {
            // The client's avg column is rebuilt by the merge from `sum, count`. The sum
            // column carries the client's name (its `[AS] alias` copied as written, so the
            // server folds, unquotes and truncates it as it would have; else `avg`): the
            // merged column takes the sum column's field as it comes from the shards.
            let alias = expr.end..toks.end;
            let name = if alias.is_empty() {
                &b"AS avg"[..]
            } else {
                code.slice(&alias)
            };
            let text = avg_parts(code, call, Some(name));
            sp.replace(toks.clone(), text);
            vec![sp.column(), sp.column()]
        }
        (Some(_), [call]) if call.toks == expr => vec![sp.column()],
        _ => return Err(Unsupported::unreadable()),
    };
    Ok(Item {
        norm: code.normalized(&expr),
        expr,
        name: output_name(ast),
        ident: ident_parts(e),
        agg,
        cols,
        wildcard: false,
        column_free: agg.is_none() && column_free(e, 0),
    })
}

/// `sum(<args>) [<name>], count(<args>)` for an `avg(<args>)` call, the arguments' text copied
/// as is; `name` (such as `AS total`) names the sum column.
pub(crate) fn avg_parts(code: &Code, call: &Call, name: Option<&[u8]>) -> Vec<u8> {
    let open = code
        .toks
        .get(call.args.start.wrapping_sub(1))
        .map(|t| t.end);
    let close = code.toks.get(call.args.end).map(|t| t.start);
    let args = match (open, close) {
        (Some(a), Some(b)) => code.src.get(a..b).unwrap_or_default(),
        _ => &[],
    };
    let mut out = b"sum(".to_vec();
    out.extend_from_slice(args);
    out.push(b')');
    if let Some(name) = name {
        out.push(b' ');
        out.extend_from_slice(name);
    }
    out.extend_from_slice(b", count(");
    out.extend_from_slice(args);
    out.push(b')');
    out
}

/// The item's tokens without `[AS] alias`, checking that the last token is that alias.
fn strip_alias(code: &Code, mut r: Range<usize>, alias: &Ident) -> Option<Range<usize>> {
    let last = r.end.checked_sub(1)?;
    let text = code.text(last);
    let matches = if alias.quote_style.is_some() {
        text.len() >= 2
            && String::from_utf8_lossy(text.get(1..text.len() - 1)?).replace("\"\"", "\"")
                == alias.value
    } else {
        text.eq_ignore_ascii_case(alias.value.as_bytes())
    };
    if !matches {
        return None;
    }
    r.end = last;
    if r.end > r.start + 1 && code.is_word(r.end - 1, "AS") {
        r.end -= 1;
    }
    (r.start < r.end).then_some(r)
}
