//! Read/write splitting end to end: against one primary and two streaming replicas, every
//! kind of write and every read-write transaction runs on the primary, plain reads and
//! read-only transactions on a replica, and hints, `shardgate.target`, temp-table
//! stickiness and `read_write_split: false` override that as documented. Where a
//! statement ran is told by `inet_server_port()`.

mod support;

use std::time::Duration;

use shardgate_testkit::Topology;
use support::raw::{extended, first_column, login_trust, message, tags};
use support::{direct_conn_str, port, ports, start_trust, wait_routable, Proxy, ProxyOptions};
use tokio::time::timeout;
use tokio_postgres::error::SqlState;

/// Bound on each whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(40);

struct Setup {
    topology: Topology,
    proxy: Proxy,
    client: tokio_postgres::Client,
    primary: u16,
    replicas: Vec<u16>,
}

impl Setup {
    fn is_replica(&self, port: u16) -> bool {
        self.replicas.contains(&port)
    }
}

/// One primary, two replicas, a proxy with `routing` (YAML lines indented by 2) and a
/// client, once both replicas are routable.
async fn setup(routing: &str) -> Setup {
    let topology = Topology::builder().replicas(2).build().expect("topology");
    let proxy = Proxy::start_with(
        &topology,
        ProxyOptions {
            extra_yaml: format!("routing:\n  lag_check_interval_ms: 100\n{routing}"),
            ..ProxyOptions::default()
        },
    );
    wait_routable(&proxy, 2, Duration::from_secs(15)).await;
    let client = proxy.connect(&topology).await;
    let shard = &topology.shards[0];
    let primary = shard.primary.port();
    let replicas = shard.replicas.iter().map(|r| r.port()).collect();
    Setup {
        topology,
        proxy,
        client,
        primary,
        replicas,
    }
}

const WHERE: &str = "inet_server_port() AS port";

