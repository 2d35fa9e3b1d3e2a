//! Transactions over two shards (issue 4): a transaction follows its statements; once it has
//! written on one shard, a statement needing the other fails with 0A000 ("transaction spans
//! shards s0 and s1"), the transaction is aborted on every shard (25P02 until it ends, COMMIT
//! answers ROLLBACK) and nothing of it commits anywhere. Reads of another shard are allowed.

mod support;

use std::time::Duration;

use support::raw::{error_field, login_trust, query};
use support::sharded::{
    expect_code, int_keys_on, notes_on, orders_snapshot, seed_with_decoys, sharded_options,
    sharded_setup,
};
use support::start_trust;
use tokio::time::timeout;
use tokio_postgres::error::SqlState;

const TEST_TIMEOUT: Duration = Duration::from_secs(45);
const SPANS: &str = "transaction spans shards s0 and s1";

#[tokio::test]
async fn a_write_on_a_second_shard_aborts_the_transaction_everywhere() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let a = int_keys_on(0, 1, 2);
        let b = int_keys_on(1, 1, 2);
        seed_with_decoys(&s.direct, &[a[1], b[1]]).await;
        let before = orders_snapshot(&s.direct).await;

        // s0 first, then s1.
        c.batch_execute("BEGIN").await.expect("begin");
        c.batch_execute(&format!(
            "INSERT INTO orders (user_id, note) VALUES ({}, 'txn1')",
            a[0]
        ))
        .await
        .expect("write on s0");
        let msg = expect_code(
            c.batch_execute(&format!(
                "INSERT INTO orders (user_id, note) VALUES ({}, 'txn1')",
                b[0]
            ))
            .await,
            &SqlState::FEATURE_NOT_SUPPORTED,
            "write on s1 after s0",
        );
        assert!(msg.contains(SPANS), "message: {msg}");
        expect_code(
            c.simple_query("SELECT 1").await,
            &SqlState::IN_FAILED_SQL_TRANSACTION,
            "after the refusal",
        );
        expect_code(
            c.simple_query(&format!("SELECT note FROM orders WHERE user_id = {}", a[1]))
                .await,
            &SqlState::IN_FAILED_SQL_TRANSACTION,
            "read after the refusal",
        );
        c.batch_execute("COMMIT")
            .await
            .expect("commit (answers rollback)");
        assert_eq!(notes_on(&s.direct, "txn1").await, vec![0, 0]);
        assert_eq!(orders_snapshot(&s.direct).await, before);

        // s1 first, then an UPDATE on s0 (names still in shard order); extended protocol.
        // Prepared outside the transaction (see
        // `statements_prepared_inside_a_transaction_write_nothing`).
        let mut client = s.proxy.connect(&s.topology).await;
        let insert = client
            .prepare("INSERT INTO orders (user_id, note) VALUES ($1, 'txn2')")
            .await
            .expect("prepare");
        let update = client
            .prepare("UPDATE orders SET note = 'txn2' WHERE user_id = $1")
            .await
            .expect("prepare");
        let tx = client.transaction().await.expect("begin");
        tx.execute(&insert, &[&b[0]]).await.expect("write on s1");
        let msg = expect_code(
            tx.execute(&update, &[&a[1]]).await,
            &SqlState::FEATURE_NOT_SUPPORTED,
            "update on s0 after s1",
        );
        assert!(msg.contains(SPANS), "message: {msg}");
        expect_code(
            tx.execute("SELECT 1", &[]).await,
            &SqlState::IN_FAILED_SQL_TRANSACTION,
            "extended after the refusal",
        );
        let _ = tx.commit().await;
        assert_eq!(notes_on(&s.direct, "txn2").await, vec![0, 0]);
        assert_eq!(orders_snapshot(&s.direct).await, before);

        // A split multi-row INSERT inside a transaction is a cross-shard write too.
        c.batch_execute("BEGIN").await.expect("begin");
        expect_code(
            c.batch_execute(&format!(
                "INSERT INTO orders (user_id, note) VALUES ({}, 'txn3'), ({}, 'txn3')",
                a[0], b[0]
            ))
            .await,
            &SqlState::FEATURE_NOT_SUPPORTED,
            "split insert in a transaction",
        );
        c.batch_execute("ROLLBACK").await.expect("rollback");
        assert_eq!(notes_on(&s.direct, "txn3").await, vec![0, 0]);

        // Both sessions work afterwards.
        c.batch_execute(&format!(
            "INSERT INTO orders (user_id, note) VALUES ({}, 'after')",
            b[0]
        ))
        .await
        .expect("autocommit after");
        client
            .execute(
                "INSERT INTO orders (user_id, note) VALUES ($1, 'after')",
                &[&a[0]],
            )
            .await
            .expect("autocommit after (extended)");
        assert_eq!(notes_on(&s.direct, "after").await, vec![1, 1]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn the_refusal_and_the_commit_answer_on_the_wire() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let proxy = start_trust(&s.topology, sharded_options(None));
        let a = int_keys_on(0, 1, 1)[0];
        let b = int_keys_on(1, 1, 1)[0];
        let mut conn = login_trust(proxy.addr(), s.topology.user(), s.topology.database()).await;
        let t = Duration::from_secs(10);
        let tags = |msgs: &[(u8, Vec<u8>)]| -> Vec<u8> { msgs.iter().map(|m| m.0).collect() };

        conn.send(&query("BEGIN")).await;
        conn.until_ready(t).await;
        conn.send(&query(&format!(
            "INSERT INTO orders (user_id, note) VALUES ({a}, 'wire')"
        )))
        .await;
        let got = conn.until_ready(t).await;
        assert_eq!(tags(&got), b"CZ", "{got:?}");
        assert_eq!(got[1].1, b"T", "in a transaction");

        conn.send(&query(&format!(
            "INSERT INTO orders (user_id, note) VALUES ({b}, 'wire')"
        )))
        .await;
        let got = conn.until_ready(t).await;
        assert_eq!(tags(&got), b"EZ", "{got:?}");
        assert_eq!(error_field(&got[0].1, b'C').as_deref(), Some("0A000"));
        let msg = error_field(&got[0].1, b'M').unwrap_or_default();
        assert!(msg.contains(SPANS), "message: {msg}");
        assert_eq!(got[1].1, b"E", "failed transaction");

        conn.send(&query("SELECT 1")).await;
        let got = conn.until_ready(t).await;
        assert_eq!(tags(&got), b"EZ", "{got:?}");
        assert_eq!(error_field(&got[0].1, b'C').as_deref(), Some("25P02"));

        conn.send(&query("COMMIT")).await;
        let got = conn.until_ready(t).await;
        assert_eq!(tags(&got), b"CZ", "{got:?}");
        assert_eq!(got[0].1, b"ROLLBACK\0", "COMMIT answers ROLLBACK");
        assert_eq!(got[1].1, b"I");
        assert_eq!(notes_on(&s.direct, "wire").await, vec![0, 0]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_writer_may_read_another_shard_and_commits_its_write() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let a = int_keys_on(0, 1, 2);
        let b = int_keys_on(1, 1, 2);
        seed_with_decoys(&s.direct, &[b[0], a[1]]).await;

        // Statements prepared outside the transactions (see
        // `statements_prepared_inside_a_transaction_write_nothing`).
        let read = c
            .prepare("SELECT note FROM orders WHERE user_id = $1 ORDER BY note")
            .await
            .expect("prepare");
        let count = c
            .prepare("SELECT count(*) FROM orders WHERE user_id = $1")
            .await
            .expect("prepare");
        let insert = c
            .prepare("INSERT INTO orders (user_id, note) VALUES ($1, 'rw2')")
            .await
            .expect("prepare");

        // Write s0, read s1, write s0 again.
        c.batch_execute("BEGIN").await.expect("begin");
        c.batch_execute(&format!(
            "INSERT INTO orders (user_id, note) VALUES ({}, 'rw')",
            a[0]
        ))
        .await
        .expect("write s0");
        let rows = c
            .query(&read, &[&b[0]])
            .await
            .expect("read s1 inside the transaction");
        let notes: Vec<&str> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(notes, vec!["a", "b"]);
        c.batch_execute(&format!(
            "UPDATE orders SET note = 'rw' WHERE user_id = {}",
            a[1]
        ))
        .await
        .expect("write s0 again");
        c.batch_execute("COMMIT").await.expect("commit");
        assert_eq!(notes_on(&s.direct, "rw").await, vec![3, 0]);

        // Read s1 first, then write s0 only.
        c.batch_execute("BEGIN").await.expect("begin");
        let rows = c.query(&count, &[&b[0]]).await.expect("read s1");
        assert_eq!(rows[0].get::<_, i64>(0), 2);
        c.execute(&insert, &[&a[0]])
            .await
            .expect("write s0 after reading s1");
        c.batch_execute("COMMIT").await.expect("commit");
        assert_eq!(notes_on(&s.direct, "rw2").await, vec![1, 0]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_transaction_on_one_shard_commits_or_rolls_back_normally() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let b = int_keys_on(1, 1, 3);

        let insert = c
            .prepare("INSERT INTO orders (user_id, note) VALUES ($1, 'one')")
            .await
            .expect("prepare");
        let update = c
            .prepare("UPDATE orders SET note = 'one!' WHERE user_id = $1")
            .await
            .expect("prepare");
        c.batch_execute("BEGIN").await.expect("begin");
        for k in &b {
            c.execute(&insert, &[k]).await.expect("insert on s1");
        }
        let n = c.execute(&update, &[&b[0]]).await.expect("update on s1");
        assert_eq!(n, 1);
        // A multi-row insert whose rows all hash to s1 is not a span.
        c.batch_execute(&format!(
            "INSERT INTO orders (user_id, note) VALUES ({}, 'one'), ({}, 'one')",
            b[1], b[2]
        ))
        .await
        .expect("multi-row insert on s1 only");
        // Not visible outside the transaction yet.
        assert_eq!(notes_on(&s.direct, "one").await, vec![0, 0]);
        c.batch_execute("COMMIT").await.expect("commit");
        assert_eq!(notes_on(&s.direct, "one").await, vec![0, 4]);
        assert_eq!(notes_on(&s.direct, "one!").await, vec![0, 1]);

        c.batch_execute("BEGIN").await.expect("begin");
        c.batch_execute(&format!(
            "INSERT INTO orders (user_id, note) VALUES ({}, 'gone')",
            b[0]
        ))
        .await
        .expect("insert");
        c.batch_execute("ROLLBACK").await.expect("rollback");
        assert_eq!(notes_on(&s.direct, "gone").await, vec![0, 0]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn statements_prepared_inside_a_transaction_write_nothing() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let a = int_keys_on(0, 1, 1)[0];
        let b = int_keys_on(1, 1, 1)[0];
        seed_with_decoys(&s.direct, &[b]).await;

        // tokio-postgres, JDBC and asyncpg prepare (Parse + Describe + Sync, no Execute) right
        // before running a statement; that request needs no shard and writes nothing.
        c.batch_execute("BEGIN").await.expect("begin");
        let insert = c
            .prepare("INSERT INTO orders (user_id, note) VALUES ($1, 'prep')")
            .await
            .expect("prepare inside the transaction");
        c.execute(&insert, &[&b])
            .await
            .expect("the transaction's first write, on s1");
        c.batch_execute("COMMIT").await.expect("commit");
        assert_eq!(notes_on(&s.direct, "prep").await, vec![0, 1]);

        // Reading s1, then preparing and running a write for s0.
        c.batch_execute("BEGIN").await.expect("begin");
        let read = c
            .prepare("SELECT count(*) FROM orders WHERE user_id = $1")
            .await
            .expect("prepare");
        let n: i64 = c.query_one(&read, &[&b]).await.expect("read s1").get(0);
        assert_eq!(n, 3);
        let insert2 = c
            .prepare("INSERT INTO orders (user_id, note) VALUES ($1, 'prep2')")
            .await
            .expect("prepare inside the transaction");
        c.execute(&insert2, &[&a])
            .await
            .expect("the transaction's first write, on s0");
        c.batch_execute("COMMIT").await.expect("commit");
        assert_eq!(notes_on(&s.direct, "prep2").await, vec![1, 0]);
    })
    .await
    .expect("test timed out");
}
