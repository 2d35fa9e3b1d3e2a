//! The pool for one (node, user) pair: a bounded set of logged-in server connections,
//! LIFO reuse, checkout with a deadline, and reconnect backoff after failures.

use std::sync::atomic::{
    fence, AtomicBool, AtomicIsize, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shardgate_config::NodeAddr;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::conn::{Credentials, ServerConn};
use crate::error::{BackendError, PoolError};

const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// ParameterStatus name/value pairs a server reported at startup.
pub type ServerParams = Arc<Vec<(String, String)>>;

/// Connection counts, read by metrics.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Open server connections (idle plus checked out).
    pub open: AtomicUsize,
    /// Successful connects and failed connect attempts, for metrics.
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
}

#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
    last_error: String,
}

/// How long a checkout waits for a slot of its own lane before it takes a free one from
/// another lane (and then how often it looks again). Taking one moves a connection between
/// threads, which costs system calls and a cross-thread wake-up; waiting this long first
/// keeps lanes stable under an even load, where their own slots come back within a query.
/// Longer than [`HEARTBEAT`], so that arming it does not wake the thread's reactor.
const STEAL_AFTER: Duration = Duration::from_millis(50);

/// The period of a timer each worker runtime should keep running (see
/// [`crate::heartbeat`]). tokio wakes a parked reactor through its eventfd whenever a
/// timer is armed that expires before every other timer; with this one always due within
/// the period, arming a checkout's timeout or [`STEAL_AFTER`] costs no system call.
pub const HEARTBEAT: Duration = Duration::from_millis(25);

/// One worker thread's share of a pool: free slots and idle connections registered with
/// that worker's reactor (see [`crate::bind_thread`]). Aligned to its own cache lines: each
/// checkout and release locks its lane's idle stack, and lanes side by side in one line would
/// make worker threads on different cores contend for it anyway.
#[derive(Debug)]
#[repr(align(128))]
struct Lane {
    permits: Arc<Semaphore>,
    /// Boxed, so that checkout and release move a pointer, not the connection (callgrind
    /// counted nine ~200-byte copies per transaction before).
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<ServerConn>>>,
    /// Slots that belong to this lane, free or in use.
    slots: AtomicUsize,
    /// Checkouts of this lane waiting for a slot. When the lane has no slots at all, a
    /// release on another lane that nobody there waits for hands its slot over.
    waiting: AtomicUsize,
    /// Checkouts made on this lane's thread minus connections given back (released or
    /// dropped) on it. Summed over lanes, the connections in use; one lane's share may go
    /// negative when a connection is given back on another thread.
    active: AtomicIsize,
}

/// Server connections to one node, logged in as one user.
///
/// The `size` slots are spread over one lane per worker thread. A checkout takes a slot of
/// its own lane; one of another lane only when its lane has none, or after waiting
/// [`STEAL_AFTER`]. It takes an idle connection of its own lane, else opens one if the node
/// has room, else takes another lane's. A release keeps slot and connection on the
/// releasing thread's lane, unless a lane without slots is waiting and this one is not: then
/// both move there. So capacity follows demand, and under an even load no connection
/// changes thread.
#[derive(Debug)]
pub struct NodePool {
    addr: Arc<NodeAddr>,
    creds: Credentials,
    size: AtomicU32,
    /// The node left the topology: connections close instead of returning.
    retired: AtomicBool,
    lanes: Box<[Lane]>,
    /// Slots a shrink has yet to remove: the next releases close their connection and keep
    /// the slot.
    debt: AtomicU32,
    backoff: Mutex<Backoff>,
    server_params: Mutex<Option<ServerParams>>,
    next_id: AtomicU64,
    pub stats: PoolStats,
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical
/// section here is a single push/pop/assignment).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl NodePool {
    /// A pool with one lane.
    pub fn new(addr: NodeAddr, creds: Credentials, size: u32) -> Arc<NodePool> {
        NodePool::with_lanes(addr, creds, size, 1)
    }

