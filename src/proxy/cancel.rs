//! Cancel requests: each client gets its own BackendKeyData; a CancelRequest carrying
//! it is forwarded to the server connection running that client's query, and to
//! nothing else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use shardgate_config::NodeAddr;
use shardgate_pool::BackendKey;
use shardgate_wire::StartupRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a forwarded cancel is waited for (the postmaster closing its connection).
const CANCEL_DELIVERY: Duration = Duration::from_secs(5);

/// Where a client's query currently runs, if anywhere.
#[derive(Debug, Default)]
pub(crate) struct CancelSlot {
    target: Mutex<Option<(Arc<NodeAddr>, BackendKey)>>,
    /// Wakes a request still waiting for a server connection: that is where its
    /// query "runs" while the pool is busy.
    pub(crate) waiting: tokio::sync::Notify,
    /// Cancels on their way to the server connection in `target` (counted under its lock).
    in_flight: AtomicU32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CancelSlot {
    pub(crate) fn set(&self, addr: &Arc<NodeAddr>, key: BackendKey) {
        *lock(&self.target) = Some((Arc::clone(addr), key));
    }

    /// The client's query no longer runs on a server. True if a cancel for it may still be
    /// on its way to that server connection: the connection must then be closed, not handed
    /// to another client, whose query the late cancel would stop.
    pub(crate) fn clear(&self) -> bool {
        let mut target = lock(&self.target);
        *target = None;
        self.in_flight.load(Ordering::Acquire) > 0
    }
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
        let target = {
            let clients = lock(&self.clients);
            match clients.get(&pid) {
                Some((s, slot)) if *s == secret => {
                    let target = lock(&slot.target);
                    if target.is_some() {
                        slot.in_flight.fetch_add(1, Ordering::AcqRel);
                    }
                    target.clone().map(|t| (t, slot.clone()))
                }
                _ => None,
            }
        };
        let Some(((addr, key), slot)) = target else {
            // Not on a server: a request may be waiting for a pool slot (woken here), or
            // the client is idle (ignored, as PostgreSQL ignores it).
            if let Some((s, slot)) = lock(&self.clients).get(&pid) {
                if *s == secret {
                    slot.waiting.notify_waiters();
                }
            }
            tracing::debug!(pid, "cancel request with no query on a server");
            return;
        };
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
        slot.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
