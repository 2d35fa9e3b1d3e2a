//! Typed values: decode a shard's cell (text or binary), encode a result cell as PostgreSQL
//! would send it, and compare values in PostgreSQL's btree order.

use std::cmp::Ordering;

use crate::datetime;
use crate::error::MergeError;
use crate::float::{format_f32, format_f64};
use crate::numeric::Numeric;

pub const OID_BOOL: u32 = 16;
pub const OID_NAME: u32 = 19;
pub const OID_INT8: u32 = 20;
pub const OID_INT2: u32 = 21;
pub const OID_INT4: u32 = 23;
pub const OID_TEXT: u32 = 25;
pub const OID_FLOAT4: u32 = 700;
pub const OID_FLOAT8: u32 = 701;
pub const OID_VARCHAR: u32 = 1043;
pub const OID_DATE: u32 = 1082;
pub const OID_TIMESTAMP: u32 = 1114;
pub const OID_TIMESTAMPTZ: u32 = 1184;
pub const OID_NUMERIC: u32 = 1700;
pub const OID_UUID: u32 = 2950;

/// Wire format codes.
pub const FORMAT_TEXT: i16 = 0;
pub const FORMAT_BINARY: i16 = 1;

/// One result column as a RowDescription describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    pub type_oid: u32,
    pub typmod: i32,
    /// 0 = text, 1 = binary.
    pub format: i16,
}

impl Column {
    pub fn new(type_oid: u32, format: i16) -> Column {
        Column {
            type_oid,
            typmod: -1,
            format,
        }
    }
}

/// A decoded cell. Integers of every width are `Int`; float4 is held exactly in `Float`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Float(f64),
    Numeric(Numeric),
    Bool(bool),
    /// Days since 2000-01-01; i32::MIN / i32::MAX are -infinity / infinity.
    Date(i32),
    /// Microseconds since 2000-01-01; i64::MIN / i64::MAX are -infinity / infinity.
    Timestamp(i64),
    /// Microseconds since 2000-01-01 UTC.
    TimestampTz(i64),
    Uuid([u8; 16]),
    /// text, varchar, name: bytes in the client encoding, compared bytewise (C collation).
    Text(Vec<u8>),
}

/// Whether the merge reproduces PostgreSQL's order for this type (text types: C collation
/// only; the caller must check the collation).
pub fn sortable(type_oid: u32) -> bool {
    matches!(
        type_oid,
        OID_INT2
            | OID_INT4
            | OID_INT8
            | OID_NUMERIC
            | OID_FLOAT4
            | OID_FLOAT8
            | OID_BOOL
            | OID_DATE
            | OID_TIMESTAMP
            | OID_TIMESTAMPTZ
            | OID_UUID
            | OID_TEXT
            | OID_VARCHAR
    )
}

fn malformed(type_oid: u32, reason: &'static str) -> MergeError {
    MergeError::Malformed { type_oid, reason }
}

fn fixed<const N: usize>(oid: u32, raw: &[u8]) -> Result<[u8; N], MergeError> {
    raw.try_into()
        .map_err(|_| malformed(oid, "wrong binary length"))
}

fn utf8(oid: u32, raw: &[u8]) -> Result<&str, MergeError> {
    std::str::from_utf8(raw).map_err(|_| malformed(oid, "not ASCII text"))
}

/// Decodes one cell (`None` = SQL NULL) of `col`'s type and format.
pub fn decode(col: &Column, raw: Option<&[u8]>) -> Result<Value, MergeError> {
    let Some(raw) = raw else {
        return Ok(Value::Null);
    };
    let oid = col.type_oid;
    match col.format {
        FORMAT_TEXT => decode_text(oid, raw),
        FORMAT_BINARY => decode_binary(oid, raw),
        other => Err(MergeError::BadFormat(other)),
    }
}

