//! Looking at and signalling OS processes through /proc and `kill(1)`, which keeps the crate free
//! of `unsafe` FFI. Used to crash a postmaster on purpose and to check that none outlive a test.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::env::run;
use crate::TestkitError;

/// The postmaster pid recorded in `<data>/postmaster.pid`, if the file exists and parses.
pub(crate) fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// The SysV shared memory id recorded in `<data>/postmaster.pid` (line 7: "key id").
pub(crate) fn shmem_id(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines()
        .nth(6)?
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
}

/// The `state` and `ppid` fields of `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is parenthesised and may itself contain spaces or ')'.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` is a live process. A zombie counts as dead: in containers whose init does not
/// reap, a killed postmaster stays a zombie forever.
pub(crate) fn is_alive(pid: u32) -> bool {
    matches!(stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// The pids whose parent is `pid`.
pub(crate) fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| matches!(stat(child), Some((_, ppid)) if ppid == pid))
        .collect()
}

/// Sends SIGKILL to `pid`.
pub(crate) fn sigkill(pid: u32) -> Result<(), TestkitError> {
    run(Command::new("kill").args(["-KILL", &pid.to_string()])).map(drop)
}

/// Polls until none of `pids` is alive or `timeout` passes; returns whether they all died.
pub(crate) fn wait_dead(pids: &[u32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !pids.iter().any(|&p| is_alive(p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
