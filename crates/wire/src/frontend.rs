//! Encoders for frontend (client to server) messages, each writing one complete frame into `dst`.
//! They allocate nothing beyond growing `dst`, so the proxy can re-encode on the hot path.

use bytes::{BufMut, BytesMut};

use crate::frame::write_frame;
use crate::reader::put_cstr;
use crate::tag;

/// Query: a simple-protocol SQL string.
pub fn query(sql: &[u8], dst: &mut BytesMut) {
    write_frame(tag::QUERY, dst, |d| put_cstr(d, sql));
}

/// Parse with parameter type OIDs (0 = let the server infer). At most 65535 types.
pub fn parse(name: &[u8], query: &[u8], param_types: &[u32], dst: &mut BytesMut) {
    write_frame(tag::PARSE, dst, |d| {
        put_cstr(d, name);
        put_cstr(d, query);
        d.put_u16(count16(param_types.len()));
        for &oid in param_types {
            d.put_u32(oid);
        }
    });
}

/// Parse with the type list copied verbatim from [`crate::ParamTypes::raw`].
pub fn parse_raw_types(name: &[u8], query: &[u8], param_types_raw: &[u8], dst: &mut BytesMut) {
    write_frame(tag::PARSE, dst, |d| {
        put_cstr(d, name);
        put_cstr(d, query);
        d.extend_from_slice(param_types_raw);
    });
}

/// Bind with formats, values and result formats copied verbatim from [`crate::BindRef::rest`];
/// used to point a client's Bind at a renamed server-side statement.
pub fn bind_renamed(portal: &[u8], statement: &[u8], rest: &[u8], dst: &mut BytesMut) {
    write_frame(tag::BIND, dst, |d| {
        put_cstr(d, portal);
        put_cstr(d, statement);
        d.extend_from_slice(rest);
    });
}

/// Bind. `None` values are SQL NULL. Each list holds at most 65535 entries.
pub fn bind(
    portal: &[u8],
    statement: &[u8],
    param_formats: &[i16],
    params: &[Option<&[u8]>],
    result_formats: &[i16],
    dst: &mut BytesMut,
) {
    write_frame(tag::BIND, dst, |d| {
        put_cstr(d, portal);
        put_cstr(d, statement);
        put_i16s(d, param_formats);
        d.put_u16(count16(params.len()));
        for param in params {
            match param {
                None => d.put_i32(-1),
                Some(value) => {
                    d.put_i32(len32(value.len()));
                    d.extend_from_slice(value);
                }
            }
        }
        put_i16s(d, result_formats);
    });
}

/// Describe a statement (`b'S'`) or portal (`b'P'`).
pub fn describe(kind: u8, name: &[u8], dst: &mut BytesMut) {
    write_frame(tag::DESCRIBE, dst, |d| {
        d.put_u8(kind);
        put_cstr(d, name);
    });
}

/// Execute a portal, returning at most `max_rows` rows (0 = all).
pub fn execute(portal: &[u8], max_rows: i32, dst: &mut BytesMut) {
    write_frame(tag::EXECUTE, dst, |d| {
        put_cstr(d, portal);
        d.put_i32(max_rows);
    });
}

/// Close a statement (`b'S'`) or portal (`b'P'`).
pub fn close(kind: u8, name: &[u8], dst: &mut BytesMut) {
    write_frame(tag::CLOSE, dst, |d| {
        d.put_u8(kind);
        put_cstr(d, name);
    });
}

/// Sync.
pub fn sync(dst: &mut BytesMut) {
    write_frame(tag::SYNC, dst, |_| {});
}

/// Flush.
pub fn flush(dst: &mut BytesMut) {
    write_frame(tag::FLUSH, dst, |_| {});
}

/// Terminate.
pub fn terminate(dst: &mut BytesMut) {
    write_frame(tag::TERMINATE, dst, |_| {});
}

/// CopyData.
pub fn copy_data(data: &[u8], dst: &mut BytesMut) {
    write_frame(tag::COPY_DATA, dst, |d| d.extend_from_slice(data));
}

/// CopyDone.
pub fn copy_done(dst: &mut BytesMut) {
    write_frame(tag::COPY_DONE, dst, |_| {});
}

/// CopyFail with the client's reason.
pub fn copy_fail(msg: &[u8], dst: &mut BytesMut) {
    write_frame(tag::COPY_FAIL, dst, |d| put_cstr(d, msg));
}

/// FunctionCall with a raw body.
pub fn function_call(body: &[u8], dst: &mut BytesMut) {
    write_frame(tag::FUNCTION_CALL, dst, |d| d.extend_from_slice(body));
}

/// A `p` message with a raw body (PasswordMessage, SASLInitialResponse or SASLResponse).
pub fn password(body: &[u8], dst: &mut BytesMut) {
    write_frame(tag::PASSWORD, dst, |d| d.extend_from_slice(body));
}

/// SASLInitialResponse: the chosen mechanism and the client-first message.
pub fn sasl_initial_response(mechanism: &str, data: &[u8], dst: &mut BytesMut) {
    write_frame(tag::PASSWORD, dst, |d| {
        put_cstr(d, mechanism.as_bytes());
        d.put_i32(len32(data.len()));
        d.extend_from_slice(data);
    });
}

/// SASLResponse: the next client message of the exchange.
pub fn sasl_response(data: &[u8], dst: &mut BytesMut) {
    password(data, dst);
}

/// PasswordMessage: a cleartext password or an `md5...` digest.
pub fn password_message(password: &str, dst: &mut BytesMut) {
    write_frame(tag::PASSWORD, dst, |d| put_cstr(d, password.as_bytes()));
}

fn put_i16s(d: &mut BytesMut, values: &[i16]) {
    d.put_u16(count16(values.len()));
    for &v in values {
        d.put_i16(v);
    }
}

/// A list count as the protocol's unsigned 16-bit field. Longer lists cannot be expressed; callers
/// build them from decoded messages, which never exceed it.
pub(crate) fn count16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or_else(|_| panic!("{n} items exceed the protocol limit of 65535"))
}

/// A value length as the protocol's i32 field; values come from frames capped far below it.
pub(crate) fn len32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or_else(|_| panic!("value of {n} bytes exceeds i32::MAX"))
}
