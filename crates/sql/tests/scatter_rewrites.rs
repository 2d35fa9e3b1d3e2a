//! Unit tests of `scatter_select`: each rewrite with the exact shard SQL it must produce, and
//! each refusal with the construct it must name.

use shardgate_sql::scatter::{
    scatter_select, AggFn, CmpOp, Count, HavingExpr, HavingOperand, OutputCol, ScatterSelect,
    SortCol,
};

fn ok(sql: &str) -> ScatterSelect {
    match scatter_select(sql.as_bytes()) {
        Ok(s) => s,
        Err(e) => panic!("refused {sql:?}: {}", e.construct),
    }
}

fn shard(sql: &str) -> String {
    String::from_utf8(ok(sql).shard_sql).expect("utf8")
}

fn refused(sql: &str) -> String {
    match scatter_select(sql.as_bytes()) {
        Ok(s) => panic!(
            "accepted {sql:?}: {:?}",
            String::from_utf8_lossy(&s.shard_sql)
        ),
        Err(e) => e.construct,
    }
}

fn sort(column: usize, descending: bool, nulls_first: bool) -> SortCol {
    SortCol {
        column,
        descending,
        nulls_first,
    }
}

#[test]
fn plain_rows_pass_through_unchanged() {
    let sql = "SELECT a, 'it''s' AS q, E'x\\'y', $$a'b$$, $tag$ $$ $tag$ /* c, d */ FROM t WHERE b = $1 -- end";
    let s = ok(sql);
    assert_eq!(s.shard_sql, sql.as_bytes());
    assert_eq!(s.shard_columns, 5);
    assert_eq!(s.outputs, (0..5).map(OutputCol::Column).collect::<Vec<_>>());
    assert!(!s.aggregated && !s.distinct && !s.wildcard);
    assert_eq!((s.limit, s.offset), (None, None));
}

#[test]
fn wildcard_only_without_column_indexes() {
    let s = ok("SELECT * FROM t WHERE a = 1 LIMIT 5");
    assert!(s.wildcard);
    assert_eq!(s.shard_sql, b"SELECT * FROM t WHERE a = 1 LIMIT 5");
    // ORDER BY column names under `*`: hidden columns, counted with the `*` as one item.
    let s = ok("SELECT * FROM t ORDER BY a DESC, t.b LIMIT 2");
    assert_eq!(
        String::from_utf8(s.shard_sql).expect("utf8"),
        "SELECT *, a, t.b FROM t ORDER BY a DESC, t.b LIMIT 2"
    );
    assert_eq!(s.shard_columns, 3);
    assert_eq!(s.order_by, [sort(1, true, true), sort(2, false, false)]);
    assert!(refused("SELECT * FROM t ORDER BY lower(a)").starts_with("* in the select list"));
    assert!(refused("SELECT *, a FROM t ORDER BY a").starts_with("* in the select list"));
    assert!(refused("SELECT t.*, count(*) FROM t GROUP BY a").starts_with("* in the select list"));
    assert!(refused("SELECT DISTINCT * FROM t").starts_with("* in the select list"));
}

#[test]
fn order_by_keys_resolve_to_columns_or_hidden_columns() {
    let s = ok("SELECT a AS x, b, c FROM t ORDER BY x DESC, 2, t.c NULLS FIRST, d ASC NULLS LAST, lower(e) DESC NULLS LAST");
    assert_eq!(
        String::from_utf8(s.shard_sql).expect("utf8"),
        "SELECT a AS x, b, c, t.c, d, lower(e) FROM t ORDER BY x DESC, 2, t.c NULLS FIRST, d ASC NULLS LAST, lower(e) DESC NULLS LAST"
    );
    assert_eq!(s.shard_columns, 6);
    assert_eq!(
        s.order_by,
        [
            sort(0, true, true),
            sort(1, false, false),
            sort(3, false, true),
            sort(4, false, false),
            sort(5, true, false)
        ]
    );
    assert_eq!(s.outputs.len(), 3);
    // An expression textually equal to a select-list expression (case and spacing aside) is
    // that column; a bare name is an output name before an input column.
    let s = ok("SELECT a+1, b AS a FROM t ORDER BY A + 1, a");
    assert_eq!(s.shard_sql, b"SELECT a+1, b AS a FROM t ORDER BY A + 1, a");
    assert_eq!(s.order_by, [sort(0, false, false), sort(1, false, false)]);
    // Hidden sort keys keep their text, parameters and quotes.
    assert_eq!(
        shard("SELECT a FROM t ORDER BY coalesce(b, 'x''y', $2) -- tail"),
        "SELECT a, coalesce(b, 'x''y', $2) FROM t ORDER BY coalesce(b, 'x''y', $2) -- tail"
    );
}