    /// A pool whose `size` slots start spread evenly over `lanes` lanes (one per worker).
    pub fn with_lanes(
        addr: NodeAddr,
        creds: Credentials,
        size: u32,
        lanes: usize,
    ) -> Arc<NodePool> {
        let n = lanes.max(1);
        let lanes = (0..n)
            .map(|i| {
                let share = size as usize / n + usize::from(i < size as usize % n);
                Lane {
                    permits: Arc::new(Semaphore::new(share)),
                    idle: Mutex::new(Vec::with_capacity(share)),
                    slots: AtomicUsize::new(share),
                    waiting: AtomicUsize::new(0),
                    active: AtomicIsize::new(0),
                }
            })
            .collect();
        Arc::new(NodePool {
            addr: Arc::new(addr),
            creds,
            size: AtomicU32::new(size),
            retired: AtomicBool::new(false),
            lanes,
            debt: AtomicU32::new(0),
            backoff: Mutex::new(Backoff::default()),
            server_params: Mutex::new(None),
            next_id: AtomicU64::new(1),
            stats: PoolStats::default(),
        })
    }

    pub fn addr(&self) -> &Arc<NodeAddr> {
        &self.addr
    }

    pub fn size(&self) -> u32 {
        self.size.load(Ordering::Relaxed)
    }

    /// The credentials this pool logs in with (a reload reuses a pool only when they match).
    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// How many lanes (worker threads) the pool was built for.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// The calling thread's lane.
    fn my_lane(&self) -> usize {
        crate::lane::here().0 % self.lanes.len()
    }

    /// Changes the number of server connections, keeping the open ones. Growing takes
    /// effect at once; shrinking takes free slots at once and the rest as connections in
    /// use come back.
    pub fn resize(&self, new_size: u32) {
        let old = self.size.swap(new_size, Ordering::AcqRel);
        if new_size > old {
            let mut grow = new_size - old;
            while grow > 0 && self.pay_debt() {
                grow -= 1;
            }
            for i in 0..grow as usize {
                let lane = &self.lanes[i % self.lanes.len()];
                lane.slots.fetch_add(1, Ordering::AcqRel);
                lane.permits.add_permits(1);
            }
            for i in 0..self.lanes.len() {
                self.hand_to_waiting(i);
            }
        } else if new_size < old {
            self.debt.fetch_add(old - new_size, Ordering::AcqRel);
            for lane in self.lanes.iter() {
                while let Ok(permit) = lane.permits.try_acquire() {
                    if !self.pay_debt() {
                        break;
                    }
                    permit.forget();
                    lane.slots.fetch_sub(1, Ordering::AcqRel);
                }
            }
            self.trim_idle();
        }
    }

    /// Takes one slot off the shrink debt, if any is owed.
    fn pay_debt(&self) -> bool {
        self.debt.load(Ordering::Acquire) > 0
            && self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
                .is_ok()
    }

    /// Closes idle connections beyond the pool size.
    fn trim_idle(&self) {
        let size = self.size() as usize;
        for lane in self.lanes.iter() {
            let mut idle = lock(&lane.idle);
            let open = self.stats.open.load(Ordering::Relaxed);
            let excess = open.saturating_sub(size).min(idle.len());
            idle.drain(..excess);
            self.stats.open.fetch_sub(excess, Ordering::Relaxed);
        }
    }

    /// The node left the topology: close what is idle, and close the rest as it is
    /// released. Returns how many connections are still in use.
    pub fn retire(&self) -> usize {
        self.retired.store(true, Ordering::Release);
        self.close_idle();
        self.active()
    }

    /// Why the last attempt to connect failed, while no connect has succeeded since. This is
    /// all a pool knows of its server's health: it connects only when a checkout finds no
    /// idle connection, so a server that went down is seen only at the next such attempt.
    pub fn connect_failure(&self) -> Option<String> {
        let backoff = lock(&self.backoff);
        (backoff.failures > 0).then(|| backoff.last_error.clone())
    }

    /// Connections checked out by clients now.
    pub fn active(&self) -> usize {
        let sum: isize = self
            .lanes
            .iter()
            .map(|l| l.active.load(Ordering::Relaxed))
            .sum();
        sum.max(0) as usize
    }

    /// Counts a connection checked out (+1) or given back (-1) on the calling thread's lane.
    fn count_active(&self, delta: isize) {
        self.lanes[self.my_lane()]
            .active
            .fetch_add(delta, Ordering::Relaxed);
    }

    pub fn user(&self) -> &str {
        &self.creds.user
    }

