//! The streaming merges of a scatter: rows concatenated shard by shard, or k-way merged by
//! ORDER BY, each sent through a sink that applies OFFSET, LIMIT and DISTINCT and flushes the
//! client output as it grows.

use shardgate_merge::{Column, Distinct, KWayMerge, Row, SortKey};
use tokio::io::{AsyncRead, AsyncWrite};

use super::scatter::{data_row, error_fields, next_frame, own, Failure};
use super::session::Session;
use super::shard_legs::Leg;
use super::sqlstate;

/// Client output is flushed whenever this much is buffered.
/// Merged rows are held back until this much is buffered, so a result smaller than this never
/// reaches the client in part when a shard fails late; larger ones stream (memory stays
/// bounded) and a late failure ends them with the ErrorResponse.
const FLUSH_AT: usize = 4 << 20;

/// Where merged rows go: LIMIT/OFFSET/DISTINCT state and the count sent.
pub(super) struct Sink {
    pub(super) limit: Option<u64>,
    pub(super) offset: u64,
    pub(super) sent: u64,
    pub(super) distinct: Option<Distinct>,
    /// Client-visible columns (hidden sort columns are cut off).
    pub(super) width: usize,
    /// Columns of each shard row, as the shards described them.
    pub(super) columns: usize,
    /// Part of the reply has been flushed to the client (a later error cannot take it back).
    pub(super) flushed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Sends one merged row (with OFFSET, LIMIT and DISTINCT applied). False once the limit
    /// is reached.
    pub(super) async fn emit(&mut self, sink: &mut Sink, mut row: Row) -> Result<bool, Failure> {
        if sink.limit.is_some_and(|l| sink.sent >= l) {
            return Ok(false);
        }
        row.truncate(sink.width);
        if let Some(d) = &mut sink.distinct {
            if !d.insert(&row)? {
                return Ok(true);
            }
        }
        if sink.offset > 0 {
            sink.offset -= 1;
            return Ok(true);
        }
        let values: Vec<Option<&[u8]>> = row.iter().map(|v| v.as_deref()).collect();
        shardgate_wire::encode_data_row(&values, &mut self.out);
        sink.sent += 1;
        if self.out.len() >= FLUSH_AT {
            sink.flushed = true;
            self.flush_out()
                .await
                .map_err(|e| own(sqlstate::CONNECTION_FAILURE, e.to_string()))?;
        }
        Ok(sink.limit.is_none_or(|l| sink.sent < l))
    }

    /// No ORDER BY: each shard's rows in turn.
    pub(super) async fn concat(
        &mut self,
        legs: &mut [Leg],
        sink: &mut Sink,
    ) -> Result<(), Failure> {
        let mut open = true;
        for (i, leg) in legs.iter_mut().enumerate() {
            loop {
                let (tag, body) = next_frame(leg).await?;
                match tag {
                    b'D' if open => {
                        let row = data_row(&body)?;
                        if row.values.len() != sink.columns {
                            return Err(own(
                                sqlstate::PROTOCOL_VIOLATION,
                                format!(
                                    "shardgate: a shard sent a row of {} columns for a result of {}",
                                    row.values.len(),
                                    sink.columns
                                ),
                            ));
                        }
                        open = self.emit(sink, row.values).await?;
                    }
                    b'D' => {}
                    b'C' => break,
                    b'E' => return Err(Failure::Shard(i, error_fields(&body))),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// ORDER BY: a streaming k-way merge of the shards' sorted streams.
    pub(super) async fn ordered(
        &mut self,
        legs: &mut [Leg],
        order_by: &[shardgate_sql::SortCol],
        columns: &[Column],
        sink: &mut Sink,
    ) -> Result<(), Failure> {
        let keys: Vec<SortKey> = order_by
            .iter()
            .map(|k| SortKey {
                column: k.column,
                descending: k.descending,
                nulls_first: k.nulls_first,
            })
            .collect();
        for k in &keys {
            let ok = columns
                .get(k.column)
                .is_some_and(|c| shardgate_merge::sortable(c.type_oid));
            if !ok {
                return Err(own(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "shardgate: cannot merge ORDER BY on a column of this type exactly",
                ));
            }
        }
        let mut merge = KWayMerge::new(columns.to_vec(), keys, legs.len());
        let mut open = true;
        loop {
            while let Some(s) = merge.needs() {
                let leg = &mut legs[s];
                loop {
                    let (tag, body) = next_frame(leg).await?;
                    match tag {
                        b'D' => {
                            let row = data_row(&body)?;
                            merge.push(s, row.values)?;
                            break;
                        }
                        b'C' => {
                            merge.finish(s);
                            break;
                        }
                        b'E' => return Err(Failure::Shard(s, error_fields(&body))),
                        _ => {}
                    }
                }
            }
            match merge.pop() {
                Some(row) if open => open = self.emit(sink, row).await?,
                Some(_) => {}
                None => break,
            }
            if !open {
                // The limit is reached: the rest only needs reading to the end.
                // A shard that already ended its rows has only its ReadyForQuery left.
                for (s, leg) in legs.iter_mut().enumerate() {
                    while !leg.done {
                        let (tag, body) = next_frame(leg).await?;
                        if tag == b'E' {
                            return Err(Failure::Shard(s, error_fields(&body)));
                        }
                    }
                }
                break;
            }
        }
        Ok(())
    }
}
