//! PostgreSQL `numeric`, exactly: parse and print (text and binary), add, compare, and the
//! division `avg` performs.
//!
//! Representation: sign, an arbitrary-precision magnitude scaled by `10^dscale`, and the
//! display scale. Limits are PostgreSQL's own: a display scale above 16383 (`0x3FFF`) or a
//! binary weight outside `i16` is refused with [`MergeError::NumericLimit`]; nothing is ever
//! rounded except where PostgreSQL itself rounds (the quotient of `avg`).

use std::cmp::Ordering;

use crate::bigint::BigUint;
use crate::error::MergeError;
use crate::value::OID_NUMERIC;

/// PostgreSQL's NUMERIC_DSCALE_MAX.
const MAX_DSCALE: u32 = 0x3FFF;
/// NUMERIC_MIN_SIG_DIGITS, NUMERIC_MAX_DISPLAY_SCALE (numeric.h).
const MIN_SIG_DIGITS: i64 = 16;
const MAX_DISPLAY_SCALE: i64 = 1000;

const SIGN_POS: u16 = 0x0000;
const SIGN_NEG: u16 = 0x4000;
const SIGN_NAN: u16 = 0xC000;
const SIGN_PINF: u16 = 0xD000;
const SIGN_NINF: u16 = 0xF000;

/// An exact PostgreSQL numeric value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Numeric {
    NaN,
    Infinity,
    NegInfinity,
    /// `(-1)^neg * mag / 10^dscale`; zero is never negative.
    Finite {
        neg: bool,
        mag: BigUint,
        dscale: u32,
    },
}

fn malformed(reason: &'static str) -> MergeError {
    MergeError::Malformed {
        type_oid: OID_NUMERIC,
        reason,
    }
}

impl Numeric {
    /// An integer with display scale 0 (what `int8::numeric` gives).
    pub fn from_i128(v: i128) -> Numeric {
        Numeric::Finite {
            neg: v < 0,
            mag: BigUint::from_u128(v.unsigned_abs()),
            dscale: 0,
        }
    }

    fn finite(neg: bool, mag: BigUint, dscale: u32) -> Result<Numeric, MergeError> {
        if dscale > MAX_DSCALE {
            return Err(MergeError::NumericLimit("display scale above 16383"));
        }
        let neg = neg && !mag.is_zero();
        Ok(Numeric::Finite { neg, mag, dscale })
    }