    pub fn idle_count(&self) -> usize {
        self.lanes.iter().map(|l| lock(&l.idle).len()).sum()
    }

    /// A free slot without waiting: of lane `me`, or also of the other lanes when `steal`.
    fn try_slot(self: &Arc<Self>, me: usize, steal: bool) -> Result<Option<Slot>, PoolError> {
        let lanes = self.lanes.len();
        for i in 0..if steal { lanes } else { 1 } {
            let lane = (me + i) % lanes;
            match self.lanes[lane].permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    return Ok(Some(Slot {
                        pool: self.clone(),
                        lane,
                        permit: Some(permit),
                    }))
                }
                Err(TryAcquireError::NoPermits) => {}
                Err(TryAcquireError::Closed) => {
                    return Err(PoolError::Closed {
                        addr: self.addr.clone(),
                    })
                }
            }
        }
        Ok(None)
    }

    /// Waits at most `timeout` for a slot: on this lane's semaphore (where releases on other
    /// lanes hand slots over when this lane has none), looking at the other lanes' free
    /// slots every [`STEAL_AFTER`].
    async fn wait_slot(self: &Arc<Self>, me: usize, timeout: Duration) -> Result<Slot, PoolError> {
        let timed_out = || PoolError::Timeout {
            addr: self.addr.clone(),
            waited_ms: timeout.as_millis() as u64,
            size: self.size(),
        };
        let lane = &self.lanes[me];
        lane.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Counted(&lane.waiting);
        // Pairs with the fence in `hand_to_waiting`: either that release sees this waiter,
        // or this scan sees its slot.
        fence(Ordering::SeqCst);
        let starved = lane.slots.load(Ordering::Acquire) == 0;
        if let Some(slot) = self.try_slot(me, starved)? {
            return Ok(slot);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let acquire = lane.permits.clone().acquire_owned();
        tokio::pin!(acquire);
        loop {
            let wake = if self.lanes.len() > 1 {
                deadline.min(tokio::time::Instant::now() + STEAL_AFTER)
            } else {
                deadline
            };
            tokio::select! {
                acquired = &mut acquire => {
                    return match acquired {
                        Ok(permit) => Ok(Slot { pool: self.clone(), lane: me, permit: Some(permit) }),
                        Err(_) => Err(PoolError::Closed { addr: self.addr.clone() }),
                    };
                }
                _ = tokio::time::sleep_until(wake) => {
                    if let Some(slot) = self.try_slot(me, true)? {
                        return Ok(slot);
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(timed_out());
                    }
                }
            }
        }
    }

    /// Takes a connection, waiting at most `timeout` for a free slot. Cancel safe: a
    /// dropped future releases its slot.
    pub async fn checkout(self: &Arc<Self>, timeout: Duration) -> Result<PooledConn, PoolError> {
        let me = self.my_lane();
        let starved = self.lanes[me].slots.load(Ordering::Acquire) == 0;
        let slot = match self.try_slot(me, starved)? {
            Some(slot) => slot,
            None => self.wait_slot(me, timeout).await?,
        };
        let deadline = Instant::now() + timeout;
        let mut slot = slot;
        loop {
            slot = match self.take_idle(slot, false) {
                Ok(pooled) => return Ok(pooled),
                Err(slot) => slot,
            };
            if let Some(reserved) = self.reserve_open() {
                let conn = self.connect(timeout).await?;
                std::mem::forget(reserved);
                self.count_active(1);
                return Ok(PooledConn {
                    conn: Some(conn),
                    slot: Some(slot),
                });
            }
            slot = match self.take_idle(slot, true) {
                Ok(pooled) => return Ok(pooled),
                Err(slot) => slot,
            };
            // Every open connection is in use or on its way back to a lane: wait for it.
            if Instant::now() >= deadline {
                return Err(PoolError::Timeout {
                    addr: self.addr.clone(),
                    waited_ms: timeout.as_millis() as u64,
                    size: self.size(),
                });
            }
            tokio::task::yield_now().await;
        }
    }

    /// Counts a connection about to be opened, if the node has room for it: fewer open
    /// than the slots that exist (the size, plus slots a shrink has yet to take back).
    /// Counted before it exists, so the count comes back when the guard drops: a failed
    /// connect, or a checkout dropped mid-connect. Forget the guard once connected.
    fn reserve_open(&self) -> Option<Counted<'_>> {
        let limit = self.size() as usize + self.debt.load(Ordering::Acquire) as usize;
        self.stats
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            })
            .ok()
            .map(|_| Counted(&self.stats.open))
    }

    /// A live idle connection without waiting, if a slot and one are free right now. The
    /// common case under load; it skips the timeout and the waiting machinery entirely.
    pub fn try_checkout(self: &Arc<Self>) -> Option<PooledConn> {
        let slot = self.try_slot(self.my_lane(), false).ok()??;
        self.take_idle(slot, false).ok()
    }

    /// Pairs `slot` with a live idle connection of its own lane (and then of any other
    /// lane, when `steal`), dropping dead ones on the way; gives the slot back when none is
    /// idle.
    fn take_idle(self: &Arc<Self>, slot: Slot, steal: bool) -> Result<PooledConn, Slot> {
        let lanes = self.lanes.len();
        for i in 0..if steal { lanes } else { 1 } {
            let lane = &self.lanes[(slot.lane + i) % lanes];
            loop {
                let Some(mut conn) = lock(&lane.idle).pop() else {
                    break;
                };
                if conn.looks_dead() {
                    tracing::debug!(node = %self.addr, conn = conn.id, "dropping dead idle server connection");
                    self.stats.open.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                let conn = match conn.for_this_thread() {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::debug!(node = %self.addr, error = %e, "cannot move an idle server connection to this thread");
                        self.stats.open.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                };
                self.count_active(1);
                return Ok(PooledConn {
                    conn: Some(conn),
                    slot: Some(slot),
                });
            }
        }
        Err(slot)
    }

    /// A slot of lane `from` was just freed: if checkouts wait on a lane that has no slots,
    /// and none wait on this one, move a free slot (with an idle connection, if there is
    /// one) over to them. Lanes that have slots of their own get them back within a query,
    /// or take a free one after [`STEAL_AFTER`]. (Handing over whenever this lane has a
    /// spare slot and another lane waits was tried: under an even load that moved a
    /// connection between threads on one query in six, from scheduling jitter alone.)
    fn hand_to_waiting(&self, from: usize) {
        if self.lanes.len() == 1 {
            return;
        }
        // Pairs with the fence in `wait_slot`.
        fence(Ordering::SeqCst);
        let here = &self.lanes[from];
        if here.waiting.load(Ordering::SeqCst) > 0 {
            return;
        }
        let Some(to) = self.lanes.iter().position(|l| {
            l.waiting.load(Ordering::SeqCst) > 0 && l.slots.load(Ordering::Acquire) == 0
        }) else {
            return;
        };
        // Someone on this lane may have taken the slot meanwhile; then its release hands over.
        let Ok(permit) = here.permits.try_acquire() else {
            return;
        };
        let conn = lock(&here.idle).pop();
        if let Some(conn) = conn {
            lock(&self.lanes[to].idle).push(conn);
        }
        permit.forget();
        here.slots.fetch_sub(1, Ordering::AcqRel);
        self.lanes[to].slots.fetch_add(1, Ordering::AcqRel);
        self.lanes[to].permits.add_permits(1);
    }

    async fn connect(&self, timeout: Duration) -> Result<Box<ServerConn>, PoolError> {
        {
            let backoff = lock(&self.backoff);
            if let Some(until) = backoff.until {
                let now = Instant::now();
                if until > now {
                    return Err(PoolError::BackingOff {
                        addr: self.addr.clone(),
                        retry_in_ms: (until - now).as_millis() as u64,
                        last_error: backoff.last_error.clone(),
                    });
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        match ServerConn::connect(&self.addr, &self.creds, timeout, id).await {
            Ok(conn) => {
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
                *lock(&self.backoff) = Backoff::default();
                let mut params = lock(&self.server_params);
                if params.is_none() {
                    *params = Some(Arc::new(conn.params.clone()));
                }
                Ok(Box::new(conn))
            }
            Err(e) => {
                self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                self.note_failure(&e);
                Err(e.into())
            }
        }
    }

    fn note_failure(&self, e: &BackendError) {
        let mut backoff = lock(&self.backoff);
        let delay = BACKOFF_BASE
            .saturating_mul(1u32 << backoff.failures.min(10))
            .min(BACKOFF_MAX);
        backoff.failures = backoff.failures.saturating_add(1);
        backoff.until = Some(Instant::now() + delay);
        backoff.last_error = e.to_string();
        tracing::warn!(node = %self.addr, error = %e, retry_in_ms = delay.as_millis() as u64, "server connect failed");
    }

    /// The ParameterStatus values the server reports, connecting once if none is known yet.
    pub async fn server_params(
        self: &Arc<Self>,
        timeout: Duration,
    ) -> Result<ServerParams, PoolError> {
        if let Some(p) = lock(&self.server_params).clone() {
            return Ok(p);
        }
        let conn = self.checkout(timeout).await?;
        let params = Arc::new(conn.params.clone());
        conn.release();
        Ok(params)
    }

    /// Closes every idle connection (shutdown, or a node leaving the topology).
    pub fn close_idle(&self) {
        for lane in self.lanes.iter() {
            let drained: Vec<Box<ServerConn>> = std::mem::take(&mut *lock(&lane.idle));
            self.stats.open.fetch_sub(drained.len(), Ordering::Relaxed);
        }
    }
}

/// One unit of a counter (an open connection being made, a waiting checkout), taken back
/// when dropped: cancel safe.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One of a pool's slots, taken from lane `lane`. Dropped, it goes back to that lane, or
/// to a lane whose checkouts wait for one.
#[derive(Debug)]
struct Slot {
    pool: Arc<NodePool>,
    lane: usize,
    permit: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// Gives the slot to lane `to` (where its connection is now registered).
    fn return_to(mut self, to: usize) {
        if to != self.lane {
            if let Some(permit) = self.permit.take() {
                permit.forget();
                let lanes = &self.pool.lanes;
                lanes[self.lane].slots.fetch_sub(1, Ordering::AcqRel);
                lanes[to].slots.fetch_add(1, Ordering::AcqRel);
                lanes[to].permits.add_permits(1);
            }
            self.lane = to;
        }
    }

    /// Removes the slot from the pool (a shrink's debt).
    fn forget(mut self) {
        if let Some(permit) = self.permit.take() {
            permit.forget();
            self.pool.lanes[self.lane]
                .slots
                .fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.pool.hand_to_waiting(self.lane);
    }
}

/// A checked-out server connection. Return it with [`PooledConn::release`] only when
/// it is idle and clean; dropping it closes the connection instead.
#[derive(Debug)]
pub struct PooledConn {
    conn: Option<Box<ServerConn>>,
    /// Some until the connection is released.
    slot: Option<Slot>,
}

impl PooledConn {
    pub fn pool(&self) -> &Arc<NodePool> {
        &self
            .slot
            .as_ref()
            .expect("pooled connection used after release")
            .pool
    }

    /// Back to the pool for the next client, on the calling thread's lane. The caller
    /// vouches that the connection is at ReadyForQuery('I') with nothing in flight.
    pub fn release(mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if conn.settings_unknown {
            // Whoever gets it next applies their settings from scratch.
            conn.state_fingerprint = 0;
            conn.settings_unknown = false;
        }
        let Some(slot) = self.slot.take() else {
            return;
        };
        let pool = slot.pool.clone();
        pool.count_active(-1);
        if pool.pay_debt() {
            pool.stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(conn);
            slot.forget();
            return;
        }
        let over = pool.stats.open.load(Ordering::Relaxed) > pool.size() as usize;
        if over || pool.retired.load(Ordering::Acquire) {
            pool.stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(conn);
            return;
        }
        let me = pool.my_lane();
        lock(&pool.lanes[me].idle).push(conn);
        slot.return_to(me);
    }

    /// Closes the connection (state unknown, or broken).
    pub fn discard(self) {
        drop(self);
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let (Some(_), Some(slot)) = (self.conn.take(), self.slot.take()) {
            let pool = &slot.pool;
            pool.count_active(-1);
            pool.stats.open.fetch_sub(1, Ordering::Relaxed);
            if pool.pay_debt() {
                slot.forget();
            }
        }
    }
}

impl std::ops::Deref for PooledConn {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        // Invariant: `conn` is Some until release/drop consume the guard.
        self.conn
            .as_ref()
            .expect("pooled connection used after release")
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn
            .as_mut()
            .expect("pooled connection used after release")
    }
}
