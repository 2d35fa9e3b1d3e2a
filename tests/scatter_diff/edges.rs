//! Hand-picked edge shapes the templates do not produce: LIMIT ALL/NULL, FETCH ... WITH TIES,
//! HAVING without GROUP BY, aggregates over expressions and empty sets, aliases that shadow
//! columns, quoted and upper-case names, comments, several statements in one Query. Each
//! returns exactly the reference's answer or 0A000.

use tokio::time::timeout;

use super::compare::{check, Order, Param, Query, Tally};
use super::{env, ROWS, TEST_TIMEOUT};

#[tokio::test]
async fn edge_shapes() {
    timeout(TEST_TIMEOUT, async {
        let env = env(ROWS / 2, false).await;
        let q = |sql: &str, order| Query::plain("edge", sql, order);
        let mut shapes = vec![
            q(
                "SELECT id, t FROM ev ORDER BY t, id LIMIT ALL",
                Order::Exact,
            ),
            q(
                "SELECT id, t FROM ev ORDER BY t, id LIMIT NULL OFFSET 3",
                Order::Exact,
            ),
            q(
                "SELECT id FROM ev ORDER BY id OFFSET 0 ROWS FETCH NEXT 3 ROWS ONLY",
                Order::Exact,
            ),
            q(
                "SELECT id FROM ev ORDER BY id DESC FETCH FIRST ROW ONLY",
                Order::Exact,
            ),
            q(
                "SELECT g FROM ev ORDER BY g FETCH FIRST 3 ROWS WITH TIES",
                Order::Exact,
            ),
            q("SELECT count(*) FROM ev HAVING count(*) > 0", Order::Exact),
            q("SELECT count(*) FROM ev HAVING count(*) < 0", Order::Exact),
            q(
                "SELECT 1 AS one, 'x' AS two FROM ev WHERE g = 2",
                Order::Set,
            ),
            q(
                "SELECT id::text AS id FROM ev ORDER BY id LIMIT 40",
                Order::Exact,
            ),
            q(
                "SELECT -id AS i4 FROM ev ORDER BY i4 LIMIT 40",
                Order::Exact,
            ),
            q(
                "SELECT g, count(*) FROM ev GROUP BY g ORDER BY count(*) DESC, g",
                Order::Exact,
            ),
            q(
                "SELECT g FROM ev GROUP BY g ORDER BY max(i4), g",
                Order::Exact,
            ),
            q(
                "SELECT g, avg(i4) FROM ev GROUP BY g ORDER BY avg(i4) DESC NULLS LAST, g",
                Order::Exact,
            ),
            q("SELECT sum(i4) FROM ev GROUP BY g", Order::Set),
            q(
                "SELECT DISTINCT g FROM ev ORDER BY g LIMIT 3 OFFSET 1",
                Order::Exact,
            ),
            q(
                "SELECT bool_and(b), count(*), sum(i8), max(t) FROM ev WHERE false",
                Order::Exact,
            ),
            q("SELECT max(id) FROM ev LIMIT 0", Order::Exact),
            q("SELECT count(*) FROM ev OFFSET 1", Order::Exact),
            q("SELECT every(b), bool_or(NOT b) FROM ev", Order::Exact),
            q(
                "SELECT sum(i4 * 1.0), avg(i2::numeric(10,2)), avg(n) FROM ev WHERE n <> 'NaN'",
                Order::Exact,
            ),
            q(
                "SELECT sum(i8) FROM ev WHERE i8 IN (9223372036854775807, -9223372036854775808)",
                Order::Exact,
            ),
            q("SELECT min(i2 + 0.5), max(length(t)) FROM ev", Order::Exact),
            q(
                "SELECT count(*) AS \"Count\", g AS \"G\" FROM ev GROUP BY g ORDER BY \"G\"",
                Order::Exact,
            ),
            q("select ID, T from EV order by T, id", Order::Exact),
            q("SELECT id, t FROM public.ev ORDER BY 2, 1", Order::Exact),
            q(
                "SELECT e.id, e.t FROM ev e ORDER BY e.t DESC, e.id",
                Order::Exact,
            ),
            q(
                "SELECT /* c */ id FROM ev -- trailing\n ORDER BY id LIMIT 9",
                Order::Exact,
            ),
            q("SELECT id FROM ev ORDER BY id LIMIT 5;", Order::Exact),
            q("SELECT t, v FROM ev ORDER BY t || v, id", Order::Exact),
            q(
                "SELECT id, i2 FROM ev ORDER BY abs(i2), id LIMIT 20",
                Order::Exact,
            ),
            q(
                "SELECT id, ts FROM ev ORDER BY ts::date, id LIMIT 20",
                Order::Exact,
            ),
            q(
                "SELECT i2 % 3 AS m, count(*), sum(i2) FROM ev GROUP BY 1 ORDER BY 1",
                Order::Exact,
            ),
            q(
                "SELECT g, count(*) FROM ev GROUP BY g HAVING g IS NULL OR g > 4",
                Order::Set,
            ),
            q(
                "SELECT b, count(*) FROM ev GROUP BY b HAVING b = true",
                Order::Exact,
            ),
            q(
                "SELECT d, count(*) FROM ev GROUP BY d HAVING d >= '2000-01-01' ORDER BY d",
                Order::Exact,
            ),
            q(
                "SELECT u, count(*) FROM ev GROUP BY u HAVING count(*) > 1 ORDER BY u",
                Order::Exact,
            ),
            q(
                "SELECT f4, count(*) FROM ev GROUP BY f4 ORDER BY f4 DESC",
                Order::Exact,
            ),
            q(
                "SELECT tz, count(*) FROM ev GROUP BY tz ORDER BY tz NULLS FIRST LIMIT 10",
                Order::Exact,
            ),
            q("SELECT count(*), count(DISTINCT 1) FROM ev", Order::Exact),
            q("SELECT id, t FROM ev ORDER BY t USING >, id", Order::Exact),
        ];
        shapes.push(Query {
            cat: "edge",
            simple: "SELECT count(*), min(id) FROM ev WHERE t = 'a' OR v = 'B'".into(),
            ext: "SELECT count(*), min(id) FROM ev WHERE t = $1 OR v = $2".into(),
            params: vec![Param::Text("a".into()), Param::Text("B".into())],
            order: Order::Exact,
        });
        shapes.push(Query {
            cat: "edge",
            simple: "SELECT g, count(*) FROM ev WHERE i4 > 10 GROUP BY g ORDER BY g LIMIT 4".into(),
            ext: "SELECT g, count(*) FROM ev WHERE i4 > $2 GROUP BY g ORDER BY g LIMIT $1".into(),
            params: vec![Param::I64(4), Param::I32(10)],
            order: Order::Exact,
        });
        // Two statements in one Query (simple protocol only).
        shapes.push(Query {
            ext: String::new(),
            ..q(
                "SELECT count(*) FROM ev; SELECT max(id), min(t) FROM ev",
                Order::Exact,
            )
        });
        let mut tally = Tally::default();
        for s in &shapes {
            check(&env.pa, &env.pb, s, &mut tally).await;
        }
        println!("{}", tally.report("edge shapes"));
        assert!(tally.failures.is_empty(), "{}", tally.report("edge shapes"));
    })
    .await
    .expect("test timed out");
}
