//! The last routing decisions, for `/api/decisions`: a fixed ring of 1,000 slots per worker
//! thread, written under a short lock that only that worker takes on the hot path, with no
//! allocation (the SQL is copied into an inline buffer, the reason is a small enum rendered
//! only when read). Reading merges the rings by time.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use shardgate_config::NodeAddr;
use shardgate_router::{Reason, Role};
use shardgate_sql::Classification;

/// How many decisions are kept.
pub(crate) const CAPACITY: usize = 1000;
/// How much of each statement is kept.
pub(crate) const SQL_PREFIX: usize = 200;

/// What kind of request a decision was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
    Transaction,
    Unparsed,
}

impl Kind {
    pub(crate) const ALL: [Kind; 4] = [Kind::Read, Kind::Write, Kind::Transaction, Kind::Unparsed];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Transaction => "transaction",
            Kind::Unparsed => "unparsed",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// One recorded decision.
#[derive(Debug, Clone)]
pub(crate) struct Decision {
    pub(crate) at: SystemTime,
    pub(crate) session: u64,
    pub(crate) config_version: u64,
    sql: [u8; SQL_PREFIX],
    sql_len: u8,
    pub(crate) kind: Kind,
    pub(crate) shard: Arc<str>,
    pub(crate) node: Arc<NodeAddr>,
    pub(crate) role: Role,
    pub(crate) reason: Reason,
    /// The classification behind a write, to say why.
    pub(crate) class: Option<Arc<Classification>>,
    /// Why no replica could take a read (only then: built off the hot path).
    pub(crate) detail: Option<Arc<str>>,
    /// Every shard a fanned-out request ran on (None: just `shard`).
    pub(crate) shards: Option<Arc<[Arc<str>]>>,
    /// Why those shards, e.g. `key user_id=42 → logical 302 → s0` (sharding only).
    pub(crate) shard_reason: Option<Arc<str>>,
}

impl Decision {
    /// Overwrites this (ring slot) with `d`, taking a new reference only where the slot held
    /// another value: in steady state a slot already names the same shard and node, so no
    /// reference count moves and nothing is freed.
    fn assign(&mut self, d: Draft<'_>, at: SystemTime) {
        fn same<T: ?Sized>(slot: &mut Arc<T>, new: &Arc<T>) {
            if !Arc::ptr_eq(slot, new) {
                *slot = new.clone();
            }
        }
        self.at = at;
        self.session = d.session;
        self.config_version = d.config_version;
        self.sql_len = copy_prefix(&mut self.sql, d.sql);
        self.kind = d.kind;
        same(&mut self.shard, d.shard);
        same(&mut self.node, d.node);
        self.role = d.role;
        self.reason = d.reason;
        match (&mut self.class, d.class) {
            (Some(slot), Some(new)) => same(slot, new),
            (slot, new) => *slot = new.cloned(),
        }
        self.detail = d.detail;
        self.shards = d.shards;
        self.shard_reason = d.shard_reason;
    }

    /// The shard names, in order.
    pub(crate) fn shard_names(&self) -> Vec<&str> {
        match &self.shards {
            Some(list) => list.iter().map(|s| &**s).collect(),
            None => vec![&*self.shard],
        }
    }

    pub(crate) fn sql(&self) -> String {
        String::from_utf8_lossy(&self.sql[..self.sql_len as usize]).into_owned()
    }

    /// The reason as text, with the write's cause where there is one.
    pub(crate) fn reason_text(&self) -> String {
        let node =
            crate::explain::reason_text(self.reason, self.class.as_deref(), self.detail.as_deref());
        match &self.shard_reason {
            Some(r) => format!("{r}; {node}"),
            None => node,
        }
    }
}

/// Copies the first [`SQL_PREFIX`] bytes of `sql` into `buf`, cut on a character boundary so
/// the prefix stays valid UTF-8 where the SQL was; returns the length.
fn copy_prefix(buf: &mut [u8; SQL_PREFIX], sql: &[u8]) -> u8 {
    let mut len = sql.len().min(SQL_PREFIX);
    while len > 0 && len < sql.len() && (sql[len] & 0xC0) == 0x80 {
        len -= 1;
    }
    buf[..len].copy_from_slice(&sql[..len]);
    len as u8
}

/// A decision about to be recorded, borrowing what it names (see [`DecisionLog::record_draft`]).
#[derive(Debug)]
pub(crate) struct Draft<'a> {
    pub(crate) session: u64,
    pub(crate) config_version: u64,
    pub(crate) sql: &'a [u8],
    pub(crate) kind: Kind,
    pub(crate) shard: &'a Arc<str>,
    pub(crate) node: &'a Arc<NodeAddr>,
    pub(crate) role: Role,
    pub(crate) reason: Reason,
    pub(crate) class: Option<&'a Arc<Classification>>,
    pub(crate) detail: Option<Arc<str>>,
    pub(crate) shards: Option<Arc<[Arc<str>]>>,
    pub(crate) shard_reason: Option<Arc<str>>,
}

