//! Routing corner cases (from the session 9 routing hunt), each end to end against real
//! PostgreSQL through shardgate: what each test's doc says must hold, on the wire.

mod support;

use std::time::Duration;

use shardgate_testkit::Topology;
use support::raw::{error_field, extended, first_column, login_trust, message, query, RawConn};
use support::sharded::{int_keys_on, sharding_yaml, SCHEMA};
use support::{poll_until, start_trust, wait_routable, ProxyOptions};
use tokio::time::timeout;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(10);

type Reply = Vec<(u8, Vec<u8>)>;

async fn run(conn: &mut RawConn, sql: &str) -> Reply {
    conn.send(&query(sql)).await;
    conn.until_ready(STEP).await
}

/// The transaction status of the ReadyForQuery that ends `got`.
fn status(got: &Reply) -> u8 {
    match got.last() {
        Some((b'Z', body)) => body[0],
        _ => panic!("no ReadyForQuery at the end: {got:?}"),
    }
}

/// The SQLSTATE of the first ErrorResponse, if any.
fn error_code(got: &Reply) -> Option<String> {
    got.iter()
        .find(|(t, _)| *t == b'E')
        .and_then(|(_, body)| error_field(body, b'C'))
}

/// The command tags, in order.
fn command_tags(got: &Reply) -> Vec<String> {
    got.iter()
        .filter(|(t, _)| *t == b'C')
        .map(|(_, body)| {
            String::from_utf8_lossy(body.trim_ascii_end())
                .trim_end_matches('\0')
                .to_owned()
        })
        .collect()
}

/// The first column of the first DataRow.
fn value(got: &Reply) -> String {
    let row = got
        .iter()
        .find(|(t, _)| *t == b'D')
        .unwrap_or_else(|| panic!("no row: {got:?}"));
    first_column(&row.1)
}

/// Asserts `got` failed with `code` and left the session in status `tx`.
fn assert_failed(got: &Reply, code: &str, tx: u8, what: &str) {
    assert_eq!(error_code(got).as_deref(), Some(code), "{what}: {got:?}");
    assert_eq!(status(got), tx, "{what}: status");
}

/// Asserts the session is in a failed transaction that COMMIT ends with ROLLBACK.
async fn assert_aborted_until_commit(conn: &mut RawConn, what: &str) {
    let got = run(conn, "SELECT 1").await;
    assert_failed(&got, "25P02", b'E', &format!("{what}: SELECT 1 after it"));
    let got = run(conn, "SHOW shardgate.target").await;
    assert_failed(&got, "25P02", b'E', &format!("{what}: SHOW after it"));
    let got = run(conn, "COMMIT").await;
    assert_eq!(command_tags(&got), ["ROLLBACK"], "{what}: COMMIT: {got:?}");
    assert_eq!(status(&got), b'I', "{what}: after COMMIT");
}

/// Replicas of shard `shard` in `/api/topology` that are routable.
fn routable_replicas(proxy: &support::Proxy, shard: usize) -> usize {
    let v = proxy.admin_json("/api/topology");
    v["shards"][shard]["nodes"].as_array().map_or(0, |ns| {
        ns.iter()
            .filter(|n| n["role"] == "replica" && n["routable"] == true)
            .count()
    })
}

/// shardgate's own errors inside a transaction (here a bad `SET shardgate.*`) fail it, as a
/// server's error would.
#[tokio::test]
async fn own_errors_fail_the_transaction() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().build().expect("topology");
        let proxy = start_trust(&topology, ProxyOptions::default());
        let mut c = login_trust(proxy.addr(), topology.user(), topology.database()).await;
        // A bad value of shardgate's own setting, in a transaction that reached the primary.
        for begin in ["BEGIN", "BEGIN ISOLATION LEVEL REPEATABLE READ"] {
            assert_eq!(status(&run(&mut c, begin).await), b'T', "{begin}");
            let got = run(&mut c, "SELECT txid_current()").await;
            assert_eq!(error_code(&got), None, "{begin}: {got:?}");
            let got = run(&mut c, "SET shardgate.target = 'bogus'").await;
            assert_failed(&got, "22023", b'E', begin);
            assert_aborted_until_commit(&mut c, begin).await;
        }
        // The same in a held-back transaction (nothing reached a server yet), and through
        // the extended protocol.
        assert_eq!(status(&run(&mut c, "BEGIN").await), b'T');
        let got = run(&mut c, "SHOW shardgate.nonsense").await;
        assert_failed(&got, "42704", b'E', "held-back BEGIN, unknown setting");
        assert_aborted_until_commit(&mut c, "held-back BEGIN").await;
        assert_eq!(status(&run(&mut c, "BEGIN").await), b'T');
        run(&mut c, "SELECT txid_current()").await;
        let mut request = extended("SET shardgate.target = 'bogus'");
        request.extend(message(b'S', b""));
        c.send(&request).await;
        let got = c.until_ready(STEP).await;
        assert_failed(&got, "22023", b'E', "extended SET in a transaction");
        assert_aborted_until_commit(&mut c, "extended SET").await;

        // The session is whole, and no failed SET changed the setting.
        let got = run(&mut c, "SHOW shardgate.target").await;
        assert_eq!(value(&got), "auto");
        let got = run(&mut c, "/* shardgate: primary */ SELECT 41 + 1").await;
        assert_eq!(value(&got), "42");
    })
    .await
    .expect("test timed out");
}

