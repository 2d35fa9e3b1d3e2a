//! Shapes a black-box hunt found wrong through a scatter, which must now be exactly the
//! reference's answer (column names included) in both protocols, or a clear refusal.

use tokio::time::timeout;

use super::compare::{check, Order, Query, Tally};
use super::{env, Env, ROWS, TEST_TIMEOUT};

/// Runs every query both ways; each must be exact (never refused, never another error).
async fn all_exact(env: &Env, title: &str, sqls: &[(&str, Order)]) {
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
