//! Keyless writes, prepared LIMIT/OFFSET parameters and transactions, and the shapes shardgate
//! may refuse.

use tokio::time::timeout;
use tokio_postgres::error::SqlState;

use super::compare::{check, run_simple, Order, Param, Query, Tally};
use super::{env, ROWS, TEST_TIMEOUT};

/// The whole table, in key order, both protocols: shardgate's view must equal the reference's.
pub async fn assert_same_table(env: &super::Env, what: &str) {
    let mut tally = Tally::default();
    // Columns listed: `*` with ORDER BY is refused (0A000) by design.
    let sql = format!(
        "SELECT {} FROM ev ORDER BY id",
        super::data::COLUMNS.join(", ")
    );
    let q = Query::plain("table", sql, Order::Exact);
    check(&env.pa, &env.pb, &q, &mut tally).await;
    assert!(
        tally.failures.is_empty() && tally.refused() == 0,
        "{what}: {}",
        tally.report("table")
    );
}

/// Keyless UPDATE/DELETE run on every shard: the counts equal the reference's, RETURNING rows
/// equal as multisets, and afterwards both tables are the same.
#[tokio::test]
async fn keyless_writes() {
    timeout(TEST_TIMEOUT, async {
        let env = env(ROWS / 2, false).await;
        let q = |sql: &str| Query::plain("write", sql, Order::Set);
        let writes = vec![
            q("UPDATE ev SET i2 = i2 + 1 WHERE g = 2 AND i2 < 300"),
            q("UPDATE ev SET t = upper(t) WHERE b RETURNING id, t"),
            q("DELETE FROM ev WHERE i2 < -250 RETURNING *"),
            q("DELETE FROM ev WHERE id % 13 = 0"),
            q("UPDATE ev SET n = n * 2, v = 'x''y' WHERE g IS NULL OR g = 5 RETURNING n, v, id"),
            q("UPDATE ev SET b = NOT b"),
            q("DELETE FROM ev WHERE id < -100000000 RETURNING id"),
            Query {
                cat: "write",
                simple: "UPDATE ev SET i8 = 0 WHERE i4 > 50000 RETURNING id, i8".into(),
                ext: "UPDATE ev SET i8 = 0 WHERE i4 > $1 RETURNING id, i8".into(),
                params: vec![Param::I32(50000)],
                order: Order::Set,
            },
            Query {
                cat: "write",
                simple: "DELETE FROM ev WHERE t = '' RETURNING id, t".into(),
                ext: "DELETE FROM ev WHERE t = $1 RETURNING id, t".into(),
                params: vec![Param::Text(String::new())],
                order: Order::Set,
            },
        ];
        let mut tally = Tally::default();
        for w in &writes {
            // Simple then extended, each on both sides: the tables stay in step.
            check(&env.pa, &env.pb, w, &mut tally).await;
        }
        println!("{}", tally.report("keyless writes"));
        assert!(
            tally.failures.is_empty(),
            "{}",
            tally.report("keyless writes")
        );
        assert_eq!(tally.refused(), 0, "{}", tally.report("keyless writes"));
        assert_same_table(&env, "after keyless writes").await;

        // INSERT ... SELECT whose rows stay on their shard (ev2 is keyed by k = ev.id): exact
        // or refused, and the tables stay equal either way.
        let sql = "INSERT INTO ev2 (k, id, note) SELECT id, id, t FROM ev WHERE g = 1";
        let want = run_simple(&env.pb, sql)
            .await
            .expect("reference INSERT SELECT");
        match run_simple(&env.pa, sql).await {
            Ok(got) => assert_eq!(got.count, want.count, "INSERT ... SELECT count"),
            Err(e) if e.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED) => {
                println!("INSERT ... SELECT refused: {}", e.message());
                run_simple(
                    &env.pb,
                    "DELETE FROM ev2 WHERE note IS DISTINCT FROM 'n' || (k / 3)",
                )
                .await
                .expect("undo on the reference");
            }
            Err(e) => panic!("INSERT ... SELECT: {e:?}"),
        }
        let mut t = Tally::default();
        let q = Query::plain(
            "table",
            "SELECT k, id, note FROM ev2 ORDER BY k, id, note",
            Order::Exact,
        );
        check(&env.pa, &env.pb, &q, &mut t).await;
        assert!(
            t.failures.is_empty() && t.refused() == 0,
            "{}",
            t.report("ev2")
        );

        // In a transaction a keyless write either runs everywhere or is refused; ROLLBACK
        // leaves nothing behind on any shard.
        env.pa.batch_execute("BEGIN").await.expect("BEGIN");
        match run_simple(&env.pa, "UPDATE ev SET i4 = 0, t = 'rolled back'").await {
            Ok(a) => {
                let all = run_simple(&env.pb, "SELECT count(*) FROM ev")
                    .await
                    .expect("count");
                let n: u64 = std::str::from_utf8(all.rows[0][0].as_deref().expect("count"))
                    .expect("utf8")
                    .parse()
                    .expect("number");
                assert_eq!(a.count, Some(n), "UPDATE in a transaction");
            }
            Err(e) => {
                assert_eq!(e.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{e:?}");
                println!("keyless UPDATE in a transaction refused: {}", e.message());
            }
        }
        env.pa.batch_execute("ROLLBACK").await.expect("ROLLBACK");
        assert_same_table(&env, "after ROLLBACK").await;
    })
    .await
    .expect("test timed out");
}

