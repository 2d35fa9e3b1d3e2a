//! The sharding part of a config snapshot: the shard map and sharded tables, and what is
//! learned and cached while it serves (statement analyses by text, key column types, which
//! functions are aggregates, whether the database collates as C).

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;
use shardgate_config::Config;
use shardgate_router::ShardMap;
use shardgate_sql::{ShardAnalysis, ShardingSpec};
use xxhash_rust::xxh3::xxh3_128;

/// Distinct statement texts whose analysis is kept.
const ANALYSIS_CACHE: usize = 4096;

/// The sharding part of a config snapshot.
pub(crate) struct ShardingRuntime {
    pub(crate) map: ShardMap,
    pub(crate) spec: ShardingSpec,
    pub(crate) names: Vec<Arc<str>>,
    classifier: Arc<shardgate_sql::Classifier>,
    /// Sharded tables as `(display name, key column)`, for type lookups.
    tables: Vec<(String, String)>,
    analyses: Mutex<LruCache<u128, Arc<ShardAnalysis>>>,
    /// Analyses by literal-blind shape (see `shardgate_sql::AnalysisCache`).
    shapes: shardgate_sql::AnalysisCache,
    /// The key column's type oid per sharded table, learned from the first shard.
    key_types: Mutex<HashMap<String, u32>>,
    /// Function names seen in scattered queries: whether each is an aggregate (a
    /// user-defined aggregate would otherwise be merged as a plain value).
    pub(crate) aggregates: Mutex<HashMap<String, bool>>,
    /// The database's collation sorts like C (text ORDER BY and min/max merge exactly).
    pub(crate) collation_c: Mutex<Option<bool>>,
    /// Names of the table and view columns and domains (any schema) whose own collation does
    /// not order text bytewise: the merge cannot compare text they give their collation to.
    pub(crate) collated_names: Mutex<Option<HashSet<String>>>,
    /// One catalog lookup at a time: each opens its own connection to the first shard, and a
    /// burst of cold sessions must not open one each.
    pub(crate) catalog_lookup: tokio::sync::Mutex<()>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ShardingRuntime {
    pub(crate) fn build(
        config: &Config,
        classifier: Arc<shardgate_sql::Classifier>,
    ) -> Option<ShardingRuntime> {
        let s = config.sharding.as_ref()?;
        let index = |name: &str| {
            config
                .shards
                .iter()
                .position(|x| x.name == name)
                .unwrap_or(0)
        };
        let ranges: Vec<(u32, u32, usize)> =
            s.map.iter().map(|(a, b, n)| (*a, *b, index(n))).collect();
        let tables: Vec<(Option<String>, String, String)> = s
            .tables
            .iter()
            .map(|t| (t.table.schema.clone(), t.table.name.clone(), t.key.clone()))
            .collect();
        let reference: Vec<(Option<String>, String)> = s
            .reference_tables
            .iter()
            .map(|t| (t.schema.clone(), t.name.clone()))
            .collect();
        let display = |schema: &Option<String>, name: &str| match schema {
            Some(s) => format!("{s}.{name}"),
            None => name.to_owned(),
        };
        Some(ShardingRuntime {
            map: ShardMap::new(s.logical_shards, &ranges),
            spec: ShardingSpec::new(&tables, &reference),
            names: config
                .shards
                .iter()
                .map(|x| Arc::from(x.name.as_str()))
                .collect(),
            tables: tables
                .iter()
                .map(|(s, n, k)| (display(s, n), k.clone()))
                .collect(),
            shapes: shardgate_sql::AnalysisCache::new(ANALYSIS_CACHE),
            analyses: Mutex::new(LruCache::new(
                NonZeroUsize::new(ANALYSIS_CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
            classifier,
            key_types: Mutex::new(HashMap::new()),
            aggregates: Mutex::new(HashMap::new()),
            collation_c: Mutex::new(None),
            collated_names: Mutex::new(None),
            catalog_lookup: tokio::sync::Mutex::new(()),
        })
    }

    /// The analysis of one statement, cached by its exact text.
    pub(super) fn analyze(&self, stmt: &[u8]) -> Arc<ShardAnalysis> {
        let key = xxh3_128(stmt);
        if let Some(a) = lock(&self.analyses).get(&key) {
            return a.clone();
        }
        // The classifier's verdict is cached by the literal-blind shape: reusing it saves the
        // analysis one of its two parses when only literals changed.
        let c = self.classifier.classify(stmt);
        let write = (c.statements == 1).then_some(c.write.is_some());
        // A statement of a known shape (only literals differ) reuses that shape's analysis
        // with its own literal keys, without a parse.
        let a = Arc::new(self.shapes.analyze(stmt, &self.spec, write));
        lock(&self.analyses).put(key, a.clone());
        a
    }

    pub(super) fn key_type(&self, table: &str) -> Option<u32> {
        lock(&self.key_types).get(table).copied()
    }

    /// Forgets what was learned from the catalog: a schema change may have made a function an
    /// aggregate or changed a key column's type.
    pub(crate) fn forget_catalog(&self) {
        lock(&self.key_types).clear();
        lock(&self.aggregates).clear();
        *lock(&self.collated_names) = None;
    }

    pub(crate) fn learn_key_type(&self, table: &str, oid: u32) {
        lock(&self.key_types).insert(table.to_owned(), oid);
    }

    /// The SQL that reads a sharded table's key column type (one row, one column: the oid).
    pub(crate) fn key_type_sql(&self, table: &str) -> Option<String> {
        let (_, column) = self.tables.iter().find(|(t, _)| t == table)?;
        let quote = |s: &str| s.replace('\'', "''");
        let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let qualified: Vec<String> = table.split('.').map(ident).collect();
        Some(format!(
            "SELECT atttypid FROM pg_attribute WHERE attrelid = to_regclass('{}') AND attname = '{}'",
            quote(&qualified.join(".")),
            quote(column)
        ))
    }
}