fn decode_text(oid: u32, raw: &[u8]) -> Result<Value, MergeError> {
    Ok(match oid {
        OID_INT2 | OID_INT4 | OID_INT8 => Value::Int(
            utf8(oid, raw)?
                .parse()
                .map_err(|_| malformed(oid, "not an integer"))?,
        ),
        OID_FLOAT8 => Value::Float(parse_float(oid, raw)?),
        OID_FLOAT4 => Value::Float(parse_float(oid, raw)?),
        OID_NUMERIC => Value::Numeric(Numeric::parse_text(raw)?),
        OID_BOOL => match raw {
            b"t" => Value::Bool(true),
            b"f" => Value::Bool(false),
            _ => return Err(malformed(oid, "not t or f")),
        },
        OID_DATE => Value::Date(datetime::parse_date(utf8(oid, raw)?, oid)?),
        OID_TIMESTAMP => Value::Timestamp(datetime::parse_timestamp(utf8(oid, raw)?, false, oid)?),
        OID_TIMESTAMPTZ => {
            Value::TimestampTz(datetime::parse_timestamp(utf8(oid, raw)?, true, oid)?)
        }
        OID_UUID => Value::Uuid(parse_uuid(raw)?),
        OID_TEXT | OID_VARCHAR | OID_NAME => Value::Text(raw.to_vec()),
        other => return Err(MergeError::UnsupportedType(other)),
    })
}

/// float4 text must be read as f32: its shortest digits do not name the same f64.
fn parse_float(oid: u32, raw: &[u8]) -> Result<f64, MergeError> {
    let s = utf8(oid, raw)?;
    let special = match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    };
    if let Some(v) = special {
        return Ok(v);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e'))
    {
        return Err(malformed(oid, "not a float"));
    }
    let bad = |_| malformed(oid, "not a float");
    if oid == OID_FLOAT4 {
        s.parse::<f32>().map(f64::from).map_err(bad)
    } else {
        s.parse::<f64>().map_err(bad)
    }
}

fn parse_uuid(raw: &[u8]) -> Result<[u8; 16], MergeError> {
    let hex: Vec<u8> = raw.iter().copied().filter(|&c| c != b'-').collect();
    if hex.len() != 32 || raw.len() != 36 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(malformed(OID_UUID, "not a canonical uuid"));
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| malformed(OID_UUID, "not hex"))?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| malformed(OID_UUID, "not hex"))?;
    }
    Ok(out)
}

fn decode_binary(oid: u32, raw: &[u8]) -> Result<Value, MergeError> {
    Ok(match oid {
        OID_INT2 => Value::Int(i16::from_be_bytes(fixed(oid, raw)?).into()),
        OID_INT4 => Value::Int(i32::from_be_bytes(fixed(oid, raw)?).into()),
        OID_INT8 => Value::Int(i64::from_be_bytes(fixed(oid, raw)?)),
        OID_FLOAT4 => Value::Float(f32::from_be_bytes(fixed(oid, raw)?).into()),
        OID_FLOAT8 => Value::Float(f64::from_be_bytes(fixed(oid, raw)?)),
        OID_NUMERIC => Value::Numeric(Numeric::parse_binary(raw)?),
        OID_BOOL => match raw {
            [0] => Value::Bool(false),
            [1] => Value::Bool(true),
            _ => return Err(malformed(oid, "not a binary bool")),
        },
        OID_DATE => Value::Date(i32::from_be_bytes(fixed(oid, raw)?)),
        OID_TIMESTAMP => Value::Timestamp(i64::from_be_bytes(fixed(oid, raw)?)),
        OID_TIMESTAMPTZ => Value::TimestampTz(i64::from_be_bytes(fixed(oid, raw)?)),
        OID_UUID => Value::Uuid(fixed(oid, raw)?),
        OID_TEXT | OID_VARCHAR | OID_NAME => Value::Text(raw.to_vec()),
        other => return Err(MergeError::UnsupportedType(other)),
    })
}

