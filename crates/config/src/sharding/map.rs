//! `sharding.map`: logical-shard ranges to shard names, checked to cover every logical shard
//! exactly once, or the default map when the file has none.

use serde::ser::Serializer;
use serde_yaml_ng::Value;

use super::entries;
use crate::error::Problems;
use crate::shards::ShardConfig;
use crate::tree;

/// Reads `map`: range keys to shard names, then checks the ranges cover every logical shard
/// exactly once. Coverage is only judged when every key and `logical_shards` could be read,
/// so one typo does not also show up as a gap.
pub(super) fn read(
    value: &Value,
    path: &str,
    logical_shards: Option<u32>,
    shards: Option<&[ShardConfig]>,
    problems: &mut Problems,
) -> Option<Vec<(u32, u32, String)>> {
    let mut ranges = Vec::new();
    let mut all_read = true;
    let mut all_named = true;
    for (key, key_path, item) in entries(value, path, true, problems)? {
        let range = match parse_range(&key, logical_shards) {
            Ok(range) => Some(range),
            Err(message) => {
                problems.push(&key_path, message);
                None
            }
        };
        let shard = read_shard_name(item, &key_path, shards, problems);
        match (range, shard) {
            (Some((first, last)), Some(shard)) => ranges.push(MapRange {
                first,
                last,
                key,
                key_path,
                shard,
            }),
            (None, _) => all_read = false,
            (Some(_), None) => all_named = false,
        }
    }
    ranges.sort_by_key(|r| (r.first, r.last));
    let logical_shards = logical_shards.filter(|_| all_read)?;
    let covered = check_coverage(&ranges, logical_shards, path, problems);
    (covered && all_named).then(|| merge_adjacent(ranges))
}

/// One `map` entry as written, kept with its key for messages.
#[derive(Debug)]
struct MapRange {
    first: u32,
    last: u32,
    key: String,
    key_path: String,
    shard: String,
}

/// `"A-B"` or `"A"`, inclusive, inside `0..logical_shards` when that is known.
fn parse_range(key: &str, logical_shards: Option<u32>) -> Result<(u32, u32), String> {
    let number = |s: &str| -> Option<u32> {
        let digits = s.trim();
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    };
    let (first, last) = match key.split_once('-') {
        Some((a, b)) => (number(a), number(b)),
        None => (number(key), number(key)),
    };
    let (Some(first), Some(last)) = (first, last) else {
        return Err(format!(
            "invalid range {key:?} (expected \"A-B\" or \"A\": logical shard numbers, inclusive)"
        ));
    };
    if first > last {
        return Err(format!(
            "range {key:?} is backwards ({first} is after {last})"
        ));
    }
    match logical_shards {
        Some(n) if last >= n => Err(format!(
            "logical shard {last} does not exist (logical_shards is {n}, so the last is {})",
            n - 1
        )),
        _ => Ok((first, last)),
    }
}

fn read_shard_name(
    value: &Value,
    path: &str,
    shards: Option<&[ShardConfig]>,
    problems: &mut Problems,
) -> Option<String> {
    let name = tree::non_empty_string(value, path, problems)?;
    match shards {
        Some(shards) if !shards.iter().any(|s| s.name == name) => {
            let known: Vec<&str> = shards.iter().map(|s| s.name.as_str()).collect();
            problems.push(
                path,
                format!(
                    "unknown shard {name:?} (configured shards: {})",
                    known.join(", ")
                ),
            );
            None
        }
        _ => Some(name),
    }
}

/// Sweeps the sorted ranges once, reporting each gap and each overlap with the ranges
/// involved; `true` if there were none.
fn check_coverage(
    ranges: &[MapRange],
    logical_shards: u32,
    path: &str,
    problems: &mut Problems,
) -> bool {
    let mut exact = true;
    let span = |a: u32, b: u32| {
        if a == b {
            format!("logical shard {a} is")
        } else {
            format!("logical shards {a}-{b} are")
        }
    };
    // The range reaching furthest so far; the next unmapped logical shard is its end + 1.
    let mut reach: Option<&MapRange> = None;
    for range in ranges {
        let next = reach.map_or(0, |r| u64::from(r.last) + 1);
        if u64::from(range.first) > next {
            let gap = span(next as u32, range.first - 1);
            problems.push(path, format!("{gap} not mapped"));
            exact = false;
        }
        if let Some(prev) = reach.filter(|r| range.first <= r.last) {
            let twice = span(range.first, range.last.min(prev.last));
            problems.push(
                &range.key_path,
                format!("{twice} mapped twice ({} and {})", prev.key, range.key),
            );
            exact = false;
        }
        if reach.is_none_or(|r| range.last > r.last) {
            reach = Some(range);
        }
    }
    let next = reach.map_or(0, |r| u64::from(r.last) + 1);
    if next < u64::from(logical_shards) {
        let gap = span(next as u32, logical_shards - 1);
        problems.push(path, format!("{gap} not mapped"));
        exact = false;
    }
    exact
}

/// Sorted, non-overlapping ranges with neighbours on the same shard joined, so two files that
/// map the same way compare equal.
fn merge_adjacent(ranges: Vec<MapRange>) -> Vec<(u32, u32, String)> {
    let mut out: Vec<(u32, u32, String)> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if last.2 == r.shard && last.1.checked_add(1) == Some(r.first) => {
                last.1 = r.last;
            }
            _ => out.push((r.first, r.last, r.shard)),
        }
    }
    out
}

/// The map used when the file has none: logical shard `l` belongs to shard
/// `floor(l * N / logical_shards)`. Shard `i` therefore starts at `ceil(i * logical / N)`;
/// with more shards than logical shards some get nothing.
pub(super) fn default_map(logical_shards: u32, shards: &[ShardConfig]) -> Vec<(u32, u32, String)> {
    let logical = u64::from(logical_shards);
    let n = shards.len() as u64;
    let start = |i: u64| (i * logical).div_ceil(n.max(1));
    (0..n)
        .filter_map(|i| {
            let (first, end) = (start(i), start(i + 1));
            let shard = shards.get(i as usize)?;
            (first < end).then(|| (first as u32, (end - 1) as u32, shard.name.clone()))
        })
        .collect()
}

/// `map` as the file writes it: `"first-last": shard`.
#[derive(Debug)]
pub(super) struct RangesForm<'a>(pub(super) &'a [(u32, u32, String)]);

impl serde::Serialize for RangesForm<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(first, last, shard)| {
            let key = if first == last {
                first.to_string()
            } else {
                format!("{first}-{last}")
            };
            (key, shard)
        }))
    }
}
