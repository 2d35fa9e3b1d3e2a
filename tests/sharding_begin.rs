//! A BEGIN sent through the extended protocol in a sharded transaction, as the drivers send it:
//! pgjdbc pipelines Parse/Bind/Execute of BEGIN in front of the transaction's first query in
//! one request, psycopg 3 sends Parse/Bind/Describe/Execute of BEGIN as a request of its own.
//! Either is held back like a simple-protocol BEGIN: a query across shards right behind it
//! runs (it is the only statement that reaches the shards), and the transaction holds only the
//! shards its statements use. Every read is bounded, so a hang fails the test.

mod support;

use std::time::{Duration, Instant};

use support::raw::{
    bind, describe, error_field, execute, first_column, login_trust, parse, sync, RawConn,
};
use support::sharded::{int_keys_on, seed_with_decoys, sharded_options, sharded_setup};
use support::start_trust;
use tokio::time::timeout;

const TEST_TIMEOUT: Duration = Duration::from_secs(90);
const STEP: Duration = Duration::from_secs(10);

/// pgjdbc's BEGIN (it asks for no metadata): Parse, Bind, Execute, through the unnamed
/// statement.
fn jdbc_begin(begin: &str) -> Vec<u8> {
    [parse("", begin), bind("", "", &[]), execute("", 0)].concat()
}

/// pgjdbc's query, or libpq's `PQsendQueryParams` (psycopg 3) without the Sync: Parse, Bind,
/// Describe of the portal, Execute.
fn pbde(sql: &str, params: &[&str]) -> Vec<u8> {
    [
        parse("", sql),
        bind("", "", params),
        describe(b'P', ""),
        execute("", 0),
    ]
    .concat()
}

/// The reply's messages as text: tags, with command tags, first columns, SQLSTATEs and the
/// transaction status spelled out.
async fn replies(conn: &mut RawConn, request: &[u8]) -> Vec<String> {
    conn.send(request).await;
    let got = conn.until_ready(STEP).await;
    got.iter()
        .map(|(tag, body)| match tag {
            b'C' => format!("C {}", String::from_utf8_lossy(&body[..body.len() - 1])),
            b'D' => format!("D {}", first_column(body)),
            b'E' => format!("E {}", error_field(body, b'C').unwrap_or_default()),
            b'Z' => format!("Z {}", body[0] as char),
            other => (*other as char).to_string(),
        })
        .collect()
}

/// pgjdbc with autoCommit off: BEGIN pipelined in front of a keyless count (a scatter) runs it,
/// in every form of BEGIN, through the unnamed statement and through pgjdbc's named one, and
/// the client gets exactly PostgreSQL's replies.
#[tokio::test]
async fn a_pipelined_extended_begin_lets_a_scatter_run_first() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let proxy = start_trust(&s.topology, sharded_options(None));
        let a = int_keys_on(0, 1, 1)[0];
        let b = int_keys_on(1, 1, 1)[0];
        seed_with_decoys(&s.direct, &[a, b]).await;
        let mut conn = login_trust(proxy.addr(), s.topology.user(), s.topology.database()).await;
        let count = "SELECT count(*) FROM orders";
        for (begin, tag) in [
            ("BEGIN", "BEGIN"),
            (
                "START TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                "START TRANSACTION",
            ),
            ("BEGIN READ WRITE", "BEGIN"),
        ] {
            let got = replies(
                &mut conn,
                &[jdbc_begin(begin), pbde(count, &[]), sync()].concat(),
            )
            .await;
            assert_eq!(
                got,
                [
                    "1",
                    "2",
                    &format!("C {tag}"),
                    "1",
                    "2",
                    "T",
                    "D 6",
                    "C SELECT 1",
                    "Z T"
                ],
                "{begin}"
            );
            // Still one transaction: a keyed read, then its end.
            let got = replies(
                &mut conn,
                &[
                    pbde(
                        "SELECT count(*) FROM orders WHERE user_id = $1",
                        &[&a.to_string()],
                    ),
                    sync(),
                ]
                .concat(),
            )
            .await;
            assert_eq!(got, ["1", "2", "T", "D 2", "C SELECT 1", "Z T"], "{begin}");
            let got = replies(&mut conn, &[pbde("ROLLBACK", &[]), sync()].concat()).await;
            assert_eq!(got, ["1", "2", "n", "C ROLLBACK", "Z I"], "{begin}");
        }
        // The isolation level reached the shards the scatter ran on.
        let got = replies(
            &mut conn,
            &[
                jdbc_begin("START TRANSACTION ISOLATION LEVEL REPEATABLE READ"),
                pbde("SHOW transaction_isolation", &[]),
                sync(),
            ]
            .concat(),
        )
        .await;
        assert_eq!(got[5..], ["T", "D repeatable read", "C SHOW", "Z T"]);
        replies(&mut conn, &[pbde("ROLLBACK", &[]), sync()].concat()).await;

        // pgjdbc's BEGIN once it is a named statement: prepared in the first request, only
        // bound in the next ones.
        let first = [
            parse("S_1", "BEGIN"),
            bind("", "S_1", &[]),
            execute("", 0),
            pbde(count, &[]),
            sync(),
        ]
        .concat();
        let again = [
            bind("", "S_1", &[]),
            execute("", 0),
            pbde(count, &[]),
            sync(),
        ]
        .concat();
        for (what, request) in [("prepared", first), ("bound again", again)] {
            let got = replies(&mut conn, &request).await;
            let begin_replies: &[&str] = if what == "prepared" {
                &["1", "2", "C BEGIN"]
            } else {
                &["2", "C BEGIN"]
            };
            let expected: Vec<&str> = begin_replies
                .iter()
                .copied()
                .chain(["1", "2", "T", "D 6", "C SELECT 1", "Z T"])
                .collect();
            assert_eq!(got, expected, "{what}");
            let got = replies(&mut conn, &[pbde("COMMIT", &[]), sync()].concat()).await;
            assert_eq!(got, ["1", "2", "n", "C COMMIT", "Z I"], "{what}");
        }

        // A scatter shardgate refuses fails the transaction the BEGIN opened, as any error in
        // it would: 25P02 until it ends, and COMMIT answers ROLLBACK.
        let got = replies(
            &mut conn,
            &[
                jdbc_begin("BEGIN"),
                pbde("SELECT user_id FROM orders LIMIT 1 FOR UPDATE", &[]),
                sync(),
            ]
            .concat(),
        )
        .await;
        assert_eq!(got, ["1", "2", "C BEGIN", "E 0A000", "Z E"]);
        let got = replies(&mut conn, &[pbde(count, &[]), sync()].concat()).await;
        assert_eq!(got, ["E 25P02", "Z E"]);
        let got = replies(&mut conn, &[pbde("COMMIT", &[]), sync()].concat()).await;
        assert_eq!(got, ["1", "2", "n", "C ROLLBACK", "Z I"]);
    })
    .await
    .expect("test timed out");
}

