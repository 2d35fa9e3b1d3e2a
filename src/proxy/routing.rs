//! Gathering routing inputs for a session's request, calling the pure router, and
//! explaining the outcome (decision log, metrics, `/api/route`, errors).

use std::sync::Arc;

use shardgate_router::{route, Reason, ReplicaView, Role, SessionView, TargetSetting};
use shardgate_sql::Classification;
use shardgate_wire::ErrorFields;

use super::request::Scanned;
use super::sqlstate;
use super::topology::{NodeRuntime, Snapshot};
use crate::decisions::Kind;

/// Routing state a session carries between requests.
#[derive(Debug, Default, Clone)]
pub(crate) struct SessionRouting {
    pub(crate) target: TargetSetting,
    /// `SET shardgate.shard`: every statement goes to this shard (by name).
    pub(crate) shard: Option<Arc<str>>,
    /// `SET shardgate.shard_key`: every statement goes to this key's shard.
    pub(crate) shard_key: Option<Arc<str>>,
    pub(crate) sticky: bool,
    /// Per shard, the WAL position of the session's last committed write there.
    pub(crate) ryw_lsn: WrittenPositions,
    /// The open transaction has written on the primary.
    pub(crate) txn_wrote: bool,
    /// Varies the replica choice between requests.
    pub(crate) counter: u64,
}

impl SessionRouting {
    /// A new session's routing state. Its replica counter starts at a random value: from 0,
    /// every session's first read would pick the same replica under `round_robin` and
    /// `least_busy` (idle replicas tie), piling short sessions onto one replica.
    pub(crate) fn new() -> SessionRouting {
        SessionRouting {
            counter: rand::random(),
            ..SessionRouting::default()
        }
    }

    fn view(&mut self, snapshot: &Snapshot, shard: usize) -> SessionView {
        SessionView {
            target: self.target,
            sticky_primary: self.sticky,
            ryw_lsn: self
                .ryw_lsn
                .get(snapshot.version, &snapshot.shards, shard, |s| &s.name),
        }
    }

    /// Remembers a committed write's WAL position on shard `shard` of `snapshot` (the one the
    /// write ran on, which may be older than the newest).
    pub(crate) fn note_lsn(&mut self, snapshot: &Snapshot, shard: usize, lsn: u64) {
        self.ryw_lsn
            .note(snapshot.version, &snapshot.shards, shard, |s| &s.name, lsn);
    }
}

/// Per shard, the WAL position of a session's last committed write there (0: none). Positions
/// of different primaries are not comparable, so each shard keeps its own, by shard name: a
/// reload may reorder, add or remove shards. The list follows the shard order of the newest
/// snapshot `version` the session used (a read finds its shard by index); the first use of a
/// newer one remaps it by name, dropping the shards that snapshot no longer has. Empty until the
/// session's first write, so a session that never writes never builds it.
#[derive(Debug, Default, Clone)]
pub(crate) struct WrittenPositions {
    version: u64,
    by_shard: Vec<(Arc<str>, u64)>,
}

impl WrittenPositions {
    /// The position on shard `shard` of the snapshot `version` whose shards are `shards`.
    pub(crate) fn get<T>(
        &mut self,
        version: u64,
        shards: &[T],
        shard: usize,
        name: impl Fn(&T) -> &Arc<str>,
    ) -> u64 {
        if self.by_shard.is_empty() {
            return 0;
        }
        self.follow(version, shards, &name);
        if self.version == version {
            return self.by_shard.get(shard).map_or(0, |e| e.1);
        }
        shards
            .get(shard)
            .map_or(0, |s| self.find(name(s)).map_or(0, |e| e.1))
    }

    /// Raises the position on shard `shard` of the snapshot `version` to `lsn`.
    pub(crate) fn note<T>(
        &mut self,
        version: u64,
        shards: &[T],
        shard: usize,
        name: impl Fn(&T) -> &Arc<str>,
        lsn: u64,
    ) {
        self.follow(version, shards, &name);
        // By name: `version` may be older than the list's (a transaction that began before a
        // reload commits on its own snapshot); a shard the newer one dropped is not kept.
        if let Some(e) = shards.get(shard).and_then(|s| self.find(name(s))) {
            e.1 = e.1.max(lsn);
        }
    }

    /// Remaps the list to a newer snapshot's shards, by name.
    fn follow<T>(&mut self, version: u64, shards: &[T], name: &impl Fn(&T) -> &Arc<str>) {
        if version <= self.version {
            return;
        }
        let old = std::mem::take(&mut self.by_shard);
        self.by_shard = shards
            .iter()
            .map(|s| {
                let n = name(s);
                let kept = old.iter().find(|(o, _)| o == n).map_or(0, |e| e.1);
                (n.clone(), kept)
            })
            .collect();
        self.version = version;
    }

    fn find(&mut self, wanted: &Arc<str>) -> Option<&mut (Arc<str>, u64)> {
        self.by_shard.iter_mut().find(|(n, _)| n == wanted)
    }
}

