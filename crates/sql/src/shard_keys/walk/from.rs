//! The `FROM` side of the walk: tables, joins and their conditions, derived tables, and the
//! subqueries inside expressions (which are never top-level scopes).

use super::Walker;
use crate::shard_keys::scope::{Entry, Scope, Term};
use crate::shard_keys::values::{fold, fold_name};
use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, JoinConstraint, JoinOperator,
    ObjectName, ObjectNamePart, TableAlias, TableFactor, TableWithJoins,
};

impl Walker<'_> {
    pub(super) fn table_with_joins(
        &mut self,
        twj: &TableWithJoins,
        scope: &mut Scope,
        depth: usize,
    ) {
        if self.deep(depth) {
            return;
        }
        let start = self.sharded.len();
        self.factor(&twj.relation, scope, depth + 1);
        for join in &twj.joins {
            let left_len = scope.entries.len();
            let right_start = self.sharded.len();
            self.factor(&join.relation, scope, depth + 1);
            let left_sharded = right_start > start;
            let right_sharded = self.sharded.len() > right_start;
            let (left_kept, right_kept) = match &join.join_operator {
                JoinOperator::Left(_) | JoinOperator::LeftOuter(_) => (true, false),
                JoinOperator::Right(_) | JoinOperator::RightOuter(_) => (false, true),
                JoinOperator::FullOuter(_) => (true, true),
                _ => (false, false),
            };
            self.outer_join_of_copies |= (left_kept && !left_sharded && right_sharded)
                || (right_kept && !right_sharded && left_sharded);
            let (constraint, inner) = match &join.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::CrossJoin(c)
                | JoinOperator::StraightJoin(c) => (c, true),
                JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c) => (c, false),
                _ => continue,
            };
            match constraint {
                JoinConstraint::On(e) => {
                    self.expr(e, depth + 1);
                    scope.add_conjuncts(e, !inner);
                }
                JoinConstraint::Using(cols) => {
                    for col in cols.iter().filter_map(fold_name) {
                        let Some(col) = col.last() else { continue };
                        let find = |range: &[Entry]| {
                            let mut hits = range
                                .iter()
                                .enumerate()
                                .filter(|(_, e)| e.sharded.as_ref().is_some_and(|(_, k)| k == col));
                            let first = hits.next().map(|(i, _)| i);
                            first.filter(|_| hits.next().is_none())
                        };
                        let (left, right) =
                            scope.entries.split_at(left_len.min(scope.entries.len()));
                        if let (Some(a), Some(b)) = (find(left), find(right)) {
                            scope.terms.push(Term::Edge(a, left_len + b));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    pub(super) fn factor(&mut self, f: &TableFactor, scope: &mut Scope, depth: usize) {
        if self.deep(depth) {
            return;
        }
        self.factor_alias(f);
        match f {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => {
                let (parts, alias) = match only_table(name, alias.as_ref()) {
                    Some(table) => (vec![table], None),
                    None => (
                        fold_name(name).unwrap_or_default(),
                        alias.as_ref().map(|a| fold(&a.name)),
                    ),
                };
                if parts.is_empty() {
                    return;
                }
                let is_cte = matches!(parts.as_slice(), [n] if self.ctes.contains(n));
                let sharded = if is_cte {
                    self.seen_names.extend(parts.last().cloned());
                    None
                } else {
                    self.record(parts.clone())
                        .and_then(|r| self.key_column(r).map(|k| (r, k)))
                };
                scope.entries.push(Entry {
                    parts,
                    alias,
                    sharded,
                });
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                self.query(subquery, false, depth + 1);
                scope.entries.push(Entry {
                    parts: Vec::new(),
                    alias: alias.as_ref().map(|a| fold(&a.name)),
                    sharded: None,
                });
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.table_with_joins(table_with_joins, scope, depth + 1),
            _ => {}
        }
    }

    /// Notes the alias a `FROM` item defines; the table name of `ONLY t` is no alias.
    fn factor_alias(&mut self, f: &TableFactor) {
        let alias = match f {
            TableFactor::Table { name, alias, .. } => {
                if only_table(name, alias.as_ref()).is_some() {
                    return;
                }
                alias
            }
            TableFactor::Derived { alias, .. }
            | TableFactor::TableFunction { alias, .. }
            | TableFactor::Function { alias, .. }
            | TableFactor::UNNEST { alias, .. }
            | TableFactor::NestedJoin { alias, .. } => alias,
            _ => return,
        };
        if let Some(a) = alias {
            self.table_alias(a);
        }
    }

    /// Subqueries inside an expression; they are never top-level scopes.
    pub(super) fn expr(&mut self, e: &Expr, depth: usize) {
        if self.deep(depth) {
            return;
        }
        let d = depth + 1;
        match e {
            Expr::Subquery(q) | Expr::Exists { subquery: q, .. } => self.query(q, false, d),
            Expr::InSubquery { expr, subquery, .. } => {
                self.expr(expr, d);
                self.query(subquery, false, d);
            }
            Expr::BinaryOp { left, right, .. }
            | Expr::AnyOp { left, right, .. }
            | Expr::AllOp { left, right, .. }
            | Expr::IsDistinctFrom(left, right)
            | Expr::IsNotDistinctFrom(left, right) => {
                self.expr(left, d);
                self.expr(right, d);
            }
            Expr::UnaryOp { expr, .. }
            | Expr::Nested(expr)
            | Expr::Cast { expr, .. }
            | Expr::IsNull(expr)
            | Expr::IsNotNull(expr)
            | Expr::IsTrue(expr)
            | Expr::IsNotTrue(expr)
            | Expr::IsFalse(expr)
            | Expr::IsNotFalse(expr) => self.expr(expr, d),
            Expr::InList { expr, list, .. } => {
                self.expr(expr, d);
                list.iter().for_each(|x| self.expr(x, d));
            }
            Expr::Between {
                expr, low, high, ..
            } => [expr, low, high].into_iter().for_each(|x| self.expr(x, d)),
            Expr::Like { expr, pattern, .. } | Expr::ILike { expr, pattern, .. } => {
                self.expr(expr, d);
                self.expr(pattern, d);
            }
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                operand
                    .iter()
                    .chain(else_result.iter())
                    .for_each(|x| self.expr(x, d));
                for w in conditions {
                    self.expr(&w.condition, d);
                    self.expr(&w.result, d);
                }
            }
            Expr::Tuple(items) => items.iter().for_each(|x| self.expr(x, d)),
            Expr::Function(f) => match &f.args {
                FunctionArguments::Subquery(q) => self.query(q, false, d),
                FunctionArguments::List(list) => {
                    for arg in &list.args {
                        if let FunctionArg::Unnamed(FunctionArgExpr::Expr(x))
                        | FunctionArg::Named {
                            arg: FunctionArgExpr::Expr(x),
                            ..
                        } = arg
                        {
                            self.expr(x, d);
                        }
                    }
                }
                FunctionArguments::None => {}
            },
            // Other shapes may hide a subquery; the SELECT count cross-check catches those.
            _ => {}
        }
    }
}

/// `ONLY t` (no inheritance children): sqlparser reads it as a table named `ONLY` with the alias
/// `t`. `only` is a reserved word in PostgreSQL, so an unquoted one-part `ONLY` cannot name a
/// table: the alias is the table. `ONLY t AS x` and `ONLY schema.t` do not parse at all.
pub(super) fn only_table(name: &ObjectName, alias: Option<&TableAlias>) -> Option<String> {
    let [ObjectNamePart::Identifier(word)] = name.0.as_slice() else {
        return None;
    };
    let alias = alias?;
    (word.quote_style.is_none()
        && word.value.eq_ignore_ascii_case("only")
        && alias.columns.is_empty())
    .then(|| fold(&alias.name))
}
