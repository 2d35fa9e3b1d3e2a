//! One replica's shared health record: written by its shard's lag monitor (and by the proxy when a
//! query on it fails), read by the router on every read (atomics only) and by the admin API
//! (a status snapshot).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::SystemTime;

use shardgate_config::NodeAddr;

use super::observe::{Assessment, Verdict};

/// Consecutive checks needed both to exclude a replica for lag and to admit it again, so one
/// noisy sample neither flaps it out nor lets a recovering replica back too early.
pub(crate) const CHECKS_TO_CHANGE: u32 = 2;

/// What the admin API shows for one replica: a snapshot of the last check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// Reachable and in recovery at the last check (lag is not considered).
    pub healthy: bool,
    /// Whether new reads may go to this replica.
    pub routable: bool,
    /// Primary LSN minus replay LSN; `None` when either was unknown.
    pub lag_bytes: Option<u64>,
    /// Time since the last replayed commit, counted only while replay is behind; for a replica
    /// that has replayed no commit since it started, time since it was first seen behind.
    pub lag_ms: Option<u64>,
    /// Last observed replay LSN.
    pub replay_lsn: Option<u64>,
    /// `"ok"`, `"excluded: ..."` or a pending `"... (1 of 2 checks)"`.
    pub reason: String,
    /// When the monitor last checked this replica.
    pub checked_at: Option<SystemTime>,
}

/// One replica's shared state. The router reads [`routable`](Self::routable) and
/// [`replay_lsn`](Self::replay_lsn) lock-free on the hot path; everything else sits behind a
/// mutex that only the monitor, the failure path and the admin API take.
#[derive(Debug)]
pub struct ReplicaHealth {
    addr: NodeAddr,
    /// Set by the shard's monitor, so transitions are logged with their shard.
    shard: OnceLock<String>,
    routable: AtomicBool,
    replay_lsn: AtomicU64,
    transitions: AtomicU64,
    exclusions: AtomicU64,
    readmissions: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    status: ReplicaStatus,
    /// Consecutive checks over a lag bound.
    over_streak: u32,
    /// Consecutive checks within bounds.
    good_streak: u32,
    /// Since when consecutive checks have seen replay behind with no replayed commit.
    behind_undated_since: Option<SystemTime>,
}

impl ReplicaHealth {
    /// A replica that has not been checked yet, and so is not routable.
    pub fn new(addr: NodeAddr) -> Arc<ReplicaHealth> {
        Arc::new(ReplicaHealth {
            addr,
            shard: OnceLock::new(),
            routable: AtomicBool::new(false),
            replay_lsn: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            exclusions: AtomicU64::new(0),
            readmissions: AtomicU64::new(0),
            state: Mutex::new(State {
                status: ReplicaStatus {
                    healthy: false,
                    routable: false,
                    lag_bytes: None,
                    lag_ms: None,
                    replay_lsn: None,
                    reason: "not checked yet".to_owned(),
                    checked_at: None,
                },
                over_streak: 0,
                good_streak: 0,
                behind_undated_since: None,
            }),
        })
    }

    /// The replica's address.
    pub fn addr(&self) -> &NodeAddr {
        &self.addr
    }

    /// Whether new reads may go here.
    pub fn routable(&self) -> bool {
        self.routable.load(Ordering::Acquire)
    }

    /// Last observed replay LSN (0 = unknown).
    pub fn replay_lsn(&self) -> u64 {
        self.replay_lsn.load(Ordering::Relaxed)
    }

    /// A snapshot of the full status.
    pub fn status(&self) -> ReplicaStatus {
        self.lock().status.clone()
    }

    /// Excludes the replica at once because a connection to it failed during a query; it comes
    /// back only after [`CHECKS_TO_CHANGE`] good checks by the monitor. `reason` says what
    /// failed (for example `"query failed: connection reset"`) and is shown as
    /// `"excluded: <reason>"`.
    pub fn mark_failed(&self, reason: &str) {
        let changed = {
            let mut state = self.lock();
            state.over_streak = 0;
            state.good_streak = 0;
            state.status.healthy = false;
            state.status.reason = format!("excluded: {reason}");
            self.set_routable(&mut state, false)
        };
        if changed {
            self.log_transition(false, &format!("excluded: {reason}"));
        }
    }

