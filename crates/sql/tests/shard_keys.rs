//! Shard-key extraction: each rule of the brief on small statements, byte ranges against the
//! original text, proptests that `analyze` never panics, and a pass over PostgreSQL's regression
//! corpus checking that every reported range is in bounds and on a char boundary.

mod common;

use proptest::prelude::*;
use shardgate_sql::{analyze, KeyConstraint, KeySource, ShardAnalysis, ShardingSpec};

fn spec() -> ShardingSpec {
    ShardingSpec::new(
        &[
            (None, "orders".into(), "user_id".into()),
            (None, "users".into(), "id".into()),
            (Some("app".into()), "events".into(), "user_id".into()),
            (None, "Quoted".into(), "Key".into()),
        ],
        &[
            (None, "countries".into()),
            (Some("app".into()), "plans".into()),
        ],
    )
}

fn run(sql: &str) -> ShardAnalysis {
    analyze(sql.as_bytes(), &spec())
}

fn lit(text: &str) -> KeySource {
    KeySource::Literal {
        text: text.into(),
        cast: None,
    }
}

fn cast(text: &str, ty: &str) -> KeySource {
    KeySource::Literal {
        text: text.into(),
        cast: Some(ty.into()),
    }
}

fn values(v: &[KeySource]) -> Option<KeyConstraint> {
    Some(KeyConstraint::Values(v.to_vec()))
}

const NO_KEY: Option<KeyConstraint> = Some(KeyConstraint::NoKey);

#[track_caller]
fn key_is(sql: &str, want: Option<KeyConstraint>) {
    let a = run(sql);
    assert!(a.parsed, "{sql}: not parsed");
    assert_eq!(a.key, want, "{sql}: {a:?}");
}

