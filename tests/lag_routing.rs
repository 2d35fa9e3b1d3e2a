//! Replica health in routing: replicas whose replay falls behind are excluded from reads
//! and admitted again when they catch up, `when_no_replica: error` names them,
//! read-your-writes keeps a session's reads on the primary while replicas lag, and a
//! killed replica costs no read issued after its death.

mod support;

use std::time::{Duration, Instant};

use shardgate_testkit::Topology;
use support::{poll_until, port, wait_routable, Proxy, ProxyOptions};
use tokio::time::timeout;
use tokio_postgres::error::SqlState;

const TEST_TIMEOUT: Duration = Duration::from_secs(45);
const READ: &str = "SELECT inet_server_port() AS port";

fn start(topology: &Topology, routing: &str) -> Proxy {
    Proxy::start_with(
        topology,
        ProxyOptions {
            extra_yaml: format!("routing:\n{routing}"),
            ..ProxyOptions::default()
        },
    )
}

fn replica_ports(topology: &Topology) -> Vec<u16> {
    topology.shards[0]
        .replicas
        .iter()
        .map(|r| r.port())
        .collect()
}

fn pause_both(topology: &Topology) {
    for r in &topology.shards[0].replicas {
        r.pause_replay().expect("pause replay");
    }
}

/// More than 1 MB of WAL, written through the proxy.
async fn write_a_lot(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "CREATE TABLE big AS SELECT g, repeat('x', 1000) AS s FROM generate_series(1, 2000) g",
        )
        .await
        .expect("big write");
}