/// `SET shardgate.target = 'primary'` keeps read-only transactions on the primary.
#[tokio::test]
async fn target_primary_keeps_read_only_transactions_on_the_primary() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().replicas(1).build().expect("topology");
        let proxy = start_trust(
            &topology,
            ProxyOptions {
                extra_yaml: "routing:\n  lag_check_interval_ms: 100\n".to_owned(),
                ..ProxyOptions::default()
            },
        );
        wait_routable(&proxy, 1, Duration::from_secs(15)).await;
        let mut c = login_trust(proxy.addr(), topology.user(), topology.database()).await;
        let in_recovery = "SELECT pg_is_in_recovery()::text";

        run(&mut c, "SET shardgate.target = 'primary'").await;
        for begin in [
            vec!["BEGIN READ ONLY"],
            vec!["BEGIN", "SET TRANSACTION READ ONLY"],
            vec!["START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"],
        ] {
            for sql in &begin {
                assert_eq!(error_code(&run(&mut c, sql).await), None, "{sql}");
            }
            let got = run(&mut c, in_recovery).await;
            assert_eq!(value(&got), "false", "{begin:?} under target=primary");
            run(&mut c, "COMMIT").await;
        }
        run(&mut c, "RESET shardgate.target").await;
        run(&mut c, "BEGIN READ ONLY").await;
        assert_eq!(
            value(&run(&mut c, in_recovery).await),
            "true",
            "auto: a replica"
        );
        run(&mut c, "COMMIT").await;
    })
    .await
    .expect("test timed out");
}

/// A read prepared with Parse, Describe and Flush (asyncpg) goes to a replica; a write so
/// prepared goes to the primary.
#[tokio::test]
async fn a_read_prepared_with_flush_goes_to_a_replica() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().replicas(1).build().expect("topology");
        let proxy = start_trust(
            &topology,
            ProxyOptions {
                extra_yaml: "routing:\n  lag_check_interval_ms: 100\n".to_owned(),
                ..ProxyOptions::default()
            },
        );
        wait_routable(&proxy, 1, Duration::from_secs(15)).await;
        let mut c = login_trust(proxy.addr(), topology.user(), topology.database()).await;
        let in_recovery = "SELECT pg_is_in_recovery()::text";

        // asyncpg's prepare: Parse, Describe, Flush; its Bind, Execute and Sync come later.
        // (Another session writes, so this one's reads are free of read-your-writes.)
        let mut w = login_trust(proxy.addr(), topology.user(), topology.database()).await;
        run(&mut w, "CREATE SEQUENCE seq").await;
        for name in ["", "r1"] {
            c.send(
                &[
                    message(b'P', format!("{name}\0{in_recovery}\0\0\0").as_bytes()),
                    message(b'D', format!("S{name}\0").as_bytes()),
                    message(b'H', b""),
                ]
                .concat(),
            )
            .await;
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(c.next(STEP).await.expect("a reply"));
            }
            assert_eq!(
                support::raw::tags(&got),
                b"1tT",
                "prepare {name:?}: {got:?}"
            );
            c.send(
                &[
                    message(b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes()),
                    message(b'E', b"\0\0\0\0\0"),
                    message(b'S', b""),
                ]
                .concat(),
            )
            .await;
            let got = c.until_ready(STEP).await;
            assert_eq!(value(&got), "true", "a flushed prepare {name:?} of a read");
        }
        // A write so prepared (unnamed: its execution follows on the same connection) stays
        // on the primary: a replica would refuse nextval.
        c.send(
            &[
                message(b'P', b"\0SELECT nextval('seq')::text\0\0\0"),
                message(b'D', b"S\0"),
                message(b'H', b""),
            ]
            .concat(),
        )
        .await;
        for _ in 0..3 {
            c.next(STEP).await.expect("a reply");
        }
        c.send(
            &[
                message(b'B', b"\0\0\0\0\0\0\0\0"),
                message(b'E', b"\0\0\0\0\0"),
                message(b'S', b""),
            ]
            .concat(),
        )
        .await;
        let got = c.until_ready(STEP).await;
        assert_eq!(value(&got), "1", "nextval prepared with Flush: {got:?}");
        // The decision log shows the prepares of the read (and the named one's execution)
        // as reads on the replica.
        let decisions = proxy.admin_json("/api/decisions?limit=100");
        let list = decisions["decisions"].as_array().expect("decisions");
        let reads: Vec<_> = list
            .iter()
            .filter(|d| d["sql"].as_str() == Some(in_recovery) && d["kind"] != "transaction")
            .collect();
        assert_eq!(reads.len(), 3, "{list:?}");
        for d in reads {
            assert_eq!(
                (&d["role"], &d["kind"]),
                (&"replica".into(), &"read".into()),
                "{d}"
            );
        }
    })
    .await
    .expect("test timed out");
}

