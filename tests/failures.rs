//! Failures around the proxy: a dead or crashed backend, an exhausted pool, too many
//! clients, clients vanishing mid-transaction or mid-COPY, and a graceful SIGTERM.

mod support;

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use shardgate_testkit::{free_port, Topology};
use support::{connect, Proxy, ProxyOptions};
use tokio::time::timeout;
use tokio_postgres::error::SqlState;

const WAIT: Duration = Duration::from_secs(10);

/// The SQLSTATE of a failed call, if the server (or proxy) sent one.
fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(SqlState::code)
}

fn assert_connection_class(e: &tokio_postgres::Error) {
    let c = code(e).unwrap_or_else(|| panic!("no SQLSTATE in {e:?}"));
    assert!(c.starts_with("08"), "expected an 08xxx error, got {c}: {e}");
}

/// Connects keeping the connection task's handle, so a test can drop the socket abruptly
/// (no Terminate), as a crashed client would.
async fn connect_abortable(
    conn_str: &str,
) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let (client, connection) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, task)
}

/// Polls the primary until no `app` backend is idle in transaction (or active in COPY).
fn wait_no_open_app_transaction(topology: &Topology) {
    let primary = &topology.shards[0].primary;
    let deadline = Instant::now() + WAIT;
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' \
               AND (state LIKE 'idle in transaction%' OR query ILIKE 'COPY%' AND state = 'active')";
    loop {
        let open = primary.sql("postgres", sql).expect("pg_stat_activity");
        if open == "0" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} app backend(s) still in a transaction"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn dead_backend_at_startup_gives_08xxx_and_proxy_survives() {
    let port = free_port();
    let admin_port = free_port();
    let dead = free_port();
    let yaml = format!(
        "listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin_port}\ndatabase: app\n\
         users: [{{name: app, password: app-secret}}]\n\
         pool: {{checkout_timeout_ms: 1000}}\n\
         shards: [{{name: s0, primary: 127.0.0.1:{dead}}}]\n"
    );
    let proxy = Proxy::start_yaml(&yaml, port, admin_port);
    let conn_str = format!("host=127.0.0.1 port={port} user=app password=app-secret dbname=app");
    // Twice: the first attempt connects and fails, the second meets the reconnect backoff.
    for _ in 0..2 {
        let err = timeout(WAIT, connect(&conn_str))
            .await
            .expect("connect attempt hung")
            .expect_err("connected to a proxy whose backend is dead");
        assert_connection_class(&err);
        let db = err.as_db_error().expect("an ErrorResponse");
        assert!(
            db.message().contains(&format!("127.0.0.1:{dead}")),
            "the message should name the unreachable server: {}",
            db.message()
        );
    }
    let (status, body) = proxy.admin_get("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok"));
}

