//! Hot reload of a running proxy: invalid files are refused whole while the old config keeps
//! serving; applied ones bump the version without disturbing transactions in flight or the
//! server connections of unchanged nodes; replicas and users come and go; SIGHUP, POST
//! /api/reload and the file watcher all trigger it; pgbench sees no failure across reloads.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use shardgate_testkit::{free_port, Topology};
use support::{poll_until, ports, run_tool, wait_routable, Proxy, ProxyOptions};
use tokio::time::timeout;
use tokio_postgres::error::SqlState;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const REFUSED: &str = "shardgate_config_reloads_total{result=\"refused\"}";
const APPLIED: &str = "shardgate_config_reloads_total{result=\"applied\"}";
/// psql/pgbench must not wait forever on a broken proxy.
const TOOL_ENV: &[(&str, &str)] = &[("PGCONNECT_TIMEOUT", "10"), ("PGOPTIONS", "")];

/// The config text `proxy` would get from `options` (same ports).
fn yaml(topology: &Topology, proxy: &Proxy, options: &ProxyOptions) -> String {
    Proxy::config_yaml(topology, proxy.port, proxy.admin_port, options)
}

fn with_pool_size(pool_size: u32) -> ProxyOptions {
    ProxyOptions {
        pool_size,
        ..ProxyOptions::default()
    }
}

/// Rewrites the file and reloads it through the admin API; asserts it was applied and
/// returns the new version.
fn reload_ok(proxy: &Proxy, yaml: &str) -> u64 {
    proxy.rewrite_config(yaml);
    let (status, body) = proxy.reload();
    assert_eq!(status, 200, "reload refused: {body}");
    body["config_version"]
        .as_u64()
        .unwrap_or_else(|| panic!("no config_version: {body}"))
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

#[tokio::test]
async fn invalid_config_is_refused_with_every_problem() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().build().expect("topology");
        let proxy = Proxy::start(&topology);
        let client = proxy.connect(&topology).await;
        assert_eq!(proxy.config_version(), 1);
        let primary = topology.shards[0].primary.addr().to_string();
        let good = yaml(&topology, &proxy, &ProxyOptions::default());
        assert!(good.contains(&format!("primary: {primary}\n")), "{good}");
        let bad = format!("{good}bogus_key: 1\n").replace(&primary, "127.0.0.1:99999");
        proxy.rewrite_config(&bad);

        let (status, body) = proxy.reload();
        assert_eq!(status, 422, "{body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
        let problems = body["problems"].as_array().expect("problems");
        let paths: BTreeSet<&str> = problems
            .iter()
            .map(|p| p["path"].as_str().expect("path"))
            .collect();
        assert_eq!(
            paths,
            BTreeSet::from(["bogus_key", "shards[0].primary"]),
            "{body}"
        );
        assert!(
            problems
                .iter()
                .all(|p| p["message"].as_str().is_some_and(|m| !m.is_empty())),
            "{body}"
        );

        // The old config keeps serving, old and new sessions alike.
        assert_eq!(count(&client, "SELECT 41::int8 + 1").await, 42);
        let fresh = proxy.connect(&topology).await;
        assert_eq!(count(&fresh, "SELECT 7::int8").await, 7);
        assert_eq!(proxy.config_version(), 1);
        assert_eq!(proxy.metric(REFUSED), Some(1.0));
        assert_eq!(proxy.metric(APPLIED).unwrap_or(0.0), 0.0);
        assert_eq!(proxy.metric("shardgate_config_version"), Some(1.0));
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn transaction_opened_before_a_reload_commits_after_it() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().build().expect("topology");
        let proxy = Proxy::start(&topology);
        let client = proxy.connect(&topology).await;
        client
            .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
            .await
            .expect("create");
        client.batch_execute("BEGIN").await.expect("begin");
        client
            .batch_execute("INSERT INTO t VALUES (1)")
            .await
            .expect("insert");
        let pid_before = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get::<_, i32>(0);

        // Shrink the pool below what is in use: the transaction keeps its connection.
        let version = reload_ok(&proxy, &yaml(&topology, &proxy, &with_pool_size(1)));
        assert_eq!(version, 2);

        let pid_after = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid in the same transaction after the reload")
            .get::<_, i32>(0);
        assert_eq!(
            pid_before, pid_after,
            "the transaction moved to another server"
        );
        client
            .batch_execute("INSERT INTO t VALUES (2)")
            .await
            .expect("insert after the reload");
        client.batch_execute("COMMIT").await.expect("commit");

        let other = proxy.connect(&topology).await;
        assert_eq!(count(&other, "SELECT count(*) FROM t").await, 2);
        assert_eq!(count(&client, "SELECT count(*) FROM t").await, 2);
        assert_eq!(proxy.config_version(), 2);
        assert_eq!(proxy.metric("shardgate_config_version"), Some(2.0));
        assert_eq!(proxy.metric(APPLIED), Some(1.0));
        let config = proxy.admin_json("/api/config");
        assert_eq!(config["config"]["pool"]["size"], 1, "{config}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn sighup_reloads() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().build().expect("topology");
        let proxy = Proxy::start(&topology);
        assert!(proxy.pid().is_some());
        proxy.rewrite_config(&yaml(&topology, &proxy, &with_pool_size(7)));
        proxy.sighup();
        let took = poll_until(Duration::from_secs(5), || async {
            proxy.config_version() == 2
        })
        .await;
        assert!(took.is_some(), "version still {}", proxy.config_version());
        let config = proxy.admin_json("/api/config");
        assert_eq!(config["config"]["pool"]["size"], 7, "{config}");
        let topo = proxy.admin_json("/api/topology");
        assert_eq!(topo["config_version"], 2, "{topo}");
        let client = proxy.connect(&topology).await;
        assert_eq!(count(&client, "SELECT 1::int8").await, 1);
    })
    .await
    .expect("test timed out");
}