    /// Parses numeric_out's text: `[-]digits[.digits]`, `NaN`, `Infinity`, `-Infinity`.
    pub fn parse_text(s: &[u8]) -> Result<Numeric, MergeError> {
        match s {
            b"NaN" => return Ok(Numeric::NaN),
            b"Infinity" => return Ok(Numeric::Infinity),
            b"-Infinity" => return Ok(Numeric::NegInfinity),
            _ => {}
        }
        let (neg, body) = match s.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, s),
        };
        let (int, frac) = match body.iter().position(|&c| c == b'.') {
            Some(p) => (&body[..p], &body[p + 1..]),
            None => (body, &body[body.len()..]),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(malformed("no digits"));
        }
        if !int.iter().chain(frac).all(u8::is_ascii_digit) {
            return Err(malformed("not a decimal number"));
        }
        let dscale = u32::try_from(frac.len()).map_err(|_| malformed("too long"))?;
        let mut digits = Vec::with_capacity(int.len() + frac.len());
        digits.extend_from_slice(int);
        digits.extend_from_slice(frac);
        Numeric::finite(neg, BigUint::from_ascii_digits(&digits), dscale)
    }

    /// Parses numeric_send's binary form.
    pub fn parse_binary(b: &[u8]) -> Result<Numeric, MergeError> {
        if b.len() < 8 {
            return Err(malformed("binary numeric shorter than its header"));
        }
        let ndigits = i16::from_be_bytes([b[0], b[1]]);
        let weight = i64::from(i16::from_be_bytes([b[2], b[3]]));
        let sign = u16::from_be_bytes([b[4], b[5]]);
        let dscale = u16::from_be_bytes([b[6], b[7]]);
        let ndigits = usize::try_from(ndigits).map_err(|_| malformed("negative digit count"))?;
        if b.len() != 8 + 2 * ndigits {
            return Err(malformed(
                "binary numeric length disagrees with its digit count",
            ));
        }
        let neg = match sign {
            SIGN_POS => false,
            SIGN_NEG => true,
            SIGN_NAN => return Ok(Numeric::NaN),
            SIGN_PINF => return Ok(Numeric::Infinity),
            SIGN_NINF => return Ok(Numeric::NegInfinity),
            _ => return Err(malformed("unknown sign")),
        };
        if u32::from(dscale) > MAX_DSCALE {
            return Err(malformed("display scale above 16383"));
        }
        let mut mag = BigUint::default();
        for pair in b[8..].chunks_exact(2) {
            let d = u16::from_be_bytes([pair[0], pair[1]]);
            if d >= 10000 {
                return Err(malformed("base-10000 digit out of range"));
            }
            mag.mul_add_small(10000, u32::from(d));
        }
        // mag is value * 10^implied, with `implied` fractional decimal digits.
        let implied = 4 * (ndigits as i64 - 1 - weight);
        let dscale_i = i64::from(dscale);
        if implied <= dscale_i {
            let up =
                u32::try_from(dscale_i - implied).map_err(|_| malformed("weight too large"))?;
            mag.mul_pow10(up);
        } else {
            // Digits beyond the display scale must be zeros (PostgreSQL never sends others).
            let mut excess = implied - dscale_i;
            while excess > 0 {
                let step = excess.min(9);
                if mag.div_rem_small(10u64.pow(step as u32)) != 0 {
                    return Err(malformed("digits beyond the display scale"));
                }
                excess -= step;
            }
        }
        Numeric::finite(neg, mag, u32::from(dscale))
    }

    /// numeric_out's text.
    pub fn to_text(&self) -> String {
        let (neg, mag, dscale) = match self {
            Numeric::NaN => return "NaN".into(),
            Numeric::Infinity => return "Infinity".into(),
            Numeric::NegInfinity => return "-Infinity".into(),
            Numeric::Finite { neg, mag, dscale } => (*neg, mag, *dscale as usize),
        };
        let digits = mag.to_decimal();
        let mut padded = String::with_capacity(digits.len() + dscale + 3);
        if neg {
            padded.push('-');
        }
        let width = dscale + 1;
        for _ in digits.len()..width {
            padded.push('0');
        }
        padded.push_str(&digits);
        if dscale > 0 {
            padded.insert(padded.len() - dscale, '.');
        }
        padded
    }

    /// numeric_send's binary form.
    pub fn write_binary(&self, out: &mut Vec<u8>) -> Result<(), MergeError> {
        let (neg, mag, dscale) = match self {
            Numeric::NaN => return special(out, SIGN_NAN),
            Numeric::Infinity => return special(out, SIGN_PINF),
            Numeric::NegInfinity => return special(out, SIGN_NINF),
            Numeric::Finite { neg, mag, dscale } => (*neg, mag, *dscale),
        };
        let (weight, digits) = base10000(mag, dscale);
        let weight = i16::try_from(weight).map_err(|_| MergeError::NumericLimit("weight"))?;
        let ndigits =
            i16::try_from(digits.len()).map_err(|_| MergeError::NumericLimit("digits"))?;
        let sign = if neg && !digits.is_empty() {
            SIGN_NEG
        } else {
            SIGN_POS
        };
        let weight = if digits.is_empty() { 0 } else { weight };
        out.extend_from_slice(&ndigits.to_be_bytes());
        out.extend_from_slice(&weight.to_be_bytes());
        out.extend_from_slice(&sign.to_be_bytes());
        // dscale <= 0x3FFF by construction.
        out.extend_from_slice(&(dscale as u16).to_be_bytes());
        for d in digits {
            out.extend_from_slice(&d.to_be_bytes());
        }
        Ok(())
    }

    /// The exact sum, with PostgreSQL's rules: NaN absorbs, +Inf + -Inf = NaN, the display
    /// scale is the larger of the two.
    pub fn add(&self, other: &Numeric) -> Result<Numeric, MergeError> {
        use Numeric::*;
        Ok(match (self, other) {
            (NaN, _) | (_, NaN) | (Infinity, NegInfinity) | (NegInfinity, Infinity) => NaN,
            (Infinity, _) | (_, Infinity) => Infinity,
            (NegInfinity, _) | (_, NegInfinity) => NegInfinity,
            (
                Finite {
                    neg: an,
                    mag: am,
                    dscale: ad,
                },
                Finite {
                    neg: bn,
                    mag: bm,
                    dscale: bd,
                },
            ) => {
                let dscale = (*ad).max(*bd);
                let a = rescaled(am, *ad, dscale);
                let b = rescaled(bm, *bd, dscale);
                if an == bn {
                    Numeric::finite(*an, a.add(&b), dscale)?
                } else if a >= b {
                    Numeric::finite(*an, a.sub(&b), dscale)?
                } else {
                    Numeric::finite(*bn, b.sub(&a), dscale)?
                }
            }
        })
    }

    /// `self / count` exactly as numeric_div does for avg: select_div_scale's result scale,
    /// rounded half away from zero. `count` must be positive.
    pub fn div_count(&self, count: i64) -> Result<Numeric, MergeError> {
        let (neg, mag, dscale) = match self {
            Numeric::Finite { neg, mag, dscale } => (*neg, mag, *dscale),
            special => return Ok(special.clone()),
        };
        let divisor =
            u64::try_from(count)
                .ok()
                .filter(|&c| c > 0)
                .ok_or(MergeError::Malformed {
                    type_oid: crate::value::OID_INT8,
                    reason: "avg count is not positive",
                })?;
        let divisor_num = BigUint::from_u128(u128::from(divisor));
        let (w1, d1) = first_digit(mag, dscale);
        let (w2, d2) = first_digit(&divisor_num, 0);
        let mut qweight = w1 - w2;
        if d1 <= d2 {
            qweight -= 1;
        }
        let rscale = (MIN_SIG_DIGITS - qweight * 4)
            .max(i64::from(dscale))
            .clamp(0, MAX_DISPLAY_SCALE) as u32;
        let mut q = rescaled(mag, dscale, rscale);
        let rem = q.div_rem_small(divisor);
        if u128::from(rem) * 2 >= u128::from(divisor) {
            q.mul_add_small(1, 1);
        }
        Numeric::finite(neg, q, rscale)
    }

    /// The nearest f64 (numeric_float8 goes through the decimal string too).
    pub fn to_f64(&self) -> f64 {
        match self {
            Numeric::NaN => f64::NAN,
            Numeric::Infinity => f64::INFINITY,
            Numeric::NegInfinity => f64::NEG_INFINITY,
            // A well-formed decimal string always parses.
            finite => finite.to_text().parse().unwrap_or(f64::NAN),
        }
    }

    /// The value with trailing fractional zeros removed, for equality-keyed hashing.
    pub(crate) fn canonical_text(&self) -> String {
        let t = self.to_text();
        if let Numeric::Finite { dscale, .. } = self {
            if *dscale > 0 {
                let t = t.trim_end_matches('0').trim_end_matches('.');
                return if t == "-0" { "0".into() } else { t.into() };
            }
        }
        t
    }
}

