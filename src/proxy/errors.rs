//! The client edge's error type and the one place that turns any error into the
//! PostgreSQL ErrorResponse a client sees.

use shardgate_pool::{BackendError, PoolError};
use shardgate_wire::{ErrorFields, WireError};

use super::sqlstate;

/// Everything that can end or interrupt a client's request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// The client's socket failed or closed: nobody to answer.
    #[error("client connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid message from client: {0}")]
    Wire(#[from] WireError),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("password authentication failed for user \"{user}\"")]
    AuthFailed { user: String },
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    #[error("database \"{0}\" does not exist")]
    UnknownDatabase(String),
    #[error("sorry, too many clients already")]
    TooManyClients,
    #[error("terminating connection due to administrator command")]
    Shutdown,
    #[error("{}", .0.message)]
    StartupOption(super::params::BadOption),
    /// The server refused one of the client's startup settings when shardgate applied them
    /// at login: its own error, which ends the login as it would on a direct connection.
    #[error("the server refused a startup setting: {}", .0.message().unwrap_or_default())]
    StartupSetting(ErrorFields),
    /// A request whose first frames already went to a replica went on to pin the session.
    #[error("a statement that would keep this session on a replica arrived in a request partly sent there already")]
    PinMidRequest,
    /// A pinned session lost the server connection that held its session state.
    #[error("the server connection holding this session's state (temporary tables, locks, LISTEN, ...) was lost")]
    PinLost,
    /// A request queued on a multiplexed connection was dropped: the request ahead of it
    /// changed the connection's settings where no command showed it (see `multiplex`).
    #[error(
        "the request ahead of this one on its shared server connection changed that \
         connection's settings (a function calling set_config, say), so this request's answer, \
         computed under them, was discarded; reconnect and retry"
    )]
    RideAbandoned,
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// A server connection's socket failed while shardgate read or wrote it.
pub(super) fn server_io(conn: &shardgate_pool::ServerConn, source: std::io::Error) -> ClientError {
    ClientError::Backend(BackendError::Io {
        addr: conn.addr.clone(),
        source,
    })
}

impl ClientError {
    /// The ErrorResponse for this error, and whether the session can go on after it.
    /// None when the client cannot be told anything (its socket is gone).
    pub(crate) fn to_response(&self) -> Option<(ErrorFields, bool)> {
        let fatal = |code: &str, msg: String| Some((ErrorFields::new("FATAL", code, msg), false));
        match self {
            ClientError::Io(_) | ClientError::Tls(_) => None,
            // PostgreSQL's own wording for what a client library may recognise.
            ClientError::Wire(WireError::UnsupportedVersion { major, minor }) => fatal(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
                ),
            ),
            ClientError::Wire(WireError::UnknownTag(t)) => fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("invalid frontend message type {t}"),
            ),
            ClientError::Wire(e @ WireError::StartupLayout) => {
                fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string())
            }
            ClientError::Wire(e) => fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("invalid frontend message: {e}"),
            ),
            ClientError::Protocol(what) => fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("protocol violation: {what}"),
            ),
            ClientError::AuthFailed { .. } => fatal(sqlstate::INVALID_PASSWORD, self.to_string()),
            ClientError::NoUser => fatal(sqlstate::INVALID_AUTHORIZATION, self.to_string()),
            ClientError::UnknownDatabase(_) => {
                fatal(sqlstate::INVALID_CATALOG_NAME, self.to_string())
            }
            ClientError::TooManyClients => fatal(sqlstate::TOO_MANY_CONNECTIONS, self.to_string()),
            ClientError::Shutdown => fatal(sqlstate::ADMIN_SHUTDOWN, self.to_string()),
            ClientError::StartupOption(b) => fatal(b.code, b.message.clone()),
            ClientError::StartupSetting(fields) => Some((startup_setting_response(fields), false)),
            ClientError::PinMidRequest => Some((
                ErrorFields::new("FATAL", sqlstate::FEATURE_NOT_SUPPORTED, self.to_string()).with(
                    b'H',
                    "Reconnect, and send it outside the read-only transaction, or start the \
                     transaction with /* shardgate: primary */.",
                ),
                false,
            )),
            ClientError::PinLost | ClientError::RideAbandoned => {
                fatal(sqlstate::CONNECTION_FAILURE, self.to_string())
            }
            ClientError::Pool(e) => {
                let code = match e {
                    PoolError::Timeout { .. } => sqlstate::TOO_MANY_CONNECTIONS,
                    PoolError::Closed { .. } => sqlstate::ADMIN_SHUTDOWN,
                    PoolError::BackingOff { .. } => sqlstate::UNABLE_TO_CONNECT,
                    PoolError::Backend(b) => return backend_response(b, true),
                };
                let hint = match e {
                    PoolError::Timeout { .. } => {
                        "Raise pool.size or pool.checkout_timeout_ms, or shorten transactions."
                    }
                    _ => {
                        "Check that the PostgreSQL server is running and reachable from shardgate."
                    }
                };
                Some((
                    ErrorFields::new("ERROR", code, format!("shardgate: {e}")).with(b'H', hint),
                    true,
                ))
            }
            ClientError::Backend(b) => backend_response(b, false),
        }
    }
}

