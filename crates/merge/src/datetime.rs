//! Reads PostgreSQL's ISO-DateStyle text for date, timestamp and timestamptz into the binary
//! representation (days / microseconds since 2000-01-01), so text values can be ordered.
//!
//! Only the ISO DateStyle is understood; anything else (SQL, German, Postgres styles) is
//! refused ([`MergeError::NotIsoDateStyle`]) rather than guessed. Output is never re-formatted here: the merge
//! re-emits the original bytes, which keeps the session's DateStyle and TimeZone intact.

use crate::error::MergeError;

const USECS_PER_DAY: i64 = 86_400_000_000;
/// days_from_civil(2000, 1, 1): PostgreSQL's epoch counted from 1970-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

fn bad(type_oid: u32) -> MergeError {
    MergeError::NotIsoDateStyle(type_oid)
}

/// Days since 1970-01-01 in the proleptic Gregorian calendar (astronomical year numbering).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn number(s: &str, oid: u32) -> Result<i64, MergeError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 9 {
        return Err(bad(oid));
    }
    s.parse().map_err(|_| bad(oid))
}

/// Splits off a trailing " BC" and returns (rest, is_bc).
fn strip_bc(s: &str) -> (&str, bool) {
    match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    }
}

/// `YYYY-MM-DD` (a year of at least four digits, as PostgreSQL pads it) to days since
/// 2000-01-01. The widths matter: the Postgres DateStyle writes dates as `MM-DD-YYYY` or
/// `DD-MM-YYYY`, which for years up to 31 would otherwise read as a valid ISO date.
fn parse_ymd(s: &str, bc: bool, oid: u32) -> Result<i64, MergeError> {
    let mut parts = s.splitn(3, '-');
    let (y, m, d) = match (parts.next(), parts.next(), parts.next()) {
        (Some(y), Some(m), Some(d)) if y.len() >= 4 && m.len() == 2 && d.len() == 2 => {
            (number(y, oid)?, number(m, oid)?, number(d, oid)?)
        }
        _ => return Err(bad(oid)),
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y == 0 {
        return Err(bad(oid));
    }
    // 1 BC is astronomical year 0.
    let y = if bc { 1 - y } else { y };
    Ok(days_from_civil(y, m, d) - PG_EPOCH_DAYS)
}

/// `HH:MM:SS[.ffffff]` to microseconds.
fn parse_time(s: &str, oid: u32) -> Result<i64, MergeError> {
    let (hms, frac) = match s.split_once('.') {
        Some((a, f)) => (a, f),
        None => (s, ""),
    };
    let mut parts = hms.splitn(3, ':');
    let (h, m, sec) = match (parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(m), Some(x)) => (number(h, oid)?, number(m, oid)?, number(x, oid)?),
        _ => return Err(bad(oid)),
    };
    if frac.len() > 6 || (!frac.is_empty() && !frac.bytes().all(|b| b.is_ascii_digit())) {
        return Err(bad(oid));
    }
    let mut micros = 0i64;
    for i in 0..6 {
        let digit = frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
        micros = micros * 10 + digit;
    }
    if h > 24 || m > 59 || sec > 60 {
        return Err(bad(oid));
    }
    Ok(((h * 60 + m) * 60 + sec) * 1_000_000 + micros)
}

/// date text to days since 2000-01-01 (`infinity` = i32::MAX, `-infinity` = i32::MIN).
pub(crate) fn parse_date(s: &str, oid: u32) -> Result<i32, MergeError> {
    match s {
        "infinity" => return Ok(i32::MAX),
        "-infinity" => return Ok(i32::MIN),
        _ => {}
    }
    let (s, bc) = strip_bc(s);
    i32::try_from(parse_ymd(s, bc, oid)?).map_err(|_| bad(oid))
}

/// timestamp / timestamptz text to microseconds since 2000-01-01 (UTC for timestamptz).
pub(crate) fn parse_timestamp(s: &str, with_tz: bool, oid: u32) -> Result<i64, MergeError> {
    match s {
        "infinity" => return Ok(i64::MAX),
        "-infinity" => return Ok(i64::MIN),
        _ => {}
    }
    let (s, bc) = strip_bc(s);
    let (date, time) = s.split_once(' ').ok_or_else(|| bad(oid))?;
    let (time, offset) = if with_tz {
        let at = time.find(['+', '-']).ok_or_else(|| bad(oid))?;
        let (t, z) = time.split_at(at);
        (t, parse_offset(z, oid)?)
    } else {
        (time, 0)
    };
    let days = parse_ymd(date, bc, oid)?;
    let time = parse_time(time, oid)?;
    let local = days
        .checked_mul(USECS_PER_DAY)
        .and_then(|v| v.checked_add(time))
        .ok_or_else(|| bad(oid))?;
    local.checked_sub(offset).ok_or_else(|| bad(oid))
}

/// `+HH[:MM[:SS]]` to microseconds east of UTC.
fn parse_offset(z: &str, oid: u32) -> Result<i64, MergeError> {
    let (sign, rest) = z.split_at(1);
    let mut secs = 0i64;
    let mut unit = 3600;
    for part in rest.split(':') {
        if unit == 0 || part.len() != 2 {
            return Err(bad(oid));
        }
        secs += number(part, oid)? * unit;
        unit /= 60;
    }
    let secs = if sign == "-" { -secs } else { secs };
    Ok(secs * 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_text_to_binary_epoch() {
        assert_eq!(parse_date("2000-01-01", 1082).ok(), Some(0));
        assert_eq!(parse_date("1999-12-31", 1082).ok(), Some(-1));
        assert_eq!(parse_date("2024-02-29", 1082).ok(), Some(8825));
        // 0001-01-01 BC is astronomical year 0, one leap year before 0001-01-01.
        let ad1 = parse_date("0001-01-01", 1082).unwrap_or_default();
        assert_eq!(parse_date("0001-01-01 BC", 1082).ok(), Some(ad1 - 366));
        assert_eq!(
            parse_timestamp("2000-01-01 00:00:01.5", false, 1114).ok(),
            Some(1_500_000)
        );
        assert_eq!(
            parse_timestamp("2000-01-01 05:30:00+05:30", true, 1184).ok(),
            Some(0)
        );
        assert_eq!(
            parse_timestamp("2000-01-01 00:00:00-00:00:10", true, 1184).ok(),
            Some(10_000_000)
        );
        assert!(parse_date("01/02/2000", 1082).is_err());
    }
}
