//! A shard failing under a scatter: an error in the middle of one shard's stream, and a shard's
//! primary killed during and between scatters. The client gets the error (never 0A000, never
//! a CommandComplete), no rows that were still shardgate's to hold back, and scatters work again
//! once the shard is back.

use std::time::Duration;

use tokio::time::timeout;
use tokio_postgres::error::SqlState;

use super::compare::{run_ext, run_simple};
use super::support::raw::{error_field, login_trust, query};
use super::support::sharded::shard_of_int;
use super::support::{connect, poll_until};
use super::writes::assert_same_table;
use super::{env, ROWS, TEST_TIMEOUT};

/// A shard's error in the middle of its stream fails the whole statement: the client gets
/// that shard's error, naming the shard, and not one row (raw protocol, so nothing a driver
/// drops unseen could hide a partial result).
#[tokio::test]
async fn shard_error_mid_scatter_sends_no_rows() {
    timeout(TEST_TIMEOUT, async {
        let env = env(ROWS / 2, true).await;
        let ids = run_simple(&env.pb, "SELECT id FROM ev").await.expect("ids");
        let ids: Vec<i64> = ids
            .rows
            .iter()
            .map(|r| {
                std::str::from_utf8(r[0].as_deref().expect("id"))
                    .expect("utf8")
                    .parse()
                    .expect("int")
            })
            .collect();
        // The last key of s1 in key order: s1 fails at the end of its stream, after s0 sent all.
        let k = ids
            .iter()
            .copied()
            .filter(|i| shard_of_int(*i) == 1)
            .max()
            .expect("a key on s1");
        let sql = format!("SELECT id, t, 10 / (id - ({k})) AS q FROM ev ORDER BY id");
        let mut raw = login_trust(env.proxy.addr(), env.a.user(), env.a.database()).await;
        raw.send(&query(&sql)).await;
        let msgs = raw.until_ready(Duration::from_secs(20)).await;
        let rows = msgs.iter().filter(|m| m.0 == b'D').count();
        let err = msgs.iter().find(|m| m.0 == b'E').expect("an ErrorResponse");
        assert_eq!(
            error_field(&err.1, b'C').as_deref(),
            Some("22012"),
            "{msgs:?}"
        );
        let text = format!(
            "{} {}",
            error_field(&err.1, b'M').unwrap_or_default(),
            error_field(&err.1, b'D').unwrap_or_default()
        );
        assert!(text.contains("s1"), "the error names the shard: {text}");
        assert_eq!(rows, 0, "rows reached the client before the error");
        assert!(
            !msgs.iter().any(|m| m.0 == b'C'),
            "a CommandComplete after an error"
        );
        // Unordered (s0's rows come first, and are buffered when s1 fails) and grouped.
        for sql in [
            format!("SELECT id, t, 10 / (id - ({k})) AS q FROM ev"),
            format!("SELECT g, sum(10 / (id - ({k}))) FROM ev GROUP BY g"),
        ] {
            raw.send(&query(&sql)).await;
            let msgs = raw.until_ready(Duration::from_secs(20)).await;
            let rows = ends_in_division_by_zero(&msgs, &sql);
            assert_eq!(
                rows, 0,
                "{sql}: {rows} rows reached the client before the error"
            );
        }
        // A wider result (about 1 MB, under the 4 MiB shardgate holds back before streaming):
        // the statement must still end in the error, never in CommandComplete.
        let sql = format!("SELECT id, repeat(t || 'x', 300) AS pad, 10 / (id - ({k})) FROM ev");
        raw.send(&query(&sql)).await;
        let msgs = raw.until_ready(Duration::from_secs(20)).await;
        let rows = ends_in_division_by_zero(&msgs, &sql);
        assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'));
        println!("large unordered scatter failing on s1: {rows} rows streamed before the error");
        // The same in the extended protocol, and the session still works.
        let e = run_ext(&env.pa, &sql, &[])
            .await
            .expect_err("extended must fail");
        assert_eq!(e.code(), Some(&SqlState::DIVISION_BY_ZERO), "{e:?}");
        let ok = run_simple(&env.pa, "SELECT count(*) FROM ev")
            .await
            .expect("after the error");
        assert_eq!(ok.rows.len(), 1);
        raw.send(&query("SELECT count(*) FROM ev")).await;
        let again = raw.until_ready(Duration::from_secs(20)).await;
        assert!(
            again.iter().any(|m| m.0 == b'D'),
            "raw session after the error: {again:?}"
        );
    })
    .await
    .expect("test timed out");
}

