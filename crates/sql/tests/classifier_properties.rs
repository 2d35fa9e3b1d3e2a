//! Property: however statements are mixed, spaced, commented and cased, a message holding any
//! write is never classified as a read (and one holding only reads stays a read).

use proptest::prelude::*;
use shardgate_sql::Classifier;

const WRITES: &[&str] = &[
    "INSERT INTO t VALUES (1, 'a;b')",
    "UPDATE t SET a = a + 1 WHERE id = $1",
    "DELETE FROM t WHERE id IN (SELECT id FROM u)",
    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a",
    "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
    "SELECT * FROM t FOR UPDATE",
    "SELECT * FROM t WHERE id = 1 FOR NO KEY UPDATE",
    "SELECT * INTO new_t FROM t",
    "SELECT INTO new_t FROM t",
    "SELECT nextval('s')",
    "SELECT pg_catalog.setval('s', 10)",
    "SELECT pg_advisory_lock(1)",
    "CREATE TEMP TABLE tt (a int)",
    "CREATE TABLE t2 (a int)",
    "DROP TABLE t2",
    "VACUUM t",
    "REINDEX TABLE t",
    "REFRESH MATERIALIZED VIEW mv",
    "CLUSTER t",
    "DO $$ BEGIN INSERT INTO t VALUES (1); END $$",
    "COPY t FROM STDIN",
    "LOCK TABLE t",
    "CALL p()",
    "NOTIFY c",
    "GRANT SELECT ON t TO u",
    "SET search_path = app",
    "EXPLAIN ANALYZE UPDATE t SET a = 1",
    "PREPARE TRANSACTION 'x'",
    "FETCH ALL FROM c",
    "SELECT 0x1F, nextval('s')",
];

const READS: &[&str] = &[
    "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
    "SELECT 'INSERT INTO t; nextval(1)' AS s",
    "SELECT a, count(*) FROM t GROUP BY a ORDER BY 2 DESC LIMIT 10",
    "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
    "VALUES (1), (2)",
    "TABLE t",
    "SHOW search_path",
    "EXPLAIN SELECT * FROM t WHERE a = $1",
    "SELECT * FROM t JOIN u USING (id) WHERE u.b IS NOT NULL",
    "BEGIN",
    "COMMIT",
    "SELECT $$ DELETE FROM t $$",
];

/// One statement with its letters' case flipped at random (string contents included: the
/// statements above stay reads or writes either way) and its spaces replaced by whitespace or
/// comments.
fn mangle(stmt: &'static str) -> impl Strategy<Value = String> {
    let n = stmt.len();
    (
        proptest::collection::vec(any::<bool>(), n),
        proptest::collection::vec(0u8..5, n),
    )
        .prop_map(move |(upper, spaces)| {
            let mut out = String::new();
            for ((c, up), sp) in stmt.chars().zip(upper).zip(spaces) {
                match c {
                    ' ' => out.push_str(match sp {
                        0 => " ",
                        1 => "\n\t ",
                        2 => " /* a comment; with \" quote */ ",
                        3 => " -- line comment;\n",
                        _ => "  ",
                    }),
                    c if up => out.push(c.to_ascii_uppercase()),
                    c => out.push(c.to_ascii_lowercase()),
                }
            }
            out
        })
}

fn message(pool: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(proptest::sample::select(pool).prop_flat_map(mangle), 1..5)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn any_write_makes_the_message_a_write(
        reads in message(READS),
        writes in message(WRITES),
        at in any::<proptest::sample::Index>(),
        trailing_semicolon in any::<bool>(),
    ) {
        let mut all = reads;
        let pos = at.index(all.len() + 1);
        for (i, w) in writes.into_iter().enumerate() {
            all.insert((pos + i).min(all.len()), w);
        }
        let mut sql = all.join(";\n");
        if trailing_semicolon {
            sql.push(';');
        }
        let c = Classifier::new(0, &[]).classify_uncached(sql.as_bytes());
        prop_assert!(!c.is_read(), "{sql:?} classified as a read: {c:?}");
    }

    #[test]
    fn only_reads_stay_a_read(reads in message(READS)) {
        let sql = reads.join("; ");
        let c = Classifier::new(0, &[]).classify_uncached(sql.as_bytes());
        prop_assert!(c.is_read(), "{sql:?} classified as a write: {c:?}");
    }
}
