//! Two-phase commit across shards (issue 5): transactions that write on two shards commit on
//! both or neither, and a shardgate killed between PREPARE and COMMIT PREPARED is recovered by
//! the next one, which commits exactly the transactions whose decision it logged.

mod support;

use std::time::Duration;

use shardgate_testkit::{free_port, Topology};
use support::raw::{login_trust, message, tags, RawConn};
use support::sharded::{create_orders, int_keys_on, notes_by_shard, prepared_xacts, primaries};
use support::{start_trust, Proxy, ProxyOptions};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);
const T: Duration = Duration::from_secs(10);

fn topology() -> Topology {
    Topology::builder()
        .shards(2)
        .replicas(0)
        .conf("max_prepared_transactions = 10")
        .build()
        .expect("topology")
}

/// `orders` sharded by `user_id`, with two-phase commit logging to `log`.
fn options(log: &std::path::Path) -> ProxyOptions {
    ProxyOptions {
        extra_yaml: format!(
            "sharding:\n  logical_shards: 1024\n  tables:\n    orders: user_id\n  two_phase_commit: true\n  two_phase_log: {}\n",
            log.display()
        ),
        ..ProxyOptions::default()
    }
}

fn yaml(topology: &Topology, port: u16, admin: u16, log: &std::path::Path) -> String {
    Proxy::config_yaml(topology, port, admin, &options(log))
}

fn start(topology: &Topology, log: &std::path::Path, env: &[(&str, &str)]) -> Proxy {
    let (port, admin) = (free_port(), free_port());
    Proxy::start_yaml_env(&yaml(topology, port, admin, log), port, admin, env)
}

async fn setup(topology: &Topology) -> Vec<tokio_postgres::Client> {
    let direct = primaries(topology).await;
    create_orders(&direct).await;
    direct
}

/// A two-shard topology with the tables, a 2PC proxy, a client, and one key on each shard.
/// Fields drop in order: clients, then the proxy, then the servers.
struct Started {
    client: tokio_postgres::Client,
    direct: Vec<tokio_postgres::Client>,
    proxy: Proxy,
    _dir: tempfile::TempDir,
    _topology: Topology,
    /// A key on s0 and one on s1.
    a: i64,
    b: i64,
}

