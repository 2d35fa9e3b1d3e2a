//! Zero-copy decoding of frontend (client to server) message bodies. Views borrow the frame body,
//! so the proxy can inspect a Parse or Bind, route it, and re-encode it without allocating.

use bytes::BytesMut;

use crate::error::{Result, WireError};
use crate::frontend;
use crate::reader::Reader;
use crate::tag;

/// One frontend message, borrowing its frame body. Strings are raw bytes without their NUL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendRef<'a> {
    /// Simple query.
    Query {
        /// The SQL text.
        sql: &'a [u8],
    },
    /// Prepare a statement.
    Parse(ParseRef<'a>),
    /// Bind parameters to a statement, creating a portal.
    Bind(BindRef<'a>),
    /// Describe a statement (`b'S'`) or portal (`b'P'`).
    Describe {
        /// `b'S'` or `b'P'`.
        kind: u8,
        /// Statement or portal name; empty for the unnamed one.
        name: &'a [u8],
    },
    /// Run a portal.
    Execute {
        /// Portal name.
        portal: &'a [u8],
        /// Row limit; 0 means no limit.
        max_rows: i32,
    },
    /// Close a statement (`b'S'`) or portal (`b'P'`).
    Close {
        /// `b'S'` or `b'P'`.
        kind: u8,
        /// Statement or portal name.
        name: &'a [u8],
    },
    /// End of an extended-protocol batch.
    Sync,
    /// Ask the server to flush its output.
    Flush,
    /// Close the session.
    Terminate,
    /// COPY FROM STDIN payload.
    CopyData(&'a [u8]),
    /// COPY FROM STDIN finished.
    CopyDone,
    /// COPY FROM STDIN aborted by the client.
    CopyFail {
        /// The client's reason.
        message: &'a [u8],
    },
    /// PasswordMessage, SASLInitialResponse or SASLResponse; which one depends on the auth state,
    /// so the body is left raw (see [`decode_password_message`], [`decode_sasl_initial_response`]).
    Password(&'a [u8]),
    /// FunctionCall, raw body.
    FunctionCall(&'a [u8]),
}

/// A Parse message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseRef<'a> {
    /// Statement name; empty for the unnamed statement.
    pub name: &'a [u8],
    /// The SQL text.
    pub query: &'a [u8],
    /// Parameter type OIDs the client specified (0 = unspecified).
    pub param_types: ParamTypes<'a>,
}

/// The parameter type list of a Parse: an i16 count followed by that many u32 OIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamTypes<'a> {
    /// Count and OIDs, exactly as on the wire; validated at decode time.
    raw: &'a [u8],
}

impl<'a> ParamTypes<'a> {
    fn oids(&self) -> &'a [u8] {
        self.raw.get(2..).unwrap_or_default()
    }

    /// Number of OIDs.
    pub fn len(&self) -> usize {
        self.oids().len() / 4
    }

    /// True if the client specified no types.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`th OID.
    pub fn get(&self, i: usize) -> Option<u32> {
        let at = i.checked_mul(4)?;
        let b = self.oids().get(at..at.checked_add(4)?)?;
        Some(be_u32(b))
    }

    /// All OIDs in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + 'a {
        self.oids().chunks_exact(4).map(be_u32)
    }

    /// Count and OIDs as on the wire, for [`frontend::parse_raw_types`].
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
}

/// A Bind message. Every length inside it was checked when it was decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindRef<'a> {
    /// Destination portal; empty for the unnamed portal.
    pub portal: &'a [u8],
    /// Source statement; empty for the unnamed statement.
    pub statement: &'a [u8],
    rest: &'a [u8],
    param_formats: &'a [u8],
    param_count: usize,
    params: &'a [u8],
    result_formats: &'a [u8],
}

/// Folds a chunk of at most 4 bytes into an integer; written without indexing so it cannot panic.
fn be_u32(b: &[u8]) -> u32 {
    b.iter().fold(0, |acc, &x| (acc << 8) | u32::from(x))
}

