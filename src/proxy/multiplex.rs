//! Multiplexing (`pool.multiplex`): a lone read outside a transaction may *ride* on a server
//! connection that another session holds for a lone read of its own. Its request is written
//! down that connection right behind the requests already there, and the connection is handed
//! to it, together with whatever of its reply was already read, once the request ahead of it
//! has had its ReadyForQuery. A backend that finds the next request waiting in its socket
//! answers it without sleeping, which is where the saving comes from (see
//! `docs/design/multiplexing.md`).
//!
//! The session holding such a connection is its *holder*; the connection is *hosted* while
//! it carries riders' requests. Only the holder writes to it (the riders' bytes wait in the
//! host until the holder's task runs) and only the holder reads from it. Every request on a
//! hosted connection ends with exactly one ReadyForQuery and leaves the connection idle with
//! the same settings, which is how replies are split and why nothing one request does can
//! reach the next.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BytesMut};
use shardgate_pool::{NodePool, PooledConn};
use shardgate_wire::{peek_header, tag, FrontendRef, DEFAULT_MAX_MESSAGE_LEN};
use tokio::io::AsyncReadExt;
use tokio::sync::{oneshot, Notify};

use super::flight::SERVER_MAX_MESSAGE;
use super::request::Scanned;
use super::session::reserve;

/// The most riders queued on one connection: a slow request delays every rider behind it, so
/// past this a request takes (or waits for) a connection of its own.
const MAX_RIDERS: usize = 16;

/// A server connection carrying riders, shared by its holder and the riders queued on it.
#[derive(Debug)]
pub(super) struct Host {
    /// The pool the connection belongs to (its address: one pool per node and user).
    pool: usize,
    /// The settings every request on the connection runs with.
    fingerprint: u64,
    state: Mutex<HostState>,
    /// Wakes the holder when riders queued bytes to send.
    wake: Notify,
}

#[derive(Debug, Default)]
struct HostState {
    /// Riders may still board.
    open: bool,
    /// Riders' requests, to be written by the holder in this order.
    outgoing: BytesMut,
    /// Each queued rider, in the order its request was queued, waiting for the connection.
    riders: VecDeque<oneshot::Sender<PooledConn>>,
    /// A cancel for a request on the connection may still be on its way to it: when the last
    /// rider is done, the connection is closed, not pooled (as without multiplexing).
    cancel_in_flight: bool,
    /// A request changed the connection's settings unseen: the riders were dropped for that
    /// (see `hand_over`), not for a lost connection.
    settings_changed: bool,
}

thread_local! {
    /// The open hosts of this worker thread, over every pool.
    static HOSTS: RefCell<Vec<Arc<Host>>> = const { RefCell::new(Vec::new()) };
}

fn lock(m: &Mutex<HostState>) -> MutexGuard<'_, HostState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn pool_id(pool: &Arc<NodePool>) -> usize {
    Arc::as_ptr(pool) as usize
}

/// Where a request that may ride goes, by `pick`.
pub(super) enum Pick {
    /// This worker already has `pool.multiplex` connections to the node hosting reads: ride on
    /// the one with the fewest riders.
    Ride(Arc<Host>),
    /// Take a connection of its own; if none is free, ride on this one rather than wait.
    Otherwise(Option<Arc<Host>>),
}

/// Picks a host on this worker for a request to `pool` from a session whose settings have
/// `fingerprint`, when `want` connections hosting reads are what the worker keeps before
/// requests ride.
pub(super) fn pick(pool: &Arc<NodePool>, fingerprint: u64, want: u32) -> Pick {
    let id = pool_id(pool);
    HOSTS.with(|hosts| {
        let hosts = hosts.borrow();
        let mut count = 0usize;
        let mut best: Option<(&Arc<Host>, usize)> = None;
        for h in hosts.iter().filter(|h| h.pool == id) {
            count += 1;
            if h.fingerprint != fingerprint {
                continue;
            }
            let state = lock(&h.state);
            let riders = state.riders.len();
            if state.open && riders < MAX_RIDERS && best.is_none_or(|(_, n)| riders < n) {
                best = Some((h, riders));
            }
        }
        let best = best.map(|(h, _)| Arc::clone(h));
        match best {
            Some(h) if count >= want as usize => Pick::Ride(h),
            other => Pick::Otherwise(other),
        }
    })
}