/// Appends `v` as PostgreSQL sends a value of `col`'s type in `col`'s format. NULL has no
/// bytes (the caller writes length -1); date/time text is refused because its form depends
/// on the session's DateStyle and TimeZone: pass the original bytes through instead.
pub fn encode(col: &Column, v: &Value, out: &mut Vec<u8>) -> Result<(), MergeError> {
    let oid = col.type_oid;
    let binary = match col.format {
        FORMAT_TEXT => false,
        FORMAT_BINARY => true,
        other => return Err(MergeError::BadFormat(other)),
    };
    let mismatch = || malformed(oid, "value does not match the column type");
    match (oid, v) {
        (_, Value::Null) => {}
        (OID_INT2 | OID_INT4 | OID_INT8, Value::Int(i)) => {
            if binary {
                match oid {
                    OID_INT2 => out.extend_from_slice(
                        &i16::try_from(*i)
                            .map_err(|_| MergeError::Overflow("smallint out of range"))?
                            .to_be_bytes(),
                    ),
                    OID_INT4 => out.extend_from_slice(
                        &i32::try_from(*i)
                            .map_err(|_| MergeError::Overflow("integer out of range"))?
                            .to_be_bytes(),
                    ),
                    _ => out.extend_from_slice(&i.to_be_bytes()),
                }
            } else {
                out.extend_from_slice(i.to_string().as_bytes());
            }
        }
        (OID_FLOAT8, Value::Float(f)) => {
            if binary {
                out.extend_from_slice(&f.to_be_bytes());
            } else {
                out.extend_from_slice(format_f64(*f).as_bytes());
            }
        }
        (OID_FLOAT4, Value::Float(f)) => {
            // Exact: float4 values are held as the f64 of an f32 (or NaN/Infinity).
            let f = *f as f32;
            if binary {
                out.extend_from_slice(&f.to_be_bytes());
            } else {
                out.extend_from_slice(format_f32(f).as_bytes());
            }
        }
        (OID_NUMERIC, Value::Numeric(n)) => {
            if binary {
                n.write_binary(out)?;
            } else {
                out.extend_from_slice(n.to_text().as_bytes());
            }
        }
        (OID_BOOL, Value::Bool(b)) => match (binary, b) {
            (true, b) => out.push(u8::from(*b)),
            (false, true) => out.push(b't'),
            (false, false) => out.push(b'f'),
        },
        (OID_DATE, Value::Date(d)) if binary => out.extend_from_slice(&d.to_be_bytes()),
        (OID_TIMESTAMP, Value::Timestamp(t)) | (OID_TIMESTAMPTZ, Value::TimestampTz(t))
            if binary =>
        {
            out.extend_from_slice(&t.to_be_bytes())
        }
        (OID_DATE | OID_TIMESTAMP | OID_TIMESTAMPTZ, _) if !binary => {
            return Err(MergeError::CannotFormat(oid))
        }
        (OID_UUID, Value::Uuid(u)) => {
            if binary {
                out.extend_from_slice(u);
            } else {
                for (i, b) in u.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        out.push(b'-');
                    }
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
            }
        }
        (OID_TEXT | OID_VARCHAR | OID_NAME, Value::Text(t)) => out.extend_from_slice(t),
        (OID_INT2 | OID_INT4 | OID_INT8 | OID_FLOAT4 | OID_FLOAT8 | OID_NUMERIC, _)
        | (OID_BOOL | OID_DATE | OID_TIMESTAMP | OID_TIMESTAMPTZ, _)
        | (OID_UUID | OID_TEXT | OID_VARCHAR | OID_NAME, _) => return Err(mismatch()),
        (other, _) => return Err(MergeError::UnsupportedType(other)),
    }
    Ok(())
}

