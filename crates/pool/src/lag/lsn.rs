//! WAL positions and byte sizes as text: PostgreSQL's `pg_lsn` form (`X/Y`) and the human-readable
//! sizes used in exclusion reasons.

/// Parses a `pg_lsn` in PostgreSQL's text form `X/Y` (two hex numbers of up to 8 digits each) into
/// `(X << 32) | Y`. Returns `None` for anything else, including empty halves.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.trim().split_once('/')?;
    let half = |s: &str| -> Option<u64> {
        // from_str_radix accepts a leading '+', which PostgreSQL never prints.
        if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(s, 16).ok()
    };
    Some((half(high)? << 32) | half(low)?)
}

/// Formats an LSN the way PostgreSQL prints it: upper-case hex, `X/Y`, no zero padding.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// A byte count with one decimal in the largest unit among KiB/MiB/GiB that keeps it >= 1;
/// counts under 1 KiB are printed as plain bytes (`512 B`).
pub(crate) fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            // f64 keeps 53 bits: exact enough for one decimal of any WAL distance.
            #[allow(clippy::cast_precision_loss)]
            let value = bytes as f64 / size as f64;
            return format!("{value:.1} {unit}");
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("ffffffff/ffffffff"), Some(u64::MAX));
        for lsn in [0, 1, 0x1_0000_0000, 0x16_B374_D848, u64::MAX] {
            assert_eq!(parse_lsn(&format_lsn(lsn)), Some(lsn));
        }
        assert_eq!(format_lsn((0x16 << 32) | 0xB374_D848), "16/B374D848");
        assert_eq!(format_lsn(0x0300_0000), "0/3000000");
    }

    #[test]
    fn malformed_lsns_are_rejected() {
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "g/0",
            "+1/0",
            "0/+1",
            "123456789/0",
            "0/0/0",
            "-1/0",
        ] {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bytes_use_one_decimal_and_binary_units() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1.0 KiB");
        assert_eq!(format_bytes(64 * 1024), "64.0 KiB");
        assert_eq!(format_bytes(1536 * 1024), "1.5 MiB");
        assert_eq!(format_bytes(12 * 1024 * 1024), "12.0 MiB");
        assert_eq!(format_bytes(3 << 30), "3.0 GiB");
    }
}
