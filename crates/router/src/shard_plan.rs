//! Which shards one statement needs, from what `shardgate_sql::analyze` found in it: the
//! shards of its key values, every shard (DDL, writes of reference and unsharded tables), the
//! first shard (reads of unsharded tables), any shard (no table, or reference tables only), a
//! split of a multi-row `INSERT`, or a refusal that says what to add. Pure: key values come
//! through the caller's resolver, which knows the Bind parameters and the key column's type.

use shardgate_sql::{KeyConstraint, KeySource, ShardAnalysis};

use crate::shard_map::{KeyValue, ShardMap};

/// A set of shard indices, bit `i` for shard `i` (the config allows at most 64 shards).
pub type ShardSet = u64;

/// The largest number of shards a [`ShardSet`] can hold.
pub const MAX_SHARDS: usize = 64;

/// Where a statement must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// It names no table: wherever the session already is, else the first shard.
    Any,
    /// It reads reference tables only, which every shard holds in full.
    AnyReference,
    /// It reads tables that are in no sharding list: they live on the first shard.
    First,
    /// Exactly these shards, from its key values.
    Shards(ShardSet),
    /// Every shard: DDL, or a write to reference or unsharded tables.
    All,
    /// A multi-row `INSERT ... VALUES` whose rows live on different shards: per shard (in
    /// shard order), the indices of its rows in statement order.
    Split(Vec<(usize, Vec<usize>)>),
    /// A read of one sharded table with no usable key: every shard, merged (scatter-gather).
    Scatter,
    /// An `UPDATE`/`DELETE` of one sharded table with no usable key: every shard, counts summed.
    ScatterWrite,
}

/// Why a statement goes where it goes, for the decision log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardWhy {
    NoTables,
    ReferenceRead,
    UnshardedRead,
    Ddl,
    ReferenceWrite,
    UnshardedWrite,
    /// No usable key on this sharded table: every shard.
    NoKey {
        table: String,
    },
    /// Routed by its key values; the first one is shown.
    Key {
        column: String,
        value: KeyValue,
        logical: u32,
        /// How many key values there were in all.
        count: usize,
    },
}

/// A statement's shards and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementPlan {
    pub target: Target,
    pub why: ShardWhy,
}

/// A statement shardgate will not run, with the SQLSTATE and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
    pub hint: String,
}

/// SQLSTATE feature_not_supported.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";

fn refuse(message: String, hint: &str) -> Refusal {
    Refusal {
        code: FEATURE_NOT_SUPPORTED,
        message,
        hint: hint.to_owned(),
    }
}

const PIN_HINT: &str = "Add a shard-key filter (WHERE <key> = <value> or <key> IN (...)), or pin \
     the statement with /* shardgate: shard=<name> */ or /* shardgate: shard_key=<value> */.";

/// Turns one key source into a value: `Ok(None)` is SQL NULL, `Err` a message saying why it
/// cannot be read (a malformed or undecodable parameter).
pub type Resolve<'a> = dyn FnMut(&KeySource) -> Result<Option<KeyValue>, String> + 'a;

