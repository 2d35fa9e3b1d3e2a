//! Autocommit writes that run on every shard commit on every shard or none: a keyless write
//! is wrapped in a transaction on each shard even when the word CONCURRENTLY appears in a
//! literal, and so is a multi-statement string; one that cannot run in a transaction block is
//! refused. Failures are made to happen on s1 only (constraints added there directly), so a
//! partial commit would show as a changed s0.

mod support;

use std::time::Duration;

use support::poll_until;
use support::sharded::{
    expect_code, int_keys_on, notes_on, orders_snapshot, seed_with_decoys, sharded_setup,
};
use tokio::time::timeout;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Bound on each whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The CommandComplete counts of `sql` (simple protocol).
async fn completes(c: &Client, sql: &str) -> Vec<u64> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(n),
            _ => None,
        })
        .collect()
}

/// Rows of `notes` on each primary.
async fn bodies_on(direct: &[Client]) -> Vec<i64> {
    let mut out = Vec::new();
    for d in direct {
        let n: i64 = d
            .query_one("SELECT count(*) FROM notes", &[])
            .await
            .expect("count")
            .get(0);
        out.push(n);
    }
    out
}

/// The single value of `sql` through the proxy (simple protocol).
async fn count_through(c: &Client, sql: &str) -> i64 {
    let rows = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let values: Vec<i64> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .collect();
    assert_eq!(values.len(), 1, "{sql}: {values:?}");
    values[0]
}

/// Makes `note = 'concurrently'` (and `'bad'`) fail on s1 only.
async fn check_on_s1(direct: &[Client]) {
    direct[1]
        .batch_execute(
            "ALTER TABLE orders ADD CONSTRAINT s1_only \
             CHECK (note NOT IN ('concurrently', 'bad'))",
        )
        .await
        .expect("constraint on s1");
}

