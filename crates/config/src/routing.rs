//! The `routing` section: read/write splitting, replica lag bounds, read-your-writes.

use serde_yaml_ng::Value;

use crate::error::Problems;
use crate::tree::{self, Table};

/// How statements are spread over a shard's primary and replicas.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoutingConfig {
    /// false: everything goes to the primary.
    pub read_write_split: bool,
    /// A replica is excluded when primary WAL LSN - replica replay LSN exceeds this.
    pub max_replica_lag_bytes: u64,
    /// ... or when its replay time lag exceeds this.
    pub max_replica_lag_ms: u64,
    pub lag_check_interval_ms: u64,
    pub when_no_replica: WhenNoReplica,
    pub read_your_writes: bool,
    /// Functions that make a SELECT a write, besides the built-in ones.
    pub write_functions: Vec<String>,
    pub load_balance: LoadBalance,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            read_write_split: true,
            max_replica_lag_bytes: 16 * 1024 * 1024,
            max_replica_lag_ms: 1000,
            lag_check_interval_ms: 200,
            when_no_replica: WhenNoReplica::Primary,
            read_your_writes: true,
            write_functions: Vec::new(),
            load_balance: LoadBalance::LeastBusy,
        }
    }
}

/// What a read does when no replica of its shard is routable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenNoReplica {
    /// Read from the primary.
    Primary,
    /// Fail with SQLSTATE 57P03, naming each replica and why it is excluded.
    Error,
}

/// How a read picks among routable replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalance {
    LeastBusy,
    RoundRobin,
    Random,
}

const WHEN_NO_REPLICA: &[(&str, WhenNoReplica)] = &[
    ("primary", WhenNoReplica::Primary),
    ("error", WhenNoReplica::Error),
];

const LOAD_BALANCE: &[(&str, LoadBalance)] = &[
    ("least_busy", LoadBalance::LeastBusy),
    ("round_robin", LoadBalance::RoundRobin),
    ("random", LoadBalance::Random),
];

/// Reads the `routing` mapping; every key is optional.
pub(crate) fn read(value: &Value, path: &str, problems: &mut Problems) -> Option<RoutingConfig> {
    let d = RoutingConfig::default();
    let mut table = Table::open(value, path, problems)?;
    let read_write_split = table.or_default(
        "read_write_split",
        d.read_write_split,
        problems,
        tree::boolean,
    );
    let positive =
        |v: &Value, p: &str, problems: &mut Problems| tree::integer(v, p, 1, u64::MAX, problems);
    let max_replica_lag_bytes = table.or_default(
        "max_replica_lag_bytes",
        d.max_replica_lag_bytes,
        problems,
        positive,
    );
    let max_replica_lag_ms = table.or_default(
        "max_replica_lag_ms",
        d.max_replica_lag_ms,
        problems,
        positive,
    );
    let lag_check_interval_ms = table.or_default(
        "lag_check_interval_ms",
        d.lag_check_interval_ms,
        problems,
        |v, p, problems| tree::integer(v, p, 10, 3_600_000, problems),
    );
    let when_no_replica = table.or_default(
        "when_no_replica",
        d.when_no_replica,
        problems,
        |v, p, pr| tree::choice(v, p, "when_no_replica", WHEN_NO_REPLICA, pr),
    );
    let read_your_writes = table.or_default(
        "read_your_writes",
        d.read_your_writes,
        problems,
        tree::boolean,
    );
    let write_functions = table.or_default("write_functions", Vec::new(), problems, |v, p, pr| {
        tree::list(v, p, pr, tree::non_empty_string)
    });
    let load_balance = table.or_default("load_balance", d.load_balance, problems, |v, p, pr| {
        tree::choice(v, p, "load_balance", LOAD_BALANCE, pr)
    });
    table.finish(problems);
    Some(RoutingConfig {
        read_write_split: read_write_split?,
        max_replica_lag_bytes: max_replica_lag_bytes?,
        max_replica_lag_ms: max_replica_lag_ms?,
        lag_check_interval_ms: lag_check_interval_ms?,
        when_no_replica: when_no_replica?,
        read_your_writes: read_your_writes?,
        write_functions: write_functions?,
        load_balance: load_balance?,
    })
}
