//! The seeded rows both servers hold: table `ev` with one column of each type the merge must
//! order and aggregate exactly, NULLs in every nullable column, duplicates (values drawn again
//! from a small pool per column), negatives, numerics of varied scale, NaN and ±Infinity floats,
//! and text with mixed case, unicode and quotes.
//!
//! Equal values always have the same text (no `-0`, no numeric trailing zeros): a group or a
//! DISTINCT value that two spellings share would let PostgreSQL print either one, and the
//! comparison would then flag a difference that is not one.

/// A small deterministic generator (SplitMix64), so a failing case can be replayed by seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + i64::try_from(self.below(u64::try_from(hi - lo + 1).expect("range"))).expect("fits")
    }

    /// True with probability `pct`%.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[usize::try_from(self.below(items.len() as u64)).expect("small")]
    }
}

/// The table, created through shardgate on the shards and directly on the reference.
pub const SCHEMA: &str = "CREATE TABLE ev (id bigint PRIMARY KEY, g int, i2 smallint, i4 int, \
    i8 bigint, n numeric, f4 real, f8 double precision, b bool, d date, ts timestamp, \
    tz timestamptz, u uuid, t text, v varchar(20))";

/// Every column of `ev` in order.
pub const COLUMNS: [&str; 15] = [
    "id", "g", "i2", "i4", "i8", "n", "f4", "f8", "b", "d", "ts", "tz", "u", "t", "v",
];

/// Characters text values are made of: mixed case, accents, CJK, an emoji, a quote.
const ALPHABET: [&str; 16] = [
    "a", "B", "z", "Z", "é", "É", "ß", "日", "本", "😀", " ", "'", "0", "9", "-", "_",
];

/// An SQL literal for text (quotes doubled).
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn text(rng: &mut Rng, max: u64) -> String {
    let len = rng.below(max + 1);
    (0..len).map(|_| *rng.pick(&ALPHABET)).collect()
}

fn numeric(rng: &mut Rng) -> String {
    if rng.chance(2) {
        return "'NaN'".into();
    }
    let int_len = rng.below(16);
    let mut s = String::new();
    if rng.chance(40) {
        s.push('-');
    }
    if int_len == 0 {
        s.push('0');
    } else {
        s.push_str(&rng.range(1, 9).to_string());
        for _ in 1..int_len {
            s.push_str(&rng.below(10).to_string());
        }
    }
    let scale = rng.below(9);
    if scale > 0 {
        s.push('.');
        for _ in 1..scale {
            s.push_str(&rng.below(10).to_string());
        }
        // Never a trailing zero: equal values keep one spelling.
        s.push_str(&rng.range(1, 9).to_string());
    }
    if s == "-0" {
        s = "0".into();
    }
    s
}

fn float(rng: &mut Rng, single: bool) -> String {
    match rng.below(20) {
        0 => "'NaN'".into(),
        1 => "'Infinity'".into(),
        2 => "'-Infinity'".into(),
        3 => "0".into(),
        _ => {
            let mantissa = rng.range(-999_999, 999_999);
            let exp = rng.range(-30, 30);
            if mantissa == 0 {
                return "1".into();
            }
            if single {
                format!("{}e{}", mantissa, exp.clamp(-30, 25))
            } else {
                format!("{mantissa}e{exp}")
            }
        }
    }
}

fn date(rng: &mut Rng) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        rng.range(1900, 2100),
        rng.range(1, 12),
        rng.range(1, 28)
    )
}

fn time(rng: &mut Rng) -> String {
    let frac = match rng.below(3) {
        0 => String::new(),
        1 => format!(".{:03}", rng.range(1, 999)),
        _ => format!(".{:06}", rng.range(1, 999_999)),
    };
    format!(
        "{:02}:{:02}:{:02}{frac}",
        rng.below(24),
        rng.below(60),
        rng.below(60)
    )
}

fn uuid(rng: &mut Rng) -> String {
    let (a, b) = (rng.next(), rng.next());
    format!(
        "'{:08x}-{:04x}-{:04x}-{:04x}-{:012x}'",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// A fresh literal for column `c` (never NULL).
fn fresh(rng: &mut Rng, c: usize) -> String {
    match COLUMNS[c] {
        "g" => rng.range(0, 6).to_string(),
        "i2" => rng.range(-300, 300).to_string(),
        "i4" => match rng.below(10) {
            0 => i32::MIN.to_string(),
            1 => i32::MAX.to_string(),
            _ => rng.range(-100_000, 100_000).to_string(),
        },
        "i8" => match rng.below(12) {
            0 => i64::MIN.to_string(),
            1 => i64::MAX.to_string(),
            2..=5 => rng.range(-1000, 1000).to_string(),
            _ => ((rng.next() >> 8) as i64 - (1 << 55)).to_string(),
        },
        "n" => numeric(rng),
        "f4" => float(rng, true),
        "f8" => float(rng, false),
        "b" => (rng.chance(50)).to_string(),
        "d" => match rng.below(40) {
            0 => "'infinity'".into(),
            1 => "'-infinity'".into(),
            _ => quote(&date(rng)),
        },
        "ts" => quote(&format!("{} {}", date(rng), time(rng))),
        "tz" => {
            let zone = *rng.pick(&["+00", "-08", "+05:30", "+13:45", "-03:30", "Z"]);
            quote(&format!("{} {}{zone}", date(rng), time(rng)))
        }
        "u" => uuid(rng),
        "t" => quote(&text(rng, 8)),
        "v" => quote(&text(rng, 20)),
        other => unreachable!("column {other}"),
    }
}

/// `n` rows, each the text of a VALUES tuple, ids unique (negatives included).
pub fn rows(seed: u64, n: usize) -> Vec<String> {
    let mut rng = Rng::new(seed);
    // Per column, a pool of values rows draw again: duplicates in every sort column.
    let pools: Vec<Vec<String>> = (0..COLUMNS.len())
        .map(|c| {
            if c == 0 {
                Vec::new()
            } else {
                (0..6).map(|_| fresh(&mut rng, c)).collect()
            }
        })
        .collect();
    let base = -i64::try_from(n / 3).expect("small");
    (0..n)
        .map(|i| {
            let id = (base + i64::try_from(i).expect("small")) * 7;
            let mut vals = vec![id.to_string()];
            for (c, pool) in pools.iter().enumerate().skip(1) {
                vals.push(match rng.below(100) {
                    0..=7 => "NULL".into(),
                    8..=37 => rng.pick(pool).clone(),
                    _ => fresh(&mut rng, c),
                });
            }
            format!("({})", vals.join(", "))
        })
        .collect()
}

/// Multi-row INSERTs of `chunk` rows each into `table (columns)` (through shardgate each is
/// split by shard; the key must be among the named columns).
pub fn inserts(table: &str, columns: &str, rows: &[String], chunk: usize) -> Vec<String> {
    rows.chunks(chunk)
        .map(|c| format!("INSERT INTO {table} ({columns}) VALUES {}", c.join(", ")))
        .collect()
}
