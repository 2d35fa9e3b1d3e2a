//! The `sharding` section: how many logical shards the key space has, which shard holds each,
//! and which tables are sharded (by which column) or copied to every shard.
//!
//! The hash from a key to a logical shard belongs to the router (`shard_map`); this module only
//! checks that the map is total and names real shards, so the router can trust it blindly.

mod ident;
mod map;

use std::collections::HashMap;
use std::path::PathBuf;

use serde::ser::{SerializeStruct, Serializer};
use serde_yaml_ng::Value;

pub use self::ident::TableName;

use crate::error::Problems;
use crate::shards::ShardConfig;
use crate::tree::{self, Table};

/// Enough for fine-grained moves on any cluster anyone runs, small enough that a map is cheap.
const MAX_LOGICAL_SHARDS: u64 = 1_048_576;

/// Sharding settings. Holding one means the map covers every logical shard exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardingConfig {
    /// Fixed for the life of the data: changing it re-homes nearly every row.
    pub logical_shards: u32,
    /// Inclusive `(first, last, shard name)` ranges, sorted, adjacent ranges of one shard
    /// merged. Filled from the default rule when the file has no `map`.
    pub map: Vec<(u32, u32, String)>,
    pub tables: Vec<ShardedTable>,
    /// Tables with a full copy on every shard.
    pub reference_tables: Vec<TableName>,
    pub two_phase_commit: bool,
    /// The two-phase-commit decision log; present whenever `two_phase_commit` is on.
    pub two_phase_log: Option<PathBuf>,
}

/// A sharded table and its shard-key column (folded like the table name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardedTable {
    pub table: TableName,
    pub key: String,
}

/// Reads the optional `sharding` key of `root`. Without it, more than one shard is an error:
/// shardgate would not know where any row lives.
pub(crate) fn read_section(
    root: &mut Table<'_>,
    shards: Option<&[ShardConfig]>,
    problems: &mut Problems,
) -> Option<Option<ShardingConfig>> {
    let sharding = root.optional("sharding", problems, |v, p, pr| read(v, p, shards, pr));
    if let (Some(None), Some(shards @ [_, _, ..])) = (&sharding, shards) {
        problems.push(
            "sharding",
            format!(
                "{} shards are configured but there is no sharding section (add one to say \
                 which tables are sharded by which column; see docs/sharding.md)",
                shards.len()
            ),
        );
    }
    sharding
}

fn read(
    value: &Value,
    path: &str,
    shards: Option<&[ShardConfig]>,
    problems: &mut Problems,
) -> Option<ShardingConfig> {
    let mut table = Table::open(value, path, problems)?;
    let logical_shards = table.required("logical_shards", problems, |v, p, pr| {
        tree::integer(v, p, 1, MAX_LOGICAL_SHARDS, pr).and_then(|n| u32::try_from(n).ok())
    });
    let map = table.optional("map", problems, |v, p, pr| {
        map::read(v, p, logical_shards, shards, pr)
    });
    let mut seen = SeenTables::default();
    let tables = table.or_default("tables", Vec::new(), problems, |v, p, pr| {
        read_tables(v, p, &mut seen, pr)
    });
    let reference_tables =
        table.or_default("reference_tables", Vec::new(), problems, |v, p, pr| {
            tree::list(v, p, pr, |item, item_path, pr| {
                let name = read_table_name(item, item_path, pr)?;
                seen.insert(name.clone(), false, item_path, pr)
                    .then_some(name)
            })
        });
    let two_phase_commit = table.or_default("two_phase_commit", false, problems, tree::boolean);
    let two_phase_log = table.optional("two_phase_log", problems, |v, p, pr| {
        tree::non_empty_string(v, p, pr).map(PathBuf::from)
    });
    table.finish(problems);
    if two_phase_commit == Some(true) && two_phase_log == Some(None) {
        problems.push(
            &tree::key_path(path, "two_phase_log"),
            "required when two_phase_commit is true (where the coordinator records its \
             commit decisions so it can finish them after a crash)",
        );
        return None;
    }
    let logical_shards = logical_shards?;
    let map = match map? {
        Some(map) => map,
        None => map::default_map(logical_shards, shards?),
    };
    Some(ShardingConfig {
        logical_shards,
        map,
        tables: tables?,
        reference_tables: reference_tables?,
        two_phase_commit: two_phase_commit?,
        two_phase_log: two_phase_log?,
    })
}

