//! A bounds-checked cursor over a message body. Every read checks the remaining length first, so
//! decoders built on it cannot panic or over-allocate, whatever the peer sent.

use crate::error::{malformed, Result, WireError};

/// Reads big-endian integers and C strings from a body, naming the message in its errors.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    pub(crate) fn err(&self, detail: &'static str) -> WireError {
        malformed(self.what, detail)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(self.err("truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn i16(&mut self) -> Result<i16> {
        self.array().map(i16::from_be_bytes)
    }

    /// Counts that the protocol documents as Int16 are read unsigned, as PostgreSQL does
    /// (`pq_getmsgint(msg, 2)`), which is why a statement may have up to 65535 parameters.
    pub(crate) fn count16(&mut self) -> Result<usize> {
        self.array().map(|b| usize::from(u16::from_be_bytes(b)))
    }

    pub(crate) fn i32(&mut self) -> Result<i32> {
        self.array().map(i32::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_be_bytes)
    }

    /// `n` items of `size` bytes each, checked against the remaining bytes without overflow.
    pub(crate) fn items(&mut self, n: usize, size: usize) -> Result<&'a [u8]> {
        let total = n.checked_mul(size).ok_or_else(|| self.err("truncated"))?;
        self.bytes(total)
    }

    /// A NUL-terminated string, returned without its NUL.
    pub(crate) fn cstr(&mut self) -> Result<&'a [u8]> {
        // Empty names (the unnamed statement and portal) are the common case: no memchr setup.
        let nul = if self.buf.first() == Some(&0) {
            0
        } else {
            memchr::memchr(0, self.buf).ok_or_else(|| self.err("missing NUL terminator"))?
        };
        let s = self.bytes(nul)?;
        self.bytes(1)?;
        Ok(s)
    }

    /// A NUL-terminated string that must be valid UTF-8.
    pub(crate) fn str(&mut self) -> Result<&'a str> {
        let s = self.cstr()?;
        std::str::from_utf8(s).map_err(|_| self.err("invalid UTF-8"))
    }

    /// An i32 length followed by that many bytes; -1 means NULL.
    pub(crate) fn nullable_bytes(&mut self) -> Result<Option<&'a [u8]>> {
        match self.i32()? {
            -1 => Ok(None),
            n => {
                let n = usize::try_from(n).map_err(|_| self.err("negative length"))?;
                self.bytes(n).map(Some)
            }
        }
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails if anything is left, as PostgreSQL's `pq_getmsgend` does.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }
}

/// Appends `s` as a C string. Writing stops at an embedded NUL: such a string cannot be
/// represented on the wire, and a stray NUL would shift every later field of the message.
pub(crate) fn put_cstr(dst: &mut bytes::BytesMut, s: &[u8]) {
    let end = memchr::memchr(0, s).unwrap_or(s.len());
    dst.extend_from_slice(s.get(..end).unwrap_or_default());
    dst.extend_from_slice(&[0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounds_checked() {
        let mut r = Reader::new(&[0, 1, 0xff], "test");
        assert_eq!(r.i16().ok(), Some(1));
        assert!(r.i16().is_err());
        assert_eq!(r.u8().ok(), Some(0xff));
        assert!(r.finish().is_ok());
    }

    #[test]
    fn cstr_needs_nul() {
        let mut r = Reader::new(b"abc", "test");
        assert!(matches!(
            r.cstr(),
            Err(WireError::Malformed {
                detail: "missing NUL terminator",
                ..
            })
        ));
        let mut r = Reader::new(b"abc\0x", "test");
        assert_eq!(r.cstr().ok(), Some(&b"abc"[..]));
        assert!(r.finish().is_err());
        let mut r = Reader::new(b"\0\0abc\0", "test");
        assert_eq!(r.cstr().ok(), Some(&b""[..]));
        assert_eq!(r.cstr().ok(), Some(&b""[..]));
        assert_eq!(r.cstr().ok(), Some(&b"abc"[..]));
        assert!(r.cstr().is_err());
    }

    #[test]
    fn nullable_rejects_negative_and_overlong() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xfe], "test");
        assert!(r.nullable_bytes().is_err());
        let mut r = Reader::new(&[0x7f, 0xff, 0xff, 0xff, 1], "test");
        assert!(r.nullable_bytes().is_err());
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff], "test");
        assert_eq!(r.nullable_bytes().ok(), Some(None));
    }

    #[test]
    fn items_does_not_overflow() {
        let mut r = Reader::new(&[1, 2], "test");
        assert!(r.items(usize::MAX, 4).is_err());
    }

    #[test]
    fn put_cstr_cuts_at_nul() {
        let mut b = bytes::BytesMut::new();
        put_cstr(&mut b, b"ab\0cd");
        assert_eq!(&b[..], b"ab\0");
    }
}
