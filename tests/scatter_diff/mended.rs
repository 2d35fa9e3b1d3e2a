//! Shapes a black-box hunt found wrong through a scatter, which must now be exactly the
//! reference's answer (column names included) in both protocols, or a clear refusal.

use tokio::time::timeout;

use super::compare::{check, run_ext, run_simple, Order, Param, Query, RunError, Tally};
use super::{env, Env, ROWS, TEST_TIMEOUT};

/// Runs every query both ways; each must be exact (never refused, never another error).
pub(super) async fn all_exact(env: &Env, title: &str, sqls: &[(&str, Order)]) {
    let mut tally = Tally::default();
    for (sql, order) in sqls {
        let q = Query::plain("mended", *sql, order.clone());
        let outcomes = check(&env.pa, &env.pb, &q, &mut tally).await;
        if outcomes.contains(&false) {
            tally.failures.push(format!("refused: {sql}"));
        }
    }
    println!("{}", tally.report(title));
    assert!(tally.failures.is_empty(), "{}", tally.report(title));
    assert_eq!(tally.refused(), 0, "{}", tally.report(title));
}

/// `sql` runs on the reference server, and shardgate refuses it in both protocols with
/// 0A000, a message containing `message` and a hint containing `hint`.
pub(super) async fn refused(env: &Env, sql: &str, message: &str, hint: &str) {
    run_simple(&env.pb, sql)
        .await
        .unwrap_or_else(|e| panic!("reference failed {sql}: {e:?}"));
    for (proto, got) in [
        ("simple", run_simple(&env.pa, sql).await),
        ("extended", run_ext(&env.pa, sql, &[]).await),
    ] {
        let db = match &got {
            Err(RunError::Db(e)) => e.as_db_error(),
            _ => None,
        };
        let Some(db) = db else {
            panic!("[{proto}] {sql}: expected a 0A000 refusal, got {got:?}");
        };
        assert_eq!(db.code().code(), "0A000", "[{proto}] {sql}: {db:?}");
        assert!(db.message().contains(message), "[{proto}] {sql}: {db:?}");
        assert!(
            db.hint().is_some_and(|h| h.contains(hint)),
            "[{proto}] {sql}: {db:?}"
        );
    }
}

/// An avg's column keeps the client's name: its alias (as PostgreSQL folds, unquotes and
/// truncates it), else `avg`, even when the alias is `sum`.
#[tokio::test]
async fn avg_keeps_its_alias() {
    timeout(TEST_TIMEOUT, async {
        let env = env(ROWS / 4, false).await;
        let long = format!("SELECT avg(i4) AS {} FROM ev", "x".repeat(70));
        all_exact(
            &env,
            "avg alias",
            &[
                ("SELECT avg(n) AS total FROM ev", Order::Exact),
                ("SELECT AVG(i2) FROM ev", Order::Exact),
                ("SELECT avg(i8) total, avg(i4) FROM ev", Order::Exact),
                (
                    "SELECT avg(i4) AS \"Mean Of I4\", count(*) AS n FROM ev",
                    Order::Exact,
                ),
                (
                    "SELECT g, avg(i4) AS mean FROM ev GROUP BY g ORDER BY g",
                    Order::Exact,
                ),
                (
                    "SELECT g, avg(i8) AS sum FROM ev GROUP BY g ORDER BY g",
                    Order::Exact,
                ),
                (
                    "SELECT g, avg(n) AS \"AVG\" FROM ev GROUP BY g ORDER BY \"AVG\" NULLS LAST, g",
                    Order::Exact,
                ),
                ("SELECT avg(i4) AS m FROM ev WHERE id = 1", Order::Exact),
                (&long, Order::Exact),
            ],
        )
        .await;
    })
    .await
    .expect("test timed out");
}

