//! The pool for one (node, user) pair: a bounded set of logged-in server connections,
//! LIFO reuse, checkout with a deadline, and reconnect backoff after failures.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
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
    /// Connections currently checked out by a client.
    pub active: AtomicUsize,
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

/// Server connections to one node, logged in as one user.
#[derive(Debug)]
pub struct NodePool {
    addr: Arc<NodeAddr>,
    creds: Credentials,
    size: AtomicU32,
    /// The node left the topology: connections close instead of returning.
    retired: AtomicBool,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<ServerConn>>,
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
    pub fn new(addr: NodeAddr, creds: Credentials, size: u32) -> Arc<NodePool> {
        Arc::new(NodePool {
            addr: Arc::new(addr),
            creds,
            size: AtomicU32::new(size),
            retired: AtomicBool::new(false),
            permits: Arc::new(Semaphore::new(size as usize)),
            idle: Mutex::new(Vec::with_capacity(size as usize)),
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

    /// Changes the number of server connections, keeping the open ones. Growing takes
    /// effect at once; shrinking waits for connections in use to come back (needs a
    /// tokio runtime).
    pub fn resize(self: &Arc<Self>, new_size: u32) {
        let old = self.size.swap(new_size, Ordering::AcqRel);
        if new_size > old {
            self.permits.add_permits((new_size - old) as usize);
        } else if new_size < old {
            let permits = self.permits.clone();
            let pool = self.clone();
            tokio::spawn(async move {
                if let Ok(p) = permits.acquire_many_owned(old - new_size).await {
                    p.forget();
                }
                pool.trim_idle();
            });
        }
    }

    /// Closes idle connections beyond the pool size.
    fn trim_idle(&self) {
        let size = self.size() as usize;
        let mut idle = lock(&self.idle);
        let open = self.stats.open.load(Ordering::Relaxed);
        let excess = open.saturating_sub(size).min(idle.len());
        idle.drain(..excess);
        self.stats.open.fetch_sub(excess, Ordering::Relaxed);
    }

    /// The node left the topology: close what is idle, and close the rest as it is
    /// released. Returns how many connections are still in use.
    pub fn retire(&self) -> usize {
        self.retired.store(true, Ordering::Release);
        self.close_idle();
        self.stats.active.load(Ordering::Relaxed)
    }

    pub fn user(&self) -> &str {
        &self.creds.user
    }

    pub fn idle_count(&self) -> usize {
        lock(&self.idle).len()
    }

    /// Takes a connection, waiting at most `timeout` for a free slot. Cancel safe: a
    /// dropped future releases its slot.
    pub async fn checkout(self: &Arc<Self>, timeout: Duration) -> Result<PooledConn, PoolError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => {
                return Err(PoolError::Closed {
                    addr: self.addr.clone(),
                })
            }
            Err(TryAcquireError::NoPermits) => {
                let acquire = self.permits.clone().acquire_owned();
                match tokio::time::timeout(timeout, acquire).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => {
                        return Err(PoolError::Closed {
                            addr: self.addr.clone(),
                        })
                    }
                    Err(_) => {
                        return Err(PoolError::Timeout {
                            addr: self.addr.clone(),
                            waited_ms: timeout.as_millis() as u64,
                            size: self.size(),
                        })
                    }
                }
            }
        };
        let permit = match self.take_idle(permit) {
            Ok(pooled) => return Ok(pooled),
            Err(permit) => permit,
        };
        let conn = self.connect(timeout).await?;
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        Ok(PooledConn {
            conn: Some(conn),
            pool: self.clone(),
            _permit: permit,
        })
    }

    /// A live idle connection without waiting, if a slot and one are free right now. The
    /// common case under load; it skips the timeout and the waiting machinery entirely.
    pub fn try_checkout(self: &Arc<Self>) -> Option<PooledConn> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        self.take_idle(permit).ok()
    }

    /// Pairs `permit` with a live idle connection, dropping dead ones on the way; gives the
    /// permit back when none is idle.
    fn take_idle(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
    ) -> Result<PooledConn, OwnedSemaphorePermit> {
        loop {
            let Some(mut conn) = lock(&self.idle).pop() else {
                return Err(permit);
            };
            if conn.looks_dead() {
                tracing::debug!(node = %self.addr, conn = conn.id, "dropping dead idle server connection");
                self.stats.open.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            self.stats.active.fetch_add(1, Ordering::Relaxed);
            return Ok(PooledConn {
                conn: Some(conn),
                pool: self.clone(),
                _permit: permit,
            });
        }
    }

    async fn connect(&self, timeout: Duration) -> Result<ServerConn, PoolError> {
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
                Ok(conn)
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
        let drained: Vec<ServerConn> = std::mem::take(&mut *lock(&self.idle));
        self.stats.open.fetch_sub(drained.len(), Ordering::Relaxed);
    }
}

/// A checked-out server connection. Return it with [`PooledConn::release`] only when
/// it is idle and clean; dropping it closes the connection instead.
#[derive(Debug)]
pub struct PooledConn {
    conn: Option<ServerConn>,
    pool: Arc<NodePool>,
    _permit: OwnedSemaphorePermit,
}

impl PooledConn {
    pub fn pool(&self) -> &Arc<NodePool> {
        &self.pool
    }

    /// Back to the pool for the next client. The caller vouches that the connection
    /// is at ReadyForQuery('I') with nothing in flight.
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            let pool = &self.pool;
            pool.stats.active.fetch_sub(1, Ordering::Relaxed);
            let over = pool.stats.open.load(Ordering::Relaxed) > pool.size() as usize;
            if over || pool.retired.load(Ordering::Acquire) {
                pool.stats.open.fetch_sub(1, Ordering::Relaxed);
                drop(conn);
            } else {
                lock(&pool.idle).push(conn);
            }
        }
    }

    /// Closes the connection (state unknown, or broken).
    pub fn discard(self) {
        drop(self);
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.pool.stats.active.fetch_sub(1, Ordering::Relaxed);
            self.pool.stats.open.fetch_sub(1, Ordering::Relaxed);
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