/// The shapes the issue lets shardgate refuse: each returns exactly the reference's answer or
/// 0A000 (counted), never anything else.
#[tokio::test]
async fn may_refuse_shapes() {
    timeout(TEST_TIMEOUT, async {
        let env = env(ROWS / 2, false).await;
        let q = |sql: &str, order| Query::plain("may_refuse", sql, order);
        let shapes = vec![
            q(
                "SELECT id, row_number() OVER (ORDER BY id) FROM ev ORDER BY id",
                Order::Exact,
            ),
            q(
                "SELECT g, rank() OVER (PARTITION BY g ORDER BY id) FROM ev",
                Order::Set,
            ),
            q("SELECT count(DISTINCT g) FROM ev", Order::Exact),
            q(
                "SELECT g, count(DISTINCT t) FROM ev GROUP BY g ORDER BY g",
                Order::Exact,
            ),
            q(
                "SELECT string_agg(t, ',' ORDER BY id) FROM ev",
                Order::Exact,
            ),
            q(
                "SELECT array_agg(id ORDER BY id) FROM ev WHERE g = 1",
                Order::Exact,
            ),
            q(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY i4) FROM ev",
                Order::Exact,
            ),
            q(
                "SELECT mode() WITHIN GROUP (ORDER BY g) FROM ev",
                Order::Exact,
            ),
            q(
                "SELECT a.id, b.k FROM ev a JOIN ev2 b ON a.id = b.id ORDER BY 1, 2",
                Order::Exact,
            ),
            q(
                "SELECT count(*) FROM ev a JOIN ev2 b ON a.id = b.k",
                Order::Exact,
            ),
            q(
                "SELECT count(*) FROM (SELECT g FROM ev WHERE b) s",
                Order::Exact,
            ),
            q(
                "SELECT g, count(*) FROM (SELECT * FROM ev) s GROUP BY g ORDER BY g",
                Order::Exact,
            ),
            q(
                "SELECT id FROM ev WHERE id IN (SELECT id FROM ev WHERE g = 1) ORDER BY id",
                Order::Exact,
            ),
            q("SELECT sum(f8), avg(f4) FROM ev", Order::Exact),
            q("SELECT id FROM ev ORDER BY i2 + 1, id", Order::Exact),
            q("SELECT id, t FROM ev ORDER BY lower(t), id", Order::Exact),
            q(
                "SELECT DISTINCT ON (g) g, id FROM ev ORDER BY g, id",
                Order::Exact,
            ),
            q(
                "SELECT g, count(*) FROM ev GROUP BY ROLLUP (g) ORDER BY g",
                Order::Exact,
            ),
            q(
                "SELECT id FROM ev WHERE g = 1 UNION SELECT id FROM ev WHERE g = 2 ORDER BY 1",
                Order::Exact,
            ),
            q(
                "WITH x AS (SELECT id, g FROM ev) SELECT g, count(*) FROM x GROUP BY g ORDER BY g",
                Order::Exact,
            ),
            q(
                "SELECT g, avg(f8) FROM ev GROUP BY g ORDER BY g",
                Order::Exact,
            ),
            q("SELECT stddev(i4), variance(i2) FROM ev", Order::Exact),
            q(
                "SELECT id, t FROM ev ORDER BY t COLLATE \"C\", id",
                Order::Exact,
            ),
            q(
                "SELECT max(tz) FROM ev GROUP BY g HAVING max(tz) > '2000-01-01 00:00:00+00'",
                Order::Set,
            ),
            q(
                "SELECT g, count(*) FROM ev GROUP BY g HAVING count(*) > (SELECT 1) ORDER BY g",
                Order::Exact,
            ),
            q(
                "SELECT id FROM ev ORDER BY id LIMIT (SELECT 5)",
                Order::Exact,
            ),
            q("SELECT count(*) FILTER (WHERE b) FROM ev", Order::Exact),
            q(
                "SELECT g, sum(i4) AS s FROM ev GROUP BY g ORDER BY s, g",
                Order::Exact,
            ),
            q(
                "SELECT i4 % 3 AS m, count(*) FROM ev GROUP BY 1 ORDER BY 1",
                Order::Exact,
            ),
        ];
        let mut tally = Tally::default();
        for s in &shapes {
            check(&env.pa, &env.pb, s, &mut tally).await;
        }
        println!("{}", tally.report("may refuse"));
        assert!(tally.failures.is_empty(), "{}", tally.report("may refuse"));
    })
    .await
    .expect("test timed out");
}

