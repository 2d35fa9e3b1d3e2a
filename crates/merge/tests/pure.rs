//! Tests of the public API that need no server: ordering rules, the k-way merge's contract,
//! aggregate edge cases, HAVING's three-valued logic and DISTINCT equality.

use std::cmp::Ordering;

use bytes::Bytes;
use shardgate_merge::*;

fn text(oid: u32) -> Column {
    Column::new(oid, FORMAT_TEXT)
}

fn val(oid: u32, s: &str) -> Value {
    decode(&text(oid), Some(s.as_bytes())).expect(s)
}

fn cell(s: &str) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(s.as_bytes()))
}

#[test]
fn float_order_follows_postgresql() {
    let nan = val(701, "NaN");
    let inf = val(701, "Infinity");
    assert_eq!(compare(&nan, &nan), Ordering::Equal);
    assert_eq!(compare(&nan, &inf), Ordering::Greater);
    assert_eq!(
        compare(&val(701, "-Infinity"), &val(701, "-1e308")),
        Ordering::Less
    );
    assert_eq!(compare(&val(701, "-0"), &val(701, "0")), Ordering::Equal);
    assert_eq!(compare(&Value::Null, &nan), Ordering::Greater);
    assert_eq!(compare(&val(700, "1.1"), &val(700, "1.1")), Ordering::Equal);
}

#[test]
fn numeric_order_and_equality() {
    assert_eq!(
        compare(&val(1700, "1.0"), &val(1700, "1.00")),
        Ordering::Equal
    );
    assert_eq!(
        compare(&val(1700, "NaN"), &val(1700, "Infinity")),
        Ordering::Greater
    );
    assert_eq!(
        compare(&val(1700, "-Infinity"), &val(1700, "-99999999999999999999")),
        Ordering::Less
    );
    assert_eq!(
        compare(&val(1700, "-0.5"), &val(1700, "-0.49")),
        Ordering::Less
    );
    assert_eq!(compare(&val(1700, "10"), &Value::Int(9)), Ordering::Greater);
}

#[test]
fn text_uses_c_collation_byte_order() {
    // In en_US 'a' < 'B'; under C, uppercase sorts first, and é (0xC3..) after '~'.
    assert_eq!(compare(&val(25, "B"), &val(25, "a")), Ordering::Less);
    assert_eq!(compare(&val(25, "~"), &val(25, "é")), Ordering::Less);
    assert_eq!(compare(&val(25, "ab"), &val(25, "a")), Ordering::Greater);
    assert!(sortable(25) && sortable(1043) && !sortable(1042) && !sortable(114));
}

#[test]
fn null_placement_follows_sort_key_flags() {
    let a = [Value::Null];
    let b = [Value::Int(1)];
    let key = |descending, nulls_first| {
        [SortKey {
            column: 0,
            descending,
            nulls_first,
        }]
    };
    assert_eq!(compare_keys(&a, &b, &key(false, false)), Ordering::Greater);
    assert_eq!(compare_keys(&a, &b, &key(false, true)), Ordering::Less);
    assert_eq!(compare_keys(&a, &b, &key(true, true)), Ordering::Less);
    assert_eq!(compare_keys(&a, &b, &key(true, false)), Ordering::Greater);
    assert_eq!(
        compare_keys(&[Value::Int(2)], &b, &key(true, true)),
        Ordering::Less
    );
}

fn int_merge(shards: usize) -> KWayMerge {
    let key = SortKey {
        column: 0,
        descending: false,
        nulls_first: false,
    };
    KWayMerge::new(vec![text(23), text(25)], vec![key], shards)
}

#[test]
fn kway_waits_for_every_shard_and_breaks_ties_by_shard() {
    let mut m = int_merge(2);
    assert_eq!(m.needs(), Some(0));
    m.push(0, vec![cell("1"), cell("s0")]).expect("push");
    assert_eq!(m.pop(), None, "shard 1 has not spoken yet");
    assert_eq!(m.needs(), Some(1));
    m.push(1, vec![cell("1"), cell("s1")]).expect("push");
    assert_eq!(m.pop(), Some(vec![cell("1"), cell("s0")]));
    assert_eq!(m.needs(), Some(0));
    m.finish(0);
    assert_eq!(m.pop(), Some(vec![cell("1"), cell("s1")]));
    assert!(!m.is_done());
    m.finish(1);
    assert_eq!(m.pop(), None);
    assert!(m.is_done());
}

#[test]
fn kway_refuses_unsorted_input_overfull_batches_and_bad_shards() {
    let mut m = int_merge(2).with_batch_limit(2);
    m.push(0, vec![cell("5"), None]).expect("push");
    assert!(matches!(
        m.push(0, vec![cell("4"), None]),
        Err(MergeError::Unsorted(0))
    ));
    m.push(0, vec![cell("6"), None]).expect("push");
    assert!(matches!(
        m.push(0, vec![cell("7"), None]),
        Err(MergeError::BatchFull(0))
    ));
    assert!(matches!(
        m.push(2, vec![cell("7"), None]),
        Err(MergeError::BadShard(2))
    ));
    assert!(matches!(
        m.push(1, vec![cell("x"), None]),
        Err(MergeError::Malformed { .. })
    ));
    assert!(matches!(
        m.push(1, vec![cell("1")]),
        Err(MergeError::ColumnCount { .. })
    ));
    m.finish(1);
    assert!(matches!(
        m.push(1, vec![cell("1"), None]),
        Err(MergeError::BadShard(1))
    ));
}

