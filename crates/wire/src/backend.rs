//! Encoders for the backend messages the proxy synthesizes itself (auth, errors, sync replies).
//! Each writes one complete frame into `dst` and allocates nothing beyond growing it.

use bytes::{BufMut, BytesMut};

use crate::error_fields::ErrorFields;
use crate::frame::write_frame;
use crate::reader::put_cstr;
use crate::tag;

/// ReadyForQuery with status `b'I'`, `b'T'` or `b'E'` (see [`tag::STATUS_IDLE`] and friends).
pub fn ready_for_query(status: u8, dst: &mut BytesMut) {
    write_frame(tag::READY_FOR_QUERY, dst, |d| d.put_u8(status));
}

/// ParseComplete.
pub fn parse_complete(dst: &mut BytesMut) {
    write_frame(tag::PARSE_COMPLETE, dst, |_| {});
}

/// BindComplete.
pub fn bind_complete(dst: &mut BytesMut) {
    write_frame(tag::BIND_COMPLETE, dst, |_| {});
}

/// CloseComplete.
pub fn close_complete(dst: &mut BytesMut) {
    write_frame(tag::CLOSE_COMPLETE, dst, |_| {});
}

/// NoData.
pub fn no_data(dst: &mut BytesMut) {
    write_frame(tag::NO_DATA, dst, |_| {});
}

/// RowDescription of text columns (type `text`, OID 25, text format), for results
/// shardgate answers itself such as `SHOW shardgate.target`.
pub fn row_description_text(names: &[&str], dst: &mut BytesMut) {
    write_frame(tag::ROW_DESCRIPTION, dst, |d| {
        d.put_i16(names.len() as i16);
        for name in names {
            put_cstr(d, name.as_bytes());
            d.put_u32(0); // table OID
            d.put_i16(0); // column number
            d.put_u32(25); // text
            d.put_i16(-1); // variable length
            d.put_i32(-1); // no type modifier
            d.put_i16(0); // text format
        }
    });
}

/// CommandComplete with a command tag such as `SELECT 3` or `SET`.
pub fn command_complete(tag: &str, dst: &mut BytesMut) {
    write_frame(tag::COMMAND_COMPLETE, dst, |d| put_cstr(d, tag.as_bytes()));
}

/// PortalSuspended: an Execute's row limit was reached.
pub fn portal_suspended(dst: &mut BytesMut) {
    write_frame(tag::PORTAL_SUSPENDED, dst, |_| {});
}

/// EmptyQueryResponse.
pub fn empty_query(dst: &mut BytesMut) {
    write_frame(tag::EMPTY_QUERY_RESPONSE, dst, |_| {});
}

/// ParameterStatus.
pub fn parameter_status(name: &str, value: &str, dst: &mut BytesMut) {
    write_frame(tag::PARAMETER_STATUS, dst, |d| {
        put_cstr(d, name.as_bytes());
        put_cstr(d, value.as_bytes());
    });
}

/// BackendKeyData.
pub fn backend_key_data(pid: i32, secret: i32, dst: &mut BytesMut) {
    write_frame(tag::BACKEND_KEY_DATA, dst, |d| {
        d.put_i32(pid);
        d.put_i32(secret);
    });
}

fn auth(code: i32, dst: &mut BytesMut, data: impl FnOnce(&mut BytesMut)) {
    write_frame(tag::AUTHENTICATION, dst, |d| {
        d.put_i32(code);
        data(d);
    });
}

/// AuthenticationOk.
pub fn auth_ok(dst: &mut BytesMut) {
    auth(0, dst, |_| {});
}

/// AuthenticationCleartextPassword.
pub fn auth_cleartext(dst: &mut BytesMut) {
    auth(3, dst, |_| {});
}

/// AuthenticationMD5Password.
pub fn auth_md5(salt: [u8; 4], dst: &mut BytesMut) {
    auth(5, dst, |d| d.extend_from_slice(&salt));
}

/// AuthenticationSASL offering these mechanisms, e.g. `&["SCRAM-SHA-256"]`.
pub fn auth_sasl(mechanisms: &[&str], dst: &mut BytesMut) {
    auth_sasl_iter(mechanisms.iter().copied(), dst);
}

/// AuthenticationSASL from any list of names. Empty names are skipped: one would end the list.
pub(crate) fn auth_sasl_iter<'m>(mechanisms: impl Iterator<Item = &'m str>, dst: &mut BytesMut) {
    auth(10, dst, |d| {
        for m in mechanisms.filter(|m| !m.is_empty()) {
            put_cstr(d, m.as_bytes());
        }
        d.put_u8(0);
    });
}

/// AuthenticationSASLContinue carrying the server-first message.
pub fn auth_sasl_continue(data: &[u8], dst: &mut BytesMut) {
    auth(11, dst, |d| d.extend_from_slice(data));
}

/// AuthenticationSASLFinal carrying the server-final message.
pub fn auth_sasl_final(data: &[u8], dst: &mut BytesMut) {
    auth(12, dst, |d| d.extend_from_slice(data));
}

/// ErrorResponse.
pub fn error_response(fields: &ErrorFields, dst: &mut BytesMut) {
    write_frame(tag::ERROR_RESPONSE, dst, |d| fields.encode_body(d));
}

/// NoticeResponse.
pub fn notice_response(fields: &ErrorFields, dst: &mut BytesMut) {
    write_frame(tag::NOTICE_RESPONSE, dst, |d| fields.encode_body(d));
}