#[test]
fn where_equality_in_its_forms() {
    let one = values(&[lit("42")]);
    for sql in [
        "SELECT * FROM orders WHERE user_id = 42",
        "SELECT * FROM orders WHERE 42 = user_id",
        "SELECT * FROM orders o WHERE o.user_id = 42 AND o.total > 10",
        "SELECT * FROM orders AS o WHERE (o.status = 'x') AND ((o.user_id) = (42))",
        "SELECT * FROM orders WHERE orders.user_id = 42",
        "SELECT * FROM app.events WHERE app.events.user_id = 42 AND kind = 'a'",
        "SELECT * FROM events WHERE app.events.user_id = 42",
        "SELECT * FROM \"Quoted\" q WHERE q.\"Key\" = 42",
        "SELECT * FROM ORDERS WHERE USER_ID = 42",
    ] {
        key_is(sql, one.clone());
    }
    key_is(
        "SELECT * FROM orders WHERE user_id = -7",
        values(&[lit("-7")]),
    );
    key_is(
        "SELECT * FROM orders WHERE user_id = $3",
        values(&[KeySource::Param(3)]),
    );
    key_is(
        "SELECT 1 FROM orders WHERE user_id = '42'::bigint",
        values(&[cast("42", "bigint")]),
    );
    key_is(
        "SELECT 1 FROM orders WHERE user_id = CAST($1 AS int)",
        values(&[KeySource::Param(1)]),
    );
    key_is(
        "SELECT 1 FROM orders WHERE user_id = $2::uuid",
        values(&[KeySource::Param(2)]),
    );
    key_is(
        "SELECT 1 FROM orders WHERE user_id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::UUID",
        values(&[cast("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "uuid")]),
    );
    key_is(
        "SELECT 1 FROM orders WHERE user_id = bigint '7'",
        values(&[cast("7", "bigint")]),
    );
    // A quoted key column is not the unquoted one.
    key_is("SELECT * FROM \"Quoted\" WHERE key = 1", NO_KEY);
}

#[test]
fn strings_are_unescaped() {
    key_is(
        "SELECT 1 FROM orders WHERE user_id = 'it''s'",
        values(&[lit("it's")]),
    );
    key_is(
        "SELECT 1 FROM orders WHERE user_id = E'a\\nb\\''",
        values(&[lit("a\nb'")]),
    );
    key_is(
        "SELECT 1 FROM orders WHERE user_id = 'a\\b'",
        values(&[lit("a\\b")]),
    );
    key_is(
        "SELECT 1 FROM orders WHERE user_id = $$x'y$$",
        values(&[lit("x'y")]),
    );
}

#[test]
fn in_lists_and_ors_give_sets() {
    let set = values(&[lit("1"), lit("2"), lit("3")]);
    key_is(
        "SELECT * FROM orders WHERE user_id IN (1, 2, 3, 2)",
        set.clone(),
    );
    key_is(
        "SELECT * FROM orders WHERE user_id = 1 OR user_id = 2 OR (user_id IN (3))",
        set.clone(),
    );
    key_is(
        "SELECT * FROM orders o WHERE (o.user_id = 1 OR o.user_id = 2 OR 3 = user_id) AND x",
        set,
    );
    key_is(
        "SELECT * FROM orders WHERE user_id IN ($1, $2)",
        values(&[KeySource::Param(1), KeySource::Param(2)]),
    );
    // An IN and an equality together: the intersection.
    key_is(
        "SELECT * FROM orders WHERE user_id IN (1, 2) AND user_id = 2",
        values(&[lit("2")]),
    );
}

#[test]
fn what_is_no_key() {
    for sql in [
        "SELECT * FROM orders",
        "SELECT * FROM orders WHERE user_id > 5",
        "SELECT * FROM orders WHERE user_id BETWEEN 1 AND 2",
        "SELECT * FROM orders WHERE user_id <> 5",
        "SELECT * FROM orders WHERE NOT (user_id = 5)",
        "SELECT * FROM orders WHERE user_id NOT IN (1, 2)",
        "SELECT * FROM orders WHERE user_id = 1 OR total = 2",
        "SELECT * FROM orders WHERE user_id + 1 = 5",
        "SELECT * FROM orders WHERE abs(user_id) = 5",
        "SELECT * FROM orders WHERE user_id = abs(5)",
        "SELECT * FROM orders WHERE user_id = id",
        "SELECT * FROM orders WHERE user_id IN (SELECT id FROM countries)",
        "SELECT * FROM orders WHERE user_id = NULL",
        "SELECT * FROM orders WHERE user_id = '1'::text::int",
        "SELECT * FROM orders o, countries c WHERE o.user_id = c.id",
        "SELECT * FROM (SELECT * FROM orders WHERE user_id = 1) s",
        "WITH s AS (SELECT * FROM orders WHERE user_id = 1) SELECT * FROM s",
        "SELECT * FROM countries WHERE id IN (SELECT user_id FROM orders WHERE user_id = 1)",
        "SELECT * FROM orders WHERE user_id = 1 AND EXISTS (SELECT 1 FROM orders WHERE user_id = 1)",
        "SELECT * FROM orders o LEFT JOIN users u ON u.id = o.user_id AND o.user_id = 5",
        // A subquery in an expression shape the walk does not enter.
        "SELECT * FROM orders WHERE user_id = 1 AND x = ANY(ARRAY(SELECT 1 FROM orders))",
    ] {
        key_is(sql, NO_KEY);
    }
}

#[test]
fn joins_pin_only_when_every_sharded_table_is_pinned_to_the_same_value() {
    let five = values(&[lit("5")]);
    key_is(
        "SELECT * FROM orders o JOIN users u ON u.id = o.user_id WHERE o.user_id = 5",
        five.clone(),
    );
    key_is(
        "SELECT * FROM orders o, users u WHERE o.user_id = u.id AND u.id = 5",
        five.clone(),
    );
    key_is(
        "SELECT * FROM orders o LEFT JOIN users u ON u.id = o.user_id WHERE o.user_id = 5",
        five.clone(),
    );
    key_is(
        "SELECT * FROM orders JOIN app.events e USING (user_id) WHERE orders.user_id = 5",
        five.clone(),
    );
    key_is(
        "SELECT * FROM orders o JOIN countries c ON c.id = o.country WHERE o.user_id = 5",
        five.clone(),
    );
    key_is(
        "SELECT * FROM orders o JOIN users u ON u.id = 5 WHERE o.user_id = 5",
        five.clone(),
    );
    key_is(
        "SELECT * FROM orders o JOIN users u ON u.id = o.user_id WHERE o.user_id IN (5, 6)",
        values(&[lit("5"), lit("6")]),
    );
    // Not pinned: one side unconstrained, different values, or joined on a non-key column.
    key_is(
        "SELECT * FROM orders o JOIN users u ON u.id = o.buyer WHERE o.user_id = 5",
        NO_KEY,
    );
    key_is(
        "SELECT * FROM orders o, users u WHERE o.user_id = 5 AND u.id = 6",
        NO_KEY,
    );
    key_is(
        "SELECT * FROM orders o, users u WHERE o.user_id = 5",
        NO_KEY,
    );
    // Both branches of a UNION pinned to the same value.
    key_is(
        "SELECT id FROM orders WHERE user_id = 5 UNION SELECT id FROM users WHERE id = 5",
        five,
    );
    let a = run("SELECT * FROM orders o JOIN users u ON u.id = o.user_id WHERE o.user_id = 5");
    assert_eq!(a.sharded, ["orders", "users"]);
    assert_eq!(a.key_column.as_deref(), Some("user_id"));
}

#[test]
fn tables_are_sorted_into_lists() {
    let a = run(
        "SELECT * FROM orders o JOIN countries c ON true JOIN app.plans p ON true \
                 JOIN pg_catalog.pg_class k ON true JOIN misc ON true WHERE o.user_id = 1",
    );
    assert_eq!(a.sharded, ["orders"]);
    assert_eq!(a.reference, ["countries", "app.plans"]);
    assert_eq!(a.other, ["pg_catalog.pg_class", "misc"]);
    assert!(!a.write && !a.ddl);
    assert_eq!(a.key, values(&[lit("1")]));
    // Another schema's table of the same name is not the configured one.
    let b = run("SELECT * FROM other.events WHERE user_id = 1");
    assert!(b.sharded.is_empty() && b.key.is_none(), "{b:?}");
    assert_eq!(b.other, ["other.events"]);
    // Only reference tables: no key at all.
    let c = run("SELECT * FROM countries");
    assert_eq!((c.key, c.key_column), (None, None));
    // A CTE is not a table.
    let d = run("WITH x AS (SELECT 1) SELECT * FROM x");
    assert!(d.other.is_empty() && d.sharded.is_empty(), "{d:?}");
}

#[test]
fn ddl_and_writes() {
    for (sql, ddl, write) in [
        (
            "CREATE TABLE orders (user_id bigint, id bigint)",
            true,
            true,
        ),
        ("ALTER TABLE orders ADD COLUMN x int", true, true),
        ("DROP TABLE orders, countries", true, true),
        ("TRUNCATE orders", true, true),
        ("CREATE INDEX ON orders (user_id)", true, true),
        ("COMMENT ON TABLE orders IS 'x'", true, true),
        ("DELETE FROM orders WHERE user_id = 1", false, true),
        ("SELECT * FROM orders WHERE user_id = 1", false, false),
    ] {
        let a = run(sql);
        assert_eq!((a.ddl, a.write), (ddl, write), "{sql}");
        assert_eq!(a.sharded, ["orders"], "{sql}: {a:?}");
    }
    assert_eq!(run("DROP TABLE orders, countries").reference, ["countries"]);
    assert_eq!(run("TRUNCATE orders").key, NO_KEY);
}

#[test]
fn update_and_delete() {
    key_is(
        "UPDATE orders SET total = 1 WHERE user_id = 9",
        values(&[lit("9")]),
    );
    key_is(
        "UPDATE orders o SET total = 1 WHERE o.user_id = $1",
        values(&[KeySource::Param(1)]),
    );
    key_is(
        "DELETE FROM orders WHERE user_id IN (1, 2) RETURNING *",
        values(&[lit("1"), lit("2")]),
    );
    key_is(
        "DELETE FROM orders o USING users u WHERE u.id = o.user_id AND u.id = 3",
        values(&[lit("3")]),
    );
    key_is("UPDATE orders SET total = 1", NO_KEY);
    key_is("DELETE FROM orders WHERE total > 1", NO_KEY);
    let a = run("UPDATE orders SET user_id = 10, total = 2 WHERE user_id = 9");
    assert_eq!(a.key, values(&[lit("9")]));
    assert_eq!(a.key_update, Some(lit("10")));
    assert!(a.key_assigned);
    let b = run("UPDATE orders SET (total, user_id) = (1, $2) WHERE user_id = $1");
    assert_eq!(b.key_update, Some(KeySource::Param(2)));
    let c = run("UPDATE orders SET user_id = user_id + 1 WHERE user_id = 9");
    assert_eq!((c.key_update, c.key_assigned), (None, true));
    let d = run("UPDATE orders SET total = 1 WHERE user_id = 9");
    assert_eq!((d.key_update, d.key_assigned), (None, false));
    // users' key is `id`; setting another table's `user_id`-named column is not a key move.
    let e = run("UPDATE users SET user_id = 3 WHERE id = 1");
    assert!(!e.key_assigned);
    let f = run(
        "INSERT INTO orders (user_id, id) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET user_id = 2",
    );
    assert_eq!(f.key_update, Some(lit("2")));
}

#[test]
fn insert_values_rows_and_ranges() {
    let sql = "INSERT INTO orders (id, user_id) VALUES (1, 'a'), (2, 'b''c') , (3,$1) RETURNING id";
    let a = run(sql);
    assert_eq!(a.key, values(&[lit("a"), lit("b'c"), KeySource::Param(1)]));
    let ins = a.insert.expect("insert rows");
    let rows: Vec<&str> = ins.rows.iter().map(|(r, _)| &sql[r.clone()]).collect();
    assert_eq!(rows, ["(1, 'a')", "(2, 'b''c')", "(3,$1)"]);
    assert_eq!(&sql[ins.values_range], "(1, 'a'), (2, 'b''c') , (3,$1)");
    assert!(ins.returning && !ins.on_conflict);
    assert_eq!(ins.rows[1].1, lit("b'c"));

    // Multibyte text before the literal: ranges are bytes into the original.
    let sql = "/* ünïcødé ✓ */ INSERT INTO orders (note, user_id) VALUES ('日本語', 7), ('ß', -8) ON CONFLICT DO NOTHING";
    let a = run(sql);
    let ins = a.insert.expect("insert rows");
    let rows: Vec<&str> = ins.rows.iter().map(|(r, _)| &sql[r.clone()]).collect();
    assert_eq!(rows, ["('日本語', 7)", "('ß', -8)"]);
    assert_eq!(a.key, values(&[lit("7"), lit("-8")]));
    assert!(ins.on_conflict && !ins.returning);

    // Same key twice: one value in the constraint, both rows kept.
    let a = run("INSERT INTO orders (user_id) VALUES (1), (1)");
    assert_eq!(a.key, values(&[lit("1")]));
    assert_eq!(a.insert.map(|i| i.rows.len()), Some(2));
}

#[test]
fn inserts_without_a_readable_key() {
    for sql in [
        "INSERT INTO orders VALUES (1, 2)",
        "INSERT INTO orders (id) VALUES (1)",
        "INSERT INTO orders (user_id) VALUES (1), (DEFAULT)",
        "INSERT INTO orders (user_id) VALUES (abs(1))",
        "INSERT INTO orders (user_id) SELECT id FROM users WHERE id = 1",
        "INSERT INTO orders DEFAULT VALUES",
        "WITH x AS (INSERT INTO orders (user_id) VALUES (1) RETURNING *) SELECT * FROM x",
    ] {
        let a = run(sql);
        assert_eq!(a.key, NO_KEY, "{sql}: {a:?}");
        assert_eq!(a.insert, None, "{sql}");
    }
    let a = run("INSERT INTO countries (id) VALUES (1)");
    assert_eq!((a.key, a.insert, a.reference.len()), (None, None, 1));
}

#[test]
fn unparsed_input_is_flagged() {
    let a = run("SELEC * FROM orders WHERE user_id = 1");
    assert!(!a.parsed);
    assert_eq!(a.sharded, ["orders"]);
    assert_eq!(a.key, NO_KEY);
    let b = analyze(b"SELECT * FROM orders WHERE user_id = '\xff'", &spec());
    assert!(!b.parsed);
    let c = run("SELECT 1; SELECT 2");
    assert!(!c.parsed && c.key.is_none());
    assert!(!run("").parsed);
}

const SEEDS: &[&str] = &[
    "SELECT * FROM orders o JOIN users u ON u.id = o.user_id WHERE o.user_id IN (1, $2)",
    "INSERT INTO orders (id, user_id) VALUES (1, 'a'), (2, E'\\x41') RETURNING id",
    "UPDATE app.events e SET user_id = '1'::bigint FROM countries c WHERE e.user_id = 4",
    "DELETE FROM \"Quoted\" WHERE \"Key\" = 1 OR \"Key\" = 2",
];

fn check_ranges(stmt: &[u8], a: &ShardAnalysis) {
    let Some(ins) = &a.insert else { return };
    let text = std::str::from_utf8(stmt).expect("insert rows only come from UTF-8 text");
    for r in std::iter::once(&ins.values_range).chain(ins.rows.iter().map(|(r, _)| r)) {
        assert!(r.start < r.end && r.end <= stmt.len(), "{r:?}");
        assert!(text.is_char_boundary(r.start) && text.is_char_boundary(r.end));
        assert!(ins.values_range.start <= r.start && r.end <= ins.values_range.end);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let a = analyze(&bytes, &spec());
        check_ranges(&bytes, &a);
    }

    #[test]
    fn mutated_statements_never_panic(
        seed in 0..SEEDS.len(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut bytes = SEEDS[seed].as_bytes().to_vec();
        for (pos, byte, op) in edits {
            let pos = pos % (bytes.len() + 1);
            match op {
                0 => bytes.insert(pos, byte),
                1 if pos < bytes.len() => { bytes.remove(pos); }
                _ if pos < bytes.len() => bytes[pos] = byte,
                _ => {}
            }
        }
        let a = analyze(&bytes, &spec());
        check_ranges(&bytes, &a);
    }
}

#[test]
fn regression_corpus_never_panics_and_ranges_stay_in_bounds() {
    let spec = ShardingSpec::new(
        &[
            (None, "tenk1".into(), "unique1".into()),
            (None, "onek".into(), "unique1".into()),
            (None, "int4_tbl".into(), "f1".into()),
        ],
        &[(None, "int8_tbl".into())],
    );
    let (mut total, mut parsed, mut pinned, mut inserts) = (0usize, 0usize, 0usize, 0usize);
    let files = common::for_each_corpus_statement(|stmt| {
        let a = analyze(stmt, &spec);
        total += 1;
        parsed += usize::from(a.parsed);
        pinned += usize::from(matches!(a.key, Some(KeyConstraint::Values(_))));
        inserts += usize::from(a.insert.is_some());
        check_ranges(stmt, &a);
        if let Some(KeyConstraint::Values(v)) = &a.key {
            assert!(!v.is_empty());
        }
    });
    if files.is_some() {
        eprintln!("{total} statements, {parsed} parsed, {pinned} pinned, {inserts} inserts split");
        assert!(total > 40_000);
    }
}

#[test]
fn subqueries_the_walk_does_not_enter_still_unpin() {
    // ORDER BY is not walked; the SELECT keyword count gives the hidden subquery away.
    key_is(
        "SELECT * FROM orders WHERE user_id = 1 ORDER BY (SELECT max(id) FROM orders)",
        NO_KEY,
    );
    let a = run("SELECT * FROM countries ORDER BY (SELECT max(id) FROM orders WHERE user_id = 1)");
    assert_eq!(
        (a.sharded.as_slice(), a.key),
        (&["orders".to_string()][..], NO_KEY)
    );
}
