//! The untagged packets a client may send first: StartupMessage, SSLRequest, GSSENCRequest and
//! CancelRequest. They share one layout, an i32 length that counts itself and an i32 code.

use bytes::{Buf, BufMut, BytesMut};

use crate::error::{Result, WireError};
use crate::frame::patch_len;
use crate::reader::{put_cstr, Reader};
use crate::MAX_STARTUP_LEN;

const CANCEL_REQUEST_CODE: i32 = 80_877_102;
const SSL_REQUEST_CODE: i32 = 80_877_103;
const GSSENC_REQUEST_CODE: i32 = 80_877_104;
const WHAT: &str = "startup";

/// A client's first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupRequest {
    /// StartupMessage for protocol 3.`minor`, with its parameters in the order sent.
    Startup {
        /// Requested minor version; a proxy answers a minor above 0 with NegotiateProtocolVersion.
        minor: u16,
        /// `(name, value)` pairs, e.g. `("user", "alice")`.
        params: Vec<(String, String)>,
    },
    /// Asks to switch to TLS.
    SslRequest,
    /// Asks to switch to GSSAPI encryption.
    GssEncRequest,
    /// Cancels the query running on the backend identified by this key.
    Cancel {
        /// Backend process id from BackendKeyData.
        pid: i32,
        /// Secret key from BackendKeyData.
        secret: i32,
    },
}

/// Parses one startup packet off the front of `buf`.
///
/// Returns `Ok(None)`, consuming nothing, until the whole packet is buffered. The length must be
/// 8..=[`MAX_STARTUP_LEN`]. A StartupMessage's parameters are C-string pairs ending with a single
/// NUL, which must be the packet's last byte.
pub fn parse_startup(buf: &mut BytesMut) -> Result<Option<StartupRequest>> {
    let Some(&[a, b, c, d]) = buf.get(..4) else {
        return Ok(None);
    };
    let declared = i32::from_be_bytes([a, b, c, d]);
    let len = usize::try_from(declared)
        .ok()
        .filter(|&n| n >= 8)
        .ok_or(WireError::BadLength(i64::from(declared)))?;
    if len > MAX_STARTUP_LEN {
        return Err(WireError::TooLarge {
            len,
            max: MAX_STARTUP_LEN,
        });
    }
    let Some(packet) = buf.get(4..len) else {
        return Ok(None);
    };
    let request = decode_packet(packet)?;
    buf.advance(len);
    Ok(Some(request))
}

/// Decodes everything after the length field.
fn decode_packet(packet: &[u8]) -> Result<StartupRequest> {
    let mut r = Reader::new(packet, WHAT);
    let code = r.i32()?;
    let request = match code {
        SSL_REQUEST_CODE => StartupRequest::SslRequest,
        GSSENC_REQUEST_CODE => StartupRequest::GssEncRequest,
        CANCEL_REQUEST_CODE => StartupRequest::Cancel {
            pid: r.i32()?,
            secret: r.i32()?,
        },
        _ => {
            let (major, minor) = ((code >> 16) as u16, code as u16);
            if major != 3 {
                return Err(WireError::UnsupportedVersion { major, minor });
            }
            StartupRequest::Startup {
                minor,
                params: decode_params(&mut r)?,
            }
        }
    };
    r.finish()?;
    Ok(request)
}

/// The parameters; any fault in their framing is the one error PostgreSQL reports for it.
fn decode_params(r: &mut Reader<'_>) -> Result<Vec<(String, String)>> {
    let mut params = Vec::new();
    loop {
        let name = r.cstr().map_err(|_| WireError::StartupLayout)?;
        if name.is_empty() {
            if r.remaining() > 0 {
                return Err(WireError::StartupLayout);
            }
            return Ok(params);
        }
        let value = r.cstr().map_err(|_| WireError::StartupLayout)?;
        let text = |b| match std::str::from_utf8(b) {
            Ok(t) => Ok(t.to_owned()),
            Err(_) => Err(r.err("invalid UTF-8")),
        };
        params.push((text(name)?, text(value)?));
    }
}

