//! A shard that joins an open transaction starts in the transaction's state: the client's
//! BEGIN as written (simple or extended protocol, READ ONLY, isolation level), then the
//! `SET TRANSACTION`, `SET LOCAL`, `set_config(..., true)` and savepoints run so far; a parked
//! shard catches up on what it missed; state shardgate cannot replay refuses the join (0A000).
//! Key `a` lives on s0, key `b` on s1.

mod support;

use std::time::Duration;

use support::sharded::{expect_code, int_keys_on, notes_on, seed_with_decoys, sharded_setup};
use tokio::time::timeout;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The first column of every row `sql` returns (simple protocol).
async fn column(c: &Client, sql: &str) -> Vec<String> {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_joining_shard_starts_read_only_when_the_transaction_is() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let a = int_keys_on(0, 1, 1)[0];
        let b = int_keys_on(1, 1, 1)[0];
        seed_with_decoys(&s.direct, &[a, b]).await;
        let update = format!("UPDATE orders SET note = 'ro' WHERE user_id = {b}");
        let read_a = format!("SELECT note FROM orders WHERE user_id = {a} ORDER BY 1");

        for (begin, end) in [
            ("BEGIN READ ONLY", "COMMIT"),
            ("BEGIN; SET TRANSACTION READ ONLY", "COMMIT"),
            (
                "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                "ROLLBACK",
            ),
        ] {
            c.batch_execute(begin).await.expect(begin);
            assert_eq!(column(c, &read_a).await, ["a", "b"], "{begin}: read s0");
            expect_code(
                c.batch_execute(&update).await,
                &SqlState::READ_ONLY_SQL_TRANSACTION,
                &format!("{begin}: write on s1"),
            );
            c.batch_execute(end).await.expect(end);
        }
        // Extended protocol: the BEGIN is a bound statement.
        let begin = c.prepare("BEGIN READ ONLY").await.expect("prepare");
        c.execute(&begin, &[]).await.expect("extended begin");
        assert_eq!(column(c, &read_a).await, ["a", "b"]);
        expect_code(
            c.batch_execute(&update).await,
            &SqlState::READ_ONLY_SQL_TRANSACTION,
            "extended BEGIN READ ONLY: write on s1",
        );
        c.batch_execute("COMMIT").await.expect("commit");
        assert_eq!(
            notes_on(&s.direct, "ro").await,
            vec![0, 0],
            "nothing written"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_joining_shard_gets_the_isolation_level_and_local_settings() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let a = int_keys_on(0, 1, 1)[0];
        let b = int_keys_on(1, 1, 1)[0];
        seed_with_decoys(&s.direct, &[a, b]).await;
        let iso = |k: i64| {
            format!("SELECT current_setting('transaction_isolation') FROM orders WHERE user_id = {k} LIMIT 1")
        };

        c.batch_execute("BEGIN").await.expect("begin");
        c.batch_execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            .await
            .expect("set transaction");
        assert_eq!(column(c, &iso(a)).await, ["serializable"], "s0");
        assert_eq!(column(c, &iso(b)).await, ["serializable"], "s1 joins");
        c.batch_execute("COMMIT").await.expect("commit");

        // BEGIN through the extended protocol (asyncpg sends it so).
        let begin = c
            .prepare("BEGIN ISOLATION LEVEL SERIALIZABLE")
            .await
            .expect("prepare");
        let by_key = c
            .prepare("SELECT current_setting('transaction_isolation') FROM orders WHERE user_id = $1 LIMIT 1")
            .await
            .expect("prepare");
        c.execute(&begin, &[]).await.expect("extended begin");
        for k in [a, b] {
            let got: String = c.query_one(&by_key, &[&k]).await.expect("read").get(0);
            assert_eq!(got, "serializable", "key {k}");
        }
        c.batch_execute("COMMIT").await.expect("commit");

        // SET LOCAL, then a request over both shards and one over all: one answer must not
        // mix two time zones.
        for sql in [
            format!("SELECT user_id || ' ' || current_setting('TimeZone') FROM orders WHERE user_id IN ({a}, {b})"),
            "SELECT user_id || ' ' || current_setting('TimeZone') FROM orders".to_owned(),
        ] {
            c.batch_execute("BEGIN; SET LOCAL TimeZone = 'Asia/Tokyo'")
                .await
                .expect("set local");
            let rows = column(c, &sql).await;
            assert!(rows.iter().any(|r| r == &format!("{b} Asia/Tokyo")), "{sql}: {rows:?}");
            assert!(rows.iter().all(|r| r.ends_with(" Asia/Tokyo")), "{sql}: {rows:?}");
            c.batch_execute("COMMIT").await.expect("commit");
        }

        // A parked shard catches up on a SET LOCAL run after it was left.
        let tenant = |k: i64| {
            format!("SELECT current_setting('app.tenant', true) FROM orders WHERE user_id = {k} LIMIT 1")
        };
        c.batch_execute("BEGIN").await.expect("begin");
        assert_eq!(column(c, &iso(a)).await, ["read committed"]);
        assert_eq!(column(c, &iso(b)).await, ["read committed"]);
        c.batch_execute("SET LOCAL app.tenant = '43'")
            .await
            .expect("set local on s1");
        assert_eq!(column(c, &tenant(a)).await, ["43"], "s0 catches up");
        c.batch_execute("COMMIT").await.expect("commit");

        // set_config(..., true) with its value written out is replayed.
        c.batch_execute("BEGIN").await.expect("begin");
        assert_eq!(column(c, &iso(a)).await, ["read committed"]);
        column(c, "SELECT set_config('app.tenant', '42', true)").await;
        assert_eq!(column(c, &tenant(b)).await, ["42"], "s1 joins");
        c.batch_execute("COMMIT").await.expect("commit");

        // A value shardgate cannot see (a parameter) cannot be replayed: the join is refused.
        let set_param = c
            .prepare("SELECT set_config('app.tenant', $1, true)")
            .await
            .expect("prepare");
        c.batch_execute("BEGIN").await.expect("begin");
        assert_eq!(column(c, &iso(a)).await, ["read committed"]);
        c.query(&set_param, &[&"7"]).await.expect("set_config");
        let msg = expect_code(
            c.simple_query(&iso(b)).await,
            &SqlState::FEATURE_NOT_SUPPORTED,
            "join after set_config($1, true)",
        );
        assert!(msg.contains("same state"), "message: {msg}");
        expect_code(
            c.simple_query("SELECT 1").await,
            &SqlState::IN_FAILED_SQL_TRANSACTION,
            "after the refusal",
        );
        c.batch_execute("ROLLBACK").await.expect("rollback");
        assert_eq!(column(c, "SELECT 1").await, ["1"], "the session goes on");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn savepoints_reach_every_shard_of_the_transaction() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let a = int_keys_on(0, 1, 1)[0];
        let b = int_keys_on(1, 1, 1)[0];
        seed_with_decoys(&s.direct, &[a, b]).await;
        let read = |k: i64| format!("SELECT note FROM orders WHERE user_id = {k} ORDER BY 1");

        // The ORM's nested transaction: the savepoint was taken before s1 joined.
        c.batch_execute("BEGIN").await.expect("begin");
        assert_eq!(column(c, &read(a)).await, ["a", "b"]);
        c.batch_execute("SAVEPOINT sp").await.expect("savepoint");
        assert_eq!(column(c, &read(b)).await, ["a", "b"]);
        c.batch_execute("ROLLBACK TO SAVEPOINT sp")
            .await
            .expect("rollback to a savepoint taken before s1 joined");
        c.batch_execute("RELEASE SAVEPOINT sp")
            .await
            .expect("release");
        assert_eq!(column(c, "SELECT 1").await, ["1"]);
        c.batch_execute("COMMIT").await.expect("commit");

        // A rollback to a savepoint run on the reading shard undoes the writer's rows too.
        c.batch_execute("BEGIN").await.expect("begin");
        assert_eq!(column(c, &read(b)).await, ["a", "b"], "s1 first");
        c.batch_execute(&format!(
            "INSERT INTO orders (user_id, note) VALUES ({a}, 'kept')"
        ))
        .await
        .expect("write s0");
        c.batch_execute("SAVEPOINT sp")
            .await
            .expect("savepoint on s0");
        c.batch_execute(&format!(
            "INSERT INTO orders (user_id, note) VALUES ({a}, 'gone')"
        ))
        .await
        .expect("write s0 again");
        assert_eq!(column(c, &read(b)).await, ["a", "b"], "back to s1");
        c.batch_execute("ROLLBACK TO SAVEPOINT sp")
            .await
            .expect("rollback to, run on s1");
        assert_eq!(
            column(c, &read(a)).await,
            ["a", "b", "kept"],
            "s0 caught up: 'gone' rolled back"
        );
        c.batch_execute("COMMIT").await.expect("commit");
        assert_eq!(notes_on(&s.direct, "kept").await, vec![1, 0]);
        assert_eq!(notes_on(&s.direct, "gone").await, vec![0, 0]);

        // Same, but COMMIT right after the rollback: the writer catches up before it decides.
        c.batch_execute("BEGIN").await.expect("begin");
        c.batch_execute(&format!(
            "INSERT INTO orders (user_id, note) VALUES ({a}, 'kept2')"
        ))
        .await
        .expect("write s0");
        c.batch_execute("SAVEPOINT sp")
            .await
            .expect("savepoint on s0");
        c.batch_execute(&format!(
            "INSERT INTO orders (user_id, note) VALUES ({a}, 'gone2')"
        ))
        .await
        .expect("write s0 again");
        assert_eq!(column(c, &read(b)).await, ["a", "b"], "s1 joins");
        c.batch_execute("ROLLBACK TO SAVEPOINT sp")
            .await
            .expect("rollback to, run on s1");
        c.batch_execute("COMMIT").await.expect("commit");
        assert_eq!(notes_on(&s.direct, "kept2").await, vec![1, 0]);
        assert_eq!(notes_on(&s.direct, "gone2").await, vec![0, 0]);
    })
    .await
    .expect("test timed out");
}