    /// Routability changes so far (both directions).
    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    /// Changes from routable to excluded.
    pub fn exclusions(&self) -> u64 {
        self.exclusions.load(Ordering::Relaxed)
    }

    /// Changes from excluded to routable (the first admission included).
    pub fn readmissions(&self) -> u64 {
        self.readmissions.load(Ordering::Relaxed)
    }

    /// Since when replay has been seen behind with no replayed commit to date the lag by.
    pub(crate) fn behind_undated_since(&self) -> Option<SystemTime> {
        self.lock().behind_undated_since
    }

    pub(crate) fn set_shard(&self, shard: &str) {
        // A replica belongs to one shard; a second monitor for it would be a caller bug, and
        // keeping the first name is harmless.
        let _ = self.shard.set(shard.to_owned());
    }

    /// Applies one assessed check; returns `Some(new_routable)` on a transition.
    pub(crate) fn record(&self, check: Assessment, now: SystemTime) -> Option<bool> {
        let (changed, routable, reason) = {
            let mut state = self.lock();
            let was = state.status.routable;
            let status = &mut state.status;
            status.healthy = check.healthy;
            status.lag_bytes = check.lag_bytes;
            status.lag_ms = check.lag_ms;
            if let Some(lsn) = check.replay_lsn {
                status.replay_lsn = Some(lsn);
                self.replay_lsn.store(lsn, Ordering::Relaxed);
            }
            status.checked_at = Some(now);
            state.behind_undated_since = if check.behind_undated {
                Some(state.behind_undated_since.unwrap_or(now))
            } else {
                None
            };
            let (routable, reason) = match check.verdict {
                Verdict::Exclude(why) => {
                    state.over_streak = 0;
                    state.good_streak = 0;
                    (false, format!("excluded: {why}"))
                }
                Verdict::OverBound(why) => {
                    state.good_streak = 0;
                    state.over_streak = state.over_streak.saturating_add(1);
                    if !was || state.over_streak >= CHECKS_TO_CHANGE {
                        (false, format!("excluded: {why}"))
                    } else {
                        let n = state.over_streak;
                        (true, format!("{why} ({n} of {CHECKS_TO_CHANGE} checks)"))
                    }
                }
                Verdict::WithinBounds => {
                    state.over_streak = 0;
                    state.good_streak = state.good_streak.saturating_add(1);
                    if was || state.good_streak >= CHECKS_TO_CHANGE {
                        (true, "ok".to_owned())
                    } else {
                        let n = state.good_streak;
                        (false, format!("ok ({n} of {CHECKS_TO_CHANGE} checks)"))
                    }
                }
            };
            state.status.reason.clone_from(&reason);
            (self.set_routable(&mut state, routable), routable, reason)
        };
        if changed {
            self.log_transition(routable, &reason);
            Some(routable)
        } else {
            None
        }
    }

    /// Stores the new routability under the state lock (so the atomic and the snapshot never
    /// disagree for long) and counts a transition; returns whether it changed.
    fn set_routable(&self, state: &mut State, routable: bool) -> bool {
        state.status.routable = routable;
        let was = self.routable.swap(routable, Ordering::AcqRel);
        if was == routable {
            return false;
        }
        self.transitions.fetch_add(1, Ordering::Relaxed);
        let counter = if routable {
            &self.readmissions
        } else {
            &self.exclusions
        };
        counter.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn log_transition(&self, routable: bool, reason: &str) {
        let shard = self.shard.get().map_or("?", String::as_str);
        let node = &self.addr;
        if routable {
            tracing::info!(shard, %node, reason, "replica admitted for reads");
        } else {
            tracing::warn!(shard, %node, reason, "replica excluded from reads");
        }
    }

    /// The state holds plain values that every writer leaves consistent, so a panic elsewhere
    /// while holding the lock does not make it unusable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
