//! Combining per-shard partial aggregates into one server's answer, grouped or not.
//!
//! Each shard runs the aggregate over its rows (avg is sent as sum and count); this module
//! combines the partials the way PostgreSQL's own combine functions do, then formats each
//! result as PostgreSQL would. min/max, bool_and/bool_or and group keys re-emit an input's
//! original bytes.
//!
//! Floating-point sum/avg: partials are added in shard order with float8pl/float4pl's
//! overflow check, which is what PostgreSQL's parallel aggregation does; float addition is not
//! associative, so the last bit can differ from a serial scan in another order. Callers who
//! need bit-exactness against a serial plan should refuse them (see [`order_sensitive`]).

use std::collections::HashMap;

use bytes::Bytes;

use crate::accumulate::{Acc, Plan};
use crate::error::MergeError;
use crate::kway::Row;
use crate::value::*;

/// The aggregates the merge can combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggKind {
    CountStar,
    Count,
    Sum,
    Min,
    Max,
    BoolAnd,
    BoolOr,
    Avg,
}

/// One aggregate output column: which shard columns carry its partials (avg: `[sum, count]`;
/// every other kind: one column), and the aggregate argument's type oid (ignored by counts).
///
/// Shard-side partials expected: count(*)/count(x) and sum(x) as the aggregate itself; for avg,
/// `sum(x)` and `count(x)`, except avg(float4), whose sum must be `sum(x::float8)` because
/// PostgreSQL accumulates float4 averages in float8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggSpec {
    pub kind: AggKind,
    pub shard_columns: Vec<usize>,
    pub arg_type: u32,
}

/// One client-visible output column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// A shard column that is a group key, passed through.
    Group(usize),
    /// A shard column whose value is the same in every row of a group (an expression that
    /// reads no column): the group's first-seen row's value, passed through.
    Any(usize),
    Agg(AggSpec),
}

/// The client-visible result type of an aggregate, or `None` if it cannot be merged exactly.
pub fn result_type(kind: &AggKind, arg_type: u32) -> Option<u32> {
    match kind {
        AggKind::CountStar | AggKind::Count => Some(OID_INT8),
        AggKind::Sum => match arg_type {
            OID_INT2 | OID_INT4 => Some(OID_INT8),
            OID_INT8 | OID_NUMERIC => Some(OID_NUMERIC),
            OID_FLOAT4 | OID_FLOAT8 => Some(arg_type),
            _ => None,
        },
        AggKind::Avg => match arg_type {
            OID_INT2 | OID_INT4 | OID_INT8 | OID_NUMERIC => Some(OID_NUMERIC),
            OID_FLOAT4 | OID_FLOAT8 => Some(OID_FLOAT8),
            _ => None,
        },
        // PostgreSQL 15 has no min/max for uuid or bool.
        AggKind::Min | AggKind::Max => {
            (sortable(arg_type) && !matches!(arg_type, OID_UUID | OID_BOOL)).then_some(arg_type)
        }
        AggKind::BoolAnd | AggKind::BoolOr => (arg_type == OID_BOOL).then_some(OID_BOOL),
    }
}

/// Whether the merged result can differ in the last bit from a serial scan (float sums).
pub fn order_sensitive(kind: &AggKind, arg_type: u32) -> bool {
    matches!(kind, AggKind::Sum | AggKind::Avg) && matches!(arg_type, OID_FLOAT4 | OID_FLOAT8)
}

/// The type each shard column of the aggregate must have.
fn partial_types(kind: &AggKind, arg: u32) -> Option<Vec<u32>> {
    Some(match kind {
        AggKind::Avg => {
            let sum = match arg {
                OID_INT2 | OID_INT4 => OID_INT8,
                OID_INT8 | OID_NUMERIC => OID_NUMERIC,
                OID_FLOAT4 | OID_FLOAT8 => OID_FLOAT8,
                _ => return None,
            };
            vec![sum, OID_INT8]
        }
        other => vec![result_type(other, arg)?],
    })
}

#[derive(Debug)]
struct Group {
    /// The first-seen row's bytes for each group-key output.
    keys: Vec<Option<Bytes>>,
    accs: Vec<Acc>,
}

/// Grouped (or, with no group columns, whole-table) combination of shard partials.
#[derive(Debug)]
pub struct GroupMerge {
    shard_columns: Vec<Column>,
    group_by: Vec<usize>,
    outputs: Vec<Output>,
    plans: Vec<Option<Plan>>,
    groups: Vec<Group>,
    index: HashMap<Vec<u8>, usize>,
}

