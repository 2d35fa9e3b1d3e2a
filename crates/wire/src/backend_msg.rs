//! Owned decoding and encoding of backend (server to client) messages. Used where the proxy must
//! understand the server (startup, auth, errors, synthesized replies); row traffic is forwarded as
//! raw frames, and RowDescription and DataRow are kept as validated raw bodies here.

use bytes::{BufMut, Bytes, BytesMut};

use crate::backend;
use crate::error::{Result, WireError};
use crate::error_fields::ErrorFields;
use crate::frame::write_frame;
use crate::frontend::count16;
use crate::reader::{put_cstr, Reader};
use crate::rows::{DataRowRef, RowDescription};
use crate::tag;

/// An authentication request or result (`R`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// Authentication succeeded.
    Ok,
    /// Send the password in clear.
    CleartextPassword,
    /// Send `md5(md5(password + user) + salt)`.
    Md5Password {
        /// The salt to hash with.
        salt: [u8; 4],
    },
    /// Start a SASL exchange with one of these mechanisms.
    Sasl {
        /// Mechanism names, e.g. `SCRAM-SHA-256`.
        mechanisms: Vec<String>,
    },
    /// Server-first (or later) SASL message.
    SaslContinue(Bytes),
    /// Server-final SASL message.
    SaslFinal(Bytes),
    /// Any other method (Kerberos, GSS, SSPI), by code. Its data, if any, is not kept: the proxy
    /// does not speak these methods and can only refuse them.
    Other(i32),
}

const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// One backend message, owning its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    /// `R`.
    Authentication(Authentication),
    /// `K`: the key a client needs to cancel queries on this backend.
    BackendKeyData {
        /// Backend process id.
        pid: i32,
        /// Secret key.
        secret: i32,
    },
    /// `S`: a run-time parameter's current value.
    ParameterStatus {
        /// Parameter name.
        name: String,
        /// Its value.
        value: String,
    },
    /// `Z`: transaction status `b'I'`, `b'T'` or `b'E'`.
    ReadyForQuery(u8),
    /// `E`.
    ErrorResponse(ErrorFields),
    /// `N`.
    NoticeResponse(ErrorFields),
    /// `T`, raw but validated body (decode with [`RowDescription::decode`]).
    RowDescription(Bytes),
    /// `D`, raw but validated body (decode with [`crate::DataRow::decode`]).
    DataRow(Bytes),
    /// `C`: the command tag, e.g. `SELECT 3`.
    CommandComplete(String),
    /// `I`.
    EmptyQueryResponse,
    /// `1`.
    ParseComplete,
    /// `2`.
    BindComplete,
    /// `3`.
    CloseComplete,
    /// `n`.
    NoData,
    /// `s`.
    PortalSuspended,
    /// `t`: parameter type OIDs of a prepared statement.
    ParameterDescription(Vec<u32>),
    /// `G`, raw but validated body.
    CopyInResponse(Bytes),
    /// `H`, raw but validated body.
    CopyOutResponse(Bytes),
    /// `W`, raw but validated body.
    CopyBothResponse(Bytes),
    /// `d`.
    CopyData(Bytes),
    /// `c`.
    CopyDone,
    /// `A`: a NOTIFY delivered to this session.
    NotificationResponse {
        /// Notifying backend's process id.
        pid: i32,
        /// Channel name.
        channel: String,
        /// Payload.
        payload: String,
    },
    /// `v`: the server's newest supported protocol version and the `_pq_.` options it did not
    /// know.
    NegotiateProtocolVersion {
        /// Newest version the server supports for the major version asked for, as a whole
        /// version code (`3 << 16` for 3.0): what PostgreSQL sends, and what libpq compares
        /// with the version it asked for.
        newest_version: i32,
        /// Protocol options it did not recognize.
        unrecognized: Vec<String>,
    },
}

fn decode_auth(body: &[u8]) -> Result<Authentication> {
    let mut r = Reader::new(body, "Authentication");
    let auth = match r.i32()? {
        AUTH_OK => Authentication::Ok,
        AUTH_CLEARTEXT => Authentication::CleartextPassword,
        AUTH_MD5 => {
            let mut salt = [0; 4];
            salt.copy_from_slice(r.bytes(4)?);
            Authentication::Md5Password { salt }
        }
        AUTH_SASL => {
            let mut mechanisms = Vec::new();
            loop {
                let name = r.str()?;
                if name.is_empty() {
                    break;
                }
                mechanisms.push(name.to_owned());
            }
            Authentication::Sasl { mechanisms }
        }
        AUTH_SASL_CONTINUE => Authentication::SaslContinue(Bytes::copy_from_slice(r.rest())),
        AUTH_SASL_FINAL => Authentication::SaslFinal(Bytes::copy_from_slice(r.rest())),
        other => {
            r.rest();
            Authentication::Other(other)
        }
    };
    r.finish()?;
    Ok(auth)
}