#[tokio::test]
async fn reads_go_to_a_replica_and_each_kind_of_write_to_the_primary() {
    timeout(TEST_TIMEOUT, async {
        let s = setup("  write_functions: [bump]\n").await;
        let c = &s.client;
        for _ in 0..4 {
            let p = port(c, &format!("SELECT {WHERE}")).await;
            assert!(
                s.is_replica(p),
                "plain read ran on {p}, replicas {:?}",
                s.replicas
            );
        }
        let row = c
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .expect("read");
        assert!(row.get::<_, bool>(0), "a plain read must run on a replica");

        // DDL works (it would fail with 25006 on a replica).
        c.batch_execute(
            "CREATE TABLE t (id serial PRIMARY KEY, port int);
             CREATE SEQUENCE seq;
             CREATE FUNCTION bump() RETURNS int LANGUAGE sql AS 'SELECT 1';
             CREATE FUNCTION peek() RETURNS int LANGUAGE sql AS 'SELECT 2';",
        )
        .await
        .expect("DDL through the proxy");

        let writes = [
            "INSERT INTO t (port) VALUES (inet_server_port()) RETURNING port".to_owned(),
            "UPDATE t SET port = inet_server_port() RETURNING port".to_owned(),
            format!("SELECT {WHERE} FOR UPDATE"),
            format!("SELECT {WHERE} FROM t FOR SHARE"),
            format!(
                "WITH x AS (INSERT INTO t (port) VALUES (0) RETURNING 1) SELECT {WHERE} FROM x"
            ),
            format!("SELECT nextval('seq'), {WHERE}"),
            format!("SELECT setval('seq', 10), {WHERE}"),
            format!("SELECT pg_advisory_xact_lock(1), {WHERE}"),
            format!("SELECT txid_current(), {WHERE}"),
            format!("SELECT pg_notify('chan', 'x'), {WHERE}"),
            format!("SELECT bump(), {WHERE}"),
            "DELETE FROM t WHERE port = 0 RETURNING inet_server_port() AS port".to_owned(),
        ];
        for sql in &writes {
            let got = ports(c, sql).await;
            assert!(!got.is_empty(), "{sql}: no rows");
            for p in got {
                assert_eq!(p, s.primary, "{sql} ran on {p}, not the primary");
            }
        }

        // An unlisted function stays a read (once the replicas have the function).
        s.topology
            .wait_replicas_caught_up(Duration::from_secs(10))
            .expect("replicas caught up");
        let reader = s.proxy.connect(&s.topology).await;
        let p = port(&reader, &format!("SELECT peek(), {WHERE}")).await;
        assert!(
            s.is_replica(p),
            "SELECT peek() ran on {p}: only bump() is a write function"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn do_copy_from_select_into_and_listen_run_on_the_primary() {
    timeout(TEST_TIMEOUT, async {
        let s = setup("").await;
        let c = &s.client;
        c.batch_execute("CREATE TABLE t (port int)")
            .await
            .expect("DDL");
        // Each of these fails with 25006 on a replica, so success alone says "primary";
        // the recorded ports say it again.
        c.batch_execute("DO $$ BEGIN INSERT INTO t VALUES (inet_server_port()); END $$")
            .await
            .expect("DO");
        let sink = c
            .copy_in("COPY t (port) FROM STDIN")
            .await
            .expect("COPY FROM");
        futures_util::pin_mut!(sink);
        use futures_util::SinkExt;
        sink.send(bytes::Bytes::from_static(b"7\n8\n"))
            .await
            .expect("copy data");
        let copied = sink.finish().await.expect("COPY finish");
        assert_eq!(copied, 2);
        // COPY FROM STDIN over the simple protocol (psql's \copy).
        let (ok, _, stderr) = support::run_tool(
            "psql",
            &[
                &s.proxy.url(&s.topology),
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                "\\copy t (port) from program 'echo 9'",
            ],
            &[],
        );
        assert!(ok, "psql \\copy failed: {stderr}");
        c.batch_execute("SELECT inet_server_port() AS port INTO t2")
            .await
            .expect("SELECT INTO");
        c.batch_execute("LISTEN chan; UNLISTEN chan")
            .await
            .expect("LISTEN");
        c.batch_execute("ANALYZE t").await.expect("ANALYZE");
        c.batch_execute("VACUUM t").await.expect("VACUUM");

        let direct = support::connect(&support::direct_conn_str(
            &s.topology,
            &s.topology.shards[0].primary,
        ))
        .await
        .expect("direct connection to the primary");
        let rows = direct
            .query("SELECT port FROM t ORDER BY port", &[])
            .await
            .expect("read t on the primary");
        let got: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(got, vec![7, 8, 9, i32::from(s.primary)]);
        let into = direct
            .query_one("SELECT port FROM t2", &[])
            .await
            .expect("read t2 on the primary");
        assert_eq!(into.get::<_, i32>(0), i32::from(s.primary));
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn transactions_are_pinned_and_never_move() {
    timeout(TEST_TIMEOUT, async {
        let mut s = setup("  load_balance: round_robin\n").await;
        let c = &s.client;
        let probe = format!("SELECT {WHERE}, pg_backend_pid()::text AS pid");
        let in_txn = |begin: &'static str| {
            let probe = probe.clone();
            async move {
                c.batch_execute(begin).await.expect(begin);
                let mut seen = Vec::new();
                for _ in 0..5 {
                    let msgs = c.simple_query(&probe).await.expect("probe in transaction");
                    for m in msgs {
                        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                            let port: u16 = r.get("port").expect("port").parse().expect("port");
                            let pid = r.get("pid").expect("pid").to_owned();
                            seen.push((port, pid));
                        }
                    }
                }
                c.batch_execute("COMMIT").await.expect("COMMIT");
                assert_eq!(seen.len(), 5);
                assert!(
                    seen.iter().all(|x| *x == seen[0]),
                    "{begin}: the transaction moved: {seen:?}"
                );
                seen[0].0
            }
        };
        let p = in_txn("BEGIN READ ONLY").await;
        assert!(s.is_replica(p), "BEGIN READ ONLY ran on {p}");
        let p = in_txn("BEGIN; SET TRANSACTION READ ONLY").await;
        assert!(
            s.is_replica(p),
            "BEGIN; SET TRANSACTION READ ONLY ran on {p}"
        );
        let p = in_txn("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").await;
        assert!(
            s.is_replica(p),
            "START TRANSACTION ... READ ONLY ran on {p}"
        );

        // BEGIN and SET TRANSACTION READ ONLY as separate requests.
        c.batch_execute("BEGIN").await.expect("BEGIN");
        c.batch_execute("SET TRANSACTION READ ONLY")
            .await
            .expect("SET TRANSACTION");
        let first = port(c, &format!("SELECT {WHERE}")).await;
        let second = port(c, &format!("SELECT {WHERE}")).await;
        let ro: String = c
            .query_one("SHOW transaction_read_only", &[])
            .await
            .expect("SHOW")
            .get(0);
        c.batch_execute("COMMIT").await.expect("COMMIT");
        assert!(
            s.is_replica(first),
            "BEGIN / SET TRANSACTION READ ONLY ran on {first}"
        );
        assert_eq!((second, ro.as_str()), (first, "on"));
        // After the read-only ones: a read-write transaction's COMMIT is probed for
        // read-your-writes like a write, so the session's next reads wait for the replicas.
        assert_eq!(
            in_txn("BEGIN").await,
            s.primary,
            "BEGIN pins to the primary"
        );

        // A read-write transaction started by tokio-postgres (BEGIN, then reads and a write).
        c.batch_execute("CREATE TABLE t (x int)")
            .await
            .expect("DDL");
        let tx = s.client.transaction().await.expect("begin");
        let one = |sql: &'static str| {
            let tx = &tx;
            async move { tx.query_one(sql, &[]).await.expect(sql).get::<_, i32>(0) }
        };
        let a = one("SELECT inet_server_port()").await;
        let b = one("INSERT INTO t VALUES (1) RETURNING inet_server_port()").await;
        let n: i64 = tx
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .expect("count")
            .get(0);
        tx.commit().await.expect("commit");
        let primary = i32::from(s.primary);
        assert_eq!((a, b, n), (primary, primary, 1));
        let c = &s.client;

        // A write inside BEGIN READ ONLY fails as on PostgreSQL, on a replica or not.
        c.batch_execute("BEGIN READ ONLY")
            .await
            .expect("BEGIN READ ONLY");
        let err = c
            .batch_execute("INSERT INTO t VALUES (2)")
            .await
            .expect_err("write in RO txn");
        assert_eq!(err.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
        c.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    })
    .await
    .expect("test timed out");
}

/// A serializable transaction runs on the primary even when it is read-only: a hot standby
/// refuses serializable mode. Opened by BEGIN/START TRANSACTION (simple or extended protocol),
/// or by a held-back BEGIN whose first statement is SET TRANSACTION ... SERIALIZABLE, READ ONLY.
#[tokio::test]
async fn serializable_read_only_transactions_run_on_the_primary() {
    timeout(TEST_TIMEOUT, async {
        let s = setup("  load_balance: round_robin\n").await;
        let c = &s.client;
        let probe = "SELECT inet_server_port()::text, current_setting('transaction_isolation'), \
                     current_setting('transaction_read_only')";
        let run_probe = || async {
            let msgs = c.simple_query(probe).await;
            let msgs = msgs.unwrap_or_else(|e| panic!("probe in the transaction: {e:?}"));
            let row = msgs
                .into_iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                    _ => None,
                })
                .expect("a row");
            let port: u16 = row.get(0).expect("port").parse().expect("port");
            let iso = row.get(1).expect("isolation").to_owned();
            let ro = row.get(2).expect("read only").to_owned();
            c.batch_execute("COMMIT").await.expect("COMMIT");
            (port, iso, ro)
        };
        // Other read-only transactions use a replica (checked first: SET TRANSACTION below counts
        // as a write, after which reads wait for the replicas to replay its commit).
        c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .expect("BEGIN REPEATABLE READ");
        let (port, iso, ro) = run_probe().await;
        assert!(
            s.is_replica(port),
            "REPEATABLE READ READ ONLY ran on {port}"
        );
        assert_eq!((iso.as_str(), ro.as_str()), ("repeatable read", "on"));
        let want = (s.primary, "serializable".to_owned(), "on".to_owned());
        for begin in [
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
            "START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE, DEFERRABLE",
            "BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
        ] {
            c.batch_execute(begin).await.expect(begin);
            assert_eq!(run_probe().await, want, "{begin}");
        }
        // Extended protocol, as asyncpg's transaction(isolation='serializable', readonly=True).
        c.execute("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", &[])
            .await
            .expect("extended BEGIN");
        assert_eq!(run_probe().await, want, "extended BEGIN");
        // A held-back BEGIN, then SET TRANSACTION as its first statement.
        c.batch_execute("BEGIN").await.expect("BEGIN");
        c.batch_execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY")
            .await
            .expect("SET TRANSACTION");
        assert_eq!(run_probe().await, want, "BEGIN / SET TRANSACTION");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn hints_and_the_shardgate_target_setting() {
    timeout(TEST_TIMEOUT, async {
        let s = setup("").await;
        let c = &s.client;
        let read = format!("SELECT {WHERE}");
        let show = || async {
            support::first_cell(c, "SHOW shardgate.target")
                .await
                .expect("SHOW returns a row")
        };

        // From another session: a statement hinted to the primary is probed for
        // read-your-writes like a write, which would keep this session's reads there a while.
        let other = s.proxy.connect(&s.topology).await;
        assert_eq!(
            port(&other, &format!("/* shardgate: primary */ {read}")).await,
            s.primary
        );
        let p = port(c, &format!("/* shardgate: replica */ {read}")).await;
        assert!(s.is_replica(p), "replica hint ran on {p}");
        assert_eq!(show().await, "auto");

        c.batch_execute("SET shardgate.target = 'primary'")
            .await
            .expect("SET primary");
        assert_eq!(show().await, "primary");
        for _ in 0..3 {
            assert_eq!(port(c, &read).await, s.primary, "target primary");
        }
        // A hint beats the session setting.
        let p = port(c, &format!("/* shardgate: replica */ {read}")).await;
        assert!(
            s.is_replica(p),
            "replica hint under target=primary ran on {p}"
        );

        c.batch_execute("SET shardgate.target = 'replica'")
            .await
            .expect("SET replica");
        assert_eq!(show().await, "replica");
        for _ in 0..3 {
            let p = port(c, &read).await;
            assert!(s.is_replica(p), "target replica: read ran on {p}");
        }

        let err = c
            .batch_execute("SET shardgate.target = 'bogus'")
            .await
            .expect_err("bogus target");
        assert_eq!(err.code(), Some(&SqlState::INVALID_PARAMETER_VALUE));
        assert_eq!(show().await, "replica", "a failed SET changes nothing");

        c.batch_execute("RESET shardgate.target")
            .await
            .expect("RESET");
        assert_eq!(show().await, "auto");
        let p = port(c, &read).await;
        assert!(s.is_replica(p), "auto read ran on {p}");

        // None of SET/SHOW/RESET shardgate.target was routed to a server.
        let decisions = s.proxy.admin_json("/api/decisions?limit=1000");
        let list = decisions["decisions"].as_array().expect("decisions");
        assert!(!list.is_empty());
        let leaked: Vec<_> = list
            .iter()
            .filter(|d| d["sql"].as_str().unwrap_or("").contains("shardgate.target"))
            .collect();
        assert!(
            leaked.is_empty(),
            "shardgate.target reached a server: {leaked:?}"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn temp_tables_and_session_advisory_locks_stick_to_the_primary() {
    timeout(TEST_TIMEOUT, async {
        let s = setup("").await;
        let read = format!("SELECT {WHERE}");
        let c = &s.client;
        let p = port(c, &read).await;
        assert!(s.is_replica(p), "before the temp table, a read ran on {p}");
        c.batch_execute("CREATE TEMP TABLE tt (x int)")
            .await
            .expect("CREATE TEMP TABLE");
        for _ in 0..5 {
            assert_eq!(
                port(c, &read).await,
                s.primary,
                "read after CREATE TEMP TABLE"
            );
        }

        let other = s.proxy.connect(&s.topology).await;
        let p = port(&other, &read).await;
        assert!(s.is_replica(p), "another session is not sticky: ran on {p}");
        let locked = port(&other, &format!("SELECT pg_advisory_lock(42), {WHERE}")).await;
        assert_eq!(locked, s.primary);
        for _ in 0..5 {
            assert_eq!(
                port(&other, &read).await,
                s.primary,
                "read after pg_advisory_lock"
            );
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn split_disabled_sends_everything_to_the_primary() {
    timeout(TEST_TIMEOUT, async {
        let s = setup("  read_write_split: false\n").await;
        let c = &s.client;
        let read = format!("SELECT {WHERE}");
        for _ in 0..5 {
            assert_eq!(port(c, &read).await, s.primary);
        }
        let row = c
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .expect("read");
        assert!(!row.get::<_, bool>(0));
        assert_eq!(
            port(c, &format!("/* shardgate: replica */ {read}")).await,
            s.primary
        );
        c.batch_execute("BEGIN READ ONLY")
            .await
            .expect("BEGIN READ ONLY");
        assert_eq!(port(c, &read).await, s.primary);
        c.batch_execute("COMMIT").await.expect("COMMIT");
        c.batch_execute("SET shardgate.target = 'replica'")
            .await
            .expect("SET");
        assert_eq!(port(c, &read).await, s.primary);
        let stmt = c.prepare(&read).await.expect("prepare");
        let row = c.query_one(&stmt, &[]).await.expect("extended read");
        assert_eq!(row.get::<_, i32>(0), i32::from(s.primary));
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_multi_statement_query_with_a_write_goes_to_the_primary() {
    timeout(TEST_TIMEOUT, async {
        let s = setup("").await;
        let c = &s.client;
        c.batch_execute("CREATE TABLE t (x int)")
            .await
            .expect("DDL");
        let got = ports(
            c,
            &format!("SELECT {WHERE}; INSERT INTO t VALUES (1); SELECT {WHERE}"),
        )
        .await;
        assert_eq!(got, vec![s.primary, s.primary]);
        // The write may come last: the whole string still goes to the primary.
        let got = ports(c, &format!("SELECT {WHERE}; DELETE FROM t")).await;
        assert_eq!(got, vec![s.primary]);

        // All reads: one replica for the whole string.
        let reader = s.proxy.connect(&s.topology).await;
        let got = ports(
            &reader,
            &format!("SELECT {WHERE}; SELECT {WHERE}; SELECT {WHERE}"),
        )
        .await;
        assert_eq!(got.len(), 3);
        assert!(s.is_replica(got[0]), "all-read string ran on {got:?}");
        assert!(
            got.iter().all(|p| *p == got[0]),
            "one string, one server: {got:?}"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn extended_protocol_reads_go_to_a_replica_and_writes_to_the_primary() {
    timeout(TEST_TIMEOUT, async {
        let s = setup("").await;
        let c = &s.client;
        c.batch_execute("CREATE TABLE t (x int, port int)")
            .await
            .expect("DDL");
        s.topology
            .wait_replicas_caught_up(Duration::from_secs(10))
            .expect("replicas caught up");
        // Reads and writes in separate sessions: read-your-writes would send the writer's
        // reads to the primary until the replicas replay its writes.
        let reader = s.proxy.connect(&s.topology).await;
        let read = reader
            .prepare("SELECT $1::int + 1, inet_server_port()")
            .await
            .expect("prepare read");
        let write = c
            .prepare("INSERT INTO t VALUES ($1, inet_server_port()) RETURNING port")
            .await
            .expect("prepare write");
        for i in 0..5i32 {
            let row = reader.query_one(&read, &[&i]).await.expect("extended read");
            assert_eq!(row.get::<_, i32>(0), i + 1);
            let p = row.get::<_, i32>(1);
            assert!(s.is_replica(p as u16), "extended read ran on {p}");
            let row = c.query_one(&write, &[&i]).await.expect("extended write");
            assert_eq!(row.get::<_, i32>(0), i32::from(s.primary));
        }
        // Unnamed statements (query with parameters, no prepare) too.
        let row = reader
            .query_one(
                "SELECT count(*), inet_server_port() FROM t WHERE x >= $1",
                &[&0i32],
            )
            .await
            .expect("unnamed read");
        assert!(s.is_replica(row.get::<_, i32>(1) as u16));
        let n = c
            .execute(
                "UPDATE t SET port = inet_server_port() WHERE x >= $1",
                &[&0i32],
            )
            .await
            .expect("unnamed write");
        assert_eq!(n, 5);
        let row = c
            .query_one(
                "SELECT count(*) FROM t WHERE port = $1",
                &[&i32::from(s.primary)],
            )
            .await
            .expect("count on the writer's session");
        assert_eq!(row.get::<_, i64>(0), 5);
    })
    .await
    .expect("test timed out");
}

/// A driver's `prepare` of BEGIN, BEGIN READ ONLY or SET TRANSACTION READ ONLY (Parse,
/// Describe, Sync) opens or changes no transaction, as on PostgreSQL; executing the prepared
/// statement later does what it says.
#[tokio::test]
async fn a_prepared_begin_starts_nothing_until_it_is_executed() {
    timeout(TEST_TIMEOUT, async {
        // Without read-your-writes, so that reads after the writes may go to a replica at once.
        let s = setup("  read_your_writes: false\n").await;
        let c = &s.client;
        let primary = i32::from(s.primary);
        c.batch_execute("CREATE TABLE t (x int)")
            .await
            .expect("DDL");
        let direct = support::connect(&direct_conn_str(&s.topology, &s.topology.shards[0].primary))
            .await
            .expect("direct connection to the primary");
        let count = || async {
            let row = direct
                .query_one("SELECT count(*) FROM t", &[])
                .await
                .expect("count");
            row.get::<_, i64>(0)
        };
        let insert = |x: i32| async move {
            let sql = format!("INSERT INTO t VALUES ({x}) RETURNING inet_server_port()");
            c.query_one(sql.as_str(), &[])
                .await
                .map(|r| r.get::<_, i32>(0))
        };
        let read = format!("SELECT {WHERE}");

        // Prepared, not executed: the session is still outside any transaction.
        let begin_ro = c
            .prepare("BEGIN READ ONLY")
            .await
            .expect("prepare BEGIN READ ONLY");
        let begin = c
            .prepare("START TRANSACTION")
            .await
            .expect("prepare START TRANSACTION");
        assert_eq!(insert(1).await.expect("write after the prepares"), primary);
        assert_eq!(count().await, 1, "the write committed on its own");

        // In a BEGIN held back until its first statement: preparing SET TRANSACTION READ ONLY
        // must not start that transaction read-only (on a replica).
        c.batch_execute("BEGIN").await.expect("BEGIN");
        let set_ro = c
            .prepare("SET TRANSACTION READ ONLY")
            .await
            .expect("prepare SET TRANSACTION READ ONLY");
        assert_eq!(
            insert(2).await.expect("write in the held-back transaction"),
            primary
        );
        assert_eq!(count().await, 1, "not committed yet");
        c.batch_execute("COMMIT").await.expect("COMMIT");
        assert_eq!(count().await, 2);

        // Executed, each prepared statement opens its transaction.
        s.topology
            .wait_replicas_caught_up(Duration::from_secs(10))
            .expect("replicas caught up");
        c.execute(&begin, &[])
            .await
            .expect("execute START TRANSACTION");
        assert_eq!(insert(3).await.expect("write in the transaction"), primary);
        assert_eq!(port(c, &read).await, s.primary, "pinned to the primary");
        assert_eq!(count().await, 2, "not committed yet");
        c.batch_execute("COMMIT").await.expect("COMMIT");
        assert_eq!(count().await, 3);

        c.execute(&begin_ro, &[])
            .await
            .expect("execute BEGIN READ ONLY");
        let first = port(c, &read).await;
        assert!(s.is_replica(first), "BEGIN READ ONLY ran on {first}");
        assert_eq!(port(c, &read).await, first, "the transaction moved");
        let err = insert(4)
            .await
            .expect_err("write in a read-only transaction");
        assert_eq!(err.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
        c.batch_execute("ROLLBACK").await.expect("ROLLBACK");

        c.batch_execute("BEGIN").await.expect("BEGIN");
        c.execute(&set_ro, &[])
            .await
            .expect("execute SET TRANSACTION READ ONLY");
        let first = port(c, &read).await;
        assert!(
            s.is_replica(first),
            "SET TRANSACTION READ ONLY ran on {first}"
        );
        assert_eq!(port(c, &read).await, first, "the transaction moved");
        c.batch_execute("COMMIT").await.expect("COMMIT");
        assert_eq!(count().await, 3);
    })
    .await
    .expect("test timed out");
}

/// A request that only prepares BEGIN READ ONLY (or BEGIN) and runs a read is a plain read,
/// routed by `shardgate.target` like any other: it opens no transaction.
#[tokio::test]
async fn a_read_beside_a_prepared_begin_is_a_plain_read() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().replicas(2).build().expect("topology");
        let proxy = start_trust(
            &topology,
            ProxyOptions {
                extra_yaml: "routing:\n  lag_check_interval_ms: 100\n".to_owned(),
                ..ProxyOptions::default()
            },
        );
        wait_routable(&proxy, 2, Duration::from_secs(15)).await;
        let primary = topology.shards[0].primary.port();
        let replicas: Vec<u16> = topology.shards[0]
            .replicas
            .iter()
            .map(|r| r.port())
            .collect();
        let mut conn = login_trust(proxy.addr(), topology.user(), topology.database()).await;
        let t = Duration::from_secs(10);
        // Prepares `begin` as statement `name` and runs an unnamed read, in one request;
        // returns the port the read ran on and the transaction status after it.
        let mut run = async |target: &str, name: &str, begin: &str| {
            conn.run_ok(&format!("SET shardgate.target = '{target}'"), t)
                .await;
            let mut request = message(b'P', format!("{name}\0{begin}\0\0\0").as_bytes());
            request.extend(extended("SELECT inet_server_port()"));
            request.extend(message(b'S', b""));
            conn.send(&request).await;
            let got = conn.until_ready(t).await;
            assert_eq!(tags(&got), b"112DCZ".to_vec(), "{begin}: {got:?}");
            let port: u16 = first_column(&got[3].1).parse().expect("port");
            (port, got[5].1.clone())
        };
        assert_eq!(
            run("primary", "ro", "BEGIN READ ONLY").await,
            (primary, b"I".to_vec()),
            "a read under target=primary beside a prepared BEGIN READ ONLY"
        );
        let (port, status) = run("replica", "rw", "BEGIN").await;
        assert!(
            replicas.contains(&port) && status == b"I",
            "a read under target=replica beside a prepared BEGIN ran on {port}, status {status:?}"
        );

        // Prepared and run in the same request, BEGIN READ ONLY does open a read-only
        // transaction, which takes the read to a replica (target `primary` would keep it on
        // the primary: tests/routing_corners.rs).
        conn.run_ok("SET shardgate.target = 'auto'", t).await;
        let mut request = extended("BEGIN READ ONLY");
        request.extend(extended("SELECT inet_server_port()"));
        request.extend(message(b'S', b""));
        conn.send(&request).await;
        let got = conn.until_ready(t).await;
        assert_eq!(tags(&got), b"12C12DCZ".to_vec(), "{got:?}");
        let port: u16 = first_column(&got[5].1).parse().expect("port");
        assert!(
            replicas.contains(&port) && got[7].1 == b"T",
            "BEGIN READ ONLY run in the request: the read ran on {port}, status {:?}",
            got[7].1
        );
    })
    .await
    .expect("test timed out");
}

/// JDBC with `prepareThreshold=1` sends a read-only transaction's `BEGIN READ ONLY` as a named
/// Parse, Bind and Execute in front of its first query, in one request: the transaction is
/// read-only and goes to a replica, as with the unnamed statement. Before, the Bind of a
/// statement parsed in the same request counted as unknown (a write): the primary.
#[tokio::test]
async fn a_named_begin_read_only_bound_in_its_own_request_goes_to_a_replica() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().replicas(2).build().expect("topology");
        let proxy = start_trust(
            &topology,
            ProxyOptions {
                extra_yaml: "routing:\n  lag_check_interval_ms: 100\n".to_owned(),
                ..ProxyOptions::default()
            },
        );
        wait_routable(&proxy, 2, Duration::from_secs(15)).await;
        let replicas: Vec<u16> = topology.shards[0]
            .replicas
            .iter()
            .map(|r| r.port())
            .collect();
        let mut conn = login_trust(proxy.addr(), topology.user(), topology.database()).await;
        let t = Duration::from_secs(10);
        let mut request = message(b'P', b"S_1\0BEGIN READ ONLY\0\0\0");
        request.extend(message(b'B', b"\0S_1\0\0\0\0\0\0\0"));
        request.extend(message(b'E', b"\0\0\0\0\0"));
        request.extend(extended(
            "SELECT inet_server_port(), current_setting('transaction_read_only')",
        ));
        request.extend(message(b'S', b""));
        conn.send(&request).await;
        let got = conn.until_ready(t).await;
        assert_eq!(tags(&got), b"12C12DCZ".to_vec(), "{got:?}");
        let port: u16 = first_column(&got[5].1).parse().expect("port");
        assert!(
            replicas.contains(&port),
            "ran on {port}, replicas {replicas:?}"
        );
        assert_eq!(got[7].1, b"T".to_vec(), "in the transaction");
        conn.run_ok("COMMIT", t).await;
    })
    .await
    .expect("test timed out");
}

/// Sessions that each make one read spread over the replicas, with `round_robin` and with
/// `least_busy` (idle replicas tie): a session's first read does not always pick the same one.
#[tokio::test]
async fn first_reads_of_new_sessions_spread_over_the_replicas() {
    timeout(TEST_TIMEOUT, async {
        for policy in ["round_robin", "least_busy"] {
            let s = setup(&format!("  load_balance: {policy}\n")).await;
            let mut counts = [0usize; 2];
            for _ in 0..40 {
                let c = s.proxy.connect(&s.topology).await;
                let p = port(&c, &format!("SELECT {WHERE}")).await;
                let i = s
                    .replicas
                    .iter()
                    .position(|r| *r == p)
                    .unwrap_or_else(|| panic!("{policy}: a plain read ran on {p}"));
                counts[i] += 1;
            }
            // All 40 on one replica by chance: 2^-39 with random starts.
            assert!(
                counts.iter().all(|n| *n > 0),
                "{policy}: first reads per replica {counts:?}"
            );
        }
    })
    .await
    .expect("test timed out");
}
