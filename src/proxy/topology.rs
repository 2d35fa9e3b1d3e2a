//! The config snapshot and the runtime topology built from it: shards, their nodes,
//! each node's pools (one per user) and, for replicas, the health the lag monitor
//! keeps. A snapshot is immutable; a reload builds a new one, reusing unchanged nodes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

use shardgate_auth::ScramSecret;
use shardgate_config::{Config, NodeAddr, UserConfig};
use shardgate_pool::lag::{PrimaryCheck, ReplicaHealth};
use shardgate_pool::{Credentials, NodePool};
use shardgate_router::{Policy, ReplicaView};
use shardgate_sql::Classifier;

use super::sharding_runtime::ShardingRuntime;
use super::two_phase::TwoPhase;
use crate::metrics::{Metrics, RoutedCounters};

/// Classification cache size (distinct SQL texts), per worker thread.
const CLASSIFIER_CACHE: usize = 10_000;

/// How a user authenticates to shardgate, derived once per config version.
pub(crate) struct UserEntry {
    pub(crate) config: UserConfig,
    pub(crate) scram: ScramSecret,
}

/// One PostgreSQL server: its pools and, for a replica, its health.
pub(crate) struct NodeRuntime {
    pub(crate) addr: Arc<NodeAddr>,
    /// By user name. Hashed with xxh3 (already used for shard keys) rather than SipHash: the
    /// keys come from the config, not from clients, and one lookup happens per transaction.
    pub(crate) pools: HashMap<String, Arc<NodePool>, Xxh3DefaultBuilder>,
    pub(crate) health: Option<Arc<ReplicaHealth>>,
    /// For a primary: whether its shard's lag monitor last reached it (shards with replicas).
    pub(crate) primary_check: Option<Arc<PrimaryCheck>>,
}