/// A function that writes but is not in `write_functions`, run on the primary in a transaction
/// or under a primary hint: the session's next read must not go to a replica that has not
/// replayed it. The replica is paused (and the lag bounds are loose, so it stays routable).
#[tokio::test]
async fn what_ran_on_the_primary_keeps_reads_off_a_stale_replica() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().replicas(1).build().expect("topology");
        let proxy = start_trust(
            &topology,
            ProxyOptions {
                extra_yaml: "routing:\n  lag_check_interval_ms: 100\n  max_replica_lag_ms: 3600000\n  max_replica_lag_bytes: 1073741824\n".to_owned(),
                ..ProxyOptions::default()
            },
        );
        wait_routable(&proxy, 1, Duration::from_secs(15)).await;
        let mut c = login_trust(proxy.addr(), topology.user(), topology.database()).await;
        run(
            &mut c,
            "CREATE TABLE cnt (n int); INSERT INTO cnt VALUES (0);
             CREATE FUNCTION wbump() RETURNS int LANGUAGE sql AS
               'UPDATE cnt SET n = n + 1 RETURNING n';",
        )
        .await;
        topology
            .wait_replicas_caught_up(Duration::from_secs(10))
            .expect("replica caught up");
        topology.shards[0].replicas[0]
            .pause_replay()
            .expect("pause replay");
        // The write above may have left the session reading from the primary: wait until the
        // monitor has seen the replica replay it, so reads go to the (now paused) replica.
        let mut reader = login_trust(proxy.addr(), topology.user(), topology.database()).await;
        let read = "SELECT n::text || '@' || pg_is_in_recovery()::text FROM cnt";
        let mut fresh = login_trust(proxy.addr(), topology.user(), topology.database()).await;
        assert_eq!(value(&run(&mut fresh, read).await), "0@true");
        let ok = {
            let mut ok = false;
            for _ in 0..100 {
                if value(&run(&mut c, read).await) == "0@true" {
                    ok = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ok
        };
        assert!(ok, "the writer's reads never reached the replica");

        let mut expected = 0;
        for (what, sqls) in [
            ("a transaction", vec!["BEGIN", "SELECT wbump()", "COMMIT"]),
            ("one request", vec!["BEGIN; SELECT wbump(); COMMIT"]),
            ("a hint", vec!["/* shardgate: primary */ SELECT wbump()"]),
            (
                "a filter",
                vec!["BEGIN", "SELECT 1 FROM cnt WHERE wbump() > 0", "COMMIT"],
            ),
        ] {
            for sql in &sqls {
                assert_eq!(error_code(&run(&mut c, sql).await), None, "{what}: {sql}");
            }
            expected += 1;
            assert_eq!(
                value(&run(&mut c, read).await),
                format!("{expected}@false"),
                "{what}: the next read must see the write (on the primary)"
            );
        }
        // Others still read the paused replica: it was there all along.
        assert_eq!(value(&run(&mut reader, read).await), "0@true");
    })
    .await
    .expect("test timed out");
}