/// A session-level `SET` or `RESET` run inside the transaction holds for the rest of it (and
/// is undone by its rollback): a shard that joins later runs it too. Without it, a joining
/// shard ran at the default isolation level after `SET transaction_isolation`, kept a
/// `SET LOCAL` value the client had reset, and ignored a `SET` the client had run.
#[tokio::test]
async fn session_sets_run_in_the_transaction_reach_every_shard_of_it() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let a = int_keys_on(0, 1, 1)[0];
        let b = int_keys_on(1, 1, 1)[0];
        seed_with_decoys(&s.direct, &[a, b]).await;
        let setting = |k: i64, name: &str| {
            format!(
                "SELECT current_setting('{name}', true) FROM orders WHERE user_id = {k} LIMIT 1"
            )
        };
        let tz = |k: i64| setting(k, "TimeZone");
        let default_tz = column(c, &tz(a)).await;
        assert_ne!(default_tz, ["Europe/Paris"]);

        // SET transaction_isolation is SET TRANSACTION ISOLATION LEVEL.
        c.batch_execute("BEGIN; SET transaction_isolation = 'serializable'")
            .await
            .expect("set transaction_isolation");
        assert_eq!(
            column(c, &setting(a, "transaction_isolation")).await,
            ["serializable"]
        );
        assert_eq!(
            column(c, &setting(b, "transaction_isolation")).await,
            ["serializable"],
            "s1 joins"
        );
        c.batch_execute("COMMIT").await.expect("commit");

        // RESET after SET LOCAL, and RESET ALL: the reset wins on the joining shard too.
        for reset in ["RESET TimeZone", "RESET ALL"] {
            c.batch_execute("BEGIN").await.expect("begin");
            assert_eq!(column(c, &tz(a)).await, default_tz);
            c.batch_execute("SET LOCAL TimeZone = 'Asia/Tokyo'")
                .await
                .expect("set local");
            c.batch_execute(reset).await.expect(reset);
            assert_eq!(column(c, &tz(b)).await, default_tz, "{reset}: s1 joins");
            c.batch_execute("COMMIT").await.expect("commit");
        }

        // A session SET inside the transaction, then a rollback: it holds until the rollback.
        c.batch_execute("BEGIN").await.expect("begin");
        assert_eq!(column(c, &tz(a)).await, default_tz);
        c.batch_execute("SET TimeZone = 'Europe/Paris'")
            .await
            .expect("set");
        assert_eq!(column(c, &tz(b)).await, ["Europe/Paris"], "s1 joins");
        c.batch_execute("ROLLBACK").await.expect("rollback");
        assert_eq!(column(c, &tz(a)).await, default_tz, "rolled back on s0");
        assert_eq!(column(c, &tz(b)).await, default_tz, "rolled back on s1");

        // Run on the written shard, then a reading shard joins: it holds there, and on both
        // after the COMMIT.
        c.batch_execute("BEGIN").await.expect("begin");
        c.batch_execute(&format!(
            "INSERT INTO orders (user_id, note) VALUES ({a}, 'tz')"
        ))
        .await
        .expect("write s0");
        c.batch_execute("SET TimeZone = 'Europe/Paris'")
            .await
            .expect("set on s0");
        assert_eq!(column(c, &tz(b)).await, ["Europe/Paris"], "s1 joins");
        c.batch_execute("COMMIT").await.expect("commit");
        assert_eq!(notes_on(&s.direct, "tz").await, vec![1, 0]);
        for k in [a, b, a, b] {
            assert_eq!(
                column(c, &tz(k)).await,
                ["Europe/Paris"],
                "key {k} after COMMIT"
            );
        }
    })
    .await
    .expect("test timed out");
}

