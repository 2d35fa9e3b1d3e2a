//! shardgate's configuration: the `proxy.yaml` schema, parsed and validated into typed values.
//!
//! Owns turning text into a [`Config`] and reporting every problem with its key path. It never
//! opens sockets or certificate files and never reads environment variables: callers pass text
//! or a path in and get a value or a list of [`Problem`]s out.
//!
//! Parsing goes through an untyped YAML tree rather than `#[derive(Deserialize)]` because serde
//! stops at the first error and a user fixing a file wants them all. Each section lives in its
//! own module with a `read(value, path, problems)` function; adding a section is one new module,
//! one field on [`Config`] and one line in `read_root`.

mod addr;
mod error;
mod pool;
mod reload;
mod routing;
mod sharding;
mod shards;
mod tls;
mod tree;
mod users;

#[cfg(test)]
mod tests;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;

use serde_yaml_ng::Value;

pub use crate::addr::{NodeAddr, ParseNodeAddrError};
pub use crate::error::{ConfigError, Problem};
pub use crate::pool::{PoolConfig, PoolMode};
pub use crate::reload::ReloadConfig;
pub use crate::routing::{LoadBalance, RoutingConfig, WhenNoReplica};
pub use crate::sharding::{ShardedTable, ShardingConfig, TableName};
pub use crate::shards::ShardConfig;
pub use crate::tls::TlsConfig;
pub use crate::users::{AuthMethod, UserConfig};

use crate::error::Problems;
use crate::tree::Table;

const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 6432));
const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9930));

/// More worker threads than any machine shardgate runs on has cores.
const MAX_WORKERS: u64 = 1024;
/// A millisecond: polling longer than that costs more CPU than the sleep it saves.
const MAX_BUSY_POLL_US: u64 = 1000;

/// A validated shardgate configuration. Only [`Config::from_yaml_str`] and [`Config::load`]
/// build one from text, so holding a `Config` means the file passed every check.
///
/// `Serialize` writes the same schema the file uses; call [`Config::redacted`] first before
/// showing it to anyone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Runtime worker threads; `None` picks [`Config::default_workers`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    /// How long, at most, a worker thread polls for work before it sleeps, in microseconds;
    /// `None` picks [`Config::DEFAULT_BUSY_POLL_US`], 0 turns polling off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy_poll_us: Option<u32>,
    pub database: String,
    pub users: Vec<UserConfig>,
    pub pool: PoolConfig,
    pub shards: Vec<ShardConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sharding: Option<ShardingConfig>,
    pub routing: RoutingConfig,
    pub reload: ReloadConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

impl Config {
    /// Parses and validates YAML (or JSON, which is YAML) text.
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        let mut problems = Problems::default();
        let config = parse_document(text, &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid {
                problems: problems.into_vec(),
            }),
        }
    }

    /// Reads `path` and parses it with [`Config::from_yaml_str`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_yaml_str(&text)
    }

    /// The worker threads the proxy runs: `workers` if set, else one per core.
    pub fn worker_threads(&self) -> u32 {
        self.workers.unwrap_or_else(Config::default_workers)
    }

    /// One per available core. One thread costs less CPU per query (no cross-thread wake-ups),
    /// but measured lower throughput even on 2 cores shared with PostgreSQL: while the thread
    /// is preempted by a backend it woke, every session waits.
    pub fn default_workers() -> u32 {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        u32::try_from(cores).unwrap_or(u32::MAX).max(1)
    }

    /// The default `busy_poll_us`: long enough to cover a short query's round trip to a
    /// nearby PostgreSQL (pgbench's `SELECT` by primary key, which took 80-150 us end to end
    /// on the development VM), so a worker waiting for that reply does not sleep and then
    /// wait to be woken. 50 us measured no better than not polling there.
    pub const DEFAULT_BUSY_POLL_US: u32 = 100;

    /// The longest a worker thread polls for work before it sleeps (zero: it never polls).
    pub fn busy_poll(&self) -> std::time::Duration {
        let us = self.busy_poll_us.unwrap_or(Config::DEFAULT_BUSY_POLL_US);
        std::time::Duration::from_micros(u64::from(us))
    }

    /// The user called `name`, if configured.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|user| user.name == name)
    }

    /// A copy with every password replaced by `"<redacted>"`, safe to log or serve.
    pub fn redacted(&self) -> Config {
        let mut copy = self.clone();
        for user in &mut copy.users {
            user.password = "<redacted>".to_owned();
        }
        copy
    }
}