/// Where a request goes.
pub(crate) struct Chosen {
    pub(crate) shard: usize,
    pub(crate) node: Arc<NodeRuntime>,
    pub(crate) role: Role,
    pub(crate) reason: Reason,
    pub(crate) kind: Kind,
}

/// The request's kind for metrics and the decision log.
pub(crate) fn kind_of(scanned: &Scanned, in_transaction: bool) -> Kind {
    if !scanned.view.parsed {
        Kind::Unparsed
    } else if in_transaction || scanned.view.begins.is_some() {
        Kind::Transaction
    } else if scanned.view.write {
        Kind::Write
    } else {
        Kind::Read
    }
}

/// Picks the node within shard `shard_index` for a request outside a transaction.
/// Err is the ErrorResponse for `when_no_replica: error`.
pub(crate) fn choose(
    snapshot: &Snapshot,
    shard_index: usize,
    user: &str,
    scanned: &Scanned,
    session: &mut SessionRouting,
    in_transaction: bool,
) -> Result<Chosen, ErrorFields> {
    let shard = &snapshot.shards[shard_index];
    let mut views = [ReplicaView::default(); 16];
    let n = shard.replica_views(user, &mut views);
    session.counter = session.counter.wrapping_add(1);
    let tiebreak = match snapshot.policy.load_balance {
        shardgate_config::LoadBalance::Random => rand::random(),
        _ => session.counter,
    };
    match route(
        scanned.view,
        session.view(snapshot, shard_index),
        snapshot.policy,
        &views[..n],
        tiebreak,
    ) {
        Ok(r) => {
            let node = match (r.role, r.replica) {
                (Role::Replica, Some(i)) => shard.replicas[i].clone(),
                _ => shard.primary.clone(),
            };
            Ok(Chosen {
                shard: shard_index,
                node,
                role: r.role,
                reason: r.reason,
                kind: kind_of(scanned, in_transaction),
            })
        }
        Err(_) => Err(no_replica_error(snapshot, shard_index)),
    }
}

/// [`replicas_detail`] as the decision log keeps it. A shard without replicas (every read goes
/// to its primary) shares one text per thread instead of allocating it for each query.
pub(crate) fn replicas_detail_shared(snapshot: &Snapshot, shard_index: usize) -> Arc<str> {
    thread_local! {
        static NO_REPLICAS: Arc<str> = Arc::from(NO_REPLICAS_TEXT);
    }
    if snapshot.shards[shard_index].replicas.is_empty() {
        return NO_REPLICAS.with(Arc::clone);
    }
    Arc::from(replicas_detail(snapshot, shard_index))
}

const NO_REPLICAS_TEXT: &str = "the shard has no replicas";

/// Each replica of a shard and why it is excluded, e.g.
/// "replica 127.0.0.1:5434 excluded: lag 12.0 MiB > bound 1.0 MiB".
pub(crate) fn replicas_detail(snapshot: &Snapshot, shard_index: usize) -> String {
    let why: Vec<String> = snapshot.shards[shard_index]
        .replicas
        .iter()
        .map(|r| {
            let reason = r
                .health
                .as_ref()
                .map(|h| h.status().reason)
                .unwrap_or_else(|| "no health data".to_owned());
            format!("replica {} {}", r.addr, reason)
        })
        .collect();
    if why.is_empty() {
        NO_REPLICAS_TEXT.to_owned()
    } else {
        why.join("; ")
    }
}

/// 57P03 naming each replica and why it is excluded.
fn no_replica_error(snapshot: &Snapshot, shard_index: usize) -> ErrorFields {
    let shard = &snapshot.shards[shard_index];
    let detail = replicas_detail(snapshot, shard_index);
    ErrorFields::new(
        "ERROR",
        sqlstate::CANNOT_CONNECT_NOW,
        format!("shardgate: no routable replica in shard {} for a read", shard.name),
    )
    .with(b'D', detail)
    .with(
        b'H',
        "Retry later, send the read to the primary with /* shardgate: primary */, or set routing.when_no_replica: primary.",
    )
}

/// What `/api/route` answers: the decision a statement would get now from a fresh session.
pub(crate) struct Explained {
    pub(crate) kind: Kind,
    pub(crate) shards: Vec<Arc<str>>,
    pub(crate) node: Option<String>,
    pub(crate) role: Option<Role>,
    pub(crate) reason: String,
    pub(crate) class: Arc<Classification>,
}

