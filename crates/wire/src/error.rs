//! The codec's error type: everything that can be wrong with bytes received from a peer.

/// A protocol violation found while framing or decoding. Any of these ends the connection it came
/// from: after a framing error the stream cannot be resynchronised.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A frame declared more bytes than the caller's cap allows.
    #[error("message length {len} exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared total length.
        len: usize,
        /// The cap in force.
        max: usize,
    },
    /// A declared length below the minimum (4 for a tagged frame, 8 for a startup packet).
    #[error("invalid message length {0}")]
    BadLength(i64),
    /// A message body that does not match its layout.
    #[error("malformed {what} message: {detail}")]
    Malformed {
        /// Which message was being decoded.
        what: &'static str,
        /// What was wrong with it.
        detail: &'static str,
    },
    /// A message type byte this decoder does not know.
    #[error("unknown message type {0:?}")]
    UnknownTag(u8),
    /// A StartupMessage whose parameters are not NUL-terminated name/value pairs ending with a
    /// single NUL as the packet's last byte.
    #[error("invalid startup packet layout: expected terminator as last byte")]
    StartupLayout,
    /// A startup packet asking for a protocol other than 3.x.
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedVersion {
        /// Requested major version.
        major: u16,
        /// Requested minor version.
        minor: u16,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, WireError>;

/// Shorthand for the `Malformed` variant, used by every decoder.
pub(crate) fn malformed(what: &'static str, detail: &'static str) -> WireError {
    WireError::Malformed { what, detail }
}
