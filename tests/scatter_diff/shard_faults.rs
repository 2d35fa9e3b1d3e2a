//! Shard replies that must not turn into a plausible answer: an error after a shard's rows
//! (its implicit commit failing at Sync), a shard's FATAL (its connection ends, the client's
//! session does not), and shards whose tables differ in shape (a column more, another type).

use std::time::Duration;

use tokio::time::timeout;

use super::compare::{run_ext, run_simple};
use super::support::raw::{error_field, login_trust, query};
use super::support::{connect, direct_conn_str, poll_until};
use super::{env, Env, ROWS, TEST_TIMEOUT};

/// Severity, SQLSTATE and message + detail of the one ErrorResponse in `msgs`.
fn the_error(msgs: &[(u8, Vec<u8>)]) -> (String, String, String) {
    let e = msgs.iter().find(|m| m.0 == b'E').unwrap_or_else(|| {
        let tags: String = msgs.iter().map(|m| m.0 as char).collect();
        panic!("no ErrorResponse; got {tags}")
    });
    (
        error_field(&e.1, b'S').unwrap_or_default(),
        error_field(&e.1, b'C').unwrap_or_default(),
        format!(
            "{} {}",
            error_field(&e.1, b'M').unwrap_or_default(),
            error_field(&e.1, b'D').unwrap_or_default()
        ),
    )
}

/// A direct connection to shard `i`'s primary of the sharded topology.
async fn primary(env: &Env, i: usize) -> tokio_postgres::Client {
    connect(&direct_conn_str(&env.a, &env.a.shards[i].primary))
        .await
        .unwrap_or_else(|e| panic!("shard {i}: {e}"))
}

/// An error after the rows: s1's implicit commit fails at Sync (a deferred unique check of
/// what the query's function wrote). The statement failed on s1.
#[tokio::test]
async fn error_after_a_shards_rows_fails_the_scatter() {
    timeout(TEST_TIMEOUT, async {
        let env = env(ROWS / 2, true).await;
        let s1 = primary(&env, 1).await;
        let s0 = primary(&env, 0).await;
        s0.batch_execute("CREATE FUNCTION side() RETURNS int LANGUAGE sql AS 'SELECT 1'")
            .await
            .expect("side on s0");
        s1.batch_execute(
            "CREATE TABLE dup (x int UNIQUE DEFERRABLE INITIALLY DEFERRED);
             CREATE FUNCTION side() RETURNS int LANGUAGE sql
               AS 'INSERT INTO dup VALUES (1), (1); SELECT 1'",
        )
        .await
        .expect("side on s1");
        let e = run_ext(&env.pa, "SELECT count(*) FROM ev WHERE side() = 1", &[])
            .await
            .expect_err("s1's commit failed");
        assert_eq!(e.code().map(|c| c.code()), Some("23505"), "{e:?}");
        assert!(
            format!("{e:?}").contains("shard s1"),
            "names the shard: {e:?}"
        );
    })
    .await
    .expect("test timed out");
}

/// A shard's backend terminated under a scatter: its FATAL reaches the client as an ERROR
/// (the client's session goes on), naming the shard.
#[tokio::test]
async fn shard_fatal_reaches_the_client_as_an_error() {
    timeout(TEST_TIMEOUT, async {
        let env = env(ROWS / 2, true).await;
        let s1 = primary(&env, 1).await;
        let mut raw = login_trust(env.proxy.addr(), env.a.user(), env.a.database()).await;
        raw.send(&query(
            "SELECT count(*) FROM ev WHERE length(pg_sleep(0.005)::text) = 0",
        ))
        .await;
        // Terminate the scatter's backend on s1 as soon as it runs (polled: a fixed sleep
        // would race a slow start).
        let killed = poll_until(Duration::from_secs(10), || async {
            let n: i64 = s1
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE query LIKE '%pg_sleep(0.005)%' AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .expect("terminate")
                .get(0);
            n == 1
        })
        .await;
        assert!(
            killed.is_some(),
            "the scatter's backend on s1 was never seen"
        );
        let msgs = raw.until_ready(Duration::from_secs(20)).await;
        let (severity, code, text) = the_error(&msgs);
        assert_eq!(
            (severity.as_str(), code.as_str()),
            ("ERROR", "57P01"),
            "{text}"
        );
        assert!(text.contains("s1"), "names the shard: {text}");
        assert!(
            !msgs.iter().any(|m| m.0 == b'D' || m.0 == b'C'),
            "rows reached the client"
        );
        assert_eq!(msgs.last().map(|m| m.1.clone()), Some(b"I".to_vec()));
        raw.send(&query("SELECT count(*) FROM ev")).await;
        let again = raw.until_ready(Duration::from_secs(20)).await;
        assert!(
            again.iter().any(|m| m.0 == b'D'),
            "session after: {again:?}"
        );
    })
    .await
    .expect("test timed out");
}

/// Tables that differ between shards: a column more on s1, then another type.
#[tokio::test]
async fn shards_returning_other_columns_fail_by_name() {
    timeout(TEST_TIMEOUT, async {
        let env = env(ROWS / 2, true).await;
        let s1 = primary(&env, 1).await;
        let mut raw = login_trust(env.proxy.addr(), env.a.user(), env.a.database()).await;
        s1.batch_execute("ALTER TABLE ev ADD COLUMN extra int DEFAULT 7")
            .await
            .expect("alter s1");
        for sql in ["SELECT * FROM ev", "SELECT * FROM ev ORDER BY id"] {
            raw.send(&query(sql)).await;
            let msgs = raw.until_ready(Duration::from_secs(20)).await;
            let (_, code, text) = the_error(&msgs);
            assert_eq!(code, "42804", "{sql}: {text}");
            assert!(text.contains("shard s1"), "{sql}: names the shard: {text}");
            assert!(!msgs.iter().any(|m| m.0 == b'D'), "{sql}: rows sent");
        }
        s1.batch_execute("ALTER TABLE ev DROP COLUMN extra, ALTER COLUMN g TYPE bigint")
            .await
            .expect("alter s1");
        let e = run_ext(&env.pa, "SELECT id, g FROM ev ORDER BY id", &[])
            .await
            .expect_err("g is int on s0, bigint on s1");
        assert_eq!(e.code().map(|c| c.code()), Some("42804"), "{e:?}");
        let e = run_simple(&env.pa, "SELECT g FROM ev")
            .await
            .expect_err("g is int on s0, bigint on s1");
        assert_eq!(e.code().map(|c| c.code()), Some("42804"), "{e:?}");
    })
    .await
    .expect("test timed out");
}