impl Draft<'_> {
    pub(crate) fn to_decision(&self, at: SystemTime) -> Decision {
        let mut sql = [0u8; SQL_PREFIX];
        let sql_len = copy_prefix(&mut sql, self.sql);
        Decision {
            at,
            session: self.session,
            config_version: self.config_version,
            sql,
            sql_len,
            kind: self.kind,
            shard: self.shard.clone(),
            node: self.node.clone(),
            role: self.role,
            reason: self.reason,
            class: self.class.cloned(),
            detail: self.detail.clone(),
            shards: self.shards.clone(),
            shard_reason: self.shard_reason.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct Ring {
    slots: Vec<Decision>,
    next: usize,
}

/// One worker's ring, on a cache line of its own: the workers never share one on the hot path.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Lane(Mutex<Ring>);

/// The rings, one per worker thread (see `shardgate_pool::bind_thread`).
#[derive(Debug)]
pub(crate) struct DecisionLog {
    lanes: Box<[Lane]>,
}

impl Default for DecisionLog {
    fn default() -> Self {
        DecisionLog::new(1)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DecisionLog {
    /// Records `d`, written into its ring slot in place (once the ring is full, the hot path
    /// neither allocates, frees nor moves reference counts).
    pub(crate) fn record_draft(&self, d: Draft<'_>) {
        let at = SystemTime::now();
        let lane = &self.lanes[shardgate_pool::thread_lane() % self.lanes.len()];
        let mut ring = lock(&lane.0);
        if ring.slots.len() < CAPACITY {
            let decision = d.to_decision(at);
            ring.slots.push(decision);
        } else {
            let i = ring.next;
            ring.slots[i].assign(d, at);
        }
        ring.next = (ring.next + 1) % CAPACITY;
    }

    /// `lanes` rings (one per worker thread), each keeping its last [`CAPACITY`] decisions, so
    /// the newest [`CAPACITY`] of the whole proxy are always among them.
    pub(crate) fn new(lanes: usize) -> Self {
        DecisionLog {
            lanes: (0..lanes.max(1)).map(|_| Lane::default()).collect(),
        }
    }

    /// Newest first, at most `limit` (and at most [`CAPACITY`]).
    pub(crate) fn recent(&self, limit: usize) -> Vec<Decision> {
        let limit = limit.min(CAPACITY);
        let mut all = Vec::new();
        for lane in self.lanes.iter() {
            let ring = lock(&lane.0);
            let n = ring.slots.len();
            all.extend(
                (1..=n.min(limit))
                    .map(|k| ring.slots[(ring.next + CAPACITY - k) % CAPACITY % n.max(1)].clone()),
            );
        }
        // Stable: equal times keep each ring's own newest-first order.
        all.sort_by_key(|d| std::cmp::Reverse(d.at));
        all.truncate(limit);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_router::Reason;

    /// A read of `sql` by session `i` on `shard`.
    fn draft<'a>(i: u64, sql: &'a [u8], shard: &'a Arc<str>, node: &'a Arc<NodeAddr>) -> Draft<'a> {
        Draft {
            session: i,
            config_version: 1,
            sql,
            kind: Kind::Read,
            shard,
            node,
            role: Role::Primary,
            reason: Reason::Read,
            class: None,
            detail: None,
            shards: None,
            shard_reason: None,
        }
    }

    fn names() -> (Arc<str>, Arc<NodeAddr>) {
        let node = NodeAddr {
            host: "127.0.0.1".into(),
            port: 5432,
        };
        (Arc::from("s0"), Arc::new(node))
    }

    #[test]
    fn keeps_the_newest_first_and_is_bounded() {
        let (shard, node) = names();
        let log = DecisionLog::default();
        for i in 0..2500 {
            log.record_draft(draft(i, b"SELECT 1", &shard, &node));
        }
        let recent = log.recent(5000);
        assert_eq!(recent.len(), CAPACITY);
        assert_eq!(recent[0].session, 2499);
        assert_eq!(recent[CAPACITY - 1].session, 1500);
        let few = DecisionLog::default();
        few.record_draft(draft(1, b"SELECT 1", &shard, &node));
        few.record_draft(draft(2, b"SELECT 1", &shard, &node));
        let r = few.recent(10);
        assert_eq!(r.iter().map(|d| d.session).collect::<Vec<_>>(), vec![2, 1]);
    }

    #[test]
    fn rings_of_several_workers_read_back_merged_newest_first() {
        let (shard, node) = names();
        let log = Arc::new(DecisionLog::new(2));
        for lane in 0..2u64 {
            let (log, shard, node) = (log.clone(), shard.clone(), node.clone());
            std::thread::spawn(move || {
                shardgate_pool::bind_thread(lane as usize);
                for i in 0..1500 {
                    log.record_draft(draft(lane * 10_000 + i, b"SELECT 1", &shard, &node));
                    if i % 100 == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            })
            .join()
            .expect("recording thread");
        }
        // Lane 1 recorded after lane 0: its newest 1,000 are the newest of all.
        let recent = log.recent(5000);
        assert_eq!(recent.len(), CAPACITY);
        assert_eq!(recent[0].session, 11_499);
        assert_eq!(recent[CAPACITY - 1].session, 10_500);
        let both = log.recent(CAPACITY).iter().any(|d| d.session < 10_000);
        assert!(
            !both,
            "lane 0's older decisions must not push out lane 1's newer ones"
        );
        assert!(recent.windows(2).all(|w| w[0].at >= w[1].at));
    }

    #[test]
    fn drafts_overwrite_slots_in_place_and_read_back_whole() {
        let log = DecisionLog::default();
        let (s0, s1): (Arc<str>, Arc<str>) = (Arc::from("s0"), Arc::from("s1"));
        let node = Arc::new(NodeAddr {
            host: "h".into(),
            port: 1,
        });
        for i in 0..(CAPACITY as u64 + 3) {
            let shard = if i.is_multiple_of(2) { &s0 } else { &s1 };
            let long = "x".repeat(i as usize % 300);
            log.record_draft(Draft {
                session: i,
                config_version: 7,
                sql: long.as_bytes(),
                kind: Kind::Write,
                shard,
                node: &node,
                role: Role::Primary,
                reason: Reason::Read,
                class: None,
                detail: i.is_multiple_of(3).then(|| Arc::from("why")),
                shards: None,
                shard_reason: None,
            });
        }
        let recent = log.recent(3);
        let last = CAPACITY as u64 + 2;
        assert_eq!(
            recent.iter().map(|d| d.session).collect::<Vec<_>>(),
            vec![last, last - 1, last - 2]
        );
        assert_eq!(
            &*recent[0].shard,
            if last.is_multiple_of(2) { "s0" } else { "s1" }
        );
        assert_eq!(recent[0].sql().len(), (last as usize % 300).min(SQL_PREFIX));
        assert_eq!(recent[0].detail.is_some(), last.is_multiple_of(3));
        assert_eq!(recent[1].detail.is_some(), (last - 1).is_multiple_of(3));
        // The names are held by the ring's slots, the three decisions read back and this
        // test's own two: overwriting a slot released what it held.
        assert_eq!(
            Arc::strong_count(&s0) + Arc::strong_count(&s1),
            CAPACITY + 3 + 2
        );
    }

    #[test]
    fn sql_is_truncated_on_a_character_boundary() {
        let long = "é".repeat(150);
        let (shard, node) = names();
        let dec = draft(1, long.as_bytes(), &shard, &node).to_decision(SystemTime::now());
        assert_eq!(dec.sql(), "é".repeat(100));
    }
}
