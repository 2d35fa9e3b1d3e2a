//! Streaming k-way merge of per-shard streams that each arrive sorted by the same keys.
//!
//! Memory stays bounded: the executor reads a shard only when [`KWayMerge::needs`] names it,
//! and each shard's buffer is capped (`batch_limit`). A shard whose rows are not in the merge's
//! order (for example because its collation is not C) is an error, never a silently wrong order.

use std::cmp::Ordering;
use std::collections::VecDeque;

use bytes::Bytes;

use crate::error::MergeError;
use crate::value::{compare, decode, Column, Value};

/// Rows buffered per shard unless `with_batch_limit` says otherwise.
pub const DEFAULT_BATCH_LIMIT: usize = 1024;

/// One ORDER BY key. The caller passes PostgreSQL's defaults explicitly:
/// ASC => NULLS LAST, DESC => NULLS FIRST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SortKey {
    pub column: usize,
    pub descending: bool,
    pub nulls_first: bool,
}

/// A wire row: one `Option<Bytes>` per column, `None` for NULL.
pub type Row = Vec<Option<Bytes>>;

/// Orders two key tuples by `keys` (NULL placement first, then the type's order, reversed
/// for DESC).
pub fn compare_keys(a: &[Value], b: &[Value], keys: &[SortKey]) -> Ordering {
    for (i, key) in keys.iter().enumerate() {
        let (x, y) = (&a[i], &b[i]);
        let ord = match (matches!(x, Value::Null), matches!(y, Value::Null)) {
            (true, true) => Ordering::Equal,
            (true, false) if key.nulls_first => Ordering::Less,
            (true, false) => Ordering::Greater,
            (false, true) if key.nulls_first => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) if key.descending => compare(y, x),
            (false, false) => compare(x, y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

#[derive(Debug)]
struct Buffered {
    keys: Vec<Value>,
    row: Row,
}

#[derive(Debug, Default)]
struct ShardQueue {
    rows: VecDeque<Buffered>,
    finished: bool,
    /// Keys of the last row pushed, to verify the shard's stream is sorted.
    last: Option<Vec<Value>>,
}

/// The merge state; see the module doc.
#[derive(Debug)]
pub struct KWayMerge {
    columns: Vec<Column>,
    keys: Vec<SortKey>,
    shards: Vec<ShardQueue>,
    batch_limit: usize,
}

impl KWayMerge {
    /// `columns` describe the shard rows (all shards send the same RowDescription).
    pub fn new(columns: Vec<Column>, keys: Vec<SortKey>, shards: usize) -> Self {
        KWayMerge {
            columns,
            keys,
            shards: (0..shards).map(|_| ShardQueue::default()).collect(),
            batch_limit: DEFAULT_BATCH_LIMIT,
        }
    }

    /// Caps the rows buffered per shard (at least 1).
    pub fn with_batch_limit(mut self, limit: usize) -> Self {
        self.batch_limit = limit.max(1);
        self
    }

    /// Buffers the next row of `shard`. Fails if the shard is unknown or finished, the row
    /// is malformed, the shard's buffer is full, or the row sorts before the shard's previous one.
    pub fn push(&mut self, shard: usize, row: Row) -> Result<(), MergeError> {
        if row.len() != self.columns.len() {
            return Err(MergeError::ColumnCount {
                expected: self.columns.len(),
                got: row.len(),
            });
        }
        let mut keys = Vec::with_capacity(self.keys.len());
        for key in &self.keys {
            let col = self
                .columns
                .get(key.column)
                .ok_or(MergeError::NoSuchColumn(key.column))?;
            keys.push(decode(col, row[key.column].as_deref())?);
        }
        let batch_limit = self.batch_limit;
        let queue = self
            .shards
            .get_mut(shard)
            .filter(|q| !q.finished)
            .ok_or(MergeError::BadShard(shard))?;
        if queue.rows.len() >= batch_limit {
            return Err(MergeError::BatchFull(shard));
        }
        if let Some(last) = &queue.last {
            if compare_keys(last, &keys, &self.keys) == Ordering::Greater {
                return Err(MergeError::Unsorted(shard));
            }
        }
        queue.last = Some(keys.clone());
        queue.rows.push_back(Buffered { keys, row });
        Ok(())
    }

    /// `shard` has sent all its rows.
    pub fn finish(&mut self, shard: usize) {
        if let Some(q) = self.shards.get_mut(shard) {
            q.finished = true;
            q.last = None;
        }
    }

    /// The lowest-numbered unfinished shard with nothing buffered: `pop` cannot proceed until
    /// it gets a row or is finished.
    pub fn needs(&self) -> Option<usize> {
        self.shards
            .iter()
            .position(|q| !q.finished && q.rows.is_empty())
    }

    /// Whether every shard is finished and every buffered row was popped.
    pub fn is_done(&self) -> bool {
        self.shards.iter().all(|q| q.finished && q.rows.is_empty())
    }

    /// The next row in global order, or `None` while some shard is needed (or when done).
    /// Ties go to the lower-numbered shard.
    pub fn pop(&mut self) -> Option<Row> {
        if self.needs().is_some() {
            return None;
        }
        let mut best: Option<usize> = None;
        for (i, q) in self.shards.iter().enumerate() {
            let Some(head) = q.rows.front() else { continue };
            let better = match best.and_then(|b| self.shards[b].rows.front()) {
                None => true,
                Some(cur) => compare_keys(&head.keys, &cur.keys, &self.keys) == Ordering::Less,
            };
            if better {
                best = Some(i);
            }
        }
        let b = best?;
        self.shards[b].rows.pop_front().map(|r| r.row)
    }
}
