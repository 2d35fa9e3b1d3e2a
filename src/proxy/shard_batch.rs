//! A batch: one extended-protocol request (one Sync) of several Bind/Execute units, each of
//! which needs one shard, spread over several shards (JDBC `executeBatch`, asyncpg
//! `executemany`, psycopg `executemany` and pipelines). Each shard gets the request's Parses,
//! statement Describes and Closes, and its own units' Binds, portal Describes and Executes; the
//! client gets every reply in its own message order, as one server sends them, up to the first
//! error (in that order), then one ReadyForQuery. Running it atomically is the fan-out's job.

use std::collections::HashMap;

use bytes::BytesMut;
use shardgate_wire::{backend, peek_header, tag, FrontendRef};

use super::merge::{frames, incidental, named_error, Mismatch};

/// The reply one client message of a batch expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    ParseComplete,
    BindComplete,
    CloseComplete,
    /// ParameterDescription, then RowDescription or NoData.
    Statement,
    /// RowDescription or NoData.
    Portal,
    /// DataRows, then CommandComplete, EmptyQueryResponse or PortalSuspended.
    Rows,
}

/// Which shards run one client message: every shard of the batch, or one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runs {
    Every,
    One(usize),
}

/// One client message of a batch (Sync excluded): what it expects and where it runs.
pub(crate) type Step = (Reply, Runs);

/// A request per shard: the shard's index and the messages it runs.
pub(crate) type ShardRequests = Vec<(usize, BytesMut)>;

/// The per-shard requests of the batch at the start of `buf` (shards in ascending order), and
/// its steps; `units` is the shard of each Bind in order. None if it is not a batch shardgate
/// can split: anything but Parse, Bind, Describe, Execute, Close before the Sync, an Execute of
/// a portal bound outside the request, or a Flush not right before the Sync (the client waits
/// for replies before it syncs: see [`flush_ended`]).
pub(super) fn batch_requests(
    buf: &[u8],
    max_len: usize,
    units: &[usize],
) -> Option<(ShardRequests, Vec<Step>)> {
    let mut shards: Vec<usize> = units.to_vec();
    shards.sort_unstable();
    shards.dedup();
    let mut requests: ShardRequests = shards.iter().map(|&s| (s, BytesMut::new())).collect();
    let mut steps = Vec::new();
    let mut portals: HashMap<&[u8], usize> = HashMap::new();
    let mut binds = units.iter();
    let mut pos = 0;
    loop {
        let h = peek_header(&buf[pos..], max_len).ok()??;
        let frame = buf.get(pos..pos + h.len)?;
        let msg = FrontendRef::decode(h.tag, &frame[5..]).ok()?;
        pos += h.len;
        let step = match msg {
            FrontendRef::Parse(_) => (Reply::ParseComplete, Runs::Every),
            FrontendRef::Bind(b) => {
                let s = *binds.next()?;
                portals.insert(b.portal, s);
                (Reply::BindComplete, Runs::One(s))
            }
            FrontendRef::Describe { kind: b'S', .. } => (Reply::Statement, Runs::Every),
            FrontendRef::Describe { name, .. } => (Reply::Portal, Runs::One(*portals.get(name)?)),
            FrontendRef::Execute { portal, .. } => (Reply::Rows, Runs::One(*portals.get(portal)?)),
            FrontendRef::Close { kind, name } => {
                if kind == b'P' {
                    portals.remove(name);
                }
                (Reply::CloseComplete, Runs::Every)
            }
            // Right before the Sync, a Flush asks for nothing the Sync does not.
            FrontendRef::Flush if buf.get(pos..).is_some_and(super::fanout::starts_with_sync) => {
                continue
            }
            FrontendRef::Sync => {
                for (_, r) in &mut requests {
                    r.extend_from_slice(frame);
                }
                return Some((requests, steps));
            }
            _ => return None,
        };
        for (s, r) in &mut requests {
            if step.1 == Runs::Every || step.1 == Runs::One(*s) {
                r.extend_from_slice(frame);
            }
        }
        steps.push(step);
    }
}