/// A select-list item that reads no column next to an aggregate takes its value from any
/// shard's row of the group; one that reads a column but is not a group key, or calls a
/// function that might return a set, is refused (never an internal error).
#[tokio::test]
async fn constant_next_to_aggregate() {
    timeout(TEST_TIMEOUT, async {
        let env = env(ROWS / 4, false).await;
        all_exact(
            &env,
            "constant next to an aggregate",
            &[
                ("SELECT 1 AS one, count(*) FROM ev", Order::Exact),
                ("SELECT 'x', g, count(*) FROM ev GROUP BY g ORDER BY g", Order::Exact),
                ("SELECT 'x' AS k, g, count(*) FROM ev GROUP BY g ORDER BY k, g", Order::Exact),
                ("SELECT now() IS NOT NULL, count(*) FROM ev", Order::Exact),
                (
                    "SELECT 2 + 3 AS five, max(i4), 'a'::text || 'b', lower('Q') FROM ev WHERE false",
                    Order::Exact,
                ),
                ("SELECT 1 AS one, count(*) FROM ev WHERE false GROUP BY g", Order::Exact),
                (
                    "SELECT g, -1.5 AS c, sum(i4) FROM ev GROUP BY g HAVING count(*) > 1 ORDER BY g",
                    Order::Exact,
                ),
                ("SELECT DISTINCT 7 AS seven, g FROM ev GROUP BY g", Order::Set),
                ("SELECT DISTINCT 'k', count(*) FROM ev GROUP BY g", Order::Set),
            ],
        )
        .await;
        let mut tally = Tally::default();
        let q = Query {
            cat: "mended",
            simple: "SELECT 42::int AS p, count(*) FROM ev".into(),
            ext: "SELECT $1::int AS p, count(*) FROM ev".into(),
            params: vec![Param::I32(42)],
            order: Order::Exact,
        };
        let outcomes = check(&env.pa, &env.pb, &q, &mut tally).await;
        assert_eq!(outcomes, [true, true], "{}", tally.report("parameter"));
        let not_key = "neither an aggregate nor a GROUP BY key";
        let hint = "to GROUP BY";
        refused(&env, "SELECT id, t, count(*) FROM ev GROUP BY id", not_key, hint).await;
        refused(&env, "SELECT g + 1, count(*) FROM ev GROUP BY g", not_key, hint).await;
        refused(&env, "SELECT generate_series(1, 2) AS s, count(*) FROM ev", not_key, hint).await;
    })
    .await
    .expect("test timed out");
}

/// HAVING compares a constant as PostgreSQL's operator resolution would: a number against a
/// `real` value compares in float8 (`0.1::real > 0.1` is true), an integer against any integer
/// type exactly, a fraction against an integer in numeric; a quoted string takes the column's
/// type. A number float8 cannot hold is refused, not read as infinity.
#[tokio::test]
async fn having_constants_compare_like_postgresql() {
    timeout(TEST_TIMEOUT, async {
        let env = env(ROWS / 4, false).await;
        // Rows on both shards whose real values are not exact in binary.
        let rows: Vec<String> = ["0.1", "0.1", "0.3", "1", "2.5", "0.1"]
            .iter()
            .enumerate()
            .map(|(i, f4)| format!("({}, 101, {f4}, {})", 10_000_001 + i, 30_000 + i))
            .collect();
        let insert = format!("INSERT INTO ev (id, g, f4, i2) VALUES {}", rows.join(", "));
        for c in [&env.pa, &env.pb] {
            run_simple(c, &insert).await.expect("insert");
        }
        all_exact(
            &env,
            "HAVING constants",
            &[
                ("SELECT 0.1::real > 0.1 AS pg_says", Order::Exact),
                (
                    "SELECT g, max(f4) FROM ev WHERE f4 = 0.1::real GROUP BY g HAVING max(f4) > 0.1 ORDER BY g",
                    Order::Exact,
                ),
                ("SELECT f4, count(*) FROM ev GROUP BY f4 HAVING f4 = 0.1", Order::Set),
                ("SELECT f4, count(*) FROM ev GROUP BY f4 HAVING f4 = '0.1'", Order::Set),
                (
                    "SELECT count(*) FROM ev WHERE f4 = 0.1::real HAVING max(f4) <= 0.1",
                    Order::Exact,
                ),
                (
                    "SELECT f4, count(*) FROM ev WHERE g = 101 GROUP BY f4 HAVING f4 >= 0.3 AND f4 < 2.5 OR f4 = 1 ORDER BY f4",
                    Order::Exact,
                ),
                (
                    "SELECT g, min(f4) FROM ev GROUP BY g HAVING min(f4) < -1e-3 ORDER BY g",
                    Order::Exact,
                ),
                ("SELECT g, max(f8) FROM ev GROUP BY g HAVING max(f8) > 0.1 ORDER BY g", Order::Exact),
                ("SELECT i2, count(*) FROM ev GROUP BY i2 HAVING i2 < 40000 ORDER BY i2", Order::Exact),
                ("SELECT i2, count(*) FROM ev GROUP BY i2 HAVING i2 > 30001.5 ORDER BY i2", Order::Exact),
                ("SELECT g, count(*) FROM ev GROUP BY g HAVING g > 2.5 ORDER BY g", Order::Exact),
                (
                    "SELECT g, max(i8) FROM ev GROUP BY g HAVING max(i8) < 99999999999999999999 ORDER BY g",
                    Order::Exact,
                ),
            ],
        )
        .await;
        // The server fails these (out of float8's range); shardgate refuses them.
        for sql in [
            "SELECT g, max(f8) FROM ev GROUP BY g HAVING max(f8) > 1e400",
            "SELECT g, max(f4) FROM ev GROUP BY g HAVING max(f4) > 1e-400",
        ] {
            let err = run_simple(&env.pb, sql).await.expect_err("reference fails");
            assert_eq!(err.code().map(|c| c.code()), Some("22003"), "{sql}");
            let err = run_simple(&env.pa, sql).await.expect_err("refused");
            assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{sql}: {}", err.message());
        }
    })
    .await
    .expect("test timed out");
}

