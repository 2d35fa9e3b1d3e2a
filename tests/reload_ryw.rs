//! Read-your-writes across a reload that changes the `shards` list: a session's committed
//! write keeps its later reads of that shard off lagging replicas when the reload reorders
//! the shards or adds one in front, since the session's positions follow the shard by name,
//! not by its place in the list.

mod support;

use std::time::Duration;

use shardgate_testkit::{free_port, Topology};
use support::sharded::{int_keys_on, primaries, sharding_yaml, SCHEMA};
use support::{Proxy, ProxyOptions};
use tokio::time::timeout;
use tokio_postgres::Client;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Replicas stay routable however far they lag: only read-your-writes keeps reads off them.
const ROUTING: &str = "routing:\n  max_replica_lag_bytes: 1099511627776\n  max_replica_lag_ms: 3600000\n  lag_check_interval_ms: 100\n";

/// A full config for `proxy` naming the topology's shards in `order` (by index), with `map`.
fn config(topology: &Topology, port: u16, admin_port: u16, order: &[usize], map: &str) -> String {
    let base = Proxy::config_yaml(
        topology,
        port,
        admin_port,
        &ProxyOptions {
            extra_yaml: format!("{ROUTING}{}", sharding_yaml(Some(map))),
            ..ProxyOptions::default()
        },
    );
    let mut shards = String::from("shards:\n");
    for &i in order {
        let s = &topology.shards[i];
        let replicas: Vec<String> = s.replicas.iter().map(|r| r.addr().to_string()).collect();
        shards.push_str(&format!(
            "  - name: {}\n    primary: {}\n    replicas: [{}]\n",
            s.name,
            s.primary.addr(),
            replicas.join(", ")
        ));
    }
    let all = topology.shards_yaml();
    assert!(base.contains(&all), "shards section not found");
    base.replace(&all, &shards)
}

fn reload(proxy: &Proxy, yaml: &str) {
    proxy.rewrite_config(yaml);
    let (status, body) = proxy.reload();
    assert_eq!(status, 200, "reload refused: {body}");
}

async fn setup() -> (Topology, Vec<Client>) {
    let topology = Topology::builder()
        .shards(2)
        .replicas(1)
        .build()
        .expect("topology");
    let direct = primaries(&topology).await;
    for d in &direct {
        d.batch_execute(SCHEMA).await.expect("schema");
    }
    topology
        .wait_replicas_caught_up(Duration::from_secs(10))
        .expect("caught up");
    (topology, direct)
}

fn pause_replicas(topology: &Topology) {
    for s in &topology.shards {
        s.replicas[0].pause_replay().expect("pause replay");
    }
}

fn resume_replicas(topology: &Topology) {
    for s in &topology.shards {
        s.replicas[0].resume_replay().expect("resume replay");
    }
}

/// The session's notes for `key`, read through the proxy.
async fn notes(c: &Client, key: i64) -> Vec<String> {
    c.query(
        "SELECT note FROM orders WHERE user_id = $1 ORDER BY note",
        &[&key],
    )
    .await
    .expect("read")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn wait_all_routable(proxy: &Proxy, n: usize) {
    let ok = support::poll_until(Duration::from_secs(15), || async {
        let t = proxy.admin_json("/api/topology");
        let routable = t["shards"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["nodes"].as_array().into_iter().flatten())
            .filter(|n| n["role"] == "replica" && n["routable"] == true)
            .count();
        routable == n
    })
    .await;
    assert!(
        ok.is_some(),
        "replicas not routable: {}",
        proxy.admin_json("/api/topology")
    );
}

#[tokio::test]
async fn own_writes_stay_visible_when_a_reload_reorders_the_shards() {
    timeout(TEST_TIMEOUT, async {
        let (topology, _direct) = setup().await;
        let map = r#"{"0-511": s0, "512-1023": s1}"#;
        let (port, admin) = (free_port(), free_port());
        let proxy = Proxy::start_yaml(&config(&topology, port, admin, &[0, 1], map), port, admin);
        wait_all_routable(&proxy, 2).await;
        let c = proxy.connect(&topology).await;
        let k0 = int_keys_on(0, 1, 1)[0];
        let k1 = int_keys_on(1, 1, 1)[0];
        pause_replicas(&topology);

        c.execute(
            "INSERT INTO orders (user_id, note) VALUES ($1, 'autocommit')",
            &[&k0],
        )
        .await
        .expect("insert on s0");
        assert_eq!(notes(&c, k0).await, ["autocommit"], "before the reload");

        reload(&proxy, &config(&topology, port, admin, &[1, 0], map));
        wait_all_routable(&proxy, 2).await;
        assert_eq!(notes(&c, k0).await, ["autocommit"], "s0 after the reorder");

        // A transaction open across a reload commits on the snapshot it began on.
        c.batch_execute(&format!(
            "BEGIN; INSERT INTO orders (user_id, note) VALUES ({k1}, 'in txn')"
        ))
        .await
        .expect("insert on s1");
        reload(&proxy, &config(&topology, port, admin, &[0, 1], map));
        c.batch_execute("COMMIT").await.expect("commit");
        wait_all_routable(&proxy, 2).await;
        assert_eq!(
            notes(&c, k1).await,
            ["in txn"],
            "s1 after the second reorder"
        );
        assert_eq!(
            notes(&c, k0).await,
            ["autocommit"],
            "s0 after the second reorder"
        );

        // Another session wrote nothing: it reads the paused replicas.
        let other = proxy.connect(&topology).await;
        assert!(
            notes(&other, k0).await.is_empty(),
            "replica of s0 is not paused"
        );
        assert!(
            notes(&other, k1).await.is_empty(),
            "replica of s1 is not paused"
        );
        resume_replicas(&topology);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn own_writes_stay_visible_when_a_reload_adds_a_shard_in_front() {
    timeout(TEST_TIMEOUT, async {
        let (topology, _direct) = setup().await;
        // s1 alone first, then s0 added in front of it; every key stays on s1.
        let map = r#"{"0-1023": s1}"#;
        let (port, admin) = (free_port(), free_port());
        let proxy = Proxy::start_yaml(&config(&topology, port, admin, &[1], map), port, admin);
        let c = proxy.connect(&topology).await;
        let k = 7;
        support::poll_until(Duration::from_secs(15), || async {
            proxy.admin_json("/api/topology")["shards"][0]["nodes"]
                .as_array()
                .is_some_and(|ns| {
                    ns.iter()
                        .any(|n| n["role"] == "replica" && n["routable"] == true)
                })
        })
        .await
        .expect("s1's replica routable");
        pause_replicas(&topology);

        c.execute(
            "INSERT INTO orders (user_id, note) VALUES ($1, 'written')",
            &[&k],
        )
        .await
        .expect("insert on s1");
        assert_eq!(notes(&c, k).await, ["written"], "before the reload");

        reload(&proxy, &config(&topology, port, admin, &[0, 1], map));
        wait_all_routable(&proxy, 2).await;
        assert_eq!(
            notes(&c, k).await,
            ["written"],
            "after s0 was added in front"
        );
        let other = proxy.connect(&topology).await;
        assert!(
            notes(&other, k).await.is_empty(),
            "replica of s1 is not paused"
        );
        resume_replicas(&topology);
    })
    .await
    .expect("test timed out");
}