impl Host {
    /// Queues a rider's request (`bytes`, as it goes to the server). None if the host no
    /// longer takes riders. The receiver gets the connection once the request ahead ended.
    pub(super) fn board(&self, bytes: &[u8]) -> Option<oneshot::Receiver<PooledConn>> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = lock(&self.state);
            if !state.open || state.riders.len() >= MAX_RIDERS {
                return None;
            }
            state.outgoing.extend_from_slice(bytes);
            state.riders.push_back(tx);
        }
        self.wake.notify_one();
        Some(rx)
    }

    /// Moves the riders' bytes not yet written to the end of `to` (swapping the buffers when
    /// `to` is empty, as it is on the relay path, instead of copying). False if there were none.
    pub(super) fn take_outgoing(&self, to: &mut BytesMut) -> bool {
        let mut state = lock(&self.state);
        if state.outgoing.is_empty() {
            return false;
        }
        if to.is_empty() {
            std::mem::swap(&mut state.outgoing, to);
        } else {
            to.extend_from_slice(&state.outgoing);
            state.outgoing.clear();
        }
        true
    }

    /// Whether the riders were dropped because a request changed the connection's settings
    /// unseen (see `hand_over`).
    pub(super) fn settings_changed(&self) -> bool {
        lock(&self.state).settings_changed
    }

    /// Takes no more riders, fails those queued (their senders are dropped), and leaves this
    /// thread's list.
    fn close(self: &Arc<Self>) {
        let riders = {
            let mut state = lock(&self.state);
            state.open = false;
            state.outgoing.clear();
            std::mem::take(&mut state.riders)
        };
        drop(riders);
        HOSTS.with(|hosts| hosts.borrow_mut().retain(|h| !Arc::ptr_eq(h, self)));
    }
}

/// Resolves when riders queued bytes on `host` (never without one). Cancel safe.
pub(super) async fn riders_arrived(host: Option<&Arc<Host>>) {
    match host {
        Some(h) => h.wake.notified().await,
        None => std::future::pending().await,
    }
}

/// A holder's part in a host: while it is held, the host is open; dropped (the connection
/// lost, or its holder gone without `finish`), the host closes and its riders fail.
#[derive(Debug)]
pub(super) struct HostGuard(Option<Arc<Host>>);

impl HostGuard {
    /// Opens a host on a connection of `pool` that runs with settings `fingerprint`, on this
    /// worker thread.
    pub(super) fn open(pool: &Arc<NodePool>, fingerprint: u64) -> HostGuard {
        let host = Arc::new(Host {
            pool: pool_id(pool),
            fingerprint,
            state: Mutex::new(HostState {
                open: true,
                ..HostState::default()
            }),
            wake: Notify::new(),
        });
        HOSTS.with(|hosts| hosts.borrow_mut().push(Arc::clone(&host)));
        HostGuard(Some(host))
    }

    /// The guard of a rider that has been handed the connection of `host`.
    pub(super) fn adopt(host: Arc<Host>) -> HostGuard {
        HostGuard(Some(host))
    }

    pub(super) fn host(&self) -> Option<&Arc<Host>> {
        self.0.as_ref()
    }

