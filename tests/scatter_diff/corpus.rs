//! The query corpus, generated from templates over table `ev`: concatenation, ORDER BY over
//! every sortable type (ASC/DESC, NULLS FIRST/LAST, by name, alias or position, keys outside
//! the select list), LIMIT/OFFSET as literals and as `$n`, aggregates with and without GROUP BY,
//! HAVING, DISTINCT and WHERE filters. Each query says what its ORDER BY fixes, so the
//! comparison never blames shardgate for an order PostgreSQL itself leaves open: with a LIMIT or
//! a sort key outside the select list, `id` is added as the last key to make the order total.

use super::compare::{Order, Param, Query};
use super::data::Rng;

/// Columns the merge must sort exactly (every column of `ev`).
pub const SORTABLE: [&str; 15] = [
    "id", "g", "i2", "i4", "i8", "n", "f4", "f8", "b", "d", "ts", "tz", "u", "t", "v",
];
/// Arguments of sum/avg whose merge must be exact.
pub const SUMMABLE: [&str; 4] = ["i2", "i4", "i8", "n"];
/// Arguments of min/max (PostgreSQL has none for uuid and bool).
pub const ORDERED: [&str; 13] = [
    "id", "g", "i2", "i4", "i8", "n", "f4", "f8", "d", "ts", "tz", "t", "v",
];
/// Group keys of several types.
pub const GROUPABLE: [&str; 9] = ["g", "b", "i2", "d", "t", "u", "v", "n", "f8"];

/// WHERE filters without parameters ("" for none); the last one matches no row.
pub const FILTERS: [&str; 13] = [
    "",
    "WHERE i4 > 0",
    "WHERE g IS NULL",
    "WHERE b",
    "WHERE NOT b OR b IS NULL",
    "WHERE t LIKE 'a%' OR t >= 'é'",
    "WHERE n BETWEEN -1000 AND 1000.5",
    "WHERE f8 < 0",
    "WHERE d >= '2000-01-01' AND tz < '2050-01-01 00:00+00'",
    "WHERE u::text < '8'",
    "WHERE id % 5 = 0",
    "WHERE i2 < -100 AND i8 > 0",
    "WHERE id < -100000000",
];

/// One sort key as the client writes it.
#[derive(Debug, Clone)]
pub struct Key {
    pub col: &'static str,
    /// 0: default, 1: ASC, 2: DESC.
    pub dir: u8,
    /// 0: default, 1: NULLS FIRST, 2: NULLS LAST.
    pub nulls: u8,
}

impl Key {
    pub fn random(rng: &mut Rng, col: &'static str) -> Key {
        Key {
            col,
            dir: u8::try_from(rng.below(3)).expect("small"),
            nulls: u8::try_from(rng.below(3)).expect("small"),
        }
    }

    fn suffix(&self) -> String {
        let dir = ["", " ASC", " DESC"][usize::from(self.dir)];
        let nulls = ["", " NULLS FIRST", " NULLS LAST"][usize::from(self.nulls)];
        format!("{dir}{nulls}")
    }
}

/// LIMIT/OFFSET of a query: literals, or `$n` parameters.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub limit: Option<u64>,
    pub offset: Option<u64>,
    pub params: bool,
    /// `FETCH FIRST n ROWS ONLY` instead of LIMIT (literals only).
    pub fetch: bool,
}

impl Limit {
    pub fn random(rng: &mut Rng) -> Option<Limit> {
        if rng.chance(40) {
            return None;
        }
        let limit = rng
            .chance(85)
            .then(|| *rng.pick(&[0, 1, 3, 10, 37, 200, 5000]));
        let offset = rng.chance(50).then(|| *rng.pick(&[0, 1, 5, 99, 4000]));
        Some(Limit {
            limit,
            offset,
            params: rng.chance(40),
            fetch: rng.chance(15),
        })
    }
}

/// Text of a query being built, in both forms, with its parameters.
#[derive(Debug, Default)]
struct Text {
    simple: String,
    ext: String,
    params: Vec<Param>,
}

impl Text {
    fn push(&mut self, s: &str) {
        self.simple.push_str(s);
        self.ext.push_str(s);
    }

    /// A value that is a `$n` in the extended form and `literal` in the simple one.
    fn param(&mut self, literal: &str, p: Param) {
        self.params.push(p);
        self.simple.push_str(literal);
        self.ext.push_str(&format!("${}", self.params.len()));
    }

    fn filter(&mut self, filter: &str, param: Option<(&str, &str, Param)>) {
        match param {
            Some((before, literal, p)) => {
                self.push(" ");
                self.push(before);
                self.param(literal, p);
            }
            None if !filter.is_empty() => {
                self.push(" ");
                self.push(filter);
            }
            None => {}
        }
    }

