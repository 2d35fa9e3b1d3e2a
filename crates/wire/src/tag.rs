//! Message type bytes for both directions. Several letters mean different things per direction
//! (`S` is Sync from a client but ParameterStatus from a server), so each constant is named for its
//! message, and the direction decides which one applies.

// Frontend (client to server).
/// Simple query.
pub const QUERY: u8 = b'Q';
/// Extended protocol: Parse.
pub const PARSE: u8 = b'P';
/// Extended protocol: Bind.
pub const BIND: u8 = b'B';
/// Extended protocol: Describe.
pub const DESCRIBE: u8 = b'D';
/// Extended protocol: Execute.
pub const EXECUTE: u8 = b'E';
/// Extended protocol: Close.
pub const CLOSE: u8 = b'C';
/// Extended protocol: Sync.
pub const SYNC: u8 = b'S';
/// Extended protocol: Flush.
pub const FLUSH: u8 = b'H';
/// Terminate.
pub const TERMINATE: u8 = b'X';
/// CopyFail.
pub const COPY_FAIL: u8 = b'f';
/// PasswordMessage, SASLInitialResponse and SASLResponse (told apart by the auth state).
pub const PASSWORD: u8 = b'p';
/// FunctionCall.
pub const FUNCTION_CALL: u8 = b'F';

// Both directions.
/// CopyData.
pub const COPY_DATA: u8 = b'd';
/// CopyDone.
pub const COPY_DONE: u8 = b'c';

/// Whether a client may send a message of this type at all once logged in (PostgreSQL's own
/// list). Anything else is refused on its type byte, before waiting for the body it announces.
pub fn is_frontend(tag: u8) -> bool {
    matches!(
        tag,
        QUERY
            | PARSE
            | BIND
            | DESCRIBE
            | EXECUTE
            | CLOSE
            | SYNC
            | FLUSH
            | TERMINATE
            | COPY_FAIL
            | PASSWORD
            | FUNCTION_CALL
            | COPY_DATA
            | COPY_DONE
    )
}

// Backend (server to client).
/// Authentication request or result.
pub const AUTHENTICATION: u8 = b'R';
/// BackendKeyData.
pub const BACKEND_KEY_DATA: u8 = b'K';
/// ParameterStatus.
pub const PARAMETER_STATUS: u8 = b'S';
/// ReadyForQuery.
pub const READY_FOR_QUERY: u8 = b'Z';
/// ErrorResponse.
pub const ERROR_RESPONSE: u8 = b'E';
/// NoticeResponse.
pub const NOTICE_RESPONSE: u8 = b'N';
/// RowDescription.
pub const ROW_DESCRIPTION: u8 = b'T';
/// DataRow.
pub const DATA_ROW: u8 = b'D';
/// CommandComplete.
pub const COMMAND_COMPLETE: u8 = b'C';
/// EmptyQueryResponse.
pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
/// ParseComplete.
pub const PARSE_COMPLETE: u8 = b'1';
/// BindComplete.
pub const BIND_COMPLETE: u8 = b'2';
/// CloseComplete.
pub const CLOSE_COMPLETE: u8 = b'3';
/// NoData.
pub const NO_DATA: u8 = b'n';
/// PortalSuspended.
pub const PORTAL_SUSPENDED: u8 = b's';
/// ParameterDescription.
pub const PARAMETER_DESCRIPTION: u8 = b't';
/// CopyInResponse.
pub const COPY_IN_RESPONSE: u8 = b'G';
/// CopyOutResponse.
pub const COPY_OUT_RESPONSE: u8 = b'H';
/// CopyBothResponse.
pub const COPY_BOTH_RESPONSE: u8 = b'W';
/// NotificationResponse.
pub const NOTIFICATION_RESPONSE: u8 = b'A';
/// NegotiateProtocolVersion.
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
/// FunctionCallResponse (not decoded by [`crate::BackendMessage`]; forward it as a raw frame).
pub const FUNCTION_CALL_RESPONSE: u8 = b'V';

/// ReadyForQuery status: idle, not in a transaction block.
pub const STATUS_IDLE: u8 = b'I';
/// ReadyForQuery status: inside a transaction block.
pub const STATUS_IN_TRANSACTION: u8 = b'T';
/// ReadyForQuery status: inside a failed transaction block.
pub const STATUS_FAILED: u8 = b'E';
