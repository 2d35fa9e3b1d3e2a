//! The client's side of a scatter: which messages it sent (so that it gets exactly the replies
//! they ask for), the Bind the shards re-run with per-column result formats, and its
//! LIMIT/OFFSET parameters read as numbers.

use bytes::Bytes;
use shardgate_sql::{Count, OutputCol, ScatterSelect};
use shardgate_wire::{peek_header, BackendMessage, ErrorFields, FrontendRef};

use super::errors::ClientError;
use super::mirror::Msg;
use super::scatter::{own_with_hint, Failure};
use super::sqlstate;

/// What the client sent: its messages, and the Bind the shards re-run.
pub(super) struct ClientRequest {
    pub(super) msgs: Vec<Msg>,
    pub(super) extended: bool,
    pub(super) param_formats: Vec<i16>,
    pub(super) params: Vec<Option<Bytes>>,
    pub(super) result_formats: Vec<i16>,
    /// The Execute's row limit (0: all rows). The portal is not fetched again: a second
    /// Execute is refused, and Sync ends it.
    pub(super) row_limit: u32,
    /// The Bind's portal name (the client may Execute it again inside a transaction).
    pub(super) portal: Bytes,
}

pub(super) fn read_request(
    request: &[u8],
    max_len: usize,
) -> Result<Option<ClientRequest>, ClientError> {
    let mut r = ClientRequest {
        msgs: Vec::new(),
        extended: false,
        param_formats: Vec::new(),
        params: Vec::new(),
        result_formats: Vec::new(),
        row_limit: 0,
        portal: Bytes::new(),
    };
    let mut pos = 0;
    while let Some(h) = peek_header(&request[pos..], max_len)? {
        if request.len() - pos < h.len {
            break;
        }
        let msg = FrontendRef::decode(h.tag, &request[pos + 5..pos + h.len])?;
        pos += h.len;
        if let FrontendRef::Bind(b) = &msg {
            r.param_formats = b.param_formats().collect();
            r.params = b.params().map(|p| p.map(Bytes::copy_from_slice)).collect();
            r.result_formats = b.result_formats().collect();
            r.portal = Bytes::copy_from_slice(b.portal);
        }
        if let FrontendRef::Execute { max_rows, .. } = &msg {
            // A negative count is all rows, as on the server.
            r.row_limit = u32::try_from(*max_rows).unwrap_or(0);
        }
        // A Close, a Flush: not mirrored.
        let m = Msg::of(&msg);
        let Some(m) = m else {
            return Ok(None);
        };
        r.extended |= m != Msg::Query;
        r.msgs.push(m);
    }
    let binds = r.msgs.iter().filter(|m| **m == Msg::Bind).count();
    let executes = r.msgs.iter().filter(|m| **m == Msg::Execute).count();
    if r.extended && (binds != 1 || executes != 1) {
        return Ok(None);
    }
    Ok(Some(r))
}

/// The first portal of the request at the start of `request` that a scatter left to the client
/// (`open`, see `TxnReplay::scatter_portals`) and that the request executes or describes
/// again. A Bind or Close of such a name before that makes it an ordinary portal again, and so
/// does a simple Query for the unnamed portal (PostgreSQL drops it there); `open` forgets those.
pub(super) fn refetched_scatter_portal(
    request: &[u8],
    max_len: usize,
    open: &mut Vec<Bytes>,
) -> Option<Bytes> {
    let mut pos = 0;
    while !open.is_empty() {
        let h = peek_header(&request[pos..], max_len).ok()??;
        if request.len() - pos < h.len {
            return None;
        }
        let msg = FrontendRef::decode(h.tag, &request[pos + 5..pos + h.len]).ok()?;
        pos += h.len;
        let forget = |open: &mut Vec<Bytes>, name: &[u8]| open.retain(|p| p[..] != *name);
        match msg {
            FrontendRef::Bind(b) => forget(open, b.portal),
            FrontendRef::Close { kind: b'P', name } => forget(open, name),
            FrontendRef::Execute { portal, .. }
            | FrontendRef::Describe {
                kind: b'P',
                name: portal,
            } => {
                if let Some(p) = open.iter().find(|p| p[..] == *portal) {
                    return Some(p.clone());
                }
            }
            FrontendRef::Query { .. } => {
                forget(open, b"");
                return None;
            }
            FrontendRef::Sync | FrontendRef::FunctionCall(_) => return None,
            _ => {}
        }
    }
    None
}