/// CopyIn/Out/BothResponse: an overall format byte, then a count and one i16 format per column.
fn validate_copy_response(body: &[u8], what: &'static str) -> Result<Bytes> {
    let mut r = Reader::new(body, what);
    r.u8()?;
    let n = r.count16()?;
    r.items(n, 2)?;
    r.finish()?;
    Ok(Bytes::copy_from_slice(body))
}

fn one_string(body: &[u8], what: &'static str) -> Result<String> {
    let mut r = Reader::new(body, what);
    let s = r.str()?.to_owned();
    r.finish()?;
    Ok(s)
}

fn empty(body: &[u8], what: &'static str, msg: BackendMessage) -> Result<BackendMessage> {
    Reader::new(body, what).finish().map(|()| msg)
}

impl BackendMessage {
    /// Decodes the body of a frame with type byte `tag`. FunctionCallResponse (`V`) and other
    /// tags fail with [`WireError::UnknownTag`]; forward those as raw frames.
    pub fn decode(tag: u8, body: &[u8]) -> Result<Self> {
        use BackendMessage as M;
        Ok(match tag {
            tag::AUTHENTICATION => M::Authentication(decode_auth(body)?),
            tag::BACKEND_KEY_DATA => {
                let mut r = Reader::new(body, "BackendKeyData");
                let (pid, secret) = (r.i32()?, r.i32()?);
                r.finish()?;
                M::BackendKeyData { pid, secret }
            }
            tag::PARAMETER_STATUS => {
                let mut r = Reader::new(body, "ParameterStatus");
                let name = r.str()?.to_owned();
                let value = r.str()?.to_owned();
                r.finish()?;
                M::ParameterStatus { name, value }
            }
            tag::READY_FOR_QUERY => {
                let mut r = Reader::new(body, "ReadyForQuery");
                let status = r.u8()?;
                r.finish()?;
                if !matches!(status, b'I' | b'T' | b'E') {
                    return Err(r.err("unknown transaction status"));
                }
                M::ReadyForQuery(status)
            }
            tag::ERROR_RESPONSE => M::ErrorResponse(ErrorFields::decode(body, "ErrorResponse")?),
            tag::NOTICE_RESPONSE => M::NoticeResponse(ErrorFields::decode(body, "NoticeResponse")?),
            tag::ROW_DESCRIPTION => {
                RowDescription::validate(body)?;
                M::RowDescription(Bytes::copy_from_slice(body))
            }
            tag::DATA_ROW => {
                DataRowRef::decode(body)?;
                M::DataRow(Bytes::copy_from_slice(body))
            }
            tag::COMMAND_COMPLETE => M::CommandComplete(one_string(body, "CommandComplete")?),
            tag::EMPTY_QUERY_RESPONSE => empty(body, "EmptyQueryResponse", M::EmptyQueryResponse)?,
            tag::PARSE_COMPLETE => empty(body, "ParseComplete", M::ParseComplete)?,
            tag::BIND_COMPLETE => empty(body, "BindComplete", M::BindComplete)?,
            tag::CLOSE_COMPLETE => empty(body, "CloseComplete", M::CloseComplete)?,
            tag::NO_DATA => empty(body, "NoData", M::NoData)?,
            tag::PORTAL_SUSPENDED => empty(body, "PortalSuspended", M::PortalSuspended)?,
            tag::PARAMETER_DESCRIPTION => {
                let mut r = Reader::new(body, "ParameterDescription");
                let n = r.count16()?;
                let oids = r.items(n, 4)?;
                r.finish()?;
                let mut o = Reader::new(oids, "ParameterDescription");
                M::ParameterDescription((0..n).filter_map(|_| o.u32().ok()).collect())
            }
            tag::COPY_IN_RESPONSE => {
                M::CopyInResponse(validate_copy_response(body, "CopyInResponse")?)
            }
            tag::COPY_OUT_RESPONSE => {
                M::CopyOutResponse(validate_copy_response(body, "CopyOutResponse")?)
            }
            tag::COPY_BOTH_RESPONSE => {
                M::CopyBothResponse(validate_copy_response(body, "CopyBothResponse")?)
            }
            tag::COPY_DATA => M::CopyData(Bytes::copy_from_slice(body)),
            tag::COPY_DONE => empty(body, "CopyDone", M::CopyDone)?,
            tag::NOTIFICATION_RESPONSE => {
                let mut r = Reader::new(body, "NotificationResponse");
                let pid = r.i32()?;
                let channel = r.str()?.to_owned();
                let payload = r.str()?.to_owned();
                r.finish()?;
                M::NotificationResponse {
                    pid,
                    channel,
                    payload,
                }
            }
            tag::NEGOTIATE_PROTOCOL_VERSION => {
                let mut r = Reader::new(body, "NegotiateProtocolVersion");
                let newest_version = r.i32()?;
                let n = usize::try_from(r.i32()?).map_err(|_| r.err("negative option count"))?;
                // Each name takes at least its NUL, which caps the allocation by the body size.
                let mut unrecognized = Vec::with_capacity(n.min(r.remaining()));
                for _ in 0..n {
                    unrecognized.push(r.str()?.to_owned());
                }
                r.finish()?;
                M::NegotiateProtocolVersion {
                    newest_version,
                    unrecognized,
                }
            }
            other => return Err(WireError::UnknownTag(other)),
        })
    }

