//! Busy polling: before a session thread sleeps in `epoll_wait`, it polls its runtime's epoll
//! descriptor for a short window, yielding the CPU between polls.
//!
//! A proxy's thread sleeps after every request it forwards and is woken when the reply
//! arrives. On a lightly loaded machine that wake-up is most of the latency a proxy adds: the
//! sleeping thread's CPU may be idle (on a VM, halted), and the wake-up waits for it. When the
//! reply comes within the window, the thread finds it without having slept.
//!
//! Polling takes no CPU from other work: between polls the thread calls `sched_yield`, so any
//! other runnable thread on its CPU (a PostgreSQL backend, say) runs first. What it costs is
//! CPU time that would otherwise be idle, up to one window per sleep. The window adapts, as
//! KVM's halt polling does: a sleep that ends within `max` doubles it (polling would have
//! caught that wake-up), and a longer one halves it, down to zero, so a thread whose waits are
//! long stops polling.

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::lane_metrics::LaneCounter;

/// The first window after polling has shrunk to nothing.
const START: Duration = Duration::from_micros(10);

/// The adaptive window: how long the next sleep polls first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    max: Duration,
    current: Duration,
}

impl Window {
    /// A window that starts at, and never exceeds, `max`.
    pub(crate) fn new(max: Duration) -> Window {
        Window { max, current: max }
    }

    /// How long the next sleep polls first.
    pub(crate) fn current(&self) -> Duration {
        self.current
    }

    /// Adapts to one sleep that took `slept` from its start (polling included) to its wake-up.
    pub(crate) fn observe(&mut self, slept: Duration) {
        if slept <= self.current {
            // Polling caught it.
        } else if slept > self.max {
            // No window would have caught it.
            self.current /= 2;
            if self.current < START {
                self.current = Duration::ZERO;
            }
        } else {
            // A longer window would have caught it.
            self.current = (self.current * 2).max(START).min(self.max);
        }
    }
}

/// A thread's polling state, set by [`enable`].
struct Poller {
    /// `None`: polling is off, sleeps are only counted.
    epoll: Option<RawFd>,
    window: Window,
    parked_at: Instant,
    /// Whether the last poll found work (the runtime then did not sleep).
    caught: bool,
}

/// What `/metrics` reports about session threads' sleeps.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// Sleeps avoided: polling found work.
    pub(crate) polled: LaneCounter,
    /// Sleeps taken (after polling, when polling is on).
    pub(crate) slept: LaneCounter,
}

/// The process's counts (one proxy per process).
pub(crate) fn counts() -> &'static Counts {
    static COUNTS: OnceLock<Counts> = OnceLock::new();
    COUNTS.get_or_init(Counts::default)
}

thread_local! {
    static POLLER: RefCell<Option<Poller>> = const { RefCell::new(None) };
}

/// Sets up the calling thread, which runs sessions inside the `block_on` of a runtime built
/// by `workers::runtime_builder` (so with [`before_park`] and [`after_unpark`] as its hooks):
/// it polls for up to `max` before each sleep, and its sleeps are counted. With a zero `max`,
/// or when the runtime's epoll descriptor cannot be found, it does not poll (and its sleeps
/// are still counted).
pub(crate) fn enable(max: Duration) {
    let epoll = if max.is_zero() {
        None
    } else {
        let found = runtime_epoll();
        if found.is_none() {
            tracing::warn!("busy polling is off: the runtime's epoll descriptor was not found");
        }
        found
    };
    let max = if epoll.is_some() { max } else { Duration::ZERO };
    POLLER.with(|p| {
        *p.borrow_mut() = Some(Poller {
            epoll,
            window: Window::new(max),
            parked_at: Instant::now(),
            caught: false,
        });
    });
}

/// The runtime's `on_thread_park` hook: polls for up to the current window, then returns
/// (the runtime then sleeps in `epoll_wait`, which returns at once if polling saw an event).
pub(crate) fn before_park() {
    POLLER.with(|p| {
        let mut p = p.borrow_mut();
        let Some(poller) = p.as_mut() else { return };
        poller.caught = false;
        let Some(epoll) = poller.epoll else {
            return;
        };
        let start = Instant::now();
        poller.parked_at = start;
        let window = poller.window.current();
        if window.is_zero() {
            return;
        }
        loop {
            if ready(epoll) {
                poller.caught = true;
                return;
            }
            if start.elapsed() >= window {
                return;
            }
            std::thread::yield_now();
        }
    });
}