/// The server's own error for a refused startup setting, made FATAL as a direct login makes
/// it. A setting only a new backend takes (55P02, `ignore_system_indexes`) is one the server
/// would take directly: say why it is refused here.
fn startup_setting_response(fields: &ErrorFields) -> ErrorFields {
    let mut f = fields.clone();
    f.fields.retain(|(c, _)| *c != b'S' && *c != b'V');
    f.fields.insert(0, (b'S', "FATAL".to_owned()));
    f.fields.insert(1, (b'V', "FATAL".to_owned()));
    let backend_only = f
        .fields
        .iter()
        .any(|(c, v)| *c == b'C' && v == sqlstate::CANT_CHANGE_RUNTIME_PARAM);
    if backend_only {
        if let Some(m) = f.fields.iter_mut().find(|(c, _)| *c == b'M') {
            m.1 = format!(
                "shardgate cannot apply this startup setting on a pooled server connection: {}",
                m.1
            );
        }
        f.fields.retain(|(c, _)| *c != b'H');
        f.fields.push((
            b'H',
            "PostgreSQL takes this setting only when a backend starts. Connect without it, \
             or through pool.mode session."
                .to_owned(),
        ));
    }
    f
}

/// Errors from a server: its own ErrorResponse passes through untouched; connection
/// failures become 08xxx. `at_checkout` errors leave the client session usable.
fn backend_response(e: &BackendError, at_checkout: bool) -> Option<(ErrorFields, bool)> {
    let severity = if at_checkout { "ERROR" } else { "FATAL" };
    let fields = match e {
        BackendError::Server { fields, .. } if at_checkout => {
            // A server refusing shardgate's login: keep its code and text, and say who logged in.
            let mut f = fields.clone();
            if let Some(m) = f.fields.iter_mut().find(|(c, _)| *c == b'M') {
                m.1 = format!("shardgate could not log in to the server: {}", m.1);
            }
            f.fields.retain(|(c, _)| *c != b'S' && *c != b'V');
            f.fields.insert(0, (b'S', "ERROR".to_owned()));
            f.fields.insert(1, (b'V', "ERROR".to_owned()));
            f
        }
        BackendError::Server { fields, .. } => fields.clone(),
        BackendError::Connect { .. } | BackendError::ConnectTimeout { .. } => ErrorFields::new(
            severity,
            sqlstate::UNABLE_TO_CONNECT,
            format!("shardgate: {e}"),
        )
        .with(
            b'H',
            "Check that the PostgreSQL server is running and reachable from shardgate.",
        ),
        BackendError::UnsupportedAuth { .. } | BackendError::Scram { .. } => ErrorFields::new(
            severity,
            sqlstate::SERVER_REJECTED,
            format!("shardgate: {e}"),
        ),
        _ => ErrorFields::new(
            severity,
            sqlstate::CONNECTION_FAILURE,
            format!("shardgate: {e}"),
        ),
    };
    Some((fields, at_checkout))
}
