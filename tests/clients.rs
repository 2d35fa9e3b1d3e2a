//! Real client programs through shardgate: psql (scripts, \copy, errors), pgbench in
//! every query mode on a small pool, and session pooling (LISTEN/NOTIFY, lasting SETs).

mod support;

use std::time::Duration;

use shardgate_testkit::Topology;
use support::{run_tool, Proxy, ProxyOptions};
use tokio::time::timeout;
use tokio_postgres::AsyncMessage;

/// psql/pgbench must not wait forever on a broken proxy.
const TOOL_ENV: &[(&str, &str)] = &[("PGCONNECT_TIMEOUT", "10"), ("PGOPTIONS", "")];

#[test]
fn psql_command_and_script() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = Proxy::start(&topo);
    let url = proxy.url(&topo);

    let (ok, out, err) = run_tool(
        "psql",
        &[
            "-X",
            "-At",
            "-d",
            &url,
            "-c",
            "SELECT 1 AS a; SELECT 'two' AS b",
        ],
        TOOL_ENV,
    );
    assert!(ok, "psql -c failed: {err}");
    assert_eq!(out, "1\ntwo\n");

    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.csv");
    let script = dir.path().join("script.sql");
    let rows: String = (3..=1002).map(|i| format!("{i},name {i}\n")).collect();
    std::fs::write(&input, rows).expect("write csv");
    std::fs::write(
        &script,
        format!(
            "BEGIN;\n\
             CREATE TABLE people (id int primary key, name text not null);\n\
             INSERT INTO people VALUES (1, 'ann'), (2, 'bob');\n\
             COMMIT;\n\
             \\copy people FROM '{input}' WITH (FORMAT csv)\n\
             SELECT count(*), sum(id) FROM people;\n\
             SELECT 1/0;\n\
             BEGIN;\n\
             INSERT INTO people VALUES (5000, 'doomed');\n\
             INSERT INTO people VALUES (1, 'duplicate');\n\
             COMMIT;\n\
             \\copy (SELECT id, name FROM people ORDER BY id) TO '{output}' WITH (FORMAT csv)\n\
             SELECT 'still here', count(*) FROM people;\n",
            input = input.display(),
            output = output.display(),
        ),
    )
    .expect("write script");
    let script_path = script.to_string_lossy().into_owned();
    let (ok, out, err) = run_tool(
        "psql",
        &[
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=0",
            "-d",
            &url,
            "-f",
            &script_path,
        ],
        TOOL_ENV,
    );
    // psql exits 0 without ON_ERROR_STOP even though statements failed.
    assert!(ok, "psql -f failed: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            "BEGIN",
            "CREATE TABLE",
            "INSERT 0 2",
            "COMMIT",
            "COPY 1000",
            "1002|502503",
            "BEGIN",
            "INSERT 0 1",
            "ROLLBACK",
            "COPY 1002",
            "still here|1002",
        ],
        "stderr: {err}"
    );
    assert!(err.contains("division by zero"), "{err}");
    assert!(err.contains("duplicate key value"), "{err}");
    let copied = std::fs::read_to_string(&output).expect("out.csv");
    let copied: Vec<&str> = copied.lines().collect();
    assert_eq!(copied.len(), 1002);
    assert_eq!(copied[0], "1,ann");
    assert_eq!(copied[1001], "1002,name 1002");
}