    /// Appends this message as a complete frame.
    pub fn encode(&self, dst: &mut BytesMut) {
        use BackendMessage as M;
        match self {
            M::Authentication(auth) => encode_auth(auth, dst),
            M::BackendKeyData { pid, secret } => backend::backend_key_data(*pid, *secret, dst),
            M::ParameterStatus { name, value } => backend::parameter_status(name, value, dst),
            M::ReadyForQuery(status) => backend::ready_for_query(*status, dst),
            M::ErrorResponse(fields) => backend::error_response(fields, dst),
            M::NoticeResponse(fields) => backend::notice_response(fields, dst),
            M::RowDescription(body) => raw(tag::ROW_DESCRIPTION, body, dst),
            M::DataRow(body) => raw(tag::DATA_ROW, body, dst),
            M::CommandComplete(command) => backend::command_complete(command, dst),
            M::EmptyQueryResponse => backend::empty_query(dst),
            M::ParseComplete => backend::parse_complete(dst),
            M::BindComplete => backend::bind_complete(dst),
            M::CloseComplete => backend::close_complete(dst),
            M::NoData => backend::no_data(dst),
            M::PortalSuspended => write_frame(tag::PORTAL_SUSPENDED, dst, |_| {}),
            M::ParameterDescription(oids) => write_frame(tag::PARAMETER_DESCRIPTION, dst, |d| {
                d.put_u16(count16(oids.len()));
                oids.iter().for_each(|&oid| d.put_u32(oid));
            }),
            M::CopyInResponse(body) => raw(tag::COPY_IN_RESPONSE, body, dst),
            M::CopyOutResponse(body) => raw(tag::COPY_OUT_RESPONSE, body, dst),
            M::CopyBothResponse(body) => raw(tag::COPY_BOTH_RESPONSE, body, dst),
            M::CopyData(body) => raw(tag::COPY_DATA, body, dst),
            M::CopyDone => write_frame(tag::COPY_DONE, dst, |_| {}),
            M::NotificationResponse {
                pid,
                channel,
                payload,
            } => write_frame(tag::NOTIFICATION_RESPONSE, dst, |d| {
                d.put_i32(*pid);
                put_cstr(d, channel.as_bytes());
                put_cstr(d, payload.as_bytes());
            }),
            M::NegotiateProtocolVersion {
                newest_version,
                unrecognized,
            } => write_frame(tag::NEGOTIATE_PROTOCOL_VERSION, dst, |d| {
                d.put_i32(*newest_version);
                d.put_i32(crate::frontend::len32(unrecognized.len()));
                for name in unrecognized {
                    put_cstr(d, name.as_bytes());
                }
            }),
        }
    }
}

fn raw(tag: u8, body: &[u8], dst: &mut BytesMut) {
    write_frame(tag, dst, |d| d.extend_from_slice(body));
}

fn encode_auth(auth: &Authentication, dst: &mut BytesMut) {
    match auth {
        Authentication::Ok => backend::auth_ok(dst),
        Authentication::CleartextPassword => backend::auth_cleartext(dst),
        Authentication::Md5Password { salt } => backend::auth_md5(*salt, dst),
        Authentication::Sasl { mechanisms } => {
            backend::auth_sasl_iter(mechanisms.iter().map(String::as_str), dst);
        }
        Authentication::SaslContinue(data) => backend::auth_sasl_continue(data, dst),
        Authentication::SaslFinal(data) => backend::auth_sasl_final(data, dst),
        Authentication::Other(code) => write_frame(tag::AUTHENTICATION, dst, |d| d.put_i32(*code)),
    }
}

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
