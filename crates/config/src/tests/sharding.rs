//! The `sharding` section: the documented example, the default map, name folding, and every
//! validation problem at its exact path.

use std::path::PathBuf;

use super::parse;
use crate::{Config, ConfigError, ShardedTable, ShardingConfig, TableName};

fn with_shards(count: usize, extra: &str) -> String {
    let shards: Vec<String> = (0..count)
        .map(|i| format!("  - {{name: s{i}, primary: 'db{i}:5432'}}\n"))
        .collect();
    format!(
        "database: app\nusers: [{{name: app, password: pw}}]\nshards:\n{}{extra}",
        shards.concat()
    )
}

/// The example from issue 4, as docs/sharding.md shows it.
const EXAMPLE: &str = "\
sharding:
  logical_shards: 1024
  map:
    \"0-511\": s0
    \"512-1023\": s1
  tables:
    orders: user_id
    users: id
  reference_tables: [countries]
  two_phase_commit: false
  two_phase_log: /var/lib/shardgate/2pc.log
";

fn table(schema: Option<&str>, name: &str) -> TableName {
    TableName {
        schema: schema.map(str::to_owned),
        name: name.to_owned(),
    }
}

fn problems(text: &str) -> Vec<(String, String)> {
    match Config::from_yaml_str(text) {
        Ok(config) => panic!("expected problems, got {config:#?}"),
        Err(ConfigError::Invalid { problems }) => {
            problems.into_iter().map(|p| (p.path, p.message)).collect()
        }
        Err(err) => panic!("unexpected error: {err}"),
    }
}

/// Exactly these `(path, message)` problems, in order.
#[track_caller]
fn assert_problems(extra: &str, expected: &[(&str, &str)]) {
    let found = problems(&with_shards(2, extra));
    let found: Vec<(&str, &str)> = found
        .iter()
        .map(|(p, m)| (p.as_str(), m.as_str()))
        .collect();
    assert_eq!(found, expected);
}

fn sharding(extra: &str) -> ShardingConfig {
    parse(&with_shards(2, extra))
        .sharding
        .expect("config has a sharding section")
}

#[test]
fn the_issue_example_parses() {
    assert_eq!(
        sharding(EXAMPLE),
        ShardingConfig {
            logical_shards: 1024,
            map: vec![(0, 511, "s0".into()), (512, 1023, "s1".into())],
            tables: vec![
                ShardedTable {
                    table: table(None, "orders"),
                    key: "user_id".into(),
                },
                ShardedTable {
                    table: table(None, "users"),
                    key: "id".into(),
                },
            ],
            reference_tables: vec![table(None, "countries")],
            two_phase_commit: false,
            two_phase_log: Some(PathBuf::from("/var/lib/shardgate/2pc.log")),
        }
    );
}

#[test]
fn the_docs_example_is_the_issue_example() {
    let doc = include_str!("../../../../docs/sharding.md");
    let start = doc
        .find("```yaml\n")
        .expect("docs/sharding.md has a yaml block")
        + 8;
    let len = doc[start..].find("```").expect("yaml block is closed");
    let config = parse(&with_shards(2, &doc[start..start + len]));
    assert_eq!(config.sharding, Some(sharding(EXAMPLE)));
}

#[test]
fn without_a_map_the_default_rule_applies() {
    let two = sharding("sharding: {logical_shards: 1024}");
    assert_eq!(two.map, [(0, 511, "s0".into()), (512, 1023, "s1".into())]);
    assert!(!two.two_phase_commit && two.tables.is_empty() && two.two_phase_log.is_none());
    let three = parse(&with_shards(3, "sharding: {logical_shards: 10}")).sharding;
    // floor(l * 3 / 10): 0-3 -> 0, 4-6 -> 1, 7-9 -> 2.
    let expected = vec![
        (0, 3, "s0".into()),
        (4, 6, "s1".into()),
        (7, 9, "s2".into()),
    ];
    assert_eq!(three.map(|s| s.map), Some(expected));
    // floor(l * 3 / 2): 0 -> 0, 1 -> 1; s2 holds nothing.
    let sparse = parse(&with_shards(3, "sharding: {logical_shards: 2}")).sharding;
    assert_eq!(
        sparse.map(|s| s.map),
        Some(vec![(0, 0, "s0".into()), (1, 1, "s1".into())])
    );
}

