//! A request that ends a transaction over shards beside other statements (a pipelining
//! driver's `[Execute ..., Execute COMMIT, Sync]`, a simple `INSERT ...; COMMIT`, `COMMIT;
//! BEGIN`, `COMMIT AND CHAIN`): shardgate cannot run those statements on their shards and end
//! the transaction in one go, so it refuses them with 0A000 (hint: COMMIT in its own request),
//! rolls the transaction back on every shard, and the client ends it with ROLLBACK. When the
//! transaction wrote on one shard at most and the request's statements all belong on that
//! shard, the request runs there as PostgreSQL runs it. With and without two-phase commit.

mod support;

use std::time::Duration;

use shardgate_testkit::Topology;
use support::raw::{error_field, extended, login_trust, message, query, tags, RawConn};
use support::sharded::{create_orders, int_keys_on, notes_by_shard, prepared_xacts, primaries};
use support::{start_trust, Proxy, ProxyOptions};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);
const T: Duration = Duration::from_secs(10);

struct Started {
    direct: Vec<tokio_postgres::Client>,
    proxy: Proxy,
    _dir: tempfile::TempDir,
    topology: Topology,
    /// A key on s0 and one on s1.
    a: i64,
    b: i64,
}

async fn start(two_phase: bool) -> Started {
    let topology = Topology::builder()
        .shards(2)
        .replicas(0)
        .conf("max_prepared_transactions = 10")
        .build()
        .expect("topology");
    let direct = primaries(&topology).await;
    create_orders(&direct).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let two_phase = if two_phase {
        format!(
            "  two_phase_commit: true\n  two_phase_log: {}\n",
            dir.path().join("2pc.log").display()
        )
    } else {
        String::new()
    };
    let options = ProxyOptions {
        extra_yaml: format!(
            "sharding:\n  logical_shards: 1024\n  tables:\n    orders: user_id\n{two_phase}"
        ),
        ..ProxyOptions::default()
    };
    let proxy = start_trust(&topology, options);
    Started {
        a: int_keys_on(0, 1, 1)[0],
        b: int_keys_on(1, 1, 1)[0],
        direct,
        proxy,
        _dir: dir,
        topology,
    }
}

impl Started {
    async fn login(&self) -> RawConn {
        login_trust(
            self.proxy.addr(),
            self.topology.user(),
            self.topology.database(),
        )
        .await
    }
}

fn insert(key: i64, note: &str) -> String {
    format!("INSERT INTO orders (user_id, note) VALUES ({key}, '{note}')")
}

/// Runs each simple query; none may fail.
async fn run_ok(conn: &mut RawConn, sqls: &[String]) {
    for sql in sqls {
        conn.run_ok(sql, T).await;
    }
}

/// Sends `request` and checks it is refused with 0A000 and the hint, the session left in a
/// failed transaction; then ROLLBACK ends it.
async fn expect_refused_then_rollback(conn: &mut RawConn, request: &[u8], what: &str) {
    conn.send(request).await;
    let got = conn.until_ready(T).await;
    assert_eq!(tags(&got), b"EZ".to_vec(), "{what}: {got:?}");
    assert_eq!(
        error_field(&got[0].1, b'C').as_deref(),
        Some("0A000"),
        "{what}: {got:?}"
    );
    let hint = error_field(&got[0].1, b'H').unwrap_or_default();
    assert!(hint.contains("in its own request"), "{what}: hint {hint}");
    assert_eq!(got[1].1, b"E".to_vec(), "{what}: a failed transaction");
    // Still refused until it ends, as PostgreSQL does in a failed transaction.
    conn.send(&query("SELECT 1")).await;
    let got = conn.until_ready(T).await;
    let failed = got
        .iter()
        .find(|(tag, _)| *tag == b'E')
        .and_then(|(_, body)| error_field(body, b'C'));
    assert_eq!(failed.as_deref(), Some("25P02"), "{what}: {got:?}");
    conn.send(&query("ROLLBACK")).await;
    let got = conn.until_ready(T).await;
    let got: Vec<_> = got.into_iter().filter(|(tag, _)| *tag != b'N').collect();
    assert_eq!(tags(&got), b"CZ".to_vec(), "{what}: ROLLBACK {got:?}");
    assert_eq!(got[0].1, b"ROLLBACK\0".to_vec(), "{what}");
    assert_eq!(got[1].1, b"I".to_vec(), "{what}");
}