/// The path of a mapping key that is data, not schema: quoted unless it is a plain word (range
/// keys always), so `sharding.map."0-511"` and `sharding.tables."app.orders"` stay readable.
fn data_key_path(parent: &str, key: &str, range_keys: bool) -> String {
    let word = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if word && !range_keys {
        tree::key_path(parent, key)
    } else {
        format!("{parent}.{key:?}")
    }
}

/// Every `(key text, key path, value)` of a mapping whose keys are data. Non-string keys are
/// reported, except for `range_keys`, which may be a bare number.
fn entries<'a>(
    value: &'a Value,
    path: &str,
    range_keys: bool,
    problems: &mut Problems,
) -> Option<Vec<(String, String, &'a Value)>> {
    let Value::Mapping(map) = value else {
        problems.push(
            path,
            format!("expected a mapping, got {}", tree::describe(value)),
        );
        return None;
    };
    let mut out = Some(Vec::with_capacity(map.len()));
    for (key, item) in map {
        let text = match key {
            Value::String(s) => s.clone(),
            Value::Number(n) if range_keys && n.is_u64() => n.to_string(),
            other => {
                let what = tree::describe(other);
                problems.push(path, format!("keys must be strings, got {what}"));
                out = None;
                continue;
            }
        };
        let item_path = data_key_path(path, &text, range_keys);
        if let Some(out) = out.as_mut() {
            out.push((text, item_path, item));
        }
    }
    out
}

fn read_table_name(value: &Value, path: &str, problems: &mut Problems) -> Option<TableName> {
    let text = tree::non_empty_string(value, path, problems)?;
    ident::parse_table_name(&text)
        .map_err(|message| problems.push(path, message))
        .ok()
}

fn read_tables(
    value: &Value,
    path: &str,
    seen: &mut SeenTables,
    problems: &mut Problems,
) -> Option<Vec<ShardedTable>> {
    let mut out = Some(Vec::new());
    for (key, key_path, item) in entries(value, path, false, problems)? {
        let table = ident::parse_table_name(&key)
            .map_err(|message| problems.push(&key_path, message))
            .ok()
            .filter(|table| seen.insert(table.clone(), true, &key_path, problems));
        let column = tree::non_empty_string(item, &key_path, problems).and_then(|text| {
            ident::parse_column(&text)
                .map_err(|message| problems.push(&key_path, message))
                .ok()
        });
        match (out.as_mut(), table, column) {
            (Some(out), Some(table), Some(key)) => out.push(ShardedTable { table, key }),
            _ => out = None,
        }
    }
    out
}

/// Where each folded table name was first listed, and whether as sharded or reference.
#[derive(Debug, Default)]
struct SeenTables(HashMap<TableName, (String, bool)>);

impl SeenTables {
    /// Records `table`; `false` (with a problem) if it was already listed.
    fn insert(
        &mut self,
        table: TableName,
        sharded: bool,
        path: &str,
        problems: &mut Problems,
    ) -> bool {
        match self.0.get(&table) {
            Some((first, true)) if !sharded => problems.push(
                path,
                format!("table \"{table}\" is sharded (at {first}), so it cannot also be a reference table"),
            ),
            Some((first, _)) => {
                problems.push(path, format!("duplicate table \"{table}\" (also at {first})"))
            }
            None => {
                self.0.insert(table, (path.to_owned(), sharded));
                return true;
            }
        }
        false
    }
}

/// Writes the file's own schema (ranges and tables as mappings), so a serialised config
/// reads back as the same config.
impl serde::Serialize for ShardingConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("ShardingConfig", 6)?;
        out.serialize_field("logical_shards", &self.logical_shards)?;
        out.serialize_field("map", &map::RangesForm(&self.map))?;
        out.serialize_field("tables", &TablesForm(&self.tables))?;
        out.serialize_field("reference_tables", &self.reference_tables)?;
        out.serialize_field("two_phase_commit", &self.two_phase_commit)?;
        match &self.two_phase_log {
            Some(log) => out.serialize_field("two_phase_log", log)?,
            None => out.skip_field("two_phase_log")?,
        }
        out.end()
    }
}

/// `tables` as the file writes it: `table: column`, both quoted where folding needs it.
#[derive(Debug)]
struct TablesForm<'a>(&'a [ShardedTable]);

impl serde::Serialize for TablesForm<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.0
                .iter()
                .map(|t| (t.table.to_string(), ident::quote_ident(&t.key))),
        )
    }
}
