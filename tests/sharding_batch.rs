//! Driver idioms against two shards, as raw protocol messages shaped like the drivers': a
//! row-limited scatter portal fetched a second time (asyncpg's cursor iterator, JDBC's fetch
//! size inside a transaction) gets the documented 0A000, not 34000; and a batch (one request,
//! several Bind/Execute, one Sync: JDBC executeBatch, asyncpg and psycopg executemany, a
//! psycopg pipeline) whose statements each need one shard, not the same, runs each on its
//! shard with replies in the client's order, atomically, failing as PostgreSQL does. Every
//! read is bounded, so a hang fails the test.

mod support;

use std::time::Duration;

use support::raw::{
    bind, describe, error_field, execute, first_column, flush, login_trust, message, parse, query,
    sync, tags, RawConn,
};
use support::sharded::{int_keys_on, notes_on, sharded_options, sharded_setup};
use support::start_trust;
use tokio::time::timeout;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(10);

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
        first.extend(describe(b'P', "C_1"));
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

/// One unit of a batch: Bind of `statement` with text parameters, Describe of the portal (as
/// pgjdbc and psycopg send it), Execute.
fn unit(statement: &str, params: &[&str]) -> Vec<u8> {
    let mut out = bind("", statement, params);
    out.extend(describe(b'P', ""));
    out.extend(execute("", 0));
    out
}

/// Keys alternating between the shards: s1, s0, s1, s0.
fn alternating_keys() -> Vec<String> {
    let (a, b) = (int_keys_on(0, 1, 2), int_keys_on(1, 1, 2));
    vec![b[0], a[0], b[1], a[1]]
        .into_iter()
        .map(|k| k.to_string())
        .collect()
}