#[test]
fn ungrouped_aggregates_over_nothing_give_one_row() {
    let cols = vec![text(20), text(20), text(1700), text(23)];
    let agg = |kind, c, arg| {
        Output::Agg(AggSpec {
            kind,
            shard_columns: vec![c],
            arg_type: arg,
        })
    };
    let outputs = vec![
        agg(AggKind::CountStar, 0, 0),
        agg(AggKind::Sum, 2, 20),
        Output::Agg(AggSpec {
            kind: AggKind::Avg,
            shard_columns: vec![2, 1],
            arg_type: 1700,
        }),
        agg(AggKind::Min, 3, 23),
    ];
    let merge = GroupMerge::new(cols, vec![], outputs).expect("plan");
    let (columns, rows) = merge.finish().expect("finish");
    let oids: Vec<u32> = columns.iter().map(|c| c.type_oid).collect();
    assert_eq!(oids, [20, 1700, 1700, 23]);
    assert_eq!(rows, vec![vec![cell("0"), None, None, None]]);
}

#[test]
fn aggregate_plans_are_checked_against_shard_types() {
    let agg = |kind, arg| {
        Output::Agg(AggSpec {
            kind,
            shard_columns: vec![0],
            arg_type: arg,
        })
    };
    // sum(int4) must arrive as int8.
    assert!(GroupMerge::new(vec![text(23)], vec![], vec![agg(AggKind::Sum, 23)]).is_err());
    assert!(GroupMerge::new(vec![text(20)], vec![], vec![agg(AggKind::Sum, 23)]).is_ok());
    // No exact rule for sum(interval) or min(json).
    assert!(GroupMerge::new(vec![text(1186)], vec![], vec![agg(AggKind::Sum, 1186)]).is_err());
    assert!(GroupMerge::new(vec![text(114)], vec![], vec![agg(AggKind::Min, 114)]).is_err());
    assert_eq!(result_type(&AggKind::Avg, 700), Some(701));
    assert!(order_sensitive(&AggKind::Sum, 701) && !order_sensitive(&AggKind::Sum, 1700));
}

#[test]
fn sums_overflow_like_postgresql() {
    let agg = |kind, arg| {
        Output::Agg(AggSpec {
            kind,
            shard_columns: vec![0],
            arg_type: arg,
        })
    };
    let mut m = GroupMerge::new(vec![text(20)], vec![], vec![agg(AggKind::Sum, 23)]).expect("plan");
    m.push(vec![cell("9223372036854775807")]).expect("push");
    let err = m.push(vec![cell("1")]).expect_err("overflow");
    assert_eq!(err.sqlstate(), "22003");
    let mut m =
        GroupMerge::new(vec![text(701)], vec![], vec![agg(AggKind::Sum, 701)]).expect("plan");
    m.push(vec![cell("1.7976931348623157e+308")]).expect("push");
    assert!(m.push(vec![cell("1.7976931348623157e+308")]).is_err());
    // Infinity in, Infinity out: not an overflow.
    let mut m =
        GroupMerge::new(vec![text(701)], vec![], vec![agg(AggKind::Sum, 701)]).expect("plan");
    m.push(vec![cell("Infinity")]).expect("push");
    m.push(vec![cell("1")]).expect("push");
    assert_eq!(m.finish().expect("finish").1, vec![vec![cell("Infinity")]]);
}

#[test]
fn min_and_max_keep_original_bytes_and_later_ties() {
    let cols = vec![text(1700)];
    let outputs = vec![
        Output::Agg(AggSpec {
            kind: AggKind::Min,
            shard_columns: vec![0],
            arg_type: 1700,
        }),
        Output::Agg(AggSpec {
            kind: AggKind::Max,
            shard_columns: vec![0],
            arg_type: 1700,
        }),
    ];
    let mut m = GroupMerge::new(cols, vec![], outputs).expect("plan");
    m.push(vec![cell("1.0")]).expect("push");
    m.push(vec![cell("1.000")]).expect("push");
    // numeric_smaller/larger keep the state only when strictly better.
    assert_eq!(
        m.finish().expect("finish").1,
        vec![vec![cell("1.000"), cell("1.000")]]
    );
}