/// Backend pids of the application's pool connections on the primary (not the lag
/// monitor's), read directly as postgres.
fn app_backend_pids(topology: &Topology) -> BTreeSet<i32> {
    let out = topology.shards[0]
        .primary
        .sql(
            "postgres",
            "SELECT pid FROM pg_stat_activity WHERE usename = 'app' \
             AND application_name <> 'shardgate-lag-monitor' ORDER BY pid",
        )
        .expect("pg_stat_activity");
    out.lines()
        .map(|l| l.trim().parse().expect("pid"))
        .collect()
}

/// Runs `n` transactions at once on the primary (BEGIN pins there) and returns the server
/// pids they ran on.
async fn concurrent_transaction_pids(
    proxy: &Proxy,
    topology: &Topology,
    n: usize,
) -> BTreeSet<i32> {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(proxy.connect(topology).await);
    }
    let mut pids = BTreeSet::new();
    for c in &clients {
        c.batch_execute("BEGIN").await.expect("begin");
        let pid: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        pids.insert(pid);
    }
    for c in &clients {
        c.batch_execute("COMMIT").await.expect("commit");
    }
    assert_eq!(
        pids.len(),
        n,
        "{n} open transactions share servers: {pids:?}"
    );
    pids
}

#[tokio::test]
async fn unrelated_reload_keeps_existing_server_connections() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().replicas(1).build().expect("topology");
        let options = |lag_ms: u32| ProxyOptions {
            pool_size: 4,
            extra_yaml: format!("routing:\n  max_replica_lag_ms: {lag_ms}\n"),
            ..ProxyOptions::default()
        };
        let proxy = Proxy::start_with(&topology, options(1000));
        // The pool holds at most 4 connections: 4 transactions at once use all of them.
        let before = concurrent_transaction_pids(&proxy, &topology, 4).await;
        assert_eq!(app_backend_pids(&topology), before);

        assert_eq!(
            reload_ok(&proxy, &yaml(&topology, &proxy, &options(5000))),
            2
        );
        let config = proxy.admin_json("/api/config");
        assert_eq!(
            config["config"]["routing"]["max_replica_lag_ms"], 5000,
            "{config}"
        );

        let after = concurrent_transaction_pids(&proxy, &topology, 4).await;
        assert_eq!(
            after, before,
            "server connections were replaced by the reload"
        );
        assert_eq!(app_backend_pids(&topology), before);
    })
    .await
    .expect("test timed out");
}

