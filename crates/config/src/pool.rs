//! The `pool` section: how many server connections each node gets and how clients share them.

use serde_yaml_ng::Value;

use crate::error::Problems;
use crate::tree::{self, Table};

/// Connection pool settings, applied to every node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolConfig {
    pub mode: PoolMode,
    pub size: u32,
    pub checkout_timeout_ms: u64,
    pub max_client_connections: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            mode: PoolMode::Transaction,
            size: 20,
            checkout_timeout_ms: 5000,
            max_client_connections: 10_000,
        }
    }
}

/// When a server connection goes back to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// After each transaction.
    Transaction,
    /// When the client disconnects.
    Session,
}

const MODES: &[(&str, PoolMode)] = &[
    ("transaction", PoolMode::Transaction),
    ("session", PoolMode::Session),
];

/// Reads the `pool` mapping; every key is optional.
pub(crate) fn read(value: &Value, path: &str, problems: &mut Problems) -> Option<PoolConfig> {
    let defaults = PoolConfig::default();
    let mut table = Table::open(value, path, problems)?;
    let mode = table.or_default("mode", defaults.mode, problems, |v, p, problems| {
        tree::choice(v, p, "pool mode", MODES, problems)
    });
    let size = table.or_default("size", defaults.size, problems, read_u32);
    let checkout_timeout_ms = table.or_default(
        "checkout_timeout_ms",
        defaults.checkout_timeout_ms,
        problems,
        |v, p, problems| tree::integer(v, p, 1, u64::MAX, problems),
    );
    let max_client_connections = table.or_default(
        "max_client_connections",
        defaults.max_client_connections,
        problems,
        read_u32,
    );
    table.finish(problems);
    Some(PoolConfig {
        mode: mode?,
        size: size?,
        checkout_timeout_ms: checkout_timeout_ms?,
        max_client_connections: max_client_connections?,
    })
}

/// A count that must be at least 1 and fit in a `u32`.
fn read_u32(value: &Value, path: &str, problems: &mut Problems) -> Option<u32> {
    let n = tree::integer(value, path, 1, u64::from(u32::MAX), problems)?;
    u32::try_from(n).ok()
}
