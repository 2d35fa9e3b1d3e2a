//! Cancel requests: each client gets its own BackendKeyData; a CancelRequest carrying
//! it is forwarded to the server connections running that client's query (one, or one per
//! shard for a request that runs on several), and to nothing else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use shardgate_config::NodeAddr;
use shardgate_pool::{BackendKey, Credentials};
use shardgate_wire::StartupRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a forwarded cancel is waited for (the postmaster closing its connection).
const CANCEL_DELIVERY: Duration = Duration::from_secs(5);

/// How long after a request was written to its server connection a cancel for it is held back.
/// PostgreSQL drops a cancel that arrives before the backend has read the message that runs
/// the query (it checks for one after reading each message, and drops it while reading): for
/// the extended protocol that is until it has parsed and bound the statement. A client's cancel
/// lands there when its request waited for a pool slot and got one just as the cancel was sent
/// (a query timeout firing in a busy pool): without this, about one such cancel in 200 was
/// lost under load.
const ARRIVAL_GRACE: Duration = Duration::from_millis(5);

/// Where a client's query currently runs, if anywhere, and whether a cancel came for a
/// request that has not reached a server yet.
#[derive(Debug, Default)]
pub(crate) struct CancelSlot {
    state: Mutex<SlotState>,
    /// Wakes a request still waiting for a server connection: that is where its
    /// query "runs" while the pool is busy.
    waiting: tokio::sync::Notify,
    /// The request `start_on` took the target for has not been written to it yet: a cancel
    /// forwarded now could reach the server before the query and be dropped there, as an
    /// idle backend drops one. Such a cancel waits (on `sent`) until `mark_sent`.
    unsent: AtomicBool,
    sent: tokio::sync::Notify,
    /// Cancels on their way to the server connections in `targets` (counted under its lock).
    in_flight: AtomicU32,
}

/// A server connection a cancel goes to: its node and its backend's key.
pub(crate) type CancelTargetConn = (Arc<NodeAddr>, BackendKey);

#[derive(Debug, Default)]
struct SlotState {
    /// Every server connection the client's query runs on: one, or one per shard leg of a
    /// request that runs on several at once (each gets its own CancelRequest).
    targets: Vec<CancelTargetConn>,
    /// A cancel arrived while no query of this client ran on a server. Kept, not just
    /// signalled, so that a request between its checkout and `start_on` still sees it;
    /// `begin_request` drops it, as PostgreSQL drops a cancel that finds its backend idle.
    cancel_pending: bool,
    /// Counts the client's requests (`begin_request`): a cancel held back for one request is
    /// dropped once the next starts, as it would have arrived while the first ran.
    generation: u64,
    /// When the request `start_on` was for was written to the server (see `ARRIVAL_GRACE`).
    written_at: Option<std::time::Instant>,
    /// The one target is a multiplexed connection, with other clients' requests queued behind
    /// the query: a cancel goes by `pg_cancel_backend` from a connection logged in with these
    /// credentials, which signals the backend once (see `cancel_by_sql`).
    hosted: Option<Credentials>,
}