    fn limit(&mut self, l: Option<Limit>) {
        let Some(l) = l else { return };
        if l.fetch && !l.params {
            if let Some(o) = l.offset {
                self.push(&format!(" OFFSET {o} ROWS"));
            }
            if let Some(n) = l.limit {
                self.push(&format!(" FETCH FIRST {n} ROWS ONLY"));
            }
            return;
        }
        if let Some(n) = l.limit {
            self.push(" LIMIT ");
            if l.params {
                self.param(&n.to_string(), Param::I64(i64::try_from(n).expect("small")));
            } else {
                self.push(&n.to_string());
            }
        }
        if let Some(o) = l.offset {
            self.push(" OFFSET ");
            if l.params {
                self.param(&o.to_string(), Param::I64(i64::try_from(o).expect("small")));
            } else {
                self.push(&o.to_string());
            }
        }
    }

    fn done(self, cat: &'static str, order: Order) -> Query {
        Query {
            cat,
            simple: self.simple,
            ext: self.ext,
            params: self.params,
            order,
        }
    }
}

/// A random filter: one of [`FILTERS`], or a parameterised one.
pub fn random_filter(rng: &mut Rng) -> (&'static str, Option<(&'static str, String, Param)>) {
    match rng.below(8) {
        0 => {
            let v = rng.range(-5000, 5000);
            let p = Param::I32(i32::try_from(v).expect("small"));
            ("", Some(("WHERE i4 > ", v.to_string(), p)))
        }
        1 => {
            let s = (*rng.pick(&["a", "B", "é", "Z", "日"])).to_owned();
            ("", Some(("WHERE t >= ", format!("'{s}'"), Param::Text(s))))
        }
        2 => {
            let v = rng.range(2, 9);
            ("", Some(("WHERE id % 11 < ", v.to_string(), Param::I64(v))))
        }
        _ => (*rng.pick(&FILTERS), None),
    }
}

fn apply_filter(t: &mut Text, f: &(&'static str, Option<(&'static str, String, Param)>)) {
    let p = f.1.as_ref().map(|(b, l, p)| (*b, l.as_str(), p.clone()));
    t.filter(f.0, p);
}

/// `SELECT <cols> FROM ev [WHERE] ORDER BY <keys> [LIMIT/OFFSET]`, each key referenced by
/// name, alias or position at random; `id` is appended to make the order total when ties
/// would make the answer itself (LIMIT) or its check (hidden keys) ambiguous.
pub fn order_query(
    rng: &mut Rng,
    cat: &'static str,
    cols: &[&'static str],
    mut keys: Vec<Key>,
    filter: &(&'static str, Option<(&'static str, String, Param)>),
    limit: Option<Limit>,
) -> Query {
    let aliased: Vec<bool> = cols.iter().map(|_| rng.chance(25)).collect();
    let hidden = keys.iter().any(|k| !cols.contains(&k.col));
    let total = keys.iter().any(|k| k.col == "id");
    let all_keys = cols.iter().all(|c| keys.iter().any(|k| k.col == *c));
    if !total && !all_keys && (hidden || limit.is_some()) {
        keys.push(Key::random(rng, "id"));
    }
    let mut t = Text::default();
    let items: Vec<String> = cols
        .iter()
        .zip(&aliased)
        .map(|(c, a)| {
            if *a {
                format!("{c} AS k_{c}")
            } else {
                (*c).to_owned()
            }
        })
        .collect();
    t.push(&format!("SELECT {} FROM ev", items.join(", ")));
    apply_filter(&mut t, filter);
    let refs: Vec<String> = keys
        .iter()
        .map(|k| {
            let r = match cols.iter().position(|c| *c == k.col) {
                Some(p) => match rng.below(3) {
                    0 => (p + 1).to_string(),
                    1 if aliased[p] => format!("k_{}", k.col),
                    _ => k.col.to_owned(),
                },
                None => k.col.to_owned(),
            };
            format!("{r}{}", k.suffix())
        })
        .collect();
    t.push(&format!(" ORDER BY {}", refs.join(", ")));
    t.limit(limit);
    let exact =
        keys.iter().any(|k| k.col == "id") || cols.iter().all(|c| keys.iter().any(|k| k.col == *c));
    let order = if exact {
        Order::Exact
    } else {
        Order::Keys(
            keys.iter()
                .filter_map(|k| cols.iter().position(|c| *c == k.col))
                .collect(),
        )
    };
    t.done(cat, order)
}

/// An aggregate call over `ev` and its output name.
pub fn random_agg(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => "count(*)".into(),
        1 => format!("count({})", rng.pick(&SORTABLE)),
        2 => format!("sum({})", rng.pick(&SUMMABLE)),
        3 => format!("avg({})", rng.pick(&SUMMABLE)),
        4 => format!("min({})", rng.pick(&ORDERED)),
        5 => format!("max({})", rng.pick(&ORDERED)),
        6 => "bool_and(b)".into(),
        _ => "bool_or(b)".into(),
    }
}