#[test]
fn ranges_are_normalized() {
    let s = sharding(
        "sharding:\n  logical_shards: 8\n  map: {'6-7': s0, 5: s1, '0-1': s0, '2-4': s1}\n",
    );
    let expected = vec![
        (0, 1, "s0".into()),
        (2, 5, "s1".into()),
        (6, 7, "s0".into()),
    ];
    assert_eq!(s.map, expected);
}

#[test]
fn names_fold_like_postgresql() {
    let s = sharding(
        "sharding:\n  logical_shards: 4\n  tables:\n    App.Orders: User_ID\n    '\"Line Items\"': '\"OrderId\"'\n    'app.\"Weird\"\"Name\"': id\n  reference_tables: [Countries, '\"Geo\".zones', 'é_tÉ']\n",
    );
    let keys: Vec<(&TableName, &str)> = s
        .tables
        .iter()
        .map(|t| (&t.table, t.key.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            (&table(Some("app"), "orders"), "user_id"),
            (&table(None, "Line Items"), "OrderId"),
            (&table(Some("app"), "Weird\"Name"), "id"),
        ]
    );
    assert_eq!(
        s.reference_tables,
        [
            table(None, "countries"),
            table(Some("Geo"), "zones"),
            table(None, "é_tÉ"),
        ]
    );
    let shown: Vec<String> = s.tables.iter().map(|t| t.table.to_string()).collect();
    assert_eq!(
        shown,
        ["app.orders", "\"Line Items\"", "app.\"Weird\"\"Name\""]
    );
    assert_eq!(s.reference_tables[1].to_string(), "\"Geo\".zones");
}

#[test]
fn serialised_sharding_reads_back_the_same() {
    let text = "sharding:\n  logical_shards: 16\n  map: {'0-3': s1, 4: s0, '5-15': s1}\n  tables: {'\"Orders\"': '\"UserId\"', app.items: order_id}\n  reference_tables: ['\"Geo\".\"Zones 2\"']\n  two_phase_commit: true\n  two_phase_log: 2pc.log\n";
    let config = parse(&with_shards(2, text));
    let written = serde_yaml_ng::to_string(&config).expect("config serialises");
    assert_eq!(parse(&written), config, "{written}");
    let without = parse(&with_shards(1, ""));
    let written = serde_yaml_ng::to_string(&without).expect("config serialises");
    assert!(!written.contains("sharding"), "{written}");
}

#[test]
fn more_than_one_shard_needs_a_sharding_section() {
    assert_problems(
        "",
        &[(
            "sharding",
            "2 shards are configured but there is no sharding section (add one to say which \
             tables are sharded by which column; see docs/sharding.md)",
        )],
    );
    assert!(parse(&with_shards(1, "")).sharding.is_none());
    assert!(parse(&with_shards(1, "sharding: {logical_shards: 1}"))
        .sharding
        .is_some());
}

#[test]
fn gaps_and_overlaps_are_reported_precisely() {
    assert_problems(
        "sharding:\n  logical_shards: 300\n  map: {'0-9': s0, '5-7': s1, '10-99': s0, '200-298': s1}\n",
        &[
            ("sharding.map.\"5-7\"", "logical shards 5-7 are mapped twice (0-9 and 5-7)"),
            ("sharding.map", "logical shards 100-199 are not mapped"),
            ("sharding.map", "logical shard 299 is not mapped"),
        ],
    );
    assert_problems(
        "sharding:\n  logical_shards: 10\n  map: {'1-7': s0, 7: s1, '8-9': s1}\n",
        &[
            ("sharding.map", "logical shard 0 is not mapped"),
            (
                "sharding.map.\"7\"",
                "logical shard 7 is mapped twice (1-7 and 7)",
            ),
        ],
    );
    assert_problems(
        "sharding: {logical_shards: 4, map: {}}",
        &[("sharding.map", "logical shards 0-3 are not mapped")],
    );
}

