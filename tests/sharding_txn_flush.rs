//! asyncpg's message flow inside a sharded transaction: each statement is prepared with Parse,
//! Describe and Flush, and run later with Bind, Execute and Sync. The run may need another
//! shard than the prepare went to, or every shard (a scatter): it must be answered there
//! (a row-limited scatter with the documented 0A000), never left waiting. Every read is
//! bounded, so a hang fails the test.

mod support;

use std::time::Duration;

use support::raw::{
    bind, describe, error_field, execute, first_column, flush, login_trust, parse, query, sync,
    tags, RawConn,
};
use support::sharded::{int_keys_on, notes_on, seed_with_decoys, sharded_options, sharded_setup};
use support::start_trust;
use tokio::time::timeout;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(10);

/// Parse of `sql` as statement `name` (no declared types), Describe of it, Flush.
fn prepare_flush(name: &str, sql: &str) -> Vec<u8> {
    [parse(name, sql), describe(b'S', name), flush()].concat()
}

/// Bind of statement `name` with text parameters, Execute of at most `max_rows` (0: all), Sync.
fn bind_execute_sync(name: &str, params: &[&str], max_rows: i32) -> Vec<u8> {
    [bind("", name, params), execute("", max_rows), sync()].concat()
}

/// Prepares `sql` as `name` the asyncpg way and checks the answer to the Flush.
async fn prepare(conn: &mut RawConn, name: &str, sql: &str) {
    conn.send(&prepare_flush(name, sql)).await;
    let got = conn.read_n(3, STEP).await;
    assert_eq!(tags(&got), b"1tT", "prepare of {sql}: {got:?}");
}

/// Runs a prepared statement to completion; returns its rows' first column and the
/// ReadyForQuery status.
async fn run(conn: &mut RawConn, name: &str, params: &[&str]) -> (Vec<String>, u8) {
    conn.send(&bind_execute_sync(name, params, 0)).await;
    let got = conn.until_ready(STEP).await;
    let t = tags(&got);
    assert!(
        t.starts_with(b"2") && t.ends_with(b"CZ") && t[1..t.len() - 2].iter().all(|&x| x == b'D'),
        "{name} {params:?}: {got:?}"
    );
    let rows = got
        .iter()
        .filter(|(tag, _)| *tag == b'D')
        .map(|(_, body)| first_column(body))
        .collect();
    (rows, got[got.len() - 1].1[0])
}