fn i16s(raw: &[u8]) -> impl Iterator<Item = i16> + '_ {
    raw.chunks_exact(2).map(|b| be_u32(b) as u16 as i16)
}

impl<'a> BindRef<'a> {
    /// Parameter format codes (0 text, 1 binary): none (all text), one (for all), or one each.
    pub fn param_formats(&self) -> impl Iterator<Item = i16> + 'a {
        i16s(self.param_formats)
    }

    /// Number of parameter values.
    pub fn param_count(&self) -> usize {
        self.param_count
    }

    /// Parameter values in order; `None` is SQL NULL.
    pub fn params(&self) -> impl Iterator<Item = Option<&'a [u8]>> + 'a {
        let mut r = Reader::new(self.params, "Bind");
        // The region was validated by `decode`, so the reads cannot fail; ending on error anyway
        // keeps this total without an unwrap.
        std::iter::from_fn(move || match r.remaining() {
            0 => None,
            _ => r.nullable_bytes().ok(),
        })
    }

    /// Result column format codes: none (all text), one (for all), or one per column.
    pub fn result_formats(&self) -> impl Iterator<Item = i16> + 'a {
        i16s(self.result_formats)
    }

    /// Everything after the statement name's NUL (formats, values, result formats), to re-encode
    /// this Bind under another portal or statement name with [`frontend::bind_renamed`].
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    fn decode(body: &'a [u8]) -> Result<Self> {
        let mut r = Reader::new(body, "Bind");
        let portal = r.cstr()?;
        let statement = r.cstr()?;
        let rest = r.clone().rest();
        let n_formats = r.count16()?;
        let param_formats = r.items(n_formats, 2)?;
        let param_count = r.count16()?;
        if n_formats > 1 && n_formats != param_count {
            return Err(r.err("parameter format count does not match parameter count"));
        }
        let before_params = r.clone().rest();
        for _ in 0..param_count {
            r.nullable_bytes()?;
        }
        let params = before_params
            .get(..before_params.len() - r.remaining())
            .unwrap_or_default();
        let n_results = r.count16()?;
        let result_formats = r.items(n_results, 2)?;
        r.finish()?;
        Ok(Self {
            portal,
            statement,
            rest,
            param_formats,
            param_count,
            params,
            result_formats,
        })
    }
}

fn decode_parse(body: &[u8]) -> Result<ParseRef<'_>> {
    let mut r = Reader::new(body, "Parse");
    let name = r.cstr()?;
    let query = r.cstr()?;
    let raw = r.clone().rest();
    let n = r.count16()?;
    r.items(n, 4)?;
    r.finish()?;
    Ok(ParseRef {
        name,
        query,
        param_types: ParamTypes { raw },
    })
}

/// Describe and Close share a layout: a kind byte and a name.
fn decode_target<'a>(body: &'a [u8], what: &'static str) -> Result<(u8, &'a [u8])> {
    let mut r = Reader::new(body, what);
    let kind = r.u8()?;
    if kind != b'S' && kind != b'P' {
        return Err(r.err("kind must be 'S' or 'P'"));
    }
    let name = r.cstr()?;
    r.finish()?;
    Ok((kind, name))
}

fn single_cstr<'a>(body: &'a [u8], what: &'static str) -> Result<&'a [u8]> {
    let mut r = Reader::new(body, what);
    let s = r.cstr()?;
    r.finish()?;
    Ok(s)
}

fn empty<T>(body: &[u8], what: &'static str, msg: T) -> Result<T> {
    Reader::new(body, what).finish().map(|()| msg)
}