/// A `DO` block that may set a value for the transaction (`SET LOCAL`, `set_config(..., true)`)
/// cannot be replayed on a shard that joins later: the join is refused (0A000), where it used
/// to run there without the value.
#[tokio::test]
async fn a_do_block_setting_a_local_value_refuses_a_join() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let a = int_keys_on(0, 1, 1)[0];
        let b = int_keys_on(1, 1, 1)[0];
        seed_with_decoys(&s.direct, &[a, b]).await;
        let tenant = |k: i64| {
            format!("SELECT current_setting('app.tenant', true) FROM orders WHERE user_id = {k} LIMIT 1")
        };
        for block in [
            "DO $$BEGIN PERFORM set_config('app.tenant', '5', true); END$$",
            "DO $$BEGIN SET LOCAL app.tenant = '5'; END$$",
        ] {
            c.batch_execute("BEGIN").await.expect("begin");
            column(c, &tenant(a)).await;
            c.batch_execute(block).await.expect(block);
            assert_eq!(column(c, &tenant(a)).await, ["5"], "{block}: s0");
            let msg = expect_code(
                c.simple_query(&tenant(b)).await,
                &SqlState::FEATURE_NOT_SUPPORTED,
                &format!("{block}: s1 joins"),
            );
            assert!(msg.contains("same state"), "message: {msg}");
            c.batch_execute("ROLLBACK").await.expect("rollback");
        }
        // A DO block that sets nothing does not stop a join.
        c.batch_execute("BEGIN").await.expect("begin");
        column(c, &tenant(a)).await;
        c.batch_execute("DO $$BEGIN PERFORM 1; END$$").await.expect("do");
        assert_eq!(column(c, &tenant(b)).await.len(), 1, "s1 joins");
        c.batch_execute("COMMIT").await.expect("commit");
    })
    .await
    .expect("test timed out");
}

