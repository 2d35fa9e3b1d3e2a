//! Prometheus metrics: counters updated on the hot path are lock-free atomics (per worker
//! lane for the per-transaction ones, see `lane_metrics`); pool gauges are read from the pools
//! when scraped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shardgate_router::Role;

use crate::decisions::Kind;
use crate::lane_metrics::{LaneCounter, LaneHistogram};
use crate::proxy::Snapshot;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    node: String,
    user: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoutedLabels {
    shard: String,
    role: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    shard: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    shard: String,
    node: String,
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Counters for one shard, indexed by role (primary, replica) and request kind, so that
/// counting a routed request is one atomic add with no label lookup.
#[derive(Debug, Clone)]
pub(crate) struct RoutedCounters {
    by: [[LaneCounter; 4]; 2],
}

impl RoutedCounters {
    pub(crate) fn inc(&self, role: Role, kind: Kind) {
        let r = usize::from(role == Role::Replica);
        self.by[r][kind.index()].inc();
    }
}

/// Everything /metrics reports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) clients: Gauge,
    pub(crate) pinned_sessions: Gauge,
    pub(crate) transactions: LaneCounter,
    pub(crate) multiplexed: LaneCounter,
    query_duration: LaneHistogram,
    server_connections: Family<ServerLabels, Gauge>,
    routed: Family<RoutedLabels, LaneCounter>,
    pub(crate) unparsed: Counter,
    pub(crate) scatter: Counter,
    pub(crate) merge_rows: Counter,
    refused: Family<ReasonLabels, Counter>,
    two_pc: Family<OutcomeLabels, Counter>,
    lag_bytes: Family<NodeLabels, Gauge>,
    lag_seconds: Family<NodeLabels, Gauge<f64, AtomicU64>>,
    routable: Family<RoleLabels, Gauge>,
    lag_transitions: Family<NodeLabels, Gauge>,
    reloads: Family<ResultLabels, Counter>,
    config_version: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("shardgate");
        let clients = Gauge::default();
        registry.register("client_connections", "Connected clients", clients.clone());
        let pinned_sessions = Gauge::default();
        registry.register(
            "pinned_sessions",
            "Transaction-pooled clients keeping their server connection, since they left session state on it (a temporary table, a session advisory lock, LISTEN, ...)",
            pinned_sessions.clone(),
        );
        let transactions = LaneCounter::default();
        registry.register(
            "transactions",
            "Server connection checkouts returned clean (transactions in transaction mode)",
            transactions.clone(),
        );
        let multiplexed = LaneCounter::default();
        registry.register(
            "multiplexed",
            "Requests sent down a server connection behind another client's request (pool.multiplex)",
            multiplexed.clone(),
        );
        // 50 µs .. ~26 s
        let query_duration = LaneHistogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 20),
        );
        registry.register(
            "query_duration_seconds",
            "Time from a client request to its ReadyForQuery",
            query_duration.clone(),
        );
        let server_connections = Family::<ServerLabels, Gauge>::default();
        registry.register(
            "server_connections",
            "Server connections per node, user and state (idle, active)",
            server_connections.clone(),
        );
        let routed = Family::<RoutedLabels, LaneCounter>::default();
        registry.register(
            "routed",
            "Requests routed, by shard, node role and kind (read, write, transaction, unparsed)",
            routed.clone(),
        );
        let sleeps = crate::proxy::busy_poll::counts();
        registry.register(
            "worker_polls",
            "Times a session thread found work by busy polling, without sleeping",
            sleeps.polled.clone(),
        );
        registry.register(
            "worker_sleeps",
            "Times a session thread slept waiting for work (after busy polling, when it polls)",
            sleeps.slept.clone(),
        );
        let unparsed = Counter::default();
        registry.register(
            "unparsed",
            "Statements the SQL parser could not read (sent to the primary)",
            unparsed.clone(),
        );
        let lag_bytes = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "replica_lag_bytes",
            "Primary WAL position minus the replica's replay position",
            lag_bytes.clone(),
        );
        let lag_seconds = Family::<NodeLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "replica_lag_seconds",
            "Replay time lag (0 while the replica has replayed everything)",
            lag_seconds.clone(),
        );
        let routable = Family::<RoleLabels, Gauge>::default();
        registry.register(
            "node_routable",
            "1 if the node may receive requests of its role",
            routable.clone(),
        );
        let lag_transitions = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "replica_transitions",
            "Times a replica was excluded or re-admitted",
            lag_transitions.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads, by result (applied, refused)",
            reloads.clone(),
        );
        let scatter = Counter::default();
        registry.register(
            "scatter",
            "Queries run on every shard and merged",
            scatter.clone(),
        );
        let merge_rows = Counter::default();
        registry.register(
            "merge_rows",
            "Rows sent to clients by scatter merges",
            merge_rows.clone(),
        );
        let refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "refused",
            "Statements refused because they cannot be routed or merged exactly, by reason",
            refused.clone(),
        );
        let two_pc = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "2pc",
            "Two-phase commits, by outcome (committed, rolled_back, recovered_commit, recovered_rollback)",
            two_pc.clone(),
        );
        let config_version = Gauge::default();
        registry.register(
            "config_version",
            "The config version in force",
            config_version.clone(),
        );
        Metrics {
            scatter,
            merge_rows,
            refused,
            two_pc,
            reloads,
            config_version,
            registry,
            clients,
            pinned_sessions,
            transactions,
            multiplexed,
            query_duration,
            server_connections,
            routed,
            unparsed,
            lag_bytes,
            lag_seconds,
            routable,
            lag_transitions,
        }
    }

    pub(crate) fn observe_query(&self, d: Duration) {
        self.query_duration.observe(d.as_secs_f64());
    }

    /// A statement refused (0A000 and the like), by a short reason.
    pub(crate) fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A two-phase commit's outcome.
    pub(crate) fn two_pc(&self, outcome: &'static str) {
        self.two_pc.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub(crate) fn count_reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// Counter handles for one shard (made once per config version).
    pub(crate) fn routed_counters(&self, shard: &str) -> RoutedCounters {
        let make = |role: &'static str, kind: Kind| {
            self.routed
                .get_or_create(&RoutedLabels {
                    shard: shard.to_owned(),
                    role,
                    kind: kind.as_str(),
                })
                .clone()
        };
        RoutedCounters {
            by: [
                Kind::ALL.map(|k| make("primary", k)),
                Kind::ALL.map(|k| make("replica", k)),
            ],
        }
    }

    /// Prometheus text exposition, with pool and replica gauges read now.
    pub(crate) fn render(&self, snapshot: &Snapshot) -> String {
        self.config_version.set(snapshot.version as i64);
        for (shard, node) in snapshot.nodes() {
            let labels = NodeLabels {
                shard: shard.name.to_string(),
                node: node.addr.to_string(),
            };
            match &node.health {
                Some(h) => {
                    let st = h.status();
                    // An unknown lag (replica down, not measured yet) has no sample rather
                    // than a 0 that reads as "caught up".
                    if let Some(b) = st.lag_bytes {
                        self.lag_bytes.get_or_create(&labels).set(b as i64);
                    } else {
                        self.lag_bytes.remove(&labels);
                    }
                    if let Some(ms) = st.lag_ms {
                        self.lag_seconds
                            .get_or_create(&labels)
                            .set(ms as f64 / 1000.0);
                    } else {
                        self.lag_seconds.remove(&labels);
                    }
                    self.lag_transitions
                        .get_or_create(&labels)
                        .set(h.transitions() as i64);
                    self.routable
                        .get_or_create(&RoleLabels {
                            shard: labels.shard.clone(),
                            node: labels.node.clone(),
                            role: "replica",
                        })
                        .set(i64::from(st.routable));
                }
                None => {
                    self.routable
                        .get_or_create(&RoleLabels {
                            shard: labels.shard.clone(),
                            node: labels.node.clone(),
                            role: "primary",
                        })
                        .set(1);
                }
            }
        }
        for pool in snapshot.pools() {
            let active = pool.active() as i64;
            let open = pool.stats.open.load(Ordering::Relaxed) as i64;
            for (state, v) in [("active", active), ("idle", (open - active).max(0))] {
                self.server_connections
                    .get_or_create(&ServerLabels {
                        node: pool.addr().to_string(),
                        user: pool.user().to_owned(),
                        state,
                    })
                    .set(v);
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
