//! SQLSTATE codes shardgate itself reports. Backend errors pass through with their own codes.

/// 08P01: the client broke the protocol.
pub(crate) const PROTOCOL_VIOLATION: &str = "08P01";
/// 08006: the server connection failed or was lost.
pub(crate) const CONNECTION_FAILURE: &str = "08006";
/// 08007: a COMMIT's connection was lost; whether it committed is unknown.
pub(crate) const TRANSACTION_RESOLUTION_UNKNOWN: &str = "08007";
/// 08001: shardgate could not establish a server connection.
pub(crate) const UNABLE_TO_CONNECT: &str = "08001";
/// 28P01: wrong password or unknown user (never says which).
pub(crate) const INVALID_PASSWORD: &str = "28P01";
/// 28000: the client sent no usable authorization (e.g. no user name).
pub(crate) const INVALID_AUTHORIZATION: &str = "28000";
/// 3D000: the database does not exist.
pub(crate) const INVALID_CATALOG_NAME: &str = "3D000";
/// 53300: too many connections, or no server connection free in time.
pub(crate) const TOO_MANY_CONNECTIONS: &str = "53300";
/// 57014: the client cancelled the request.
pub(crate) const QUERY_CANCELED: &str = "57014";
/// 57P01: shutting down.
pub(crate) const ADMIN_SHUTDOWN: &str = "57P01";
/// 08004: the server rejected the connection (e.g. backend login failed).
pub(crate) const SERVER_REJECTED: &str = "08004";
/// 57P03: no node can serve the request right now (no routable replica).
pub(crate) const CANNOT_CONNECT_NOW: &str = "57P03";
/// A setting or hint names something that does not exist.
pub(crate) const INVALID_PARAMETER_VALUE: &str = "22023";
/// A statement shardgate cannot route or merge exactly.
pub(crate) const FEATURE_NOT_SUPPORTED: &str = "0A000";
pub(crate) const DATATYPE_MISMATCH: &str = "42804";
/// 42601: malformed input (a startup option without a value).
pub(crate) const SYNTAX_ERROR: &str = "42601";
/// 55P02: a setting the server takes only when a backend starts.
pub(crate) const CANT_CHANGE_RUNTIME_PARAM: &str = "55P02";
/// A statement inside a transaction that already failed.
pub(crate) const IN_FAILED_TRANSACTION: &str = "25P02";
/// 42P05: a Parse names a prepared statement the client already has.
pub(crate) const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
/// XX000: shards answered in a way shardgate cannot combine into one server's reply.
pub(crate) const INTERNAL_ERROR: &str = "XX000";
