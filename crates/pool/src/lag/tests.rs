//! Unit tests of the lag rules: every transition of [`observe`], without any server.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;

const MIB: u64 = 1 << 20;
const BOUNDS: LagBounds = LagBounds {
    max_bytes: MIB,
    max_ms: 1000,
};

fn replica() -> Arc<ReplicaHealth> {
    ReplicaHealth::new("127.0.0.1:5433".parse().expect("valid address"))
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

/// A replica `behind` bytes behind a busy primary, last commit replayed `age_ms` ago.
fn lagging(behind: u64, age_ms: u64) -> Observation {
    let primary = 0x10_0000_0000;
    Observation::Sample(Sample {
        primary_lsn: Some(primary),
        replay_lsn: Some(primary - behind),
        receive_lsn: Some(primary),
        replay_age_ms: Some(age_ms),
        in_recovery: true,
    })
}

fn good() -> Observation {
    lagging(4096, 5)
}

/// Runs observations in order and returns what each one returned.
fn feed(health: &ReplicaHealth, observations: Vec<Observation>) -> Vec<Option<bool>> {
    observations
        .into_iter()
        .enumerate()
        .map(|(i, obs)| observe(health, obs, BOUNDS, at(i as u64)))
        .collect()
}

/// A replica admitted by two good checks.
fn admitted() -> Arc<ReplicaHealth> {
    let health = replica();
    assert_eq!(feed(&health, vec![good(), good()]), [None, Some(true)]);
    health
}

#[test]
fn starts_not_routable_and_needs_two_good_checks() {
    let health = replica();
    let status = health.status();
    assert!(!health.routable() && !status.routable && !status.healthy);
    assert_eq!(status.reason, "not checked yet");
    assert_eq!((health.replay_lsn(), status.checked_at), (0, None));

    assert_eq!(observe(&health, good(), BOUNDS, at(1)), None);
    assert!(!health.routable());
    assert_eq!(health.status().reason, "ok (1 of 2 checks)");
    assert_eq!(observe(&health, good(), BOUNDS, at(2)), Some(true));
    let status = health.status();
    assert!(health.routable() && status.routable && status.healthy);
    assert_eq!(status.reason, "ok");
    assert_eq!(status.lag_bytes, Some(4096));
    assert_eq!(status.lag_ms, Some(5));
    assert_eq!(status.checked_at, Some(at(2)));
    assert_eq!(status.replay_lsn, Some(0x10_0000_0000 - 4096));
    assert_eq!(health.replay_lsn(), 0x10_0000_0000 - 4096);
    assert_eq!((health.transitions(), health.readmissions()), (1, 1));
}

#[test]
fn two_consecutive_byte_lag_checks_exclude() {
    let health = admitted();
    assert_eq!(observe(&health, lagging(12 * MIB, 5), BOUNDS, at(5)), None);
    assert!(health.routable());
    assert_eq!(
        health.status().reason,
        "lag 12.0 MiB > bound 1.0 MiB (1 of 2 checks)"
    );
    assert_eq!(
        observe(&health, lagging(12 * MIB, 5), BOUNDS, at(6)),
        Some(false)
    );
    assert!(!health.routable());
    let status = health.status();
    assert_eq!(status.reason, "excluded: lag 12.0 MiB > bound 1.0 MiB");
    assert!(status.healthy, "lagging is not unhealthy");
    assert_eq!(status.lag_bytes, Some(12 * MIB));
    assert_eq!((health.transitions(), health.exclusions()), (2, 1));
}

#[test]
fn two_consecutive_time_lag_checks_exclude() {
    let health = admitted();
    let slow = || lagging(100, 2300);
    assert_eq!(feed(&health, vec![slow(), slow()]), [None, Some(false)]);
    assert_eq!(
        health.status().reason,
        "excluded: replay lag 2300 ms > bound 1000 ms"
    );
    assert_eq!(health.status().lag_ms, Some(2300));
}

#[test]
fn one_bad_check_between_good_ones_does_not_exclude() {
    let health = admitted();
    let results = feed(
        &health,
        vec![lagging(12 * MIB, 5), good(), lagging(2 * MIB, 5), good()],
    );
    assert_eq!(results, [None, None, None, None]);
    assert!(health.routable());
    assert_eq!(health.status().reason, "ok");
    assert_eq!(health.transitions(), 1);
}

#[test]
fn either_bound_counts_towards_the_same_streak() {
    let health = admitted();
    let results = feed(&health, vec![lagging(12 * MIB, 5), lagging(100, 2300)]);
    assert_eq!(results, [None, Some(false)]);
}

#[test]
fn unreachable_excludes_at_once() {
    let health = admitted();
    let obs = Observation::Unreachable("could not connect: Connection refused".into());
    assert_eq!(observe(&health, obs, BOUNDS, at(9)), Some(false));
    let status = health.status();
    assert_eq!(
        status.reason,
        "excluded: unreachable: could not connect: Connection refused"
    );
    assert!(!status.healthy && !status.routable);
    assert_eq!((status.lag_bytes, status.lag_ms), (None, None));
    // The last known position stays visible.
    assert_eq!(status.replay_lsn, Some(0x10_0000_0000 - 4096));
}

#[test]
fn query_failure_excludes_at_once() {
    let health = admitted();
    let obs = Observation::QueryFailed("ERROR: out of memory".into());
    assert_eq!(observe(&health, obs, BOUNDS, at(9)), Some(false));
    assert_eq!(
        health.status().reason,
        "excluded: query failed: ERROR: out of memory"
    );
}

#[test]
fn not_in_recovery_excludes_at_once() {
    let health = admitted();
    let promoted = Observation::Sample(Sample {
        primary_lsn: Some(100),
        replay_lsn: None,
        receive_lsn: None,
        replay_age_ms: None,
        in_recovery: false,
    });
    assert_eq!(observe(&health, promoted, BOUNDS, at(9)), Some(false));
    let status = health.status();
    assert_eq!(status.reason, "excluded: not in recovery");
    assert!(!status.healthy);
}

#[test]
fn excluded_replica_comes_back_after_two_good_checks() {
    let health = admitted();
    let down = || Observation::Unreachable("no answer within 500 ms".into());
    let results = feed(&health, vec![down(), good(), down(), good(), good()]);
    assert_eq!(results, [Some(false), None, None, None, Some(true)]);
    assert_eq!(health.status().reason, "ok");
    assert_eq!(
        (
            health.transitions(),
            health.exclusions(),
            health.readmissions()
        ),
        (3, 1, 2)
    );
}

#[test]
fn lag_while_excluded_keeps_it_excluded_and_resets_the_good_streak() {
    let health = admitted();
    let big = || lagging(12 * MIB, 5);
    let results = feed(&health, vec![big(), big(), good(), big(), good(), good()]);
    assert_eq!(results, [None, Some(false), None, None, None, Some(true)]);
    let health = admitted();
    feed(&health, vec![big(), big(), big()]);
    assert_eq!(
        health.status().reason,
        "excluded: lag 12.0 MiB > bound 1.0 MiB"
    );
}

#[test]
fn idle_primary_does_not_make_a_caught_up_replica_stale() {
    let health = admitted();
    let idle = || {
        Observation::Sample(Sample {
            primary_lsn: Some(0x5000_0000),
            replay_lsn: Some(0x5000_0000),
            receive_lsn: Some(0x5000_0000),
            // The last commit was an hour ago.
            replay_age_ms: Some(3_600_000),
            in_recovery: true,
        })
    };
    assert_eq!(feed(&health, vec![idle(), idle(), idle()]), [None; 3]);
    let status = health.status();
    assert!(status.routable);
    assert_eq!((status.lag_bytes, status.lag_ms), (Some(0), Some(0)));
    assert_eq!(status.reason, "ok");
}

#[test]
fn without_the_primary_time_lag_is_judged_against_received_wal() {
    let unknown_primary = |replay, receive| {
        Observation::Sample(Sample {
            primary_lsn: None,
            replay_lsn: Some(replay),
            receive_lsn: Some(receive),
            replay_age_ms: Some(3_600_000),
            in_recovery: true,
        })
    };
    let health = admitted();
    assert_eq!(
        feed(
            &health,
            vec![unknown_primary(500, 500), unknown_primary(500, 500)]
        ),
        [None, None]
    );
    assert_eq!(health.status().lag_bytes, None);
    assert_eq!(health.status().lag_ms, Some(0));
    assert_eq!(
        feed(
            &health,
            vec![unknown_primary(400, 500), unknown_primary(400, 500)]
        ),
        [None, Some(false)]
    );
    assert_eq!(
        health.status().reason,
        "excluded: replay lag 3600000 ms > bound 1000 ms"
    );
}

#[test]
fn replay_ahead_of_the_primary_reading_is_zero_lag() {
    // The primary is read first, so a replica may have replayed past that reading.
    let health = admitted();
    let ahead = Observation::Sample(Sample {
        primary_lsn: Some(1000),
        replay_lsn: Some(1200),
        receive_lsn: Some(1200),
        replay_age_ms: Some(10_000),
        in_recovery: true,
    });
    assert_eq!(observe(&health, ahead, BOUNDS, at(3)), None);
    assert_eq!(health.status().lag_bytes, Some(0));
    assert_eq!(health.status().lag_ms, Some(0));
}

#[test]
fn mark_failed_excludes_at_once_until_two_good_checks() {
    let health = admitted();
    health.mark_failed("query failed: connection reset by peer");
    assert!(!health.routable());
    let status = health.status();
    assert_eq!(
        status.reason,
        "excluded: query failed: connection reset by peer"
    );
    assert!(!status.healthy);
    assert_eq!(health.exclusions(), 1);
    // Marking an excluded replica again is not another transition.
    health.mark_failed("query failed: broken pipe");
    assert_eq!(health.transitions(), 2);
    assert_eq!(feed(&health, vec![good(), good()]), [None, Some(true)]);
}

#[test]
fn mark_failed_resets_a_pending_readmission() {
    let health = admitted();
    health.mark_failed("query failed: x");
    assert_eq!(observe(&health, good(), BOUNDS, at(1)), None);
    health.mark_failed("query failed: y");
    assert_eq!(observe(&health, good(), BOUNDS, at(2)), None);
    assert!(!health.routable());
    assert_eq!(observe(&health, good(), BOUNDS, at(3)), Some(true));
}

/// Replay `behind` bytes behind a busy primary, and no commit replayed since the replica
/// started (`pg_last_xact_replay_timestamp()` is NULL).
fn behind_undated(behind: u64) -> Observation {
    let primary = 0x20_0000_0000;
    Observation::Sample(Sample {
        primary_lsn: Some(primary),
        replay_lsn: Some(primary - behind),
        receive_lsn: Some(primary),
        replay_age_ms: None,
        in_recovery: true,
    })
}

fn at_ms(ms: u64) -> SystemTime {
    at(0) + Duration::from_millis(ms)
}

#[test]
fn behind_with_no_replayed_commit_is_timed_from_when_first_seen() {
    let health = admitted();
    // Small byte lag, far under the byte bound: only the time bound can act.
    assert_eq!(
        observe(&health, behind_undated(900), BOUNDS, at_ms(10_000)),
        None
    );
    let status = health.status();
    assert!(status.routable);
    assert_eq!((status.lag_bytes, status.lag_ms), (Some(900), Some(0)));
    assert_eq!(
        observe(&health, behind_undated(900), BOUNDS, at_ms(10_600)),
        None
    );
    assert_eq!(health.status().lag_ms, Some(600));
    assert_eq!(
        observe(&health, behind_undated(900), BOUNDS, at_ms(11_200)),
        None
    );
    let status = health.status();
    assert_eq!(status.lag_ms, Some(1200));
    assert_eq!(
        status.reason,
        "replay lag 1200 ms > bound 1000 ms (1 of 2 checks)"
    );
    assert_eq!(
        observe(&health, behind_undated(900), BOUNDS, at_ms(11_800)),
        Some(false)
    );
    assert_eq!(
        health.status().reason,
        "excluded: replay lag 1800 ms > bound 1000 ms"
    );

    // Caught up: the clock restarts the next time it falls behind undated.
    let caught_up = behind_undated(0);
    assert_eq!(
        observe(&health, caught_up.clone(), BOUNDS, at_ms(12_000)),
        None
    );
    assert_eq!(
        observe(&health, caught_up, BOUNDS, at_ms(12_100)),
        Some(true)
    );
    assert_eq!(
        observe(&health, behind_undated(64), BOUNDS, at_ms(20_000)),
        None
    );
    assert_eq!(health.status().lag_ms, Some(0));
    assert!(health.routable());
}

#[test]
fn a_dated_check_between_undated_ones_restarts_the_clock() {
    let health = admitted();
    assert_eq!(
        observe(&health, behind_undated(900), BOUNDS, at_ms(0)),
        None
    );
    // A commit replayed: the timestamp dates the lag again.
    assert_eq!(observe(&health, lagging(900, 5), BOUNDS, at_ms(900)), None);
    assert_eq!(
        observe(&health, behind_undated(900), BOUNDS, at_ms(1_800)),
        None
    );
    let status = health.status();
    assert_eq!((status.lag_ms, status.reason.as_str()), (Some(0), "ok"));
}

#[test]
fn unreachable_restarts_the_undated_clock() {
    let health = admitted();
    assert_eq!(
        observe(&health, behind_undated(900), BOUNDS, at_ms(0)),
        None
    );
    assert_eq!(
        observe(
            &health,
            Observation::Unreachable("refused".into()),
            BOUNDS,
            at_ms(500)
        ),
        Some(false)
    );
    assert_eq!(
        observe(&health, behind_undated(900), BOUNDS, at_ms(5_000)),
        None
    );
    assert_eq!(health.status().lag_ms, Some(0));
}