/// Both replicas excluded for lag in /api/topology.
fn both_excluded_for_lag(proxy: &Proxy) -> bool {
    proxy.replica_nodes().is_some_and(|ns| {
        ns.len() == 2
            && ns.iter().all(|n| {
                n["routable"] == false
                    && n["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("excluded: lag"))
            })
    })
}

// The time bound is set high so that only the byte bound can exclude: the test asserts
// the byte-lag reason.
const LAG_BOUNDS: &str =
    "  max_replica_lag_bytes: 65536\n  max_replica_lag_ms: 3600000\n  lag_check_interval_ms: 100\n";

#[tokio::test]
async fn lagging_replicas_are_excluded_and_come_back() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().replicas(2).build().expect("topology");
        let proxy = start(&topology, LAG_BOUNDS);
        wait_routable(&proxy, 2, Duration::from_secs(15)).await;
        let primary = topology.shards[0].primary.port();
        let replicas = replica_ports(&topology);
        // The writer's own reads would go to the primary by read-your-writes: read from
        // a session that writes nothing.
        let writer = proxy.connect(&topology).await;
        let reader = proxy.connect(&topology).await;
        let p = port(&reader, READ).await;
        assert!(replicas.contains(&p), "before the lag, a read ran on {p}");

        pause_both(&topology);
        write_a_lot(&writer).await;
        // Two checks over the bound, 100 ms apart, plus slack for a loaded machine.
        let bound = Duration::from_millis(3 * 100) + Duration::from_secs(2);
        let took = poll_until(bound, || async { port(&reader, READ).await == primary }).await;
        assert!(
            took.is_some(),
            "reads still on a replica {bound:?} after the lag"
        );
        let shown = poll_until(Duration::from_secs(2), || async {
            both_excluded_for_lag(&proxy)
        })
        .await;
        assert!(
            shown.is_some(),
            "topology does not show both replicas excluded for lag: {:?}",
            proxy.replica_nodes()
        );
        for _ in 0..5 {
            assert_eq!(port(&reader, READ).await, primary, "read while both lag");
        }
        // The decision says why, naming each replica.
        let decisions = proxy.admin_json("/api/decisions?limit=1");
        let reason = decisions["decisions"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            reason.starts_with("no routable replica: primary (replica 127.0.0.1:")
                && reason.contains("excluded: lag"),
            "decision reason: {reason}"
        );

        for r in &topology.shards[0].replicas {
            r.resume_replay().expect("resume replay");
        }
        let back = poll_until(Duration::from_secs(10), || async {
            replicas.contains(&port(&reader, READ).await)
        })
        .await;
        assert!(
            back.is_some(),
            "reads did not return to a replica after resume"
        );
        wait_routable(&proxy, 2, Duration::from_secs(10)).await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn when_no_replica_error_names_each_replica() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().replicas(2).build().expect("topology");
        let proxy = start(
            &topology,
            &format!("{LAG_BOUNDS}  when_no_replica: error\n"),
        );
        wait_routable(&proxy, 2, Duration::from_secs(15)).await;
        let writer = proxy.connect(&topology).await;
        pause_both(&topology);
        write_a_lot(&writer).await;
        let excluded = poll_until(Duration::from_secs(5), || async {
            both_excluded_for_lag(&proxy)
        })
        .await;
        assert!(
            excluded.is_some(),
            "replicas not excluded: {:?}",
            proxy.replica_nodes()
        );

        let reader = proxy.connect(&topology).await;
        let err = reader
            .simple_query(READ)
            .await
            .expect_err("read with no replica");
        assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW), "{err:?}");
        let db = err.as_db_error().expect("a server error");
        let text = format!("{} {}", db.message(), db.detail().unwrap_or_default());
        for r in &topology.shards[0].replicas {
            let addr = r.addr().to_string();
            assert!(text.contains(&addr), "error does not name {addr}: {text}");
        }
        // The session survives; the primary still serves hinted reads and writes.
        let primary = topology.shards[0].primary.port();
        let hinted = format!("/* shardgate: primary */ {READ}");
        assert_eq!(port(&reader, &hinted).await, primary);
        assert_eq!(
            port(
                &reader,
                "INSERT INTO big VALUES (0, '') RETURNING inet_server_port() AS port"
            )
            .await,
            primary
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn read_your_writes_while_replicas_are_paused() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().replicas(2).build().expect("topology");
        let proxy = start(
            &topology,
            "  max_replica_lag_bytes: 1099511627776\n  max_replica_lag_ms: 3600000\n  lag_check_interval_ms: 100\n",
        );
        wait_routable(&proxy, 2, Duration::from_secs(15)).await;
        let writer = proxy.connect(&topology).await;
        let other = proxy.connect(&topology).await;
        writer
            .batch_execute("CREATE TABLE r (id int PRIMARY KEY)")
            .await
            .expect("DDL");
        topology
            .wait_replicas_caught_up(Duration::from_secs(10))
            .expect("caught up");
        pause_both(&topology);

        let insert = writer.prepare("INSERT INTO r VALUES ($1)").await.expect("prepare");
        for i in 0..100i32 {
            writer.execute(&insert, &[&i]).await.expect("insert");
            let n: i64 = writer
                .query_one("SELECT count(*) FROM r WHERE id = $1", &[&i])
                .await
                .expect("read back")
                .get(0);
            assert_eq!(n, 1, "row {i} not visible to the session that wrote it");
            if i % 10 == 0 {
                let row = other
                    .query_one("SELECT pg_is_in_recovery(), count(*) FROM r", &[])
                    .await
                    .expect("other session reads");
                assert!(row.get::<_, bool>(0), "a session that wrote nothing reads a replica");
                assert_eq!(row.get::<_, i64>(1), 0, "paused replica sees no new rows");
            }
        }
        // COPY FROM is a write too (its probe runs once the COPY is over).
        {
            use futures_util::SinkExt;
            let sink = writer.copy_in("COPY r FROM STDIN").await.expect("COPY");
            futures_util::pin_mut!(sink);
            sink.send(bytes::Bytes::from_static(b"1000\n")).await.expect("data");
            assert_eq!(sink.finish().await.expect("COPY finish"), 1);
        }
        let n: i64 = writer
            .query_one("SELECT count(*) FROM r WHERE id = 1000", &[])
            .await
            .expect("read after COPY")
            .get(0);
        assert_eq!(n, 1, "the COPYed row is not visible to its session");
        let nodes = proxy.replica_nodes().expect("topology");
        assert!(
            nodes.iter().all(|n| n["routable"] == true),
            "replicas must stay routable: {nodes:?}"
        );
        for r in &topology.shards[0].replicas {
            r.resume_replay().expect("resume replay");
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn reads_survive_a_killed_replica() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().replicas(2).build().expect("topology");
        let proxy = start(
            &topology,
            "  lag_check_interval_ms: 100\n  load_balance: round_robin\n",
        );
        wait_routable(&proxy, 2, Duration::from_secs(15)).await;
        let replicas = replica_ports(&topology);
        let client = proxy.connect(&topology).await;
        // Both replicas hold pooled connections before the kill.
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(port(&client, READ).await);
        }
        assert!(
            replicas.iter().all(|r| seen.contains(r)),
            "round robin did not use both replicas: {seen:?}"
        );

        let dead = replicas[0];
        topology.shards[0].replicas[0].kill().expect("kill replica");
        let start = Instant::now();
        let mut landed = Vec::new();
        for i in 0..50 {
            match client.simple_query(READ).await {
                Ok(msgs) => landed.extend(msgs.iter().filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        r.get("port").and_then(|p| p.parse::<u16>().ok())
                    }
                    _ => None,
                })),
                Err(e) => panic!("read {i} after the kill failed: {e:?}"),
            }
        }
        assert_eq!(landed.len(), 50);
        assert!(!landed.contains(&dead), "a read ran on the killed replica?");
        let nodes = proxy.replica_nodes().expect("topology");
        let dead_node = nodes
            .iter()
            .find(|n| n["addr"] == format!("127.0.0.1:{dead}"))
            .expect("killed replica listed");
        assert_eq!(dead_node["routable"], false, "{dead_node}");
        assert!(
            dead_node["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("excluded:")),
            "{dead_node}"
        );
        eprintln!("50 reads after the kill took {:?}", start.elapsed());
    })
    .await
    .expect("test timed out");
}

