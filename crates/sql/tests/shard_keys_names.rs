//! Shard-key extraction and the names a statement uses: `ONLY t`, and words that equal a
//! configured table's name without naming that table (aliases, output names, CTE names); and
//! the outer joins that keep a side every shard holds in full.

use shardgate_sql::{analyze, KeyConstraint, KeySource, ShardAnalysis, ShardingSpec};

fn spec() -> ShardingSpec {
    ShardingSpec::new(
        &[
            (None, "t".into(), "id".into()),
            (None, "t2".into(), "id".into()),
            (None, "w".into(), "id".into()),
        ],
        &[(None, "rr".into())],
    )
}

fn run(sql: &str) -> ShardAnalysis {
    let a = analyze(sql.as_bytes(), &spec());
    assert!(a.parsed, "{sql}: not parsed");
    a
}

fn lit(text: &str) -> KeySource {
    KeySource::Literal {
        text: text.into(),
        cast: None,
    }
}

fn values(v: &[&str]) -> Option<KeyConstraint> {
    Some(KeyConstraint::Values(v.iter().map(|t| lit(t)).collect()))
}

#[test]
fn only_names_the_table_after_it() {
    let a = run("UPDATE ONLY w SET id = 1000 WHERE id = 3");
    assert_eq!(a.sharded, ["w"]);
    assert_eq!(a.key, values(&["3"]));
    assert_eq!((a.key_update, a.key_assigned), (Some(lit("1000")), true));
    assert!(a.other.is_empty(), "{:?}", a.other);

    let b = run("UPDATE ONLY w SET id = id + 1");
    assert_eq!((b.key, b.key_assigned), (Some(KeyConstraint::NoKey), true));

    let c = run("DELETE FROM ONLY w WHERE id = 3");
    assert_eq!((c.sharded, c.key), (vec!["w".to_owned()], values(&["3"])));

    let d = run("SELECT * FROM ONLY t WHERE t.id = 5");
    assert_eq!((d.sharded, d.key), (vec!["t".to_owned()], values(&["5"])));

    let e = run("SELECT x.id FROM ONLY rr JOIN t x ON true WHERE x.id = 2");
    assert_eq!(e.reference, ["rr"]);
    assert_eq!(e.key, values(&["2"]));

    // A quoted "only" is a real table name, and `t` its alias.
    let f = run(r#"SELECT 1 FROM "only" t"#);
    assert_eq!(f.other, ["only"]);
    assert!(f.sharded.is_empty(), "{f:?}");
}

#[test]
fn only_forms_sqlparser_cannot_read_are_flagged_unparsed() {
    for sql in [
        "UPDATE ONLY w AS x SET id = 1000 WHERE x.id = 3",
        "UPDATE ONLY public.w SET id = 1000 WHERE id = 3",
        "DELETE FROM ONLY w x WHERE x.id = 3",
    ] {
        let a = analyze(sql.as_bytes(), &spec());
        // Unparsed with a sharded name in it: the router refuses it (no key can be read).
        assert_eq!(
            (a.parsed, a.key),
            (false, Some(KeyConstraint::NoKey)),
            "{sql}"
        );
    }
}

#[test]
fn aliases_and_output_names_equal_to_a_table_name_do_not_read_it() {
    for sql in [
        "SELECT 1 AS t",
        "SELECT 1 t",
        "SELECT count(*) AS w FROM rr",
        "SELECT code FROM rr AS t ORDER BY code",
        "SELECT t.code FROM rr t(code, name) WHERE t.code = 1",
        "SELECT count(*) FROM pg_class AS t WHERE t.relname = 'rr'",
        "UPDATE rr SET name = name WHERE code = 1 RETURNING code AS w",
        "DELETE FROM rr WHERE code = 1 RETURNING code AS t",
        "INSERT INTO rr AS w (code) VALUES (1) ON CONFLICT (code) DO UPDATE SET code = w.code",
        "WITH x(t) AS (SELECT 1) SELECT t FROM x",
        "SELECT v.a FROM (VALUES (1)) AS w(a) JOIN (SELECT 2) AS v(a) ON true",
        "SELECT x FROM generate_series(1, 3) AS t(x)",
        "SELECT (SELECT 1 AS t2) AS t",
        "SELECT sum(code) OVER w FROM rr WINDOW w AS (ORDER BY code)",
    ] {
        let a = run(sql);
        assert!(a.sharded.is_empty(), "{sql}: {a:?}");
        assert_eq!(a.key, None, "{sql}");
    }
}

#[test]
fn a_table_name_the_walk_missed_is_still_seen() {
    // The walk reads the table itself: aliases elsewhere change nothing.
    let a = run("SELECT 1 AS w FROM t WHERE id = 4");
    assert_eq!((a.sharded, a.key), (vec!["t".to_owned()], values(&["4"])));
    let b = run("SELECT x.id AS t FROM t AS x JOIN rr AS t2 ON true WHERE x.id = 1");
    assert_eq!(
        (b.sharded, b.reference),
        (vec!["t".to_owned()], vec!["rr".to_owned()])
    );
    // A reference-table alias does not hide the reference table named elsewhere.
    let c = run("SELECT 1 AS rr FROM t WHERE id = 1 AND EXISTS (SELECT 1 FROM rr)");
    assert_eq!(c.reference, ["rr"]);
    // A subquery the walk does not enter (inside ARRAY(...)) may read `t`: with part of the tree
    // unread, an alias `t` no longer explains the word.
    let d = run("SELECT 1 AS t, ARRAY(SELECT id FROM t) FROM rr");
    assert_eq!(
        (d.sharded, d.key),
        (vec!["t".to_owned()], Some(KeyConstraint::NoKey))
    );
    // Not an alias anywhere: a column or function named like a table still counts.
    let e = run("SELECT t FROM rr");
    assert_eq!(e.sharded, ["t"]);
}

/// asyncpg's type introspection (asyncpg/introspection.py, PostgreSQL 13+) names `pg_type` `t`
/// and `t2`: it reads catalogs only.
#[test]
fn asyncpg_type_introspection_reads_no_sharded_table() {
    let sql = include_str!("data/asyncpg_introspection.sql");
    let a = run(sql);
    assert!(a.sharded.is_empty(), "{a:?}");
    assert!(a.other.iter().any(|o| o == "pg_catalog.pg_type"), "{a:?}");
}

#[test]
fn outer_joins_keeping_a_side_every_shard_holds_are_flagged() {
    for sql in [
        "SELECT count(*) FROM rr LEFT JOIN t ON false",
        "SELECT x FROM generate_series(1, 7) x LEFT JOIN t ON t.id = x WHERE t.id IS NULL",
        "SELECT rr.code, count(*) FROM rr LEFT OUTER JOIN t ON rr.code = t.id GROUP BY 1",
        "SELECT * FROM rr FULL JOIN t ON rr.code = t.id",
        "SELECT * FROM t RIGHT JOIN rr ON rr.code = t.id",
        "SELECT * FROM t FULL OUTER JOIN rr ON rr.code = t.id",
        "SELECT * FROM (VALUES (1)) v(a) LEFT JOIN t ON t.id = v.a",
        "SELECT * FROM pg_class c NATURAL LEFT JOIN t",
        "SELECT * FROM rr LEFT JOIN (t JOIN t2 ON t.id = t2.id) ON true",
        "SELECT * FROM (rr LEFT JOIN t ON true) JOIN t2 ON t2.id = t.id",
        "SELECT * FROM rr LEFT JOIN t ON rr.code = t.id WHERE rr.code = 1",
        "UPDATE w SET id = id FROM rr LEFT JOIN t ON rr.code = t.id WHERE w.id = t.id",
        "SELECT * FROM rr WHERE EXISTS (SELECT 1 FROM rr x LEFT JOIN t ON true)",
    ] {
        let a = run(sql);
        assert!(a.outer_join_of_copies, "{sql}: {a:?}");
    }
    for sql in [
        "SELECT * FROM t LEFT JOIN rr ON rr.code = t.id",
        "SELECT * FROM rr RIGHT JOIN t ON rr.code = t.id",
        "SELECT * FROM rr JOIN t ON rr.code = t.id",
        "SELECT * FROM rr, t",
        "SELECT * FROM t LEFT JOIN t2 ON t.id = t2.id",
        "SELECT * FROM t JOIN rr ON true LEFT JOIN t2 ON t.id = t2.id",
        "SELECT * FROM rr LEFT JOIN pg_class ON true",
    ] {
        let a = run(sql);
        assert!(!a.outer_join_of_copies, "{sql}: {a:?}");
    }
    // A key filter on the NULL-extended side drops the NULL-extended rows: the key still pins.
    let b = run("SELECT * FROM rr LEFT JOIN t ON rr.code = t.id WHERE t.id IN (1, 3)");
    assert_eq!(b.key, values(&["1", "3"]));
    let c = run("SELECT * FROM rr LEFT JOIN t ON rr.code = t.id AND t.id = 1");
    assert_eq!(c.key, Some(KeyConstraint::NoKey));
    let d = run("SELECT * FROM rr LEFT JOIN t ON rr.code = t.id WHERE t.id = 1 OR t.id IS NULL");
    assert_eq!(d.key, Some(KeyConstraint::NoKey));
}
