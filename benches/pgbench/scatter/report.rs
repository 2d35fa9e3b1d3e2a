//! What the scatter workloads measured, and their tables: per query, client count and target
//! the median, mean and 95th percentile of every query's latency and the queries per second;
//! for the full ordered scatter, its times and shardgate's peak resident memory.

use std::fmt::Write as _;
use std::time::Duration;

use super::{DIRECT, SCATTER};
use crate::rss::mib;

/// Every timed query of one (query, clients, target), over all rounds.
#[derive(Debug)]
pub(crate) struct Timed {
    name: &'static str,
    clients: usize,
    pub(crate) target: &'static str,
    latencies: Vec<Duration>,
    round_qps: Vec<f64>,
}

impl Timed {
    pub(crate) fn new(name: &'static str, clients: usize, target: &'static str) -> Timed {
        Timed {
            name,
            clients,
            target,
            latencies: Vec::new(),
            round_qps: Vec::new(),
        }
    }

    pub(crate) fn add_round(&mut self, latencies: Vec<Duration>, wall: Duration) {
        self.round_qps
            .push(latencies.len() as f64 / wall.as_secs_f64().max(1e-9));
        self.latencies.extend(latencies);
    }

    pub(crate) fn last_qps(&self) -> f64 {
        self.round_qps.last().copied().unwrap_or(0.0)
    }
}

/// Milliseconds of the `q` quantile (nearest rank) of sorted `values`.
fn quantile_ms(sorted: &[Duration], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = ((last as f64) * q).round() as usize;
    sorted.get(rank.min(last)).map(|d| d.as_secs_f64() * 1e3)
}

fn mean_ms(values: &[Duration]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let total: f64 = values.iter().map(Duration::as_secs_f64).sum();
    Some(total / values.len() as f64 * 1e3)
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

fn fmt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// One line per (query, clients, target); the ratio compares median latency with direct's.
pub(crate) fn timed_table(timed: &[Timed]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<18} {:>7} {:<10} {:>7} {:>10} {:>9} {:>9} {:>9} {:>10}  rounds (QPS)",
        "query",
        "clients",
        "target",
        "queries",
        "median ms",
        "avg ms",
        "p95 ms",
        "QPS",
        "lat/direct"
    );
    for t in timed {
        let mut sorted = t.latencies.clone();
        sorted.sort();
        let median_ms = quantile_ms(&sorted, 0.5);
        let direct = timed
            .iter()
            .find(|d| d.name == t.name && d.clients == t.clients && d.target == DIRECT)
            .and_then(|d| {
                let mut s = d.latencies.clone();
                s.sort();
                quantile_ms(&s, 0.5)
            });
        let ratio = match (median_ms, direct) {
            (Some(m), Some(d)) if d > 0.0 => Some(m / d),
            _ => None,
        };
        let rounds: Vec<String> = t.round_qps.iter().map(|q| format!("{q:.1}")).collect();
        let _ = writeln!(
            out,
            "{:<18} {:>7} {:<10} {:>7} {:>10} {:>9} {:>9} {:>9} {:>10}  {}",
            t.name,
            t.clients,
            t.target,
            t.latencies.len(),
            fmt(median_ms, 2),
            fmt(mean_ms(&t.latencies), 2),
            fmt(quantile_ms(&sorted, 0.95), 2),
            fmt(median(t.round_qps.clone()), 1),
            fmt(ratio, 2),
            rounds.join(" ")
        );
    }
    out
}

/// The full ordered scatter: each target's read times and shardgate's memory.
#[derive(Debug)]
pub(crate) struct Full {
    idle_kib: u64,
    direct: Vec<Duration>,
    scatter: Vec<Duration>,
    peak_kib: u64,
    samples: u64,
    hwm_kib: Option<u64>,
    /// Peak VmRSS during the stalled reader's run, and that run's time.
    stalled: Option<(u64, Duration)>,
}

impl Full {
    pub(crate) fn new(idle_kib: u64) -> Full {
        Full {
            idle_kib,
            direct: Vec::new(),
            scatter: Vec::new(),
            peak_kib: 0,
            samples: 0,
            hwm_kib: None,
            stalled: None,
        }
    }

    pub(crate) fn add(&mut self, through_proxy: bool, took: Duration) {
        if through_proxy {
            self.scatter.push(took);
        } else {
            self.direct.push(took);
        }
    }

    pub(crate) fn set_peak(&mut self, peak_kib: u64, samples: u64, hwm_kib: Option<u64>) {
        self.peak_kib = peak_kib;
        self.samples = samples;
        self.hwm_kib = hwm_kib;
    }

    pub(crate) fn set_stalled(&mut self, peak_kib: u64, took: Duration) {
        self.stalled = Some((peak_kib, took));
    }
}

/// The times per target, then the memory verdict against `limit_mib`.
pub(crate) fn full_table(full: &Full, limit_mib: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nfull ordered scatter ({} rows, SELECT id, v, t FROM ev ORDER BY v, id, read to the end)",
        super::ROWS
    );
    let _ = writeln!(
        out,
        "{:<10} {:>5} {:>9} {:>9} {:>12}  runs (s)",
        "target", "runs", "median s", "avg s", "rows/s"
    );
    for (target, times) in [(DIRECT, &full.direct), (SCATTER, &full.scatter)] {
        let mut sorted = times.clone();
        sorted.sort();
        let median_s = quantile_ms(&sorted, 0.5).map(|ms| ms / 1e3);
        let runs: Vec<String> = times
            .iter()
            .map(|d| format!("{:.3}", d.as_secs_f64()))
            .collect();
        let _ = writeln!(
            out,
            "{:<10} {:>5} {:>9} {:>9} {:>12}  {}",
            target,
            times.len(),
            fmt(median_s, 3),
            fmt(mean_ms(times).map(|ms| ms / 1e3), 3),
            fmt(median_s.map(|s| super::ROWS as f64 / s), 0),
            runs.join(" ")
        );
    }
    let verdict = |kib: u64| {
        if mib(kib) < limit_mib {
            "met"
        } else {
            "MISSED"
        }
    };
    // The kernel's peak is the authority; the sampler only shows it was this stretch's.
    let peak = full.hwm_kib.unwrap_or(0).max(full.peak_kib);
    let _ = writeln!(
        out,
        "shardgate RSS: idle {:.1} MiB before; peak VmRSS sampled {:.1} MiB ({} samples); \
         VmHWM {} MiB; < {limit_mib:.0} MiB {verdict}",
        mib(full.idle_kib),
        mib(full.peak_kib),
        full.samples,
        fmt(full.hwm_kib.map(mib), 1),
        verdict = verdict(peak),
    );
    if let Some((kib, took)) = full.stalled {
        let _ = writeln!(
            out,
            "stalled reader through {SCATTER} ({:?} pause after {} rows, {:.3} s in all): peak \
             VmRSS sampled {:.1} MiB; < {limit_mib:.0} MiB {}",
            super::STALL,
            super::STALL_AFTER,
            took.as_secs_f64(),
            mib(kib),
            verdict(kib)
        );
    }
    out
}