#[test]
fn limit_and_offset_widen_on_the_shards() {
    let s = ok("SELECT a FROM t ORDER BY a LIMIT 10 OFFSET 5");
    assert_eq!(s.shard_sql, b"SELECT a FROM t ORDER BY a LIMIT 15");
    assert_eq!(
        (s.limit, s.offset),
        (Some(Count::Literal(10)), Some(Count::Literal(5)))
    );
    let s = ok("SELECT a FROM t ORDER BY a OFFSET $2 LIMIT $1");
    assert_eq!(
        s.shard_sql,
        b"SELECT a FROM t ORDER BY a LIMIT LEAST(($1::int8)::numeric + ($2::int8), 9223372036854775807)::int8"
    );
    assert_eq!(
        (s.limit, s.offset),
        (Some(Count::Param(1)), Some(Count::Param(2)))
    );
    assert_eq!(
        shard("SELECT a FROM t LIMIT $3"),
        "SELECT a FROM t LIMIT $3"
    );
    // Shards that must return every row still mention every parameter, with its type.
    assert_eq!(
        shard("SELECT a FROM t OFFSET $1"),
        "SELECT a FROM t OFFSET 0 * $1::int8"
    );
    assert_eq!(
        shard("SELECT DISTINCT a FROM t LIMIT $1"),
        "SELECT DISTINCT a FROM t LIMIT NULLIF($1::int8, $1::int8)"
    );
    assert_eq!(
        shard("SELECT a FROM t LIMIT 4 OFFSET $1"),
        "SELECT a FROM t LIMIT LEAST((4)::numeric + ($1::int8), 9223372036854775807)::int8"
    );
    let s = ok("SELECT a FROM t OFFSET 7");
    assert_eq!(s.shard_sql, b"SELECT a FROM t");
    assert_eq!((s.limit, s.offset), (None, Some(Count::Literal(7))));
    let s = ok("SELECT a FROM t LIMIT ALL OFFSET 2");
    assert_eq!(s.shard_sql, b"SELECT a FROM t");
    assert_eq!(s.limit, Some(Count::All));
    assert_eq!(ok("SELECT a FROM t LIMIT NULL").limit, Some(Count::All));
    let s = ok("SELECT a FROM t ORDER BY a OFFSET 3 ROWS FETCH FIRST 2 ROWS ONLY");
    assert_eq!(s.shard_sql, b"SELECT a FROM t ORDER BY a LIMIT 5");
    assert_eq!(s.limit, Some(Count::Literal(2)));
    assert_eq!(
        ok("SELECT a FROM t FETCH FIRST ROW ONLY").limit,
        Some(Count::Literal(1))
    );
}