#[tokio::test]
async fn primary_crash_fails_idle_clients_then_recovers_after_restart() {
    let topology = Topology::builder().build().expect("topology");
    let proxy = Proxy::start(&topology);
    let a = proxy.connect(&topology).await;
    let b = proxy.connect(&topology).await;
    for c in [&a, &b] {
        c.simple_query("SELECT 1").await.expect("before the crash");
    }
    topology.shards[0].primary.kill().expect("kill primary");
    for c in [&a, &b] {
        let err = timeout(WAIT, c.simple_query("SELECT 1"))
            .await
            .expect("query against a dead primary hung")
            .expect_err("query succeeded against a dead primary");
        assert_connection_class(&err);
    }
    topology.shards[0].primary.start().expect("restart primary");
    // Backoff caps at 2 s; give it a few seconds, bounded.
    let deadline = Instant::now() + WAIT;
    let mut fresh = None;
    while fresh.is_none() {
        assert!(
            Instant::now() < deadline,
            "no new client could connect after the restart"
        );
        if let Ok(Ok(c)) =
            timeout(Duration::from_secs(3), connect(&proxy.conn_str(&topology))).await
        {
            if c.simple_query("SELECT 1").await.is_ok() {
                fresh = Some(c);
                continue;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = fresh.expect("loop exits with a client");
    let row = fresh
        .query_one("SELECT 40 + 2", &[])
        .await
        .expect("new client after restart");
    assert_eq!(row.get::<_, i32>(0), 42);
    // The old clients' sessions survived the failed checkout: they work again too.
    for c in [&a, &b] {
        let row = timeout(WAIT, c.query_one("SELECT 1", &[]))
            .await
            .expect("hung")
            .expect("old client after restart");
        assert_eq!(row.get::<_, i32>(0), 1);
    }
}

#[tokio::test]
async fn checkout_timeout_gives_53300_then_recovers() {
    let topology = Topology::builder().build().expect("topology");
    let options = ProxyOptions {
        pool_size: 1,
        // Also bounds the first login's connect to PostgreSQL, which a loaded machine (a
        // parallel test run) can take longer than a few hundred ms to serve.
        checkout_timeout_ms: 1000,
        ..Default::default()
    };
    let proxy = Proxy::start_with(&topology, options);
    let a = proxy.connect(&topology).await;
    let b = proxy.connect(&topology).await;
    a.batch_execute("BEGIN; SELECT 1").await.expect("A begins");
    let started = Instant::now();
    let err = timeout(WAIT, b.simple_query("SELECT 2"))
        .await
        .expect("B hung instead of timing out")
        .expect_err("B got a server while A holds the only one");
    let waited = started.elapsed();
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(3000),
        "checkout should fail after ~1000 ms, took {waited:?}"
    );
    a.batch_execute("COMMIT").await.expect("A commits");
    let row = timeout(WAIT, b.query_one("SELECT 2", &[]))
        .await
        .expect("hung")
        .expect("B after A committed");
    assert_eq!(row.get::<_, i32>(0), 2);
}

#[tokio::test]
async fn fourth_client_over_max_client_connections_is_refused() {
    let topology = Topology::builder().build().expect("topology");
    let options = ProxyOptions {
        max_client_connections: 3,
        ..Default::default()
    };
    let proxy = Proxy::start_with(&topology, options);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(proxy.connect(&topology).await);
    }
    let err = timeout(WAIT, connect(&proxy.conn_str(&topology)))
        .await
        .expect("hung")
        .expect_err("a 4th client was accepted");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err:?}");
    assert_eq!(
        err.as_db_error().map(|d| d.message()),
        Some("sorry, too many clients already")
    );
    for c in &clients {
        c.simple_query("SELECT 1")
            .await
            .expect("accepted clients keep working");
    }
    // A freed slot is usable again (released when the session task ends: poll briefly).
    drop(clients.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        match connect(&proxy.conn_str(&topology)).await {
            Ok(c) => {
                c.simple_query("SELECT 1")
                    .await
                    .expect("client in the freed slot");
                break;
            }
            Err(e) if e.code() == Some(&SqlState::TOO_MANY_CONNECTIONS) => {
                assert!(Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
}

/// Client vanishes inside a transaction (`abrupt`: socket dropped without Terminate).
async fn disconnect_mid_transaction(abrupt: bool) {
    let topology = Topology::builder().build().expect("topology");
    topology.shards[0]
        .primary
        .sql("app", "CREATE TABLE t (id int); ALTER TABLE t OWNER TO app")
        .expect("create table");
    let options = ProxyOptions {
        pool_size: 1,
        checkout_timeout_ms: 3000,
        ..Default::default()
    };
    let proxy = Proxy::start_with(&topology, options);
    let (a, task) = connect_abortable(&proxy.conn_str(&topology)).await;
    a.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .expect("insert");
    if abrupt {
        task.abort();
        let _ = task.await;
        drop(a);
    } else {
        drop(a);
        let _ = timeout(WAIT, task)
            .await
            .expect("connection task did not end");
    }
    let b = proxy.connect(&topology).await;
    let row = timeout(
        WAIT,
        b.query_one(
            "SELECT (SELECT count(*) FROM t), txid_current_if_assigned() IS NULL",
            &[],
        ),
    )
    .await
    .expect("next client hung: the only server connection was not freed")
    .expect("next client");
    assert_eq!(row.get::<_, i64>(0), 0, "the abandoned insert is visible");
    assert!(
        row.get::<_, bool>(1),
        "the next client inherited a transaction id"
    );
    // A simple query starts its own transaction: now() is this statement's start, not an
    // older transaction's.
    let fresh = support::first_cell(&b, "SELECT now() = statement_timestamp()").await;
    assert_eq!(
        fresh.as_deref(),
        Some("t"),
        "the next client runs inside an old transaction"
    );
    wait_no_open_app_transaction(&topology);
}

#[tokio::test]
async fn client_terminate_mid_transaction_rolls_back() {
    disconnect_mid_transaction(false).await;
}

#[tokio::test]
async fn client_crash_mid_transaction_rolls_back() {
    disconnect_mid_transaction(true).await;
}

#[tokio::test]
async fn client_crash_mid_copy_lands_no_rows() {
    let topology = Topology::builder().build().expect("topology");
    topology.shards[0]
        .primary
        .sql("app", "CREATE TABLE t (id int); ALTER TABLE t OWNER TO app")
        .expect("create table");
    let options = ProxyOptions {
        pool_size: 1,
        checkout_timeout_ms: 3000,
        ..Default::default()
    };
    let proxy = Proxy::start_with(&topology, options);
    let (a, task) = connect_abortable(&proxy.conn_str(&topology)).await;
    let sink = a
        .copy_in::<_, bytes_chunk::Chunk>("COPY t FROM STDIN")
        .await
        .expect("copy in");
    let mut sink = Box::pin(sink);
    for i in 0..100 {
        sink.send(bytes_chunk::Chunk(format!("{i}\n").into_bytes()))
            .await
            .expect("copy data");
    }
    sink.flush().await.expect("flush");
    // Let the connection task put the rows on the wire, then vanish without CopyDone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    task.abort();
    let _ = task.await;
    drop(sink);
    drop(a);
    let b = proxy.connect(&topology).await;
    let row = timeout(WAIT, b.query_one("SELECT count(*) FROM t", &[]))
        .await
        .expect("next client hung: the only server connection was not freed")
        .expect("next client");
    assert_eq!(row.get::<_, i64>(0), 0, "rows of an unfinished COPY landed");
    wait_no_open_app_transaction(&topology);
    // And a complete COPY through the same pool still works.
    let sink = b
        .copy_in::<_, bytes_chunk::Chunk>("COPY t FROM STDIN")
        .await
        .expect("copy in");
    let mut sink = Box::pin(sink);
    sink.send(bytes_chunk::Chunk(b"1\n2\n".to_vec()))
        .await
        .expect("copy data");
    assert_eq!(sink.as_mut().finish().await.expect("finish"), 2);
}

/// `copy_in` wants a `bytes::Buf`; Vec<u8> is not one, so wrap it.
mod bytes_chunk {
    pub struct Chunk(pub Vec<u8>);

    impl bytes::Buf for Chunk {
        fn remaining(&self) -> usize {
            self.0.len()
        }
        fn chunk(&self) -> &[u8] {
            &self.0
        }
        fn advance(&mut self, n: usize) {
            self.0.drain(..n);
        }
    }
}

#[tokio::test]
async fn sigterm_drains_open_transaction_refuses_new_clients_and_exits_0() {
    let topology = Topology::builder().build().expect("topology");
    topology.shards[0]
        .primary
        .sql("app", "CREATE TABLE t (id int); ALTER TABLE t OWNER TO app")
        .expect("create table");
    let mut proxy = Proxy::start(&topology);
    let a = proxy.connect(&topology).await;
    let idle = proxy.connect(&topology).await;
    idle.simple_query("SELECT 1")
        .await
        .expect("idle client works");
    a.batch_execute("BEGIN; INSERT INTO t VALUES (7)")
        .await
        .expect("insert");
    proxy.sigterm();
    // New connections are refused once the signal is handled.
    let deadline = Instant::now() + WAIT;
    loop {
        let attempt = timeout(Duration::from_secs(2), connect(&proxy.conn_str(&topology))).await;
        match attempt {
            Ok(Err(e)) if e.as_db_error().is_none() => break, // TCP refused / closed
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "new clients still accepted after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let err = timeout(WAIT, idle.simple_query("SELECT 1"))
        .await
        .expect("idle client hung")
        .expect_err("an idle client keeps working after SIGTERM");
    assert!(
        err.code() == Some(&SqlState::ADMIN_SHUTDOWN) || err.is_closed(),
        "idle client should be told 57P01 or closed: {err:?}"
    );
    // The open transaction finishes.
    a.batch_execute("INSERT INTO t VALUES (8); COMMIT")
        .await
        .expect("commit during drain");
    let committed = topology.shards[0]
        .primary
        .sql("app", "SELECT string_agg(id::text, ',' ORDER BY id) FROM t")
        .expect("read back");
    assert_eq!(committed, "7,8");
    drop(a);
    drop(idle);
    let exit = tokio::task::spawn_blocking(move || proxy.wait_exit(WAIT))
        .await
        .expect("join");
    assert_eq!(exit, Some(true), "shardgate should exit 0 after draining");
}

/// A backend ended by `pg_terminate_backend` while it runs a client's query: the client reads
/// the server's own FATAL 57P01 and then the connection closes, as on a direct connection,
/// with nothing of shardgate's after it (it once added an 08006). Other clients go on.
#[tokio::test]
async fn a_terminated_backend_s_fatal_is_the_client_s_last_message() {
    use support::raw::{error_field, login_trust, query};
    let topology = Topology::builder().build().expect("topology");
    let proxy = support::start_trust(&topology, ProxyOptions::default());
    let direct = connect(&support::direct_conn_str(
        &topology,
        &topology.shards[0].primary,
    ))
    .await
    .expect("direct");
    let mut raw = login_trust(proxy.addr(), topology.user(), topology.database()).await;
    raw.send(&query("SELECT 'sg_doomed' FROM pg_sleep(30)"))
        .await;
    assert!(
        support::terminate_backends_running(&direct, "sg_doomed", WAIT).await,
        "the query never started"
    );
    let seen = raw.closed_within(WAIT).await.expect("closed");
    let errors: Vec<_> = seen
        .iter()
        .filter(|(tag, _)| *tag == b'E')
        .map(|(_, body)| error_field(body, b'C'))
        .collect();
    assert_eq!(errors, [Some("57P01".to_owned())], "{seen:?}");
    assert_eq!(seen.last().map(|m| m.0), Some(b'E'), "{seen:?}");
    let other = proxy.connect(&topology).await;
    other.simple_query("SELECT 1").await.expect("others go on");
}
