//! Backends reached through their Unix-domain socket (`primary: /dir:port`, as libpq spells a
//! socket directory): queries, read/write splitting with the lag monitor, cancel requests and a
//! single-threaded runtime (`workers: 1`), all against real PostgreSQL.

mod support;

use std::time::{Duration, Instant};

use shardgate_testkit::{free_port, Topology};
use support::{wait_routable, Proxy, ProxyOptions};

/// A config whose nodes are addressed by socket directory, not TCP, with one worker thread.
fn unix_yaml(topology: &Topology, port: u16, admin_port: u16) -> String {
    let tcp = Proxy::config_yaml(topology, port, admin_port, &ProxyOptions::default());
    format!("workers: 1\n{}", topology.over_unix_sockets(&tcp))
}

#[tokio::test]
async fn queries_split_and_cancel_over_unix_sockets() {
    let topology = Topology::builder().replicas(1).build().expect("topology");
    let (port, admin_port) = (free_port(), free_port());
    let proxy = Proxy::start_yaml(&unix_yaml(&topology, port, admin_port), port, admin_port);
    // The lag monitor reaches the replica over its socket too.
    wait_routable(&proxy, 1, Duration::from_secs(15)).await;

    let client = proxy.connect(&topology).await;
    client
        .batch_execute("CREATE TABLE u (id int PRIMARY KEY, v text)")
        .await
        .expect("create");
    client
        .execute("INSERT INTO u VALUES ($1, $2)", &[&1i32, &"one"])
        .await
        .expect("insert");
    // The session's own write is visible at once (read-your-writes), wherever the read goes.
    let v: String = client
        .query_one("SELECT v FROM u WHERE id = $1", &[&1i32])
        .await
        .expect("read back")
        .get(0);
    assert_eq!(v, "one");
    // Over a Unix socket the server has no TCP address.
    let addr: Option<String> = client
        .query_one("SELECT inet_server_addr()::text", &[])
        .await
        .expect("server addr")
        .get(0);
    assert_eq!(addr, None);

    // Reads go to the replica once it has the session's writes.
    topology
        .wait_replicas_caught_up(Duration::from_secs(10))
        .expect("caught up");
    let fresh = proxy.connect(&topology).await;
    let on_replica: bool = fresh
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("read")
        .get(0);
    assert!(
        on_replica,
        "a read from a fresh session goes to the replica"
    );

    // A cancel request is forwarded over the socket to the server running the query.
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move {
        let r = client.simple_query("SELECT pg_sleep(30)").await;
        (r, client)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("send cancel");
    let (result, client) = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("cancelled in time")
        .expect("join");
    let err = result.expect_err("the sleep is cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let n: i64 = client
        .query_one("SELECT count(*) FROM u", &[])
        .await
        .expect("session usable after cancel")
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn a_missing_socket_is_a_connection_error_not_a_hang() {
    let topology = Topology::builder().build().expect("topology");
    let (port, admin_port) = (free_port(), free_port());
    let yaml = unix_yaml(&topology, port, admin_port);
    let proxy = Proxy::start_yaml(&yaml, port, admin_port);
    topology.shards[0].primary.stop().expect("stop primary");
    let started = Instant::now();
    let err = match support::connect(&proxy.conn_str(&topology)).await {
        Ok(client) => client
            .simple_query("SELECT 1")
            .await
            .expect_err("no server behind the socket"),
        Err(e) => e,
    };
    assert!(started.elapsed() < Duration::from_secs(10));
    let code = err.code().map(|c| c.code().to_owned());
    assert!(
        matches!(
            code.as_deref(),
            Some("08006") | Some("08001") | Some("57P01")
        ),
        "{err} ({code:?})"
    );
}