impl<'a> FrontendRef<'a> {
    /// Decodes the body of a frame with type byte `tag`.
    pub fn decode(tag: u8, body: &'a [u8]) -> Result<Self> {
        Ok(match tag {
            tag::QUERY => Self::Query {
                sql: single_cstr(body, "Query")?,
            },
            tag::PARSE => Self::Parse(decode_parse(body)?),
            tag::BIND => Self::Bind(BindRef::decode(body)?),
            tag::DESCRIBE => {
                let (kind, name) = decode_target(body, "Describe")?;
                Self::Describe { kind, name }
            }
            tag::EXECUTE => {
                let mut r = Reader::new(body, "Execute");
                let portal = r.cstr()?;
                let max_rows = r.i32()?;
                r.finish()?;
                Self::Execute { portal, max_rows }
            }
            tag::CLOSE => {
                let (kind, name) = decode_target(body, "Close")?;
                Self::Close { kind, name }
            }
            tag::SYNC => empty(body, "Sync", Self::Sync)?,
            tag::FLUSH => empty(body, "Flush", Self::Flush)?,
            tag::TERMINATE => empty(body, "Terminate", Self::Terminate)?,
            tag::COPY_DATA => Self::CopyData(body),
            tag::COPY_DONE => empty(body, "CopyDone", Self::CopyDone)?,
            tag::COPY_FAIL => Self::CopyFail {
                message: single_cstr(body, "CopyFail")?,
            },
            tag::PASSWORD => Self::Password(body),
            tag::FUNCTION_CALL => Self::FunctionCall(body),
            other => return Err(WireError::UnknownTag(other)),
        })
    }

    /// The message's type byte.
    pub fn tag(&self) -> u8 {
        match self {
            Self::Query { .. } => tag::QUERY,
            Self::Parse(_) => tag::PARSE,
            Self::Bind(_) => tag::BIND,
            Self::Describe { .. } => tag::DESCRIBE,
            Self::Execute { .. } => tag::EXECUTE,
            Self::Close { .. } => tag::CLOSE,
            Self::Sync => tag::SYNC,
            Self::Flush => tag::FLUSH,
            Self::Terminate => tag::TERMINATE,
            Self::CopyData(_) => tag::COPY_DATA,
            Self::CopyDone => tag::COPY_DONE,
            Self::CopyFail { .. } => tag::COPY_FAIL,
            Self::Password(_) => tag::PASSWORD,
            Self::FunctionCall(_) => tag::FUNCTION_CALL,
        }
    }

    /// Appends this message as a complete frame.
    pub fn encode(&self, dst: &mut BytesMut) {
        match *self {
            Self::Query { sql } => frontend::query(sql, dst),
            Self::Parse(p) => frontend::parse_raw_types(p.name, p.query, p.param_types.raw, dst),
            Self::Bind(b) => frontend::bind_renamed(b.portal, b.statement, b.rest, dst),
            Self::Describe { kind, name } => frontend::describe(kind, name, dst),
            Self::Execute { portal, max_rows } => frontend::execute(portal, max_rows, dst),
            Self::Close { kind, name } => frontend::close(kind, name, dst),
            Self::Sync => frontend::sync(dst),
            Self::Flush => frontend::flush(dst),
            Self::Terminate => frontend::terminate(dst),
            Self::CopyData(data) => frontend::copy_data(data, dst),
            Self::CopyDone => frontend::copy_done(dst),
            Self::CopyFail { message } => frontend::copy_fail(message, dst),
            Self::Password(body) => frontend::password(body, dst),
            Self::FunctionCall(body) => frontend::function_call(body, dst),
        }
    }
}

/// Parses a SASLInitialResponse body: the mechanism name and the initial client data, `None` when
/// the client sent length -1.
pub fn decode_sasl_initial_response(body: &[u8]) -> Result<(&str, Option<&[u8]>)> {
    let mut r = Reader::new(body, "SASLInitialResponse");
    let mechanism = r.str()?;
    let data = r.nullable_bytes()?;
    r.finish()?;
    Ok((mechanism, data))
}

/// Parses a PasswordMessage body: one NUL-terminated string (cleartext, or `md5` + hex digest).
pub fn decode_password_message(body: &[u8]) -> Result<&str> {
    let mut r = Reader::new(body, "PasswordMessage");
    let password = r.str()?;
    r.finish()?;
    Ok(password)
}

#[cfg(test)]
#[path = "frontend_ref_tests.rs"]
mod tests;