#[test]
fn aggregates_without_group_by() {
    let s = ok("SELECT count(*), count(a), sum(b), min(c), max(d), bool_and(e), bool_or(f), every(g), avg(h) AS m FROM t WHERE k = 'a''b' LIMIT 1 OFFSET 0");
    assert_eq!(
        String::from_utf8(s.shard_sql).expect("utf8"),
        "SELECT count(*), count(a), sum(b), min(c), max(d), bool_and(e), bool_or(f), every(g), sum(h) AS m, count(h) FROM t WHERE k = 'a''b'"
    );
    let kinds = [
        AggFn::CountStar,
        AggFn::Count,
        AggFn::Sum,
        AggFn::Min,
        AggFn::Max,
        AggFn::BoolAnd,
        AggFn::BoolOr,
        AggFn::BoolAnd,
    ];
    let mut want: Vec<OutputCol> = kinds
        .iter()
        .enumerate()
        .map(|(i, &kind)| OutputCol::Agg {
            kind,
            columns: vec![i],
        })
        .collect();
    want.push(OutputCol::Agg {
        kind: AggFn::Avg,
        columns: vec![8, 9],
    });
    assert_eq!(s.outputs, want);
    assert_eq!(s.shard_columns, 10);
    assert!(s.aggregated && s.group_by.is_empty());
    assert_eq!(s.limit, Some(Count::Literal(1)));
    // FILTER stays with its aggregate; avg's argument text is copied verbatim.
    assert_eq!(
        shard("SELECT count(*) FILTER (WHERE a > 1), avg(b * 2 /* c */ + $1) FROM t"),
        "SELECT count(*) FILTER (WHERE a > 1), sum(b * 2 /* c */ + $1) AS avg, count(b * 2 /* c */ + $1) FROM t"
    );
}

#[test]
fn group_by_having_order_and_limit_after_grouping() {
    let sql = "SELECT a AS x, avg(b) AS m, count(*) FROM t WHERE s = 'it''s' GROUP BY 1 \
               HAVING sum(c) > 10 AND (count(*) >= $1 OR NOT a = 'q''r') \
               ORDER BY m DESC, x LIMIT $2 OFFSET $3";
    let s = ok(sql);
    assert_eq!(
        String::from_utf8(s.shard_sql).expect("utf8"),
        "SELECT a AS x, sum(b) AS m, count(b), count(*), sum(c) FROM t WHERE s = 'it''s' GROUP BY 1 \
         HAVING (sum(c) > 10 AND (count(*) >= $1 OR NOT a = 'q''r')) OR true \
         LIMIT NULLIF($2::int8, $2::int8) OFFSET 0 * $3::int8"
    );
    assert_eq!(s.group_by, [0]);
    assert_eq!(s.order_by, [sort(1, true, true), sort(0, false, false)]);
    assert_eq!(
        (s.limit, s.offset),
        (Some(Count::Param(2)), Some(Count::Param(3)))
    );
    let count_star = HavingOperand::Agg {
        kind: AggFn::CountStar,
        columns: vec![3],
    };
    let sum_c = HavingOperand::Agg {
        kind: AggFn::Sum,
        columns: vec![4],
    };
    assert_eq!(
        s.having,
        Some(HavingExpr::And(
            Box::new(HavingExpr::Cmp(
                sum_c,
                CmpOp::Gt,
                HavingOperand::Number("10".into())
            )),
            Box::new(HavingExpr::Or(
                Box::new(HavingExpr::Cmp(
                    count_star,
                    CmpOp::GtEq,
                    HavingOperand::Param(1)
                )),
                Box::new(HavingExpr::Not(Box::new(HavingExpr::Cmp(
                    HavingOperand::Column(0),
                    CmpOp::Eq,
                    HavingOperand::Literal("q'r".into())
                ))))
            ))
        ))
    );
    assert_eq!(s.shard_columns, 5);
}

