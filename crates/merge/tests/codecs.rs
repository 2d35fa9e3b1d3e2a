//! Value codecs against a real PostgreSQL 15: float text output, numeric text/binary
//! round trips, and numeric division (what avg does) for a wide range of operands.

mod support;

use bytes::Bytes;
use shardgate_merge::*;
use support::*;

fn cell(rows: &[Row], i: usize) -> &[u8] {
    rows[i][0].as_deref().unwrap_or_default()
}

#[tokio::test(flavor = "current_thread")]
async fn float_output_matches_postgresql() {
    let (_topology, client) = server().await;
    for seed in [0xf10a7, 0xbeef, 0x1234_5678] {
        check_floats(&client, seed).await;
    }
}

async fn check_floats(client: &tokio_postgres::Client, seed: u64) {
    let mut rng = Rng(seed);
    let mut f8 = Vec::new();
    let mut f4 = Vec::new();
    while f8.len() < 20_000 {
        let bits = rng.next();
        // Mix raw bit patterns with short decimals, whose shortest form has few digits.
        let v = if rng.chance(30) {
            (rng.below(2_000_001) as f64 - 1_000_000.0) / 10f64.powi(rng.below(12) as i32)
                * 10f64.powi(rng.below(30) as i32 - 10)
        } else {
            f64::from_bits(bits)
        };
        if v.is_finite() {
            f8.push(v);
        }
        let w = if rng.chance(30) {
            v as f32
        } else {
            f32::from_bits(bits as u32)
        };
        if w.is_finite() {
            f4.push(w);
        }
    }
    f8.extend([
        0.0,
        -0.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MIN_POSITIVE,
    ]);
    f4.extend([
        0.0,
        -0.0,
        f32::NAN,
        f32::INFINITY,
        f32::MAX,
        f32::MIN_POSITIVE,
    ]);
    let lit8: Vec<String> = f8.iter().map(|v| format!("'{v:e}'")).collect();
    let lit4: Vec<String> = f4.iter().map(|v| format!("'{v:e}'")).collect();
    for (oid, lits, sqltype) in [(701u32, &lit8, "float8"), (700, &lit4, "float4")] {
        let sql = format!(
            "SELECT x::{sqltype} FROM unnest(ARRAY[{}]::text[]) WITH ORDINALITY AS u(x, o) ORDER BY o",
            lits.join(",")
        );
        let [(tcols, trows), (bcols, brows)] = both(client, &sql).await;
        assert_eq!(tcols[0].type_oid, oid);
        assert_eq!(trows.len(), lits.len());
        for (i, lit) in lits.iter().enumerate() {
            let tv = decode(&tcols[0], Some(cell(&trows, i))).expect("text");
            let bv = decode(&bcols[0], Some(cell(&brows, i))).expect("binary");
            assert_eq!(compare(&tv, &bv), std::cmp::Ordering::Equal, "{lit}");
            for (col, rows) in [(tcols[0], &trows), (bcols[0], &brows)] {
                let mut out = Vec::new();
                encode(&col, &bv, &mut out).expect("encode");
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(cell(rows, i)),
                    "{sqltype} {lit} format {}",
                    col.format
                );
            }
        }
    }
}

fn numeric_literal(rng: &mut Rng) -> String {
    match rng.below(30) {
        0 => return "NaN".into(),
        1 => return "Infinity".into(),
        2 => return "-Infinity".into(),
        _ => {}
    }
    let mut s = String::new();
    if rng.chance(50) {
        s.push('-');
    }
    let int_digits = rng.below(40);
    for _ in 0..int_digits {
        s.push_str(&rng.below(10).to_string());
    }
    if int_digits == 0 || rng.chance(20) {
        s.push('0');
    }
    if rng.chance(70) {
        s.push('.');
        let zeros = if rng.chance(30) { rng.below(12) } else { 0 };
        for _ in 0..zeros {
            s.push('0');
        }
        for _ in 0..rng.below(25) {
            s.push_str(&rng.below(10).to_string());
        }
    }
    s
}

#[tokio::test(flavor = "current_thread")]
async fn numeric_codec_and_division_match_postgresql() {
    let (_topology, client) = server().await;
    let mut rng = Rng(0x0ddba11);
    let lits: Vec<String> = (0..1500).map(|_| numeric_literal(&mut rng)).collect();
    let counts: Vec<i64> = (0..lits.len())
        .map(|_| match rng.below(4) {
            0 => rng.below(10) as i64 + 1,
            1 => rng.below(100_000) as i64 + 1,
            2 => rng.below(i64::MAX as u64) as i64 + 1,
            _ => 3,
        })
        .collect();
    let values: Vec<String> = lits
        .iter()
        .zip(&counts)
        .enumerate()
        .map(|(i, (l, c))| format!("({i}, '{l}'::numeric, {c}::int8)"))
        .collect();
    // Division the way numeric_avg finishes: numeric_div(sum, count::numeric).
    let sql = format!(
        "SELECT x, x / c::numeric, x + x, c FROM (VALUES {}) AS v(o, x, c) ORDER BY o",
        values.join(",")
    );
    let [(tcols, trows), (bcols, brows)] = both(&client, &sql).await;
    for i in 0..trows.len() {
        let tv = decode(&tcols[0], trows[i][0].as_deref()).expect("text");
        let bv = decode(&bcols[0], brows[i][0].as_deref()).expect("binary");
        assert_eq!(tv, bv, "{}", lits[i]);
        let Value::Numeric(x) = &bv else {
            panic!("not numeric")
        };
        let quotient = Value::Numeric(x.div_count(counts[i]).expect("div"));
        let doubled = Value::Numeric(x.add(x).expect("add"));
        for (col, rows) in [(tcols[0], &trows), (bcols[0], &brows)] {
            for (j, v) in [(0, &bv), (1, &quotient), (2, &doubled)] {
                let mut out = Vec::new();
                encode(&col, v, &mut out).expect("encode");
                assert_eq!(
                    Some(Bytes::from(out)),
                    rows[i][j],
                    "{} column {j} format {}",
                    lits[i],
                    col.format
                );
            }
        }
    }
}
