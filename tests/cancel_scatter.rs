//! A cancel of a request that runs on several shards at once (a scatter, a fan-out write)
//! reaches every shard's backend: the client gets 57014 about as soon as it would directly,
//! nothing keeps running on any shard, and the session goes on.

mod support;

use std::time::{Duration, Instant};

use support::sharded::{int_keys_on, sharded_setup, Sharded};
use tokio::time::timeout;

/// Rows per shard; each costs 50 ms under `pg_sleep(0.05)`, so a full run takes 2 s.
const ROWS_PER_SHARD: usize = 40;

async fn seed(s: &Sharded) -> Vec<i64> {
    let mut keys = int_keys_on(0, 1, ROWS_PER_SHARD);
    keys.extend(int_keys_on(1, 1, ROWS_PER_SHARD));
    for (d, shard_keys) in s.direct.iter().zip(keys.chunks(ROWS_PER_SHARD)) {
        let values: Vec<String> = shard_keys.iter().map(|k| format!("({k}, 'n')")).collect();
        d.batch_execute(&format!("INSERT INTO orders VALUES {}", values.join(",")))
            .await
            .expect("seed");
    }
    keys
}

/// Runs `sql` through the proxy, cancels it after 300 ms, and returns its SQLSTATE and how
/// long it took.
async fn cancelled(client: &tokio_postgres::Client, sql: &str) -> (Option<String>, Duration) {
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token
            .cancel_query(tokio_postgres::NoTls)
            .await
            .expect("send cancel");
    });
    let started = Instant::now();
    let result = client.simple_query(sql).await;
    let took = started.elapsed();
    canceller.await.expect("join");
    let code = result.err().map(|e| {
        e.code()
            .map_or_else(|| format!("no code: {e}"), |c| c.code().to_owned())
    });
    (code, took)
}

/// No backend on any shard is still running a statement with `pg_sleep` (the cancel reached
/// every shard's query, not just the first whose error was reported).
async fn nothing_sleeps(s: &Sharded) {
    for (i, d) in s.direct.iter().enumerate() {
        let row = d
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
                 AND state = 'active' AND query LIKE '%pg_sleep%'",
                &[],
            )
            .await
            .expect("activity");
        assert_eq!(row.get::<_, i64>(0), 0, "a query still runs on shard {i}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_scatter_stops_on_every_shard() {
    timeout(Duration::from_secs(90), async {
        let s = sharded_setup(None).await;
        let keys = seed(&s).await;
        let c = &s.client;
        for sql in [
            "SELECT user_id FROM orders WHERE pg_sleep(0.05) IS NOT NULL",
            "SELECT count(*) FROM orders WHERE pg_sleep(0.05) IS NOT NULL",
        ] {
            let (code, took) = cancelled(c, sql).await;
            assert_eq!(code.as_deref(), Some("57014"), "{sql}");
            assert!(took < Duration::from_millis(1300), "{sql}: took {took:?}");
            // The shards' statements were cancelled too, not left to run to their end.
            tokio::time::sleep(Duration::from_millis(200)).await;
            nothing_sleeps(&s).await;
            // The session goes on, and a scatter answers in full.
            let rows = c
                .query_one("SELECT count(*) FROM orders", &[])
                .await
                .expect("after cancel");
            assert_eq!(rows.get::<_, i64>(0), keys.len() as i64);
        }
        // Inside a transaction the cancel fails it, as PostgreSQL does.
        c.batch_execute("BEGIN").await.expect("begin");
        let (code, took) = cancelled(
            c,
            "SELECT user_id FROM orders WHERE pg_sleep(0.05) IS NOT NULL",
        )
        .await;
        assert_eq!(code.as_deref(), Some("57014"));
        assert!(took < Duration::from_millis(1300), "took {took:?}");
        let e = c
            .simple_query("SELECT 1")
            .await
            .expect_err("the transaction is aborted");
        assert_eq!(e.code().map(|c| c.code()), Some("25P02"), "{e}");
        c.batch_execute("ROLLBACK").await.expect("rollback");
        let one = c.query_one("SELECT 1", &[]).await.expect("after rollback");
        assert_eq!(one.get::<_, i32>(0), 1);
        nothing_sleeps(&s).await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_fan_out_write_changes_nothing() {
    timeout(Duration::from_secs(90), async {
        let s = sharded_setup(None).await;
        let keys = seed(&s).await;
        let c = &s.client;
        let (code, took) = cancelled(
            c,
            "UPDATE orders SET note = 'changed' WHERE pg_sleep(0.05) IS NOT NULL",
        )
        .await;
        assert_eq!(code.as_deref(), Some("57014"));
        assert!(took < Duration::from_millis(1300), "took {took:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        nothing_sleeps(&s).await;
        // Rolled back on every shard.
        for (i, d) in s.direct.iter().enumerate() {
            let row = d
                .query_one("SELECT count(*) FROM orders WHERE note = 'changed'", &[])
                .await
                .expect("count");
            assert_eq!(row.get::<_, i64>(0), 0, "shard {i} kept the write");
        }
        // The session goes on: the same write, uncancelled, runs everywhere.
        let n = c
            .execute("UPDATE orders SET note = 'changed'", &[])
            .await
            .expect("write after cancel");
        assert_eq!(n, keys.len() as u64);
    })
    .await
    .expect("test timed out");
}