/// A HAVING condition over aggregates and the group keys `keys`: comparisons with constants
/// combined by AND/OR/NOT.
pub fn random_having(rng: &mut Rng, keys: &[&'static str], depth: u32) -> String {
    if depth < 2 && rng.chance(45) {
        let a = random_having(rng, keys, depth + 1);
        let b = random_having(rng, keys, depth + 1);
        return match rng.below(3) {
            0 => format!("({a} AND {b})"),
            1 => format!("({a} OR {b})"),
            _ => format!("NOT ({a})"),
        };
    }
    let op = *rng.pick(&["=", "<>", "<", "<=", ">", ">="]);
    let key_cmp = |k: &str| -> Option<&'static str> {
        Some(match k {
            "g" => "3",
            "i2" => "0",
            "d" => "'2000-01-01'",
            "t" | "v" => "'a'",
            "n" => "1.5",
            "f8" => "0",
            "b" => "true",
            _ => return None,
        })
    };
    if !keys.is_empty() && rng.chance(30) {
        let k = *rng.pick(keys);
        if let Some(c) = key_cmp(k) {
            return format!("{k} {op} {c}");
        }
    }
    match rng.below(8) {
        0 => format!("count(*) {op} {}", rng.range(0, 40)),
        1 => format!("sum(i4) {op} {}", rng.range(-50_000, 50_000)),
        2 => format!("max(t) {op} 'a'"),
        3 => format!("min(d) {op} '1990-06-01'"),
        4 => format!("avg(i2) {op} {}", rng.range(-20, 20)),
        5 => format!("bool_or(b) {} true", rng.pick(&["=", "<>"])),
        6 => (*rng.pick(&["max(t) IS NULL", "min(i8) IS NOT NULL", "sum(n) IS NULL"])).into(),
        _ => format!("count(n) {op} {}", rng.range(0, 30)),
    }
}

/// `SELECT [keys,] aggs FROM ev [WHERE] GROUP BY keys [HAVING] [ORDER BY keys [LIMIT]]`; when
/// ordered, every group key is a sort key, so the order is total.
pub fn group_query(
    rng: &mut Rng,
    cat: &'static str,
    keys: &[&'static str],
    aggs: &[String],
    having: Option<String>,
    ordered: bool,
    limit: Option<Limit>,
) -> Query {
    let shown: Vec<&'static str> = keys
        .iter()
        .copied()
        .filter(|_| aggs.is_empty() || rng.chance(80))
        .collect();
    let mut items: Vec<String> = shown.iter().map(|k| (*k).to_owned()).collect();
    items.extend(aggs.iter().cloned());
    let mut t = Text::default();
    t.push(&format!("SELECT {} FROM ev", items.join(", ")));
    let filter = random_filter(rng);
    apply_filter(&mut t, &filter);
    if !keys.is_empty() {
        t.push(&format!(" GROUP BY {}", keys.join(", ")));
    }
    if let Some(h) = having {
        t.push(&format!(" HAVING {h}"));
    }
    if !ordered {
        return t.done(cat, Order::Set);
    }
    let mut refs = Vec::new();
    if !aggs.is_empty() && rng.chance(30) {
        // An aggregate first (by position), then the keys break its ties.
        let pos = shown.len() + 1 + usize::try_from(rng.below(aggs.len() as u64)).expect("small");
        refs.push(format!("{pos}{}", Key::random(rng, "x").suffix()));
    }
    for k in keys {
        let key = Key::random(rng, k);
        let r = match shown.iter().position(|s| s == k) {
            Some(p) if rng.chance(40) => (p + 1).to_string(),
            _ => (*k).to_owned(),
        };
        refs.push(format!("{r}{}", key.suffix()));
    }
    if !refs.is_empty() {
        t.push(&format!(" ORDER BY {}", refs.join(", ")));
    }
    t.limit(limit);
    t.done(cat, Order::Exact)
}

/// `SELECT DISTINCT cols FROM ev [WHERE] [ORDER BY every column [LIMIT]]`.
pub fn distinct_query(rng: &mut Rng, cols: &[&'static str], ordered: bool) -> Query {
    let mut t = Text::default();
    t.push(&format!("SELECT DISTINCT {} FROM ev", cols.join(", ")));
    let filter = random_filter(rng);
    apply_filter(&mut t, &filter);
    if !ordered {
        return t.done("distinct", Order::Set);
    }
    let refs: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let r = if rng.chance(50) {
                (i + 1).to_string()
            } else {
                (*c).to_owned()
            };
            format!("{r}{}", Key::random(rng, c).suffix())
        })
        .collect();
    t.push(&format!(" ORDER BY {}", refs.join(", ")));
    t.limit(Limit::random(rng));
    t.done("distinct", Order::Exact)
}

/// `n` distinct columns out of `from`.
pub fn some_cols(rng: &mut Rng, from: &[&'static str], n: usize) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    while out.len() < n.min(from.len()) {
        let c = *rng.pick(from);
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}
