//! Which worker thread is running: its pool lane, and the reactor its sockets are registered
//! with.
//!
//! shardgate runs one single-threaded runtime per worker thread. Each pool keeps one lane
//! (free slots and idle connections) per worker, so a worker's sessions reuse connections
//! that are registered with its own reactor and never wake another thread. A connection that
//! crosses to another worker (one lane's slot is free while another's clients wait) is moved
//! to the new thread's reactor on checkout.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Reactor ids are never reused within a process; 0 means "not declared".
static NEXT_REACTOR: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static HERE: Cell<(usize, u64)> = const { Cell::new((0, 0)) };
}

/// Declares that the calling thread drives its own single-threaded tokio runtime, and that
/// its checkouts use lane `lane` of every pool. Call once on the thread, before the runtime
/// runs anything that touches a pool.
///
/// Threads that never call this (a multi-threaded runtime, tests) use lane 0 and move every
/// connection they check out to their reactor, which is correct for any runtime, at the cost
/// of two `epoll_ctl` calls per checkout.
pub fn bind_thread(lane: usize) {
    let reactor = NEXT_REACTOR.fetch_add(1, Ordering::Relaxed);
    HERE.with(|h| h.set((lane, reactor)));
}

/// The calling thread's lane (0 for threads that never called [`bind_thread`]). Other
/// per-worker structures (the decision log) shard by it too.
pub fn thread_lane() -> usize {
    here().0
}

/// The calling thread's lane and reactor id (0: undeclared).
pub(crate) fn here() -> (usize, u64) {
    HERE.with(Cell::get)
}

/// Keeps a timer due within [`crate::pool::HEARTBEAT`] on the calling runtime, forever.
/// Spawn it on every runtime that serves sessions: see [`crate::pool::HEARTBEAT`] for why.
pub async fn heartbeat() {
    let mut tick = tokio::time::interval(crate::pool::HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}