/// Sharded, `when_no_replica: error`, s1's replica down: a read-only transaction that needs
/// s1 fails there with 57P03, and that fails the transaction, as PostgreSQL would.
#[tokio::test]
async fn a_routing_failure_inside_a_sharded_read_only_transaction_aborts_it() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder()
            .shards(2)
            .replicas(1)
            .build()
            .expect("topology");
        for shard in &topology.shards {
            let d = support::connect(&support::direct_conn_str(&topology, &shard.primary))
                .await
                .expect("direct");
            d.batch_execute(SCHEMA).await.expect("schema");
        }
        topology
            .wait_replicas_caught_up(Duration::from_secs(10))
            .expect("replicas caught up");
        let proxy = start_trust(
            &topology,
            ProxyOptions {
                extra_yaml: format!(
                    "routing:\n  lag_check_interval_ms: 100\n  when_no_replica: error\n{}",
                    sharding_yaml(None)
                ),
                ..ProxyOptions::default()
            },
        );
        let up = poll_until(Duration::from_secs(15), || async {
            routable_replicas(&proxy, 0) == 1 && routable_replicas(&proxy, 1) == 1
        })
        .await;
        assert!(up.is_some(), "replicas not routable");
        topology.shards[1].replicas[0]
            .stop()
            .expect("stop s1's replica");
        let down = poll_until(Duration::from_secs(15), || async {
            routable_replicas(&proxy, 1) == 0
        })
        .await;
        assert!(down.is_some(), "s1's replica still routable");
        let a = int_keys_on(0, 1, 1)[0];
        let b = int_keys_on(1, 1, 1)[0];
        let mut c = login_trust(proxy.addr(), topology.user(), topology.database()).await;
        for begin in [
            "BEGIN READ ONLY",
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        ] {
            assert_eq!(status(&run(&mut c, begin).await), b'T', "{begin}");
            let got = run(
                &mut c,
                &format!("SELECT count(*) FROM orders WHERE user_id = {a}"),
            )
            .await;
            assert_eq!(value(&got), "0", "{begin}: the read on s0");
            let got = run(
                &mut c,
                &format!("SELECT count(*) FROM orders WHERE user_id = {b}"),
            )
            .await;
            assert_failed(&got, "57P03", b'E', &format!("{begin}: the read on s1"));
            assert_aborted_until_commit(&mut c, begin).await;
        }
        let got = run(
            &mut c,
            &format!("SELECT count(*) FROM orders WHERE user_id = {a}"),
        )
        .await;
        assert_eq!(value(&got), "0", "the session after the transaction");

        // Another refusal of shardgate's own, in a read-write transaction.
        run(&mut c, "BEGIN").await;
        let read_a = format!("SELECT count(*) FROM orders WHERE user_id = {a}");
        assert_eq!(value(&run(&mut c, &read_a).await), "0", "the read on s0");
        let got = run(&mut c, "COPY orders FROM STDIN").await;
        assert_failed(&got, "0A000", b'E', "COPY FROM into both shards");
        assert_aborted_until_commit(&mut c, "COPY FROM into both shards").await;
    })
    .await
    .expect("test timed out");
}

/// With no replica and `when_no_replica: error` (any read that wants one fails 57P03), COMMIT
/// and ROLLBACK with no transaction open are answered as PostgreSQL answers them.
#[tokio::test]
async fn a_stray_commit_or_rollback_needs_no_replica() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().build().expect("topology");
        let proxy = start_trust(
            &topology,
            ProxyOptions {
                extra_yaml: "routing:\n  when_no_replica: error\n".to_owned(),
                ..ProxyOptions::default()
            },
        );
        let mut c = login_trust(proxy.addr(), topology.user(), topology.database()).await;
        let got = run(&mut c, "SELECT 1").await;
        assert_failed(&got, "57P03", b'I', "a read with no replica");

        // COMMIT, ROLLBACK and END with no transaction open: PostgreSQL's warning and tag.
        for (sql, tag) in [
            ("COMMIT", "COMMIT"),
            ("ROLLBACK", "ROLLBACK"),
            ("END", "COMMIT"),
            ("ABORT", "ROLLBACK"),
        ] {
            let got = run(&mut c, sql).await;
            assert_eq!(error_code(&got), None, "{sql}: {got:?}");
            assert_eq!(command_tags(&got), [tag], "{sql}: {got:?}");
            let notice = got
                .iter()
                .find(|(t, _)| *t == b'N')
                .unwrap_or_else(|| panic!("{sql}: no warning: {got:?}"));
            assert_eq!(
                error_field(&notice.1, b'C').as_deref(),
                Some("25P01"),
                "{sql}"
            );
            assert_eq!(status(&got), b'I', "{sql}");
        }
        let mut request = extended("COMMIT");
        request.extend(message(b'S', b""));
        c.send(&request).await;
        let got = c.until_ready(STEP).await;
        assert_eq!(error_code(&got), None, "extended COMMIT: {got:?}");
        assert_eq!(command_tags(&got), ["COMMIT"], "extended COMMIT: {got:?}");
    })
    .await
    .expect("test timed out");
}
