//! The grouped merge of a scatter: every shard's partial aggregates folded per group, HAVING
//! evaluated over the merged values (its literals read as the type they are compared with),
//! then ORDER BY and DISTINCT; and the refusals for what cannot be merged exactly.

use shardgate_merge::{
    decode, decode_row, eval, order_sensitive, sort_rows, AggKind, AggSpec, Column, Distinct,
    GroupMerge, Operand, Output, Pred, Row, SortKey, Value,
};
use shardgate_sql::{AggFn, HavingExpr, HavingOperand, OutputCol, ScatterSelect};
use shardgate_wire::{FieldDescription, RowDescription};
use tokio::io::{AsyncRead, AsyncWrite};

use super::scatter::{data_row, error_fields, next_frame, own, own_with_hint, Failure};
use super::session::Session;
use super::shard_legs::Leg;
use super::sqlstate;

const OID_INT2: u32 = 21;
const OID_INT4: u32 = 23;
const OID_INT8: u32 = 20;
const OID_NUMERIC: u32 = 1700;
const OID_FLOAT4: u32 = 700;
const OID_FLOAT8: u32 = 701;
const OID_BOOL: u32 = 16;
const OID_TIMESTAMPTZ: u32 = 1184;

fn agg_kind(f: AggFn) -> AggKind {
    match f {
        AggFn::CountStar => AggKind::CountStar,
        AggFn::Count => AggKind::Count,
        AggFn::Sum => AggKind::Sum,
        AggFn::Min => AggKind::Min,
        AggFn::Max => AggKind::Max,
        AggFn::BoolAnd => AggKind::BoolAnd,
        AggFn::BoolOr => AggKind::BoolOr,
        AggFn::Avg => AggKind::Avg,
    }
}

