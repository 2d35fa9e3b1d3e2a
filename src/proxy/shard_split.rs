//! A multi-row INSERT whose rows live on several shards, split into one request per shard: the
//! statement with that shard's rows, and for the extended protocol the client's messages
//! mirrored on the unnamed statement and portal with the Bind's parameters renumbered.

use bytes::BytesMut;
use shardgate_sql::{splice_insert, ShardAnalysis};
use shardgate_wire::{frontend, peek_header, FrontendRef};

use super::shard_plan::Bound;

/// One request per shard for a split INSERT: the statement with that shard's rows, and for the
/// extended protocol the client's messages mirrored on the unnamed statement and portal with
/// the Bind's parameters renumbered.
pub(super) fn split_requests(
    stmt: &[u8],
    a: &ShardAnalysis,
    bound: &Bound<'_>,
    extended: bool,
    per: Vec<(usize, Vec<usize>)>,
    buf: &[u8],
    max_len: usize,
) -> Option<Vec<(usize, BytesMut)>> {
    let ins = a.insert.as_ref()?;
    let mut out = Vec::with_capacity(per.len());
    for (shard, rows) in per {
        let spliced = splice_insert(stmt, ins, &rows)?;
        let mut req = BytesMut::new();
        if !extended {
            frontend::query(&spliced.sql, &mut req);
            out.push((shard, req));
            continue;
        }
        let bind = bound.bind.as_ref()?;
        let types: Vec<u32> = spliced
            .params
            .iter()
            .map(|&n| bound.types.get(usize::from(n) - 1).copied().unwrap_or(0))
            .collect();
        let values: Vec<Option<&[u8]>> = bind.params().collect();
        let formats: Vec<i16> = bind.param_formats().collect();
        let new_values: Vec<Option<&[u8]>> = spliced
            .params
            .iter()
            .map(|&n| values.get(usize::from(n) - 1).copied().flatten())
            .collect();
        let new_formats: Vec<i16> = if formats.len() > 1 {
            spliced
                .params
                .iter()
                .map(|&n| formats.get(usize::from(n) - 1).copied().unwrap_or(0))
                .collect()
        } else {
            formats.clone()
        };
        let results: Vec<i16> = bind.result_formats().collect();
        let mut parsed = false;
        let mut pos = 0;
        while let Ok(Some(h)) = peek_header(&buf[pos..], max_len) {
            if buf.len() - pos < h.len {
                return None;
            }
            let msg = FrontendRef::decode(h.tag, &buf[pos + 5..pos + h.len]).ok()?;
            pos += h.len;
            match msg {
                FrontendRef::Parse(_) => {}
                FrontendRef::Bind(_) => {
                    frontend::parse(b"", &spliced.sql, &types, &mut req);
                    parsed = true;
                    frontend::bind(b"", b"", &new_formats, &new_values, &results, &mut req);
                }
                FrontendRef::Describe { kind: b'P', .. } if parsed => {
                    frontend::describe(b'P', b"", &mut req)
                }
                FrontendRef::Execute { max_rows, .. } => frontend::execute(b"", max_rows, &mut req),
                FrontendRef::Sync => {
                    frontend::sync(&mut req);
                    break;
                }
                _ => return None,
            }
        }
        out.push((shard, req));
    }
    Some(out)
}
