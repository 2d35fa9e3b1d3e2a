//! The shape cache must give exactly what a fresh analysis gives. Every corpus statement is
//! analyzed through a cache against a spec that shards the tables the regression suite uses
//! most, then a variant with every literal changed (numbers incremented, strings extended) is
//! run through the same cache, whose shape entry is then a template, and compared with a fresh
//! analysis of the variant.

mod common;

use shardgate_sql::{analyze, AnalysisCache, ShardingSpec};

fn spec() -> ShardingSpec {
    let tables = [
        ("onek", "unique1"),
        ("tenk1", "unique1"),
        ("int4_tbl", "f1"),
        ("int8_tbl", "q1"),
        ("text_tbl", "f1"),
        ("orders", "user_id"),
        ("t", "a"),
        ("tbl", "a"),
        ("foo", "f1"),
        ("test", "a"),
    ];
    let sharded: Vec<(Option<String>, String, String)> = tables
        .iter()
        .map(|(t, k)| (None, (*t).to_owned(), (*k).to_owned()))
        .collect();
    ShardingSpec::new(&sharded, &[(None, "road".to_owned())])
}

/// `stmt` with each plain number incremented and each plain '...' string extended by `x`.
fn variant(stmt: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(stmt);
    let mut out = String::with_capacity(s.len() + 16);
    let mut chars = s.char_indices().peekable();
    let bytes = s.as_bytes();
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            // A plain string: copy to its closing quote ('' stays doubled) and extend it.
            let mut j = i + 1;
            let mut closed = None;
            while j < bytes.len() {
                if bytes[j] == b'\'' {
                    if bytes.get(j + 1) == Some(&b'\'') {
                        j += 2;
                        continue;
                    }
                    closed = Some(j);
                    break;
                }
                j += 1;
            }
            let Some(end) = closed else {
                out.push_str(&s[i..]);
                break;
            };
            out.push_str(&s[i..end]);
            out.push_str("x'");
            while chars.peek().is_some_and(|(k, _)| *k <= end) {
                chars.next();
            }
        } else if c.is_ascii_digit()
            && !out
                .chars()
                .last()
                .is_some_and(|p| p.is_ascii_alphanumeric() || p == '_' || p == '$' || p == '.')
        {
            let mut end = i + 1;
            while end < bytes.len() && bytes[end].is_ascii_digit() {
                end += 1;
            }
            let next = bytes.get(end).copied();
            if matches!(next, Some(b'.' | b'e' | b'E' | b'x' | b'_'))
                || next.is_some_and(|b| b.is_ascii_alphabetic())
            {
                out.push(c);
                continue;
            }
            match s[i..end].parse::<u64>() {
                Ok(n) if n < u64::MAX / 2 => out.push_str(&(n + 7).to_string()),
                _ => out.push_str(&s[i..end]),
            }
            while chars.peek().is_some_and(|(k, _)| *k < end) {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out.into_bytes()
}

#[test]
fn cached_analyses_equal_fresh_ones() {
    let spec = spec();
    let cache = AnalysisCache::new(100_000);
    let (mut checked, mut keyed) = (0usize, 0usize);
    let mut mismatches = Vec::new();
    let ok = common::for_each_corpus_statement(|stmt| {
        let first = cache.analyze(stmt, &spec, None);
        assert_eq!(
            first,
            analyze(stmt, &spec),
            "first sight must be a fresh analysis"
        );
        let v = variant(stmt);
        let cached = cache.analyze(&v, &spec, None);
        let fresh = analyze(&v, &spec);
        checked += 1;
        if matches!(fresh.key, Some(shardgate_sql::KeyConstraint::Values(_))) {
            keyed += 1;
        }
        if cached != fresh && mismatches.len() < 10 {
            mismatches.push(format!(
                "{}\n  cached {cached:?}\n  fresh  {fresh:?}",
                String::from_utf8_lossy(&v)
            ));
        }
    });
    assert!(ok.is_some(), "the corpus in ../shared/corpus is missing");
    eprintln!("{checked} statements, {keyed} variants routed by literal or parameter keys");
    assert!(keyed > 40, "the corpus exercises keyed shapes");
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn a_shape_with_repeated_literals_is_analyzed_afresh() {
    let spec = spec();
    let cache = AnalysisCache::new(16);
    let a = b"SELECT * FROM orders WHERE user_id = 5 AND note = '5'";
    let b = b"SELECT * FROM orders WHERE user_id = 9 AND note = '5'";
    assert_eq!(cache.analyze(a, &spec, None), analyze(a, &spec));
    assert_eq!(cache.analyze(b, &spec, None), analyze(b, &spec));
    let c = b"INSERT INTO orders (user_id, note) VALUES (1, 'a'), (-2, 'it''s')";
    let d = b"INSERT INTO orders (user_id, note) VALUES (10, 'bb'), (-20, 'it''s so')";
    assert_eq!(cache.analyze(c, &spec, None), analyze(c, &spec));
    assert_eq!(cache.analyze(d, &spec, None), analyze(d, &spec));
}

/// Typical keyed statements with seeded random literals: each shape is analyzed fresh once and
/// from its template afterwards, and every result must equal a fresh analysis.
#[test]
fn generated_keyed_statements_match_fresh_analyses() {
    let spec = spec();
    let cache = AnalysisCache::new(1024);
    let shapes: &[&str] = &[
        "SELECT * FROM orders WHERE user_id = {n}",
        "SELECT note FROM orders o WHERE o.user_id = {n} AND note <> {s}",
        "SELECT * FROM orders WHERE user_id = -{n}",
        "SELECT * FROM orders WHERE user_id = {s}::bigint",
        "SELECT * FROM orders WHERE user_id IN ({n}, {n}, -{n})",
        "SELECT * FROM orders WHERE (user_id = {n}) AND total > {n}",
        "UPDATE orders SET total = total + {n} WHERE user_id = {n}",
        "UPDATE orders SET note = {s} WHERE user_id = {n} RETURNING *",
        "DELETE FROM orders WHERE user_id = {n} AND note = {s}",
        "INSERT INTO orders (user_id, note) VALUES ({n}, {s})",
        "INSERT INTO orders (note, user_id) VALUES ({s}, {n}), ({s}, -{n}), ({s}, {n})",
        "INSERT INTO orders (user_id, note) VALUES ({n}, {s}) ON CONFLICT DO NOTHING",
        "SELECT * FROM t WHERE a = {s} AND b = $1",
        "SELECT * FROM t JOIN orders o ON o.user_id = t.a WHERE t.a = {n} AND o.user_id = {n}",
        "SELECT * FROM tbl WHERE a = $${s_raw}$$",
        "UPDATE orders SET user_id = {n} WHERE user_id = {n}",
    ];
    let mut seed: u64 = 0x5eed;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut checked = 0;
    for round in 0..150 {
        for shape in shapes {
            let mut sql = String::new();
            let mut rest = *shape;
            while let Some(i) = rest.find('{') {
                sql.push_str(&rest[..i]);
                let end = rest[i..].find('}').map_or(rest.len(), |e| i + e + 1);
                let r = next();
                match &rest[i..end] {
                    "{n}" => sql.push_str(&(r % [10, 1000, 1_000_000_007][round % 3]).to_string()),
                    "{s}" => {
                        let words = ["a", "it''s", "42", "O''Brien", "x y", "007", "-5", "é"];
                        sql.push_str(&format!("'{}'", words[(r % 8) as usize]));
                    }
                    "{s_raw}" => sql.push_str(["k1", "42", "x'y"][(r % 3) as usize]),
                    other => sql.push_str(other),
                }
                rest = &rest[end..];
            }
            sql.push_str(rest);
            let cached = cache.analyze(sql.as_bytes(), &spec, None);
            let fresh = analyze(sql.as_bytes(), &spec);
            assert_eq!(cached, fresh, "{sql}");
            checked += 1;
        }
    }
    assert_eq!(checked, 150 * shapes.len());
    // Most of them came from templates, not from a parse each.
    assert!(
        cache.template_hits() > (checked as u64) / 2,
        "{} template hits of {checked}",
        cache.template_hits()
    );
}

/// Where the key's constraints were merged, the result depends on which literal values are
/// equal: such shapes are analyzed afresh every time.
#[test]
fn merged_key_constraints_are_never_templated() {
    let spec = spec();
    let cache = AnalysisCache::new(16);
    for (first, second) in [
        (
            "SELECT * FROM orders WHERE user_id IN ($1, 5) AND user_id IN ($1, 6)",
            "SELECT * FROM orders WHERE user_id IN ($1, 7) AND user_id IN ($1, 7)",
        ),
        (
            "SELECT * FROM orders WHERE user_id IN (1, 2) AND user_id = 3",
            "SELECT * FROM orders WHERE user_id IN (4, 5) AND user_id = 4",
        ),
    ] {
        assert_eq!(
            cache.analyze(first.as_bytes(), &spec, None),
            analyze(first.as_bytes(), &spec)
        );
        assert_eq!(
            cache.analyze(second.as_bytes(), &spec, None),
            analyze(second.as_bytes(), &spec),
            "{second}"
        );
    }
    assert_eq!(cache.template_hits(), 0);
    // The verdict passed in wins on a template hit too.
    let a = b"SELECT * FROM orders WHERE user_id = 1";
    let b = b"SELECT * FROM orders WHERE user_id = 2";
    cache.analyze(a, &spec, Some(true));
    assert!(!cache.analyze(b, &spec, Some(false)).write);
    assert_eq!(cache.template_hits(), 1);
}
