//! Errors of the backend side: connecting, logging in, talking to a server, and pool checkout.

use std::sync::Arc;

use shardgate_config::NodeAddr;
use shardgate_wire::{ErrorFields, WireError};

/// A failure talking to one backend server.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("could not connect to server {addr}: {source}")]
    Connect {
        addr: Arc<NodeAddr>,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out connecting to server {addr}")]
    ConnectTimeout { addr: Arc<NodeAddr> },
    #[error("server {addr} closed the connection unexpectedly")]
    Closed { addr: Arc<NodeAddr> },
    #[error("i/o error on server connection {addr}: {source}")]
    Io {
        addr: Arc<NodeAddr>,
        #[source]
        source: std::io::Error,
    },
    #[error("server {addr} sent a malformed message: {source}")]
    Wire {
        addr: Arc<NodeAddr>,
        #[source]
        source: WireError,
    },
    #[error("server {addr} violated the protocol: {what}")]
    Protocol {
        addr: Arc<NodeAddr>,
        what: &'static str,
    },
    #[error("server {addr} asked for an unsupported authentication method: {what}")]
    UnsupportedAuth { addr: Arc<NodeAddr>, what: String },
    #[error("SCRAM authentication with server {addr} failed: {detail}")]
    Scram { addr: Arc<NodeAddr>, detail: String },
    #[error("server {addr} reported: {}", .fields.message().unwrap_or("error"))]
    Server {
        addr: Arc<NodeAddr>,
        fields: ErrorFields,
    },
}

/// Why a checkout did not produce a connection.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no server connection to {addr} became free within {waited_ms} ms (pool size {size})")]
    Timeout {
        addr: Arc<NodeAddr>,
        waited_ms: u64,
        size: u32,
    },
    #[error(
        "server {addr} is unavailable; retrying in {retry_in_ms} ms (last error: {last_error})"
    )]
    BackingOff {
        addr: Arc<NodeAddr>,
        retry_in_ms: u64,
        last_error: String,
    },
    #[error("pool for {addr} is closed")]
    Closed { addr: Arc<NodeAddr> },
    #[error(transparent)]
    Backend(#[from] BackendError),
}