    /// The holder is done with `conn` and `owed` replies of its own are still to come on it
    /// (0 when its ReadyForQuery was read; 1 when it left before). Hands the connection to
    /// the next rider, after reading past those replies, or gives it back when no rider is
    /// queued: to the pool, or closed when `close` (a cancel may still be on its way to it).
    pub(super) fn finish(mut self, conn: PooledConn, owed: u32, close: bool) {
        let Some(host) = self.0.take() else {
            return;
        };
        if close {
            lock(&host.state).cancel_in_flight = true;
        }
        if owed == 0 {
            if let Some(conn) = hand_over(&host, conn, close) {
                tokio::spawn(drain_then_hand_over(host, conn, 1, close));
            }
        } else {
            tracing::debug!(
                owed,
                "a session left with its request on a multiplexed connection; its reply is \
                 read past for the requests behind it"
            );
            tokio::spawn(drain_then_hand_over(host, conn, owed, close));
        }
    }
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        if let Some(host) = self.0.take() {
            host.close();
        }
    }
}

/// Gives `conn`, idle after the last reply it owed, to the next rider of `host`, or back to
/// its pool (closed if `close`) when there is none; the host then closes. `Some` when the next
/// rider had gone: one reply on the connection is then owed to nobody.
fn hand_over(host: &Arc<Host>, mut conn: PooledConn, close: bool) -> Option<PooledConn> {
    // Every request on it parsed its own unnamed statement: whose it holds now is nobody's
    // the sessions track.
    conn.unnamed_owner = 0;
    if conn.state_fingerprint != host.fingerprint {
        // The request just answered changed the connection's settings where no command showed
        // it (a function's set_config, seen in a ParameterStatus): the requests queued behind
        // it ran, or would run, under settings their sessions do not have. They fail (08006,
        // `ClientError::RideAbandoned`) rather than answer under another session's settings.
        tracing::warn!(
            "a request on a multiplexed connection changed its settings unseen; the requests \
             queued behind it fail and the connection is closed"
        );
        lock(&host.state).settings_changed = true;
        host.close();
        conn.discard();
        return None;
    }
    let (next, cancel_in_flight) = {
        let mut state = lock(&host.state);
        (state.riders.pop_front(), state.cancel_in_flight)
    };
    match next {
        Some(rider) => {
            let gone = rider.send(conn).err();
            if gone.is_some() {
                tracing::debug!("a rider left before its turn; its reply is read past");
            }
            gone
        }
        None => {
            host.close();
            if close || cancel_in_flight {
                conn.discard();
            } else {
                conn.release();
            }
            None
        }
    }
}

/// Reads past `owed` replies on `conn`, each ended by a ReadyForQuery, then hands it on. A
/// connection that fails meanwhile is closed, and with it the host: its riders fail.
async fn drain_then_hand_over(host: Arc<Host>, mut conn: PooledConn, mut owed: u32, close: bool) {
    loop {
        // Requests queued and not yet written were left to the holder, which is this task
        // now: the replies drained may be behind them.
        let mut pending = BytesMut::new();
        let sent = !host.take_outgoing(&mut pending)
            || tokio::io::AsyncWriteExt::write_all(&mut conn.stream, &pending)
                .await
                .is_ok();
        let drained = if sent {
            drain(&mut conn, owed).await
        } else {
            Drained::Failed
        };
        if drained == Drained::Failed {
            tracing::debug!("a multiplexed connection failed while replies were read past");
            conn.discard();
            host.close();
            return;
        }
        if drained == Drained::SettingsChanged {
            // Nobody read that reply's parameter changes: the connection's settings are
            // unknown (see `hand_over`).
            conn.state_fingerprint = 0;
        }
        match hand_over(&host, conn, close) {
            None => return,
            Some(back) => {
                conn = back;
                owed = 1;
            }
        }
    }
}

/// How reading past replies (`drain`) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    Done,
    /// Done, and a ParameterStatus went by: a setting of the connection changed.
    SettingsChanged,
    /// The connection failed or sent something unreadable.
    Failed,
}

