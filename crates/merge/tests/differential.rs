//! Differential tests against a real PostgreSQL 15: split seeded random rows into two
//! "shards" (a `shard` column), run the per-shard queries for real, merge them with this crate,
//! and require the bytes of the single-server query over all rows, in text and binary.

mod support;

use shardgate_merge::*;
use support::*;
use tokio_postgres::Client;

const ROWS: usize = 400;

const SORT_COLUMNS: [&str; 14] = [
    "i2", "i4", "i8", "n", "nx", "f4", "f8", "b", "d", "ts", "tz", "u", "t", "v",
];

fn numeric_text(rng: &mut Rng) -> String {
    let digits = rng.below(26);
    let mut s = String::new();
    if rng.chance(40) {
        s.push('-');
    }
    s.push_str(&(rng.below(9) + 1).to_string());
    for _ in 0..digits {
        s.push_str(&rng.below(10).to_string());
    }
    if rng.chance(20) {
        s = if s.starts_with('-') {
            "-0".into()
        } else {
            "0".into()
        };
    }
    let scale = rng.below(9);
    if scale > 0 {
        s.push('.');
        for _ in 0..scale {
            s.push_str(&rng.below(10).to_string());
        }
    }
    s
}

fn float_literal(rng: &mut Rng, single: bool) -> String {
    let special = [
        "'NaN'",
        "'Infinity'",
        "'-Infinity'",
        "'-0'",
        "0",
        "1",
        "-1",
        "0.5",
    ];
    if rng.chance(20) {
        return rng.pick(&special).to_string();
    }
    loop {
        let bits = rng.next();
        if single {
            let f = f32::from_bits(bits as u32);
            if f.is_finite() {
                return format!("'{f:e}'");
            }
        } else {
            let f = f64::from_bits(bits);
            if f.is_finite() {
                return format!("'{f:e}'");
            }
        }
    }
}

fn text_literal(rng: &mut Rng, max: u64) -> String {
    let alphabet = [
        "a", "b", "B", "A", "z", "Z", " ", "0", "9", "é", "_", "~", "ab",
    ];
    let len = rng.below(max + 1);
    let mut s = String::from("'");
    for _ in 0..len {
        s.push_str(rng.pick(&alphabet));
    }
    s.push('\'');
    s
}

fn maybe_null(rng: &mut Rng, v: String) -> String {
    if rng.chance(10) {
        "NULL".into()
    } else {
        v
    }
}