/// psycopg 3 with autocommit off: clients whose transactions read only shard s1 hold nothing
/// on s0, so with two connections per node, two such open transactions leave s0 free for a
/// third client (each BEGIN once took an s0 primary connection for its whole transaction).
#[tokio::test]
async fn an_extended_begin_holds_only_the_shards_its_transaction_uses() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let mut options = sharded_options(None);
        options.pool_size = 2;
        options.checkout_timeout_ms = 3000;
        let proxy = start_trust(&s.topology, options);
        let on_s0 = int_keys_on(0, 1, 1)[0];
        let on_s1 = int_keys_on(1, 1, 2);
        seed_with_decoys(&s.direct, &[on_s0, on_s1[0], on_s1[1]]).await;
        let keyed = "SELECT count(*) FROM orders WHERE user_id = $1";
        let mut held = Vec::new();
        for key in &on_s1 {
            let mut c = login_trust(proxy.addr(), s.topology.user(), s.topology.database()).await;
            let got = replies(&mut c, &[pbde("BEGIN", &[]), sync()].concat()).await;
            assert_eq!(got, ["1", "2", "n", "C BEGIN", "Z T"]);
            let got = replies(&mut c, &[pbde(keyed, &[&key.to_string()]), sync()].concat()).await;
            assert_eq!(got, ["1", "2", "T", "D 2", "C SELECT 1", "Z T"]);
            held.push(c);
        }
        let mut c = login_trust(proxy.addr(), s.topology.user(), s.topology.database()).await;
        let started = Instant::now();
        let got = replies(&mut c, &[pbde("BEGIN", &[]), sync()].concat()).await;
        assert_eq!(got, ["1", "2", "n", "C BEGIN", "Z T"]);
        let got = replies(
            &mut c,
            &[pbde(keyed, &[&on_s0.to_string()]), sync()].concat(),
        )
        .await;
        assert_eq!(got, ["1", "2", "T", "D 2", "C SELECT 1", "Z T"]);
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "waited {:?} for an s0 connection",
            started.elapsed()
        );
        // The pgjdbc shape, on s0 too, while every transaction is still open.
        let mut d = login_trust(proxy.addr(), s.topology.user(), s.topology.database()).await;
        let got = replies(
            &mut d,
            &[
                jdbc_begin("BEGIN"),
                pbde(keyed, &[&on_s0.to_string()]),
                sync(),
            ]
            .concat(),
        )
        .await;
        assert_eq!(
            got,
            [
                "1",
                "2",
                "C BEGIN",
                "1",
                "2",
                "T",
                "D 2",
                "C SELECT 1",
                "Z T"
            ]
        );
        for mut conn in held.into_iter().chain([c, d]) {
            let got = replies(&mut conn, &[pbde("ROLLBACK", &[]), sync()].concat()).await;
            assert_eq!(got, ["1", "2", "n", "C ROLLBACK", "Z I"]);
        }
    })
    .await
    .expect("test timed out");
}