#[tokio::test]
async fn a_batch_whose_rows_live_on_several_shards_runs_each_on_its_shard_in_order() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let proxy = start_trust(&s.topology, sharded_options(None));
        let keys = alternating_keys();
        let mut conn = login_trust(proxy.addr(), s.topology.user(), s.topology.database()).await;
        let insert =
            "INSERT INTO orders (user_id, note) VALUES ($1, $2::int::text) RETURNING user_id";

        // pgjdbc executeBatch / psycopg executemany(returning=True): one Parse, then Bind,
        // Describe, Execute per row, one Sync. Each row on its key's shard, replies in order.
        let mut req = parse("", insert);
        for (i, k) in keys.iter().enumerate() {
            req.extend(unit("", &[k, &i.to_string()]));
        }
        let got = synced(&mut conn, req).await;
        assert_eq!(tags(&got), b"12TDC2TDC2TDC2TDCZ", "{got:?}");
        assert_eq!(rows_of(&got), keys);
        assert_eq!(got[got.len() - 1].1, b"I");
        assert_eq!(notes_on(&s.direct, "0").await, [0, 1]);
        assert_eq!(notes_on(&s.direct, "1").await, [1, 0]);
        assert_eq!(notes_on(&s.direct, "3").await, [1, 0]);

        // asyncpg executemany: a named statement prepared before, then Bind and Execute per
        // row and one Sync.
        let mut prep = parse("ins", insert);
        prep.extend(message(b'D', b"Sins\0"));
        prep.extend(sync());
        conn.send(&prep).await;
        assert_eq!(tags(&conn.until_ready(STEP).await), b"1tTZ");
        let mut req = Vec::new();
        for k in &keys {
            req.extend(bind("", "ins", &[k, "10"]));
            req.extend(execute("", 0));
        }
        let got = synced(&mut conn, req).await;
        assert_eq!(tags(&got), b"2DC2DC2DC2DCZ", "{got:?}");
        assert_eq!(rows_of(&got), keys);
        assert_eq!(notes_on(&s.direct, "10").await, [2, 2]);

        // psycopg pipeline of keyed reads: each Execute's rows from its shard, in order.
        let read = "SELECT note FROM orders WHERE user_id = $1 ORDER BY note";
        let mut req = Vec::new();
        for k in keys.iter().rev() {
            req.extend(parse("", read));
            req.extend(unit("", &[k]));
        }
        let got = synced(&mut conn, req.clone()).await;
        assert_eq!(tags(&got), b"12TDDC12TDDC12TDDC12TDDCZ", "{got:?}");
        // Text order: "1" < "10" < "2".
        assert_eq!(rows_of(&got), ["10", "3", "10", "2", "1", "10", "0", "10"]);

        // Inside a transaction, reads spread over shards join it; the status says so.
        conn.run_ok("BEGIN", STEP).await;
        let got = synced(&mut conn, req).await;
        assert_eq!(tags(&got), b"12TDDC12TDDC12TDDC12TDDCZ", "{got:?}");
        assert_eq!(got[got.len() - 1].1, b"T");
        // A batch writing on two shards would make the transaction span them: refused
        // (without two-phase commit), and the transaction is failed.
        let mut req = parse("", insert);
        for k in &keys {
            req.extend(unit("", &[k, "20"]));
        }
        let got = synced(&mut conn, req).await;
        assert_eq!(tags(&got), b"EZ", "{got:?}");
        assert_eq!(error_field(&got[0].1, b'C').as_deref(), Some("0A000"));
        assert_eq!(got[1].1, b"E");
        expect_failed_transaction(&mut conn).await;
        assert_eq!(notes_on(&s.direct, "20").await, [0, 0]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_failing_row_of_a_batch_rolls_back_every_shard_and_skips_the_rest() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let proxy = start_trust(&s.topology, sharded_options(None));
        let keys = alternating_keys();
        let mut conn = login_trust(proxy.addr(), s.topology.user(), s.topology.database()).await;
        let insert = "INSERT INTO orders (user_id, note) VALUES ($1, $2::int::text)";

        // The third row (on s1) fails, at its Bind (its parameter is no integer): the first
        // two rows' replies, then its error as PostgreSQL reports it, then ReadyForQuery; nothing is left on either shard, not the
        // rows before it and not the fourth row, which s0 ran before the error was known.
        let mut req = parse("", insert);
        for (k, note) in keys.iter().zip(["1", "2", "x", "4"]) {
            req.extend(unit("", &[k, note]));
        }
        let got = synced(&mut conn, req).await;
        assert_eq!(tags(&got), b"12nC2nCEZ", "{got:?}");
        let err = &got[got.len() - 2].1;
        assert_eq!(error_field(err, b'C').as_deref(), Some("22P02"));
        assert!(
            error_field(err, b'D')
                .unwrap_or_default()
                .contains("shard s1"),
            "{got:?}"
        );
        assert_eq!(got[got.len() - 1].1, b"I");
        for note in ["1", "2", "4"] {
            assert_eq!(notes_on(&s.direct, note).await, [0, 0], "{note}");
        }

        // The first row failing: only its error, after the ParseComplete.
        let mut req = parse("", insert);
        for (k, note) in keys.iter().zip(["x", "2", "3", "4"]) {
            req.extend(unit("", &[k, note]));
        }
        let got = synced(&mut conn, req).await;
        assert_eq!(tags(&got), b"1EZ", "{got:?}");
        assert_eq!(error_field(&got[1].1, b'C').as_deref(), Some("22P02"));
        assert_eq!(notes_on(&s.direct, "4").await, [0, 0]);

        // A row failing at its Execute (a duplicate key on s1): the rows before it answered,
        // then its error; the table keeps only the row that was there.
        s.client
            .execute(
                &format!("INSERT INTO users (id, name) VALUES ({}, 'old')", keys[2]),
                &[],
            )
            .await
            .expect("seed a user");
        let mut req = parse("", "INSERT INTO users (id, name) VALUES ($1, 'new')");
        for k in &keys {
            req.extend(unit("", &[k]));
        }
        let got = synced(&mut conn, req).await;
        assert_eq!(tags(&got), b"12nC2nC2nEZ", "{got:?}");
        assert_eq!(error_field(&got[9].1, b'C').as_deref(), Some("23505"));
        let users: Vec<(i64, String)> = s
            .client
            .query("SELECT id, name FROM users", &[])
            .await
            .expect("users")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(
            users,
            [(keys[2].parse::<i64>().expect("key"), "old".to_owned())]
        );

        // JDBC reWriteBatchedInserts: several multi-row INSERTs whose rows span shards, in
        // one request. Not split: refused with what to do, nothing written.
        let multi = "INSERT INTO orders (user_id, note) VALUES ($1, 'm'), ($2, 'm')";
        let mut req = parse("", multi);
        req.extend(unit("", &[&keys[0], &keys[1]]));
        req.extend(unit("", &[&keys[2], &keys[3]]));
        let got = synced(&mut conn, req).await;
        assert_eq!(tags(&got), b"EZ", "{got:?}");
        assert_eq!(error_field(&got[0].1, b'C').as_deref(), Some("0A000"));
        let hint = error_field(&got[0].1, b'H').unwrap_or_default();
        assert!(hint.contains("reWriteBatchedInserts"), "{hint}");
        assert_eq!(notes_on(&s.direct, "m").await, [0, 0]);

        // The session goes on.
        conn.run_ok("SELECT 1", STEP).await;
    })
    .await
    .expect("test timed out");
}

