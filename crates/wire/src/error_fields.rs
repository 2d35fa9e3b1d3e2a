//! The field list shared by ErrorResponse and NoticeResponse: `(code byte, text)` pairs ending with
//! a zero byte. Order is kept so a relayed error re-encodes byte for byte.

use bytes::{BufMut, BytesMut};

use crate::error::Result;
use crate::reader::{put_cstr, Reader};

/// Fields of an ErrorResponse or NoticeResponse, in the order received.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields {
    /// `(code, value)` pairs, e.g. `(b'C', "42P01")`.
    pub fields: Vec<(u8, String)>,
}

impl ErrorFields {
    /// Severity (`S` and the untranslated `V`), SQLSTATE (`C`) and message (`M`), the fields every
    /// error must carry.
    pub fn new(severity: &str, code: &str, message: impl Into<String>) -> Self {
        Self {
            fields: vec![
                (b'S', severity.to_owned()),
                (b'V', severity.to_owned()),
                (b'C', code.to_owned()),
                (b'M', message.into()),
            ],
        }
    }

    /// Adds a field, e.g. `b'D'` detail or `b'H'` hint. A code of 0 cannot be encoded (it ends
    /// the list on the wire) and is dropped by the encoder.
    pub fn with(mut self, code: u8, value: impl Into<String>) -> Self {
        self.fields.push((code, value.into()));
        self
    }

    /// The first field with this code.
    pub fn get(&self, code: u8) -> Option<&str> {
        self.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_str())
    }

    /// SQLSTATE (`C`).
    pub fn code(&self) -> Option<&str> {
        self.get(b'C')
    }

    /// Primary message (`M`).
    pub fn message(&self) -> Option<&str> {
        self.get(b'M')
    }

    /// Severity, preferring the never-translated `V` over the localized `S`.
    pub fn severity(&self) -> Option<&str> {
        self.get(b'V').or_else(|| self.get(b'S'))
    }

    /// Decodes a body. Values are decoded lossily: a server may send them in its own encoding
    /// (before client_encoding is settled, or with a non-UTF-8 lc_messages), and an unreadable
    /// accent must not turn a backend's error into a protocol failure.
    pub(crate) fn decode(body: &[u8], what: &'static str) -> Result<Self> {
        let mut r = Reader::new(body, what);
        let mut fields = Vec::new();
        loop {
            let code = r.u8()?;
            if code == 0 {
                r.finish()?;
                return Ok(Self { fields });
            }
            let value = r.cstr()?;
            fields.push((code, String::from_utf8_lossy(value).into_owned()));
        }
    }

    /// Appends the body (fields and terminator), without tag or length.
    pub(crate) fn encode_body(&self, dst: &mut BytesMut) {
        for (code, value) in &self.fields {
            if *code != 0 {
                dst.put_u8(*code);
                put_cstr(dst, value.as_bytes());
            }
        }
        dst.put_u8(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors() {
        let e =
            ErrorFields::new("ERROR", "42P01", "relation \"t\" does not exist").with(b'H', "hint");
        assert_eq!(e.code(), Some("42P01"));
        assert_eq!(e.severity(), Some("ERROR"));
        assert_eq!(e.message(), Some("relation \"t\" does not exist"));
        assert_eq!(e.get(b'H'), Some("hint"));
        assert_eq!(e.get(b'D'), None);
    }

    #[test]
    fn round_trip_keeps_order() {
        let e = ErrorFields::default()
            .with(b'M', "m")
            .with(b'S', "FATAL")
            .with(b'C', "08P01");
        let mut b = BytesMut::new();
        e.encode_body(&mut b);
        assert_eq!(&b[..], b"Mm\0SFATAL\0C08P01\0\0");
        assert_eq!(ErrorFields::decode(&b, "ErrorResponse").ok(), Some(e));
    }

    #[test]
    fn malformed_bodies() {
        for body in [&b""[..], b"Mabc", b"Mabc\0", b"M\0\0x"] {
            assert!(
                ErrorFields::decode(body, "ErrorResponse").is_err(),
                "{body:?}"
            );
        }
    }

    #[test]
    fn non_utf8_is_lossy_not_fatal() {
        let e = ErrorFields::decode(b"Mcaf\xe9\0\0", "NoticeResponse").ok();
        assert_eq!(
            e.and_then(|e| e.message().map(str::to_owned)),
            Some("caf\u{fffd}".into())
        );
    }
}
