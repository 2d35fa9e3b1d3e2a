//! The admin HTTP API with read/write splitting: health, the topology with replica
//! health and lag, the recent-decisions log, what-if routing, and Prometheus metrics.

mod support;

use std::time::Duration;

use serde_json::Value;
use shardgate_testkit::Topology;
use support::{wait_routable, Proxy, ProxyOptions};
use tokio::time::timeout;

const TEST_TIMEOUT: Duration = Duration::from_secs(40);

async fn setup() -> (Topology, Proxy) {
    let topology = Topology::builder().replicas(2).build().expect("topology");
    let proxy = Proxy::start_with(
        &topology,
        ProxyOptions {
            extra_yaml: "routing:\n  lag_check_interval_ms: 100\n".into(),
            ..ProxyOptions::default()
        },
    );
    wait_routable(&proxy, 2, Duration::from_secs(15)).await;
    (topology, proxy)
}

#[tokio::test]
async fn healthz_and_topology() {
    timeout(TEST_TIMEOUT, async {
        let (topology, proxy) = setup().await;
        assert_eq!(proxy.admin_get("/healthz"), (200, "ok".to_owned()));
        let topo = proxy.admin_json("/api/topology");
        assert!(
            topo["config_version"].as_u64().is_some_and(|v| v >= 1),
            "{topo}"
        );
        let shards = topo["shards"].as_array().expect("shards");
        assert_eq!(shards.len(), 1);
        assert_eq!(shards[0]["name"], topology.shards[0].name.as_str());
        let nodes = shards[0]["nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), 3, "{topo}");
        let primary: Vec<&Value> = nodes.iter().filter(|n| n["role"] == "primary").collect();
        assert_eq!(primary.len(), 1);
        assert_eq!(
            primary[0]["addr"],
            topology.shards[0].primary.addr().to_string()
        );
        for replica in &topology.shards[0].replicas {
            let addr = replica.addr().to_string();
            let n = nodes
                .iter()
                .find(|n| n["addr"] == addr.as_str())
                .unwrap_or_else(|| panic!("{addr} not listed: {topo}"));
            assert_eq!(n["role"], "replica", "{n}");
            assert_eq!(n["healthy"], true, "{n}");
            assert_eq!(n["routable"], true, "{n}");
            assert!(n["lag_bytes"].is_u64(), "lag_bytes: {n}");
            assert!(n["lag_ms"].is_u64(), "lag_ms: {n}");
            assert_eq!(n["reason"], "ok", "{n}");
            let checked = n["checked_at"].as_str().unwrap_or_else(|| panic!("{n}"));
            assert!(
                checked.len() >= 20 && checked.contains('T') && checked.ends_with('Z'),
                "checked_at is not RFC 3339: {checked}"
            );
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn decisions_are_newest_first_and_truncated() {
    timeout(TEST_TIMEOUT, async {
        let (topology, proxy) = setup().await;
        // Reads from a session that never writes (read-your-writes would send the
        // writer's reads to the primary).
        let writer = proxy.connect(&topology).await;
        let reader = proxy.connect(&topology).await;
        writer
            .batch_execute("CREATE TABLE t (x int)")
            .await
            .expect("DDL");
        reader
            .batch_execute("SELECT 'first-read'")
            .await
            .expect("read");
        writer
            .batch_execute("INSERT INTO t VALUES (1) /* second-write */")
            .await
            .expect("write");
        let long = format!("SELECT 'third_long', '{}'", "y".repeat(300));
        reader.batch_execute(&long).await.expect("long read");

        let all = proxy.admin_json("/api/decisions?limit=10");
        let list = all["decisions"].as_array().expect("decisions");
        let find = |needle: &str| {
            list.iter()
                .position(|d| d["sql"].as_str().is_some_and(|s| s.contains(needle)))
                .unwrap_or_else(|| panic!("no decision for {needle}: {all}"))
        };
        let (first, second, third) = (find("first-read"), find("second-write"), find("third_long"));
        assert!(
            third < second && second < first,
            "not newest first: {first} {second} {third}"
        );
        let ats: Vec<&str> = list.iter().map(|d| d["at"].as_str().expect("at")).collect();
        assert!(
            ats.windows(2).all(|w| w[0] >= w[1]),
            "timestamps not newest first: {ats:?}"
        );

        let long_d = &list[third];
        let sql = long_d["sql"].as_str().expect("sql");
        assert_eq!(sql.len(), 200, "long SQL is kept to 200 characters");
        assert_eq!(sql, &long[..200]);
        assert_eq!(long_d["kind"], "read");
        assert_eq!(long_d["role"], "replica");
        assert_eq!(long_d["reason"], "read");

        let read = &list[first];
        assert_eq!(read["kind"], "read");
        assert_eq!(read["role"], "replica");
        let replica_addrs: Vec<String> = topology.shards[0]
            .replicas
            .iter()
            .map(|r| r.addr().to_string())
            .collect();
        assert!(
            replica_addrs.iter().any(|a| read["node"] == a.as_str()),
            "{read}"
        );
        assert_eq!(read["shards"], serde_json::json!([topology.shards[0].name]));

        let write = &list[second];
        assert_eq!(write["kind"], "write");
        assert_eq!(write["role"], "primary");
        assert_eq!(write["node"], topology.shards[0].primary.addr().to_string());
        assert!(
            write["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("write")),
            "{write}"
        );
        for d in list {
            assert!(d["session"].is_u64(), "{d}");
        }

        let two = proxy.admin_json("/api/decisions?limit=2");
        let two = two["decisions"].as_array().expect("decisions");
        assert_eq!(two.len(), 2);
        assert_eq!(two[0], list[0]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn route_explains_without_running() {
    timeout(TEST_TIMEOUT, async {
        let (topology, proxy) = setup().await;
        let read = proxy.admin_json("/api/route?sql=SELECT%201");
        assert_eq!(read["role"], "replica", "{read}");
        assert_eq!(read["kind"], "read", "{read}");
        let write = proxy.admin_json("/api/route?sql=INSERT%20INTO%20nowhere%20VALUES%20(1)");
        assert_eq!(write["role"], "primary", "{write}");
        assert_eq!(write["kind"], "write", "{write}");
        assert_eq!(write["node"], topology.shards[0].primary.addr().to_string());
        assert!(
            write["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("write")),
            "{write}"
        );
        // Not run: the table does not exist, and nothing was recorded.
        let decisions = proxy.admin_json("/api/decisions");
        assert_eq!(decisions["decisions"], serde_json::json!([]));

        assert_eq!(proxy.admin_get("/api/route").0, 400);
        assert_eq!(proxy.admin_get("/api/route?sql=").0, 400);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn metrics_has_every_family() {
    timeout(TEST_TIMEOUT, async {
        let (topology, proxy) = setup().await;
        let client = proxy.connect(&topology).await;
        client.batch_execute("SELECT 1").await.expect("read");
        client
            .batch_execute("CREATE TABLE t (x int)")
            .await
            .expect("write");
        // A replica's lag samples appear once the lag monitor has measured it.
        let mut scrape = proxy.admin_get("/metrics");
        for _ in 0..50 {
            if scrape.0 != 200 || scrape.1.contains("shardgate_replica_lag_seconds") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            scrape = proxy.admin_get("/metrics");
        }
        let (status, text) = scrape;
        assert_eq!(status, 200);
        for family in [
            "shardgate_replica_lag_bytes",
            "shardgate_replica_lag_seconds",
            "shardgate_node_routable",
            "shardgate_routed_total",
            "shardgate_unparsed_total",
            "shardgate_client_connections",
            "shardgate_server_connections",
            "shardgate_query_duration_seconds",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(family)),
                "no sample of {family} in:\n{text}"
            );
        }
        // Samples carry values: both routed kinds counted, replicas routable.
        let value = |prefix: &str, labels: &[&str]| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(prefix) && labels.iter().all(|x| l.contains(x)))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        assert!(
            value("shardgate_routed_total", &["replica"]) >= 1.0,
            "{text}"
        );
        assert!(
            value("shardgate_routed_total", &["primary"]) >= 1.0,
            "{text}"
        );
        assert_eq!(
            value("shardgate_node_routable", &["replica"]),
            2.0,
            "{text}"
        );
        assert_eq!(value("shardgate_client_connections", &[]), 1.0, "{text}");
        // The per-worker-lane counter and histogram are summed into one sample each.
        assert!(value("shardgate_transactions_total", &[]) >= 1.0, "{text}");
        let count = value("shardgate_query_duration_seconds_count", &[]);
        assert!(count >= 1.0, "{text}");
        assert_eq!(
            value("shardgate_query_duration_seconds_bucket", &["le=\"+Inf\""]),
            count,
            "{text}"
        );
    })
    .await
    .expect("test timed out");
}

/// The primary's node in `/api/topology`.
fn primary_node(proxy: &Proxy) -> Value {
    let topo = proxy.admin_json("/api/topology");
    topo["shards"][0]["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["role"] == "primary").cloned())
        .unwrap_or_else(|| panic!("no primary: {topo}"))
}

/// A stopped primary is shown unhealthy once shardgate fails to connect to it, and healthy
/// again once a connection to it succeeds.
#[tokio::test]
async fn a_stopped_primary_is_shown_unhealthy() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().build().expect("topology");
        let proxy = Proxy::start(&topology);
        let url = proxy.conn_str(&topology);
        let client = proxy.connect(&topology).await;
        client.batch_execute("SELECT 1").await.expect("query");
        let node = primary_node(&proxy);
        assert_eq!(
            (&node["healthy"], &node["routable"]),
            (&Value::Bool(true), &Value::Bool(true)),
            "{node}"
        );

        let primary = &topology.shards[0].primary;
        primary.stop().expect("stop primary");
        let down = support::poll_until(Duration::from_secs(10), || async {
            // Each try needs a server connection: a fresh session, a query.
            if let Ok(c) = support::connect(&url).await {
                let _ = c.batch_execute("SELECT 1").await;
            }
            primary_node(&proxy)["healthy"] == false
        })
        .await;
        let node = primary_node(&proxy);
        assert!(
            down.is_some(),
            "a stopped primary still looks healthy: {node}"
        );
        assert_eq!(node["routable"], false, "{node}");
        let reason = node["reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("unreachable: connect failed"), "{node}");

        primary.start().expect("start primary");
        let up = support::poll_until(Duration::from_secs(15), || async {
            match support::connect(&url).await {
                Ok(c) => c.batch_execute("SELECT 1").await.is_ok(),
                Err(_) => false,
            }
        })
        .await;
        assert!(
            up.is_some(),
            "no query succeeded after the primary restarted"
        );
        let node = primary_node(&proxy);
        assert_eq!(
            (&node["healthy"], &node["routable"]),
            (&Value::Bool(true), &Value::Bool(true)),
            "{node}"
        );
    })
    .await
    .expect("test timed out");
}

/// With replicas, the lag monitor asks the primary every check interval: a stopped primary is
/// shown unhealthy without any client needing it, and healthy again once it is back.
#[tokio::test]
async fn the_lag_monitor_shows_a_stopped_primary_unhealthy() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().replicas(1).build().expect("topology");
        let proxy = Proxy::start_with(
            &topology,
            ProxyOptions {
                extra_yaml: "routing:\n  lag_check_interval_ms: 100\n".into(),
                ..ProxyOptions::default()
            },
        );
        wait_routable(&proxy, 1, Duration::from_secs(15)).await;
        let node = primary_node(&proxy);
        assert_eq!(node["healthy"], true, "{node}");
        assert!(node["checked_at"].is_string(), "{node}");

        let primary = &topology.shards[0].primary;
        primary.stop().expect("stop primary");
        let down = support::poll_until(Duration::from_secs(5), || async {
            primary_node(&proxy)["healthy"] == false
        })
        .await;
        let node = primary_node(&proxy);
        assert!(
            down.is_some(),
            "a stopped primary still looks healthy: {node}"
        );
        assert_eq!(node["routable"], false, "{node}");
        let reason = node["reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("unreachable: "), "{node}");

        primary.start().expect("start primary");
        let up = support::poll_until(Duration::from_secs(10), || async {
            primary_node(&proxy)["healthy"] == true
        })
        .await;
        assert!(up.is_some(), "{}", primary_node(&proxy));
        assert_eq!(primary_node(&proxy)["reason"], "primary");
    })
    .await
    .expect("test timed out");
}
