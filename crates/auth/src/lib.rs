//! Sans-IO authentication of shardgate's clients: the server side of SCRAM-SHA-256 (with
//! channel binding over TLS) and md5; it never touches a socket, and never keeps a SCRAM
//! password, only the keys derived from it.
//!
//! The connection layer moves the bytes: it hands the data of `SASLInitialResponse` and
//! `SASLResponse` to a [`ScramServer`] and sends back what it returns in
//! `AuthenticationSASLContinue` and `AuthenticationSASLFinal`. Authenticating shardgate to its
//! backends is the client side and lives with `postgres-protocol`, not here.

// Everything here parses bytes an unauthenticated peer chose, so stray indexing or a panic
// would let one client take the proxy down: forbid them outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::panic, clippy::unwrap_used)
)]
#![warn(missing_docs)]

mod channel_binding;
mod error;
mod md5;
mod message;
mod secret;
mod server;

pub use channel_binding::{tls_server_end_point, ChannelBinding};
pub use error::AuthError;
pub use md5::{md5_response, random_md5_salt, verify_md5};
pub use secret::ScramSecret;
pub use server::ScramServer;

/// The SASL mechanism name shardgate offers in `AuthenticationSASL`.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// SCRAM-SHA-256 with channel binding, offered first on TLS connections.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