/// In a transaction that wrote on both shards (two-phase commit configured), every request
/// that runs something beside its COMMIT is refused and nothing of the transaction commits
/// anywhere; a lone COMMIT still commits on both.
#[tokio::test(flavor = "multi_thread")]
async fn two_phase_commit_beside_other_statements_is_refused_and_rolls_back() {
    timeout(LIMIT, async {
        let s = start(true).await;
        let (a, b) = (s.a, s.b);
        let mut conn = s.login().await;
        let open = |n: &str| {
            vec![
                "BEGIN".to_owned(),
                insert(a, &format!("{n}a")),
                insert(b, &format!("{n}b")),
            ]
        };
        let sync = message(b'S', b"");

        // (a) A pipeline: a write on a shard already in the transaction, then COMMIT, one Sync.
        run_ok(&mut conn, &open("1")).await;
        let mut request = extended(&insert(b, "1c"));
        request.extend(extended("COMMIT"));
        request.extend(&sync);
        expect_refused_then_rollback(&mut conn, &request, "write, COMMIT, Sync").await;
        // The same with a read.
        run_ok(&mut conn, &open("2")).await;
        let mut request = extended(&format!("SELECT note FROM orders WHERE user_id = {b}"));
        request.extend(extended("COMMIT"));
        request.extend(&sync);
        expect_refused_then_rollback(&mut conn, &request, "read, COMMIT, Sync").await;
        // (b) One simple Query.
        run_ok(&mut conn, &open("3")).await;
        let request = query(&format!("{}; COMMIT", insert(a, "3c")));
        expect_refused_then_rollback(&mut conn, &request, "INSERT; COMMIT").await;
        // (c) Statements after COMMIT that start a new transaction.
        run_ok(&mut conn, &open("4")).await;
        expect_refused_then_rollback(&mut conn, &query("COMMIT; BEGIN"), "COMMIT; BEGIN").await;
        run_ok(&mut conn, &open("5")).await;
        expect_refused_then_rollback(&mut conn, &query("COMMIT AND CHAIN"), "AND CHAIN").await;

        assert_eq!(
            notes_by_shard(&s.direct).await,
            vec![Vec::<String>::new(), vec![]]
        );
        assert_eq!(prepared_xacts(&s.direct).await, 0, "nothing left prepared");

        // A lone COMMIT commits on both shards, in either protocol.
        run_ok(&mut conn, &open("6")).await;
        let mut request = extended("COMMIT");
        request.extend(&sync);
        conn.send(&request).await;
        let got = conn.until_ready(T).await;
        assert_eq!(tags(&got), b"12CZ".to_vec(), "{got:?}");
        assert_eq!(got[2].1, b"COMMIT\0".to_vec());
        assert_eq!(got[3].1, b"I".to_vec());
        assert_eq!(
            notes_by_shard(&s.direct).await,
            vec![vec!["6a"], vec!["6b"]]
        );
        assert_eq!(prepared_xacts(&s.direct).await, 0, "nothing left prepared");
    })
    .await
    .expect("bounded");
}

/// A transaction that wrote on one shard: a request whose statements belong on that shard runs
/// with its COMMIT as PostgreSQL runs it; one that needs the other shard (which would have run
/// on the wrong shard) is refused and nothing commits.
#[tokio::test(flavor = "multi_thread")]
async fn commit_beside_statements_runs_on_one_shard_and_is_refused_across_shards() {
    timeout(LIMIT, async {
        for two_phase in [false, true] {
            let s = start(two_phase).await;
            let (a, b) = (s.a, s.b);
            s.direct[1]
                .batch_execute(&insert(b, "seed"))
                .await
                .expect("seed s1");
            let mut conn = s.login().await;
            let sync = message(b'S', b"");
            let mode = if two_phase { "2pc" } else { "no 2pc" };

            // On one shard: INSERT; COMMIT runs, both committed.
            run_ok(&mut conn, &["BEGIN".to_owned(), insert(a, "1a")]).await;
            conn.send(&query(&format!("{}; COMMIT", insert(a, "1b"))))
                .await;
            let got = conn.until_ready(T).await;
            assert_eq!(tags(&got), b"CCZ".to_vec(), "{mode}: {got:?}");
            assert_eq!(got[0].1, b"INSERT 0 1\0".to_vec(), "{mode}");
            assert_eq!(got[1].1, b"COMMIT\0".to_vec(), "{mode}");
            assert_eq!(got[2].1, b"I".to_vec(), "{mode}");
            assert_eq!(
                notes_by_shard(&s.direct).await,
                vec![vec!["1a", "1b"], vec!["seed"]],
                "{mode}"
            );

            // Wrote on s0; the request writes on s1 before COMMIT.
            run_ok(&mut conn, &["BEGIN".to_owned(), insert(a, "2a")]).await;
            let request = query(&format!("{}; COMMIT", insert(b, "2b")));
            expect_refused_then_rollback(&mut conn, &request, mode).await;
            // Wrote on s0; the request reads s1 before COMMIT.
            run_ok(&mut conn, &["BEGIN".to_owned(), insert(a, "3a")]).await;
            let mut request = extended(&format!("SELECT note FROM orders WHERE user_id = {b}"));
            request.extend(extended("COMMIT"));
            request.extend(&sync);
            expect_refused_then_rollback(&mut conn, &request, mode).await;
            // Wrote on s0 and read s1 (held by the transaction); the request reads s1.
            let open = |note: &str| {
                vec![
                    "BEGIN".to_owned(),
                    insert(a, note),
                    format!("SELECT note FROM orders WHERE user_id = {b}"),
                ]
            };
            run_ok(&mut conn, &open("4a")).await;
            let mut request = extended(&format!("SELECT note FROM orders WHERE user_id = {b}"));
            request.extend(extended("COMMIT"));
            request.extend(&sync);
            expect_refused_then_rollback(&mut conn, &request, mode).await;
            assert_eq!(
                notes_by_shard(&s.direct).await,
                vec![vec!["1a", "1b"], vec!["seed"]],
                "{mode}: nothing else committed, nothing on the wrong shard"
            );
            // The same transaction, and the request reads s0, where it wrote: it runs there.
            run_ok(&mut conn, &open("5a")).await;
            let mut request = extended(&format!("SELECT note FROM orders WHERE user_id = {a}"));
            request.extend(extended("COMMIT"));
            request.extend(&sync);
            conn.send(&request).await;
            let got = conn.until_ready(T).await;
            assert_eq!(tags(&got), b"12DDDC12CZ".to_vec(), "{mode}: {got:?}");
            assert_eq!(got[5].1, b"SELECT 3\0".to_vec(), "{mode}");
            assert_eq!(got[8].1, b"COMMIT\0".to_vec(), "{mode}");
            assert_eq!(got[9].1, b"I".to_vec(), "{mode}");
            assert_eq!(
                notes_by_shard(&s.direct).await,
                vec![vec!["1a", "1b", "5a"], vec!["seed"]],
                "{mode}"
            );
            assert_eq!(prepared_xacts(&s.direct).await, 0, "{mode}");
        }
    })
    .await
    .expect("bounded");
}
