//! Combining the replies of one request that ran on several shards into the reply one server
//! would have sent: frames in the first shard's order, each shard's rows in shard order at the
//! point where its rows stand, CommandComplete counts summed, one ReadyForQuery. If any shard
//! failed, the client gets only that error (naming the shard), never partial rows.

use std::ops::ControlFlow;

use bytes::BytesMut;
use shardgate_wire::{backend, scan_frames, tag, BackendMessage};

/// One shard's client-bound replies.
pub(crate) struct ShardReplies<'a> {
    pub(crate) shard: &'a str,
    pub(crate) bytes: &'a [u8],
    /// For a split multi-row INSERT, the `VALUES` position of each row this shard inserted, in
    /// the order it inserted them: its `RETURNING` rows are put back in `VALUES` order.
    pub(crate) rows: Option<&'a [usize]>,
}

/// Why replies could not be combined (shards answered differently).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Mismatch(pub(crate) String);

struct Frames<'a> {
    frames: Vec<(u8, &'a [u8])>,
    at: usize,
}

/// The whole frames (header included) in `b`, with their tags.
pub(super) fn frames(b: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut pos = 0;
    // The bytes are replies a shard's relay already framed and held to the size limit: no
    // limit again here. A malformed tail (never expected) ends the list, as it always did.
    let _ = scan_frames(b, usize::MAX, |h, _| {
        if let Some(frame) = b.get(pos..pos + h.len) {
            out.push((h.tag, frame));
        }
        pos += h.len;
        ControlFlow::Continue(())
    });
    out
}

/// Messages that may differ between shards and are kept from the first shard only.
pub(super) fn incidental(t: u8) -> bool {
    matches!(t, tag::NOTICE_RESPONSE | tag::PARAMETER_STATUS | b'A')
}

fn is_row(t: u8) -> bool {
    t == tag::DATA_ROW || t == b'd'
}

/// The row count at the end of a command tag (`INSERT 0 3`, `UPDATE 2`, `SELECT 5`).
fn tag_count(body: &[u8]) -> Option<(&[u8], u64)> {
    let text = body.get(5..body.len().checked_sub(1)?)?;
    let space = text.iter().rposition(|&b| b == b' ')?;
    let n = std::str::from_utf8(&text[space + 1..]).ok()?.parse().ok()?;
    Some((&text[..space], n))
}