#[tokio::test]
async fn a_keyless_write_with_concurrently_in_a_literal_commits_everywhere_or_nowhere() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let keys = [int_keys_on(0, 1, 1)[0], int_keys_on(1, 1, 1)[0]];
        seed_with_decoys(&s.direct, &keys).await;
        check_on_s1(&s.direct).await;
        let before = orders_snapshot(&s.direct).await;

        let sql = "UPDATE orders SET note = 'concurrently' WHERE note <> 'x'";
        expect_code(c.simple_query(sql).await, &SqlState::CHECK_VIOLATION, sql);
        assert_eq!(
            orders_snapshot(&s.direct).await,
            before,
            "{sql}: s0 unchanged"
        );
        let r = c
            .execute(
                "UPDATE orders SET note = 'concurrently' WHERE note <> $1",
                &[&"x"],
            )
            .await;
        expect_code(r, &SqlState::CHECK_VIOLATION, "extended protocol");
        assert_eq!(
            orders_snapshot(&s.direct).await,
            before,
            "extended: s0 unchanged"
        );

        // The same write where every shard accepts it commits on both.
        let n = completes(
            c,
            "UPDATE orders SET note = 'concurrently ok' WHERE note <> 'x'",
        )
        .await;
        assert_eq!(n, vec![6], "3 rows on each shard");
        assert_eq!(notes_on(&s.direct, "concurrently ok").await, vec![3, 3]);

        // A real CONCURRENTLY still runs outside a transaction block, on every shard.
        completes(c, "CREATE INDEX CONCURRENTLY orders_note ON orders (note)").await;
        for (i, d) in s.direct.iter().enumerate() {
            let row = d
                .query_one("SELECT to_regclass('orders_note') IS NOT NULL", &[])
                .await
                .expect("to_regclass");
            assert!(row.get::<_, bool>(0), "index on s{i}");
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_multi_statement_write_failing_on_one_shard_commits_nowhere() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        // `notes` is in no sharding list: written on every shard.
        s.direct[1]
            .batch_execute("ALTER TABLE notes ADD CONSTRAINT s1_only CHECK (body <> 'bad')")
            .await
            .expect("constraint on s1");

        // The first statement succeeds everywhere, the second fails on s1 only.
        let sql = "INSERT INTO notes VALUES ('first'); INSERT INTO notes VALUES ('bad')";
        expect_code(c.simple_query(sql).await, &SqlState::CHECK_VIOLATION, sql);
        assert_eq!(
            bodies_on(&s.direct).await,
            vec![0, 0],
            "{sql}: nothing committed"
        );
        let sql = "CREATE TABLE made (x int); INSERT INTO notes VALUES ('bad')";
        expect_code(c.simple_query(sql).await, &SqlState::CHECK_VIOLATION, sql);
        for (i, d) in s.direct.iter().enumerate() {
            let row = d
                .query_one("SELECT to_regclass('made') IS NULL", &[])
                .await
                .expect("to_regclass");
            assert!(row.get::<_, bool>(0), "{sql}: table made on s{i}");
        }

        // A statement that cannot run in a transaction block makes the string refused.
        let sql = "INSERT INTO notes VALUES ('refused'); VACUUM notes";
        let msg = expect_code(
            c.simple_query(sql).await,
            &SqlState::FEATURE_NOT_SUPPORTED,
            sql,
        );
        assert!(
            msg.contains("cannot run inside a transaction block"),
            "{msg}"
        );
        assert_eq!(bodies_on(&s.direct).await, vec![0, 0], "{sql}: nothing ran");

        // The session still works, and a string that succeeds everywhere commits everywhere.
        assert_eq!(count_through(c, "SELECT count(*) FROM notes").await, 0);
        let n = completes(
            c,
            "INSERT INTO notes VALUES ('one'); INSERT INTO notes VALUES ('two')",
        )
        .await;
        assert_eq!(n, vec![1, 1], "one shard's counts");
        assert_eq!(bodies_on(&s.direct).await, vec![2, 2]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_commit_failing_on_a_later_shard_names_the_shards_and_keeps_the_session() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let k0 = int_keys_on(0, 1, 1)[0];
        let k1 = int_keys_on(1, 1, 1)[0];
        s.direct[0]
            .execute("INSERT INTO orders VALUES ($1, 'a0'), ($1, 'b0')", &[&k0])
            .await
            .expect("seed s0");
        s.direct[1]
            .execute("INSERT INTO orders VALUES ($1, 'a1'), ($1, 'b1')", &[&k1])
            .await
            .expect("seed s1");
        // Checked at COMMIT, on s1 only: the statement succeeds on both shards, s0 commits
        // first, then s1's COMMIT fails.
        s.direct[1]
            .batch_execute(
                "ALTER TABLE orders ADD CONSTRAINT s1_unique_note UNIQUE (note) \
                 DEFERRABLE INITIALLY DEFERRED",
            )
            .await
            .expect("deferred constraint on s1");

        let sql = "UPDATE orders SET note = 'same' WHERE note <> 'x'";
        let e = c.simple_query(sql).await.expect_err(sql);
        let db = e.as_db_error().expect("a server error");
        assert_eq!(db.code(), &SqlState::UNIQUE_VIOLATION, "{db:?}");
        assert!(
            db.message()
                .starts_with("shardgate: COMMIT failed on shard s1: "),
            "{db:?}"
        );
        assert_eq!(
            db.detail(),
            Some("Committed on shards: s0. Rolled back on shards: s1."),
            "{db:?}"
        );
        assert_eq!(notes_on(&s.direct, "same").await, vec![2, 0]);
        // The s1 connection whose COMMIT failed was closed, not pooled: no backend there is
        // left with a COMMIT as its last query (nothing else committed through it).
        let s1 = &s.direct[1];
        let closed = poll_until(Duration::from_secs(5), || async {
            let n: i64 = s1
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COMMIT%'",
                    &[],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            n == 0
        })
        .await;
        assert!(
            closed.is_some(),
            "the failed COMMIT's connection is still open"
        );

        // The session is usable, on both shards.
        assert_eq!(count_through(c, "SELECT count(*) FROM orders").await, 4);
        let sql =
            format!("INSERT INTO orders (user_id, note) VALUES ({k1}, 'after'), ({k0}, 'after')");
        assert_eq!(completes(c, &sql).await, vec![2]);
        assert_eq!(notes_on(&s.direct, "after").await, vec![1, 1]);
    })
    .await
    .expect("test timed out");
}