/// GROUP BY naming an output alias: the shards get the alias as a hidden select-list column,
/// which PostgreSQL cannot resolve there (42703) — neither the exact answer nor 0A000.
#[tokio::test]
async fn group_by_output_alias() {
    timeout(TEST_TIMEOUT, async {
        let env = env(ROWS / 4, false).await;
        let mut tally = Tally::default();
        for sql in [
            "SELECT g AS grp, count(*) FROM ev GROUP BY grp ORDER BY grp",
            "SELECT g + 1 AS x, count(*) FROM ev GROUP BY x",
        ] {
            let order = if sql.contains("ORDER") {
                Order::Exact
            } else {
                Order::Set
            };
            check(
                &env.pa,
                &env.pb,
                &Query::plain("alias", sql, order),
                &mut tally,
            )
            .await;
        }
        assert!(
            tally.failures.is_empty(),
            "{}",
            tally.report("GROUP BY alias")
        );
    })
    .await
    .expect("test timed out");
}

/// One prepared statement per side, run with several LIMIT/OFFSET parameter values (NULL
/// included: no limit), and scatters inside an explicit transaction.
#[tokio::test]
async fn prepared_params_and_transactions() {
    timeout(TEST_TIMEOUT, async {
        let env = env(ROWS / 2, false).await;
        let sql = "SELECT id, t, f8 FROM ev WHERE i4 > $3 ORDER BY t DESC, f8 NULLS FIRST, id LIMIT $1 OFFSET $2";
        let (sa, sb) = (
            env.pa.prepare(sql).await.expect("prepare through shardgate"),
            env.pb.prepare(sql).await.expect("prepare reference"),
        );
        let cases: [(Option<i64>, i64, i32); 6] = [
            (Some(10), 0, 0),
            (Some(0), 5, -100),
            (None, 990, 1000),
            (Some(1), 0, i32::MIN),
            (Some(100_000), 3, 0),
            (Some(25), 400, -5000),
        ];
        for (limit, offset, min) in cases {
            let a = env.pa.query(&sa, &[&limit, &offset, &min]).await.expect("shardgate");
            let b = env.pb.query(&sb, &[&limit, &offset, &min]).await.expect("reference");
            let key = |rows: &[tokio_postgres::Row]| -> Vec<(i64, Option<String>, Option<f64>)> {
                rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
            };
            let (ka, kb) = (key(&a), key(&b));
            // f64 NaN != NaN: compare the bits.
            let bits = |v: &[(i64, Option<String>, Option<f64>)]| -> Vec<(i64, Option<String>, Option<u64>)> {
                v.iter().map(|(i, t, f)| (*i, t.clone(), f.map(f64::to_bits))).collect()
            };
            assert_eq!(bits(&ka), bits(&kb), "LIMIT {limit:?} OFFSET {offset} i4 > {min}");
        }

        env.pa.batch_execute("BEGIN").await.expect("BEGIN");
        env.pb.batch_execute("BEGIN").await.expect("BEGIN");
        let mut tally = Tally::default();
        for sql in [
            "SELECT id, d FROM ev ORDER BY d DESC NULLS LAST, id LIMIT 30",
            "SELECT g, count(*), avg(i8) FROM ev GROUP BY g ORDER BY g",
            "SELECT DISTINCT b FROM ev ORDER BY b",
        ] {
            check(&env.pa, &env.pb, &Query::plain("txn", sql, Order::Exact), &mut tally).await;
        }
        env.pa.batch_execute("COMMIT").await.expect("COMMIT");
        env.pb.batch_execute("COMMIT").await.expect("COMMIT");
        assert!(tally.failures.is_empty() && tally.refused() == 0, "{}", tally.report("txn"));
    })
    .await
    .expect("test timed out");
}