/// The request was cancelled before it reached a server: answer it with 57014.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CancelledBeforeStart;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CancelSlot {
    pub(crate) fn set(&self, addr: &Arc<NodeAddr>, key: BackendKey) {
        let mut state = lock(&self.state);
        state.targets.clear();
        state.targets.push((Arc::clone(addr), key));
        state.written_at = None;
        state.hosted = None;
        self.unsent.store(false, Ordering::Release);
    }

    /// A new request from the client starts routing: a cancel that arrived before it (the
    /// client was idle, or between requests) is stale and must not stop it.
    pub(crate) fn begin_request(&self) {
        let mut state = lock(&self.state);
        state.cancel_pending = false;
        state.generation = state.generation.wrapping_add(1);
    }

    /// Whether a cancel arrived for the current request since `begin_request`.
    pub(crate) fn cancel_pending(&self) -> bool {
        lock(&self.state).cancel_pending
    }

    /// Resolves once a cancel arrives for the current request (at once if one already has).
    /// Cancel safe.
    pub(crate) async fn cancel_requested(&self) {
        loop {
            let notified = self.waiting.notified();
            tokio::pin!(notified);
            // Registered before the flag is read: a cancel setting it after the read wakes us.
            notified.as_mut().enable();
            if self.cancel_pending() {
                return;
            }
            notified.await;
        }
    }

    /// The request's query is about to be sent on this server connection: from now on a
    /// cancel goes there (once `mark_sent` says the query is on its way). Refused if a cancel
    /// already came for the request, in the same lock the canceller takes, so that every
    /// cancel either sees the target or is seen here.
    pub(crate) fn start_on(
        &self,
        addr: &Arc<NodeAddr>,
        key: BackendKey,
    ) -> Result<(), CancelledBeforeStart> {
        self.start_on_all(std::iter::once((Arc::clone(addr), key)))
    }

    /// The request is about to take the server connections it runs on (several shards'): until
    /// `start_on_all`, a cancel finds no query on a server and is kept for it, as one arriving
    /// before a single connection's `start_on` is. Inside a transaction this takes the target
    /// away from the transaction's current connection, where the request may not run at all:
    /// whoever gives the legs back sets it again (`set`, or `clear` outside a transaction).
    pub(crate) fn begin_legs(&self) {
        let mut state = lock(&self.state);
        state.targets.clear();
        state.written_at = None;
        state.hosted = None;
        self.unsent.store(false, Ordering::Release);
    }

    /// `start_on` for a request that runs on several server connections at once: a cancel
    /// from now on goes to every one of them (once `mark_sent` says the request is written to
    /// all). Refused, with no target taken, if a cancel already came for the request.
    pub(crate) fn start_on_all(
        &self,
        legs: impl IntoIterator<Item = CancelTargetConn>,
    ) -> Result<(), CancelledBeforeStart> {
        let mut state = lock(&self.state);
        if state.cancel_pending {
            return Err(CancelledBeforeStart);
        }
        state.targets.clear();
        state.targets.extend(legs);
        state.written_at = None;
        state.hosted = None;
        self.unsent.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether a cancel is still on its way to a server connection of this client (which must
    /// then be closed rather than pooled). Unlike `clear`, the targets stay.
    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// The request `start_on` was for has been written to its server connection: a cancel
    /// may go there now. Cheap when there is nothing to do (every write calls it).
    pub(crate) fn mark_sent(&self) {
        if self.unsent.load(Ordering::Acquire) && self.unsent.swap(false, Ordering::AcqRel) {
            lock(&self.state).written_at = Some(std::time::Instant::now());
            self.sent.notify_waiters();
        }
    }

    /// The query's one server connection carries other clients' requests behind it
    /// (multiplexing): a cancel for it signals the backend once, from a connection logged in
    /// with `creds`, so that it cannot stop the next request too (until `set`, `start_on` or
    /// `clear` says otherwise).
    pub(crate) fn set_hosted(&self, creds: &Credentials) {
        let mut state = lock(&self.state);
        if state.targets.len() == 1 {
            state.hosted = Some(creds.clone());
        }
    }

    /// The client's query no longer runs on a server. True if a cancel for it may still be
    /// on its way to that server connection: the connection must then be closed, not handed
    /// to another client, whose query the late cancel would stop.
    pub(crate) fn clear(&self) -> bool {
        let mut state = lock(&self.state);
        state.targets.clear();
        state.written_at = None;
        state.hosted = None;
        if self.unsent.swap(false, Ordering::AcqRel) {
            // A cancel waiting for the write finds no query now, as PostgreSQL's would.
            self.sent.notify_waiters();
        }
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Where a cancel for the client goes now. `arrived` is the request generation it arrived
    /// in (taken on the first call). `force` sends it even to a server connection its query
    /// has not been written to yet, or only just (after waiting for that too long).
    fn take_cancel(&self, arrived: &mut Option<u64>, force: bool) -> CancelTarget {
        let mut state = lock(&self.state);
        if *arrived.get_or_insert(state.generation) != state.generation {
            return CancelTarget::Over;
        }
        if state.targets.is_empty() {
            state.cancel_pending = true;
            return CancelTarget::Kept;
        }
        if !force && self.unsent.load(Ordering::Acquire) {
            return CancelTarget::Wait(None);
        }
        let since = state.written_at.map(|t| t.elapsed());
        if let Some(since) = since.filter(|s| !force && *s < ARRIVAL_GRACE) {
            return CancelTarget::Wait(Some(ARRIVAL_GRACE.saturating_sub(since)));
        }
        // One count for all the targets: `clear` then says every leg must be closed.
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        CancelTarget::Server(state.targets.clone(), state.hosted.clone())
    }
}

/// What a cancel does, decided under the slot's lock.
#[derive(Debug)]
enum CancelTarget {
    /// Forwarded to every server connection running the client's query (counted in flight
    /// once, until every one is delivered).
    /// With credentials: the one target is a multiplexed connection (see `set_hosted`).
    Server(Vec<CancelTargetConn>, Option<Credentials>),
    /// No query on a server: kept for a request that has not reached one (dropped by the
    /// client's next request, see `CancelSlot::begin_request`).
    Kept,
    /// A server connection is taken but the query not yet written to it (None: until it is),
    /// or written only just (for this long more, see `ARRIVAL_GRACE`).
    Wait(Option<Duration>),
    /// The request it arrived for is over (the client has started another): dropped.
    Over,
}

/// All live clients' keys.
#[derive(Debug)]
pub(crate) struct CancelRegistry {
    next_pid: AtomicI32,
    clients: Mutex<HashMap<i32, (i32, Arc<CancelSlot>)>>,
}

/// Removes a client's key when its session ends.
#[derive(Debug)]
pub(crate) struct Registration {
    pub(crate) key: BackendKey,
    pub(crate) slot: Arc<CancelSlot>,
    registry: Arc<CancelRegistry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.registry.clients).remove(&self.key.pid);
    }
}