#[test]
fn pgbench_in_every_query_mode() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = Proxy::start_with(
        &topo,
        ProxyOptions {
            pool_size: 3,
            checkout_timeout_ms: 20_000,
            ..ProxyOptions::default()
        },
    );
    let url = proxy.url(&topo);
    let (ok, _, err) = run_tool("pgbench", &["-i", "-s", "1", "-q", &url], TOOL_ENV);
    assert!(ok, "pgbench -i failed: {err}");
    for mode in ["simple", "extended", "prepared"] {
        let (ok, out, err) = run_tool(
            "pgbench",
            &["-M", mode, "-c", "8", "-j", "2", "-t", "50", "-n", &url],
            TOOL_ENV,
        );
        assert!(ok, "pgbench -M {mode} failed: {out}\n{err}");
        assert!(
            out.contains("number of transactions actually processed: 400/400"),
            "-M {mode}: {out}"
        );
        assert!(
            out.contains("number of failed transactions: 0 "),
            "-M {mode}: {out}"
        );
    }
    // The branch balances add up: every transaction really ran once.
    let (ok, out, err) = run_tool(
        "psql",
        &[
            "-X",
            "-At",
            "-d",
            &url,
            "-c",
            "SELECT count(*), (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT sum(delta) FROM pgbench_history) FROM pgbench_history",
        ],
        TOOL_ENV,
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "1200|t");
}

fn session_mode(topo: &Topology) -> Proxy {
    Proxy::start_with(
        topo,
        ProxyOptions {
            pool_mode: "session",
            pool_size: 4,
            ..ProxyOptions::default()
        },
    )
}

#[tokio::test]
async fn session_mode_listen_notify() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = session_mode(&topo);
    let (listener, mut messages) = support::connect_with_messages(&proxy.conn_str(&topo))
        .await
        .expect("listener");
    listener.batch_execute("LISTEN jobs").await.expect("listen");
    let sender = proxy.connect(&topo).await;
    sender
        .batch_execute("NOTIFY jobs, 'first'; SELECT pg_notify('jobs', 'second')")
        .await
        .expect("notify");
    let mut payloads = Vec::new();
    while payloads.len() < 2 {
        match timeout(Duration::from_secs(5), messages.recv()).await {
            Ok(Some(AsyncMessage::Notification(n))) => {
                assert_eq!(n.channel(), "jobs");
                payloads.push(n.payload().to_owned());
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("listener connection closed"),
            Err(_) => panic!("notification not delivered; got {payloads:?}"),
        }
    }
    assert_eq!(payloads, vec!["first", "second"]);
    // Also delivered while the listener is idle between its own queries.
    sender
        .batch_execute("NOTIFY jobs, 'third'")
        .await
        .expect("notify");
    loop {
        match timeout(Duration::from_secs(5), messages.recv()).await {
            Ok(Some(AsyncMessage::Notification(n))) => {
                assert_eq!(n.payload(), "third");
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("third notification not delivered: {other:?}"),
        }
    }
}

#[tokio::test]
async fn session_mode_keeps_sets_across_transactions() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = session_mode(&topo);
    let a = proxy.connect(&topo).await;
    let b = proxy.connect(&topo).await;
    a.batch_execute("SET statement_timeout = '9s'; CREATE TEMP TABLE scratch (x int)")
        .await
        .expect("set");
    for i in 0..3 {
        a.batch_execute(&format!("BEGIN; INSERT INTO scratch VALUES ({i}); COMMIT"))
            .await
            .expect("transaction");
    }
    let row = a
        .query_one("SHOW statement_timeout", &[])
        .await
        .expect("show");
    assert_eq!(row.get::<_, String>(0), "9s");
    // Session state such as temp tables lives as long as the client.
    let row = a
        .query_one("SELECT count(*) FROM scratch", &[])
        .await
        .expect("temp table");
    assert_eq!(row.get::<_, i64>(0), 3);
    let row = b
        .query_one("SHOW statement_timeout", &[])
        .await
        .expect("show");
    assert_eq!(row.get::<_, String>(0), "0");
    // A client that leaves does not hand its state to the next one on its server.
    drop(a);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let c = proxy.connect(&topo).await;
        let row = c
            .query_one("SHOW statement_timeout", &[])
            .await
            .expect("show");
        assert_eq!(row.get::<_, String>(0), "0");
        let err = c
            .query("SELECT * FROM scratch", &[])
            .await
            .expect_err("no temp table");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
        );
        clients.push(c);
    }
}
