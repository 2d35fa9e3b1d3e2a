//! Guards of scatter-gather that keep it from ever returning a plausible wrong answer: a
//! user-defined aggregate (which the SQL alone cannot tell from a plain function) is refused,
//! and ordinary statement spellings (a trailing semicolon) still scatter.

mod support;

use std::time::Duration;

use support::sharded::{expect_code, int_keys_on, sharded_setup};
use tokio::time::timeout;
use tokio_postgres::error::SqlState;

#[tokio::test(flavor = "multi_thread")]
async fn user_defined_aggregates_are_refused_and_semicolons_are_fine() {
    timeout(Duration::from_secs(60), async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let k0 = int_keys_on(0, 1, 2);
        let k1 = int_keys_on(1, 1, 2);
        for k in k0.iter().chain(&k1) {
            c.batch_execute(&format!(
                "INSERT INTO orders (user_id, note) VALUES ({k}, 'n{k}')"
            ))
            .await
            .expect("insert");
        }
        // The name is looked up (and cached as "not an aggregate") before it exists...
        let r = c.query("SELECT my_total(user_id) FROM orders", &[]).await;
        assert!(r.is_err(), "no such function yet");
        // ...and DDL through shardgate forgets that, so the aggregate is caught once created.
        // DDL reaches every shard, so the aggregate exists everywhere.
        c.batch_execute(
            "CREATE AGGREGATE my_total(bigint) (sfunc = int8pl, stype = bigint, initcond = '0')",
        )
        .await
        .expect("create aggregate");
        let sum: i64 = k0.iter().chain(&k1).sum();
        // On one shard it is an ordinary query.
        let one = c
            .query_one(
                &format!(
                    "SELECT my_total(user_id) FROM orders WHERE user_id = {}",
                    k0[0]
                ),
                &[],
            )
            .await
            .expect("keyed");
        assert_eq!(one.get::<_, i64>(0), k0[0]);
        // Across shards, merging it as a plain value would be wrong: refused.
        let msg = expect_code(
            c.query("SELECT my_total(user_id) FROM orders", &[]).await,
            &SqlState::FEATURE_NOT_SUPPORTED,
            "user-defined aggregate",
        );
        assert!(msg.contains("my_total"), "{msg}");
        // A plain function is fine, and so is a trailing semicolon.
        let rows = c
            .query("SELECT abs(user_id) FROM orders ORDER BY 1;", &[])
            .await
            .expect("scatter with a semicolon");
        let got: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let mut want: Vec<i64> = k0.iter().chain(&k1).copied().collect();
        want.sort_unstable();
        assert_eq!(got, want);
        // sum(bigint) is numeric: read both as text through the simple protocol.
        let rows = c
            .simple_query("SELECT count(*), sum(user_id) FROM orders;")
            .await
            .expect("aggregates with a semicolon");
        let row = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .expect("one row");
        assert_eq!(row.get(0), Some("4"));
        assert_eq!(row.get(1), Some(sum.to_string().as_str()));
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread")]
async fn insert_select_runs_on_every_shard_when_rows_stay_put() {
    timeout(Duration::from_secs(60), async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let keys: Vec<i64> = int_keys_on(0, 1, 3)
            .into_iter()
            .chain(int_keys_on(1, 1, 3))
            .collect();
        for k in &keys {
            c.batch_execute(&format!(
                "INSERT INTO orders (user_id, note) VALUES ({k}, 'n{k}')"
            ))
            .await
            .expect("insert");
        }
        // Copies each shard's rows within the shard: every copy is where its key hashes.
        let n = c
            .execute(
                "INSERT INTO orders (note, user_id) SELECT o.note || '-copy', o.user_id FROM orders o WHERE o.note NOT LIKE '%copy'",
                &[],
            )
            .await
            .expect("co-located INSERT ... SELECT");
        assert_eq!(n, keys.len() as u64);
        for (shard, d) in s.direct.iter().enumerate() {
            let rows = d
                .query("SELECT user_id, note FROM orders ORDER BY note", &[])
                .await
                .expect("direct");
            for r in rows {
                let k: i64 = r.get(0);
                assert_eq!(
                    support::sharded::shard_of_int(k),
                    shard,
                    "row {k} is on shard {shard}"
                );
            }
            let copies = d
                .query_one("SELECT count(*) FROM orders WHERE note LIKE '%-copy'", &[])
                .await
                .expect("count");
            assert_eq!(copies.get::<_, i64>(0), 3, "shard {shard} copied its own rows");
        }
        // A row that could move is refused, and nothing is inserted.
        let msg = expect_code(
            c.execute(
                "INSERT INTO orders (user_id, note) SELECT user_id + 1, note FROM orders",
                &[],
            )
            .await,
            &SqlState::FEATURE_NOT_SUPPORTED,
            "moving INSERT ... SELECT",
        );
        assert!(msg.contains("INSERT ... SELECT"), "{msg}");
        let total = c
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .expect("count");
        assert_eq!(total.get::<_, i64>(0), 2 * keys.len() as i64);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread")]
async fn select_star_with_order_by_merges_in_order() {
    timeout(Duration::from_secs(60), async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let keys: Vec<i64> = int_keys_on(0, 1, 4)
            .into_iter()
            .chain(int_keys_on(1, 1, 4))
            .collect();
        for (i, k) in keys.iter().enumerate() {
            c.batch_execute(&format!(
                "INSERT INTO orders (user_id, note) VALUES ({k}, 'n{}')",
                i % 3
            ))
            .await
            .expect("insert");
        }
        let rows = c
            .query(
                "SELECT * FROM orders ORDER BY note DESC, user_id LIMIT 5 OFFSET 1",
                &[],
            )
            .await
            .expect("SELECT * ... ORDER BY");
        let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut want: Vec<(i64, String)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (*k, format!("n{}", i % 3)))
            .collect();
        want.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let want: Vec<(i64, String)> = want.into_iter().skip(1).take(5).collect();
        assert_eq!(got, want);
        assert_eq!(
            rows[0].columns().len(),
            2,
            "hidden sort columns are removed"
        );
        // An expression key with * is refused rather than guessed.
        expect_code(
            c.query("SELECT * FROM orders ORDER BY length(note)", &[])
                .await,
            &SqlState::FEATURE_NOT_SUPPORTED,
            "* with an expression key",
        );
    })
    .await
    .expect("bounded");
}

/// A read whose IN list spans shards is merged like a scatter over those shards: its ORDER BY,
/// LIMIT and aggregates hold as on one server (concatenating would break all three).
#[tokio::test(flavor = "multi_thread")]
async fn in_lists_across_shards_merge_exactly() {
    timeout(Duration::from_secs(60), async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let a = int_keys_on(0, 1, 2);
        let b = int_keys_on(1, 1, 2);
        let keys: Vec<i64> = a.iter().chain(&b).copied().collect();
        for k in &keys {
            for n in 0..3 {
                c.batch_execute(&format!(
                    "INSERT INTO orders (user_id, note) VALUES ({k}, 'n{n}-{k}')"
                ))
                .await
                .expect("insert");
            }
        }
        let list = format!("{}, {}, {}", a[0], b[0], b[1]);
        let count = c
            .query_one(&format!("SELECT count(*) FROM orders WHERE user_id IN ({list})"), &[])
            .await
            .expect("count over an IN list across shards");
        assert_eq!(count.get::<_, i64>(0), 9);
        let rows = c
            .query(
                &format!(
                    "SELECT user_id, note FROM orders WHERE user_id IN ({list}) ORDER BY user_id DESC, note LIMIT 4"
                ),
                &[],
            )
            .await
            .expect("ordered IN list across shards");
        let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut want: Vec<(i64, String)> = [a[0], b[0], b[1]]
            .iter()
            .flat_map(|k| (0..3).map(move |n| (*k, format!("n{n}-{k}"))))
            .collect();
        want.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
        want.truncate(4);
        assert_eq!(got, want);
    })
    .await
    .expect("bounded");
}

/// ORDER BY ... LIMIT where one shard runs out of rows before the limit is reached: the merge
/// must not wait for rows that shard already said it does not have.
#[tokio::test(flavor = "multi_thread")]
async fn a_limit_reached_after_a_shard_ran_out_returns() {
    timeout(Duration::from_secs(60), async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let mut keys: Vec<i64> = int_keys_on(0, 1, 1);
        keys.extend(int_keys_on(1, 1, 5));
        for k in &keys {
            c.batch_execute(&format!(
                "INSERT INTO orders (user_id, note) VALUES ({k}, 'n')"
            ))
            .await
            .expect("insert");
        }
        keys.sort_unstable();
        let rows = timeout(
            Duration::from_secs(10),
            c.query("SELECT user_id FROM orders ORDER BY user_id LIMIT 3", &[]),
        )
        .await
        .expect("the merge returned")
        .expect("scatter");
        let got: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(got, keys[..3].to_vec());
        // Transaction control inside a request that runs on several shards is refused.
        let all = format!("{}, {}", keys[0], keys[5]);
        expect_code(
            c.simple_query(&format!(
                "BEGIN; UPDATE orders SET note = 'x' WHERE user_id IN ({all})"
            ))
            .await,
            &SqlState::FEATURE_NOT_SUPPORTED,
            "BEGIN in a fanned request",
        );
    })
    .await
    .expect("bounded");
}