/// numeric_send of NaN/±Infinity: the on-disk header is a short-format header, and its
/// dscale bits are read as-is, so the infinities carry dscale 32 (`0x1000 >> 7`) on the wire.
fn special(out: &mut Vec<u8>, sign: u16) -> Result<(), MergeError> {
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&((sign & 0x1F80) >> 7).to_be_bytes());
    Ok(())
}

fn rescaled(mag: &BigUint, from: u32, to: u32) -> BigUint {
    let mut m = mag.clone();
    m.mul_pow10(to - from);
    m
}

/// Base-10000 digits and weight, stripped of leading and trailing zero digits as make_result does.
fn base10000(mag: &BigUint, dscale: u32) -> (i64, Vec<u16>) {
    let digits = mag.to_decimal();
    let dscale = dscale as usize;
    let (int, frac) = if digits.len() > dscale {
        digits.split_at(digits.len() - dscale)
    } else {
        ("", digits.as_str())
    };
    let mut s = String::new();
    for _ in 0..(4 - int.len() % 4) % 4 {
        s.push('0');
    }
    s.push_str(int);
    let int_groups = (s.len() / 4) as i64;
    for _ in frac.len()..dscale {
        s.push('0');
    }
    s.push_str(frac);
    // Inserting zeros before `frac` above pads it on the left to dscale digits.
    while !s.len().is_multiple_of(4) {
        s.push('0');
    }
    let mut groups: Vec<u16> = s
        .as_bytes()
        .chunks(4)
        .map(|g| g.iter().fold(0u16, |acc, c| acc * 10 + u16::from(c - b'0')))
        .collect();
    let mut weight = int_groups - 1;
    let lead = groups.iter().take_while(|&&g| g == 0).count();
    groups.drain(..lead);
    weight -= lead as i64;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    (weight, groups)
}

/// Weight and first non-zero base-10000 digit (0, 0 for zero), as select_div_scale reads them.
fn first_digit(mag: &BigUint, dscale: u32) -> (i64, u16) {
    let (weight, digits) = base10000(mag, dscale);
    match digits.first() {
        Some(&d) => (weight, d),
        None => (0, 0),
    }
}

impl Numeric {
    /// btree order: NaN above +Infinity above every finite value above -Infinity.
    pub fn cmp_pg(&self, other: &Numeric) -> Ordering {
        fn rank(n: &Numeric) -> u8 {
            match n {
                Numeric::NegInfinity => 0,
                Numeric::Finite { .. } => 1,
                Numeric::Infinity => 2,
                Numeric::NaN => 3,
            }
        }
        match (self, other) {
            (
                Numeric::Finite {
                    neg: an,
                    mag: am,
                    dscale: ad,
                },
                Numeric::Finite {
                    neg: bn,
                    mag: bm,
                    dscale: bd,
                },
            ) => {
                let s = (*ad).max(*bd);
                let (a, b) = (rescaled(am, *ad, s), rescaled(bm, *bd, s));
                match (an, bn) {
                    (false, false) => a.cmp(&b),
                    (true, true) => b.cmp(&a),
                    (false, true) => Ordering::Greater,
                    (true, false) => Ordering::Less,
                }
            }
            _ => rank(self).cmp(&rank(other)),
        }
    }
}
