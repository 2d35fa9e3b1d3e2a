//! A proxy's CPU time per transaction: its user and system time from `/proc/<pid>/stat` (the
//! whole process, every thread) read right before and right after one pgbench run, divided by
//! the transactions that run completed. Far steadier than TPS on a shared machine.

use std::process::Command;
use std::sync::OnceLock;

use crate::pgbench::RunOutcome;

/// What Linux uses when `getconf` cannot say (`USER_HZ` on every common architecture).
const FALLBACK_TICKS_PER_SECOND: f64 = 100.0;

/// A process's cumulative CPU time, in clock ticks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuTicks {
    user: u64,
    system: u64,
}

/// `utime` and `stime` (fields 14 and 15) of `/proc/<pid>/stat`, `None` once the process is
/// gone. For a process id they cover all its threads, live and exited.
pub(crate) fn read(pid: u32) -> Option<CpuTicks> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2, the command name, is in parentheses and may itself hold spaces or ')'; the
    // fields after the last ')' start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(14 - 3);
    Some(CpuTicks {
        user: fields.next()?.parse().ok()?,
        system: fields.next()?.parse().ok()?,
    })
}

/// A proxy's CPU time per transaction over one run, in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuPerTxn {
    pub(crate) user_us: f64,
    pub(crate) system_us: f64,
}

/// The CPU the proxy used between `before` and `after`, per transaction of `outcome`; `None`
/// for a failed run, a target without a proxy, or a proxy that could not be read.
pub(crate) fn per_transaction(
    before: Option<CpuTicks>,
    after: Option<CpuTicks>,
    outcome: &RunOutcome,
) -> Option<CpuPerTxn> {
    let (before, after, sample) = (before?, after?, outcome.as_ref().ok()?);
    if sample.transactions == 0 {
        return None;
    }
    let us_per_tick = 1e6 / ticks_per_second();
    let per_txn = |ticks: u64| ticks as f64 * us_per_tick / sample.transactions as f64;
    Some(CpuPerTxn {
        user_us: per_txn(after.user.checked_sub(before.user)?),
        system_us: per_txn(after.system.checked_sub(before.system)?),
    })
}

/// `getconf CLK_TCK`, asked once: the unit of `utime` and `stime`. A constant of the running
/// kernel, so caching it process-wide shares no state worth isolating.
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .filter(|&ticks: &f64| ticks > 0.0)
            .unwrap_or_else(|| {
                eprintln!(
                    "getconf CLK_TCK failed; assuming {FALLBACK_TICKS_PER_SECOND} ticks per second"
                );
                FALLBACK_TICKS_PER_SECOND
            })
    })
}