/// Reads and drops server messages on `conn` until `owed` ReadyForQuery messages have gone by.
async fn drain(conn: &mut PooledConn, mut owed: u32) -> Drained {
    let conn = &mut **conn;
    let mut done = Drained::Done;
    while owed > 0 {
        match peek_header(&conn.rbuf, SERVER_MAX_MESSAGE) {
            Ok(Some(h)) if conn.rbuf.len() >= h.len => {
                conn.rbuf.advance(h.len);
                match h.tag {
                    b'Z' => owed -= 1,
                    b'S' => done = Drained::SettingsChanged,
                    _ => {}
                }
                continue;
            }
            Ok(_) => {}
            Err(_) => return Drained::Failed,
        }
        reserve(&mut conn.rbuf);
        match conn.stream.read_buf(&mut conn.rbuf).await {
            Ok(n) if n > 0 => {}
            _ => return Drained::Failed,
        }
    }
    done
}

/// Whether a buffered request may ride (or host riders): one whole request and nothing after
/// it, a lone read that opens, ends or changes nothing, by a session holding nothing. `sql` is
/// its text.
pub(super) fn may_ride(scanned: &Scanned, buf: &[u8], sql: &[u8]) -> bool {
    let v = &scanned.view;
    scanned.complete
        && scanned.executes
        // The one text it parses or queries (see `self_contained`) holds one statement.
        && scanned.class.as_ref().is_some_and(|c| c.statements == 1)
        && !v.write
        && v.parsed
        && v.hint.is_none()
        && v.begins.is_none()
        && !v.ends_transaction
        && !scanned.ends_transaction
        && scanned.first_txn.is_none()
        && scanned.pins.is_none()
        && !scanned.sticky
        && !scanned.copy_from
        && scanned.shardgate.is_none()
        && scanned.shardgate_extended.is_none()
        && scanned.shard_hint.is_none()
        && !scanned.lone_begin
        && starts_with_read_word(sql)
        && self_contained(buf)
}

/// Whether the first word of `sql` (after blanks) is one that starts a plain read.
fn starts_with_read_word(sql: &[u8]) -> bool {
    const WORDS: &[&[u8]] = &[b"select", b"values", b"table", b"show", b"with"];
    let start = sql
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(sql.len());
    let rest = &sql[start..];
    let end = rest
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    let word = &rest[..end];
    WORDS.iter().any(|w| word.eq_ignore_ascii_case(w))
}