#[test]
fn group_keys_are_selected_hidden_or_renumbered() {
    // avg before a positional key shifts it in the shard's select list.
    let s = ok("SELECT avg(b), a FROM t GROUP BY 2 ORDER BY 2");
    assert_eq!(
        s.shard_sql,
        b"SELECT sum(b) AS avg, count(b), a FROM t GROUP BY 3"
    );
    assert_eq!(s.group_by, [2]);
    assert_eq!(s.order_by, [sort(2, false, false)]);
    // A key not selected becomes hidden, and may be sorted on.
    let s = ok("SELECT count(*) FROM t GROUP BY lower(a), b ORDER BY lower(a) DESC");
    assert_eq!(
        s.shard_sql,
        b"SELECT count(*), lower(a), b FROM t GROUP BY lower(a), b"
    );
    assert_eq!(s.group_by, [1, 2]);
    assert_eq!(s.order_by, [sort(1, true, true)]);
    // HAVING on avg not in the select list adds its two hidden columns.
    let s = ok("SELECT a FROM t GROUP BY a HAVING avg(b) < 2.5 AND max(c) IS NOT NULL");
    assert_eq!(
        s.shard_sql,
        b"SELECT a, sum(b), count(b), max(c) FROM t GROUP BY a"
    );
    assert_eq!(
        s.having,
        Some(HavingExpr::And(
            Box::new(HavingExpr::Cmp(
                HavingOperand::Agg {
                    kind: AggFn::Avg,
                    columns: vec![1, 2]
                },
                CmpOp::Lt,
                HavingOperand::Number("2.5".into())
            )),
            Box::new(HavingExpr::IsNull(
                HavingOperand::Agg {
                    kind: AggFn::Max,
                    columns: vec![3]
                },
                false
            ))
        ))
    );
}

#[test]
fn distinct_is_merged_and_unlimited_on_shards() {
    let s = ok("SELECT DISTINCT a, b FROM t ORDER BY b LIMIT 3 OFFSET 1");
    assert_eq!(s.shard_sql, b"SELECT DISTINCT a, b FROM t ORDER BY b");
    assert!(s.distinct && !s.aggregated);
    assert_eq!(s.order_by, [sort(1, false, false)]);
    assert_eq!(
        refused("SELECT DISTINCT a FROM t ORDER BY b"),
        "ORDER BY an expression not in the select list"
    );
}

