//! The public hash rule: a shard-key value to a logical shard to a physical shard.
//!
//! This rule is an interface, not an implementation detail: loaders, resharding jobs and
//! operators recompute it outside shardgate (docs/sharding.md states it with test vectors), and
//! rows already written depend on it. Changing anything here that alters a hash moves data.
//!
//! 1. bytes: an integer is its i64 little-endian bytes; anything else is the UTF-8 of its
//!    PostgreSQL text form (a uuid lowercase and hyphenated).
//! 2. `h = xxh3_64(bytes)`, seed 0.
//! 3. `logical = h % logical_shards`.
//! 4. the shard is `map[logical]`.

use std::borrow::Cow;

use xxhash_rust::xxh3::xxh3_64;

const OID_NAME: u32 = 19;
const OID_INT8: u32 = 20;
const OID_INT2: u32 = 21;
const OID_INT4: u32 = 23;
const OID_TEXT: u32 = 25;
const OID_UNKNOWN: u32 = 705;
const OID_BPCHAR: u32 = 1042;
const OID_VARCHAR: u32 = 1043;
const OID_UUID: u32 = 2950;
/// A Bind parameter whose type the client left for the server to infer.
const OID_UNSPECIFIED: u32 = 0;

/// A shard-key value reduced to the two forms the rule distinguishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue {
    Int(i64),
    /// The PostgreSQL text form (a uuid lowercase and hyphenated).
    Text(String),
}

/// Why a Bind parameter cannot be turned into a [`KeyValue`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// Binary format for a type the rule does not decode; the client can send it as text.
    #[error(
        "a binary parameter of type oid {0} cannot be used as a shard key (send it in text format)"
    )]
    UnsupportedBinaryType(u32),
    #[error("malformed shard-key parameter: {0}")]
    Malformed(&'static str),
}

impl KeyValue {
    /// From text (a literal's value or a text-format parameter): canonical integers become
    /// `Int`, everything else stays `Text` byte for byte.
    ///
    /// Canonical means `0`, or an optional `-` then `[1-9][0-9]*`, fitting in i64. `042`, `+1`,
    /// `-0` and ` 1` are text: they are different strings, and a text column keeps them apart.
    pub fn from_text(s: &str) -> KeyValue {
        match canonical_int(s) {
            Some(i) => KeyValue::Int(i),
            None => KeyValue::Text(s.to_owned()),
        }
    }

    /// A text value known to be a uuid (a cast or a typed parameter), normalized to lowercase
    /// hyphenated. Accepts what PostgreSQL's `uuid_in` accepts; `None` where it would fail.
    pub fn uuid_from_text(s: &str) -> Option<KeyValue> {
        parse_uuid(s).map(|bytes| KeyValue::Text(format_uuid(&bytes)))
    }

    /// A Bind parameter. Format 0 is text, 1 binary (decoded by type oid).
    ///
    /// A text parameter typed int2/int4/int8 is read as PostgreSQL reads that type (so `042`
    /// and ` 42` are the integer 42, as the server will store them), a uuid is normalized, and
    /// anything else follows [`KeyValue::from_text`].
    pub fn from_param(oid: u32, format: i16, bytes: &[u8]) -> Result<KeyValue, KeyError> {
        match format {
            0 => Self::from_text_param(oid, bytes),
            1 => Self::from_binary_param(oid, bytes),
            _ => Err(KeyError::Malformed("unknown parameter format code")),
        }
    }

    fn from_text_param(oid: u32, bytes: &[u8]) -> Result<KeyValue, KeyError> {
        let text = utf8(bytes)?;
        match oid {
            OID_INT2 => int_input(text, i16::MIN.into(), i16::MAX.into()),
            OID_INT4 => int_input(text, i32::MIN.into(), i32::MAX.into()),
            OID_INT8 => int_input(text, i64::MIN, i64::MAX),
            OID_UUID => Self::uuid_from_text(text).ok_or(KeyError::Malformed("invalid uuid")),
            _ => Ok(Self::from_text(text)),
        }
    }

    fn from_binary_param(oid: u32, bytes: &[u8]) -> Result<KeyValue, KeyError> {
        const WRONG_LEN: KeyError = KeyError::Malformed("binary value has the wrong length");
        match oid {
            OID_INT2 => {
                let b: [u8; 2] = bytes.try_into().map_err(|_| WRONG_LEN)?;
                Ok(KeyValue::Int(i16::from_be_bytes(b).into()))
            }
            OID_INT4 => {
                let b: [u8; 4] = bytes.try_into().map_err(|_| WRONG_LEN)?;
                Ok(KeyValue::Int(i32::from_be_bytes(b).into()))
            }
            OID_INT8 => {
                let b: [u8; 8] = bytes.try_into().map_err(|_| WRONG_LEN)?;
                Ok(KeyValue::Int(i64::from_be_bytes(b)))
            }
            OID_UUID => {
                let b: [u8; 16] = bytes.try_into().map_err(|_| WRONG_LEN)?;
                Ok(KeyValue::Text(format_uuid(&b)))
            }
            // The binary send format of the text types is the text itself.
            OID_TEXT | OID_VARCHAR | OID_BPCHAR | OID_NAME | OID_UNKNOWN | OID_UNSPECIFIED => {
                Ok(Self::from_text(utf8(bytes)?))
            }
            other => Err(KeyError::UnsupportedBinaryType(other)),
        }
    }

