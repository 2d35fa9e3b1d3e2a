//! Per-lane counters and histograms for the per-transaction hot path: each worker thread
//! (pool lane, see `shardgate_pool::thread_lane`) adds to cache lines of its own, and a scrape
//! sums the lanes. They encode exactly like prometheus-client's `Counter` and `Histogram`.
//!
//! Threads may share a lane (the main thread and worker 0 are both lane 0; more than
//! [`LANES`] workers wrap around), so every update is an atomic read-modify-write: uncontended
//! when lanes are not shared, still exact when they are.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Lanes per metric (a power of two: the lane is `thread_lane() & (LANES - 1)`).
const LANES: usize = 64;

fn lane() -> usize {
    shardgate_pool::thread_lane() & (LANES - 1)
}

/// 128 bytes: adjacent-line prefetch pulls cache lines in pairs on x86, so 64 is not enough
/// to keep two lanes from bouncing each other's lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Line([AtomicU64; WORDS_PER_LINE]);

const WORDS_PER_LINE: usize = 16;

/// A monotonic counter, one padded atomic per lane. Clones share the counts (as `Counter`'s do,
/// which `Family` relies on).
#[derive(Debug, Clone)]
pub(crate) struct LaneCounter {
    lanes: Arc<[Line]>,
}

impl Default for LaneCounter {
    fn default() -> Self {
        LaneCounter {
            lanes: (0..LANES).map(|_| Line::default()).collect(),
        }
    }
}

impl LaneCounter {
    pub(crate) fn inc(&self) {
        self.lanes[lane()].0[0].fetch_add(1, Ordering::Relaxed);
    }

    /// The sum over all lanes.
    pub(crate) fn get(&self) -> u64 {
        self.lanes
            .iter()
            .map(|l| l.0[0].load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

impl TypedMetric for LaneCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for LaneCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Word 0 of a lane: the sum (f64 bits); word 1: observations in no bucket (NaN, +inf, which
/// prometheus-client counts but puts in no bucket); then one word per bucket. The count is the
/// total of words 1.., so `_count` and the `+Inf` bucket can never disagree within one lane.
const SUM: usize = 0;
const UNBUCKETED: usize = 1;
const FIRST_BUCKET: usize = 2;

/// A histogram whose lanes each hold a sum and per-bucket counts on lines of their own.
/// Same semantics as prometheus-client's `Histogram`: a value goes to the first bucket whose
/// upper bound is >= it, with a last bucket of `f64::MAX` (encoded as `+Inf`).
#[derive(Debug, Clone)]
pub(crate) struct LaneHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds, `f64::MAX` last.
    bounds: Box<[f64]>,
    /// Lines per lane.
    stride: usize,
    lines: Box<[Line]>,
}

impl LaneHistogram {
    pub(crate) fn new(buckets: impl IntoIterator<Item = f64>) -> LaneHistogram {
        let bounds: Box<[f64]> = buckets
            .into_iter()
            .chain(std::iter::once(f64::MAX))
            .collect();
        let stride = (FIRST_BUCKET + bounds.len()).div_ceil(WORDS_PER_LINE);
        let lines = (0..LANES * stride).map(|_| Line::default()).collect();
        LaneHistogram {
            inner: Arc::new(HistogramInner {
                bounds,
                stride,
                lines,
            }),
        }
    }

    pub(crate) fn observe(&self, v: f64) {
        let h = &*self.inner;
        let lane = &h.lines[lane() * h.stride..][..h.stride];
        let word = |i: usize| &lane[i / WORDS_PER_LINE].0[i % WORDS_PER_LINE];
        // `position`, not a binary search: NaN must land in no bucket, like upstream's `find`.
        let slot = match h.bounds.iter().position(|b| *b >= v) {
            Some(i) => FIRST_BUCKET + i,
            None => UNBUCKETED,
        };
        word(slot).fetch_add(1, Ordering::Relaxed);
        // Uncontended unless threads share this lane; the closure never returns None.
        let _ = word(SUM).fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            Some((f64::from_bits(bits) + v).to_bits())
        });
    }

    /// Sum, count, and per-bucket (non-cumulative) counts over all lanes, as upstream's
    /// `Histogram::get` returns them.
    fn get(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let h = &*self.inner;
        let mut sum = 0.0;
        let mut count = 0u64;
        let mut buckets: Vec<(f64, u64)> = h.bounds.iter().map(|b| (*b, 0)).collect();
        for lane in h.lines.chunks(h.stride) {
            let word =
                |i: usize| lane[i / WORDS_PER_LINE].0[i % WORDS_PER_LINE].load(Ordering::Relaxed);
            sum += f64::from_bits(word(SUM));
            count = count.wrapping_add(word(UNBUCKETED));
            for (i, (_, n)) in buckets.iter_mut().enumerate() {
                let c = word(FIRST_BUCKET + i);
                *n = n.wrapping_add(c);
                count = count.wrapping_add(c);
            }
        }
        (sum, count, buckets)
    }
}

impl TypedMetric for LaneHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LaneHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.get();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
#[path = "lane_metrics_tests.rs"]
mod tests;