/// The merge's argument type for an aggregate, from its first partial column's type: the
/// partial of sum(int2|int4) is int8, of sum(int8|numeric) numeric.
fn arg_type(kind: AggFn, partial: u32) -> u32 {
    match (kind, partial) {
        (AggFn::Sum | AggFn::Avg, OID_INT8) => OID_INT4,
        _ => partial,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Aggregates: every shard's partial rows folded per group, then HAVING, ORDER BY.
    pub(super) async fn group(
        &mut self,
        legs: &mut [Leg],
        select: &ScatterSelect,
        rd: &RowDescription,
        columns: &[Column],
    ) -> Result<(RowDescription, Vec<Row>), Failure> {
        let agg_spec = |kind: AggFn, cols: &[usize]| -> Result<AggSpec, Failure> {
            let partial = cols
                .first()
                .and_then(|c| columns.get(*c))
                .map_or(0, |c| c.type_oid);
            let arg = arg_type(kind, partial);
            let k = agg_kind(kind);
            if order_sensitive(&k, arg) {
                return Err(own(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "shardgate: cannot merge sum/avg of floating-point values exactly (the result depends on summation order)",
                ));
            }
            Ok(AggSpec {
                kind: k,
                shard_columns: cols.to_vec(),
                arg_type: arg,
            })
        };
        // Merged columns: the client's outputs, then HAVING's aggregates and group keys that
        // are not among them.
        let mut outputs: Vec<Output> = Vec::new();
        for o in &select.outputs {
            outputs.push(match o {
                OutputCol::Column(c) if !select.group_by.contains(c) => {
                    // Accepted by the server only when functionally dependent on the group
                    // keys (a primary key's other columns, an expression over the keys): the
                    // shards do not guarantee that across each other.
                    return Err(own_with_hint(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "shardgate: cannot merge a select-list expression that is neither an aggregate nor a GROUP BY key across shards",
                        "Add the expression, as written in the select list, to GROUP BY.",
                    ));
                }
                OutputCol::Column(c) => Output::Group(*c),
                OutputCol::Constant(c) => Output::Any(*c),
                OutputCol::Agg { kind, columns } => Output::Agg(agg_spec(*kind, columns)?),
            });
        }
        let visible = outputs.len();
        let mut extra = |outputs: &mut Vec<Output>, o: Output| -> usize {
            match outputs.iter().position(|x| *x == o) {
                Some(i) => i,
                None => {
                    outputs.push(o);
                    outputs.len() - 1
                }
            }
        };
        let pred = match &select.having {
            Some(h) => Some(having(h, columns, &mut outputs, &mut extra, &agg_spec)?),
            None => None,
        };
        let mut keys = Vec::new();
        for k in &select.order_by {
            // A key naming an aggregate's first column sorts by its final value.
            let agg = select.outputs.iter().position(
                |o| matches!(o, OutputCol::Agg { columns, .. } if columns.first() == Some(&k.column)),
            );
            let constant = select
                .outputs
                .iter()
                .position(|o| *o == OutputCol::Constant(k.column));
            let column = match (agg, constant) {
                (Some(i), _) | (None, Some(i)) => i,
                (None, None) => extra(&mut outputs, Output::Group(k.column)),
            };
            keys.push(SortKey {
                column,
                descending: k.descending,
                nulls_first: k.nulls_first,
            });
        }
        let mut merge =
            GroupMerge::new(columns.to_vec(), select.group_by.clone(), outputs.clone())?;
        for (i, leg) in legs.iter_mut().enumerate() {
            loop {
                let (tag, body) = next_frame(leg).await?;
                match tag {
                    b'D' => {
                        let row = data_row(&body)?;
                        merge.push(row.values)?;
                    }
                    b'C' => break,
                    b'E' => return Err(Failure::Shard(i, error_fields(&body))),
                    _ => {}
                }
            }
        }
        let (merged_cols, mut rows) = merge.finish()?;
        if let Some(p) = &pred {
            let mut kept = Vec::with_capacity(rows.len());
            for row in rows {
                let values = decode_row(&merged_cols, &row)?;
                if eval(p, &values)? == Some(true) {
                    kept.push(row);
                }
            }
            rows = kept;
        }
        if !keys.is_empty() {
            sort_rows(&merged_cols, &mut rows, &keys)?;
        }
        if select.distinct {
            let mut d = Distinct::new(merged_cols[..visible].to_vec());
            let mut kept = Vec::with_capacity(rows.len());
            for row in rows {
                let mut visible_row = row.clone();
                visible_row.truncate(visible);
                if d.insert(&visible_row)? {
                    kept.push(row);
                }
            }
            rows = kept;
        }
        // The client's RowDescription: each output's field, with an avg's type (its name is the
        // shard's sum column's, which the shard statement gives the avg's name).
        let mut fields: Vec<FieldDescription> = Vec::with_capacity(visible);
        for (i, o) in select.outputs.iter().enumerate() {
            let first = match o {
                OutputCol::Column(c) | OutputCol::Constant(c) => *c,
                OutputCol::Agg { columns, .. } => columns.first().copied().unwrap_or(0),
            };
            let mut f = rd
                .fields
                .get(first)
                .cloned()
                .ok_or_else(|| own("XX000", "shardgate: a shard returned too few columns"))?;
            if let OutputCol::Agg {
                kind: AggFn::Avg, ..
            } = o
            {
                let col = merged_cols
                    .get(i)
                    .copied()
                    .unwrap_or(Column::new(OID_NUMERIC, 0));
                f.type_oid = col.type_oid;
                f.type_len = if col.type_oid == OID_FLOAT8 { 8 } else { -1 };
                f.type_modifier = -1;
                f.table_oid = 0;
                f.column_attr = 0;
            }
            fields.push(f);
        }
        Ok((RowDescription { fields }, rows))
    }
}

/// With a database collation other than C, text does not sort byte by byte: an ORDER BY or a
/// min/max over text cannot be merged exactly.
pub(super) fn check_text_order(
    select: &ScatterSelect,
    order_by: &[shardgate_sql::SortCol],
    columns: &[Column],
) -> Result<(), Failure> {
    if compares_text(select, order_by, columns) {
        return Err(own(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "shardgate: cannot merge ORDER BY, min or max over text across shards: the database's collation is not C",
        ));
    }
    Ok(())
}

/// The merge orders text: an ORDER BY, min/max or HAVING over a text column.
pub(super) fn compares_text(
    select: &ScatterSelect,
    order_by: &[shardgate_sql::SortCol],
    columns: &[Column],
) -> bool {
    const TEXTS: &[u32] = &[25, 1043, 1042, 19];
    let is_text = |c: usize| columns.get(c).is_some_and(|c| TEXTS.contains(&c.type_oid));
    let sorts_text = order_by.iter().any(|k| is_text(k.column));
    let min_max_text = select.outputs.iter().any(|o| {
        matches!(o, OutputCol::Agg { kind: AggFn::Min | AggFn::Max, columns } if columns.first().is_some_and(|c| is_text(*c)))
    });
    let having_text = select.having.as_ref().is_some_and(|h| {
        select.group_by.iter().any(|c| is_text(*c)) || having_min_max(h, &is_text)
    });
    sorts_text || min_max_text || having_text
}

/// HAVING reads a min or max over text (which may not be among the outputs).
fn having_min_max(h: &HavingExpr, is_text: &impl Fn(usize) -> bool) -> bool {
    let operand = |o: &HavingOperand| matches!(o, HavingOperand::Agg { kind: AggFn::Min | AggFn::Max, columns } if columns.first().is_some_and(|c| is_text(*c)));
    match h {
        HavingExpr::And(a, b) | HavingExpr::Or(a, b) => {
            having_min_max(a, is_text) || having_min_max(b, is_text)
        }
        HavingExpr::Not(a) => having_min_max(a, is_text),
        HavingExpr::IsNull(o, _) => operand(o),
        HavingExpr::Cmp(l, _, r) => operand(l) || operand(r),
    }
}

/// HAVING over merged columns: aggregates and group keys become merged columns (added to
/// `outputs` when not already there), literals take the type of what they are compared with.
fn having(
    h: &HavingExpr,
    columns: &[Column],
    outputs: &mut Vec<Output>,
    extra: &mut impl FnMut(&mut Vec<Output>, Output) -> usize,
    agg_spec: &impl Fn(AggFn, &[usize]) -> Result<AggSpec, Failure>,
) -> Result<Pred, Failure> {
    Ok(match h {
        HavingExpr::And(a, b) => Pred::And(
            Box::new(having(a, columns, outputs, extra, agg_spec)?),
            Box::new(having(b, columns, outputs, extra, agg_spec)?),
        ),
        HavingExpr::Or(a, b) => Pred::Or(
            Box::new(having(a, columns, outputs, extra, agg_spec)?),
            Box::new(having(b, columns, outputs, extra, agg_spec)?),
        ),
        HavingExpr::Not(a) => Pred::Not(Box::new(having(a, columns, outputs, extra, agg_spec)?)),
        HavingExpr::IsNull(o, is_null) => match operand(o, outputs, extra, agg_spec)? {
            Ok(i) => Pred::IsNull(Operand::Column(i), *is_null),
            Err(_) => {
                return Err(own(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "shardgate: HAVING <constant> IS NULL",
                ))
            }
        },
        HavingExpr::Cmp(l, op, r) => {
            let l = operand(l, outputs, extra, agg_spec)?;
            let r = operand(r, outputs, extra, agg_spec)?;
            let op = match op {
                shardgate_sql::CmpOp::Eq => shardgate_merge::CmpOp::Eq,
                shardgate_sql::CmpOp::NotEq => shardgate_merge::CmpOp::Ne,
                shardgate_sql::CmpOp::Lt => shardgate_merge::CmpOp::Lt,
                shardgate_sql::CmpOp::LtEq => shardgate_merge::CmpOp::Le,
                shardgate_sql::CmpOp::Gt => shardgate_merge::CmpOp::Gt,
                shardgate_sql::CmpOp::GtEq => shardgate_merge::CmpOp::Ge,
            };
            match (l, r) {
                (Ok(a), Ok(b)) => Pred::Cmp(Operand::Column(a), op, Operand::Column(b)),
                (Ok(a), Err(t)) => Pred::Cmp(
                    Operand::Column(a),
                    op,
                    literal_for(columns, outputs, a, &t)?,
                ),
                (Err(t), Ok(b)) => Pred::Cmp(
                    literal_for(columns, outputs, b, &t)?,
                    op,
                    Operand::Column(b),
                ),
                (Err(_), Err(_)) => {
                    return Err(own(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "shardgate: HAVING comparing two constants",
                    ))
                }
            }
        }
    })
}

/// A HAVING constant's text, and whether it is a numeric literal (typed by the server) rather
/// than a string or boolean (which takes the type of what it is compared with).
type Constant = (String, bool);

/// A HAVING operand: the merged column it reads (Ok), or a constant (Err).
fn operand(
    o: &HavingOperand,
    outputs: &mut Vec<Output>,
    extra: &mut impl FnMut(&mut Vec<Output>, Output) -> usize,
    agg_spec: &impl Fn(AggFn, &[usize]) -> Result<AggSpec, Failure>,
) -> Result<Result<usize, Constant>, Failure> {
    Ok(match o {
        HavingOperand::Column(c) => Ok(extra(outputs, Output::Group(*c))),
        HavingOperand::Agg { kind, columns } => {
            Ok(extra(outputs, Output::Agg(agg_spec(*kind, columns)?)))
        }
        HavingOperand::Literal(t) => Err((t.clone(), false)),
        HavingOperand::Number(t) => Err((t.clone(), true)),
        HavingOperand::Param(_) => {
            return Err(own(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "shardgate: HAVING with a parameter across shards",
            ))
        }
    })
}

/// A HAVING constant as PostgreSQL would compare it with the merged column: the column's type
/// is an aggregate's result type, or a group key's type as the shards described it (`columns`,
/// by shard column).
///
/// A string or boolean takes the column's type. A number is typed first (int4/int8 when it is
/// an integer, else numeric) and the operator follows: integers compare exactly with any
/// integer type; numeric with an integer column compares in numeric; any number with real or
/// double precision compares in float8 (`0.1::real > 0.1` is true: the real is widened and the
/// number read as float8). A constant the type cannot read, a number against a non-numeric
/// type (the server has no such operator), or a timestamptz constant (which the server would
/// read in the session's TimeZone) is refused rather than guessed.
fn literal_for(
    columns: &[Column],
    outputs: &[Output],
    column: usize,
    (text, number): &Constant,
) -> Result<Operand, Failure> {
    let ty = match outputs.get(column) {
        Some(Output::Agg(spec)) => match spec.kind {
            AggKind::Count | AggKind::CountStar => OID_INT8,
            _ => shardgate_merge::result_type(&spec.kind, spec.arg_type).unwrap_or(OID_NUMERIC),
        },
        Some(Output::Group(c) | Output::Any(c)) => {
            columns.get(*c).map_or(OID_NUMERIC, |c| c.type_oid)
        }
        _ => OID_NUMERIC,
    };
    let refuse = || {
        own(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("shardgate: HAVING compares with the constant '{text}', which shardgate cannot read exactly as its type across shards"),
        )
    };
    if ty == OID_TIMESTAMPTZ {
        return Err(refuse());
    }
    if *number {
        let read_as = match ty {
            OID_INT2 | OID_INT4 | OID_INT8 => {
                if let Ok(n) = text.parse::<i64>() {
                    return Ok(Operand::Const(Value::Int(n)));
                }
                OID_NUMERIC
            }
            OID_FLOAT4 | OID_FLOAT8 => OID_FLOAT8,
            OID_NUMERIC => OID_NUMERIC,
            _ => return Err(refuse()),
        };
        let v = decode(&Column::new(read_as, 0), Some(text.as_bytes())).map_err(|_| refuse())?;
        // The server fails a number out of float8's range (1e400, 1e-400); Rust's parse
        // would give infinity or zero.
        if let Value::Float(f) = v {
            let nonzero = text
                .split(['e', 'E'])
                .next()
                .is_some_and(|m| m.bytes().any(|b| matches!(b, b'1'..=b'9')));
            if !f.is_finite() || (f == 0.0 && nonzero) {
                return Err(refuse());
            }
        }
        return Ok(Operand::Const(v));
    }
    let text = match (ty, text.to_ascii_lowercase().as_str()) {
        (OID_BOOL, "true") => "t",
        (OID_BOOL, "false") => "f",
        _ => text,
    };
    let v: Value = decode(&Column::new(ty, 0), Some(text.as_bytes())).map_err(|_| refuse())?;
    Ok(Operand::Const(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under a database collation that is not C: text compared through a HAVING min/max is
    /// refused even when the aggregate is not selected; grouping by text alone is not.
    #[test]
    fn text_order_checks_having_aggregates() {
        let columns = |n: usize| {
            let mut c = vec![Column::new(OID_INT4, 0)];
            c.extend((1..n).map(|_| Column::new(25, 0)));
            c
        };
        let check = |sql: &str| {
            let select = shardgate_sql::scatter_select(sql.as_bytes()).expect("merged");
            let cols = columns(select.shard_columns);
            check_text_order(&select, &select.order_by, &cols).is_ok()
        };
        assert!(!check("SELECT g FROM ev GROUP BY g HAVING max(t) > 'a'"));
        assert!(!check(
            "SELECT g FROM ev GROUP BY g HAVING NOT (count(*) > 1 AND min(t) < 'b')"
        ));
        assert!(!check("SELECT g, min(t) FROM ev GROUP BY g"));
        assert!(check("SELECT g FROM ev GROUP BY g HAVING count(*) > 1"));
        assert!(check("SELECT g, t, count(*) FROM ev GROUP BY g, t"));
    }
}
