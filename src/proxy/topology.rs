//! The config snapshot and the runtime topology built from it: shards, their nodes,
//! each node's pools (one per user) and, for replicas, the health the lag monitor
//! keeps. A snapshot is immutable; a reload builds a new one, reusing unchanged nodes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shardgate_auth::ScramSecret;
use shardgate_config::{Config, NodeAddr, UserConfig};
use shardgate_pool::lag::ReplicaHealth;
use shardgate_pool::{Credentials, NodePool};
use shardgate_router::{Policy, ReplicaView};
use shardgate_sql::Classifier;

use crate::metrics::{Metrics, RoutedCounters};

/// Classification cache size (distinct SQL texts).
const CLASSIFIER_CACHE: usize = 10_000;

/// How a user authenticates to shardgate, derived once per config version.
pub(crate) struct UserEntry {
    pub(crate) config: UserConfig,
    pub(crate) scram: ScramSecret,
}

/// One PostgreSQL server: its pools and, for a replica, its health.
pub(crate) struct NodeRuntime {
    pub(crate) addr: Arc<NodeAddr>,
    pub(crate) pools: HashMap<String, Arc<NodePool>>,
    pub(crate) health: Option<Arc<ReplicaHealth>>,
}

impl NodeRuntime {
    fn new(addr: &NodeAddr, config: &Config, replica: bool) -> Arc<NodeRuntime> {
        let pools = config
            .users
            .iter()
            .map(|u| {
                let creds = Credentials {
                    user: u.name.clone(),
                    password: u.password.clone(),
                    database: config.database.clone(),
                };
                (
                    u.name.clone(),
                    NodePool::new(addr.clone(), creds, config.pool.size),
                )
            })
            .collect();
        Arc::new(NodeRuntime {
            addr: Arc::new(addr.clone()),
            pools,
            health: replica.then(|| ReplicaHealth::new(addr.clone())),
        })
    }

    pub(crate) fn pool(&self, user: &str) -> Option<&Arc<NodePool>> {
        self.pools.get(user)
    }
}

/// One shard: a primary and its replicas.
pub(crate) struct ShardRuntime {
    pub(crate) name: Arc<str>,
    pub(crate) primary: Arc<NodeRuntime>,
    pub(crate) replicas: Vec<Arc<NodeRuntime>>,
}

impl ShardRuntime {
    /// What routing needs to know about the replicas right now, for `user`.
    /// At most 16 replicas are considered per shard (a fixed array keeps this off the heap).
    pub(crate) fn replica_views(&self, user: &str, out: &mut [ReplicaView; 16]) -> usize {
        let n = self.replicas.len().min(out.len());
        for (slot, node) in out.iter_mut().zip(&self.replicas) {
            let (routable, replay_lsn) = match &node.health {
                Some(h) => (h.routable(), h.replay_lsn()),
                None => (false, 0),
            };
            let active = node
                .pool(user)
                .map(|p| p.stats.active.load(std::sync::atomic::Ordering::Relaxed) as u32)
                .unwrap_or(0);
            *slot = ReplicaView {
                routable,
                replay_lsn,
                active,
            };
        }
        n
    }
}

/// One config version and everything built from it. Requests `load()` it once and use
/// that snapshot to the end.
pub(crate) struct Snapshot {
    pub(crate) version: u64,
    /// Reported by `/api/config` once reload lands.
    #[allow(dead_code)]
    pub(crate) loaded_at: SystemTime,
    pub(crate) config: Config,
    pub(crate) users: HashMap<String, UserEntry>,
    pub(crate) shards: Vec<ShardRuntime>,
    pub(crate) classifier: Arc<Classifier>,
    pub(crate) policy: Policy,
    /// Per shard, in shard order.
    pub(crate) routed: Vec<RoutedCounters>,
}

impl Snapshot {
    pub(crate) fn build(config: Config, version: u64, metrics: &Metrics) -> Snapshot {
        let users = config
            .users
            .iter()
            .map(|u| {
                let entry = UserEntry {
                    config: u.clone(),
                    scram: ScramSecret::generate(&u.password),
                };
                (u.name.clone(), entry)
            })
            .collect();
        let shards = config
            .shards
            .iter()
            .map(|s| ShardRuntime {
                name: Arc::from(s.name.as_str()),
                primary: NodeRuntime::new(&s.primary, &config, false),
                replicas: s
                    .replicas
                    .iter()
                    .map(|r| NodeRuntime::new(r, &config, true))
                    .collect(),
            })
            .collect();
        let r = &config.routing;
        let policy = Policy {
            read_write_split: r.read_write_split,
            when_no_replica: r.when_no_replica,
            load_balance: r.load_balance,
            read_your_writes: r.read_your_writes,
        };
        let classifier = Arc::new(Classifier::new(CLASSIFIER_CACHE, &r.write_functions));
        let routed = config
            .shards
            .iter()
            .map(|s| metrics.routed_counters(&s.name))
            .collect();
        Snapshot {
            routed,
            version,
            loaded_at: SystemTime::now(),
            config,
            users,
            shards,
            classifier,
            policy,
        }
    }

    pub(crate) fn checkout_timeout(&self) -> Duration {
        Duration::from_millis(self.config.pool.checkout_timeout_ms)
    }

    /// Every node of every shard.
    pub(crate) fn nodes(&self) -> impl Iterator<Item = (&ShardRuntime, &Arc<NodeRuntime>)> {
        self.shards.iter().flat_map(|s| {
            std::iter::once((s, &s.primary)).chain(s.replicas.iter().map(move |r| (s, r)))
        })
    }

    /// Every pool of every node.
    pub(crate) fn pools(&self) -> impl Iterator<Item = &Arc<NodePool>> {
        self.nodes().flat_map(|(_, n)| n.pools.values())
    }
}