#[test]
fn reload_under_pgbench_load() {
    let topology = Topology::builder().replicas(1).build().expect("topology");
    // Config `i` differs from config `i - 1` in the lag bound when `i` is odd and in the
    // pool size when it is even.
    let options = |i: u32| ProxyOptions {
        pool_size: if (i / 2).is_multiple_of(2) { 10 } else { 20 },
        checkout_timeout_ms: 30_000,
        extra_yaml: format!(
            "routing:\n  max_replica_lag_bytes: {}\n  lag_check_interval_ms: 100\n",
            if i.div_ceil(2).is_multiple_of(2) {
                16_777_216
            } else {
                8_388_608
            }
        ),
        ..ProxyOptions::default()
    };
    let proxy = Proxy::start_with(&topology, options(0));
    let url = proxy.url(&topology);
    let (ok, _, err) = run_tool("pgbench", &["-i", "-s", "1", "-q", &url], TOOL_ENV);
    assert!(ok, "pgbench -i failed: {err}");

    let bench = {
        let url = url.clone();
        std::thread::spawn(move || {
            run_tool(
                "pgbench",
                &["-c", "32", "-j", "2", "-T", "20", "-n", &url],
                TOOL_ENV,
            )
        })
    };
    let started = Instant::now();
    let mut reloads = 0u32;
    // Stop before pgbench's last second, so every reload lands under load.
    while started.elapsed() < Duration::from_secs(19) && !bench.is_finished() {
        std::thread::sleep(Duration::from_secs(1));
        reloads += 1;
        let version = reload_ok(&proxy, &yaml(&topology, &proxy, &options(reloads)));
        assert_eq!(version, u64::from(reloads) + 1);
    }
    let (ok, out, err) = bench.join().expect("pgbench thread");
    assert!(ok, "pgbench failed: {out}\n{err}");
    assert!(
        out.contains("number of failed transactions: 0 "),
        "{out}\n{err}"
    );
    assert!(reloads >= 15, "only {reloads} reloads ran under load");
    assert_eq!(proxy.config_version(), u64::from(reloads) + 1);
    // Every TPC-B transaction ran exactly once.
    let (ok, out, err) = run_tool(
        "psql",
        &[
            "-X",
            "-At",
            "-d",
            &url,
            "-c",
            "SELECT (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT sum(delta) FROM pgbench_history)",
        ],
        TOOL_ENV,
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "t");
}

/// Replica addresses of shard 0 listed in /api/topology.
fn listed_replicas(proxy: &Proxy) -> Vec<String> {
    proxy
        .replica_nodes()
        .expect("topology")
        .iter()
        .map(|n| n["addr"].as_str().expect("addr").to_owned())
        .collect()
}