/// Whether the request at the start of `buf` ends with a Flush that no Sync follows yet: the
/// client (psycopg's `executemany(..., returning=True)`) reads the replies before it syncs, so
/// a batch's shards would have to answer before the batch may commit or roll back as a whole.
pub(super) fn flush_ended(buf: &[u8], max_len: usize) -> bool {
    let mut pos = 0;
    while let Ok(Some(h)) = peek_header(&buf[pos..], max_len) {
        pos += h.len;
        match h.tag {
            tag::FLUSH => {
                return !buf.get(pos..).is_some_and(super::fanout::starts_with_sync);
            }
            tag::SYNC | tag::QUERY | tag::FUNCTION_CALL => return false,
            _ => {}
        }
    }
    false
}

/// One shard's client-bound replies to its part of a batch.
pub(crate) struct BatchReplies<'a> {
    pub(crate) shard: usize,
    pub(crate) name: &'a str,
    pub(crate) bytes: &'a [u8],
}

/// Writes the batch's reply to `dst`: each step's reply from the shard that ran it (a step
/// every shard ran is answered once), in step order, up to and including the first error,
/// which names its shard; then ReadyForQuery(`status`).
pub(super) fn interleave_replies(
    steps: &[Step],
    shards: &[BatchReplies<'_>],
    status: u8,
    dst: &mut BytesMut,
) -> Result<(), Mismatch> {
    // Each shard's frames and how many of them were read.
    let mut all: Vec<_> = shards.iter().map(|s| (frames(s.bytes), 0usize)).collect();
    'steps: for &(reply, runs) in steps {
        let step_start = dst.len();
        let mut answered = false;
        for (i, shard) in shards.iter().enumerate() {
            if runs != Runs::Every && runs != Runs::One(shard.shard) {
                continue;
            }
            let (f, at) = &mut all[i];
            let mut described = false;
            loop {
                let Some(&(t, frame)) = f.get(*at) else {
                    return Err(Mismatch(format!("shard {} sent fewer replies", shard.name)));
                };
                *at += 1;
                if t == tag::ERROR_RESPONSE {
                    // A message every shard ran failed as a whole: no shard's success shows.
                    // One shard's Execute keeps the rows it sent first, as a server does.
                    if runs == Runs::Every {
                        dst.truncate(step_start);
                    }
                    backend::error_response(&named_error(frame, shard.name), dst);
                    break 'steps;
                }
                let last = match (reply, t) {
                    _ if incidental(t) => false,
                    (Reply::ParseComplete, tag::PARSE_COMPLETE)
                    | (Reply::BindComplete, tag::BIND_COMPLETE)
                    | (Reply::CloseComplete, tag::CLOSE_COMPLETE)
                    | (Reply::Portal, tag::ROW_DESCRIPTION | tag::NO_DATA)
                    | (
                        Reply::Rows,
                        tag::COMMAND_COMPLETE | tag::EMPTY_QUERY_RESPONSE | tag::PORTAL_SUSPENDED,
                    ) => true,
                    (Reply::Statement, tag::PARAMETER_DESCRIPTION) if !described => {
                        described = true;
                        false
                    }
                    (Reply::Statement, tag::ROW_DESCRIPTION | tag::NO_DATA) => described,
                    (Reply::Rows, tag::DATA_ROW) => false,
                    _ => {
                        return Err(Mismatch(format!(
                            "shard {} answered '{}' in a batch",
                            shard.name, t as char
                        )))
                    }
                };
                // A message every shard ran is answered once, by the first.
                if !answered {
                    dst.extend_from_slice(frame);
                }
                if last {
                    break;
                }
            }
            answered = true;
        }
    }
    backend::ready_for_query(status, dst);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use shardgate_wire::{encode_data_row, frontend, ErrorFields};

    fn unit(name: &[u8], dst: &mut BytesMut) {
        frontend::bind(name, b"s", &[], &[], &[], dst);
        frontend::execute(name, 0, dst);
    }

    #[test]
    fn each_unit_goes_to_its_shard_and_parses_everywhere() {
        let mut req = BytesMut::new();
        frontend::parse(b"s", b"INSERT ...", &[], &mut req);
        unit(b"", &mut req);
        unit(b"", &mut req);
        unit(b"", &mut req);
        frontend::sync(&mut req);
        let (requests, steps) = batch_requests(&req, usize::MAX, &[1, 0, 1]).unwrap();
        assert_eq!(requests.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1]);
        let tags = |b: &[u8]| frames(b).iter().map(|f| f.0).collect::<Vec<_>>();
        assert_eq!(tags(&requests[0].1), b"PBES");
        assert_eq!(tags(&requests[1].1), b"PBEBES");
        assert_eq!(steps.len(), 7);
        assert_eq!(steps[1], (Reply::BindComplete, Runs::One(1)));
        assert_eq!(steps[4], (Reply::Rows, Runs::One(0)));
        // A Flush, or an Execute of a portal bound elsewhere: not a batch.
        let mut flush = req.clone();
        flush.truncate(flush.len() - 5);
        frontend::flush(&mut flush);
        assert!(batch_requests(&flush, usize::MAX, &[1, 0, 1]).is_none());
        assert!(flush_ended(&flush, usize::MAX));
        assert!(!flush_ended(&req, usize::MAX));
        // A Flush right before the Sync (psycopg's executemany with returning, sent at once):
        // the same batch, without the Flush.
        let mut flush_sync = flush.clone();
        frontend::sync(&mut flush_sync);
        assert!(!flush_ended(&flush_sync, usize::MAX));
        let (same, _) = batch_requests(&flush_sync, usize::MAX, &[1, 0, 1]).unwrap();
        assert_eq!(same, requests);
        let mut stray = BytesMut::new();
        frontend::execute(b"p", 0, &mut stray);
        frontend::sync(&mut stray);
        assert!(batch_requests(&stray, usize::MAX, &[]).is_none());
    }

    fn rows(values: &[&str], dst: &mut BytesMut) {
        for v in values {
            encode_data_row(&[Some(v.as_bytes())], dst);
        }
    }

    #[test]
    fn replies_come_in_message_order_up_to_the_first_error() {
        let steps = [
            (Reply::ParseComplete, Runs::Every),
            (Reply::BindComplete, Runs::One(1)),
            (Reply::Rows, Runs::One(1)),
            (Reply::BindComplete, Runs::One(0)),
            (Reply::Rows, Runs::One(0)),
            (Reply::BindComplete, Runs::One(1)),
            (Reply::Rows, Runs::One(1)),
        ];
        let mut s0 = BytesMut::new();
        backend::parse_complete(&mut s0);
        backend::bind_complete(&mut s0);
        rows(&["b"], &mut s0);
        backend::command_complete("INSERT 0 1", &mut s0);
        backend::ready_for_query(b'T', &mut s0);
        let mut s1 = BytesMut::new();
        backend::parse_complete(&mut s1);
        backend::bind_complete(&mut s1);
        rows(&["a"], &mut s1);
        backend::command_complete("INSERT 0 1", &mut s1);
        backend::bind_complete(&mut s1);
        rows(&["c"], &mut s1);
        backend::command_complete("INSERT 0 1", &mut s1);
        backend::ready_for_query(b'T', &mut s1);
        let replies = |s0: &[u8], s1: &[u8]| {
            let shards = [
                BatchReplies {
                    shard: 0,
                    name: "s0",
                    bytes: s0,
                },
                BatchReplies {
                    shard: 1,
                    name: "s1",
                    bytes: s1,
                },
            ];
            let mut out = BytesMut::new();
            interleave_replies(&steps, &shards, b'I', &mut out).unwrap();
            frames(&out)
                .iter()
                .map(|(t, f)| match t {
                    b'D' => String::from_utf8_lossy(&f[11..]).into_owned(),
                    t => (*t as char).to_string(),
                })
                .collect::<Vec<_>>()
                .join("")
        };
        assert_eq!(replies(&s0, &s1), "12aC2bC2cCZ");
        // s0 fails its unit: s1's first unit answered before, nothing after.
        let mut bad = BytesMut::new();
        backend::parse_complete(&mut bad);
        backend::bind_complete(&mut bad);
        backend::error_response(&ErrorFields::new("ERROR", "23505", "dup"), &mut bad);
        backend::ready_for_query(b'E', &mut bad);
        assert_eq!(replies(&bad, &s1), "12aC2EZ");
    }
}
