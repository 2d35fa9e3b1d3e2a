use std::sync::atomic::Ordering;
use std::thread;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};

use super::*;

fn text(name: &str, metric: impl Metric) -> String {
    let mut registry = Registry::with_prefix("shardgate");
    registry.register(name, "help text", metric);
    let mut out = String::new();
    encode(&mut out, &registry).expect("encode into a String");
    out
}

fn query_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.00005, 2.0, 20)
}

/// Runs `f` on one thread per lane in `lanes`, each bound to its lane, and waits.
fn on_lanes(lanes: &[usize], f: impl Fn() + Send + Sync + Clone + 'static) {
    let threads: Vec<_> = lanes
        .iter()
        .map(|&lane| {
            let f = f.clone();
            thread::spawn(move || {
                shardgate_pool::bind_thread(lane);
                f();
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread panicked");
    }
}

fn lane_hits(h: &LaneHistogram, lane: usize) -> u64 {
    let lines = &h.inner.lines[lane * h.inner.stride..][..h.inner.stride];
    (UNBUCKETED..FIRST_BUCKET + h.inner.bounds.len())
        .map(|i| lines[i / WORDS_PER_LINE].0[i % WORDS_PER_LINE].load(Ordering::Relaxed))
        .sum()
}

#[test]
fn counter_encodes_like_prometheus_counter_across_lanes() {
    let ours = LaneCounter::default();
    let theirs = Counter::<u64>::default();
    // Lane 65 wraps onto lane 1: two threads share a lane and no increment may be lost.
    let (o, t) = (ours.clone(), theirs.clone());
    on_lanes(&[1, 2, 65], move || {
        for _ in 0..10_000 {
            o.inc();
            t.inc();
        }
    });
    ours.inc();
    theirs.inc();
    assert_eq!(ours.get(), 30_001);
    assert_eq!(ours.lanes[1].0[0].load(Ordering::Relaxed), 20_000);
    assert_eq!(ours.lanes[2].0[0].load(Ordering::Relaxed), 10_000);
    let expected = text("transactions", theirs);
    assert!(
        expected.contains("shardgate_transactions_total 30001\n"),
        "{expected}"
    );
    assert_eq!(text("transactions", ours), expected);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[test]
fn counter_family_encodes_like_counter_family() {
    let ours = Family::<KindLabels, LaneCounter>::default();
    let theirs = Family::<KindLabels, Counter>::default();
    // Handles taken once and kept, as `RoutedCounters` does: a clone must share the counts.
    let read = ours.get_or_create(&KindLabels { kind: "read" }).clone();
    let write = ours.get_or_create(&KindLabels { kind: "write" }).clone();
    // One statement each: a second `get_or_create` while a guard is alive deadlocks.
    let t_read = theirs.get_or_create(&KindLabels { kind: "read" }).clone();
    let t_write = theirs.get_or_create(&KindLabels { kind: "write" }).clone();
    on_lanes(&[3, 4], move || {
        for _ in 0..500 {
            read.inc();
            t_read.inc();
        }
        write.inc();
        t_write.inc();
    });
    let expected = text("routed", theirs);
    assert!(
        expected.contains("shardgate_routed_total{kind=\"read\"} 1000\n"),
        "{expected}"
    );
    // A family's series come out in hash-map order, which differs between two maps.
    let sorted = |t: String| {
        let mut lines: Vec<String> = t.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted(text("routed", ours)), sorted(expected));
}

#[test]
fn histogram_encodes_like_prometheus_histogram() {
    let ours = LaneHistogram::new(query_buckets());
    let theirs = Histogram::new(query_buckets());
    // Bounds themselves (a bucket's bound is inclusive), between bounds, 0, past the last bound.
    let mut values: Vec<f64> = query_buckets().collect();
    values.extend(query_buckets().map(|b| b * 1.5));
    values.extend([0.0, 1e-9, 30.0, 1e6, f64::MAX]);
    // One lane, so the sums add in the same order and agree to the bit.
    for v in values {
        ours.observe(v);
        theirs.observe(v);
    }
    let expected = text("query_duration_seconds", theirs);
    assert!(
        expected.contains("shardgate_query_duration_seconds_count 45\n"),
        "{expected}"
    );
    assert_eq!(text("query_duration_seconds", ours), expected);
}

#[test]
fn histogram_from_two_lanes_encodes_like_prometheus_histogram() {
    let ours = LaneHistogram::new(query_buckets());
    let theirs = Histogram::new(query_buckets());
    let (o, t) = (ours.clone(), theirs.clone());
    on_lanes(&[1, 2], move || {
        for i in 0..1_000u32 {
            // Multiples of 2^-14 up to 64 s: every partial sum is exact, so the order in which
            // lanes are added cannot change the encoded sum.
            let v = if i % 100 == 0 {
                f64::from(i / 100 + 1) * 8.0
            } else {
                f64::from(i % 40) / 16384.0
            };
            o.observe(v);
            t.observe(v);
        }
    });
    assert_eq!(lane_hits(&ours, 1), 1_000);
    assert_eq!(lane_hits(&ours, 2), 1_000);
    let expected = text("query_duration_seconds", theirs);
    assert!(
        expected.contains("shardgate_query_duration_seconds_count 2000\n")
            && expected.contains("le=\"+Inf\"} 2000\n"),
        "{expected}"
    );
    assert_eq!(text("query_duration_seconds", ours), expected);
}

#[test]
fn histogram_counts_nan_and_infinity_in_no_bucket_like_upstream() {
    for odd in [f64::NAN, f64::INFINITY] {
        let ours = LaneHistogram::new(query_buckets());
        let theirs = Histogram::new(query_buckets());
        for v in [0.001, odd] {
            ours.observe(v);
            theirs.observe(v);
        }
        let expected = text("d", theirs);
        assert!(expected.contains("shardgate_d_count 2\n"), "{expected}");
        assert!(expected.contains("le=\"+Inf\"} 1\n"), "{expected}");
        assert_eq!(text("d", ours), expected);
    }
}

/// Wall time per operation with two threads (lanes 1 and 2) each doing `OPS` of them.
fn two_threads(op: impl Fn(u64) + Send + Sync + Clone + 'static) -> f64 {
    const OPS: u64 = 10_000_000;
    let start = Instant::now();
    on_lanes(&[1, 2], move || {
        for i in 0..OPS {
            op(std::hint::black_box(i));
        }
    });
    start.elapsed().as_nanos() as f64 / OPS as f64
}

/// Timing, not a check: `cargo test --bin shardgate lane_metrics_timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn lane_metrics_timing() {
    let c = Counter::<u64>::default();
    let old_counter = two_threads(move |_| {
        c.inc();
    });
    let c = LaneCounter::default();
    let new_counter = two_threads(move |_| c.inc());
    let h = Histogram::new(query_buckets());
    let old_histogram = two_threads(move |i| h.observe((i & 1023) as f64 * 1e-6));
    let h = LaneHistogram::new(query_buckets());
    let new_histogram = two_threads(move |i| h.observe((i & 1023) as f64 * 1e-6));
    println!(
        "ns/op, 2 threads x 10M: Counter {old_counter:.1}, LaneCounter {new_counter:.1}, \
         Histogram {old_histogram:.1}, LaneHistogram {new_histogram:.1}"
    );
}
