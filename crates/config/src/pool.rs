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
    /// Multiplexing (0: off): once a worker thread has this many server connections to a node
    /// busy with lone reads, a further lone read from another client is sent down one of them
    /// behind the read already there, instead of taking a connection of its own (see
    /// `docs/design/multiplexing.md`). Transaction mode only.
    pub multiplex: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            mode: PoolMode::Transaction,
            size: 20,
            checkout_timeout_ms: 5000,
            max_client_connections: 10_000,
            multiplex: 0,
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
    let multiplex = table.or_default(
        "multiplex",
        defaults.multiplex,
        problems,
        |v, p, problems| {
            let n = tree::integer(v, p, 0, u64::from(MAX_MULTIPLEX), problems)?;
            u32::try_from(n).ok()
        },
    );
    table.finish(problems);
    if let (Some(PoolMode::Session), Some(1..)) = (mode, multiplex) {
        problems.push(
            &format!("{path}.multiplex"),
            "multiplexing shares server connections between transactions: it needs pool.mode \
             transaction (set multiplex to 0, or drop it, for session pooling)",
        );
        return None;
    }
    Some(PoolConfig {
        mode: mode?,
        size: size?,
        checkout_timeout_ms: checkout_timeout_ms?,
        max_client_connections: max_client_connections?,
        multiplex: multiplex?,
    })
}

/// The most connections per worker and node `multiplex` may name.
const MAX_MULTIPLEX: u32 = 1024;

/// A count that must be at least 1 and fit in a `u32`.
fn read_u32(value: &Value, path: &str, problems: &mut Problems) -> Option<u32> {
    let n = tree::integer(value, path, 1, u64::from(u32::MAX), problems)?;
    u32::try_from(n).ok()
}