#[tokio::test]
async fn a_statement_prepared_with_flush_runs_on_any_shard_inside_a_transaction() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let proxy = start_trust(&s.topology, sharded_options(None));
        let a = int_keys_on(0, 1, 1)[0];
        let b = int_keys_on(1, 1, 1)[0];
        seed_with_decoys(&s.direct, &[a, b]).await;
        let mut conn = login_trust(proxy.addr(), s.topology.user(), s.topology.database()).await;
        let (a_text, b_text) = (a.to_string(), b.to_string());

        conn.run_ok("BEGIN", STEP).await;
        prepare(
            &mut conn,
            "by_key",
            "SELECT note FROM orders WHERE user_id = $1 ORDER BY note",
        )
        .await;
        // The prepare needed no shard; each run goes to its key's, in either order.
        for (key, what) in [(&b_text, "s1"), (&a_text, "s0"), (&b_text, "s1 again")] {
            let (rows, status) = run(&mut conn, "by_key", &[key]).await;
            assert_eq!(rows, ["a", "b"], "{what}");
            assert_eq!(status, b'T', "{what}");
        }

        // A scatter: every shard's rows, counted once.
        prepare(&mut conn, "count_all", "SELECT count(*) FROM orders").await;
        let (rows, status) = run(&mut conn, "count_all", &[]).await;
        assert_eq!((rows, status), (vec!["6".to_owned()], b'T'));

        // A write prepared that way, run on the other shard than the prepare: one shard
        // written, committed there only.
        prepare(
            &mut conn,
            "insert",
            "INSERT INTO orders (user_id, note) VALUES ($1, 'flushed') RETURNING user_id",
        )
        .await;
        let (rows, status) = run(&mut conn, "insert", &[&b_text]).await;
        assert_eq!((rows, status), (vec![b_text.clone()], b'T'));
        // A read of s0 after the write on s1 is allowed.
        let (rows, _) = run(&mut conn, "by_key", &[&a_text]).await;
        assert_eq!(rows, ["a", "b"]);
        conn.send(&query("COMMIT")).await;
        let got = conn.until_ready(STEP).await;
        assert_eq!(tags(&got), b"CZ", "{got:?}");
        assert_eq!(got[1].1, b"I");
        assert_eq!(notes_on(&s.direct, "flushed").await, vec![0, 1]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_row_limited_scatter_prepared_with_flush_runs_inside_a_transaction() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let proxy = start_trust(&s.topology, sharded_options(None));
        let mut conn = login_trust(proxy.addr(), s.topology.user(), s.topology.database()).await;

        // asyncpg's fetchval(): Execute with a row limit of 1. The one merged row, then
        // PortalSuspended, as a server sends for a portal that returned as many rows as asked.
        conn.run_ok("BEGIN", STEP).await;
        prepare(&mut conn, "count_all", "SELECT count(*) FROM orders").await;
        conn.send(&bind_execute_sync("count_all", &[], 1)).await;
        let got = conn.until_ready(STEP).await;
        assert_eq!(tags(&got), b"2DsZ", "{got:?}");
        assert_eq!(first_column(&got[1].1), "0");
        assert_eq!(got[3].1, b"T", "still in the transaction");
        conn.send(&query("ROLLBACK")).await;
        let got = conn.until_ready(STEP).await;
        assert_eq!(tags(&got), b"CZ", "{got:?}");
        assert_eq!(got[1].1, b"I");

        // The same session and another client are served afterwards.
        let (rows, status) = run(&mut conn, "count_all", &[]).await;
        assert_eq!((rows, status), (vec!["0".to_owned()], b'I'));
        let n: i64 = s
            .client
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .expect("another client")
            .get(0);
        assert_eq!(n, 0);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn an_unnamed_prepare_with_flush_runs_on_another_shard_only_inside_a_transaction() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let proxy = start_trust(&s.topology, sharded_options(None));
        let a = int_keys_on(0, 1, 1)[0];
        let b = int_keys_on(1, 1, 1)[0];
        seed_with_decoys(&s.direct, &[a, b]).await;
        let mut conn = login_trust(proxy.addr(), s.topology.user(), s.topology.database()).await;
        let sql = "SELECT note FROM orders WHERE user_id = $1 ORDER BY note";
        let (a_text, b_text) = (a.to_string(), b.to_string());

        // asyncpg with statement_cache_size=0: the unnamed statement, prepared on s0 (it needs
        // no shard). Inside a transaction block the run on s1 follows it.
        conn.run_ok("BEGIN", STEP).await;
        for key in [&b_text, &a_text, &b_text] {
            prepare(&mut conn, "", sql).await;
            let (rows, status) = run(&mut conn, "", &[key]).await;
            assert_eq!(
                (rows, status),
                (vec!["a".to_owned(), "b".to_owned()], b'T'),
                "{key}"
            );
        }
        conn.run_ok("COMMIT", STEP).await;

        // Outside one, the prepare's implicit transaction is open until the client's Sync:
        // s0 runs it, s1 is refused (0A000), never left waiting.
        prepare(&mut conn, "", sql).await;
        let (rows, status) = run(&mut conn, "", &[&a_text]).await;
        assert_eq!((rows, status), (vec!["a".to_owned(), "b".to_owned()], b'I'));
        prepare(&mut conn, "", sql).await;
        conn.send(&bind_execute_sync("", &[&b_text], 0)).await;
        let got = conn.until_ready(STEP).await;
        assert_eq!(tags(&got), b"EZ", "{got:?}");
        assert_eq!(error_field(&got[0].1, b'C').as_deref(), Some("0A000"));
        let msg = error_field(&got[0].1, b'M').unwrap_or_default();
        assert!(msg.contains("unfinished one before it"), "message: {msg}");
        assert_eq!(got[1].1, b"I");

        // Served afterwards, on either shard.
        prepare(&mut conn, "by_key", sql).await;
        for key in [&b_text, &a_text] {
            let (rows, status) = run(&mut conn, "by_key", &[key]).await;
            assert_eq!(
                (rows, status),
                (vec!["a".to_owned(), "b".to_owned()], b'I'),
                "{key}"
            );
        }
    })
    .await
    .expect("test timed out");
}
