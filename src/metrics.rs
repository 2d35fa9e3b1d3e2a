//! Prometheus metrics: counters updated on the hot path are lock-free atomics; pool
//! gauges are read from the pools when scraped.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shardgate_pool::NodePool;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    node: String,
    user: String,
    state: &'static str,
}

/// Everything /metrics reports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) clients: Gauge,
    pub(crate) transactions: Counter,
    query_duration: Histogram,
    server_connections: Family<ServerLabels, Gauge>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("shardgate");
        let clients = Gauge::default();
        registry.register("client_connections", "Connected clients", clients.clone());
        let transactions = Counter::default();
        registry.register(
            "transactions",
            "Server connection checkouts returned clean (transactions in transaction mode)",
            transactions.clone(),
        );
        // 50 µs .. ~26 s
        let query_duration = Histogram::new(
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
        Metrics {
            registry,
            clients,
            transactions,
            query_duration,
            server_connections,
        }
    }

    pub(crate) fn observe_query(&self, d: Duration) {
        self.query_duration.observe(d.as_secs_f64());
    }

    /// Prometheus text exposition, with pool gauges read now.
    pub(crate) fn render<'a>(&self, pools: impl Iterator<Item = &'a NodePool>) -> String {
        for pool in pools {
            let active = pool.stats.active.load(Ordering::Relaxed) as i64;
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