/// A shard's primary killed under a running scatter, then scatters while it is down: errors
/// (never 0A000, never rows), keyed queries to the live shard still work, and once the shard
/// is back scatters answer exactly again.
#[tokio::test]
async fn killed_shard_fails_scatter_then_recovers() {
    timeout(TEST_TIMEOUT, async {
        let env = env(ROWS / 2, true).await;
        let slow = connect(&env.proxy.conn_str(&env.a))
            .await
            .expect("second client");
        // About 5 ms per row on each shard: still running when s1 dies.
        let running = tokio::spawn(async move {
            run_simple(
                &slow,
                "SELECT count(*) FROM ev WHERE length(pg_sleep(0.005)::text) = 0",
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        env.a.shards[1].primary.kill().expect("kill s1");
        let r = running.await.expect("join");
        let e = r.expect_err("a scatter whose shard died must fail");
        println!(
            "scatter under a killed shard: {:?} {}",
            e.code(),
            e.message()
        );
        assert_ne!(e.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{e:?}");

        for sql in [
            "SELECT id, t, n FROM ev ORDER BY id",
            "SELECT count(*) FROM ev",
            "SELECT id FROM ev",
        ] {
            let e = run_simple(&env.pa, sql)
                .await
                .expect_err("scatter with s1 down");
            assert_ne!(
                e.code(),
                Some(&SqlState::FEATURE_NOT_SUPPORTED),
                "{sql}: {e:?}"
            );
            let e = run_ext(&env.pa, sql, &[])
                .await
                .expect_err("scatter with s1 down");
            assert_ne!(
                e.code(),
                Some(&SqlState::FEATURE_NOT_SUPPORTED),
                "{sql}: {e:?}"
            );
        }
        let mut raw = login_trust(env.proxy.addr(), env.a.user(), env.a.database()).await;
        raw.send(&query("SELECT id, t FROM ev ORDER BY id")).await;
        let msgs = raw.until_ready(Duration::from_secs(20)).await;
        assert!(msgs.iter().any(|m| m.0 == b'E'), "{msgs:?}");
        assert!(
            !msgs.iter().any(|m| m.0 == b'D'),
            "rows with a shard down: {msgs:?}"
        );

        // A keyed read on s0 does not need s1.
        let k = (1i64..)
            .map(|i| i * 7)
            .find(|i| shard_of_int(*i) == 0)
            .expect("key");
        let want = run_simple(&env.pb, &format!("SELECT * FROM ev WHERE id = {k}"))
            .await
            .expect("reference");
        let got = run_simple(&env.pa, &format!("SELECT * FROM ev WHERE id = {k}"))
            .await
            .expect("keyed read on the healthy shard");
        assert_eq!(got, want);

        env.a.shards[1].primary.start().expect("restart s1");
        let back = poll_until(Duration::from_secs(20), || async {
            run_simple(&env.pa, "SELECT count(*) FROM ev").await.is_ok()
        })
        .await;
        assert!(
            back.is_some(),
            "scatter still failing 20 s after s1 restarted"
        );
        assert_same_table(&env, "after s1 came back").await;
    })
    .await
    .expect("test timed out");
}

/// Asserts the reply ends the statement in 22012 (division by zero), with no CommandComplete;
/// returns how many rows came before the error.
fn ends_in_division_by_zero(msgs: &[(u8, Vec<u8>)], sql: &str) -> usize {
    let err = msgs.iter().find(|m| m.0 == b'E').expect("an ErrorResponse");
    assert_eq!(error_field(&err.1, b'C').as_deref(), Some("22012"), "{sql}");
    assert!(!msgs.iter().any(|m| m.0 == b'C'), "{sql}: CommandComplete");
    msgs.iter().filter(|m| m.0 == b'D').count()
}
