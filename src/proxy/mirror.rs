//! The replies PostgreSQL sends to a request's messages before any results: ParseComplete,
//! BindComplete, and what a Describe returns. Written once for every request whose replies
//! shardgate writes itself (its own commands, a transaction end it settles across shards, the
//! head of a merged scatter), so that each answers exactly as a server would.

use bytes::{BufMut, BytesMut};
use shardgate_wire::{backend, tag, FrontendRef, RowDescription};

/// One message of a client's request, as far as the replies go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Msg {
    Parse,
    Bind,
    DescribeStatement,
    DescribePortal,
    Execute,
    Sync,
    Query,
}

impl Msg {
    /// None for a message whose reply is not mirrored (Close, Flush, a FunctionCall, COPY data).
    pub(super) fn of(m: &FrontendRef<'_>) -> Option<Msg> {
        Some(match m {
            FrontendRef::Query { .. } => Msg::Query,
            FrontendRef::Parse(_) => Msg::Parse,
            FrontendRef::Bind(_) => Msg::Bind,
            FrontendRef::Describe { kind: b'S', .. } => Msg::DescribeStatement,
            FrontendRef::Describe { .. } => Msg::DescribePortal,
            FrontendRef::Execute { .. } => Msg::Execute,
            FrontendRef::Sync => Msg::Sync,
            _ => return None,
        })
    }
}

/// What a Describe of the request's statement or portal says.
#[derive(Clone, Copy, Default)]
pub(super) struct Description<'a> {
    /// The body of the statement's ParameterDescription; None: it takes no parameters.
    pub(super) params: Option<&'a [u8]>,
    /// The result's columns; None: the statement returns no rows (NoData).
    pub(super) rows: Option<&'a RowDescription>,
}

/// Writes what PostgreSQL replies to `msg` before any results. A Describe of the statement
/// returns ParameterDescription then RowDescription (every column in text: a statement does
/// not know the result formats a Bind will ask for) or NoData; a Describe of the portal, and a
/// simple Query, the RowDescription (a Describe of a portal that returns no rows: NoData).
/// Execute, Sync and a Query's results are the caller's.
pub(super) fn reply_before_results(msg: Msg, d: Description<'_>, out: &mut BytesMut) {
    match msg {
        Msg::Parse => backend::parse_complete(out),
        Msg::Bind => backend::bind_complete(out),
        Msg::DescribeStatement => {
            let params = d.params.unwrap_or(&[0, 0]);
            out.put_u8(tag::PARAMETER_DESCRIPTION);
            out.put_u32((params.len() + 4) as u32);
            out.put_slice(params);
            match d.rows {
                Some(rows) => {
                    let mut text = rows.clone();
                    for f in &mut text.fields {
                        f.format = 0;
                    }
                    text.encode(out);
                }
                None => backend::no_data(out),
            }
        }
        Msg::DescribePortal => match d.rows {
            Some(rows) => rows.encode(out),
            None => backend::no_data(out),
        },
        Msg::Query => {
            if let Some(rows) = d.rows {
                rows.encode(out);
            }
        }
        Msg::Execute | Msg::Sync => {}
    }
}