/// 0A000 for an Execute (or Describe) of a portal a scatter answered in an earlier request.
pub(super) fn refetch_error(portal: &[u8]) -> ErrorFields {
    ErrorFields::new(
        "ERROR",
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!(
            "shardgate: portal \"{}\" of a query across shards cannot be fetched in parts",
            String::from_utf8_lossy(portal)
        ),
    )
    .with(
        b'D',
        "Its rows were merged from every shard in its first Execute; no shard keeps the portal \
         for a later fetch.",
    )
    .with(
        b'H',
        "Fetch all its rows in one Execute (no row limit: JDBC fetch size 0, asyncpg fetch() \
         instead of a cursor), page with LIMIT/OFFSET or by key range, or add a shard-key \
         filter so it runs on one shard.",
    )
}

/// The result format the shards should use for each shard column: the client's format of the
/// output that reads it (text for hidden columns).
pub(super) fn shard_formats(select: &ScatterSelect, client: &[i16]) -> Vec<i16> {
    if client.len() <= 1 {
        return client.to_vec();
    }
    let mut f = vec![0i16; select.shard_columns];
    for (i, out) in select.outputs.iter().enumerate() {
        let code = client.get(i).copied().unwrap_or(0);
        let cols: &[usize] = match out {
            OutputCol::Column(c) | OutputCol::Constant(c) => std::slice::from_ref(c),
            OutputCol::Agg { columns, .. } => columns,
        };
        for &c in cols {
            if let Some(slot) = f.get_mut(c) {
                *slot = code;
            }
        }
    }
    f
}

/// Whether the shards must describe the statement for [`count_value`]: a LIMIT/OFFSET
/// parameter's value is read by its type, which only the server knows for sure (a parameter
/// left unspecified takes the type of its first use, not necessarily bigint).
pub(super) fn needs_param_types(select: &ScatterSelect) -> bool {
    matches!(select.limit, Some(Count::Param(_))) || matches!(select.offset, Some(Count::Param(_)))
}

/// The parameter types of the shards' ParameterDescription body (empty when unreadable).
pub(super) fn param_types(desc: Option<&Bytes>) -> Vec<u32> {
    match desc.map(|d| BackendMessage::decode(b't', d)) {
        Some(Ok(BackendMessage::ParameterDescription(oids))) => oids,
        _ => Vec::new(),
    }
}

const INT2: u32 = 21;
const INT4: u32 = 23;
const INT8: u32 = 20;

/// A LIMIT/OFFSET value: None for no limit (`ALL`, `NULL`). Err when a parameter cannot be
/// read exactly: guessing would return the wrong number of rows. `types` are the statement's
/// parameter types as the server resolved them.
pub(super) fn count_value(
    c: Option<Count>,
    params: &[Option<Bytes>],
    formats: &[i16],
    types: &[u32],
) -> Result<Option<u64>, Failure> {
    let unreadable = || {
        own_with_hint(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "shardgate: cannot read the LIMIT/OFFSET parameter of a query across shards exactly",
            "Pass LIMIT and OFFSET as integers (int2, int4 or int8), or in text format.",
        )
    };
    let n = match c {
        None | Some(Count::All) => return Ok(None),
        Some(Count::Literal(n)) => return Ok(Some(n)),
        Some(Count::Param(n)) => n,
    };
    let i = usize::from(n).checked_sub(1).ok_or_else(unreadable)?;
    let Some(raw) = params.get(i).ok_or_else(unreadable)? else {
        return Ok(None);
    };
    let format = match formats.len() {
        0 => 0,
        1 => formats[0],
        _ => formats.get(i).copied().unwrap_or(0),
    };
    let value: i64 = if format == 1 {
        // Binary: the bytes mean what the type says (a float8's are not an int8's).
        match (types.get(i).copied(), raw.len()) {
            (Some(INT8), 8) => <[u8; 8]>::try_from(&raw[..]).map(i64::from_be_bytes).ok(),
            (Some(INT4), 4) => <[u8; 4]>::try_from(&raw[..])
                .map(|b| i32::from_be_bytes(b).into())
                .ok(),
            (Some(INT2), 2) => <[u8; 2]>::try_from(&raw[..])
                .map(|b| i16::from_be_bytes(b).into())
                .ok(),
            _ => None,
        }
    } else {
        // Text of any type: an integer is read as is; anything else ("5.0", "2.5") would be
        // rounded by the type's own rules, which are not repeated here.
        std::str::from_utf8(raw)
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }
    .ok_or_else(unreadable)?;
    // PostgreSQL refuses a negative LIMIT/OFFSET; the shards already did, with the same value.
    Ok(Some(value.max(0) as u64))
}
