//! `HAVING` as the merge evaluates it after combining groups: comparisons of aggregates and group
//! columns with constants, joined by `AND`/`OR`/`NOT`. Anything else is refused, since the merge
//! would have to evaluate arbitrary SQL to get it right.

use super::aggregates::{aggregate, fold, Call};
use super::{AggFn, CmpOp, HavingExpr, HavingOperand, Unsupported};
use sqlparser::ast::{BinaryOperator, Expr, UnaryOperator, Value};

const MAX_DEPTH: usize = 100;

/// What the translation needs from the caller.
pub(crate) struct Ctx<'r> {
    /// The aggregate calls of the `HAVING` text, in text order (the tree visits them in the same
    /// order, since nothing else in a `HAVING` we accept holds a call).
    pub(crate) calls: Vec<Call>,
    pub(crate) next_call: usize,
    /// Each group key written as a column reference: its folded name parts and shard column.
    pub(crate) group_columns: Vec<(Vec<String>, usize)>,
    /// The shard columns holding an aggregate call (adding hidden columns when needed).
    pub(crate) columns_of: &'r mut dyn FnMut(&Call) -> Vec<usize>,
}

fn shape() -> Unsupported {
    Unsupported::new("HAVING other than comparisons of aggregates and group columns with constants")
}

/// Translates a `HAVING` condition; afterwards every call in `ctx.calls` must have been used.
pub(crate) fn translate(e: &Expr, ctx: &mut Ctx) -> Result<HavingExpr, Unsupported> {
    let out = condition(e, ctx, 0)?;
    if ctx.next_call != ctx.calls.len() {
        return Err(shape());
    }
    Ok(out)
}

fn condition(e: &Expr, ctx: &mut Ctx, depth: usize) -> Result<HavingExpr, Unsupported> {
    if depth > MAX_DEPTH {
        return Err(shape());
    }
    let d = depth + 1;
    Ok(match e {
        Expr::Nested(inner) => condition(inner, ctx, d)?,
        Expr::BinaryOp { left, op, right } => {
            let cmp = match op {
                BinaryOperator::And => {
                    let l = condition(left, ctx, d)?;
                    return Ok(HavingExpr::And(
                        Box::new(l),
                        Box::new(condition(right, ctx, d)?),
                    ));
                }
                BinaryOperator::Or => {
                    let l = condition(left, ctx, d)?;
                    return Ok(HavingExpr::Or(
                        Box::new(l),
                        Box::new(condition(right, ctx, d)?),
                    ));
                }
                BinaryOperator::Eq => CmpOp::Eq,
                BinaryOperator::NotEq => CmpOp::NotEq,
                BinaryOperator::Lt => CmpOp::Lt,
                BinaryOperator::LtEq => CmpOp::LtEq,
                BinaryOperator::Gt => CmpOp::Gt,
                BinaryOperator::GtEq => CmpOp::GtEq,
                _ => return Err(shape()),
            };
            let l = operand(left, ctx, d)?;
            HavingExpr::Cmp(l, cmp, operand(right, ctx, d)?)
        }
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => HavingExpr::Not(Box::new(condition(expr, ctx, d)?)),
        Expr::IsNull(x) => HavingExpr::IsNull(operand(x, ctx, d)?, true),
        Expr::IsNotNull(x) => HavingExpr::IsNull(operand(x, ctx, d)?, false),
        _ => return Err(shape()),
    })
}

fn operand(e: &Expr, ctx: &mut Ctx, depth: usize) -> Result<HavingOperand, Unsupported> {
    if depth > MAX_DEPTH {
        return Err(shape());
    }
    if let Some(kind) = aggregate(e)? {
        let call = ctx.calls.get(ctx.next_call).cloned().ok_or_else(shape)?;
        ctx.next_call += 1;
        // `count(*)` and `count(x)` are told apart by the tokens.
        let same = call.kind == kind || (call.kind == AggFn::CountStar && kind == AggFn::Count);
        if !same {
            return Err(shape());
        }
        let columns = (ctx.columns_of)(&call);
        return Ok(HavingOperand::Agg {
            kind: call.kind,
            columns,
        });
    }
    let name: Option<Vec<String>> = match e {
        Expr::Nested(inner) => return operand(inner, ctx, depth + 1),
        Expr::Identifier(i) => Some(vec![fold(i)]),
        Expr::CompoundIdentifier(parts) => Some(parts.iter().map(fold).collect()),
        _ => None,
    };
    if let Some(name) = name {
        return ctx
            .group_columns
            .iter()
            .find(|(parts, _)| *parts == name)
            .map(|&(_, col)| HavingOperand::Column(col))
            .ok_or_else(|| {
                Unsupported::new("HAVING on a column that is not written as a group key")
            });
    }
    literal(e).ok_or_else(shape)
}

/// A constant's text as the server would read it (quotes and escapes already undone).
fn literal(e: &Expr) -> Option<HavingOperand> {
    let text = |s: &str| Some(HavingOperand::Literal(s.to_owned()));
    let number = |s: &str| Some(HavingOperand::Number(s.to_owned()));
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, false) => number(n),
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::NationalStringLiteral(s) => text(s),
            Value::DollarQuotedString(d) => text(&d.value),
            Value::Boolean(b) => text(if *b { "true" } else { "false" }),
            Value::Placeholder(p) => p
                .strip_prefix('$')
                .and_then(|d| d.parse::<u16>().ok())
                .filter(|&n| n >= 1)
                .map(HavingOperand::Param),
            _ => None,
        },
        Expr::UnaryOp { op, expr } => match (op, expr.as_ref()) {
            (UnaryOperator::Minus, Expr::Value(v)) => match &v.value {
                Value::Number(n, false) if !n.starts_with('-') => number(&format!("-{n}")),
                _ => None,
            },
            (UnaryOperator::Plus, Expr::Value(v)) => match &v.value {
                Value::Number(n, false) => number(n),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}