/// A session-level SET inside a transaction that spans shards is kept by its COMMIT and
/// undone by its ROLLBACK, as on one server.
#[tokio::test]
async fn a_session_set_in_a_transaction_over_shards_follows_its_end() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let a = int_keys_on(0, 1, 1)[0];
        let b = int_keys_on(1, 1, 1)[0];
        seed_with_decoys(&s.direct, &[a, b]).await;
        let read = |k: i64| format!("SELECT note FROM orders WHERE user_id = {k} ORDER BY 1");
        let tz = || async { column(c, "SHOW TimeZone").await };
        let before = tz().await;
        for (zone, touch, end) in [
            ("Asia/Tokyo", vec![read(a)], "COMMIT"),
            ("Europe/Paris", vec![read(a), read(b)], "COMMIT"),
            ("America/Lima", vec![read(a), read(b)], "ROLLBACK"),
        ] {
            c.batch_execute("BEGIN").await.expect("begin");
            c.batch_execute(&format!("SET TimeZone = '{zone}'"))
                .await
                .expect("set");
            for sql in &touch {
                column(c, sql).await;
            }
            c.batch_execute(end).await.expect(end);
            let want = if end == "COMMIT" {
                vec![zone.to_owned()]
            } else {
                before.clone()
            };
            let _ = &want;
            assert_eq!(tz().await, want, "{zone} {touch:?} {end}");
            assert_eq!(tz().await, want, "{zone} {touch:?} {end}: again");
            c.batch_execute(&format!("SET TimeZone = '{}'", before[0]))
                .await
                .expect("back");
        }
    })
    .await
    .expect("test timed out");
}