/// Ends `req` with a Sync, sends it and reads the replies up to ReadyForQuery.
async fn synced(conn: &mut RawConn, mut req: Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    req.extend(sync());
    conn.send(&req).await;
    conn.until_ready(STEP).await
}

/// Reads exactly `n` messages; none may be ReadyForQuery (the client has not synced yet).
async fn next_n(conn: &mut RawConn, n: usize) -> Vec<(u8, Vec<u8>)> {
    let got = conn.read_n(n, STEP).await;
    assert!(
        got.iter().all(|(tag, _)| *tag != b'Z'),
        "ReadyForQuery before the Sync: {got:?}"
    );
    got
}

#[tokio::test]
async fn a_batch_that_parses_a_named_statement_creates_it_once_per_shard() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let proxy = start_trust(&s.topology, sharded_options(None));
        let (a, b) = (int_keys_on(0, 1, 2), int_keys_on(1, 1, 2));
        let mut conn = login_trust(proxy.addr(), s.topology.user(), s.topology.database()).await;
        let insert = "INSERT INTO orders (user_id, note) VALUES ($1, 'pp')";

        // psycopg 3 pipeline with prepare_threshold=0: Parse _pg3_1 once, then Bind _pg3_1,
        // Describe, Execute per statement (keys on s0 and s1), one Sync. As on one server:
        // one ParseComplete, both rows written (was 42P05 "_pg3_1" already exists, from s0).
        let mut req = parse("_pg3_1", insert);
        req.extend(unit("_pg3_1", &[&a[0].to_string()]));
        req.extend(unit("_pg3_1", &[&b[0].to_string()]));
        let got = synced(&mut conn, req).await;
        assert_eq!(tags(&got), b"12nC2nCZ", "{got:?}");
        assert_eq!(got[got.len() - 1].1, b"I");
        assert_eq!(notes_on(&s.direct, "pp").await, [1, 1]);

        // The statement is the client's now: a later batch binds it without a Parse.
        let mut req = unit("_pg3_1", &[&b[1].to_string()]);
        req.extend(unit("_pg3_1", &[&a[1].to_string()]));
        let got = synced(&mut conn, req).await;
        assert_eq!(tags(&got), b"2nC2nCZ", "{got:?}");
        assert_eq!(notes_on(&s.direct, "pp").await, [2, 2]);

        // A read pipeline parsing its own named statement: rows from each key's shard.
        let read = "SELECT user_id FROM orders WHERE user_id = $1 AND note = 'pp'";
        let mut req = parse("_pg3_2", read);
        req.extend(unit("_pg3_2", &[&b[0].to_string()]));
        req.extend(unit("_pg3_2", &[&a[0].to_string()]));
        let got = synced(&mut conn, req).await;
        assert_eq!(tags(&got), b"12TDC2TDCZ", "{got:?}");
        assert_eq!(rows_of(&got), [b[0].to_string(), a[0].to_string()]);

        // Parsing the name again is PostgreSQL's 42P05, once, and nothing runs.
        let mut req = parse("_pg3_1", insert);
        req.extend(unit("_pg3_1", &[&a[1].to_string()]));
        req.extend(unit("_pg3_1", &[&b[1].to_string()]));
        let got = synced(&mut conn, req).await;
        assert_eq!(tags(&got), b"EZ", "{got:?}");
        assert_eq!(error_field(&got[0].1, b'C').as_deref(), Some("42P05"));
        let msg = error_field(&got[0].1, b'M').unwrap_or_default();
        assert!(msg.contains("\"_pg3_1\""), "{msg}");
        assert_eq!(notes_on(&s.direct, "pp").await, [2, 2]);
        conn.run_ok("SELECT 1", STEP).await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn psycopg_executemany_returning_ends_with_flush_then_sync() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let proxy = start_trust(&s.topology, sharded_options(None));
        let (a, b) = (int_keys_on(0, 1, 2), int_keys_on(1, 1, 2));
        let keys = alternating_keys();
        let mut conn = login_trust(proxy.addr(), s.topology.user(), s.topology.database()).await;
        let insert = "INSERT INTO orders (user_id, note) VALUES ($1, $2) RETURNING user_id";
        let flush = flush();

        // The Flush right before the Sync, both sent together: one batch, as without the Flush.
        let mut req = parse("", insert);
        for k in &keys {
            req.extend(unit("", &[k, "f1"]));
        }
        req.extend(&flush);
        let got = synced(&mut conn, req).await;
        assert_eq!(tags(&got), b"12TDC2TDC2TDC2TDCZ", "{got:?}");
        assert_eq!(rows_of(&got), keys);
        assert_eq!(got[got.len() - 1].1, b"I");
        assert_eq!(notes_on(&s.direct, "f1").await, [2, 2]);

        // What psycopg 3.1 sends (captured): Parse _pg3_0, Bind/Describe/Execute per row,
        // Flush; its Sync only after it has read every reply. Keys on one shard: answered
        // before the Sync.
        let mut req = parse("_pg3_0", insert);
        req.extend(unit("_pg3_0", &[&a[0].to_string(), "f2"]));
        req.extend(unit("_pg3_0", &[&a[1].to_string(), "f2"]));
        req.extend(&flush);
        conn.send(&req).await;
        let got = next_n(&mut conn, 9).await;
        assert_eq!(tags(&got), b"12TDC2TDC", "{got:?}");
        conn.send(&sync()).await;
        let got = conn.until_ready(STEP).await;
        assert_eq!(tags(&got), b"Z", "{got:?}");
        assert_eq!(notes_on(&s.direct, "f2").await, [2, 0]);

        // Keys on two shards: the documented 0A000 at once (no wait for a Sync that comes only
        // after the replies), saying what works; nothing written; the Sync ends it.
        let mut req = parse("_pg3_1", insert);
        req.extend(unit("_pg3_1", &[&a[0].to_string(), "f3"]));
        req.extend(unit("_pg3_1", &[&b[0].to_string(), "f3"]));
        req.extend(&flush);
        conn.send(&req).await;
        let got = next_n(&mut conn, 1).await;
        assert_eq!(tags(&got), b"E", "{got:?}");
        assert_eq!(error_field(&got[0].1, b'C').as_deref(), Some("0A000"));
        let msg = error_field(&got[0].1, b'M').unwrap_or_default();
        assert!(msg.contains("Flush"), "{msg}");
        let hint = error_field(&got[0].1, b'H').unwrap_or_default();
        assert!(hint.contains("returning"), "{hint}");
        conn.send(&sync()).await;
        let got = conn.until_ready(STEP).await;
        assert_eq!(tags(&got), b"Z", "{got:?}");
        assert_eq!(got[0].1, b"I");
        assert_eq!(notes_on(&s.direct, "f3").await, [0, 0]);
        conn.run_ok("SELECT 1", STEP).await;
    })
    .await
    .expect("test timed out");
}
