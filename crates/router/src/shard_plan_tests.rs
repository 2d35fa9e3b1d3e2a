#![allow(clippy::unwrap_used)]

use super::*;
use shardgate_sql::{analyze, ShardingSpec};

fn spec() -> ShardingSpec {
    ShardingSpec::new(
        &[
            (None, "orders".into(), "user_id".into()),
            (None, "users".into(), "id".into()),
        ],
        &[(None, "countries".into())],
    )
}

fn text_resolver(
    params: &'static [&'static str],
) -> impl FnMut(&KeySource) -> Result<Option<KeyValue>, String> {
    move |src| match src {
        KeySource::Literal { text, .. } => Ok(Some(KeyValue::from_text(text))),
        KeySource::Param(n) => params
            .get(usize::from(*n) - 1)
            .map(|t| Some(KeyValue::from_text(t)))
            .ok_or_else(|| format!("no parameter ${n}")),
    }
}

fn plan(sql: &str, params: &'static [&'static str]) -> Result<StatementPlan, Refusal> {
    let map = ShardMap::default_for(1024, 2);
    let a = analyze(sql.as_bytes(), &spec());
    plan_statement(&a, &map, 2, &mut text_resolver(params))
}

fn shard(key: i64) -> usize {
    ShardMap::default_for(1024, 2).shard_of(&KeyValue::Int(key))
}

/// Two keys on different shards of the default two-shard map.
fn keys_on_both() -> (i64, i64) {
    let a = 1;
    let b = (2..1000).find(|&k| shard(k) != shard(a)).unwrap();
    (a, b)
}

#[test]
fn a_key_picks_its_shard_and_says_why() {
    let p = plan("SELECT * FROM orders WHERE user_id = 42", &[]).unwrap();
    assert_eq!(p.target, Target::Shards(bit(shard(42))));
    let map = ShardMap::default_for(1024, 2);
    match p.why {
        ShardWhy::Key {
            column,
            value,
            logical,
            count,
        } => {
            assert_eq!(column, "user_id");
            assert_eq!(value, KeyValue::Int(42));
            assert_eq!(logical, map.logical_of(&KeyValue::Int(42)));
            assert_eq!(count, 1);
        }
        other => panic!("{other:?}"),
    }
    let p = plan("UPDATE orders SET total = 1 WHERE user_id = $1", &["42"]).unwrap();
    assert_eq!(p.target, Target::Shards(bit(shard(42))));
}

#[test]
fn in_lists_span_the_shards_of_their_values() {
    let (a, b) = keys_on_both();
    let p = plan(
        &format!("SELECT * FROM orders WHERE user_id IN ({a}, {b})"),
        &[],
    )
    .unwrap();
    assert_eq!(p.target, Target::Shards(bit(0) | bit(1)));
}

#[test]
fn multi_row_inserts_split_by_row() {
    let (a, b) = keys_on_both();
    let p = plan(
        &format!("INSERT INTO orders (user_id, total) VALUES ({a}, 1), ({b}, 2), ({a}, 3)"),
        &[],
    )
    .unwrap();
    let sa = shard(a);
    let sb = shard(b);
    let mut expected = vec![(sa, vec![0, 2]), (sb, vec![1])];
    expected.sort();
    assert_eq!(p.target, Target::Split(expected));
    // Rows on one shard stay one statement.
    let p = plan(
        &format!("INSERT INTO orders (user_id, total) VALUES ({a}, 1), ({a}, 2)"),
        &[],
    )
    .unwrap();
    assert_eq!(p.target, Target::Shards(bit(sa)));
}

#[test]
fn keyless_statements_on_sharded_tables_scatter_or_are_refused() {
    assert_eq!(
        plan("SELECT * FROM orders", &[]).unwrap().target,
        Target::Scatter
    );
    for sql in [
        "UPDATE orders SET total = 0",
        "DELETE FROM orders WHERE total > 3",
    ] {
        assert_eq!(
            plan(sql, &[]).unwrap().target,
            Target::ScatterWrite,
            "{sql}"
        );
    }
    for sql in [
        "SELECT * FROM orders o JOIN users u ON u.id = o.user_id",
        "UPDATE orders SET user_id = 3 WHERE total > 1",
    ] {
        let r = plan(sql, &[]).unwrap_err();
        assert_eq!(r.code, "0A000", "{sql}");
    }
}

#[test]
fn key_moves_are_refused_unless_they_stay_on_the_shard() {
    let (a, b) = keys_on_both();
    let r = plan(
        &format!("UPDATE orders SET user_id = {b} WHERE user_id = {a}"),
        &[],
    )
    .unwrap_err();
    assert!(r.message.contains("another shard"), "{}", r.message);
    let r = plan(
        &format!("UPDATE orders SET user_id = user_id + 1 WHERE user_id = {a}"),
        &[],
    )
    .unwrap_err();
    assert_eq!(r.code, "0A000");
    let p = plan(
        &format!("UPDATE orders SET user_id = {a} WHERE user_id = {a}"),
        &[],
    )
    .unwrap();
    assert_eq!(p.target, Target::Shards(bit(shard(a))));
}