impl Started {
    async fn new() -> Started {
        let topology = topology();
        let direct = setup(&topology).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let proxy = start(&topology, &dir.path().join("2pc.log"), &[]);
        let client = proxy.connect(&topology).await;
        Started {
            a: int_keys_on(0, 1, 1)[0],
            b: int_keys_on(1, 1, 1)[0],
            _topology: topology,
            _dir: dir,
            proxy,
            direct,
            client,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_writing_two_shards_commits_on_both_or_neither() {
    timeout(LIMIT, async {
        let started = Started::new().await;
        let Started {
            direct,
            a,
            b,
            client,
            proxy,
            ..
        } = &started;
        for sql in [
            "BEGIN".to_owned(),
            format!("INSERT INTO orders (user_id, note) VALUES ({a}, 'a')"),
            format!("INSERT INTO orders (user_id, note) VALUES ({b}, 'b')"),
            "COMMIT".to_owned(),
        ] {
            client.batch_execute(&sql).await.expect(&sql);
        }
        assert_eq!(notes_by_shard(direct).await, vec![vec!["a"], vec!["b"]]);
        // Statement by statement, and the extended protocol.
        client.batch_execute("BEGIN").await.expect("begin");
        client
            .execute("INSERT INTO orders (user_id, note) VALUES ($1, 'c')", &[&a])
            .await
            .expect("s0");
        client
            .execute("INSERT INTO orders (user_id, note) VALUES ($1, 'd')", &[&b])
            .await
            .expect("s1");
        client.batch_execute("COMMIT").await.expect("commit");
        assert_eq!(
            notes_by_shard(direct).await,
            vec![vec!["a", "c"], vec!["b", "d"]]
        );
        // ROLLBACK leaves nothing anywhere.
        client.batch_execute("BEGIN").await.expect("begin");
        client
            .batch_execute(&format!(
                "INSERT INTO orders (user_id, note) VALUES ({a}, 'x')"
            ))
            .await
            .expect("s0");
        client
            .batch_execute(&format!(
                "INSERT INTO orders (user_id, note) VALUES ({b}, 'y')"
            ))
            .await
            .expect("s1");
        client.batch_execute("ROLLBACK").await.expect("rollback");
        assert_eq!(
            notes_by_shard(direct).await,
            vec![vec!["a", "c"], vec!["b", "d"]]
        );
        // A failed statement turns COMMIT into ROLLBACK on every shard.
        client.batch_execute("BEGIN").await.expect("begin");
        client
            .execute("INSERT INTO orders (user_id, note) VALUES ($1, 'z')", &[&a])
            .await
            .expect("s0");
        let err = client
            .execute(
                "INSERT INTO orders (user_id, note) VALUES ($1, 'z'::int::text)",
                &[&b],
            )
            .await
            .expect_err("bad cast on s1");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INVALID_TEXT_REPRESENTATION),
            "{err:?}"
        );
        client
            .batch_execute("COMMIT")
            .await
            .expect("commit answers");
        assert_eq!(
            notes_by_shard(direct).await,
            vec![vec!["a", "c"], vec!["b", "d"]]
        );
        // An autocommit multi-row INSERT across shards is committed the same way.
        let n = client
            .execute(
                &format!("INSERT INTO orders (user_id, note) VALUES ({a}, 'e'), ({b}, 'f')"),
                &[],
            )
            .await
            .expect("split insert");
        assert_eq!(n, 2);
        assert_eq!(
            notes_by_shard(direct).await,
            vec![vec!["a", "c", "e"], vec!["b", "d", "f"]]
        );
        assert_eq!(prepared_xacts(direct).await, 0, "nothing left prepared");
        let committed = proxy.metric("shardgate_2pc_total{outcome=\"committed\"}");
        assert!(committed.unwrap_or(0.0) >= 3.0, "{committed:?}");
    })
    .await
    .expect("bounded");
}

/// A COMMIT sent through the extended protocol with Describes of its statement and portal (as
/// drivers that prepare and run in one round trip send it) is answered as PostgreSQL answers
/// it: ParseComplete, ParameterDescription (no parameters), NoData, BindComplete, NoData,
/// CommandComplete, ReadyForQuery; and commits on both shards.
/// A raw-protocol session (`auth: trust`) in a transaction that wrote 'a' on s0 and 'b' on s1,
/// through a 2PC proxy. Fields drop in order: the proxy, then the servers.
struct Open {
    direct: Vec<tokio_postgres::Client>,
    _proxy: Proxy,
    _dir: tempfile::TempDir,
    _topology: Topology,
}

impl Open {
    async fn begin() -> (Open, RawConn) {
        let topology = topology();
        let direct = setup(&topology).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let proxy = start_trust(&topology, options(&dir.path().join("2pc.log")));
        let mut conn = login_trust(proxy.addr(), topology.user(), topology.database()).await;
        let (a, b) = (int_keys_on(0, 1, 1)[0], int_keys_on(1, 1, 1)[0]);
        conn.run_ok("BEGIN", T).await;
        conn.run_ok(
            &format!("INSERT INTO orders (user_id, note) VALUES ({a}, 'a')"),
            T,
        )
        .await;
        conn.run_ok(
            &format!("INSERT INTO orders (user_id, note) VALUES ({b}, 'b')"),
            T,
        )
        .await;
        let open = Open {
            direct,
            _proxy: proxy,
            _dir: dir,
            _topology: topology,
        };
        (open, conn)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_extended_protocol_commit_is_answered_as_postgresql_does() {
    timeout(LIMIT, async {
        let (open, mut conn) = Open::begin().await;
        let (direct, t) = (&open.direct, T);
        let mut request = message(b'P', b"\0COMMIT\0\0\0");
        request.extend(message(b'D', b"S\0"));
        request.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
        request.extend(message(b'D', b"P\0"));
        request.extend(message(b'E', b"\0\0\0\0\0"));
        request.extend(message(b'S', b""));
        conn.send(&request).await;
        let got = conn.until_ready(t).await;
        assert_eq!(tags(&got), b"1tn2nCZ".to_vec(), "{got:?}");
        assert_eq!(got[1].1, vec![0u8, 0], "no parameters");
        assert_eq!(got[5].1, b"COMMIT\0".to_vec());
        assert_eq!(got[6].1, b"I".to_vec());
        assert_eq!(notes_by_shard(direct).await, vec![vec!["a"], vec!["b"]]);
        assert_eq!(prepared_xacts(direct).await, 0, "nothing left prepared");
    })
    .await
    .expect("bounded");
}

/// In a transaction that wrote on two shards, a request that prepares COMMIT but runs a
/// prepared ROLLBACK rolls back: only what a request runs ends the transaction.
#[tokio::test(flavor = "multi_thread")]
async fn running_rollback_beside_a_prepared_commit_rolls_back() {
    timeout(LIMIT, async {
        let (open, mut conn) = Open::begin().await;
        let (direct, t) = (&open.direct, T);
        let mut request = message(b'P', b"rb\0ROLLBACK\0\0\0");
        request.extend(message(b'S', b""));
        conn.send(&request).await;
        let got = conn.until_ready(t).await;
        assert_eq!(tags(&got), b"1Z".to_vec(), "{got:?}");
        assert_eq!(got[1].1, b"T".to_vec(), "still in the transaction");

        let mut request = message(b'P', b"c\0COMMIT\0\0\0");
        request.extend(message(b'B', b"\0rb\0\0\0\0\0\0\0"));
        request.extend(message(b'E', b"\0\0\0\0\0"));
        request.extend(message(b'S', b""));
        conn.send(&request).await;
        let got = conn.until_ready(t).await;
        assert_eq!(tags(&got), b"12CZ".to_vec(), "{got:?}");
        assert_eq!(got[2].1, b"ROLLBACK\0".to_vec());
        assert_eq!(got[3].1, b"I".to_vec());
        assert_eq!(
            notes_by_shard(direct).await,
            vec![Vec::<String>::new(), vec![]]
        );
        assert_eq!(prepared_xacts(direct).await, 0, "nothing left prepared");
    })
    .await
    .expect("bounded");
}

/// Kills shardgate at `point` during a two-shard commit, restarts it, and returns both shards'
/// rows once recovery has resolved every prepared transaction.
async fn crash_and_recover(point: &str) -> Vec<Vec<String>> {
    let topology = topology();
    let direct = setup(&topology).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("2pc.log");
    let a = int_keys_on(0, 1, 1)[0];
    let b = int_keys_on(1, 1, 1)[0];
    {
        let mut proxy = start(&topology, &log, &[("SHARDGATE_2PC_CRASH", point)]);
        let client = proxy.connect(&topology).await;
        client.batch_execute("BEGIN").await.expect("begin");
        client
            .batch_execute(&format!(
                "INSERT INTO orders (user_id, note) VALUES ({a}, 'a')"
            ))
            .await
            .expect("s0");
        client
            .batch_execute(&format!(
                "INSERT INTO orders (user_id, note) VALUES ({b}, 'b')"
            ))
            .await
            .expect("s1");
        let r = client.batch_execute("COMMIT").await;
        assert!(r.is_err(), "the coordinator died mid-commit");
        assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(false));
    }
    assert_eq!(
        prepared_xacts(&direct).await,
        2,
        "both shards hold the prepared transaction"
    );
    assert_eq!(
        notes_by_shard(&direct).await,
        vec![Vec::<String>::new(), vec![]]
    );
    let _proxy = start(
        &topology,
        &log,
        &[
            ("SHARDGATE_2PC_RECOVERY_MIN_AGE_SECS", "0"),
            ("SHARDGATE_2PC_RECOVERY_INTERVAL_MS", "200"),
        ],
    );
    let resolved = support::poll_until(Duration::from_secs(20), || async {
        prepared_xacts(&direct).await == 0
    })
    .await;
    assert!(
        resolved.is_some(),
        "recovery resolved the prepared transactions"
    );
    notes_by_shard(&direct).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_logged_decision_is_committed_by_recovery() {
    let rows = timeout(LIMIT, crash_and_recover("after_decision"))
        .await
        .expect("bounded");
    assert_eq!(rows, vec![vec!["a"], vec!["b"]]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unlogged_prepare_is_rolled_back_by_recovery() {
    let rows = timeout(LIMIT, crash_and_recover("after_prepare"))
        .await
        .expect("bounded");
    assert_eq!(rows, vec![Vec::<String>::new(), vec![]]);
}

/// Preparing COMMIT (Parse, Describe, Sync: what a driver's `prepare` sends) does not end the
/// transaction; executing the prepared statement does.
#[tokio::test(flavor = "multi_thread")]
async fn preparing_commit_does_not_commit_until_it_is_executed() {
    timeout(LIMIT, async {
        let started = Started::new().await;
        let Started {
            direct,
            a,
            b,
            client,
            ..
        } = &started;
        client.batch_execute("BEGIN").await.expect("begin");
        for (key, note) in [(a, "a"), (b, "b")] {
            client
                .batch_execute(&format!(
                    "INSERT INTO orders (user_id, note) VALUES ({key}, '{note}')"
                ))
                .await
                .expect("insert");
        }
        let commit = client.prepare("COMMIT").await.expect("prepare COMMIT");
        // Still one open transaction: nothing visible, nothing prepared, and it goes on.
        assert_eq!(
            notes_by_shard(direct).await,
            vec![Vec::<String>::new(), vec![]]
        );
        assert_eq!(prepared_xacts(direct).await, 0);
        client
            .batch_execute(&format!(
                "INSERT INTO orders (user_id, note) VALUES ({b}, 'c')"
            ))
            .await
            .expect("still in the transaction");
        client.execute(&commit, &[]).await.expect("COMMIT");
        assert_eq!(
            notes_by_shard(direct).await,
            vec![vec!["a"], vec!["b", "c"]]
        );
        assert_eq!(prepared_xacts(direct).await, 0);
        // The session goes on outside a transaction.
        let n: i64 = client
            .query_one("SELECT count(*) FROM orders WHERE user_id = $1", &[&b])
            .await
            .expect("read")
            .get(0);
        assert_eq!(n, 2);
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_to_a_savepoint_undoes_every_writer_shard() {
    timeout(LIMIT, async {
        let started = Started::new().await;
        let Started {
            direct,
            a,
            b,
            client,
            ..
        } = &started;
        // The savepoint is taken on s0 and reaches s1 when s1 joins; the rollback to it runs
        // on s1, and s0, parked, runs it before it prepares.
        for sql in [
            "BEGIN".to_owned(),
            format!("INSERT INTO orders (user_id, note) VALUES ({a}, 'kept')"),
            "SAVEPOINT sp".to_owned(),
            format!("INSERT INTO orders (user_id, note) VALUES ({a}, 'gone')"),
            format!("INSERT INTO orders (user_id, note) VALUES ({b}, 'gone')"),
            "ROLLBACK TO SAVEPOINT sp".to_owned(),
            format!("INSERT INTO orders (user_id, note) VALUES ({b}, 'kept')"),
            "COMMIT".to_owned(),
        ] {
            client.batch_execute(&sql).await.expect(&sql);
        }
        assert_eq!(
            notes_by_shard(direct).await,
            vec![vec!["kept"], vec!["kept"]]
        );
    })
    .await
    .expect("test timed out");
}

/// A session-level SET made inside a transaction that commits on two shards is the session's
/// from then on, as on one server; one inside a transaction that rolls back is not.
#[tokio::test(flavor = "multi_thread")]
async fn a_set_in_a_two_shard_transaction_follows_its_end() {
    timeout(LIMIT, async {
        let started = Started::new().await;
        let Started { a, b, client, .. } = &started;
        let tz = || async {
            support::first_cell(client, "SHOW TimeZone")
                .await
                .expect("a row")
        };
        let before = tz().await;
        for (zone, end) in [("Asia/Tokyo", "COMMIT"), ("America/Lima", "ROLLBACK")] {
            for sql in [
                "BEGIN".to_owned(),
                format!("SET TimeZone = '{zone}'"),
                format!("INSERT INTO orders (user_id, note) VALUES ({a}, 'a')"),
                format!("INSERT INTO orders (user_id, note) VALUES ({b}, 'b')"),
                end.to_owned(),
            ] {
                client.batch_execute(&sql).await.expect(&sql);
            }
            let want = if end == "COMMIT" { zone } else { "Asia/Tokyo" };
            assert_eq!(tz().await, want, "{zone} {end}");
            assert_eq!(tz().await, want, "{zone} {end}: again");
        }
        assert_ne!(before, "Asia/Tokyo");
    })
    .await
    .expect("test timed out");
}