#[test]
fn refusals_name_the_construct() {
    let cases = [
        ("SELECT count(DISTINCT a) FROM t", "count(DISTINCT ...)"),
        ("SELECT sum(DISTINCT a) FROM t", "sum(DISTINCT ...)"),
        (
            "SELECT row_number() OVER (ORDER BY a) FROM t",
            "window functions",
        ),
        (
            "SELECT a FROM t WINDOW w AS (ORDER BY a)",
            "window functions",
        ),
        (
            "SELECT sum(a) OVER w FROM t WINDOW w AS ()",
            "window functions",
        ),
        ("SELECT string_agg(a, ',') FROM t", "string_agg"),
        ("SELECT array_agg(a) FROM t", "array_agg"),
        ("SELECT json_agg(a) FROM t", "json_agg"),
        ("SELECT stddev(a) FROM t", "stddev"),
        (
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY a) FROM t",
            "ordered-set aggregates (WITHIN GROUP)",
        ),
        ("SELECT DISTINCT ON (a) a, b FROM t", "DISTINCT ON"),
        ("SELECT * FROM (SELECT a FROM t) s", "subqueries in FROM"),
        ("SELECT a FROM t WHERE a IN (SELECT b FROM u)", "subqueries"),
        (
            "SELECT a FROM t UNION SELECT a FROM u",
            "set operations (UNION/INTERSECT/EXCEPT)",
        ),
        (
            "SELECT a FROM t EXCEPT SELECT a FROM u",
            "set operations (UNION/INTERSECT/EXCEPT)",
        ),
        ("WITH c AS (SELECT 1) SELECT * FROM c", "CTEs (WITH)"),
        ("SELECT a FROM t FOR UPDATE", "FOR UPDATE/FOR SHARE"),
        (
            "SELECT a FROM t FOR SHARE SKIP LOCKED",
            "FOR UPDATE/FOR SHARE",
        ),
        (
            "SELECT sum(a) + 1 FROM t",
            "aggregates nested in expressions (such as sum(x) + 1)",
        ),
        (
            "SELECT count(*) * 2 FROM t",
            "aggregates nested in expressions (such as sum(x) + 1)",
        ),
        (
            "SELECT coalesce(max(a), 0) FROM t",
            "aggregates nested in expressions (such as sum(x) + 1)",
        ),
        (
            "SELECT a, count(*) FROM t GROUP BY a ORDER BY b",
            "ORDER BY an expression not in the select list",
        ),
        (
            "SELECT a, count(*) FROM t GROUP BY a ORDER BY sum(c)",
            "ORDER BY an expression not in the select list",
        ),
        (
            "SELECT a FROM t ORDER BY count(*)",
            "ORDER BY an aggregate not in the select list",
        ),
        (
            "SELECT a FROM t ORDER BY a FETCH FIRST 3 ROWS WITH TIES",
            "FETCH FIRST ... WITH TIES",
        ),
        (
            "SELECT a FROM t LIMIT 1 + 1",
            "LIMIT that is not a literal or a parameter",
        ),
        (
            "SELECT a FROM t OFFSET $1 * 2",
            "OFFSET that is not a literal or a parameter",
        ),
        (
            "SELECT a FROM t LIMIT 2.5",
            "LIMIT that is not a literal or a parameter",
        ),
        (
            "SELECT a, count(*) FROM t GROUP BY ROLLUP (a)",
            "ROLLUP, CUBE and GROUPING SETS",
        ),
        (
            "SELECT a, count(*) FROM t GROUP BY CUBE (a)",
            "ROLLUP, CUBE and GROUPING SETS",
        ),
        (
            "SELECT a, count(*) FROM t GROUP BY GROUPING SETS ((a), ())",
            "ROLLUP, CUBE and GROUPING SETS",
        ),
        (
            "SELECT a FROM t GROUP BY a HAVING lower(a) = 'x'",
            "HAVING other than comparisons of aggregates and group columns with constants",
        ),
        (
            "SELECT a FROM t GROUP BY a HAVING sum(b) > sum(c) + 1",
            "HAVING other than comparisons of aggregates and group columns with constants",
        ),
        (
            "SELECT a FROM t GROUP BY a HAVING b > 1",
            "HAVING on a column that is not written as a group key",
        ),
        ("SELECT avg(a) FILTER (WHERE b) FROM t", "avg(...) FILTER"),
        (
            "SELECT a COLLATE \"de_DE\" FROM t ORDER BY 1",
            "ORDER BY under a collation other than \"C\"",
        ),
        ("SELECT a FROM t ORDER BY a USING <", "ORDER BY ... USING"),
        ("SELECT a INTO n FROM t", "SELECT INTO"),
        ("INSERT INTO t VALUES (1)", "a statement other than SELECT"),
        ("VALUES (1)", "VALUES"),
        (
            "SELECT a FROM t; SELECT 1",
            "a statement shardgate could not read as one plain SELECT",
        ),
        (
            "SELEC a FROM t",
            "a statement shardgate could not read as one plain SELECT",
        ),
        ("SELECT a FROM t ORDER BY 3", "ORDER BY position 3"),
        (
            "SELECT a FROM t;",
            "a statement shardgate could not read as one plain SELECT",
        ),
        (
            "SELECT substring(a from 2), b FROM t ORDER BY c",
            "ORDER BY a name when an output column's name is unknown (use a position)",
        ),
        ("SELECT count(*) FROM t GROUP BY 1", "GROUP BY an aggregate"),
    ];
    let mut failures = Vec::new();
    for (sql, want) in cases {
        match scatter_select(sql.as_bytes()) {
            Ok(s) => failures.push(format!(
                "accepted {sql}: {}",
                String::from_utf8_lossy(&s.shard_sql)
            )),
            Err(e) if e.construct != want => {
                failures.push(format!("{sql}: {:?}, want {want:?}", e.construct))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(scatter_select(b"SELECT a FROM t ORDER BY a COLLATE \"C\"").is_ok());
    assert!(scatter_select(&[b'S', 0xff]).is_err());
}

#[test]
fn column_free_items_next_to_aggregates() {
    let s =
        ok("SELECT 1 AS one, 'x'::text, now() IS NOT NULL, pg_catalog.lower($1), count(*) FROM t");
    assert_eq!(
        s.outputs[..4],
        (0..4).map(OutputCol::Constant).collect::<Vec<_>>()
    );
    // A column, a function that might return a set or read a table, a column inside a call.
    let s = ok("SELECT a, generate_series(1, 2), my_fn(), lower(b), count(*) FROM t GROUP BY a");
    assert_eq!(
        s.outputs[..4],
        (0..4).map(OutputCol::Column).collect::<Vec<_>>()
    );
    // Without aggregation a constant is a plain column.
    assert_eq!(ok("SELECT 1 FROM t").outputs, [OutputCol::Column(0)]);
}

#[test]
fn explicit_collations_where_the_merge_compares() {
    const WHAT: &str = "GROUP BY, DISTINCT, min/max or HAVING under a collation other than \"C\"";
    for sql in [
        "SELECT g, max(t COLLATE \"und-x-icu\") FROM ev GROUP BY g",
        "SELECT min(t COLLATE \"en_US\") FROM ev",
        "SELECT t COLLATE \"und-x-icu\", count(*) FROM ev GROUP BY 1",
        "SELECT count(*) FROM ev GROUP BY t COLLATE pg_catalog.\"und-x-icu\"",
        "SELECT DISTINCT t COLLATE \"und-x-icu\" FROM ev",
        "SELECT g FROM ev GROUP BY g HAVING max(t COLLATE \"und-x-icu\") > 'a'",
    ] {
        assert_eq!(refused(sql), WHAT, "{sql}");
    }
    assert_eq!(
        refused("SELECT g, max(t COLLATE \"und-x-icu\") AS m FROM ev GROUP BY g ORDER BY m"),
        "ORDER BY under a collation other than \"C\""
    );
    // Bytewise collations, and COLLATE where nothing is compared, pass.
    ok("SELECT g, max(t COLLATE \"C\") FROM ev GROUP BY g");
    ok("SELECT DISTINCT t COLLATE \"POSIX\" FROM ev");
    ok("SELECT t COLLATE \"und-x-icu\" FROM ev");
    ok("SELECT count(*) FROM ev WHERE t COLLATE \"und-x-icu\" > 'a'");
}

#[test]
fn compared_names_are_what_the_merge_compares() {
    let names = |sql: &str| ok(sql).compared_names;
    assert_eq!(
        names("SELECT g, max(tc), count(x) FROM ev WHERE w > 1 GROUP BY g"),
        ["g", "max", "tc"]
    );
    assert_eq!(names("SELECT id, tc FROM ev ORDER BY \"Tc\""), ["Tc"]);
    assert_eq!(names("SELECT id, tc FROM ev ORDER BY 2"), ["tc"]);
    assert_eq!(names("SELECT DISTINCT a, e.b FROM ev e"), ["a", "b", "e"]);
    assert_eq!(
        names("SELECT g FROM ev GROUP BY g HAVING min(h) > 'x'"),
        ["g", "h", "having", "min"]
    );
    assert!(names("SELECT id, tc FROM ev WHERE tc > 'a'").is_empty());
    // Under an explicit bytewise collation the column's own one does not matter.
    assert!(names("SELECT id, tc FROM ev ORDER BY tc COLLATE \"C\"").is_empty());
    assert!(
        names("SELECT g, max(e.tc COLLATE \"C\") FROM ev e GROUP BY 1")
            .iter()
            .all(|n| n == "g")
    );
    assert_eq!(
        refused("SELECT id FROM ev ORDER BY U&\"t\\0063\""),
        "a U&\"...\" name in GROUP BY, ORDER BY, DISTINCT, min/max or HAVING"
    );
}
