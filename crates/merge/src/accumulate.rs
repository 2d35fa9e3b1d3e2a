//! Per-group running state of one aggregate: folding shard partials in with PostgreSQL's
//! combine rules (overflow checks included) and producing the final wire value.

use bytes::Bytes;

use crate::aggregate::AggKind;
use crate::error::MergeError;
use crate::kway::Row;
use crate::numeric::Numeric;
use crate::value::*;

/// Running state of one aggregate in one group.
#[derive(Clone, Debug)]
pub(crate) enum Acc {
    Count(i64),
    SumInt(Option<i64>),
    SumNumeric(Option<Numeric>),
    SumF32(Option<f32>),
    SumF64(Option<f64>),
    /// The winning value and its original bytes.
    Pick(Option<(Value, Bytes)>),
    Bool(Option<bool>),
    AvgNumeric(Option<Numeric>, i64),
    AvgF64(Option<f64>, i64),
}

const FLOAT_OVERFLOW: MergeError = MergeError::Overflow("value out of range: overflow");
const BIGINT_OVERFLOW: MergeError = MergeError::Overflow("bigint out of range");

/// float8pl: an infinite result from finite inputs is an error, not a value.
fn add_f64(a: f64, b: f64) -> Result<f64, MergeError> {
    let r = a + b;
    if r.is_infinite() && a.is_finite() && b.is_finite() {
        return Err(FLOAT_OVERFLOW);
    }
    Ok(r)
}

fn add_f32(a: f32, b: f32) -> Result<f32, MergeError> {
    let r = a + b;
    if r.is_infinite() && a.is_finite() && b.is_finite() {
        return Err(FLOAT_OVERFLOW);
    }
    Ok(r)
}

fn to_numeric(v: Value) -> Result<Numeric, MergeError> {
    match v {
        Value::Int(i) => Ok(Numeric::from_i128(i.into())),
        Value::Numeric(n) => Ok(n),
        _ => Err(MergeError::Malformed {
            type_oid: OID_NUMERIC,
            reason: "partial sum is not numeric",
        }),
    }
}

fn count_of(v: Value) -> Result<i64, MergeError> {
    match v {
        Value::Int(i) => Ok(i),
        _ => Err(MergeError::Malformed {
            type_oid: OID_INT8,
            reason: "partial count is not an integer",
        }),
    }
}

fn float_of(v: Value) -> Result<f64, MergeError> {
    match v {
        Value::Float(f) => Ok(f),
        _ => Err(MergeError::Malformed {
            type_oid: OID_FLOAT8,
            reason: "partial sum is not a float",
        }),
    }
}

/// One output column's plan, resolved against the shard columns.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) kind: AggKind,
    pub(crate) arg: u32,
    pub(crate) cols: Vec<usize>,
    pub(crate) out: Column,
}

impl Plan {
    pub(crate) fn initial(&self) -> Acc {
        match (self.kind, self.arg) {
            (AggKind::CountStar | AggKind::Count, _) => Acc::Count(0),
            (AggKind::Sum, OID_INT2 | OID_INT4) => Acc::SumInt(None),
            (AggKind::Sum, OID_FLOAT4) => Acc::SumF32(None),
            (AggKind::Sum, OID_FLOAT8) => Acc::SumF64(None),
            (AggKind::Sum, _) => Acc::SumNumeric(None),
            (AggKind::Avg, OID_FLOAT4 | OID_FLOAT8) => Acc::AvgF64(None, 0),
            (AggKind::Avg, _) => Acc::AvgNumeric(None, 0),
            (AggKind::Min | AggKind::Max, _) => Acc::Pick(None),
            (AggKind::BoolAnd | AggKind::BoolOr, _) => Acc::Bool(None),
        }
    }