#[test]
fn outer_joins_keeping_a_reference_side_are_refused_unless_pinned() {
    for sql in [
        "SELECT count(*) FROM countries LEFT JOIN orders ON false",
        "SELECT x FROM generate_series(1, 7) x LEFT JOIN orders o ON o.user_id = x",
        "SELECT * FROM orders RIGHT JOIN countries ON true",
        "DELETE FROM orders USING countries c FULL JOIN orders o ON true",
    ] {
        let r = plan(sql, &[]).unwrap_err();
        assert_eq!(r.code, "0A000", "{sql}");
        assert!(r.message.contains("NULL-extended"), "{sql}: {}", r.message);
    }
    let (a, b) = keys_on_both();
    let p = plan(
        &format!("SELECT * FROM countries c LEFT JOIN orders o ON true WHERE o.user_id = {a}"),
        &[],
    )
    .unwrap();
    assert_eq!(p.target, Target::Shards(bit(shard(a))));
    // The key filter drops the NULL-extended rows: several shards answer it exactly.
    let p = plan(
        &format!(
            "SELECT * FROM countries c LEFT JOIN orders o ON true WHERE o.user_id IN ({a}, {b})"
        ),
        &[],
    )
    .unwrap();
    assert_eq!(p.target, Target::Shards(bit(shard(a)) | bit(shard(b))));
    assert_eq!(
        plan("SELECT * FROM orders LEFT JOIN countries ON true", &[])
            .unwrap()
            .target,
        Target::Scatter
    );
}

#[test]
fn unsharded_statements() {
    let t = |sql: &str| plan(sql, &[]).unwrap().target;
    assert_eq!(t("CREATE TABLE orders (user_id bigint)"), Target::All);
    assert_eq!(t("CREATE INDEX ON orders (user_id)"), Target::All);
    assert_eq!(t("ALTER TABLE orders ADD COLUMN note text"), Target::All);
    assert_eq!(t("INSERT INTO countries VALUES ('nz')"), Target::All);
    assert_eq!(t("UPDATE audit SET x = 1"), Target::All);
    assert_eq!(t("SELECT * FROM countries"), Target::AnyReference);
    assert_eq!(t("SELECT * FROM audit"), Target::First);
    assert_eq!(t("SELECT 1"), Target::Any);
    // A join with a reference table follows the sharded table's key.
    assert_eq!(
        t("SELECT * FROM orders o JOIN countries c ON c.code = o.country WHERE o.user_id = 7"),
        Target::Shards(bit(shard(7)))
    );
}

#[test]
fn unreadable_parameters_are_refused_with_the_reason() {
    let r = plan("SELECT * FROM orders WHERE user_id = $2", &["1"]).unwrap_err();
    assert!(r.message.contains("no parameter $2"), "{}", r.message);
}

#[test]
fn null_keys() {
    // Matches nothing: one shard answers exactly.
    let p = plan("SELECT * FROM orders WHERE user_id = $1", &[]);
    assert!(p.is_err());
    let map = ShardMap::default_for(1024, 2);
    let a = analyze(b"INSERT INTO orders (user_id) VALUES ($1)", &spec());
    let r = plan_statement(&a, &map, 2, &mut |_: &KeySource| Ok(None)).unwrap_err();
    assert!(r.message.contains("NULL"), "{}", r.message);
    let a = analyze(b"SELECT * FROM orders WHERE user_id = $1", &spec());
    let p = plan_statement(&a, &map, 2, &mut |_: &KeySource| Ok(None)).unwrap();
    assert_eq!(p.target, Target::Shards(1));
}

#[test]
fn a_sharded_table_read_twice_needs_a_key_on_every_reference() {
    // Each shard would pair only its own rows (the scatter hunt's self-join lost half its
    // pairs), or test membership against its own rows only.
    for sql in [
        "SELECT count(*) FROM orders a JOIN orders b ON a.note = b.note",
        "SELECT * FROM orders WHERE note IN (SELECT note FROM orders WHERE user_id > 3)",
        "DELETE FROM orders WHERE note IN (SELECT note FROM orders WHERE user_id > 3)",
    ] {
        let r = plan(sql, &[]).unwrap_err();
        assert_eq!(r.code, "0A000", "{sql}");
        assert!(r.message.contains("more than once"), "{sql}: {}", r.message);
    }
    let (a, _) = keys_on_both();
    let r = plan(
        &format!("SELECT * FROM orders x JOIN orders y ON x.note = y.note WHERE x.user_id = {a}"),
        &[],
    )
    .unwrap_err();
    assert_eq!(r.code, "0A000");
    let p = plan(
        &format!(
            "SELECT * FROM orders x JOIN orders y ON x.note = y.note \
             WHERE x.user_id = {a} AND y.user_id = {a}"
        ),
        &[],
    )
    .unwrap();
    assert_eq!(p.target, Target::Shards(bit(shard(a))));
}