impl StartupRequest {
    /// Appends the packet (length included) to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let start = dst.len();
        dst.put_i32(0);
        match self {
            Self::Startup { minor, params } => {
                dst.put_i32((3 << 16) | i32::from(*minor));
                for (name, value) in params {
                    // An empty name would end the list early; PostgreSQL could not read it either.
                    if !name.is_empty() {
                        put_cstr(dst, name.as_bytes());
                        put_cstr(dst, value.as_bytes());
                    }
                }
                dst.put_u8(0);
            }
            Self::SslRequest => dst.put_i32(SSL_REQUEST_CODE),
            Self::GssEncRequest => dst.put_i32(GSSENC_REQUEST_CODE),
            Self::Cancel { pid, secret } => {
                dst.put_i32(CANCEL_REQUEST_CODE);
                dst.put_i32(*pid);
                dst.put_i32(*secret);
            }
        }
        patch_len(dst, start);
    }

    /// The value of a StartupMessage parameter, e.g. `param("user")`.
    pub fn param(&self, name: &str) -> Option<&str> {
        match self {
            Self::Startup { params, .. } => params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn encoded(req: &StartupRequest) -> BytesMut {
        let mut b = BytesMut::new();
        req.encode(&mut b);
        b
    }

    #[test]
    fn startup_round_trip() {
        let req = StartupRequest::Startup {
            minor: 0,
            params: vec![
                ("user".into(), "alice".into()),
                ("database".into(), "db".into()),
            ],
        };
        let mut buf = encoded(&req);
        assert_eq!(&buf[4..8], &[0, 3, 0, 0]);
        buf.extend_from_slice(b"next");
        assert_eq!(parse_startup(&mut buf).ok().flatten(), Some(req.clone()));
        assert_eq!(&buf[..], b"next");
        assert_eq!(req.param("user"), Some("alice"));
    }

    #[test]
    fn fixed_requests() {
        for req in [
            StartupRequest::SslRequest,
            StartupRequest::GssEncRequest,
            StartupRequest::Cancel { pid: 7, secret: -9 },
        ] {
            let mut buf = encoded(&req);
            assert_eq!(parse_startup(&mut buf).ok().flatten(), Some(req));
            assert!(buf.is_empty());
        }
        assert_eq!(
            &encoded(&StartupRequest::SslRequest)[..],
            &[0, 0, 0, 8, 4, 210, 22, 47]
        );
    }

    #[test]
    fn waits_for_complete_packet() {
        let full = encoded(&StartupRequest::Cancel { pid: 1, secret: 2 });
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(parse_startup(&mut buf).ok(), Some(None));
            assert_eq!(buf.len(), cut);
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 7, 0, 0, 0, 0][..]);
        assert!(matches!(
            parse_startup(&mut buf),
            Err(WireError::BadLength(7))
        ));
        let mut buf = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            parse_startup(&mut buf),
            Err(WireError::BadLength(-1))
        ));
        let mut buf = BytesMut::from(&[0u8, 0, 0x27, 0x11][..]);
        assert!(matches!(
            parse_startup(&mut buf),
            Err(WireError::TooLarge { len: 10_001, .. })
        ));
    }

    #[test]
    fn rejects_other_versions() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 9, 0, 2, 0, 0, 0][..]);
        assert!(matches!(
            parse_startup(&mut buf),
            Err(WireError::UnsupportedVersion { major: 2, minor: 0 })
        ));
    }

    #[test]
    fn rejects_bad_layouts() {
        let cases: &[&[u8]] = &[
            b"\0\0\0\x0c\0\x03\0\0user",           // no NUL
            b"\0\0\0\x0d\0\x03\0\0user\0",         // name without value or terminator
            b"\0\0\0\x0e\0\x03\0\0u\0v\0\0x",      // bytes after the terminator
            b"\0\0\0\x09\x04\xd2\x16\x2f\0",       // SSLRequest with a body
            b"\0\0\0\x0c\x04\xd2\x16\x2e\0\0\0\0", // CancelRequest missing the secret
            b"\0\0\0\x0a\0\x03\0\0\xff\0",         // invalid UTF-8 name
        ];
        for case in cases {
            let mut buf = BytesMut::from(*case);
            assert!(
                matches!(
                    parse_startup(&mut buf),
                    Err(WireError::Malformed { .. } | WireError::StartupLayout)
                ),
                "{case:?}"
            );
        }
    }

    #[test]
    fn startup_layout_faults_are_told_apart() {
        let layout: &[&[u8]] = &[
            b"\0\0\0\x0c\0\x03\0\0user",        // no NUL
            b"\0\0\0\x0d\0\x03\0\0user\0",      // name without value or terminator
            b"\0\0\0\x11\0\x03\0\0user\0tru\0", // no final terminator
            b"\0\0\0\x0e\0\x03\0\0u\0v\0\0x",   // bytes after the terminator
        ];
        for case in layout {
            let mut buf = BytesMut::from(*case);
            assert!(
                matches!(parse_startup(&mut buf), Err(WireError::StartupLayout)),
                "{case:?}"
            );
        }
        // Well framed, but the name is not UTF-8.
        let mut buf = BytesMut::from(&b"\0\0\0\x0d\0\x03\0\0\xff\0v\0\0"[..]);
        assert!(matches!(
            parse_startup(&mut buf),
            Err(WireError::Malformed { .. })
        ));
    }
}
