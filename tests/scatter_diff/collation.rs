//! Text under a collation the merge cannot reproduce (it compares bytes, as "C" does): a
//! column with its own ICU collation, or one typed by a domain that has one, and `COLLATE`
//! inside an aggregate's argument. Wherever the merge would compare such text (ORDER BY,
//! GROUP BY, DISTINCT, min/max, HAVING) shardgate refuses with 0A000 and a hint; where it only
//! passes values through, or the text is compared under "C", the answer is the reference's.

use tokio::time::timeout;

use super::compare::{run_simple, Order};
use super::mended::{all_exact, refused};
use super::{env, ROWS, TEST_TIMEOUT};

/// The ICU root collation: "a" < "B" < "b", where bytes put "B" first.
const ICU: &str = "und-x-icu";

#[tokio::test]
async fn non_c_collations_are_refused_where_the_merge_compares() {
    timeout(TEST_TIMEOUT, async {
        let env = env(ROWS / 4, false).await;
        let icu = run_simple(
            &env.pb,
            &format!("SELECT collname FROM pg_collation WHERE collname = '{ICU}'"),
        )
        .await
        .expect("pg_collation");
        assert_eq!(icu.rows.len(), 1, "PostgreSQL without ICU: no {ICU}");
        // A scatter before the schema change fills shardgate's catalog cache: the ALTER
        // through shardgate must clear it.
        all_exact(&env, "before", &[("SELECT min(t) FROM ev", Order::Exact)]).await;
        let ddl = format!(
            "CREATE DOMAIN ictext AS text COLLATE \"{ICU}\"; \
             ALTER TABLE ev ADD COLUMN tc text COLLATE \"{ICU}\", ADD COLUMN td ictext"
        );
        // Rows spread over both shards whose byte order differs from ICU's.
        let rows: Vec<String> = ["a", "B", "b", "A", "é", "E", "z", "Z"]
            .iter()
            .enumerate()
            .map(|(i, t)| format!("({}, 7, '{t}')", 20_000_001 + i))
            .collect();
        let insert = format!("INSERT INTO ev (id, g, t) VALUES {}", rows.join(", "));
        for c in [&env.pa, &env.pb] {
            c.batch_execute(&ddl).await.expect("collated columns");
            run_simple(c, &insert).await.expect("insert");
            run_simple(c, "UPDATE ev SET tc = t, td = t")
                .await
                .expect("copy t");
        }
        let hint = "shard-key filter";
        let column = |c: &str| format!("column or domain \"{c}\" has a collation other than \"C\"");
        for (sql, col) in [
            ("SELECT tc, count(*) FROM ev GROUP BY tc ORDER BY tc", "tc"),
            ("SELECT tc, count(*) FROM ev GROUP BY tc", "tc"),
            (
                "SELECT id, tc FROM ev WHERE id IN (20000001, 20000002, 20000003) ORDER BY tc",
                "tc",
            ),
            ("SELECT id, e.tc FROM ev e ORDER BY 2 DESC, id LIMIT 5", "tc"),
            ("SELECT DISTINCT tc FROM ev", "tc"),
            ("SELECT g, min(tc), max(t) FROM ev GROUP BY g ORDER BY g", "tc"),
            ("SELECT g FROM ev GROUP BY g HAVING max(\"tc\") > 'a'", "tc"),
            ("SELECT max(td) FROM ev", "td"),
            ("SELECT id, td FROM ev ORDER BY td, id LIMIT 5", "td"),
            ("SELECT g, max(t::ictext) FROM ev GROUP BY g", "ictext"),
        ] {
            refused(&env, sql, &column(col), hint).await;
        }
        let explicit = "GROUP BY, DISTINCT, min/max or HAVING under a collation other than \"C\"";
        for sql in [
            "SELECT g, max(t COLLATE \"und-x-icu\") FROM ev GROUP BY g ORDER BY g",
            "SELECT min(t COLLATE \"und-x-icu\") FROM ev",
            "SELECT DISTINCT t COLLATE \"und-x-icu\" FROM ev",
        ] {
            refused(&env, sql, explicit, hint).await;
        }
        refused(
            &env,
            "SELECT id, t FROM ev ORDER BY t COLLATE \"und-x-icu\", id",
            "ORDER BY under a collation other than \"C\"",
            hint,
        )
        .await;
        // Passed through, compared under "C", on one shard, or text without a collation of
        // its own: exact.
        all_exact(
            &env,
            "collated text that merges",
            &[
                ("SELECT id, tc, td FROM ev WHERE g = 7", Order::Set),
                ("SELECT count(*) FROM ev WHERE tc > 'a'", Order::Exact),
                (
                    "SELECT id, tc FROM ev WHERE g = 7 ORDER BY tc COLLATE \"C\", id",
                    Order::Exact,
                ),
                (
                    "SELECT g, max(tc COLLATE \"C\"), min(td COLLATE \"POSIX\") FROM ev GROUP BY g ORDER BY g",
                    Order::Exact,
                ),
                ("SELECT tc, id FROM ev WHERE id = 20000002 ORDER BY tc", Order::Exact),
                ("SELECT g, max(t) FROM ev GROUP BY g ORDER BY g", Order::Exact),
                ("SELECT id, t FROM ev WHERE g = 7 ORDER BY t, id", Order::Exact),
            ],
        )
        .await;
    })
    .await
    .expect("test timed out");
}