/// The runtime's `on_thread_unpark` hook: counts the sleep just ended (or avoided) and adapts
/// the window to it.
pub(crate) fn after_unpark() {
    POLLER.with(|p| {
        if let Some(poller) = p.borrow_mut().as_mut() {
            let counts = counts();
            if poller.caught {
                counts.polled.inc();
            } else {
                counts.slept.inc();
            }
            if poller.epoll.is_some() {
                poller.window.observe(poller.parked_at.elapsed());
            }
        }
    });
}

/// Whether the epoll descriptor has events waiting (it is readable then), without taking
/// them: `poll(2)` with a zero timeout.
fn ready(epoll: RawFd) -> bool {
    let mut fd = libc::pollfd {
        fd: epoll,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, and a count of one; a zero timeout never blocks.
    unsafe { libc::poll(&mut fd, 1, 0) > 0 }
}

/// The epoll descriptor of the runtime the calling thread is in. tokio does not expose it, so
/// this registers a marker socket with the runtime and finds the epoll instance whose
/// registrations (`/proc/self/fdinfo`, one `tfd:` line each) include the marker.
fn runtime_epoll() -> Option<RawFd> {
    use std::os::fd::AsRawFd;
    let (marker, _peer) = std::os::unix::net::UnixStream::pair().ok()?;
    marker.set_nonblocking(true).ok()?;
    let marker = tokio::net::UnixStream::from_std(marker).ok()?;
    let wanted = marker.as_raw_fd();
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.as_os_str() != "anon_inode:[eventpoll]" {
            continue;
        }
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        if registers(&info, wanted) {
            return Some(fd);
        }
    }
    None
}

/// Whether an epoll instance's fdinfo text lists descriptor `fd` among its registrations.
fn registers(fdinfo: &str, fd: RawFd) -> bool {
    fdinfo.lines().any(|line| {
        line.strip_prefix("tfd:")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<RawFd>().ok())
            == Some(fd)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn the_window_stays_while_polling_catches_wake_ups_and_adapts_to_the_rest() {
        let mut w = Window::new(us(50));
        assert_eq!(w.current(), us(50));
        w.observe(us(30));
        assert_eq!(w.current(), us(50), "caught: unchanged");
        for expected_ns in [25_000, 12_500, 0, 0] {
            w.observe(us(2_000));
            assert_eq!(
                w.current(),
                Duration::from_nanos(expected_ns),
                "long sleeps halve it, then turn it off"
            );
        }
        for expected in [10, 20, 40, 50, 50] {
            w.observe(us(45));
            assert_eq!(
                w.current(),
                us(expected),
                "short sleeps grow it back to the maximum"
            );
        }
    }

    #[test]
    fn fdinfo_registrations_are_matched_by_descriptor_number() {
        let info = "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\n\
                    tfd:       12 events:       19 data:                0  pos:0 ino:3 sdev:8\n\
                    tfd:        7 events: 80000019 data: 1 pos:0 ino:5 sdev:8\n";
        assert!(registers(info, 12));
        assert!(registers(info, 7));
        assert!(!registers(info, 1));
        assert!(!registers(info, 19), "an events mask is not a descriptor");
    }

    #[test]
    fn the_epoll_descriptor_found_is_the_current_runtimes() {
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let a = first.block_on(async { runtime_epoll() }).expect("found");
        let b = second.block_on(async { runtime_epoll() }).expect("found");
        assert_ne!(a, b);
        assert_eq!(first.block_on(async { runtime_epoll() }), Some(a));
        // Readable while something registered with the runtime has an event waiting.
        first.block_on(async {
            let (x, mut y) = tokio::net::UnixStream::pair().unwrap();
            // The runtime sleeps in epoll_wait, which takes the new sockets' first events.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!ready(a), "nothing waiting");
            tokio::io::AsyncWriteExt::write_all(&mut y, b"x")
                .await
                .unwrap();
            assert!(ready(a), "x has a byte to read");
            assert!(!ready(b), "the other runtime has nothing");
            drop(x);
        });
    }
}
