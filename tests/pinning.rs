//! Session state that outlives a transaction, in transaction pooling: a client that creates a
//! temporary table, takes a session-level advisory lock, LISTENs, or sets a setting with
//! `set_config(..., false)` keeps its server connection until it disconnects. It sees its own
//! state in every later transaction, as on a server, and no other client ever sees it: the
//! connection is closed when it leaves, never handed to anyone else. The transaction-scoped forms
//! pin nothing. Against real PostgreSQL 15.

mod support;

use std::time::Duration;

use shardgate_testkit::Topology;
use support::raw::{extended, login_trust, message, query, tags};
use support::{poll_until, Proxy, ProxyOptions};
use tokio::time::timeout;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const PINNED: &str = "shardgate_pinned_sessions";

async fn text(c: &Client, sql: &str) -> Option<String> {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

async fn flag(c: &Client, sql: &str) -> bool {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Asserts that `c` sees none of the pinned client's state.
async fn sees_nothing_of_the_pinned_client(c: &Client) {
    assert_eq!(
        text(c, "SHOW search_path").await.as_deref(),
        Some("\"$user\", public")
    );
    assert_eq!(
        text(c, "SELECT to_regclass('pg_temp.mine')::text").await,
        None,
        "another client's temporary table is visible"
    );
    assert!(
        !flag(
            c,
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
             AND pid = pg_backend_pid())"
        )
        .await,
        "another client's advisory lock is held by this server connection"
    );
    assert!(
        !flag(c, "SELECT EXISTS (SELECT 1 FROM pg_listening_channels())").await,
        "another client's LISTEN is on this server connection"
    );
    assert_eq!(
        text(c, "SELECT current_setting('app.tenant', true)").await,
        None,
        "another client's set_config is visible"
    );
}

/// A pool of one server connection, and a short wait for it.
fn one_connection() -> ProxyOptions {
    ProxyOptions {
        pool_size: 1,
        checkout_timeout_ms: 1000,
        ..ProxyOptions::default()
    }
}

/// Asserts that `sql` is refused with 0A000, a message with each of `message` and a hint
/// with `hint`.
async fn refused(c: &Client, sql: &str, message: &[&str], hint: &str) {
    let err = c.batch_execute(sql).await.expect_err(sql);
    assert_eq!(
        err.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{sql}: {err:?}"
    );
    let db = err.as_db_error().expect("server-style error");
    assert!(
        message.iter().all(|m| db.message().contains(m))
            && db.hint().is_some_and(|h| h.contains(hint)),
        "{sql}: {db:?}"
    );
}

/// A primary and one replica, and a proxy started by `start` with a fast lag monitor, once the
/// replica is routable.
async fn with_a_replica(start: fn(&Topology, ProxyOptions) -> Proxy) -> (Topology, Proxy) {
    let topology = Topology::builder().replicas(1).build().expect("topology");
    let proxy = start(
        &topology,
        ProxyOptions {
            extra_yaml: "routing:\n  lag_check_interval_ms: 100\n".to_owned(),
            ..ProxyOptions::default()
        },
    );
    support::wait_routable(&proxy, 1, Duration::from_secs(15)).await;
    (topology, proxy)
}

/// A primary with the dblink extension.
fn with_dblink() -> Topology {
    let topology = Topology::builder().build().expect("topology");
    topology.shards[0]
        .primary
        .sql("app", "CREATE EXTENSION dblink")
        .expect("dblink");
    topology
}

/// Opens a dblink connection named `mine` back to the primary.
fn dblink_connect(topology: &Topology) -> String {
    format!(
        "SELECT dblink_connect('mine', 'host=127.0.0.1 port={} dbname={} user={} password={}')",
        topology.shards[0].primary.port(),
        topology.database(),
        topology.user(),
        topology.password()
    )
}

async fn wait_pinned(proxy: &Proxy, n: f64) {
    let reached = poll_until(Duration::from_secs(10), || async {
        proxy.metric(PINNED) == Some(n)
    })
    .await;
    assert!(
        reached.is_some(),
        "{PINNED} stayed at {:?}, expected {n}",
        proxy.metric(PINNED)
    );
}

#[tokio::test]
async fn session_state_stays_with_its_client_and_never_reaches_another() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().build().expect("topology");
        let proxy = Proxy::start_with(
            &topology,
            ProxyOptions {
                pool_size: 2,
                ..ProxyOptions::default()
            },
        );
        let admin = proxy.connect(&topology).await;
        admin
            .batch_execute("CREATE SCHEMA IF NOT EXISTS pinned_schema")
            .await
            .expect("schema");
        assert_eq!(proxy.metric(PINNED), Some(0.0));

        let a = proxy.connect(&topology).await;
        a.batch_execute("CREATE TEMP TABLE mine (x int); INSERT INTO mine VALUES (0)")
            .await
            .expect("temp table");
        a.batch_execute(
            "SELECT set_config('search_path', 'pinned_schema, public', false); \
             SELECT set_config('app.tenant', 'acme', false)",
        )
        .await
        .expect("set_config");
        a.batch_execute("SELECT pg_advisory_lock(4242)")
            .await
            .expect("advisory lock");
        a.batch_execute("LISTEN chan_a").await.expect("listen");
        wait_pinned(&proxy, 1.0).await;

        // The pinned client sees its own state in every later transaction.
        for i in 1..=5 {
            a.batch_execute(&format!("BEGIN; INSERT INTO mine VALUES ({i}); COMMIT"))
                .await
                .expect("transaction");
        }
        let n: i64 = a
            .query_one("SELECT count(*) FROM mine", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 6);
        assert_eq!(
            text(&a, "SHOW search_path").await.as_deref(),
            Some("pinned_schema, public")
        );
        assert_eq!(
            text(&a, "SELECT current_setting('app.tenant')")
                .await
                .as_deref(),
            Some("acme")
        );
        assert_eq!(
            text(
                &a,
                "SELECT string_agg(c, ',') FROM pg_listening_channels() c"
            )
            .await
            .as_deref(),
            Some("chan_a")
        );

        // Nobody else sees it, and the lock still excludes them, as on a server.
        for _ in 0..3 {
            let b = proxy.connect(&topology).await;
            sees_nothing_of_the_pinned_client(&b).await;
            assert!(
                !flag(&b, "SELECT pg_try_advisory_xact_lock(4242)").await,
                "the pinned client's lock was lost"
            );
        }

        // Once it leaves, its lock is released and its state is gone from every connection.
        drop(a);
        wait_pinned(&proxy, 0.0).await;
        let clients = [
            proxy.connect(&topology).await,
            proxy.connect(&topology).await,
        ];
        for _ in 0..2 {
            for c in &clients {
                sees_nothing_of_the_pinned_client(c).await;
                assert!(flag(c, "SELECT pg_try_advisory_xact_lock(4242)").await);
            }
        }
        assert_eq!(proxy.metric(PINNED), Some(0.0));
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn transaction_scoped_forms_do_not_pin_and_a_pin_holds_its_connection() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().build().expect("topology");
        let proxy = Proxy::start_with(&topology, one_connection());
        let x = proxy.connect(&topology).await;
        let y = proxy.connect(&topology).await;
        x.batch_execute(
            "BEGIN; CREATE TEMP TABLE scratch (x int) ON COMMIT DROP; \
             SELECT set_config('app.tenant', 'acme', true); SELECT pg_advisory_xact_lock(7); \
             SET LOCAL statement_timeout = '5s'; COMMIT",
        )
        .await
        .expect("transaction-scoped state");
        x.batch_execute("SELECT temp, hold FROM (VALUES (1, 2)) AS weather (temp, hold)")
            .await
            .expect("columns named like keywords");
        // The single server connection went back: another client gets it.
        y.batch_execute("SELECT 1").await.expect("not pinned");
        assert_eq!(proxy.metric(PINNED), Some(0.0));

        // A temporary table without ON COMMIT DROP keeps the connection with x.
        x.batch_execute("CREATE TEMP TABLE keep (x int)")
            .await
            .expect("temp table");
        let err = y
            .batch_execute("SELECT 1")
            .await
            .expect_err("the only server connection is pinned");
        assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err:?}");
        assert_eq!(proxy.metric(PINNED), Some(1.0));
        x.batch_execute("INSERT INTO keep VALUES (1)")
            .await
            .expect("still there");

        drop(x);
        wait_pinned(&proxy, 0.0).await;
        assert_eq!(
            text(&y, "SELECT to_regclass('pg_temp.keep')::text").await,
            None,
            "the temporary table reached another client"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_session_is_never_pinned_to_a_replica() {
    timeout(TEST_TIMEOUT, async {
        let (topology, proxy) = with_a_replica(Proxy::start_with).await;
        let c = proxy.connect(&topology).await;
        c.batch_execute("BEGIN READ ONLY").await.expect("begin");
        assert!(
            flag(&c, "SELECT pg_is_in_recovery()").await,
            "the read-only transaction should run on the replica"
        );
        // A WITH HOLD cursor on a replica would pin the session there.
        refused(
            &c,
            "DECLARE cur CURSOR WITH HOLD FOR SELECT 1",
            &["a cursor WITH HOLD", "replica"],
            "shardgate: primary",
        )
        .await;
        c.batch_execute("ROLLBACK").await.expect("rollback");
        assert_eq!(proxy.metric(PINNED), Some(0.0));
        // Outside the transaction it runs on the primary and pins the session there.
        c.batch_execute("BEGIN; DECLARE cur CURSOR WITH HOLD FOR SELECT 41 + 1; COMMIT")
            .await
            .expect("declare on the primary");
        let row = c.query_one("FETCH cur", &[]).await.expect("fetch");
        assert_eq!(row.get::<_, i32>(0), 42);
        assert_eq!(proxy.metric(PINNED), Some(1.0));
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_pinning_statement_pipelined_behind_another_pins_too() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().build().expect("topology");
        let proxy = support::start_trust(&topology, one_connection());
        let wait = Duration::from_secs(10);
        for (i, second) in [
            query("CREATE TEMP TABLE piped_q (x int)"),
            [
                extended("CREATE TEMP TABLE piped_e (x int)"),
                message(b'S', b""),
            ]
            .concat(),
        ]
        .into_iter()
        .enumerate()
        {
            let mut x = login_trust(proxy.addr(), topology.user(), topology.database()).await;
            // One write: the second request arrives with the first, behind it.
            x.send(&[query("SELECT pg_sleep(0.1)"), second].concat())
                .await;
            for _ in 0..2 {
                let got = x.until_ready(wait).await;
                assert!(!tags(&got).contains(&b'E'), "{got:?}");
            }
            wait_pinned(&proxy, 1.0).await;
            drop(x);
            wait_pinned(&proxy, 0.0).await;
            let y = proxy.connect(&topology).await;
            for t in ["piped_q", "piped_e"] {
                assert_eq!(
                    text(&y, &format!("SELECT to_regclass('pg_temp.{t}')::text")).await,
                    None,
                    "round {i}: the temporary table {t} reached another client"
                );
            }
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_pinned_session_keeps_to_its_shard_and_says_so() {
    timeout(TEST_TIMEOUT, async {
        let s = support::sharded::sharded_setup(None).await;
        let c = &s.client;
        // DDL goes to every shard: a temporary table there would pin several connections.
        refused(
            c,
            "CREATE TEMP TABLE mine (x int)",
            &["several shards"],
            "shardgate: shard=",
        )
        .await;
        assert_eq!(s.proxy.metric(PINNED), Some(0.0));
        // On one shard it pins the session there.
        c.batch_execute("/* shardgate: shard=s1 */ CREATE TEMP TABLE mine (x int)")
            .await
            .expect("temp table");
        wait_pinned(&s.proxy, 1.0).await;
        let port: i32 = c
            .query_one("SELECT inet_server_port()", &[])
            .await
            .expect("port")
            .get(0);
        let home = s
            .topology
            .shards
            .iter()
            .position(|sh| i32::from(sh.primary.port()) == port)
            .expect("pinned to a primary");
        let same = support::sharded::int_keys_on(home, 1, 1)[0];
        let other = support::sharded::int_keys_on(1 - home, 1, 1)[0];

        c.batch_execute(&format!("SELECT note FROM orders WHERE user_id = {same}"))
            .await
            .expect("a statement for its own shard runs");
        for sql in [
            format!("SELECT note FROM orders WHERE user_id = {other}"),
            "SELECT count(*) FROM orders".to_owned(),
            // A write to a table in no list goes to every shard, a read to the first.
            "INSERT INTO mine VALUES (1)".to_owned(),
            "SELECT count(*) FROM mine".to_owned(),
        ] {
            refused(
                c,
                &sql,
                &["keeps its server connection", "a temporary table"],
                "ON COMMIT DROP",
            )
            .await;
        }
        // The session carries on, with its table.
        c.batch_execute("/* shardgate: shard=s1 */ INSERT INTO mine VALUES (1)")
            .await
            .expect("insert");
        let n: i64 = c
            .query_one("/* shardgate: shard=s1 */ SELECT count(*) FROM mine", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 1);

        // Another session is not pinned: it scatters.
        let other_client = s.proxy.connect(&s.topology).await;
        other_client
            .batch_execute("SELECT count(*) FROM orders")
            .await
            .expect("scatter");
        assert_eq!(
            text(&other_client, "SELECT to_regclass('pg_temp.mine')::text").await,
            None
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_dblink_connection_never_reaches_another_client() {
    timeout(TEST_TIMEOUT, async {
        let topology = with_dblink();
        let proxy = support::start_trust(&topology, one_connection());
        let wait = Duration::from_secs(10);
        let mut x = login_trust(proxy.addr(), topology.user(), topology.database()).await;
        x.run_ok(&dblink_connect(&topology), wait).await;
        wait_pinned(&proxy, 1.0).await;
        // Gone without a Terminate (a killed client): the proxy resets the connection itself.
        drop(x);
        wait_pinned(&proxy, 0.0).await;
        // DISCARD ALL leaves dblink's connections open: the server connection must be closed.
        let y = proxy.connect(&topology).await;
        assert_eq!(
            text(&y, "SELECT dblink_get_connections()::text").await,
            None,
            "another client got the first one's dblink connection"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_search_path_naming_pg_temp_pins_since_plain_create_table_makes_a_temp_table() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().build().expect("topology");
        let proxy = Proxy::start_with(&topology, one_connection());
        let x = proxy.connect(&topology).await;
        let y = proxy.connect(&topology).await;
        // With pg_temp first in search_path, an unqualified CREATE TABLE makes a temporary
        // table: the SET (or SET LOCAL, or set_config(..., true)) must pin, since the
        // CREATE TABLE itself cannot tell.
        x.batch_execute(
            "BEGIN; SET LOCAL search_path = pg_temp, public; CREATE TABLE via_path (a int); \
             COMMIT",
        )
        .await
        .expect("temp table through search_path");
        assert_eq!(
            text(&x, "SELECT to_regclass('pg_temp.via_path')::text")
                .await
                .as_deref(),
            Some("via_path"),
            "the table is temporary"
        );
        match y
            .query_one("SELECT to_regclass('pg_temp.via_path')::text", &[])
            .await
        {
            Ok(row) => assert_eq!(
                row.get::<_, Option<String>>(0),
                None,
                "another client sees the temporary table"
            ),
            Err(e) => assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e:?}"),
        }
        assert_eq!(proxy.metric(PINNED), Some(1.0));
        drop(x);
        wait_pinned(&proxy, 0.0).await;
        assert_eq!(
            text(&y, "SELECT to_regclass('pg_temp.via_path')::text").await,
            None
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_refusal_inside_a_transaction_keeps_the_pinned_connection() {
    timeout(TEST_TIMEOUT, async {
        let s = support::sharded::sharded_setup(None).await;
        let c = &s.client;
        c.batch_execute("/* shardgate: shard=s1 */ CREATE TEMP TABLE mine (x int)")
            .await
            .expect("temp table");
        wait_pinned(&s.proxy, 1.0).await;
        let pid = text(c, "/* shardgate: shard=s1 */ SELECT pg_backend_pid()::text").await;
        let port: i32 = c
            .query_one("SELECT inet_server_port()", &[])
            .await
            .expect("port")
            .get(0);
        let home = s
            .topology
            .shards
            .iter()
            .position(|sh| i32::from(sh.primary.port()) == port)
            .expect("pinned to a primary");
        let other = support::sharded::int_keys_on(1 - home, 1, 1)[0];
        c.batch_execute("BEGIN").await.expect("begin");
        refused(
            c,
            &format!("SELECT note FROM orders WHERE user_id = {other}"),
            &["keeps its server connection", "a temporary table"],
            "ON COMMIT DROP",
        )
        .await;
        // The session still holds its server connection, in a failed transaction.
        let active = format!(
            "shardgate_server_connections{{node=\"127.0.0.1:{port}\",user=\"{}\",state=\"active\"}}",
            s.topology.user()
        );
        assert_eq!(
            s.proxy.metric(&active),
            Some(1.0),
            "the pinned server connection was given back to the pool"
        );
        // The refusal failed the transaction, on the server, as an error there would.
        let err = c.batch_execute("SELECT 1").await.expect_err("failed transaction");
        assert_eq!(
            err.code(),
            Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
            "{err:?}"
        );
        c.batch_execute("ROLLBACK").await.expect("rollback");
        // The refusal failed the transaction, not the session: it keeps its connection.
        assert_eq!(
            text(c, "/* shardgate: shard=s1 */ SELECT pg_backend_pid()::text").await,
            pid,
            "the pinned server connection was given back to the pool"
        );
        let n: i64 = c
            .query_one("/* shardgate: shard=s1 */ SELECT count(*) FROM mine", &[])
            .await
            .expect("the temporary table is still there")
            .get(0);
        assert_eq!(n, 0);

        // A pin for another shard than the one a transaction started on would park that one.
        let d = s.proxy.connect(&s.topology).await;
        let same = support::sharded::int_keys_on(home, 1, 1)[0];
        d.batch_execute(&format!(
            "BEGIN; SELECT note FROM orders WHERE user_id = {same}"
        ))
        .await
        .expect("transaction on the home shard");
        refused(
            &d,
            &format!("SELECT pg_advisory_lock(9) FROM orders WHERE user_id = {other}"),
            &["transaction that spans shards"],
            "pg_advisory_xact_lock",
        )
        .await;
        d.batch_execute("ROLLBACK").await.expect("rollback");
        assert_eq!(s.proxy.metric(PINNED), Some(1.0));
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_pin_arriving_mid_request_on_a_replica_does_not_hang() {
    timeout(TEST_TIMEOUT, async {
        let (topology, proxy) = with_a_replica(support::start_trust).await;
        let wait = Duration::from_secs(5);
        let mut x = login_trust(proxy.addr(), topology.user(), topology.database()).await;
        x.run_ok("BEGIN READ ONLY", wait).await;
        // The held-back BEGIN goes to the replica with the transaction's first statement.
        x.run_ok("SELECT 1", wait).await;
        // The request's first frame arrives alone, and is sent on; its pin comes later.
        x.send(&message(b'P', b"\0SELECT 1\0\0\0")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        x.send(
            &[
                message(b'B', b"\0\0\0\0\0\0\0\0"),
                message(b'E', b"\0\0\0\0\0"),
                extended("DECLARE cur CURSOR WITH HOLD FOR SELECT 1"),
                message(b'S', b""),
            ]
            .concat(),
        )
        .await;
        // Refused, and the session ends: the replica's half-sent request dies with it.
        let got = x.closed_within(wait).await.expect("the session ends");
        let fields = got
            .iter()
            .find(|(t, _)| *t == b'E')
            .map(|(_, body)| support::raw::error_fields(body))
            .unwrap_or_else(|| panic!("no error: {got:?}"));
        assert!(
            fields.contains(&(b'C', "0A000".to_owned()))
                && fields.contains(&(b'S', "FATAL".to_owned())),
            "{fields:?}"
        );
        assert_eq!(proxy.metric(PINNED), Some(0.0));
    })
    .await
    .expect("test timed out");
}

fn session_mode_one_connection(topology: &Topology) -> support::Proxy {
    support::start_trust(
        topology,
        ProxyOptions {
            pool_mode: "session",
            ..one_connection()
        },
    )
}

/// The next client, which gets the pool's only connection once the last one has left, sees
/// no dblink connection.
async fn assert_next_client_has_no_dblink(proxy: &support::Proxy, topology: &Topology) {
    let y = proxy.connect(topology).await;
    assert_eq!(
        text(&y, "SELECT dblink_get_connections()::text").await,
        None,
        "another client got the last one's dblink connection"
    );
}

#[tokio::test]
async fn session_mode_closes_a_connection_that_ran_dblink_connect() {
    timeout(TEST_TIMEOUT, async {
        let topology = with_dblink();
        let proxy = session_mode_one_connection(&topology);
        let x = proxy.connect(&topology).await;
        x.batch_execute(&dblink_connect(&topology))
            .await
            .expect("dblink_connect");
        assert_eq!(proxy.metric(PINNED), Some(0.0), "session mode does not pin");
        drop(x);
        // The only server connection was closed, not reset: DISCARD ALL keeps dblink's.
        assert_next_client_has_no_dblink(&proxy, &topology).await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn session_mode_closes_a_connection_whose_dblink_connect_was_pipelined() {
    timeout(TEST_TIMEOUT, async {
        let topology = with_dblink();
        let proxy = session_mode_one_connection(&topology);
        let wait = Duration::from_secs(10);
        let mut x = login_trust(proxy.addr(), topology.user(), topology.database()).await;
        // The dblink_connect arrives behind a request still running: it is not planned when
        // the server is idle, and must be seen all the same.
        x.send(
            &[
                query("SELECT pg_sleep(0.1)"),
                query(&dblink_connect(&topology)),
            ]
            .concat(),
        )
        .await;
        for _ in 0..2 {
            let got = x.until_ready(wait).await;
            assert!(!tags(&got).contains(&b'E'), "{got:?}");
        }
        drop(x);
        assert_next_client_has_no_dblink(&proxy, &topology).await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_set_inside_a_do_block_pins() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().build().expect("topology");
        let proxy = support::start_trust(&topology, one_connection());
        let a = proxy.connect(&topology).await;
        let default_path = text(&a, "SHOW search_path").await;
        a.batch_execute("DO $$BEGIN EXECUTE 'SET search_path TO do_set'; END$$")
            .await
            .expect("DO");
        wait_pinned(&proxy, 1.0).await;
        assert_eq!(
            text(&a, "SHOW search_path").await.as_deref(),
            Some("do_set")
        );
        drop(a);
        wait_pinned(&proxy, 0.0).await;
        let b = proxy.connect(&topology).await;
        assert_eq!(
            text(&b, "SHOW search_path").await,
            default_path,
            "the DO block's SET reached another client"
        );
    })
    .await
    .expect("test timed out");
}

/// The SET in a tagged dollar-quoted string or an escape string pins too: without the pin the
/// session's search_path would be lost when its next transaction runs on another connection.
#[tokio::test]
async fn a_set_in_a_tagged_or_escape_string_inside_a_do_block_pins() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().build().expect("topology");
        for sql in [
            "DO $$BEGIN EXECUTE $e$SET search_path TO do_set$e$; END$$",
            "DO E'BEGIN SET search_path TO do_set; END'",
        ] {
            let proxy = support::start_trust(&topology, one_connection());
            let a = proxy.connect(&topology).await;
            let default_path = text(&a, "SHOW search_path").await;
            a.batch_execute(sql).await.expect("DO");
            wait_pinned(&proxy, 1.0).await;
            assert_eq!(
                text(&a, "SHOW search_path").await.as_deref(),
                Some("do_set"),
                "{sql}"
            );
            drop(a);
            wait_pinned(&proxy, 0.0).await;
            let b = proxy.connect(&topology).await;
            assert_eq!(text(&b, "SHOW search_path").await, default_path, "{sql}");
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_fastpath_function_call_pins() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().build().expect("topology");
        let proxy = support::start_trust(&topology, one_connection());
        let mut x = login_trust(proxy.addr(), topology.user(), topology.database()).await;
        // pg_advisory_lock(bigint), OID 2880, called by OID with one text argument.
        let key = b"4243";
        let mut body = 2880u32.to_be_bytes().to_vec();
        body.extend(1u16.to_be_bytes()); // one argument format
        body.extend(0u16.to_be_bytes()); // text
        body.extend(1u16.to_be_bytes()); // one argument
        body.extend((key.len() as u32).to_be_bytes());
        body.extend(key);
        body.extend(0u16.to_be_bytes()); // text result
        x.send(&message(b'F', &body)).await;
        let got = x.until_ready(Duration::from_secs(10)).await;
        assert!(tags(&got).contains(&b'V'), "{got:?}");
        wait_pinned(&proxy, 1.0).await;
        drop(x);
        wait_pinned(&proxy, 0.0).await;
        let y = proxy.connect(&topology).await;
        assert!(
            flag(&y, "SELECT pg_try_advisory_xact_lock(4243)").await,
            "the lock taken by OID outlived its client"
        );
    })
    .await
    .expect("test timed out");
}

/// SIGTERM ends a client that keeps its server connection between transactions (pinned, or
/// session mode) as soon as it has no transaction open, as it ends an idle transaction-pooled
/// one: the proxy exits without waiting out the 30 s drain.
#[tokio::test]
async fn sigterm_ends_idle_pinned_and_session_mode_clients_at_once() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().build().expect("topology");
        for mode in ["transaction", "session"] {
            let mut proxy = Proxy::start_with(
                &topology,
                ProxyOptions {
                    pool_mode: mode,
                    ..ProxyOptions::default()
                },
            );
            let c = proxy.connect(&topology).await;
            c.batch_execute("CREATE TEMP TABLE mine (x int)")
                .await
                .expect("temp table");
            let started = std::time::Instant::now();
            proxy.sigterm();
            let exit = tokio::task::spawn_blocking(move || {
                let exit = proxy.wait_exit(Duration::from_secs(20));
                (exit, proxy)
            })
            .await
            .expect("join");
            assert_eq!(exit.0, Some(true), "{mode}: shardgate should exit 0");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{mode}: waited {:?} for an idle client",
                started.elapsed()
            );
            let err = c
                .batch_execute("SELECT 1")
                .await
                .expect_err("the proxy is gone");
            assert!(
                err.code() == Some(&SqlState::ADMIN_SHUTDOWN) || err.is_closed(),
                "{mode}: {err:?}"
            );
        }
    })
    .await
    .expect("test timed out");
}