/// A replica restarted from a restartpoint has replayed no commit, so
/// `pg_last_xact_replay_timestamp()` is NULL; when its replay then stalls, the time bound must
/// still take it out of reads (the byte bound is set too high to).
#[tokio::test]
async fn stalled_replica_with_no_replayed_commit_is_held_to_the_time_bound() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().replicas(1).build().expect("topology");
        let primary = &topology.shards[0].primary;
        let replica = &topology.shards[0].replicas[0];
        primary.sql("postgres", "CHECKPOINT").expect("checkpoint primary");
        topology
            .wait_replicas_caught_up(Duration::from_secs(10))
            .expect("caught up");
        replica.sql("postgres", "CHECKPOINT").expect("restartpoint");
        replica.restart().expect("restart replica");
        let no_commit = "SELECT pg_last_xact_replay_timestamp() IS NULL";
        assert_eq!(replica.sql("postgres", no_commit).expect("ts"), "t");

        let proxy = start(
            &topology,
            "  max_replica_lag_bytes: 1099511627776\n  max_replica_lag_ms: 500\n  lag_check_interval_ms: 100\n",
        );
        wait_routable(&proxy, 1, Duration::from_secs(15)).await;
        let reader = proxy.connect(&topology).await;
        assert_eq!(port(&reader, READ).await, replica.port(), "read before the stall");

        replica.pause_replay().expect("pause replay");
        let writer = proxy.connect(&topology).await;
        writer
            .batch_execute("CREATE TABLE fresh AS SELECT 1 AS v")
            .await
            .expect("write");
        assert_eq!(replica.sql("postgres", no_commit).expect("ts"), "t");

        // The bound, two checks over it, plus slack for a loaded machine.
        let bound = Duration::from_millis(500 + 3 * 100) + Duration::from_secs(2);
        let took = poll_until(bound, || async {
            port(&reader, READ).await == primary.port()
        })
        .await;
        assert!(
            took.is_some(),
            "reads still on the stalled replica {bound:?} after the write: {:?}",
            proxy.replica_nodes()
        );
        let nodes = proxy.replica_nodes().expect("topology");
        let reason = nodes[0]["reason"].as_str().unwrap_or_default();
        assert!(
            nodes[0]["routable"] == false && reason.starts_with("excluded: replay lag"),
            "topology: {nodes:?}"
        );
        assert!(
            nodes[0]["lag_ms"].as_u64().is_some_and(|ms| ms > 500),
            "lag_ms: {nodes:?}"
        );
        // A fresh session reads the write.
        let fresh = proxy.connect(&topology).await;
        let v: i32 = fresh
            .query_one("SELECT v FROM fresh", &[])
            .await
            .expect("fresh session reads the write")
            .get(0);
        assert_eq!(v, 1);

        replica.resume_replay().expect("resume replay");
        wait_routable(&proxy, 1, Duration::from_secs(10)).await;
    })
    .await
    .expect("test timed out");
}