/// Plans one statement. `shard_count` is the number of shards in the config.
pub fn plan_statement(
    a: &ShardAnalysis,
    map: &ShardMap,
    shard_count: usize,
    resolve: &mut Resolve<'_>,
) -> Result<StatementPlan, Refusal> {
    let key = match &a.key {
        // Schema changes go everywhere, whatever tables they name.
        Some(_) if a.ddl => None,
        k => k.as_ref(),
    };
    let Some(key) = key else {
        return Ok(unsharded(a));
    };
    let table = a.sharded.first().map(String::as_str).unwrap_or_default();
    let column = a.key_column.clone().unwrap_or_default();
    const UNPARSED: &str = "Pin it with /* shardgate: shard=<name> */ or /* shardgate: \
                            shard_key=<value> */.";
    let values =
        match key {
            KeyConstraint::Values(v) if !v.is_empty() => v,
            _ if !a.parsed => {
                return Err(refuse(
                    format!(
                    "shardgate: cannot route a statement on sharded table {table}: it could not \
                     be parsed, so its shard key is unknown"
                ),
                    UNPARSED,
                ))
            }
            _ if a.sharded.len() > 1 => {
                return Err(refuse(
                    format!(
                    "shardgate: a statement joining sharded tables ({}) needs a shard-key filter",
                    a.sharded.join(", ")
                ),
                    PIN_HINT,
                ))
            }
            _ if a.key_assigned => {
                return Err(refuse(
                    format!(
                    "shardgate: an UPDATE of {table} without a shard-key filter assigns its shard \
                     key {column}, which could move rows to another shard"
                ),
                    PIN_HINT,
                ))
            }
            _ if a.outer_join_of_copies => return Err(refuse(
                format!(
                    "shardgate: an outer join keeping every row of a reference table, a function \
                     or VALUES against sharded table {table} cannot run across shards: each \
                     shard would add its own NULL-extended rows"
                ),
                "Add a shard-key filter on the sharded table, or run it as two statements: the \
                 rows that match, then the rows without a match (NOT EXISTS).",
            )),
            // A self-join or a subquery on the same table: each shard would pair only its own
            // rows, losing the pairs that span shards.
            _ if a.sharded_refs > 1 => {
                return Err(refuse(
                    format!(
                        "shardgate: a statement reading sharded table {table} more than once (a \
                         self-join or a subquery on it) needs a shard-key filter on every \
                         reference"
                    ),
                    PIN_HINT,
                ))
            }
            _ => {
                let target = if a.write {
                    Target::ScatterWrite
                } else {
                    Target::Scatter
                };
                return Ok(StatementPlan {
                    target,
                    why: ShardWhy::NoKey {
                        table: table.to_owned(),
                    },
                });
            }
        };
    let mut set: ShardSet = 0;
    let mut first: Option<(KeyValue, u32)> = None;
    let mut shard_of_value = |src: &KeySource| -> Result<Option<usize>, Refusal> {
        let value = resolve(src).map_err(|why| {
            refuse(
                format!("shardgate: cannot read the shard key {column} of {table}: {why}"),
                PIN_HINT,
            )
        })?;
        let Some(value) = value else {
            return Ok(None);
        };
        let logical = map.logical_of(&value);
        let shard = map.shard_of_logical(logical);
        if first.is_none() {
            first = Some((value, logical));
        }
        Ok(Some(shard))
    };
    let mut row_shards = Vec::new();
    match &a.insert {
        Some(ins) => {
            for (_, src) in &ins.rows {
                let Some(s) = shard_of_value(src)? else {
                    return Err(refuse(
                        format!(
                            "shardgate: a row inserted into {table} has a NULL shard key {column}"
                        ),
                        "Every row of a sharded table needs a non-NULL shard key.",
                    ));
                };
                row_shards.push(s);
                set |= bit(s);
            }
        }
        None => {
            for src in values {
                // `key = NULL` matches no row anywhere; any one shard answers it exactly.
                set |= shard_of_value(src)?.map_or(0, bit);
            }
        }
    }
    if set == 0 {
        set = 1;
    }
    let (value, logical) = first.unwrap_or((KeyValue::Text("NULL".to_owned()), 0));
    let why = ShardWhy::Key {
        column: column.clone(),
        value,
        logical,
        count: values.len(),
    };
    if a.key_assigned {
        check_key_move(a, map, set, table, &column, resolve)?;
    }
    let target = if set.count_ones() > 1 && !row_shards.is_empty() {
        let mut per: Vec<(usize, Vec<usize>)> = Vec::new();
        for s in 0..shard_count.min(MAX_SHARDS) {
            let rows: Vec<usize> = (0..row_shards.len())
                .filter(|&i| row_shards[i] == s)
                .collect();
            if !rows.is_empty() {
                per.push((s, rows));
            }
        }
        Target::Split(per)
    } else {
        Target::Shards(set)
    };
    Ok(StatementPlan { target, why })
}

/// An `UPDATE` assigning the key column is allowed only to a value on the row's own shard.
fn check_key_move(
    a: &ShardAnalysis,
    map: &ShardMap,
    set: ShardSet,
    table: &str,
    column: &str,
    resolve: &mut Resolve<'_>,
) -> Result<(), Refusal> {
    const MOVE_HINT: &str = "Moving a row to another shard is a DELETE on its shard and an \
                             INSERT on the new one; run them as two statements.";
    let new = match &a.key_update {
        Some(src) => resolve(src).ok().flatten(),
        None => None,
    };
    let Some(new) = new else {
        return Err(refuse(
            format!(
                "shardgate: an UPDATE of {table} assigns its shard key {column} a value shardgate \
                 cannot place, which could move rows to another shard"
            ),
            MOVE_HINT,
        ));
    };
    let to = map.shard_of(&new);
    if set != bit(to) {
        return Err(refuse(
            format!(
                "shardgate: an UPDATE of {table} changes its shard key {column} to a value on \
                 another shard"
            ),
            MOVE_HINT,
        ));
    }
    Ok(())
}

fn unsharded(a: &ShardAnalysis) -> StatementPlan {
    let (target, why) = if a.ddl {
        (Target::All, ShardWhy::Ddl)
    } else if a.write && !a.reference.is_empty() && a.other.is_empty() {
        (Target::All, ShardWhy::ReferenceWrite)
    } else if a.write && !a.other.is_empty() {
        (Target::All, ShardWhy::UnshardedWrite)
    } else if !a.other.is_empty() {
        (Target::First, ShardWhy::UnshardedRead)
    } else if !a.reference.is_empty() && !a.write {
        (Target::AnyReference, ShardWhy::ReferenceRead)
    } else {
        (Target::Any, ShardWhy::NoTables)
    };
    StatementPlan { target, why }
}

/// The set holding only shard `i`.
pub fn bit(i: usize) -> ShardSet {
    if i < MAX_SHARDS {
        1 << i
    } else {
        0
    }
}

/// The shard indices in a set, ascending.
pub fn shards_in(set: ShardSet) -> impl Iterator<Item = usize> {
    (0..MAX_SHARDS).filter(move |&i| set & (1 << i) != 0)
}

#[cfg(test)]
#[path = "shard_plan_tests.rs"]
mod tests;
