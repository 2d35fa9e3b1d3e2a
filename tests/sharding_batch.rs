//! Driver idioms against two shards, as raw protocol messages shaped like the drivers': a
//! row-limited scatter portal fetched a second time (asyncpg's cursor iterator, JDBC's fetch
//! size inside a transaction) gets the documented 0A000, not 34000; and a batch (one request,
//! several Bind/Execute, one Sync) whose statements need different shards is refused with a
//! hint that works. Every read is bounded, so a hang fails the test.

mod support;

use std::time::Duration;

use support::raw::{error_field, first_column, login_trust, message, query, tags, RawConn};
use support::sharded::{int_keys_on, sharded_options, sharded_setup};
use support::start_trust;
use tokio::time::timeout;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(10);

fn parse(name: &str, sql: &str) -> Vec<u8> {
    message(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
}

/// Bind of `statement` into `portal` with text parameters and results.
fn bind(portal: &str, statement: &str, params: &[&str]) -> Vec<u8> {
    let mut body = format!("{portal}\0{statement}\0").into_bytes();
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&i16::try_from(params.len()).expect("few").to_be_bytes());
    for p in params {
        body.extend_from_slice(&i32::try_from(p.len()).expect("short").to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'B', &body)
}

fn describe_portal(portal: &str) -> Vec<u8> {
    message(b'D', format!("P{portal}\0").as_bytes())
}

fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut body = format!("{portal}\0").into_bytes();
    body.extend_from_slice(&max_rows.to_be_bytes());
    message(b'E', &body)
}

fn sync() -> Vec<u8> {
    message(b'S', b"")
}

/// Seeds `n` rows with note `note` on each shard; returns their keys, sorted.
async fn seed(s: &support::sharded::Sharded, note: &str, n: usize) -> Vec<i64> {
    let mut keys: Vec<i64> = int_keys_on(0, 1, n)
        .into_iter()
        .chain(int_keys_on(1, 1, n))
        .collect();
    keys.sort_unstable();
    for k in &keys {
        s.client
            .execute(
                "INSERT INTO orders (user_id, note) VALUES ($1, $2)",
                &[k, &note],
            )
            .await
            .expect("seed");
    }
    keys
}

fn rows_of(got: &[(u8, Vec<u8>)]) -> Vec<String> {
    got.iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| first_column(b))
        .collect()
}

/// After a refusal inside a transaction: 25P02 until ROLLBACK, which ends it.
async fn expect_failed_transaction(conn: &mut RawConn) {
    conn.send(&query("SELECT 1")).await;
    let got = conn.until_ready(STEP).await;
    assert_eq!(tags(&got), b"EZ", "{got:?}");
    assert_eq!(error_field(&got[0].1, b'C').as_deref(), Some("25P02"));
    conn.send(&query("ROLLBACK")).await;
    let got = conn.until_ready(STEP).await;
    assert_eq!(tags(&got), b"CZ", "{got:?}");
    assert_eq!(got[1].1, b"I");
}

#[tokio::test]
async fn a_row_limited_scatter_portal_fetched_again_gets_0a000_not_34000() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let proxy = start_trust(&s.topology, sharded_options(None));
        let keys = seed(&s, "p", 6).await;
        let want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let sql = "SELECT user_id FROM orders WHERE note = 'p' ORDER BY user_id";
        let mut conn = login_trust(proxy.addr(), s.topology.user(), s.topology.database()).await;

        // asyncpg `async for r in conn.cursor(sql, prefetch=7)` inside a transaction: Bind into
        // a named portal with Execute(7) and Sync, then Execute(7) and Sync.
        conn.run_ok("BEGIN", STEP).await;
        let mut first = parse("", sql);
        first.extend(bind("__asyncpg_portal_1__", "", &[]));
        first.extend(execute("__asyncpg_portal_1__", 7));
        first.extend(sync());
        conn.send(&first).await;
        let got = conn.until_ready(STEP).await;
        assert_eq!(tags(&got), b"12DDDDDDDsZ", "{got:?}");
        assert_eq!(rows_of(&got), want[..7]);
        assert_eq!(got[got.len() - 1].1, b"T");
        let mut again = execute("__asyncpg_portal_1__", 7);
        again.extend(sync());
        conn.send(&again).await;
        let got = conn.until_ready(STEP).await;
        assert_eq!(tags(&got), b"EZ", "{got:?}");
        assert_eq!(error_field(&got[0].1, b'C').as_deref(), Some("0A000"));
        let msg = error_field(&got[0].1, b'M').unwrap_or_default();
        assert!(
            msg.contains("__asyncpg_portal_1__") && msg.contains("cannot be fetched in parts"),
            "{msg}"
        );
        let hint = error_field(&got[0].1, b'H').unwrap_or_default();
        assert!(hint.contains("fetch size 0"), "{hint}");
        // As an error would, the refusal failed the transaction.
        assert_eq!(got[1].1, b"E");
        expect_failed_transaction(&mut conn).await;

        // JDBC setFetchSize(10) with autoCommit off: Parse, Bind into C_1, Describe, Execute(10),
        // Sync; then Execute(C_1, 10), Sync. The second fetch gets the same 0A000.
        conn.run_ok("BEGIN", STEP).await;
        let mut first = parse("", sql);
        first.extend(bind("C_1", "", &[]));
        first.extend(describe_portal("C_1"));
        first.extend(execute("C_1", 10));
        first.extend(sync());
        conn.send(&first).await;
        let got = conn.until_ready(STEP).await;
        assert_eq!(tags(&got), b"12TDDDDDDDDDDsZ", "{got:?}");
        assert_eq!(rows_of(&got), want[..10]);
        let mut again = execute("C_1", 10);
        again.extend(sync());
        conn.send(&again).await;
        let got = conn.until_ready(STEP).await;
        assert_eq!(tags(&got), b"EZ", "{got:?}");
        assert_eq!(error_field(&got[0].1, b'C').as_deref(), Some("0A000"));
        expect_failed_transaction(&mut conn).await;

        // The name means nothing after the transaction: bound again to a keyed query in the
        // next one, C_1 is an ordinary portal on its shard and may be fetched in parts.
        conn.run_ok("BEGIN", STEP).await;
        conn.run_ok(
            &format!(
                "INSERT INTO orders (user_id, note) VALUES ({}, 'q')",
                want[0]
            ),
            STEP,
        )
        .await;
        let mut first = parse(
            "",
            "SELECT note FROM orders WHERE user_id = $1 ORDER BY note",
        );
        first.extend(bind("C_1", "", &[&want[0]]));
        first.extend(execute("C_1", 1));
        first.extend(sync());
        conn.send(&first).await;
        let got = conn.until_ready(STEP).await;
        assert_eq!(tags(&got), b"12DsZ", "{got:?}");
        assert_eq!(rows_of(&got), ["p"]);
        let mut again = execute("C_1", 1);
        again.extend(sync());
        conn.send(&again).await;
        let got = conn.until_ready(STEP).await;
        assert_eq!(tags(&got), b"DsZ", "{got:?}");
        assert_eq!(rows_of(&got), ["q"]);
        conn.run_ok("COMMIT", STEP).await;

        // The session and another client are fine.
        let n: i64 = s
            .client
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .expect("another client")
            .get(0);
        assert_eq!(n, 13);
    })
    .await
    .expect("test timed out");
}