impl GroupMerge {
    /// Validates the plan against the shard columns: every aggregate must be exactly mergeable
    /// for its argument type, and its partial columns must have the expected types.
    pub fn new(
        shard_columns: Vec<Column>,
        group_by: Vec<usize>,
        outputs: Vec<Output>,
    ) -> Result<Self, MergeError> {
        let column = |i: usize| {
            shard_columns
                .get(i)
                .copied()
                .ok_or(MergeError::NoSuchColumn(i))
        };
        for &g in &group_by {
            column(g)?;
        }
        let mut plans = Vec::with_capacity(outputs.len());
        for output in &outputs {
            match output {
                Output::Group(i) => {
                    column(*i)?;
                    if !group_by.contains(i) {
                        return Err(MergeError::NoSuchColumn(*i));
                    }
                    plans.push(None);
                }
                Output::Any(i) => {
                    column(*i)?;
                    plans.push(None);
                }
                Output::Agg(spec) => plans.push(Some(plan(spec, &column)?)),
            }
        }
        Ok(GroupMerge {
            shard_columns,
            group_by,
            outputs,
            plans,
            groups: Vec::new(),
            index: HashMap::new(),
        })
    }

    /// The client-visible columns.
    pub fn columns(&self) -> Vec<Column> {
        self.outputs
            .iter()
            .zip(&self.plans)
            .map(|(o, p)| match (o, p) {
                (_, Some(p)) => p.out,
                (Output::Group(i) | Output::Any(i), None) => self.shard_columns[*i],
                // new() builds a plan for every Agg output.
                (Output::Agg(_), None) => Column::new(0, FORMAT_TEXT),
            })
            .collect()
    }

    /// Folds one shard's partial row in.
    pub fn push(&mut self, row: Row) -> Result<(), MergeError> {
        if row.len() != self.shard_columns.len() {
            return Err(MergeError::ColumnCount {
                expected: self.shard_columns.len(),
                got: row.len(),
            });
        }
        let mut key = Vec::new();
        for &g in &self.group_by {
            equality_key(
                &decode(&self.shard_columns[g], row[g].as_deref())?,
                &mut key,
            );
        }
        let gi = match self.index.get(&key) {
            Some(&gi) => gi,
            None => {
                let group = self.new_group(&row);
                self.groups.push(group);
                self.index.insert(key, self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        let group = &mut self.groups[gi];
        for (plan, acc) in self.plans.iter().flatten().zip(group.accs.iter_mut()) {
            plan.accumulate(acc, &row, &self.shard_columns)?;
        }
        Ok(())
    }

    fn new_group(&self, row: &Row) -> Group {
        Group {
            keys: self
                .outputs
                .iter()
                .map(|o| match o {
                    // A whole-table group over no rows has no row to take a value from (a
                    // scatter always has one, as every shard answers a whole-table aggregate).
                    Output::Group(i) | Output::Any(i) => row.get(*i).cloned().flatten(),
                    Output::Agg(_) => None,
                })
                .collect(),
            accs: self.plans.iter().flatten().map(Plan::initial).collect(),
        }
    }

    /// The client columns and rows, groups in first-seen order. With no group columns there is
    /// exactly one row even over zero input rows (count 0, other aggregates NULL).
    pub fn finish(mut self) -> Result<(Vec<Column>, Vec<Row>), MergeError> {
        if self.group_by.is_empty() && self.groups.is_empty() {
            let group = self.new_group(&Vec::new());
            self.groups.push(group);
        }
        let columns = self.columns();
        let mut rows = Vec::with_capacity(self.groups.len());
        for group in self.groups {
            let mut accs = group.accs.into_iter();
            let mut row = Vec::with_capacity(self.outputs.len());
            for (key, plan) in group.keys.into_iter().zip(&self.plans) {
                match (plan, plan.as_ref().and_then(|_| accs.next())) {
                    (Some(p), Some(acc)) => row.push(p.finish(acc)?),
                    _ => row.push(key),
                }
            }
            rows.push(row);
        }
        Ok((columns, rows))
    }
}

fn plan(
    spec: &AggSpec,
    column: &dyn Fn(usize) -> Result<Column, MergeError>,
) -> Result<Plan, MergeError> {
    let unsupported = || MergeError::UnsupportedAggregate(spec.arg_type);
    let arg = match spec.kind {
        // The argument's type does not matter to a count.
        AggKind::CountStar | AggKind::Count => OID_INT8,
        _ => spec.arg_type,
    };
    let out_type = result_type(&spec.kind, arg).ok_or_else(unsupported)?;
    let want = partial_types(&spec.kind, arg).ok_or_else(unsupported)?;
    if spec.shard_columns.len() != want.len() {
        return Err(unsupported());
    }
    let mut first = None;
    for (&c, &t) in spec.shard_columns.iter().zip(&want) {
        let col = column(c)?;
        if col.type_oid != t {
            return Err(MergeError::Malformed {
                type_oid: col.type_oid,
                reason: "shard partial column has the wrong type for its aggregate",
            });
        }
        first.get_or_insert(col);
    }
    let first = first.ok_or_else(unsupported)?;
    let typmod = if matches!(spec.kind, AggKind::Min | AggKind::Max) {
        first.typmod
    } else {
        -1
    };
    Ok(Plan {
        kind: spec.kind,
        arg,
        cols: spec.shard_columns.clone(),
        out: Column {
            type_oid: out_type,
            typmod,
            format: first.format,
        },
    })
}
