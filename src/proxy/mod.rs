//! The client-facing proxy: accepting connections, startup and authentication, and
//! the per-client session that relays traffic through pooled server connections.

mod cancel;
mod errors;
mod flight;
mod listener;
mod params;
mod session;
mod sqlstate;
mod startup;
mod statements;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use shardgate_auth::ScramSecret;
use shardgate_config::{Config, UserConfig};
use shardgate_pool::{Credentials, NodePool};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

pub(crate) use cancel::CancelRegistry;
pub(crate) use listener::serve;

use crate::metrics::Metrics;

/// How a user authenticates to shardgate, derived once per config version.
pub(crate) struct UserEntry {
    pub(crate) config: UserConfig,
    pub(crate) scram: ScramSecret,
}

/// One config version and everything built from it. Requests `load()` it once and use
/// that snapshot to the end.
pub(crate) struct Snapshot {
    /// Only increases; reported by the admin API once reload lands.
    #[allow(dead_code)]
    pub(crate) version: u64,
    pub(crate) config: Config,
    pub(crate) users: HashMap<String, UserEntry>,
    /// Pools of the first shard's primary, per user (until routing lands).
    pub(crate) primary_pools: HashMap<String, Arc<NodePool>>,
}

impl Snapshot {
    pub(crate) fn build(config: Config, version: u64) -> Snapshot {
        let mut users = HashMap::new();
        let mut primary_pools = HashMap::new();
        for u in &config.users {
            users.insert(
                u.name.clone(),
                UserEntry {
                    config: u.clone(),
                    scram: ScramSecret::generate(&u.password),
                },
            );
            if let Some(shard) = config.shards.first() {
                let creds = Credentials {
                    user: u.name.clone(),
                    password: u.password.clone(),
                    database: config.database.clone(),
                };
                primary_pools.insert(
                    u.name.clone(),
                    NodePool::new(shard.primary.clone(), creds, config.pool.size),
                );
            }
        }
        Snapshot {
            version,
            config,
            users,
            primary_pools,
        }
    }

    pub(crate) fn checkout_timeout(&self) -> Duration {
        Duration::from_millis(self.config.pool.checkout_timeout_ms)
    }
}

/// State every session shares. Passed in, never global.
pub(crate) struct Shared {
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) cancel: Arc<CancelRegistry>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) client_slots: Arc<Semaphore>,
    pub(crate) tls: Option<TlsAcceptor>,
    /// Per-process key for mock SCRAM secrets of unknown users.
    pub(crate) mock_key: [u8; 32],
}