/// With a DateStyle other than ISO, text dates and timestamps cannot be ordered or compared by
/// the merge: ORDER BY, GROUP BY, DISTINCT, min/max over them are refused with 0A000 and a hint
/// (never XX000), while binary results (extended protocol here) and plain concatenation still
/// merge exactly; back in an ISO DateStyle (with DMY input) the same text queries merge.
#[tokio::test]
async fn non_iso_datestyle_is_refused_with_a_hint() {
    timeout(TEST_TIMEOUT, async {
        let env = env(ROWS / 4, false).await;
        for c in [&env.pa, &env.pb] {
            c.batch_execute("SET DateStyle = 'SQL, DMY'")
                .await
                .expect("DateStyle");
        }
        let merged = [
            (
                "SELECT d, count(*) FROM ev GROUP BY d ORDER BY d",
                Order::Exact,
            ),
            (
                "SELECT id, ts FROM ev ORDER BY ts, id LIMIT 20",
                Order::Exact,
            ),
            ("SELECT min(d), max(ts), min(tz) FROM ev", Order::Exact),
            ("SELECT DISTINCT d FROM ev", Order::Set),
            (
                "SELECT g, max(ts) FROM ev GROUP BY g ORDER BY g",
                Order::Exact,
            ),
        ];
        let mut tally = Tally::default();
        for (sql, order) in &merged {
            let q = Query::plain("datestyle", *sql, order.clone());
            let outcomes = check(&env.pa, &env.pb, &q, &mut tally).await;
            // Text (simple protocol) refused, binary (extended) exact.
            assert_eq!(
                outcomes,
                [false, true],
                "{sql}: {}",
                tally.report("DateStyle")
            );
            let err = run_simple(&env.pa, sql).await.expect_err("refused");
            let RunError::Db(e) = &err else {
                panic!("{sql}: {err:?}");
            };
            let db = e.as_db_error().expect("a server error");
            assert_eq!(db.code().code(), "0A000", "{sql}: {db:?}");
            assert!(
                db.message().contains("DateStyle is not ISO"),
                "{sql}: {db:?}"
            );
            assert!(
                db.hint()
                    .is_some_and(|h| h.contains("SET DateStyle = 'ISO, DMY'")),
                "{sql}: {db:?}"
            );
        }
        assert!(tally.failures.is_empty(), "{}", tally.report("DateStyle"));
        all_exact(
            &env,
            "DateStyle SQL, concatenation",
            &[("SELECT id, d, ts, tz FROM ev WHERE g = 1", Order::Set)],
        )
        .await;
        for c in [&env.pa, &env.pb] {
            c.batch_execute("SET DateStyle = 'ISO, DMY'")
                .await
                .expect("DateStyle");
        }
        all_exact(&env, "DateStyle ISO, DMY", &merged).await;
    })
    .await
    .expect("test timed out");
}