    /// Step 1 of the rule: the bytes that are hashed.
    pub fn hash_bytes(&self) -> Cow<'_, [u8]> {
        match self {
            KeyValue::Int(i) => Cow::Owned(i.to_le_bytes().to_vec()),
            KeyValue::Text(s) => Cow::Borrowed(s.as_bytes()),
        }
    }

    /// Step 2 of the rule: xxh3_64 with seed 0 of [`KeyValue::hash_bytes`].
    pub fn hash(&self) -> u64 {
        match self {
            // Same bytes as hash_bytes, without the allocation on the routing path.
            KeyValue::Int(i) => xxh3_64(&i.to_le_bytes()),
            KeyValue::Text(s) => xxh3_64(s.as_bytes()),
        }
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, KeyError> {
    std::str::from_utf8(bytes).map_err(|_| KeyError::Malformed("text value is not valid UTF-8"))
}

/// `0` or `-?[1-9][0-9]*` within i64; `None` for anything else.
fn canonical_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let canonical = match digits.as_bytes() {
        [b'0'] => digits.len() == s.len(),
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    // i64's parser accepts exactly these strings once the shape is checked, and rejects overflow.
    canonical.then(|| s.parse().ok()).flatten()
}

/// PostgreSQL's int2in/int4in/int8in: surrounding whitespace, one sign, decimal digits.
/// (PostgreSQL 16 also takes `0x`, `0o`, `0b` prefixes and `_` separators; those are refused
/// here rather than guessed, so the router sends such a statement nowhere instead of astray.)
fn int_input(text: &str, min: i64, max: i64) -> Result<KeyValue, KeyError> {
    let trimmed =
        text.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'));
    let (negative, digits) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(KeyError::Malformed("invalid integer"));
    }
    // Accumulate negatively so i64::MIN, whose magnitude has no positive i64, still parses.
    let mut value: i64 = 0;
    for d in digits.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_sub(i64::from(d - b'0')))
            .ok_or(KeyError::Malformed("integer out of range"))?;
    }
    let value = if negative {
        value
    } else {
        value
            .checked_neg()
            .ok_or(KeyError::Malformed("integer out of range"))?
    };
    if value < min || value > max {
        return Err(KeyError::Malformed("integer out of range"));
    }
    Ok(KeyValue::Int(value))
}

/// PostgreSQL's `string_to_uuid`: optional braces, 32 hex digits, a `-` allowed after any
/// group of four.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let mut src = s.as_bytes();
    let braces = src.first() == Some(&b'{');
    if braces {
        src = &src[1..];
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        let [hi, lo, rest @ ..] = src else {
            return None;
        };
        *byte = (hex_value(*hi)? << 4) | hex_value(*lo)?;
        src = rest;
        if i % 2 == 1 && i < 15 {
            if let [b'-', rest @ ..] = src {
                src = rest;
            }
        }
    }
    if braces {
        src = src.strip_prefix(b"}")?;
    }
    src.is_empty().then_some(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// PostgreSQL's `uuid_out`: lowercase, hyphenated 8-4-4-4-12.
fn format_uuid(bytes: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// Logical shard -> index into the config's `shards` list.
///
/// Held as sorted range starts: a lookup is a binary search, and a million logical shards
/// cost a few entries, not a million.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    logical_shards: u32,
    /// `(first logical shard, shard index)`, sorted by start, the first starting at 0.
    starts: Vec<(u32, usize)>,
}

impl ShardMap {
    /// A map from inclusive `(first, last, shard index)` ranges, which the config has already
    /// checked cover `0..logical_shards` exactly once. `logical_shards` of 0 is taken as 1.
    pub fn new(logical_shards: u32, ranges: &[(u32, u32, usize)]) -> ShardMap {
        let mut starts: Vec<(u32, usize)> = ranges.iter().map(|&(a, _, s)| (a, s)).collect();
        starts.sort_unstable();
        debug_assert!(
            starts.first().is_some_and(|&(a, _)| a == 0),
            "ranges must start at logical shard 0"
        );
        ShardMap {
            logical_shards: logical_shards.max(1),
            starts,
        }
    }

    /// The default map: logical shard `l` goes to shard `floor(l * shards / logical_shards)`.
    /// `shards` of 0 is taken as 1.
    pub fn default_for(logical_shards: u32, shards: usize) -> ShardMap {
        let logical = u64::from(logical_shards.max(1));
        let n = shards.max(1) as u64;
        // Shard i starts at the smallest l with l * n >= i * logical: ceil(i * logical / n).
        // A shard whose range is empty (more shards than logical shards) gets no entry.
        let mut starts: Vec<(u32, usize)> = Vec::with_capacity(shards.max(1));
        for i in 0..n {
            let start = (i * logical).div_ceil(n);
            if start >= logical {
                break;
            }
            match starts.last_mut() {
                Some(last) if u64::from(last.0) == start => last.1 = i as usize,
                _ => starts.push((start as u32, i as usize)),
            }
        }
        ShardMap {
            logical_shards: logical as u32,
            starts,
        }
    }

    /// Step 3 of the rule: `hash % logical_shards`.
    pub fn logical_of(&self, key: &KeyValue) -> u32 {
        (key.hash() % u64::from(self.logical_shards)) as u32
    }

    /// Step 4 of the rule: the shard index of `key`.
    pub fn shard_of(&self, key: &KeyValue) -> usize {
        self.shard_of_logical(self.logical_of(key))
    }

    /// The shard index that holds logical shard `l`.
    pub fn shard_of_logical(&self, l: u32) -> usize {
        let after = self.starts.partition_point(|&(start, _)| start <= l);
        after
            .checked_sub(1)
            .and_then(|i| self.starts.get(i))
            .map_or(0, |&(_, shard)| shard)
    }

    pub fn logical_shards(&self) -> u32 {
        self.logical_shards
    }
}

#[cfg(test)]
#[path = "shard_map_tests.rs"]
mod tests;
