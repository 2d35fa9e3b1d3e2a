//! The routing rules, in the order they apply.

use shardgate_config::{LoadBalance, WhenNoReplica};

use crate::reason::{HintTarget, Reason};

/// Which node of a shard serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

/// `SET shardgate.target`: the session's default for reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetSetting {
    #[default]
    Auto,
    Primary,
    Replica,
}

/// What the request is, reduced to what routing needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestView {
    /// Some statement must run on the primary.
    pub write: bool,
    /// Every statement was read by the parser.
    pub parsed: bool,
    /// A `/* shardgate: primary|replica */` comment.
    pub hint: Option<HintTarget>,
    /// The request opens a transaction: `Some(read_only)`.
    pub begins: Option<bool>,
    /// Its first statement is a COMMIT or ROLLBACK, routed only when no server holds a
    /// transaction: it needs no replica, and the primary always answers it.
    pub ends_transaction: bool,
}

/// What the session has done that matters for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionView {
    pub target: TargetSetting,
    /// A temp table or session advisory lock pins the session to the primary.
    pub sticky_primary: bool,
    /// WAL position of the session's last committed write (0: none).
    pub ryw_lsn: u64,
}

/// One replica as the lag monitor and pool see it right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicaView {
    pub routable: bool,
    pub replay_lsn: u64,
    /// Server connections in use (for least_busy).
    pub active: u32,
}

/// The routing part of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub read_write_split: bool,
    pub when_no_replica: WhenNoReplica,
    pub load_balance: LoadBalance,
    pub read_your_writes: bool,
}

/// Where a request goes and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub role: Role,
    /// Index into the shard's replicas when `role` is Replica.
    pub replica: Option<usize>,
    pub reason: Reason,
}

/// A read with no routable replica under `when_no_replica: error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoute {
    /// Set when read-your-writes (not health) ruled the replicas out.
    pub read_your_writes: Option<Reason>,
}

const fn primary(reason: Reason) -> Route {
    Route {
        role: Role::Primary,
        replica: None,
        reason,
    }
}

/// Decides the node for one request. `tiebreak` varies between calls (a counter for
/// round_robin, a random number for random); the function itself is deterministic.
pub fn route(
    request: RequestView,
    session: SessionView,
    policy: Policy,
    replicas: &[ReplicaView],
    tiebreak: u64,
) -> Result<Route, NoRoute> {
    if !policy.read_write_split {
        return Ok(primary(Reason::SplitDisabled));
    }
    match request.hint {
        Some(HintTarget::Primary) => return Ok(primary(Reason::Hint(HintTarget::Primary))),
        Some(HintTarget::Replica) => {
            return pick_replica(
                Reason::Hint(HintTarget::Replica),
                session,
                policy,
                replicas,
                tiebreak,
            )
        }
        None => {}
    }
    if session.sticky_primary {
        return Ok(primary(Reason::StickyPrimary));
    }
    if request.ends_transaction {
        return Ok(primary(Reason::TransactionEnd));
    }
    match request.begins {
        // The session asked for the primary: a read-only transaction is reads, and follows it.
        Some(true) if !request.write && session.target == TargetSetting::Primary => {
            return Ok(primary(Reason::SessionTarget(HintTarget::Primary)))
        }
        Some(true) if !request.write => {
            return pick_replica(
                Reason::ReadOnlyTransaction,
                session,
                policy,
                replicas,
                tiebreak,
            )
        }
        Some(_) => return Ok(primary(Reason::Transaction)),
        None => {}
    }
    if request.write {
        return Ok(primary(if request.parsed {
            Reason::Write
        } else {
            Reason::Unparsed
        }));
    }
    match session.target {
        TargetSetting::Primary => Ok(primary(Reason::SessionTarget(HintTarget::Primary))),
        TargetSetting::Replica => pick_replica(
            Reason::SessionTarget(HintTarget::Replica),
            session,
            policy,
            replicas,
            tiebreak,
        ),
        TargetSetting::Auto => pick_replica(Reason::Read, session, policy, replicas, tiebreak),
    }
}

fn pick_replica(
    reason: Reason,
    session: SessionView,
    policy: Policy,
    replicas: &[ReplicaView],
    tiebreak: u64,
) -> Result<Route, NoRoute> {
    let need = if policy.read_your_writes {
        session.ryw_lsn
    } else {
        0
    };
    let eligible = |r: &ReplicaView| r.routable && r.replay_lsn >= need;
    let count = replicas.iter().filter(|r| eligible(r)).count();
    if count == 0 {
        let best = replicas
            .iter()
            .filter(|r| r.routable)
            .map(|r| r.replay_lsn)
            .max();
        // Routable replicas exist but none has the session's writes: the primary has them.
        if let Some(best) = best {
            return Ok(primary(Reason::ReadYourWrites {
                best,
                session: need,
            }));
        }
        return match policy.when_no_replica {
            WhenNoReplica::Primary => Ok(primary(Reason::NoRoutableReplica)),
            WhenNoReplica::Error => Err(NoRoute {
                read_your_writes: None,
            }),
        };
    }
    let nth = |n: usize| {
        replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| eligible(r))
            .nth(n)
            .map(|(i, _)| i)
    };
    let start = (tiebreak % count as u64) as usize;
    let chosen = match policy.load_balance {
        LoadBalance::RoundRobin | LoadBalance::Random => nth(start),
        LoadBalance::LeastBusy => {
            // Fewest active connections; among equals, rotate so load spreads.
            let least = replicas
                .iter()
                .filter(|r| eligible(r))
                .map(|r| r.active)
                .min()
                .unwrap_or(0);
            let is_tie = |r: &ReplicaView| eligible(r) && r.active == least;
            let ties = replicas.iter().filter(|r| is_tie(r)).count().max(1);
            replicas
                .iter()
                .enumerate()
                .filter(|(_, r)| is_tie(r))
                .nth((tiebreak % ties as u64) as usize)
                .map(|(i, _)| i)
        }
    };
    let reason = match reason {
        Reason::Read if need > 0 => Reason::ReadYourWritesReplica { session: need },
        other => other,
    };
    Ok(Route {
        role: Role::Replica,
        replica: chosen,
        reason,
    })
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