#[tokio::test]
async fn add_and_remove_a_replica() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().replicas(2).build().expect("topology");
        let [first, second] = [0, 1].map(|i| topology.shards[0].replicas[i].addr().to_string());
        let options = ProxyOptions {
            extra_yaml: "routing:\n  lag_check_interval_ms: 50\n  load_balance: round_robin\n"
                .to_owned(),
            ..ProxyOptions::default()
        };
        let (port, admin_port) = (free_port(), free_port());
        let both = Proxy::config_yaml(&topology, port, admin_port, &options);
        let both_line = format!("replicas: [{first}, {second}]");
        assert!(both.contains(&both_line), "{both}");
        let only_first = both.replace(&both_line, &format!("replicas: [{first}]"));
        let proxy = Proxy::start_yaml(&only_first, port, admin_port);
        wait_routable(&proxy, 1, Duration::from_secs(15)).await;
        assert_eq!(listed_replicas(&proxy), vec![first.clone()]);

        // Added: listed, checked by the lag monitor, then reads reach it.
        assert_eq!(reload_ok(&proxy, &both), 2);
        assert_eq!(listed_replicas(&proxy), vec![first.clone(), second.clone()]);
        wait_routable(&proxy, 2, Duration::from_secs(15)).await;
        let client = proxy.connect(&topology).await;
        let second_port = topology.shards[0].replicas[1].port();
        let mut seen = BTreeSet::new();
        for _ in 0..8 {
            seen.extend(ports(&client, "SELECT inet_server_port() AS port").await);
        }
        let replica_ports: BTreeSet<u16> = topology.shards[0]
            .replicas
            .iter()
            .map(|r| r.port())
            .collect();
        assert_eq!(
            seen, replica_ports,
            "round-robin reads did not use both replicas"
        );

        // Removed: gone from the topology, and reads keep working elsewhere.
        assert_eq!(reload_ok(&proxy, &only_first), 3);
        assert_eq!(listed_replicas(&proxy), vec![first.clone()]);
        let mut after = BTreeSet::new();
        for _ in 0..8 {
            after.extend(ports(&client, "SELECT inet_server_port() AS port").await);
        }
        assert!(
            !after.contains(&second_port),
            "removed replica still read: {after:?}"
        );
        let fresh = proxy.connect(&topology).await;
        assert_eq!(count(&fresh, "SELECT 3::int8").await, 3);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_user_added_by_reload_can_log_in() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().build().expect("topology");
        topology.shards[0]
            .primary
            .sql("app", "CREATE ROLE second LOGIN PASSWORD 'second-secret'")
            .expect("create role");
        let proxy = Proxy::start(&topology);
        let conn = format!(
            "host=127.0.0.1 port={} user=second password=second-secret dbname={}",
            proxy.port,
            topology.database()
        );
        let Err(err) = support::connect(&conn).await else {
            panic!("unknown user logged in before the reload");
        };
        assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");

        let options = ProxyOptions {
            extra_users: "  - name: second\n    password: second-secret\n".to_owned(),
            ..ProxyOptions::default()
        };
        assert_eq!(reload_ok(&proxy, &yaml(&topology, &proxy, &options)), 2);
        let client = support::connect(&conn)
            .await
            .expect("login after the reload");
        let user: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .expect("query")
            .get(0);
        assert_eq!(user, "second");
        // The first user is unaffected.
        let app = proxy.connect(&topology).await;
        assert_eq!(count(&app, "SELECT 1::int8").await, 1);
    })
    .await
    .expect("test timed out");
}

fn sha256sum(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("hash")
        .to_owned()
}