impl CancelRegistry {
    pub(crate) fn new() -> Arc<CancelRegistry> {
        Arc::new(CancelRegistry {
            next_pid: AtomicI32::new(1),
            clients: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn register(self: &Arc<Self>) -> Registration {
        // Wraps after 2^31 clients; a collision with a still-live pid is skipped.
        let slot = Arc::new(CancelSlot::default());
        let secret: i32 = rand::random();
        let mut clients = lock(&self.clients);
        let pid = loop {
            let pid = self.next_pid.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff;
            if pid != 0 && !clients.contains_key(&pid) {
                break pid;
            }
        };
        clients.insert(pid, (secret, slot.clone()));
        Registration {
            key: BackendKey { pid, secret },
            slot,
            registry: self.clone(),
        }
    }

    /// Forwards a client's CancelRequest. Unknown keys are ignored silently, as
    /// PostgreSQL does. Not cancel safe in a meaningful way; run it in its own task.
    pub(crate) async fn cancel(&self, pid: i32, secret: i32) {
        let slot = match lock(&self.clients).get(&pid) {
            Some((s, slot)) if *s == secret => slot.clone(),
            _ => return,
        };
        let deadline = tokio::time::Instant::now() + CANCEL_DELIVERY;
        let mut force = false;
        let mut arrived = None;
        let (targets, hosted) = loop {
            let sent = slot.sent.notified();
            tokio::pin!(sent);
            // Registered before the slot is read: a write marked after the read wakes us.
            sent.as_mut().enable();
            match slot.take_cancel(&mut arrived, force) {
                CancelTarget::Server(targets, hosted) => break (targets, hosted),
                CancelTarget::Kept => {
                    // A request waiting for a pool slot, or one between its checkout and
                    // `start_on`, finds the cancel kept and fails with 57014.
                    slot.waiting.notify_waiters();
                    tracing::debug!(pid, "cancel request with no query on a server");
                    return;
                }
                CancelTarget::Over => return,
                CancelTarget::Wait(None) => {
                    force = tokio::time::timeout_at(deadline, sent).await.is_err();
                }
                CancelTarget::Wait(Some(hold)) => {
                    // Then forwarded if the request still runs; if it ended, nothing is.
                    let until = deadline.min(tokio::time::Instant::now() + hold);
                    let _ = tokio::time::timeout_at(until, sent).await;
                    force = tokio::time::Instant::now() >= deadline;
                }
            }
        };
        // Every leg at once: each shard's backend stops as soon as its own cancel lands.
        let mut deliveries = tokio::task::JoinSet::new();
        for (addr, key) in targets {
            match &hosted {
                Some(creds) => deliveries.spawn(cancel_by_sql(addr, key, creds.clone())),
                None => deliveries.spawn(forward(addr, key)),
            };
        }
        while deliveries.join_next().await.is_some() {}
        slot.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Cancels the query of backend `key` on `addr` with one signal: `pg_cancel_backend` run
/// from a new connection logged in with `creds` (the pool's user, whose backends it may
/// signal). A CancelRequest makes the postmaster signal the backend twice (the process, then
/// its process group); when the first has already ended the query, the second stops whatever
/// the backend runs next, which on a multiplexed connection is another client's request,
/// already waiting in its socket. Falls back to a CancelRequest if that fails.
async fn cancel_by_sql(addr: Arc<NodeAddr>, key: BackendKey, creds: Credentials) {
    let sql = format!("SELECT pg_cancel_backend({})", key.pid);
    let done = match shardgate_pool::ServerConn::connect(&addr, &creds, CANCEL_DELIVERY, 0).await {
        Ok(mut conn) => tokio::time::timeout(CANCEL_DELIVERY, conn.run_discarding(&sql))
            .await
            .is_ok_and(|r| r.is_ok()),
        Err(_) => false,
    };
    if !done {
        tracing::warn!(node = %addr, "cancelling by pg_cancel_backend failed; sending a CancelRequest");
        forward(addr, key).await;
    }
}

/// Sends one CancelRequest for backend `key` on `addr` and waits until the postmaster has
/// acted on it (or `CANCEL_DELIVERY` passed).
async fn forward(addr: Arc<NodeAddr>, key: BackendKey) {
    let mut buf = BytesMut::with_capacity(16);
    StartupRequest::Cancel {
        pid: key.pid,
        secret: key.secret,
    }
    .encode(&mut buf);
    match shardgate_pool::BackendStream::connect(&addr).await {
        Ok(mut s) => {
            if let Err(e) = s.write_all(&buf).await {
                tracing::warn!(node = %addr, error = %e, "forwarding cancel request failed");
            } else {
                // The postmaster signals the backend, then closes the connection: until
                // then the cancel may still land on whatever the backend runs next.
                let mut byte = [0u8; 1];
                let _ = tokio::time::timeout(CANCEL_DELIVERY, s.read(&mut byte)).await;
            }
        }
        Err(e) => tracing::warn!(node = %addr, error = %e, "forwarding cancel request failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> (Arc<NodeAddr>, BackendKey) {
        let addr = Arc::new(NodeAddr {
            host: "127.0.0.1".into(),
            port: 5432,
        });
        (addr, BackendKey { pid: 7, secret: 9 })
    }

    #[test]
    fn a_cancel_before_the_query_starts_is_kept_for_it() {
        let slot = CancelSlot::default();
        let (addr, key) = server();
        slot.begin_request();
        assert!(matches!(
            slot.take_cancel(&mut None, false),
            CancelTarget::Kept
        ));
        assert!(slot.cancel_pending());
        assert_eq!(slot.start_on(&addr, key), Err(CancelledBeforeStart));
    }

    #[test]
    fn a_cancel_sent_while_idle_does_not_stop_the_next_request() {
        let slot = CancelSlot::default();
        let (addr, key) = server();
        assert!(matches!(
            slot.take_cancel(&mut None, false),
            CancelTarget::Kept
        ));
        slot.begin_request();
        assert!(!slot.cancel_pending());
        assert_eq!(slot.start_on(&addr, key), Ok(()));
    }

    #[test]
    fn a_cancel_waits_until_the_query_is_written() {
        let slot = CancelSlot::default();
        let (addr, key) = server();
        slot.begin_request();
        assert_eq!(slot.start_on(&addr, key), Ok(()));
        assert!(matches!(
            slot.take_cancel(&mut None, false),
            CancelTarget::Wait(None)
        ));
        slot.mark_sent();
        assert!(matches!(
            slot.take_cancel(&mut None, false),
            CancelTarget::Wait(Some(d)) if d <= ARRIVAL_GRACE
        ));
        match slot.take_cancel(&mut None, true) {
            CancelTarget::Server(targets, None) => assert_eq!(targets, vec![(addr, key)]),
            other => panic!("{other:?}"),
        }
        // Counted in flight: the connection must not go to another client.
        assert!(slot.clear());
    }

    #[test]
    fn a_cancel_waiting_for_the_write_finds_no_query_once_it_ended() {
        let slot = CancelSlot::default();
        let (addr, key) = server();
        slot.begin_request();
        assert_eq!(slot.start_on(&addr, key), Ok(()));
        assert!(!slot.clear());
        assert!(matches!(
            slot.take_cancel(&mut None, false),
            CancelTarget::Kept
        ));
    }

    #[test]
    fn a_held_back_cancel_is_dropped_once_the_next_request_starts() {
        let slot = CancelSlot::default();
        let (addr, key) = server();
        slot.begin_request();
        assert_eq!(slot.start_on(&addr, key), Ok(()));
        slot.mark_sent();
        let mut arrived = None;
        assert!(matches!(
            slot.take_cancel(&mut arrived, false),
            CancelTarget::Wait(Some(_))
        ));
        assert!(!slot.clear());
        slot.begin_request();
        assert_eq!(slot.start_on(&addr, key), Ok(()));
        slot.mark_sent();
        assert!(matches!(
            slot.take_cancel(&mut arrived, true),
            CancelTarget::Over
        ));
        assert!(!slot.clear(), "nothing was forwarded");
    }

    #[tokio::test]
    async fn a_waiting_request_is_woken_by_a_cancel() {
        let slot = Arc::new(CancelSlot::default());
        slot.begin_request();
        let waiter = tokio::spawn({
            let slot = slot.clone();
            async move { slot.cancel_requested().await }
        });
        tokio::task::yield_now().await;
        assert!(matches!(
            slot.take_cancel(&mut None, false),
            CancelTarget::Kept
        ));
        slot.waiting.notify_waiters();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("join");
    }

    #[test]
    fn a_cancel_goes_to_every_leg_and_keeps_them_all_from_the_pool() {
        let slot = CancelSlot::default();
        let (addr, key) = server();
        let other = BackendKey { pid: 8, secret: 10 };
        slot.begin_request();
        slot.begin_legs();
        assert_eq!(
            slot.start_on_all([(addr.clone(), key), (addr.clone(), other)]),
            Ok(())
        );
        assert!(matches!(
            slot.take_cancel(&mut None, false),
            CancelTarget::Wait(None)
        ));
        slot.mark_sent();
        match slot.take_cancel(&mut None, true) {
            CancelTarget::Server(targets, None) => {
                assert_eq!(targets, vec![(addr.clone(), key), (addr, other)]);
            }
            other => panic!("{other:?}"),
        }
        assert!(slot.in_flight());
        assert!(slot.clear(), "every leg must be closed");
    }

    #[test]
    fn a_cancel_while_the_legs_are_taken_is_kept_for_them() {
        let slot = CancelSlot::default();
        let (addr, key) = server();
        // Inside a transaction: the current connection is the target between requests.
        slot.set(&addr, key);
        slot.begin_legs();
        assert!(matches!(
            slot.take_cancel(&mut None, false),
            CancelTarget::Kept
        ));
        assert_eq!(
            slot.start_on_all([(addr.clone(), key)]),
            Err(CancelledBeforeStart)
        );
        assert!(!slot.in_flight(), "nothing was forwarded");
    }
}