/// Writes the combined reply to `dst`, ending with ReadyForQuery(`status`). With
/// `skip_parse_complete`, the first ParseComplete of each shard is dropped (shardgate added the
/// Parse). With `sum_counts`, CommandComplete counts add up (each shard held different rows);
/// without, the first shard's count stands (a broadcast ran the same write on full copies).
pub(crate) fn merge_replies(
    shards: &[ShardReplies<'_>],
    skip_parse_complete: bool,
    sum_counts: bool,
    status: u8,
    dst: &mut BytesMut,
) -> Result<(), Mismatch> {
    let mut all: Vec<Frames<'_>> = shards
        .iter()
        .map(|s| Frames {
            frames: frames(s.bytes),
            at: 0,
        })
        .collect();
    // Any error wins, the first shard's first, and nothing else is sent.
    for (i, f) in all.iter().enumerate() {
        if let Some((_, frame)) = f.frames.iter().find(|(t, _)| *t == tag::ERROR_RESPONSE) {
            backend::error_response(&named_error(frame, shards[i].shard), dst);
            backend::ready_for_query(status, dst);
            return Ok(());
        }
    }
    if skip_parse_complete {
        for f in &mut all {
            if let Some(p) = f.frames.iter().position(|(t, _)| *t == tag::PARSE_COMPLETE) {
                f.frames.remove(p);
            }
        }
    }
    // A split INSERT's RETURNING rows are held until its CommandComplete, then put in VALUES
    // order; without positions for every shard they pass straight through.
    let positions: Option<Vec<&[usize]>> = shards.iter().map(|s| s.rows).collect();
    let mut held: Vec<(usize, &[u8])> = Vec::new();
    let Some((first, rest)) = all.split_first_mut() else {
        backend::ready_for_query(status, dst);
        return Ok(());
    };
    for &(t, frame) in &first.frames {
        if is_row(t) {
            match positions {
                Some(_) => held.push((0, frame)),
                None => dst.extend_from_slice(frame),
            }
            continue;
        }
        if incidental(t) {
            dst.extend_from_slice(frame);
            continue;
        }
        // The other shards' rows up to this point, then this frame once.
        let mut sum = tag_count(frame).filter(|_| t == tag::COMMAND_COMPLETE && sum_counts);
        for (n, other) in rest.iter_mut().enumerate() {
            while let Some(&(ot, of)) = other.frames.get(other.at) {
                if is_row(ot) {
                    match positions {
                        Some(_) => held.push((n + 1, of)),
                        // A broadcast to full copies (a reference table's write): every shard
                        // returns the same rows, which one server returns once.
                        None if !sum_counts => {}
                        None => dst.extend_from_slice(of),
                    }
                } else if !incidental(ot) {
                    break;
                }
                other.at += 1;
            }
            let Some(&(ot, of)) = other.frames.get(other.at) else {
                return Err(Mismatch(format!(
                    "shard {} sent fewer replies",
                    shards[n + 1].shard
                )));
            };
            if ot != t {
                return Err(Mismatch(format!(
                    "shard {} answered '{}' where shard {} answered '{}'",
                    shards[n + 1].shard,
                    ot as char,
                    shards[0].shard,
                    t as char
                )));
            }
            if let (Some((_, total)), Some((_, n))) = (&mut sum, tag_count(of)) {
                *total += n;
            }
            other.at += 1;
        }
        if let Some(positions) = &positions {
            release_in_values_order(&mut held, positions, dst);
        }
        match (t, sum) {
            (tag::READY_FOR_QUERY, _) => {}
            (tag::COMMAND_COMPLETE, Some((word, total))) => {
                let mut text = word.to_vec();
                text.extend_from_slice(format!(" {total}").as_bytes());
                backend::command_complete(&String::from_utf8_lossy(&text), dst);
            }
            _ => dst.extend_from_slice(frame),
        }
    }
    backend::ready_for_query(status, dst);
    Ok(())
}

/// A shard's ErrorResponse frame as fields whose detail names the shard.
pub(super) fn named_error(frame: &[u8], shard: &str) -> shardgate_wire::ErrorFields {
    let mut fields =
        match BackendMessage::decode(tag::ERROR_RESPONSE, frame.get(5..).unwrap_or_default()) {
            Ok(BackendMessage::ErrorResponse(fields)) => fields,
            _ => shardgate_wire::ErrorFields::new("ERROR", "XX000", "malformed error"),
        };
    let from = format!("shardgate: this error came from shard {shard}.");
    match fields.fields.iter_mut().find(|(c, _)| *c == b'D') {
        Some(d) => d.1 = format!("{} ({from})", d.1),
        None => fields.fields.push((b'D', from)),
    }
    fields
}

/// Writes the `held` rows (shard index, frame) to `dst` in `VALUES` order when every shard
/// returned exactly one row per row it inserted; otherwise (a trigger or `ON CONFLICT DO
/// NOTHING` skipped some) no row can be matched to its position, and they go in shard order.
fn release_in_values_order(
    held: &mut Vec<(usize, &[u8])>,
    positions: &[&[usize]],
    dst: &mut BytesMut,
) {
    if held.is_empty() {
        return;
    }
    let mut next = vec![0usize; positions.len()];
    let placed: Option<Vec<(usize, &[u8])>> = held
        .iter()
        .map(|&(shard, frame)| {
            let at = next.get_mut(shard)?;
            let position = *positions.get(shard)?.get(*at)?;
            *at += 1;
            Some((position, frame))
        })
        .collect();
    let complete = next.iter().zip(positions).all(|(n, p)| *n == p.len());
    if let (Some(mut placed), true) = (placed, complete) {
        placed.sort_by_key(|&(position, _)| position);
        for (_, frame) in placed {
            dst.extend_from_slice(frame);
        }
    } else {
        for &(_, frame) in held.iter() {
            dst.extend_from_slice(frame);
        }
    }
    held.clear();
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use shardgate_wire::{encode_data_row, ErrorFields};

    /// Two shards' replies merged with summed counts; the merge must succeed.
    fn merge_two(a: &[u8], b: &[u8], skip_parse_complete: bool) -> BytesMut {
        let mut out = BytesMut::new();
        let replies = [
            ShardReplies {
                shard: "s0",
                bytes: a,
                rows: None,
            },
            ShardReplies {
                shard: "s1",
                bytes: b,
                rows: None,
            },
        ];
        assert_eq!(
            merge_replies(&replies, skip_parse_complete, true, b'I', &mut out),
            Ok(())
        );
        out
    }

    fn reply(rows: &[&str], tag_text: &str) -> BytesMut {
        let mut b = BytesMut::new();
        backend::parse_complete(&mut b);
        backend::bind_complete(&mut b);
        backend::row_description_text(&["v"], &mut b);
        for r in rows {
            encode_data_row(&[Some(r.as_bytes())], &mut b);
        }
        backend::command_complete(tag_text, &mut b);
        backend::ready_for_query(b'I', &mut b);
        b
    }

    #[test]
    fn rows_concatenate_and_counts_add_up() {
        let a = reply(&["1", "2"], "INSERT 0 2");
        let b = reply(&["3"], "INSERT 0 1");
        let out = merge_two(&a, &b, false);
        assert_eq!(out, reply(&["1", "2", "3"], "INSERT 0 3"));
    }

    /// A split INSERT's replies with each shard's VALUES positions.
    fn merge_split(a: &[u8], a_rows: &[usize], b: &[u8], b_rows: &[usize]) -> BytesMut {
        let mut out = BytesMut::new();
        let replies = [
            ShardReplies {
                shard: "s0",
                bytes: a,
                rows: Some(a_rows),
            },
            ShardReplies {
                shard: "s1",
                bytes: b,
                rows: Some(b_rows),
            },
        ];
        assert_eq!(merge_replies(&replies, false, true, b'I', &mut out), Ok(()));
        out
    }

    #[test]
    fn a_split_inserts_returning_rows_come_back_in_values_order() {
        let a = reply(&["v1", "v2", "v4"], "INSERT 0 3");
        let b = reply(&["v0", "v3"], "INSERT 0 2");
        let out = merge_split(&a, &[1, 2, 4], &b, &[0, 3]);
        assert_eq!(out, reply(&["v0", "v1", "v2", "v3", "v4"], "INSERT 0 5"));
    }

    #[test]
    fn rows_a_shard_skipped_leave_shard_order() {
        // ON CONFLICT DO NOTHING skipped one of s0's rows: no row can be matched to its place.
        let a = reply(&["v2"], "INSERT 0 1");
        let b = reply(&["v0"], "INSERT 0 1");
        let out = merge_split(&a, &[1, 2], &b, &[0]);
        assert_eq!(out, reply(&["v2", "v0"], "INSERT 0 2"));
    }

    #[test]
    fn an_error_wins_and_names_its_shard() {
        let a = reply(&["1"], "SELECT 1");
        let mut b = BytesMut::new();
        backend::parse_complete(&mut b);
        backend::error_response(&ErrorFields::new("ERROR", "23505", "dup"), &mut b);
        backend::ready_for_query(b'E', &mut b);
        let out = merge_two(&a, &b, false);
        let f = frames(&out);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].0, tag::ERROR_RESPONSE);
        assert!(String::from_utf8_lossy(f[0].1).contains("shard s1"));
    }

    #[test]
    fn a_dropped_parse_complete_and_a_tag_without_count() {
        let mut a = BytesMut::new();
        backend::parse_complete(&mut a);
        backend::command_complete("CREATE TABLE", &mut a);
        backend::ready_for_query(b'I', &mut a);
        let out = merge_two(&a, &a, true);
        let mut e = BytesMut::new();
        backend::command_complete("CREATE TABLE", &mut e);
        backend::ready_for_query(b'I', &mut e);
        assert_eq!(out, e);
    }
}
