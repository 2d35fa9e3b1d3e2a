//! Every routing rule, plus properties over random inputs.

use proptest::prelude::*;
use shardgate_config::{LoadBalance, WhenNoReplica};

use super::*;

const POLICY: Policy = Policy {
    read_write_split: true,
    when_no_replica: WhenNoReplica::Primary,
    load_balance: LoadBalance::RoundRobin,
    read_your_writes: true,
};

fn read() -> RequestView {
    RequestView {
        parsed: true,
        ..RequestView::default()
    }
}

fn write() -> RequestView {
    RequestView {
        write: true,
        parsed: true,
        ..RequestView::default()
    }
}

fn up(lsn: u64) -> ReplicaView {
    ReplicaView {
        routable: true,
        replay_lsn: lsn,
        active: 0,
    }
}

fn down() -> ReplicaView {
    ReplicaView::default()
}

fn go(req: RequestView, s: SessionView, reps: &[ReplicaView]) -> Route {
    route(req, s, POLICY, reps, 0).expect("route")
}

#[test]
fn writes_go_to_the_primary_and_reads_to_a_replica() {
    let reps = [up(10), up(10)];
    assert_eq!(
        go(write(), SessionView::default(), &reps).role,
        Role::Primary
    );
    let r = go(read(), SessionView::default(), &reps);
    assert_eq!((r.role, r.reason), (Role::Replica, Reason::Read));
}

#[test]
fn unparsed_is_primary_with_its_own_reason() {
    let req = RequestView {
        write: true,
        parsed: false,
        ..RequestView::default()
    };
    assert_eq!(
        go(req, SessionView::default(), &[up(1)]).reason,
        Reason::Unparsed
    );
}

#[test]
fn split_disabled_sends_everything_to_the_primary() {
    let policy = Policy {
        read_write_split: false,
        ..POLICY
    };
    let r = route(read(), SessionView::default(), policy, &[up(1)], 0).expect("route");
    assert_eq!((r.role, r.reason), (Role::Primary, Reason::SplitDisabled));
}

#[test]
fn hints_and_session_target_force_roles() {
    let reps = [up(1)];
    let hinted = |h| RequestView {
        hint: Some(h),
        ..read()
    };
    assert_eq!(
        go(hinted(HintTarget::Primary), SessionView::default(), &reps).role,
        Role::Primary
    );
    let to_replica = RequestView {
        hint: Some(HintTarget::Replica),
        ..write()
    };
    assert_eq!(
        go(to_replica, SessionView::default(), &reps).role,
        Role::Replica
    );
    let s = SessionView {
        target: TargetSetting::Primary,
        ..SessionView::default()
    };
    assert_eq!(
        go(read(), s, &reps).reason,
        Reason::SessionTarget(HintTarget::Primary)
    );
    let s = SessionView {
        target: TargetSetting::Replica,
        ..SessionView::default()
    };
    assert_eq!(go(read(), s, &reps).role, Role::Replica);
    // A session default never sends a write to a replica.
    assert_eq!(go(write(), s, &reps).role, Role::Primary);
}

#[test]
fn a_transaction_end_needs_no_replica() {
    let end = RequestView {
        ends_transaction: true,
        ..read()
    };
    let policy = Policy {
        when_no_replica: WhenNoReplica::Error,
        ..POLICY
    };
    for reps in [&[][..], &[down()], &[up(1)]] {
        let r = route(end, SessionView::default(), policy, reps, 0).expect("route");
        assert_eq!((r.role, r.reason), (Role::Primary, Reason::TransactionEnd));
    }
}

#[test]
fn transactions_pin_to_primary_unless_read_only() {
    let reps = [up(1)];
    let begin = RequestView {
        begins: Some(false),
        ..read()
    };
    assert_eq!(
        go(begin, SessionView::default(), &reps).reason,
        Reason::Transaction
    );
    let ro = RequestView {
        begins: Some(true),
        ..read()
    };
    assert_eq!(go(ro, SessionView::default(), &reps).role, Role::Replica);
    // `SET shardgate.target = 'primary'` keeps a read-only transaction on the primary too;
    // `replica` does not move a read-write one.
    let on_primary = SessionView {
        target: TargetSetting::Primary,
        ..SessionView::default()
    };
    let r = go(ro, on_primary, &reps);
    assert_eq!(
        (r.role, r.reason),
        (Role::Primary, Reason::SessionTarget(HintTarget::Primary))
    );
    let on_replica = SessionView {
        target: TargetSetting::Replica,
        ..SessionView::default()
    };
    assert_eq!(go(ro, on_replica, &reps).role, Role::Replica);
    assert_eq!(go(begin, on_replica, &reps).reason, Reason::Transaction);
    let ro_write = RequestView {
        begins: Some(true),
        ..write()
    };
    assert_eq!(
        go(ro_write, SessionView::default(), &reps).role,
        Role::Primary
    );
}