/// Creates and fills `t`; rows are inserted shard 0 first so a serial scan meets them in the
/// order the merge combines them (only matters for ties such as numeric 1.0 vs 1.00).
async fn load(client: &Client, seed: u64) {
    client
        .batch_execute(
            "SET TimeZone = 'Europe/Amsterdam';
             DROP TABLE IF EXISTS t;
             CREATE TABLE t (id int, shard int, g int, i2 int2, i4 int4, i8 int8, n numeric,
               nx numeric, f4 float4, f8 float8, fe float8, f4e float4, b bool, d date,
               ts timestamp, tz timestamptz, u uuid, t text COLLATE \"C\",
               v varchar(12) COLLATE \"C\");",
        )
        .await
        .expect("create");
    let mut rng = Rng(seed);
    let mut rows: Vec<(u64, String)> = Vec::new();
    for id in 0..ROWS {
        let shard = rng.below(2);
        let g = rng.below(5);
        let i2 = (rng.next() as i16).to_string();
        let i4 = (rng.next() as i32).to_string();
        let i8 = if rng.chance(30) {
            (rng.below(1000) as i64 - 500).to_string()
        } else {
            (rng.next() as i64).to_string()
        };
        let n = format!("'{}'", numeric_text(&mut rng));
        let nx = match rng.below(20) {
            0 => "'NaN'".to_string(),
            1 => "'Infinity'".to_string(),
            2 => "'-Infinity'".to_string(),
            _ => format!("'{}'", numeric_text(&mut rng)),
        };
        let f4 = float_literal(&mut rng, true);
        let f8 = float_literal(&mut rng, false);
        let fe = format!("{}", (rng.below(4001) as f64 - 2000.0) * 0.25);
        let f4e = format!("{}", (rng.below(401) as f64 - 200.0) * 0.5);
        let b = if rng.chance(50) { "true" } else { "false" }.to_string();
        let d = if rng.chance(3) {
            "'infinity'".to_string()
        } else {
            format!(
                "date '2000-01-01' + {}",
                rng.below(1_600_000) as i64 - 800_000
            )
        };
        let span = |rng: &mut Rng| {
            format!(
                "'{} days {} microseconds'::interval",
                rng.below(1_200_000) as i64 - 800_000,
                rng.below(86_400_000_000)
            )
        };
        let ts = format!("timestamp '2000-01-01' + {}", span(&mut rng));
        let tz = format!("timestamptz '2000-01-01 00:00:00+00' + {}", span(&mut rng));
        let u = format!("'{:016x}{:016x}'", rng.next(), rng.next());
        let t = text_literal(&mut rng, 6);
        let v = text_literal(&mut rng, 3);
        let cells = [i2, i4, i8, n, nx, f4, f8, fe, f4e, b, d, ts, tz, u, t, v];
        let cells: Vec<String> = cells.into_iter().map(|c| maybe_null(&mut rng, c)).collect();
        rows.push((shard, format!("({id}, {shard}, {g}, {})", cells.join(", "))));
    }
    rows.sort_by_key(|r| r.0);
    let values: Vec<String> = rows.into_iter().map(|r| r.1).collect();
    client
        .batch_execute(&format!(
            "INSERT INTO t (id, shard, g, i2, i4, i8, n, nx, f4, f8, fe, f4e, b, d, ts, tz, u, t, v) VALUES {};
             ANALYZE t;",
            values.join(",\n")
        ))
        .await
        .expect("insert");
}

fn shard_sql(sql: &str, shard: usize) -> String {
    sql.replace("FROM t", &format!("FROM t WHERE shard = {shard}"))
}

#[tokio::test(flavor = "current_thread")]
async fn order_by_merge_equals_single_server() {
    let (_topology, client) = server().await;
    load(&client, 0x5eed_0001).await;
    let dirs = [
        ("ASC NULLS LAST", false, false),
        ("ASC NULLS FIRST", false, true),
        ("DESC NULLS FIRST", true, true),
        ("DESC NULLS LAST", true, false),
    ];
    let mut checked = 0;
    for col in SORT_COLUMNS {
        for (dir, descending, nulls_first) in dirs {
            let sql = format!("SELECT id, {col}, g FROM t ORDER BY {col} {dir}, id");
            let keys = vec![
                SortKey {
                    column: 1,
                    descending,
                    nulls_first,
                },
                SortKey {
                    column: 0,
                    descending: false,
                    nulls_first: false,
                },
            ];
            checked += check_order(&client, &sql, keys).await;
        }
    }
    // Several keys of different types at once.
    let sql = "SELECT g, t, n, id FROM t ORDER BY g DESC, t, n DESC NULLS LAST, id";
    let keys = vec![
        SortKey {
            column: 0,
            descending: true,
            nulls_first: true,
        },
        SortKey {
            column: 1,
            descending: false,
            nulls_first: false,
        },
        SortKey {
            column: 2,
            descending: true,
            nulls_first: false,
        },
        SortKey {
            column: 3,
            descending: false,
            nulls_first: false,
        },
    ];
    checked += check_order(&client, sql, keys).await;
    assert_eq!(checked, (SORT_COLUMNS.len() * 4 + 1) * 2);
}

async fn check_order(client: &Client, sql: &str, keys: Vec<SortKey>) -> usize {
    let singles = both(client, sql).await;
    let s0 = both(client, &shard_sql(sql, 0)).await;
    let s1 = both(client, &shard_sql(sql, 1)).await;
    let mut checked = 0;
    for (f, (cols, want)) in singles.iter().enumerate() {
        // A small batch forces the interleaving of needs/push/pop.
        let mut merge = KWayMerge::new(cols.clone(), keys.clone(), 2).with_batch_limit(3);
        let mut streams = [s0[f].1.clone().into_iter(), s1[f].1.clone().into_iter()];
        let mut got = Vec::new();
        while !merge.is_done() {
            while let Some(row) = merge.pop() {
                got.push(row);
            }
            if let Some(shard) = merge.needs() {
                match streams[shard].next() {
                    Some(row) => merge.push(shard, row).expect("push"),
                    None => merge.finish(shard),
                }
            }
        }
        assert_eq!(show(&got), show(want), "format {f}: {sql}");
        checked += 1;
    }
    checked
}

/// Per column: the aggregates that apply, as (kind, client SQL, shard SQL pieces).
fn aggregates(col: &str) -> Vec<(AggKind, String, Vec<String>)> {
    let all = |sql: &str| sql.replace("X", col);
    let mut out = vec![
        (
            AggKind::CountStar,
            "count(*)".into(),
            vec!["count(*)".into()],
        ),
        (AggKind::Count, all("count(X)"), vec![all("count(X)")]),
    ];
    let numeric = ["i2", "i4", "i8", "n", "nx", "fe", "f4e"];
    if numeric.contains(&col) {
        out.push((AggKind::Sum, all("sum(X)"), vec![all("sum(X)")]));
        let sum = if col == "f4e" {
            all("sum(X::float8)")
        } else {
            all("sum(X)")
        };
        out.push((AggKind::Avg, all("avg(X)"), vec![sum, all("count(X)")]));
    }
    if col == "b" {
        out.push((
            AggKind::BoolAnd,
            all("bool_and(X)"),
            vec![all("bool_and(X)")],
        ));
        out.push((AggKind::BoolOr, all("bool_or(X)"), vec![all("bool_or(X)")]));
    } else if col != "u" {
        out.push((AggKind::Min, all("min(X)"), vec![all("min(X)")]));
        out.push((AggKind::Max, all("max(X)"), vec![all("max(X)")]));
    }
    out
}

fn arg_oid(col: &str) -> u32 {
    match col {
        "i2" => 21,
        "i4" => 23,
        "i8" => 20,
        "n" | "nx" => 1700,
        "f4" | "f4e" => 700,
        "f8" | "fe" => 701,
        "b" => 16,
        "d" => 1082,
        "ts" => 1114,
        "tz" => 1184,
        "u" => 2950,
        _ => 25,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn aggregates_merge_equal_single_server() {
    let (_topology, client) = server().await;
    load(&client, 0x5eed_0002).await;
    let cols = [
        "i2", "i4", "i8", "n", "nx", "fe", "f4e", "f4", "f8", "b", "d", "ts", "tz", "u", "t", "v",
    ];
    let mut checked = 0;
    for group in [None, Some("g"), Some("b"), Some("v")] {
        for col in cols {
            let aggs = aggregates(col);
            checked += check_aggregates(&client, group, col, &aggs, "").await;
        }
        // Zero input rows: one row for the ungrouped form, none grouped.
        let aggs = aggregates("n");
        checked += check_aggregates(&client, group, "n", &aggs, " AND false").await;
    }
    assert_eq!(checked, 4 * 17 * 2);
}

async fn check_aggregates(
    client: &Client,
    group: Option<&str>,
    col: &str,
    aggs: &[(AggKind, String, Vec<String>)],
    extra_filter: &str,
) -> usize {
    let client_list: Vec<&str> = aggs.iter().map(|a| a.1.as_str()).collect();
    let mut shard_list: Vec<String> = Vec::new();
    let mut outputs = Vec::new();
    if let Some(g) = group {
        shard_list.push(g.to_string());
        outputs.push(Output::Group(0));
    }
    for (kind, _, pieces) in aggs {
        let start = shard_list.len();
        shard_list.extend(pieces.iter().cloned());
        outputs.push(Output::Agg(AggSpec {
            kind: *kind,
            shard_columns: (start..shard_list.len()).collect(),
            arg_type: arg_oid(col),
        }));
    }
    let (single, shard) = match group {
        None => (
            format!(
                "SELECT {} FROM t WHERE true{extra_filter}",
                client_list.join(", ")
            ),
            format!(
                "SELECT {} FROM t WHERE shard = $S{extra_filter}",
                shard_list.join(", ")
            ),
        ),
        Some(g) => (
            format!(
                "SELECT {g}, {} FROM t WHERE true{extra_filter} GROUP BY {g} ORDER BY {g}",
                client_list.join(", ")
            ),
            format!(
                "SELECT {} FROM t WHERE shard = $S{extra_filter} GROUP BY {g}",
                shard_list.join(", ")
            ),
        ),
    };
    let want = both(client, &single).await;
    let s0 = both(client, &shard.replace("$S", "0")).await;
    let s1 = both(client, &shard.replace("$S", "1")).await;
    let mut checked = 0;
    for f in 0..2 {
        let group_by = if group.is_some() { vec![0] } else { vec![] };
        let mut merge = GroupMerge::new(s0[f].0.clone(), group_by, outputs.clone()).expect("plan");
        for row in s0[f].1.iter().chain(&s1[f].1) {
            merge.push(row.clone()).expect("push");
        }
        let (columns, mut rows) = merge.finish().expect("finish");
        if group.is_some() {
            let key = SortKey {
                column: 0,
                descending: false,
                nulls_first: false,
            };
            sort_rows(&columns, &mut rows, &[key]).expect("sort");
        }
        let want_types: Vec<u32> = want[f].0.iter().map(|c| c.type_oid).collect();
        let got_types: Vec<u32> = columns.iter().map(|c| c.type_oid).collect();
        assert_eq!(got_types, want_types, "types: {single}");
        assert_eq!(show(&rows), show(&want[f].1), "format {f}: {single}");
        checked += 1;
    }
    checked
}

#[tokio::test(flavor = "current_thread")]
async fn having_and_distinct_after_merge() {
    let (_topology, client) = server().await;
    load(&client, 0x5eed_0003).await;
    // HAVING count(*) > 80 AND (sum(i4) < 0 OR NOT max(t) IS NULL) AND min(n) <= 5
    let single = "SELECT g, count(*), sum(i4), max(t), min(n) FROM t GROUP BY g \
                  HAVING count(*) > 80 AND (sum(i4) < 0 OR NOT max(t) IS NULL) AND min(n) <= 5 \
                  ORDER BY g";
    let shard = "SELECT g, count(*), sum(i4), max(t), min(n) FROM t WHERE shard = $S GROUP BY g";
    let pred = Pred::And(
        Box::new(Pred::And(
            Box::new(Pred::Cmp(
                Operand::Column(1),
                CmpOp::Gt,
                Operand::Const(Value::Int(80)),
            )),
            Box::new(Pred::Or(
                Box::new(Pred::Cmp(
                    Operand::Column(2),
                    CmpOp::Lt,
                    Operand::Const(Value::Int(0)),
                )),
                Box::new(Pred::Not(Box::new(Pred::IsNull(Operand::Column(3), true)))),
            )),
        )),
        Box::new(Pred::Cmp(
            Operand::Column(4),
            CmpOp::Le,
            Operand::Const(Value::Int(5)),
        )),
    );
    let agg = |kind, c: usize, arg| {
        Output::Agg(AggSpec {
            kind,
            shard_columns: vec![c],
            arg_type: arg,
        })
    };
    let outputs = vec![
        Output::Group(0),
        agg(AggKind::CountStar, 1, 0),
        agg(AggKind::Sum, 2, 23),
        agg(AggKind::Max, 3, 25),
        agg(AggKind::Min, 4, 1700),
    ];
    let want = both(&client, single).await;
    let s0 = both(&client, &shard.replace("$S", "0")).await;
    let s1 = both(&client, &shard.replace("$S", "1")).await;
    for f in 0..2 {
        let mut merge = GroupMerge::new(s0[f].0.clone(), vec![0], outputs.clone()).expect("plan");
        for row in s0[f].1.iter().chain(&s1[f].1) {
            merge.push(row.clone()).expect("push");
        }
        let (columns, rows) = merge.finish().expect("finish");
        let mut kept = Vec::new();
        for row in rows {
            let values = decode_row(&columns, &row).expect("decode");
            if eval(&pred, &values).expect("eval") == Some(true) {
                kept.push(row);
            }
        }
        let key = SortKey {
            column: 0,
            descending: false,
            nulls_first: false,
        };
        sort_rows(&columns, &mut kept, &[key]).expect("sort");
        assert!(
            !kept.is_empty() && kept.len() < 5,
            "the predicate must filter something: {}",
            kept.len()
        );
        assert_eq!(show(&kept), show(&want[f].1), "format {f}");
    }
    // DISTINCT over several types, then ordered.
    let single = "SELECT DISTINCT g, b, f4e FROM t ORDER BY g, b, f4e";
    let shard = "SELECT DISTINCT g, b, f4e FROM t WHERE shard = $S";
    let want = both(&client, single).await;
    let s0 = both(&client, &shard.replace("$S", "0")).await;
    let s1 = both(&client, &shard.replace("$S", "1")).await;
    for f in 0..2 {
        let mut distinct = Distinct::new(s0[f].0.clone());
        let mut rows = Vec::new();
        for row in s0[f].1.iter().chain(&s1[f].1) {
            if distinct.insert(row).expect("distinct") {
                rows.push(row.clone());
            }
        }
        let keys: Vec<SortKey> = (0..3)
            .map(|c| SortKey {
                column: c,
                descending: false,
                nulls_first: false,
            })
            .collect();
        sort_rows(&s0[f].0, &mut rows, &keys).expect("sort");
        assert_eq!(show(&rows), show(&want[f].1), "format {f}");
    }
}
