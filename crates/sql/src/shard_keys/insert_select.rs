//! `INSERT INTO t (...) SELECT ... FROM s` without a shard key can still run on every shard at
//! once when every row stays where it is read: both tables are sharded, the value inserted into
//! t's key column is s's key column itself (the same value hashes to the same shard), and the
//! SELECT works row by row on s alone (no join, subquery, aggregate, window, grouping,
//! DISTINCT, ORDER BY or LIMIT, any of which would see only one shard's rows).

use super::values::{fold, fold_name};
use super::{parse_one, ShardingSpec, TableKind};
use crate::lexer::{LexOptions, Lexer, TokenKind};
use sqlparser::ast::{Expr, SelectItem, SetExpr, Statement, TableFactor, TableObject};

/// `Ok(())` if `stmt` is such an INSERT ... SELECT; otherwise why not, for the refusal.
pub fn colocated_insert_select(stmt: &[u8], spec: &ShardingSpec) -> Result<(), String> {
    let words = |w: &[u8]| {
        Lexer::new(stmt, LexOptions::default())
            .filter(|t| {
                t.kind == TokenKind::Word
                    && stmt
                        .get(t.start..t.end)
                        .is_some_and(|x| x.eq_ignore_ascii_case(w))
            })
            .count()
    };
    if words(b"SELECT") != 1 || words(b"OVER") > 0 {
        return Err("its SELECT has a subquery or a window function".to_owned());
    }
    let Some(Statement::Insert(ins)) = parse_one(stmt, spec) else {
        return Err("it could not be read as one INSERT".to_owned());
    };
    let TableObject::TableName(target) = &ins.table else {
        return Err("its target is not a table".to_owned());
    };
    let sharded = |parts: Option<Vec<String>>| match parts.map(|p| spec.resolve(&p)) {
        Some(TableKind::Sharded(i)) => spec.key_of(i).map(str::to_owned),
        _ => None,
    };
    let Some(target_key) = sharded(fold_name(target)) else {
        return Err("its target is not a sharded table".to_owned());
    };
    let Some(src) = &ins.source else {
        return Err("it has no SELECT".to_owned());
    };
    if src.with.is_some()
        || src.order_by.is_some()
        || src.limit_clause.is_some()
        || src.fetch.is_some()
    {
        return Err("its SELECT has WITH, ORDER BY or LIMIT".to_owned());
    }
    let SetExpr::Select(sel) = src.body.as_ref() else {
        return Err("its source is not a plain SELECT".to_owned());
    };
    let grouped = !matches!(
        &sel.group_by,
        sqlparser::ast::GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty()
    );
    if sel.distinct.is_some() || grouped || sel.having.is_some() || !sel.named_window.is_empty() {
        return Err("its SELECT groups rows or removes duplicates".to_owned());
    }
    let [from] = sel.from.as_slice() else {
        return Err("its SELECT reads more than one table".to_owned());
    };
    if !from.joins.is_empty() {
        return Err("its SELECT joins tables".to_owned());
    }
    let TableFactor::Table { name, alias, .. } = &from.relation else {
        return Err("its SELECT does not read a table".to_owned());
    };
    let Some(source_key) = sharded(fold_name(name)) else {
        return Err("its SELECT does not read a sharded table".to_owned());
    };
    let Some(pos) = ins
        .columns
        .iter()
        .position(|c| fold_name(c).is_some_and(|p| p.last() == Some(&target_key)))
    else {
        return Err(format!(
            "its column list does not name the shard key {target_key}"
        ));
    };
    let expr = match sel.projection.get(pos) {
        Some(SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }) => e,
        _ => return Err(format!("no select-list item gives {target_key} plainly")),
    };
    let qualifiers: Vec<String> = match alias {
        Some(a) => vec![fold(&a.name)],
        None => fold_name(name).unwrap_or_default(),
    };
    let plain = match expr {
        Expr::Identifier(i) => fold(i) == source_key,
        Expr::CompoundIdentifier(parts) => match parts.split_last() {
            Some((col, quals)) => {
                fold(col) == source_key
                    && quals
                        .last()
                        .is_some_and(|q| qualifiers.last() == Some(&fold(q)))
            }
            None => false,
        },
        _ => false,
    };
    if !plain {
        return Err(format!(
            "the value inserted into {target_key} is not the source's shard key {source_key}"
        ));
    }
    if called_aggregate(stmt) {
        return Err("its SELECT uses an aggregate".to_owned());
    }
    Ok(())
}

/// Any call to a built-in aggregate (a user-defined one fails the key check's row-by-row
/// assumption only together with GROUP BY, which is refused above).
fn called_aggregate(stmt: &[u8]) -> bool {
    const AGGREGATES: &[&str] = &[
        "count",
        "sum",
        "min",
        "max",
        "avg",
        "bool_and",
        "bool_or",
        "every",
        "array_agg",
        "string_agg",
        "json_agg",
        "jsonb_agg",
        "json_object_agg",
        "jsonb_object_agg",
    ];
    crate::lexer::called_functions(stmt)
        .iter()
        .any(|f| AGGREGATES.contains(&f.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ShardingSpec {
        ShardingSpec::new(
            &[
                (None, "orders".into(), "user_id".into()),
                (None, "archive".into(), "uid".into()),
                (None, "users".into(), "id".into()),
            ],
            &[(None, "countries".into())],
        )
    }

    #[test]
    fn rows_that_stay_on_their_shard() {
        for sql in [
            "INSERT INTO archive (uid, note) SELECT user_id, note FROM orders WHERE note = 'x'",
            "INSERT INTO archive (note, uid) SELECT o.note, o.user_id FROM orders o",
            "INSERT INTO archive (uid) SELECT orders.user_id AS u FROM orders",
            "INSERT INTO orders (user_id, note) SELECT user_id, note || '!' FROM orders",
        ] {
            assert_eq!(
                colocated_insert_select(sql.as_bytes(), &spec()),
                Ok(()),
                "{sql}"
            );
        }
    }

    #[test]
    fn rows_that_could_move_are_not() {
        for sql in [
            "INSERT INTO archive (uid) SELECT user_id + 1 FROM orders",
            "INSERT INTO archive (uid, note) SELECT id, name FROM users JOIN orders ON true",
            "INSERT INTO archive SELECT user_id FROM orders",
            "INSERT INTO archive (uid) SELECT user_id FROM orders LIMIT 3",
            "INSERT INTO archive (uid) SELECT DISTINCT user_id FROM orders",
            "INSERT INTO archive (uid, note) SELECT user_id, count(*)::text FROM orders GROUP BY 1",
            "INSERT INTO archive (uid) SELECT user_id FROM orders WHERE user_id IN (SELECT id FROM users)",
            "INSERT INTO archive (uid, note) SELECT user_id, row_number() OVER ()::text FROM orders",
            "INSERT INTO archive (uid) SELECT code::int FROM countries",
            "INSERT INTO countries (code) SELECT note FROM orders",
            "INSERT INTO archive (uid) SELECT x.user_id FROM orders o",
        ] {
            assert!(colocated_insert_select(sql.as_bytes(), &spec()).is_err(), "{sql}");
        }
    }
}