pub(crate) fn explain_route(snapshot: &Snapshot, user: Option<&str>, sql: &str) -> Explained {
    let class = snapshot.classifier.classify(sql.as_bytes());
    let mut buf = bytes::BytesMut::new();
    shardgate_wire::frontend::query(sql.as_bytes(), &mut buf);
    let user = user
        .map(str::to_owned)
        .or_else(|| snapshot.config.users.first().map(|u| u.name.clone()))
        .unwrap_or_default();
    let first = || vec![snapshot.shards[0].name.clone()];
    let failed = |kind, shards, reason: String, class| Explained {
        kind,
        shards,
        node: None,
        role: None,
        reason,
        class,
    };
    let scanned = match super::request::scan(
        &buf,
        usize::MAX,
        &snapshot.classifier,
        &Default::default(),
        None,
    ) {
        Ok(s) => s,
        Err(e) => return failed(Kind::Unparsed, first(), e.to_string(), class),
    };
    let mut session = SessionRouting::default();
    let mut shard_index = 0;
    let mut why = String::new();
    if let Some(rt) = &snapshot.sharding {
        let plan = super::shard_plan::plan_request(
            rt,
            &buf,
            usize::MAX,
            &Default::default(),
            None,
            &session,
            scanned.shard_hint.as_ref(),
        );
        let kind = kind_of(&scanned, false);
        match plan.need {
            super::shard_plan::Need::Refuse(f) => {
                let reason = format!(
                    "refused ({}): {}",
                    f.code().unwrap_or_default(),
                    f.message().unwrap_or_default()
                );
                return failed(kind, Vec::new(), reason, class);
            }
            super::shard_plan::Need::One(i) => shard_index = i,
            super::shard_plan::Need::Any | super::shard_plan::Need::AnyReference => {}
            super::shard_plan::Need::Many { shards: set, .. } => {
                let shards = shardgate_router::shards_in(set)
                    .filter_map(|i| snapshot.shards.get(i).map(|s| s.name.clone()))
                    .collect();
                return failed(kind, shards, plan.why, class);
            }
            super::shard_plan::Need::Scatter { shards: set, .. } => {
                let shards = shardgate_router::shards_in(set)
                    .filter_map(|i| snapshot.shards.get(i).map(|s| s.name.clone()))
                    .collect();
                return failed(kind, shards, plan.why, class);
            }
            super::shard_plan::Need::Split { requests, .. } => {
                let shards = requests
                    .iter()
                    .filter_map(|(i, _)| snapshot.shards.get(*i).map(|s| s.name.clone()))
                    .collect();
                return failed(kind, shards, plan.why, class);
            }
        }
        why = plan.why;
    }
    let prefix = |r: String| {
        if why.is_empty() {
            r
        } else {
            format!("{why}; {r}")
        }
    };
    match choose(snapshot, shard_index, &user, &scanned, &mut session, false) {
        Ok(c) => Explained {
            kind: c.kind,
            shards: vec![snapshot.shards[c.shard].name.clone()],
            node: Some(c.node.addr.to_string()),
            role: Some(c.role),
            reason: prefix(crate::explain::reason_text(
                c.reason,
                scanned.class.as_deref(),
                (c.reason == Reason::NoRoutableReplica)
                    .then(|| replicas_detail(snapshot, c.shard))
                    .as_deref(),
            )),
            class,
        },
        Err(fields) => failed(
            kind_of(&scanned, false),
            vec![snapshot.shards[shard_index].name.clone()],
            prefix(format!(
                "{}: {}",
                fields.message().unwrap_or_default(),
                fields.get(b'D').unwrap_or_default()
            )),
            class,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::WrittenPositions;

    fn names(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|n| Arc::from(*n)).collect()
    }

    fn get(p: &mut WrittenPositions, version: u64, shards: &[Arc<str>], shard: usize) -> u64 {
        p.get(version, shards, shard, |n| n)
    }

    #[test]
    fn positions_follow_the_shard_by_name_across_reloads() {
        let v1 = names(&["s0", "s1"]);
        let mut p = WrittenPositions::default();
        assert_eq!(get(&mut p, 1, &v1, 0), 0);
        p.note(1, &v1, 1, |n| n, 500);
        p.note(1, &v1, 1, |n| n, 400);
        assert_eq!((get(&mut p, 1, &v1, 0), get(&mut p, 1, &v1, 1)), (0, 500));

        // Reordered, with a new shard in front: found by name before and after a remap.
        let v2 = names(&["s2", "s1", "s0"]);
        assert_eq!(
            (
                get(&mut p, 2, &v2, 0),
                get(&mut p, 2, &v2, 1),
                get(&mut p, 2, &v2, 2)
            ),
            (0, 500, 0)
        );
        p.note(2, &v2, 2, |n| n, 70);
        assert_eq!(
            (
                get(&mut p, 2, &v2, 0),
                get(&mut p, 2, &v2, 1),
                get(&mut p, 2, &v2, 2)
            ),
            (0, 500, 70)
        );
        // A transaction that began on version 1 commits on it.
        p.note(1, &v1, 0, |n| n, 90);
        assert_eq!((get(&mut p, 2, &v2, 2), get(&mut p, 1, &v1, 0)), (90, 90));

        // s1 removed (seen by a read alone): its position goes; added back, it starts from none.
        let v3 = names(&["s0"]);
        assert_eq!(get(&mut p, 3, &v3, 0), 90);
        let v4 = names(&["s0", "s1"]);
        assert_eq!((get(&mut p, 4, &v4, 0), get(&mut p, 4, &v4, 1)), (90, 0));
        p.note(4, &v4, 1, |n| n, 1);
        assert_eq!(get(&mut p, 4, &v4, 1), 1);
        // An index past the snapshot's shards is no position.
        assert_eq!(get(&mut p, 4, &v4, 9), 0);
    }
}
