//! Collecting run outcomes and printing the summary table: medians per workload and target,
//! ratios against direct PostgreSQL, each proxy's CPU time per transaction, and whether
//! shardgate meets the goals (the sharding workloads have none: the issue asks only for
//! their numbers).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::cpu::CpuPerTxn;
use crate::pgbench::{RunOutcome, Workload};

/// The target every ratio is taken against.
pub(crate) const BASELINE: &str = "direct";
/// The target the goals apply to.
const SUBJECT: &str = "shardgate";

/// Every run's outcome, by workload name and target name, in the order they ran.
#[derive(Debug, Default)]
pub(crate) struct Measurements {
    runs: BTreeMap<(&'static str, &'static str), Vec<Run>>,
}

/// One measured run: what pgbench reported and, for a proxy, its CPU time per transaction.
#[derive(Debug)]
struct Run {
    outcome: RunOutcome,
    cpu: Option<CpuPerTxn>,
}

impl Measurements {
    pub(crate) fn record(
        &mut self,
        workload: Workload,
        target: &'static str,
        outcome: RunOutcome,
        cpu: Option<CpuPerTxn>,
    ) {
        self.runs
            .entry((workload.name(), target))
            .or_default()
            .push(Run { outcome, cpu });
    }

    /// The median TPS of `workload` on `target`, if any run succeeded.
    pub(crate) fn median_tps(&self, workload: Workload, target: &str) -> Option<f64> {
        self.summary(workload, target).and_then(|s| s.tps)
    }

    fn summary(&self, workload: Workload, target: &str) -> Option<Summary> {
        let runs = self.runs.get(&(workload.name(), target))?;
        let ok: Vec<_> = runs
            .iter()
            .filter_map(|r| r.outcome.as_ref().ok())
            .collect();
        let first_failure = runs.iter().find_map(|r| r.outcome.as_ref().err()).cloned();
        let cpu: Vec<CpuPerTxn> = runs.iter().filter_map(|r| r.cpu).collect();
        Some(Summary {
            tps: median(ok.iter().map(|s| s.tps).collect()),
            latency_ms: median(ok.iter().map(|s| s.latency_ms).collect()),
            cpu_user_us: median(cpu.iter().map(|c| c.user_us).collect()),
            cpu_system_us: median(cpu.iter().map(|c| c.system_us).collect()),
            round_tps: ok.iter().map(|s| s.tps).collect(),
            failed: runs.len() - ok.len(),
            runs: runs.len(),
            first_failure,
        })
    }
}

/// The medians of one workload on one target.
#[derive(Debug)]
struct Summary {
    tps: Option<f64>,
    latency_ms: Option<f64>,
    /// The proxy's user and system CPU time per transaction, each its own median over rounds.
    cpu_user_us: Option<f64>,
    cpu_system_us: Option<f64>,
    round_tps: Vec<f64>,
    failed: usize,
    runs: usize,
    first_failure: Option<String>,
}

/// What shardgate must reach on a workload (from the issue).
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// Median TPS at least this fraction of direct.
    TpsRatio(f64),
    /// Median average latency at most this many microseconds above direct.
    AddedLatencyMicros(f64),
}

fn goal(workload: Workload) -> Option<Goal> {
    match workload {
        Workload::Simple | Workload::Extended => Some(Goal::TpsRatio(0.75)),
        Workload::Prepared => Some(Goal::TpsRatio(0.55)),
        Workload::Latency => Some(Goal::AddedLatencyMicros(30.0)),
        Workload::ShardedSimple | Workload::ShardedPrepared => None,
    }
}

/// The table for `workloads` x `targets`, one line per pair that ran.
pub(crate) fn table(m: &Measurements, workloads: &[Workload], targets: &[&str]) -> String {
    let mut out = String::new();
    // Wide enough for the longest name that runs, and no wider than the old table needed.
    let w = workloads.iter().map(|w| w.name().len()).fold(9, usize::max);
    let t = targets.iter().map(|t| t.len()).fold(10, usize::max);
    let _ = writeln!(
        out,
        "{:<w$} {:<t$} {:>11} {:>11} {:>10} {:>13} {:>11}  {:<20} rounds (TPS)",
        "workload",
        "target",
        "median TPS",
        "avg lat ms",
        "TPS/direct",
        "added lat us",
        "cpu us/txn",
        "goal"
    );
    let mut any_cpu = false;
    for &workload in workloads {
        let baseline = m.summary(workload, BASELINE);
        for &target in targets {
            let Some(s) = m.summary(workload, target) else {
                continue;
            };
            let ratio = ratio(s.tps, baseline.as_ref().and_then(|b| b.tps));
            let added_us = match (s.latency_ms, baseline.as_ref().and_then(|b| b.latency_ms)) {
                (Some(l), Some(b)) if workload == Workload::Latency => Some((l - b) * 1000.0),
                _ => None,
            };
            let verdict = match goal(workload) {
                Some(goal) if target.starts_with(SUBJECT) => verdict(goal, ratio, added_us),
                _ => String::new(),
            };
            let cpu = match (s.cpu_user_us, s.cpu_system_us) {
                (Some(user), Some(system)) => {
                    any_cpu = true;
                    format!("{user:.1}+{system:.1}")
                }
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "{:<w$} {:<t$} {:>11} {:>11} {:>10} {:>13} {:>11}  {:<20} {}",
                workload.name(),
                target,
                fmt(s.tps, 1),
                fmt(s.latency_ms, 3),
                fmt(ratio, 2),
                fmt(added_us, 1),
                cpu,
                verdict,
                rounds_note(&s)
            );
        }
    }
    if any_cpu {
        let _ = writeln!(
            out,
            "cpu us/txn: the proxy's user+system CPU time per transaction (/proc/<pid>/stat), \
             medians over rounds"
        );
    }
    out
}

fn ratio(tps: Option<f64>, baseline: Option<f64>) -> Option<f64> {
    match (tps, baseline) {
        (Some(t), Some(b)) if b > 0.0 => Some(t / b),
        _ => None,
    }
}

fn verdict(goal: Goal, ratio: Option<f64>, added_us: Option<f64>) -> String {
    let (text, met) = match goal {
        Goal::TpsRatio(min) => (format!(">={min:.2}x"), ratio.map(|r| r >= min)),
        Goal::AddedLatencyMicros(max) => (format!("<=+{max:.0}us"), added_us.map(|a| a <= max)),
    };
    match met {
        Some(true) => format!("{text} met"),
        Some(false) => format!("{text} MISSED"),
        None => format!("{text} n/a"),
    }
}

fn rounds_note(s: &Summary) -> String {
    let mut note = s
        .round_tps
        .iter()
        .map(|t| format!("{t:.0}"))
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(why) = &s.first_failure {
        let _ = write!(note, " FAILED {}/{}: {why}", s.failed, s.runs);
    }
    note.trim_start().to_owned()
}

fn fmt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// The median, the mean of the middle two for an even count; `None` when empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}