/// float8 btree order: NaN equals NaN and sorts above everything; -0 equals 0.
fn cmp_f64(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        // Neither is NaN, so partial_cmp is total here; -0 == 0 under IEEE comparison.
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// PostgreSQL's btree order for two values of one type. NULL sorts above every value (the
/// ASC default); sort keys apply their own NULLS FIRST/LAST. Across types only the numeric
/// promotions PostgreSQL applies in comparisons are supported (int with numeric: numeric;
/// int or numeric with float: float8); other cross-type pairs order by variant, which never
/// happens within one column.
pub fn compare(a: &Value, b: &Value) -> Ordering {
    use Value::*;
    match (a, b) {
        (Null, Null) => Ordering::Equal,
        (Null, _) => Ordering::Greater,
        (_, Null) => Ordering::Less,
        (Int(x), Int(y)) => x.cmp(y),
        (Float(x), Float(y)) => cmp_f64(*x, *y),
        (Numeric(x), Numeric(y)) => x.cmp_pg(y),
        (Int(x), Numeric(y)) => crate::numeric::Numeric::from_i128((*x).into()).cmp_pg(y),
        (Numeric(x), Int(y)) => x.cmp_pg(&crate::numeric::Numeric::from_i128((*y).into())),
        (Int(x), Float(y)) => cmp_f64(*x as f64, *y),
        (Float(x), Int(y)) => cmp_f64(*x, *y as f64),
        (Numeric(x), Float(y)) => cmp_f64(x.to_f64(), *y),
        (Float(x), Numeric(y)) => cmp_f64(*x, y.to_f64()),
        (Bool(x), Bool(y)) => x.cmp(y),
        (Date(x), Date(y)) => x.cmp(y),
        (Timestamp(x), Timestamp(y)) | (TimestampTz(x), TimestampTz(y)) => x.cmp(y),
        (Uuid(x), Uuid(y)) => x.cmp(y),
        (Text(x), Text(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Whether `compare` is meaningful between the two (same type family or numeric promotion).
pub(crate) fn comparable(a: &Value, b: &Value) -> bool {
    let numeric = |v: &Value| matches!(v, Value::Int(_) | Value::Float(_) | Value::Numeric(_));
    matches!(a, Value::Null)
        || matches!(b, Value::Null)
        || rank(a) == rank(b)
        || numeric(a) && numeric(b)
}

fn rank(v: &Value) -> u8 {
    match v {
        Value::Int(_) => 0,
        Value::Float(_) => 1,
        Value::Numeric(_) => 2,
        Value::Bool(_) => 3,
        Value::Date(_) => 4,
        Value::Timestamp(_) => 5,
        Value::TimestampTz(_) => 6,
        Value::Uuid(_) => 7,
        Value::Text(_) => 8,
        Value::Null => 9,
    }
}

/// Appends bytes that are equal exactly when the values are equal under `compare` (numeric
/// 1.0 = 1.00, float -0 = 0, NaN = NaN), for hashing group keys and DISTINCT rows.
pub(crate) fn equality_key(v: &Value, out: &mut Vec<u8>) {
    out.push(rank(v));
    match v {
        Value::Null => {}
        Value::Int(i) => out.extend_from_slice(&i.to_be_bytes()),
        Value::Float(f) => {
            let canon = if f.is_nan() {
                f64::NAN.to_bits()
            } else if *f == 0.0 {
                0
            } else {
                f.to_bits()
            };
            out.extend_from_slice(&canon.to_be_bytes());
        }
        Value::Numeric(n) => {
            let t = n.canonical_text();
            out.extend_from_slice(&(t.len() as u64).to_be_bytes());
            out.extend_from_slice(t.as_bytes());
        }
        Value::Bool(b) => out.push(u8::from(*b)),
        Value::Date(d) => out.extend_from_slice(&d.to_be_bytes()),
        Value::Timestamp(t) | Value::TimestampTz(t) => out.extend_from_slice(&t.to_be_bytes()),
        Value::Uuid(u) => out.extend_from_slice(u),
        Value::Text(t) => {
            out.extend_from_slice(&(t.len() as u64).to_be_bytes());
            out.extend_from_slice(t);
        }
    }
}