    /// Folds one shard row's partial into `acc`.
    pub(crate) fn accumulate(
        &self,
        acc: &mut Acc,
        row: &Row,
        cols: &[Column],
    ) -> Result<(), MergeError> {
        let c0 = self.cols[0];
        let v = decode(&cols[c0], row[c0].as_deref())?;
        if matches!(v, Value::Null) && !matches!(acc, Acc::AvgNumeric(..) | Acc::AvgF64(..)) {
            return Ok(());
        }
        match acc {
            Acc::Count(n) => *n = n.checked_add(count_of(v)?).ok_or(BIGINT_OVERFLOW)?,
            Acc::SumInt(s) => {
                let x = count_of(v)?;
                *s = Some(match s {
                    Some(s) => s.checked_add(x).ok_or(BIGINT_OVERFLOW)?,
                    None => x,
                });
            }
            Acc::SumNumeric(s) => {
                let x = to_numeric(v)?;
                *s = Some(match s {
                    Some(s) => s.add(&x)?,
                    None => x,
                });
            }
            Acc::SumF32(s) => {
                // Exact: a float4 column decodes to the f64 of an f32.
                let x = float_of(v)? as f32;
                *s = Some(match s {
                    Some(s) => add_f32(*s, x)?,
                    None => x,
                });
            }
            Acc::SumF64(s) => {
                let x = float_of(v)?;
                *s = Some(match s {
                    Some(s) => add_f64(*s, x)?,
                    None => x,
                });
            }
            Acc::Pick(cur) => {
                let raw = row[c0].clone().unwrap_or_default();
                // PostgreSQL's smaller/larger keep the state only when strictly better, so on
                // a tie (numeric 1.0 vs 1.00, float -0 vs 0) the later input wins.
                let replace = match cur {
                    None => true,
                    Some((held, _)) => {
                        let ord = compare(held, &v);
                        match self.kind {
                            AggKind::Min => ord != std::cmp::Ordering::Less,
                            _ => ord != std::cmp::Ordering::Greater,
                        }
                    }
                };
                if replace {
                    *cur = Some((v, raw));
                }
            }
            Acc::Bool(b) => {
                let Value::Bool(x) = v else {
                    return Err(MergeError::UnsupportedAggregate(self.arg));
                };
                *b = Some(match (self.kind, *b) {
                    (_, None) => x,
                    (AggKind::BoolAnd, Some(y)) => x && y,
                    (_, Some(y)) => x || y,
                });
            }
            Acc::AvgNumeric(sum, count) => {
                let c1 = self.cols[1];
                let n = count_of(decode(&cols[c1], row[c1].as_deref())?).unwrap_or(0);
                if n > 0 {
                    let x = to_numeric(v)?;
                    *sum = Some(match sum {
                        Some(s) => s.add(&x)?,
                        None => x,
                    });
                    *count = count.checked_add(n).ok_or(BIGINT_OVERFLOW)?;
                }
            }
            Acc::AvgF64(sum, count) => {
                let c1 = self.cols[1];
                let n = count_of(decode(&cols[c1], row[c1].as_deref())?).unwrap_or(0);
                if n > 0 {
                    let x = float_of(v)?;
                    *sum = Some(match sum {
                        Some(s) => add_f64(*s, x)?,
                        None => x,
                    });
                    *count = count.checked_add(n).ok_or(BIGINT_OVERFLOW)?;
                }
            }
        }
        Ok(())
    }

    /// The final value's wire bytes (`None` = NULL).
    pub(crate) fn finish(&self, acc: Acc) -> Result<Option<Bytes>, MergeError> {
        let value = match acc {
            Acc::Pick(p) => return Ok(p.map(|(_, raw)| raw)),
            Acc::Count(n) => Value::Int(n),
            Acc::SumInt(s) => s.map_or(Value::Null, Value::Int),
            Acc::SumNumeric(s) => s.map_or(Value::Null, Value::Numeric),
            Acc::SumF32(s) => s.map_or(Value::Null, |f| Value::Float(f64::from(f))),
            Acc::SumF64(s) => s.map_or(Value::Null, Value::Float),
            Acc::Bool(b) => b.map_or(Value::Null, Value::Bool),
            Acc::AvgNumeric(s, n) => match s {
                Some(s) => Value::Numeric(s.div_count(n)?),
                None => Value::Null,
            },
            // float8_avg: Sx / N with N as a float8.
            Acc::AvgF64(s, n) => s.map_or(Value::Null, |s| Value::Float(s / n as f64)),
        };
        if matches!(value, Value::Null) {
            return Ok(None);
        }
        let mut out = Vec::new();
        encode(&self.out, &value, &mut out)?;
        Ok(Some(Bytes::from(out)))
    }
}
