//! The lag rules as a pure function: one observation of a replica plus the bounds in, a verdict
//! out. No IO and no clock reads here (the caller passes `now`), so every rule is unit-tested.

use std::time::SystemTime;

use super::health::ReplicaHealth;
use super::lsn::format_bytes;

/// How far behind its primary a replica may be and still serve reads. A replica is over a
/// bound when its lag is strictly greater than it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagBounds {
    /// Primary LSN minus replay LSN.
    pub max_bytes: u64,
    /// Time since the last replayed commit, while replay is behind (or, when the replica has
    /// replayed no commit since it started, time since it was first seen behind).
    pub max_ms: u64,
}

/// What one check read from a replica (and from its primary in the same cycle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The primary's WAL position (`pg_current_wal_flush_lsn()`, what replicas can have
    /// received); `None` when the primary could not be asked.
    pub primary_lsn: Option<u64>,
    /// The replica's `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<u64>,
    /// The replica's `pg_last_wal_receive_lsn()`.
    pub receive_lsn: Option<u64>,
    /// `now() - pg_last_xact_replay_timestamp()` in ms; `None` before any commit was replayed.
    pub replay_age_ms: Option<u64>,
    /// The replica's `pg_is_in_recovery()`.
    pub in_recovery: bool,
}

/// The outcome of one check of one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The check's queries answered.
    Sample(Sample),
    /// Connecting failed or timed out, the connection broke, or a query hung.
    Unreachable(String),
    /// The replica answered the check query with an error.
    QueryFailed(String),
}

/// An observation judged against the bounds, before the consecutive-check rules apply.
#[derive(Debug)]
pub(crate) struct Assessment {
    pub(crate) healthy: bool,
    pub(crate) lag_bytes: Option<u64>,
    pub(crate) lag_ms: Option<u64>,
    pub(crate) replay_lsn: Option<u64>,
    /// Replay is behind and the replica reports no replayed commit to date it by: `lag_ms` was
    /// measured from when it was first seen so, which the health record keeps.
    pub(crate) behind_undated: bool,
    pub(crate) verdict: Verdict,
}

#[derive(Debug)]
pub(crate) enum Verdict {
    /// Exclude at once: unreachable, failing or not a standby.
    Exclude(String),
    /// Over a lag bound; excluded only after consecutive checks.
    OverBound(String),
    WithinBounds,
}

/// Applies one observation to a replica's health; returns `Some(new_routable)` on a transition.
///
/// Unreachable, failed and not-in-recovery replicas are excluded at once; a replica over a bound
/// is excluded after 2 consecutive such checks; an excluded replica is admitted after 2
/// consecutive checks within bounds. Transitions are logged and counted on `health`.
pub fn observe(
    health: &ReplicaHealth,
    obs: Observation,
    bounds: LagBounds,
    now: SystemTime,
) -> Option<bool> {
    let behind_since = health.behind_undated_since();
    health.record(assess(obs, bounds, behind_since, now), now)
}

/// `behind_since` is when the replica was first seen behind with no replayed commit (see
/// [`Assessment::behind_undated`]), `None` if the previous check did not see it so.
pub(crate) fn assess(
    obs: Observation,
    bounds: LagBounds,
    behind_since: Option<SystemTime>,
    now: SystemTime,
) -> Assessment {
    let unhealthy = |why: String| Assessment {
        healthy: false,
        lag_bytes: None,
        lag_ms: None,
        replay_lsn: None,
        behind_undated: false,
        verdict: Verdict::Exclude(why),
    };
    let sample = match obs {
        Observation::Unreachable(e) => return unhealthy(format!("unreachable: {e}")),
        Observation::QueryFailed(e) => return unhealthy(format!("query failed: {e}")),
        Observation::Sample(s) if !s.in_recovery => return unhealthy("not in recovery".into()),
        Observation::Sample(s) => s,
    };
    let lag_bytes = match (sample.primary_lsn, sample.replay_lsn) {
        (Some(primary), Some(replay)) => Some(primary.saturating_sub(replay)),
        _ => None,
    };
    // A replica that has replayed everything there is has no time lag, however old its last
    // replayed commit: otherwise an idle primary would make every replica look stale.
    let caught_up = match (sample.replay_lsn, sample.primary_lsn.or(sample.receive_lsn)) {
        (Some(replay), Some(target)) => replay >= target,
        _ => false,
    };
    // pg_last_xact_replay_timestamp() is NULL until the replica replays a commit after it
    // starts: one restarted and then stuck (paused, a recovery conflict) would otherwise never
    // be over the time bound. Its lag is instead how long it has been seen behind, an
    // underestimate by at most one check interval.
    let behind_undated = !caught_up && sample.replay_age_ms.is_none();
    let lag_ms = if caught_up {
        Some(0)
    } else if behind_undated {
        let since = behind_since.unwrap_or(now);
        let behind_for = now.duration_since(since).unwrap_or_default();
        Some(u64::try_from(behind_for.as_millis()).unwrap_or(u64::MAX))
    } else {
        sample.replay_age_ms
    };
    let verdict = match (lag_bytes, lag_ms) {
        (Some(bytes), _) if bytes > bounds.max_bytes => Verdict::OverBound(format!(
            "lag {} > bound {}",
            format_bytes(bytes),
            format_bytes(bounds.max_bytes)
        )),
        (_, Some(ms)) if ms > bounds.max_ms => {
            Verdict::OverBound(format!("replay lag {ms} ms > bound {} ms", bounds.max_ms))
        }
        _ => Verdict::WithinBounds,
    };
    Assessment {
        healthy: true,
        lag_bytes,
        lag_ms,
        replay_lsn: sample.replay_lsn,
        behind_undated,
        verdict,
    }
}