#[test]
fn having_uses_three_valued_logic() {
    let row = [Value::Int(5), Value::Null];
    let gt = |c, v| Pred::Cmp(Operand::Column(c), CmpOp::Gt, Operand::Const(Value::Int(v)));
    assert_eq!(eval(&gt(0, 3), &row).expect("eval"), Some(true));
    assert_eq!(eval(&gt(1, 3), &row).expect("eval"), None);
    let and = Pred::And(Box::new(gt(0, 9)), Box::new(gt(1, 3)));
    assert_eq!(eval(&and, &row).expect("eval"), Some(false));
    let or = Pred::Or(Box::new(gt(0, 3)), Box::new(gt(1, 3)));
    assert_eq!(eval(&or, &row).expect("eval"), Some(true));
    let not = Pred::Not(Box::new(gt(1, 3)));
    assert_eq!(eval(&not, &row).expect("eval"), None);
    assert_eq!(
        eval(&Pred::IsNull(Operand::Column(1), true), &row).expect("eval"),
        Some(true)
    );
    let mixed = Pred::Cmp(
        Operand::Column(0),
        CmpOp::Eq,
        Operand::Const(Value::Text(b"5".to_vec())),
    );
    assert!(eval(&mixed, &row).is_err());
    assert!(eval(&gt(7, 1), &row).is_err());
}

#[test]
fn distinct_uses_type_equality() {
    let mut d = Distinct::new(vec![text(1700), text(701)]);
    assert!(d.insert(&vec![cell("1.0"), cell("-0")]).expect("insert"));
    assert!(!d.insert(&vec![cell("1.00"), cell("0")]).expect("insert"));
    assert!(d.insert(&vec![cell("1.01"), cell("0")]).expect("insert"));
    assert!(d.insert(&vec![None, cell("NaN")]).expect("insert"));
    assert!(!d.insert(&vec![None, cell("NaN")]).expect("insert"));
}

#[test]
fn numeric_text_and_binary_forms() {
    let n = Numeric::parse_text(b"-12345.6789").expect("parse");
    let mut bin = Vec::new();
    n.write_binary(&mut bin).expect("binary");
    // ndigits 3, weight 1, negative, dscale 4, digits 1 2345 6789.
    assert_eq!(
        bin,
        [0, 3, 0, 1, 0x40, 0, 0, 4, 0, 1, 0x09, 0x29, 0x1A, 0x85]
    );
    assert_eq!(Numeric::parse_binary(&bin).expect("parse"), n);
    assert_eq!(
        Numeric::parse_text(b"-0.00").expect("zero").to_text(),
        "0.00"
    );
    assert_eq!(
        Numeric::from_i128(3).div_count(2).expect("div").to_text(),
        "1.5000000000000000"
    );
    assert_eq!(
        Numeric::from_i128(-5).div_count(3).expect("div").to_text(),
        "-1.6666666666666667"
    );
    assert!(Numeric::parse_text(b"1e5").is_err());
    assert!(Numeric::parse_binary(&[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10]).is_err());
}

#[test]
fn text_dates_refuse_to_be_reformatted() {
    let col = text(1082);
    let v = decode(&col, Some(b"2024-01-02")).expect("decode");
    assert!(matches!(
        encode(&col, &v, &mut Vec::new()),
        Err(MergeError::CannotFormat(1082))
    ));
    assert!(decode(&col, Some(b"01/02/2024")).is_err());
}

#[test]
fn a_column_free_output_takes_the_first_row_of_its_group() {
    // Shard columns: the constant, the group key, count(*).
    let cols = vec![text(25), text(23), text(20)];
    let outputs = vec![
        Output::Any(0),
        Output::Group(1),
        Output::Agg(AggSpec {
            kind: AggKind::CountStar,
            shard_columns: vec![2],
            arg_type: 0,
        }),
    ];
    // A group key must be grouped by; a column-free output need not.
    assert!(matches!(
        GroupMerge::new(cols.clone(), vec![], vec![Output::Group(0)]),
        Err(MergeError::NoSuchColumn(0))
    ));
    let mut m = GroupMerge::new(cols, vec![1], outputs).expect("plan");
    m.push(vec![cell("x"), cell("1"), cell("2")]).expect("push");
    m.push(vec![cell("x"), cell("2"), cell("5")]).expect("push");
    m.push(vec![cell("x"), cell("1"), cell("3")]).expect("push");
    let (columns, rows) = m.finish().expect("finish");
    assert_eq!(columns[0].type_oid, 25);
    assert_eq!(
        rows,
        vec![
            vec![cell("x"), cell("1"), cell("5")],
            vec![cell("x"), cell("2"), cell("5")]
        ]
    );
}

#[test]
fn dates_outside_the_iso_datestyle_are_refused() {
    for (oid, s) in [
        (1082, "01/02/2020"),
        (1082, "01.02.2020"),
        // The Postgres DateStyle's MM-DD-YYYY for year 15 must not read as 0001-02-15.
        (1082, "01-02-0015"),
        (1114, "01/02/2020 10:00:00"),
        (1114, "Thu Jan 02 10:00:00 2020"),
        (1184, "02.01.2020 10:00:00 NZDT"),
    ] {
        let got = decode(&text(oid), Some(s.as_bytes()));
        assert!(
            matches!(got, Err(MergeError::NotIsoDateStyle(o)) if o == oid),
            "{s}: {got:?}"
        );
        assert_eq!(MergeError::NotIsoDateStyle(oid).sqlstate(), "0A000");
    }
    assert_eq!(val(1082, "0015-01-02"), val(1082, "0015-01-02"));
    assert!(compare(&val(1082, "0015-01-02"), &val(1082, "2020-01-02")) == Ordering::Less);
}