#[test]
fn bad_ranges_and_names_are_reported_at_their_key() {
    assert_problems(
        "sharding:\n  logical_shards: 1024\n  map: {'0-511': s0, '512-1024': s1, 'x-3': s1, '9-2': s0, '600-700': s9}\n",
        &[
            (
                "sharding.map.\"512-1024\"",
                "logical shard 1024 does not exist (logical_shards is 1024, so the last is 1023)",
            ),
            (
                "sharding.map.\"x-3\"",
                "invalid range \"x-3\" (expected \"A-B\" or \"A\": logical shard numbers, inclusive)",
            ),
            ("sharding.map.\"9-2\"", "range \"9-2\" is backwards (9 is after 2)"),
            ("sharding.map.\"600-700\"", "unknown shard \"s9\" (configured shards: s0, s1)"),
        ],
    );
}

#[test]
fn section_level_problems() {
    assert_problems(
        "sharding: {logical_shards: 0}",
        &[("sharding.logical_shards", "must be at least 1")],
    );
    assert_problems(
        "sharding: {logical_shards: 1048577}",
        &[("sharding.logical_shards", "must be at most 1048576")],
    );
    assert_problems(
        "sharding: {map: {'0-1': s0}}",
        &[(
            "sharding.logical_shards",
            "missing required key \"logical_shards\"",
        )],
    );
    assert_problems(
        "sharding: {logical_shards: 2, two_phase_commit: true}",
        &[(
            "sharding.two_phase_log",
            "required when two_phase_commit is true (where the coordinator records its \
             commit decisions so it can finish them after a crash)",
        )],
    );
    assert_problems(
        "sharding: {logical_shards: 2, replicas: 3}",
        &[(
            "sharding.replicas",
            "unknown key \"replicas\" (expected one of: logical_shards, map, tables, \
             reference_tables, two_phase_commit, two_phase_log)",
        )],
    );
}

#[test]
fn table_problems_name_the_table() {
    assert_problems(
        "sharding: {logical_shards: 2, tables: {orders: user_id, 1: x}}",
        &[("sharding.tables", "keys must be strings, got a number (1)")],
    );
    assert_problems(
        "sharding:\n  logical_shards: 2\n  tables: {orders: user_id, ORDERS: id, 'a b': id, 'a.b.c': id, items: 'orders.id', x: ''}\n  reference_tables: [countries, Orders, '\"countries\"', '\"unclosed', '1x']\n",
        &[
            ("sharding.tables.ORDERS", "duplicate table \"orders\" (also at sharding.tables.orders)"),
            (
                "sharding.tables.\"a b\"",
                "invalid name \"a b\": unexpected ' ' (double-quote names with spaces or punctuation)",
            ),
            ("sharding.tables.\"a.b.c\"", "invalid table name \"a.b.c\": write table or schema.table"),
            (
                "sharding.tables.items",
                "invalid column name \"orders.id\": write the column alone, without its table",
            ),
            ("sharding.tables.x", "must not be empty"),
            (
                "sharding.reference_tables[1]",
                "table \"orders\" is sharded (at sharding.tables.orders), so it cannot also be a reference table",
            ),
            (
                "sharding.reference_tables[2]",
                "duplicate table \"countries\" (also at sharding.reference_tables[0])",
            ),
            ("sharding.reference_tables[3]", "invalid name \"\\\"unclosed\": a double quote is not closed"),
            (
                "sharding.reference_tables[4]",
                "invalid name \"1x\": expected an identifier (letters, digits, _ and $, not starting with a digit; or any text in double quotes)",
            ),
        ],
    );
    let long = "t".repeat(64);
    let found = problems(&with_shards(
        2,
        &format!("sharding: {{logical_shards: 2, reference_tables: [{long}]}}"),
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].1.contains("longer than 63 bytes"), "{found:#?}");
}
