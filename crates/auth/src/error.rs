//! The error type of the auth layer: why a client's authentication exchange was refused.

/// Why a SCRAM exchange failed.
///
/// Every variant ends the exchange: a [`crate::ScramServer`] that returned one accepts no more
/// messages. Only [`AuthError::InvalidProof`] means "wrong password" (or unknown user, which
/// must look the same); the others mean the client spoke the protocol wrongly.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The message does not follow the RFC 5802 grammar, or uses a feature we do not support.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client's channel-binding flag or data does not fit the mechanism it chose or the
    /// connection (see [`crate::ChannelBinding`]).
    #[error("SCRAM channel binding: {0}")]
    ChannelBinding(&'static str),
    /// The nonce in client-final is not the one the server built in server-first.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The client's proof does not match the stored key: wrong password or unknown user.
    #[error("password authentication failed")]
    InvalidProof,
    /// A message arrived in a state that does not expect it (also after the exchange ended).
    #[error("SCRAM exchange out of order")]
    OutOfOrder,
}