/// Whether `buf` is exactly one request that depends on nothing a connection holds: one
/// simple Query, or one unnamed Parse with its Bind (unnamed portal), Describe, Execute and
/// Sync.
fn self_contained(buf: &[u8]) -> bool {
    let mut pos = 0;
    let mut parsed = false;
    let mut executed = false;
    while let Ok(Some(h)) = peek_header(&buf[pos..], DEFAULT_MAX_MESSAGE_LEN) {
        if buf.len() - pos < h.len {
            return false;
        }
        let body = &buf[pos + 5..pos + h.len];
        let last = pos + h.len == buf.len();
        let ok = match FrontendRef::decode(h.tag, body) {
            Ok(FrontendRef::Query { .. }) => pos == 0 && last,
            Ok(FrontendRef::Parse(p)) => !parsed && !executed && p.name.is_empty(),
            Ok(FrontendRef::Bind(b)) => parsed && b.statement.is_empty() && b.portal.is_empty(),
            Ok(FrontendRef::Describe { name, .. }) => parsed && name.is_empty(),
            Ok(FrontendRef::Execute { portal, .. }) => {
                let ok = parsed && !executed && portal.is_empty();
                executed = true;
                ok
            }
            Ok(FrontendRef::Sync) => return parsed && executed && last,
            _ => false,
        };
        if !ok {
            return false;
        }
        if h.tag == tag::PARSE {
            parsed = true;
        }
        if h.tag == b'Q' {
            return true;
        }
        pos += h.len;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_wire::frontend;

    #[test]
    fn only_self_contained_requests_ride() {
        let mut q = BytesMut::new();
        frontend::query(b"SELECT 1", &mut q);
        assert!(self_contained(&q));
        let mut two = q.clone();
        frontend::query(b"SELECT 2", &mut two);
        assert!(!self_contained(&two));

        let mut ext = BytesMut::new();
        frontend::parse(b"", b"SELECT $1", &[23], &mut ext);
        frontend::bind(b"", b"", &[], &[Some(b"1".as_slice())], &[], &mut ext);
        frontend::describe(b'P', b"", &mut ext);
        frontend::execute(b"", 0, &mut ext);
        frontend::sync(&mut ext);
        assert!(self_contained(&ext));
        // Nothing may follow the Sync.
        let mut more = ext.clone();
        frontend::sync(&mut more);
        assert!(!self_contained(&more));

        // A named statement, or the unnamed one parsed earlier, lives on one connection.
        let mut named = BytesMut::new();
        frontend::parse(b"s1", b"SELECT 1", &[], &mut named);
        frontend::bind(b"", b"s1", &[], &[], &[], &mut named);
        frontend::execute(b"", 0, &mut named);
        frontend::sync(&mut named);
        assert!(!self_contained(&named));
        let mut bound = BytesMut::new();
        frontend::bind(b"", b"", &[], &[], &[], &mut bound);
        frontend::execute(b"", 0, &mut bound);
        frontend::sync(&mut bound);
        assert!(!self_contained(&bound));
        // Unsynced: its end is not in the buffer.
        let mut flushed = BytesMut::new();
        frontend::parse(b"", b"SELECT 1", &[], &mut flushed);
        frontend::flush(&mut flushed);
        assert!(!self_contained(&flushed));
    }

    fn pool() -> Arc<NodePool> {
        NodePool::new(
            shardgate_config::NodeAddr {
                host: "127.0.0.1".into(),
                port: 5432,
            },
            shardgate_pool::Credentials {
                user: "app".into(),
                password: "pw".into(),
                database: "app".into(),
            },
            4,
        )
    }

    fn rides_on(pick: Pick) -> Option<Arc<Host>> {
        match pick {
            Pick::Ride(h) => Some(h),
            Pick::Otherwise(_) => None,
        }
    }

    #[test]
    fn requests_ride_once_the_worker_hosts_enough_and_only_with_equal_settings() {
        let (a, b) = (pool(), pool());
        let first = HostGuard::open(&a, 7);
        assert!(rides_on(pick(&a, 7, 2)).is_none(), "one host of two wanted");
        assert!(matches!(pick(&a, 7, 2), Pick::Otherwise(Some(_))));
        let second = HostGuard::open(&a, 7);
        let host = rides_on(pick(&a, 7, 2)).expect("two hosts: ride");
        // Other settings, or another pool (node or user): never.
        assert!(matches!(pick(&a, 8, 2), Pick::Otherwise(None)));
        assert!(matches!(pick(&b, 7, 1), Pick::Otherwise(None)));
        // The least loaded host is picked; a full one is not.
        let mut queued = Vec::new();
        for _ in 0..MAX_RIDERS {
            queued.push(host.board(b"Q").expect("room"));
        }
        assert!(host.board(b"Q").is_none(), "full");
        let other = rides_on(pick(&a, 7, 2)).expect("the other host");
        assert!(!Arc::ptr_eq(&other, &host));
        let mut bytes = BytesMut::new();
        assert!(host.take_outgoing(&mut bytes));
        assert_eq!(bytes.len(), MAX_RIDERS);
        // A host whose holder is gone fails its riders and is never picked again.
        drop(second);
        drop(first);
        assert!(matches!(pick(&a, 7, 1), Pick::Otherwise(None)));
        for mut rx in queued {
            assert!(rx.try_recv().is_err());
        }
    }

    #[test]
    fn read_words() {
        assert!(starts_with_read_word(b"  select 1"));
        assert!(starts_with_read_word(
            b"WITH x AS (SELECT 1) SELECT * FROM x"
        ));
        assert!(!starts_with_read_word(b"/* c */ SELECT 1"));
        assert!(!starts_with_read_word(b"SET x = 1"));
        assert!(!starts_with_read_word(b"selectx"));
        assert!(!starts_with_read_word(b""));
    }
}
