//! shardgate's resident memory, read from `/proc/<pid>/status`: one reading, and a sampler
//! thread that keeps the largest `VmRSS` it saw while a workload runs. The kernel's own peak
//! (`VmHWM`) covers the process's whole life; the sampler shows the peak of one stretch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the sampler reads. A full ordered scatter takes seconds, so a buffer growing
/// with the result could not hide between two readings.
const SAMPLE_EVERY: Duration = Duration::from_millis(2);

/// One `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`), `None` once the process is gone.
pub(crate) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Samples `VmRSS` of one process until stopped.
#[derive(Debug)]
pub(crate) struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, u64)>,
}

impl RssSampler {
    pub(crate) fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut peak, mut samples) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                if let Some(kib) = status_kib(pid, "VmRSS") {
                    peak = peak.max(kib);
                    samples += 1;
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            (peak, samples)
        });
        RssSampler { stop, thread }
    }

    /// The largest `VmRSS` seen, in KiB, and how many readings were taken.
    pub(crate) fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or((0, 0))
    }
}