impl NodeRuntime {
    /// A node for `config`, reusing what `previous` (the same address in the old
    /// snapshot) already has: pools whose login is unchanged keep their connections
    /// and are resized in place; a replica keeps its health (no re-warm-up).
    fn build(
        addr: &NodeAddr,
        config: &Config,
        lanes: usize,
        replica: bool,
        previous: Option<&NodeRuntime>,
    ) -> Arc<NodeRuntime> {
        let pools = config
            .users
            .iter()
            .map(|u| {
                let creds = Credentials {
                    user: u.name.clone(),
                    password: u.password.clone(),
                    database: config.database.clone(),
                };
                let reused = previous
                    .and_then(|p| p.pools.get(&u.name))
                    .filter(|p| *p.credentials() == creds)
                    .cloned();
                let pool = match reused {
                    Some(pool) => {
                        if pool.size() != config.pool.size {
                            pool.resize(config.pool.size);
                        }
                        pool
                    }
                    None => NodePool::with_lanes(addr.clone(), creds, config.pool.size, lanes),
                };
                (u.name.clone(), pool)
            })
            .collect();
        let health = replica.then(|| {
            previous
                .and_then(|p| p.health.clone())
                .unwrap_or_else(|| ReplicaHealth::new(addr.clone()))
        });
        let primary_check = (!replica).then(|| {
            previous
                .and_then(|p| p.primary_check.clone())
                .unwrap_or_default()
        });
        Arc::new(NodeRuntime {
            addr: previous
                .map(|p| p.addr.clone())
                .unwrap_or_else(|| Arc::new(addr.clone())),
            pools,
            health,
            primary_check,
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
            let active = node.pool(user).map(|p| p.active() as u32).unwrap_or(0);
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
    pub(crate) loaded_at: SystemTime,
    pub(crate) config: Config,
    pub(crate) users: HashMap<String, UserEntry>,
    pub(crate) shards: Vec<ShardRuntime>,
    pub(crate) classifier: Arc<Classifier>,
    pub(crate) policy: Policy,
    /// Per shard, in shard order.
    pub(crate) routed: Vec<RoutedCounters>,
    /// Present when the config has a `sharding` section.
    pub(crate) sharding: Option<Arc<ShardingRuntime>>,
    /// The two-phase-commit coordinator, when `sharding.two_phase_commit` is on and its log
    /// could be opened.
    pub(crate) two_phase: Option<Arc<TwoPhase>>,
}

impl Snapshot {
    /// Builds a snapshot, reusing the nodes, pools, health and classifier of
    /// `previous` where they are unchanged.
    pub(crate) fn build(
        config: Config,
        version: u64,
        metrics: &Metrics,
        previous: Option<&Snapshot>,
    ) -> Snapshot {
        let users = config
            .users
            .iter()
            .map(|u| {
                // An unchanged password keeps its SCRAM secret (no key derivation per reload).
                let scram = previous
                    .and_then(|p| p.users.get(&u.name))
                    .filter(|e| e.config.password == u.password)
                    .map(|e| e.scram.clone())
                    .unwrap_or_else(|| ScramSecret::generate(&u.password));
                let entry = UserEntry {
                    config: u.clone(),
                    scram,
                };
                (u.name.clone(), entry)
            })
            .collect();
        // One pool lane per worker thread the process runs: a reload that changes `workers`
        // takes effect at the next restart, so new pools keep the running count.
        let lanes = previous
            .and_then(|p| p.pools().next())
            .map(|p| p.lanes())
            .unwrap_or(config.worker_threads() as usize);
        let shards = config
            .shards
            .iter()
            .map(|s| {
                let old = |addr: &NodeAddr, replica: bool| {
                    previous
                        .and_then(|p| p.node(addr))
                        .filter(|n| n.health.is_some() == replica)
                };
                ShardRuntime {
                    name: Arc::from(s.name.as_str()),
                    primary: NodeRuntime::build(
                        &s.primary,
                        &config,
                        lanes,
                        false,
                        old(&s.primary, false),
                    ),
                    replicas: s
                        .replicas
                        .iter()
                        .map(|r| NodeRuntime::build(r, &config, lanes, true, old(r, true)))
                        .collect(),
                }
            })
            .collect();
        let r = &config.routing;
        let policy = Policy {
            read_write_split: r.read_write_split,
            when_no_replica: r.when_no_replica,
            load_balance: r.load_balance,
            read_your_writes: r.read_your_writes,
        };
        let classifier = match previous {
            Some(p) if p.config.routing.write_functions == r.write_functions => {
                p.classifier.clone()
            }
            // A cache per worker thread (see `Classifier::with_caches`).
            _ => Arc::new(Classifier::with_caches(
                CLASSIFIER_CACHE,
                lanes,
                &r.write_functions,
            )),
        };
        let routed = config
            .shards
            .iter()
            .map(|s| metrics.routed_counters(&s.name))
            .collect();
        // Unchanged sharding keeps its analysis cache and learned key types.
        let sharding = match previous {
            Some(p)
                if p.config.sharding == config.sharding
                    && Arc::ptr_eq(&p.classifier, &classifier)
                    && p.config
                        .shards
                        .iter()
                        .map(|s| &s.name)
                        .eq(config.shards.iter().map(|s| &s.name)) =>
            {
                p.sharding.clone()
            }
            _ => ShardingRuntime::build(&config, classifier.clone()).map(Arc::new),
        };
        let log = config
            .sharding
            .as_ref()
            .filter(|s| s.two_phase_commit)
            .and_then(|s| s.two_phase_log.clone());
        let two_phase = log.and_then(|path| {
            if let Some(tp) = previous
                .and_then(|p| p.two_phase.clone())
                .filter(|tp| tp.path() == path)
            {
                return Some(tp);
            }
            match TwoPhase::open(&path) {
                Ok(tp) => Some(Arc::new(tp)),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot open the two-phase-commit log: transactions writing on several shards are refused");
                    None
                }
            }
        });
        Snapshot {
            two_phase,
            sharding,
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

    /// The shard names, in config order.
    pub(crate) fn shard_names(&self) -> Vec<Arc<str>> {
        self.shards.iter().map(|s| s.name.clone()).collect()
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

    /// The node at `addr`, in any shard.
    pub(crate) fn node(&self, addr: &NodeAddr) -> Option<&NodeRuntime> {
        self.nodes()
            .map(|(_, n)| n.as_ref())
            .find(|n| *n.addr == *addr)
    }

    /// Every pool of every node.
    pub(crate) fn pools(&self) -> impl Iterator<Item = &Arc<NodePool>> {
        self.nodes().flat_map(|(_, n)| n.pools.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(workers: u32, replicas: &str) -> Config {
        Config::from_yaml_str(&format!(
            "workers: {workers}\nlisten: 127.0.0.1:1\nadmin_listen: 127.0.0.1:2\ndatabase: app\n\
             users: [{{name: app, password: pw}}]\n\
             shards: [{{name: s0, primary: 127.0.0.1:3, replicas: [{replicas}]}}]\n"
        ))
        .expect("valid config")
    }

    #[test]
    fn pools_a_reload_adds_keep_the_running_lane_count() {
        let metrics = Metrics::new();
        let first = Snapshot::build(config(2, ""), 1, &metrics, None);
        assert!(first.pools().all(|p| p.lanes() == 2));
        // `workers` changes only at restart: the new replica's pool must match the threads
        // that run, not the reloaded value.
        let second = Snapshot::build(config(4, "127.0.0.1:4"), 2, &metrics, Some(&first));
        assert_eq!(second.pools().count(), 2);
        assert!(second.pools().all(|p| p.lanes() == 2));
        // A fresh start takes the configured count.
        let fresh = Snapshot::build(config(4, "127.0.0.1:4"), 1, &metrics, None);
        assert!(fresh.pools().all(|p| p.lanes() == 4));
    }
}
