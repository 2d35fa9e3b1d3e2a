//! What runs after the merge: HAVING predicates (SQL three-valued logic), DISTINCT, and the
//! ORDER BY of grouped results.

use std::cmp::Ordering;
use std::collections::HashSet;

use crate::error::MergeError;
use crate::kway::{compare_keys, Row, SortKey};
use crate::value::{comparable, compare, decode, equality_key, Column, Value};

/// A comparison operand: an output column or a constant.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    Column(usize),
    Const(Value),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A HAVING predicate over the merged output row.
#[derive(Clone, Debug, PartialEq)]
pub enum Pred {
    Cmp(Operand, CmpOp, Operand),
    And(Box<Pred>, Box<Pred>),
    Or(Box<Pred>, Box<Pred>),
    Not(Box<Pred>),
    /// `x IS NULL` (true) or `x IS NOT NULL` (false).
    IsNull(Operand, bool),
}

fn operand<'a>(o: &'a Operand, row: &'a [Value]) -> Result<&'a Value, MergeError> {
    match o {
        Operand::Column(i) => row.get(*i).ok_or(MergeError::NoSuchColumn(*i)),
        Operand::Const(v) => Ok(v),
    }
}

/// Evaluates `p` with SQL's three-valued logic (`None` = unknown); HAVING keeps a row only
/// on `Some(true)`. Comparing values of unrelated types is an error, not a guess.
pub fn eval(p: &Pred, row: &[Value]) -> Result<Option<bool>, MergeError> {
    Ok(match p {
        Pred::Cmp(a, op, b) => {
            let (a, b) = (operand(a, row)?, operand(b, row)?);
            if !comparable(a, b) {
                return Err(MergeError::Incomparable);
            }
            if matches!(a, Value::Null) || matches!(b, Value::Null) {
                return Ok(None);
            }
            let ord = compare(a, b);
            Some(match op {
                CmpOp::Eq => ord == Ordering::Equal,
                CmpOp::Ne => ord != Ordering::Equal,
                CmpOp::Lt => ord == Ordering::Less,
                CmpOp::Le => ord != Ordering::Greater,
                CmpOp::Gt => ord == Ordering::Greater,
                CmpOp::Ge => ord != Ordering::Less,
            })
        }
        Pred::And(x, y) => match (eval(x, row)?, eval(y, row)?) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Pred::Or(x, y) => match (eval(x, row)?, eval(y, row)?) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        Pred::Not(x) => eval(x, row)?.map(|b| !b),
        Pred::IsNull(o, is_null) => Some(matches!(operand(o, row)?, Value::Null) == *is_null),
    })
}

/// Decodes a whole wire row (for `eval`).
pub fn decode_row(columns: &[Column], row: &Row) -> Result<Vec<Value>, MergeError> {
    if row.len() != columns.len() {
        return Err(MergeError::ColumnCount {
            expected: columns.len(),
            got: row.len(),
        });
    }
    columns
        .iter()
        .zip(row)
        .map(|(c, cell)| decode(c, cell.as_deref()))
        .collect()
}

/// DISTINCT over whole rows with each type's equality (numeric 1.0 = 1.00, float -0 = 0,
/// NaN = NaN, NULL = NULL); the first row seen is the one kept.
#[derive(Debug)]
pub struct Distinct {
    columns: Vec<Column>,
    seen: HashSet<Vec<u8>>,
}

impl Distinct {
    pub fn new(columns: Vec<Column>) -> Self {
        Distinct {
            columns,
            seen: HashSet::new(),
        }
    }

    /// Whether `row` is the first of its kind (and so is sent to the client).
    pub fn insert(&mut self, row: &Row) -> Result<bool, MergeError> {
        let mut key = Vec::new();
        for v in decode_row(&self.columns, row)? {
            equality_key(&v, &mut key);
        }
        Ok(self.seen.insert(key))
    }
}

/// Sorts merged rows (for ORDER BY after GROUP BY); stable, so ties keep their order.
pub fn sort_rows(columns: &[Column], rows: &mut [Row], keys: &[SortKey]) -> Result<(), MergeError> {
    let mut decoded = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let mut k = Vec::with_capacity(keys.len());
        for key in keys {
            let col = columns
                .get(key.column)
                .ok_or(MergeError::NoSuchColumn(key.column))?;
            let cell = row
                .get(key.column)
                .ok_or(MergeError::NoSuchColumn(key.column))?;
            k.push(decode(col, cell.as_deref())?);
        }
        decoded.push((k, i));
    }
    decoded.sort_by(|a, b| compare_keys(&a.0, &b.0, keys));
    let sorted: Vec<Row> = decoded.iter().map(|(_, i)| rows[*i].clone()).collect();
    for (slot, row) in rows.iter_mut().zip(sorted) {
        *slot = row;
    }
    Ok(())
}