#[test]
fn sticky_sessions_stay_on_the_primary() {
    let s = SessionView {
        sticky_primary: true,
        ..SessionView::default()
    };
    assert_eq!(go(read(), s, &[up(1)]).reason, Reason::StickyPrimary);
}

#[test]
fn read_your_writes_waits_for_replay() {
    let s = SessionView {
        ryw_lsn: 100,
        ..SessionView::default()
    };
    let r = go(read(), s, &[up(50), up(99)]);
    assert_eq!(r.role, Role::Primary);
    assert_eq!(
        r.reason,
        Reason::ReadYourWrites {
            best: 99,
            session: 100
        }
    );
    assert_eq!(
        r.reason.to_string(),
        "read-your-writes: replica replay 0/63 < session 0/64"
    );
    let r = go(read(), s, &[up(50), up(100)]);
    assert_eq!((r.role, r.replica), (Role::Replica, Some(1)));
    let policy = Policy {
        read_your_writes: false,
        ..POLICY
    };
    let r = route(read(), s, policy, &[up(50)], 0).expect("route");
    assert_eq!(r.role, Role::Replica);
}

#[test]
fn no_routable_replica_follows_when_no_replica() {
    assert_eq!(
        go(read(), SessionView::default(), &[down(), down()]).reason,
        Reason::NoRoutableReplica
    );
    let policy = Policy {
        when_no_replica: WhenNoReplica::Error,
        ..POLICY
    };
    assert!(route(read(), SessionView::default(), policy, &[down()], 0).is_err());
    assert!(route(read(), SessionView::default(), policy, &[], 0).is_err());
}

#[test]
fn excluded_replicas_are_never_chosen_and_load_spreads() {
    let reps = [down(), up(1), up(1)];
    let mut seen = [0; 3];
    for t in 0..10 {
        let r = route(read(), SessionView::default(), POLICY, &reps, t).expect("route");
        seen[r.replica.expect("replica")] += 1;
    }
    assert_eq!(seen, [0, 5, 5]);
    let busy = [
        ReplicaView { active: 5, ..up(1) },
        ReplicaView { active: 1, ..up(1) },
    ];
    let policy = Policy {
        load_balance: LoadBalance::LeastBusy,
        ..POLICY
    };
    for t in 0..4 {
        let r = route(read(), SessionView::default(), policy, &busy, t).expect("route");
        assert_eq!(r.replica, Some(1));
    }
}

fn replica_strategy() -> impl Strategy<Value = ReplicaView> {
    (any::<bool>(), 0u64..1000, 0u32..10).prop_map(|(routable, replay_lsn, active)| ReplicaView {
        routable,
        replay_lsn,
        active,
    })
}

proptest! {
    /// A write never reaches a replica unless a hint explicitly asks for it; a replica
    /// chosen is always routable and has replayed the session's writes.
    #[test]
    fn routes_are_always_safe(
        write in any::<bool>(),
        parsed in any::<bool>(),
        begins in proptest::option::of(any::<bool>()),
        sticky in any::<bool>(),
        target in 0u8..3,
        ryw in 0u64..1000,
        replicas in proptest::collection::vec(replica_strategy(), 0..4),
        tiebreak in any::<u64>(),
        lb in 0u8..3,
    ) {
        let request = RequestView { write: write || !parsed, parsed, hint: None, begins, ends_transaction: false };
        let session = SessionView {
            target: [TargetSetting::Auto, TargetSetting::Primary, TargetSetting::Replica][target as usize],
            sticky_primary: sticky,
            ryw_lsn: ryw,
        };
        let policy = Policy {
            load_balance: [LoadBalance::LeastBusy, LoadBalance::RoundRobin, LoadBalance::Random][lb as usize],
            ..POLICY
        };
        if let Ok(r) = route(request, session, policy, &replicas, tiebreak) {
            if request.write {
                prop_assert_eq!(r.role, Role::Primary);
            }
            if r.role == Role::Replica {
                let i = r.replica.expect("replica index");
                prop_assert!(replicas[i].routable);
                prop_assert!(replicas[i].replay_lsn >= ryw);
            }
        }
    }
}
