//! Framing of tagged messages: a type byte, an i32 length that counts itself, then the body.
//! These functions are the proxy's pass-through path, so none of them allocates.

use std::ops::ControlFlow;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{Result, WireError};

/// Size of the tag byte plus the length field.
pub(crate) const HEADER_LEN: usize = 5;

/// The header of one tagged frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Message type byte.
    pub tag: u8,
    /// Total frame size in bytes, tag byte and length field included (declared length + 1).
    pub len: usize,
}

/// One complete frame cut from a connection buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Message type byte.
    pub tag: u8,
    /// The body, without tag and length; a view into the buffer the frame was split from.
    pub body: Bytes,
}

/// Reads the frame header at the start of `buf`.
///
/// Returns `Ok(None)` while fewer than 5 bytes are buffered. Fails if the declared length is below
/// 4 or the total frame would exceed `max_len`, so the caller never waits for (or buffers) an
/// oversized frame. Never allocates.
pub fn peek_header(buf: &[u8], max_len: usize) -> Result<Option<FrameHeader>> {
    let Some(&[tag, a, b, c, d]) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let declared = i32::from_be_bytes([a, b, c, d]);
    let body_and_len = usize::try_from(declared)
        .ok()
        .filter(|&n| n >= 4)
        .ok_or(WireError::BadLength(i64::from(declared)))?;
    let len = body_and_len + 1;
    if len > max_len {
        return Err(WireError::TooLarge { len, max: max_len });
    }
    Ok(Some(FrameHeader { tag, len }))
}

/// Splits one complete frame off the front of `buf`.
///
/// Returns `Ok(None)`, consuming nothing, until the whole frame is buffered. The body is a
/// zero-copy view (`split_to(..).freeze()`) into the same allocation as `buf`.
pub fn split_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>> {
    let Some(header) = peek_header(buf, max_len)? else {
        return Ok(None);
    };
    if buf.len() < header.len {
        return Ok(None);
    }
    let mut frame = buf.split_to(header.len);
    frame.advance(HEADER_LEN);
    Ok(Some(Frame {
        tag: header.tag,
        body: frame.freeze(),
    }))
}

/// Walks the complete frames at the start of `buf`, calling `f(header, body)` for each.
///
/// Returns how many bytes those frames cover, so the caller can forward exactly that prefix. If
/// `f` returns `Break`, the walk stops after that frame (which is included in the count). A
/// partial frame at the end is left for the next read. Fails on the first bad header, even if
/// complete frames precede it: the stream is unusable from there on.
pub fn scan_frames(
    buf: &[u8],
    max_len: usize,
    mut f: impl FnMut(FrameHeader, &[u8]) -> ControlFlow<()>,
) -> Result<usize> {
    let mut offset = 0;
    while let Some(rest) = buf.get(offset..) {
        let Some(header) = peek_header(rest, max_len)? else {
            break;
        };
        let Some(body) = rest.get(HEADER_LEN..header.len) else {
            break;
        };
        offset += header.len;
        if f(header, body).is_break() {
            break;
        }
    }
    Ok(offset)
}

/// Writes a complete frame: tag, a length placeholder, the body from `body`, then the real length.
/// Writing the body in place (instead of into a scratch buffer) keeps encoders allocation-free.
pub(crate) fn write_frame(tag: u8, dst: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let start = dst.len();
    dst.put_u8(tag);
    dst.put_i32(0);
    body(dst);
    patch_len(dst, start + 1);
}

/// Writes the length of everything from `at` to the end of `dst` into the 4 bytes at `at`.
pub(crate) fn patch_len(dst: &mut BytesMut, at: usize) {
    let len = i32::try_from(dst.len() - at)
        .unwrap_or_else(|_| panic!("message body of {} bytes exceeds i32::MAX", dst.len() - at));
    if let Some(field) = dst.get_mut(at..at + 4) {
        field.copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn peek_needs_five_bytes() {
        assert_eq!(peek_header(b"Z\0\0\0", 100).ok(), Some(None));
        let h = peek_header(b"Z\0\0\0\x05I", 100).ok().flatten();
        assert_eq!(h, Some(FrameHeader { tag: b'Z', len: 6 }));
    }

    #[test]
    fn peek_rejects_short_and_negative_lengths() {
        assert!(matches!(
            peek_header(b"Z\0\0\0\x03", 100),
            Err(WireError::BadLength(3))
        ));
        assert!(matches!(
            peek_header(b"Z\xff\xff\xff\xff", 100),
            Err(WireError::BadLength(-1))
        ));
    }

    #[test]
    fn peek_rejects_over_cap() {
        assert!(matches!(
            peek_header(b"Q\0\0\0\x64", 100),
            Err(WireError::TooLarge { len: 101, max: 100 })
        ));
        assert!(peek_header(b"Q\0\0\0\x63", 100).is_ok());
    }

    #[test]
    fn split_waits_for_whole_frame() {
        let bytes = frame(b'Q', b"select 1\0");
        let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
        assert_eq!(split_frame(&mut buf, 1024).ok(), Some(None));
        assert_eq!(buf.len(), bytes.len() - 1);
        buf.extend_from_slice(&bytes[bytes.len() - 1..]);
        buf.extend_from_slice(b"S\0\0");
        let f = split_frame(&mut buf, 1024).ok().flatten();
        assert_eq!(f.as_ref().map(|f| f.tag), Some(b'Q'));
        assert_eq!(f.map(|f| f.body), Some(Bytes::from_static(b"select 1\0")));
        assert_eq!(&buf[..], b"S\0\0");
    }

    #[test]
    fn scan_counts_complete_frames_only() {
        let mut bytes = frame(b'D', b"abc");
        bytes.extend(frame(b'C', b"SELECT 1\0"));
        let complete = bytes.len();
        bytes.extend(&frame(b'Z', b"I")[..3]);
        let mut seen = Vec::new();
        let n = scan_frames(&bytes, 1024, |h, body| {
            seen.push((h.tag, body.to_vec()));
            ControlFlow::Continue(())
        });
        assert_eq!(n.ok(), Some(complete));
        assert_eq!(
            seen,
            vec![(b'D', b"abc".to_vec()), (b'C', b"SELECT 1\0".to_vec())]
        );
    }

    #[test]
    fn scan_break_includes_the_frame() {
        let mut bytes = frame(b'D', b"abc");
        let first = bytes.len();
        bytes.extend(frame(b'Z', b"I"));
        let n = scan_frames(&bytes, 1024, |_, _| ControlFlow::Break(()));
        assert_eq!(n.ok(), Some(first));
    }

    #[test]
    fn scan_fails_on_bad_header() {
        let mut bytes = frame(b'D', b"abc");
        bytes.extend(b"Z\0\0\0\0");
        assert!(scan_frames(&bytes, 1024, |_, _| ControlFlow::Continue(())).is_err());
    }

    #[test]
    fn write_frame_patches_length() {
        let mut dst = BytesMut::from(&b"xx"[..]);
        write_frame(b'Q', &mut dst, |d| d.extend_from_slice(b"hi\0"));
        assert_eq!(&dst[..], b"xxQ\0\0\0\x07hi\0");
    }
}