/// A scatter whose rows come from a function that changes a setting for the session
/// (`set_config(name, value, false)`, reported by PostgreSQL in a ParameterStatus) leaves no
/// shard's server connection to the next client with that setting: outside a transaction, and
/// inside one, where the connections stay with the transaction (and one of them runs a keyed
/// statement after the scatter) until COMMIT pools them.
#[tokio::test(flavor = "multi_thread")]
async fn a_setting_changed_by_a_scattered_function_reaches_nobody_else() {
    timeout(Duration::from_secs(60), async {
        let topology = shardgate_testkit::Topology::builder()
            .shards(2)
            .build()
            .expect("topology");
        for d in support::sharded::primaries(&topology).await {
            d.batch_execute(support::sharded::SCHEMA)
                .await
                .expect("schema");
            d.batch_execute(
                "CREATE FUNCTION sg_zone(zone text) RETURNS text LANGUAGE plpgsql AS \
                 $$ BEGIN RETURN pg_catalog.set_config('TimeZone', zone, false); END $$",
            )
            .await
            .expect("function");
        }
        // One server connection per shard: the next client gets the same ones.
        let proxy = support::sharded::start_pool_of_one(&topology);
        let a = proxy.connect(&topology).await;
        let on_s0 = int_keys_on(0, 1, 2);
        for k in on_s0.iter().chain(&int_keys_on(1, 1, 2)) {
            a.batch_execute(&format!(
                "INSERT INTO orders (user_id, note) VALUES ({k}, 'n{k}')"
            ))
            .await
            .expect("insert");
        }
        let b = proxy.connect(&topology).await;
        let zone = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
            rows.iter().map(|r| r.get(0)).collect()
        };
        let before = zone(
            b.query("SELECT current_setting('TimeZone') FROM orders", &[])
                .await
                .expect("zones"),
        );
        assert_eq!(before.len(), 4);
        for (in_transaction, to) in [(false, "Asia/Tokyo"), (true, "America/Lima")] {
            assert!(before.iter().all(|z| z != to), "{before:?}");
            if in_transaction {
                a.batch_execute("BEGIN").await.expect("begin");
            }
            let set = zone(
                a.query(
                    &format!("SELECT sg_zone('{to}') FROM orders ORDER BY 1"),
                    &[],
                )
                .await
                .expect("scatter"),
            );
            assert_eq!(set, vec![to; 4]);
            if in_transaction {
                let keyed = zone(
                    a.query(
                        "SELECT current_setting('TimeZone') FROM orders WHERE user_id = $1",
                        &[&on_s0[0]],
                    )
                    .await
                    .expect("keyed"),
                );
                assert_eq!(keyed, vec![to], "the transaction's own setting");
                a.batch_execute("COMMIT").await.expect("commit");
            }
            let after = zone(
                b.query("SELECT current_setting('TimeZone') FROM orders", &[])
                    .await
                    .expect("zones"),
            );
            assert_eq!(
                after, before,
                "another client's time zone reached this one (in a transaction: {in_transaction})"
            );
        }
    })
    .await
    .expect("in time");
}
