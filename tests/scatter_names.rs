//! What a statement names, end to end: a word equal to a sharded table's name that is only an
//! alias or output name reads nothing (no scatter, no duplicated rows); `UPDATE ONLY` and
//! `DELETE FROM ONLY` are routed and key-move-checked like the plain forms; an outer join that
//! keeps a side every shard holds in full (a reference table, a function) against a sharded
//! table is refused unless a key filter pins it. Answers are compared with one server's.

mod support;

use std::time::Duration;

use support::sharded::{expect_code, int_keys_on, orders_snapshot, shard_of_int, sharded_setup};
use tokio::time::timeout;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Oid;

async fn texts(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn aliases_only_and_outer_joins_match_one_server() {
    timeout(Duration::from_secs(90), async {
        let s = sharded_setup(None).await;
        let (c, d0) = (&s.client, &s.direct[0]);
        c.batch_execute("INSERT INTO countries VALUES ('de', 'D'), ('fr', 'F'), ('it', 'I')")
            .await
            .expect("reference rows on every shard");
        let (a, b) = (int_keys_on(0, 1, 1)[0], int_keys_on(1, 1, 1)[0]);
        for k in [a, b] {
            c.execute("INSERT INTO orders (user_id, note) VALUES ($1, 'fr')", &[&k])
                .await
                .expect("insert");
        }

        // 1. Aliases and output names: the same answer as one server.
        for sql in [
            "SELECT 'one' AS orders",
            "SELECT count(*)::text AS users FROM countries",
            "SELECT code FROM countries AS orders ORDER BY code",
            "SELECT orders.relname::text FROM pg_class AS orders WHERE orders.relname = 'countries'",
            "SELECT x::text FROM generate_series(1, 2) AS users(x)",
        ] {
            assert_eq!(texts(c, sql).await, texts(d0, sql).await, "{sql}");
        }
        // A reference write: one shard's count, as for the plain form (an output name `orders`
        // made it a keyless write of `orders` on every shard, counts summed).
        let n = c
            .execute(
                "UPDATE countries SET name = name WHERE code = 'fr' RETURNING code AS orders",
                &[],
            )
            .await
            .expect("reference update");
        assert_eq!(n, 1);
        // Shaped like asyncpg's type introspection (which names pg_type `t` and `t2`), with a
        // parameter: one server's answer, not one per shard.
        let sql = "SELECT orders.typname::text FROM pg_catalog.pg_type AS orders \
                   LEFT JOIN pg_type users ON users.oid = orders.typelem \
                   WHERE orders.oid = any($1::oid[]) ORDER BY 1";
        let oids: Vec<Oid> = vec![20, 1016];
        let names = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
            rows.iter().map(|r| r.get::<_, String>(0)).collect()
        };
        let via = names(c.query(sql, &[&oids]).await.expect("introspection"));
        assert_eq!(via, ["_int8", "int8"]);
        assert_eq!(via, names(d0.query(sql, &[&oids]).await.expect("direct")));

        // 3. ONLY: routed by its key, and a key move is refused.
        let before = orders_snapshot(&s.direct).await;
        let msg = expect_code(
            c.execute(&format!("UPDATE ONLY orders SET user_id = {b} WHERE user_id = {a}"), &[])
                .await,
            &SqlState::FEATURE_NOT_SUPPORTED,
            "UPDATE ONLY key move",
        );
        assert!(msg.contains("another shard"), "{msg}");
        expect_code(
            c.execute(&format!("UPDATE ONLY orders AS x SET user_id = {b} WHERE x.user_id = {a}"), &[])
                .await,
            &SqlState::FEATURE_NOT_SUPPORTED,
            "UPDATE ONLY with an alias",
        );
        assert_eq!(orders_snapshot(&s.direct).await, before, "nothing moved");
        let n = c
            .execute(&format!("UPDATE ONLY orders SET note = 'it' WHERE user_id = {a}"), &[])
            .await
            .expect("update only");
        assert_eq!(n, 1);
        let n = c
            .execute(&format!("DELETE FROM ONLY orders WHERE user_id = {b}"), &[])
            .await
            .expect("delete only");
        assert_eq!(n, 1);
        let mut want = before.clone();
        want[shard_of_int(a)] = vec![(a, "it".to_owned())];
        want[shard_of_int(b)].clear();
        assert_eq!(orders_snapshot(&s.direct).await, want);
        let n: i64 = c
            .query_one("SELECT count(*) FROM ONLY orders", &[])
            .await
            .expect("scatter only")
            .get(0);
        assert_eq!(n, 1);
        c.execute("INSERT INTO orders (user_id, note) VALUES ($1, 'de')", &[&b])
            .await
            .expect("insert");

        // 2. Outer joins keeping a side every shard holds: refused across shards.
        for sql in [
            "SELECT count(*) FROM countries LEFT JOIN orders ON false",
            "SELECT x FROM generate_series(1, 7) x LEFT JOIN orders o ON o.user_id = x",
            "SELECT count(*) FROM orders RIGHT JOIN countries c ON c.code = orders.note",
            "SELECT count(*) FROM countries c FULL JOIN orders o ON c.code = o.note",
            "DELETE FROM orders WHERE user_id IN \
             (SELECT x FROM generate_series(1, 3) x LEFT JOIN orders o ON o.user_id = x)",
        ] {
            let msg = expect_code(
                c.query(sql, &[]).await,
                &SqlState::FEATURE_NOT_SUPPORTED,
                sql,
            );
            assert!(msg.contains("NULL-extended"), "{sql}: {msg}");
        }
        // A self-join off the key: each shard would pair only its own rows.
        let msg = expect_code(
            c.query(
                "SELECT count(*) FROM orders a JOIN orders b ON a.note = b.note",
                &[],
            )
            .await,
            &SqlState::FEATURE_NOT_SUPPORTED,
            "self-join",
        );
        assert!(msg.contains("more than once"), "{msg}");
        // Pinned by a key filter, one shard answers it exactly.
        let sql = format!(
            "SELECT c.code FROM countries c LEFT JOIN orders o ON o.note = c.code \
             WHERE o.user_id = {a} ORDER BY 1"
        );
        assert_eq!(texts(c, &sql).await, ["it"]);
        // The sharded table on the kept side still scatters: each order once.
        let sql = "SELECT o.note || ':' || coalesce(c.name, '-') FROM orders o \
                   LEFT JOIN countries c ON c.code = o.note ORDER BY 1";
        assert_eq!(texts(c, sql).await, ["de:D", "it:I"]);
    })
    .await
    .expect("bounded");
}