/// Text to config; `None` or a non-empty `problems` means invalid.
fn parse_document(text: &str, problems: &mut Problems) -> Option<Config> {
    let mut root: Value = match serde_yaml_ng::from_str(text) {
        Ok(root) => root,
        Err(err) => {
            problems.push("", format!("invalid YAML: {err}"));
            return None;
        }
    };
    if root.is_null() {
        problems.push(
            "",
            "config is empty (expected a mapping with at least database, users and shards)",
        );
        return None;
    }
    // `<<: *anchor` merge keys let a file share one replica list or user block; resolve them
    // first so they are not reported as unknown keys.
    if let Err(err) = root.apply_merge() {
        problems.push("", format!("invalid YAML merge key: {err}"));
        return None;
    }
    let config = read_root(&root, problems)?;
    check_addresses(&config, problems);
    check_sharding(&config, problems);
    Some(config)
}

/// Reads the top-level mapping. Key order here is the order of the "expected one of" list.
fn read_root(root: &Value, problems: &mut Problems) -> Option<Config> {
    let mut table = Table::open(root, "", problems)?;
    let listen = table.or_default("listen", DEFAULT_LISTEN, problems, addr::read_listen);
    let admin_listen = table.or_default(
        "admin_listen",
        DEFAULT_ADMIN_LISTEN,
        problems,
        addr::read_listen,
    );
    let workers = table.optional("workers", problems, |v, p, problems| {
        let n = tree::integer(v, p, 1, MAX_WORKERS, problems)?;
        u32::try_from(n).ok()
    });
    let busy_poll_us = table.optional("busy_poll_us", problems, |v, p, problems| {
        let n = tree::integer(v, p, 0, MAX_BUSY_POLL_US, problems)?;
        u32::try_from(n).ok()
    });
    let database = table.required("database", problems, tree::non_empty_string);
    let users = table.required("users", problems, users::read);
    let pool = table.or_default("pool", PoolConfig::default(), problems, pool::read);
    let shards = table.required("shards", problems, shards::read);
    let sharding = sharding::read_section(&mut table, shards.as_deref(), problems);
    let routing = table.or_default("routing", RoutingConfig::default(), problems, routing::read);
    let reload = table.or_default("reload", ReloadConfig::default(), problems, reload::read);
    let tls = table.optional("tls", problems, tls::read);
    table.finish(problems);
    Some(Config {
        listen: listen?,
        admin_listen: admin_listen?,
        workers: workers?,
        busy_poll_us: busy_poll_us?,
        database: database?,
        users: users?,
        pool: pool?,
        shards: shards?,
        sharding: sharding?,
        routing: routing?,
        reload: reload?,
        tls: tls?,
    })
}

/// Sharding limits that span sections: session pooling pins a client to one server, so it
/// cannot follow statements across shards; a shard set is a 64-bit mask.
fn check_sharding(config: &Config, problems: &mut Problems) {
    if config.shards.len() > 1 && config.pool.mode == PoolMode::Session {
        problems.push(
            "pool.mode",
            "session pooling cannot be used with more than one shard (a session holds one \
             server connection, and its statements may need other shards); use transaction",
        );
    }
    if config.shards.len() > 64 {
        problems.push("shards", "at most 64 shards are supported");
    }
}

/// Checks that span sections: the two listeners must differ, and no node may be shardgate
/// itself (a proxy that connects to its own port recurses until it runs out of sockets).
fn check_addresses(config: &Config, problems: &mut Problems) {
    if config.listen.port() != 0 && config.admin_listen == config.listen {
        problems.push("admin_listen", "must differ from listen");
    }
    for (path, node) in shards::nodes_with_paths(&config.shards) {
        if addr::reaches_listener(node, config.listen) {
            problems.push(
                &path,
                format!("{node} is shardgate's own listen address, not a PostgreSQL node"),
            );
        }
    }
}