#[test]
fn api_config_redacts_passwords_and_hashes_the_file() {
    let topology = Topology::builder().build().expect("topology");
    let proxy = Proxy::start(&topology);
    let (status, body) = proxy.admin_get("/api/config");
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains(topology.password()),
        "password leaked: {body}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["config_version"], 1);
    assert_eq!(v["config"]["users"][0]["name"], topology.user(), "{v}");
    assert_eq!(v["config"]["users"][0]["password"], "<redacted>", "{v}");
    assert_eq!(
        v["path"].as_str(),
        Some(proxy.config_path.to_str().expect("utf-8"))
    );
    assert_eq!(
        v["file_sha256"].as_str(),
        Some(sha256sum(&proxy.config_path).as_str())
    );
    let loaded_at = v["loaded_at"].as_str().expect("loaded_at");
    // RFC 3339: 2024-01-02T03:04:05[.fff](Z|+hh:mm)
    let b = loaded_at.as_bytes();
    assert!(
        b.len() >= 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && (loaded_at.ends_with('Z') || b[b.len() - 6] == b'+' || b[b.len() - 6] == b'-'),
        "not RFC 3339: {loaded_at}"
    );

    // A reload changes the hash to the new file's.
    let options = ProxyOptions {
        extra_users: "  - name: other\n    password: other-secret\n".to_owned(),
        ..ProxyOptions::default()
    };
    let before = v["file_sha256"].clone();
    reload_ok(&proxy, &yaml(&topology, &proxy, &options));
    let (_, body) = proxy.admin_get("/api/config");
    assert!(!body.contains("other-secret"), "password leaked: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["config_version"], 2);
    assert_eq!(v["config"]["users"][1]["password"], "<redacted>", "{v}");
    assert_ne!(v["file_sha256"], before);
    assert_eq!(
        v["file_sha256"].as_str(),
        Some(sha256sum(&proxy.config_path).as_str())
    );
}

#[tokio::test]
async fn listen_workers_and_busy_poll_changes_require_a_restart_and_the_rest_applies() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().build().expect("topology");
        let proxy = Proxy::start(&topology);
        let new_port = free_port();
        // A thread count other than the one running (one per core by default).
        let workers = std::thread::available_parallelism().map_or(1, usize::from) + 1;
        let text = format!(
            "workers: {workers}\nbusy_poll_us: 0\n{}",
            Proxy::config_yaml(&topology, new_port, proxy.admin_port, &with_pool_size(5))
        );
        proxy.rewrite_config(&text);
        let (status, body) = proxy.reload();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["config_version"], 2, "{body}");
        let restart: Vec<&str> = body["restart_required"]
            .as_array()
            .expect("restart_required")
            .iter()
            .map(|s| s.as_str().expect("string"))
            .collect();
        assert_eq!(restart, vec!["listen", "workers", "busy_poll_us"], "{body}");
        // The rest of the file is in force.
        let config = proxy.admin_json("/api/config");
        assert_eq!(config["config"]["pool"]["size"], 5, "{config}");

        // Still serving on the old port, not on the new one.
        let client = proxy.connect(&topology).await;
        assert_eq!(count(&client, "SELECT 2::int8").await, 2);
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", new_port)).is_err(),
            "shardgate started listening on the new port without a restart"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn file_watch_reloads_changes_and_refuses_bad_files() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().build().expect("topology");
        let options = |pool_size| ProxyOptions {
            pool_size,
            extra_yaml: "reload:\n  watch: true\n".to_owned(),
            ..ProxyOptions::default()
        };
        let proxy = Proxy::start_with(&topology, options(10));
        assert_eq!(proxy.config_version(), 1);
        proxy.rewrite_config(&yaml(&topology, &proxy, &options(12)));
        let took = poll_until(Duration::from_secs(3), || async {
            proxy.config_version() == 2
        })
        .await;
        assert!(took.is_some(), "watch did not reload within 3 s");
        let config = proxy.admin_json("/api/config");
        assert_eq!(config["config"]["pool"]["size"], 12, "{config}");
        let refused_before = proxy.metric(REFUSED).unwrap_or(0.0);

        proxy.rewrite_config(&format!(
            "{}pool_sise: 3\n",
            yaml(&topology, &proxy, &options(12))
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(proxy.config_version(), 2);
        let refused = proxy.metric(REFUSED).unwrap_or(0.0);
        assert!(
            refused > refused_before,
            "refused count {refused_before} -> {refused}"
        );
        // Refused once, not on every poll.
        assert_eq!(refused, refused_before + 1.0);
        let client = proxy.connect(&topology).await;
        assert_eq!(count(&client, "SELECT 5::int8").await, 5);
    })
    .await
    .expect("test timed out");
}