/// A transaction shardgate aborts itself (a shard that cannot join) takes its session-level
/// SETs with it: a later transaction that commits does not bring them back.
#[tokio::test]
async fn a_set_in_a_transaction_shardgate_aborted_stays_undone() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let a = int_keys_on(0, 1, 1)[0];
        let b = int_keys_on(1, 1, 1)[0];
        seed_with_decoys(&s.direct, &[a, b]).await;
        let read = |k: i64| format!("SELECT note FROM orders WHERE user_id = {k} ORDER BY 1");
        let before = column(c, "SHOW application_name").await;
        let set_param = c
            .prepare("SELECT set_config('app.tenant', $1, true)")
            .await
            .expect("prepare");
        c.batch_execute("BEGIN").await.expect("begin");
        column(c, &read(a)).await;
        c.batch_execute("SET application_name = 'aborted_txn'")
            .await
            .expect("set");
        c.query(&set_param, &[&"7"]).await.expect("set_config");
        expect_code(
            c.simple_query(&read(b)).await,
            &SqlState::FEATURE_NOT_SUPPORTED,
            "join after set_config($1, true)",
        );
        c.batch_execute("ROLLBACK").await.expect("rollback");
        // A later transaction that changes another setting and commits.
        c.batch_execute("BEGIN").await.expect("begin");
        c.batch_execute("SET TimeZone = 'Asia/Tokyo'")
            .await
            .expect("set tz");
        column(c, &read(a)).await;
        c.batch_execute("COMMIT").await.expect("commit");
        // On each shard's connection (the other shard's gets the session's settings applied).
        for k in [a, b] {
            let got = column(
                c,
                &format!(
                    "SELECT current_setting('TimeZone') || '|' || current_setting('application_name') \
                     FROM orders WHERE user_id = {k} LIMIT 1"
                ),
            )
            .await;
            assert_eq!(got, [format!("Asia/Tokyo|{}", before[0])], "key {k}");
        }
    })
    .await
    .expect("test timed out");
}
