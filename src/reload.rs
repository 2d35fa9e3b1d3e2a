//! Hot reload: parse and validate the whole file first (the same checks as `shardgate
//! check`), build a new snapshot that reuses every unchanged node, pool and replica
//! health, swap it in atomically, then let removed nodes drain. Transactions already
//! running finish on the snapshot and server connection they started with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use shardgate_config::{Config, ConfigError, Problem};

use crate::monitors::Monitors;
use crate::proxy::{Shared, Snapshot};

/// How long a removed node's connections may stay in use before they are abandoned.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a reload did.
#[derive(Debug)]
pub(crate) enum Outcome {
    Applied {
        version: u64,
        /// Changed settings that only a restart applies (`listen`, `admin_listen`, `workers`, `tls`).
        restart_required: Vec<&'static str>,
    },
    Refused {
        error: String,
        problems: Vec<Problem>,
    },
}

struct Inner {
    monitors: Option<Monitors>,
    file_sha256: String,
}

/// Applies config changes to a running proxy. Reloads are serialized.
pub(crate) struct Reloader {
    shared: Arc<Shared>,
    path: Option<PathBuf>,
    /// What the process started with and cannot change while running.
    started: Started,
    inner: Mutex<Inner>,
}

/// The settings a reload cannot change (each needs a restart).
struct Started {
    listen: SocketAddr,
    admin_listen: SocketAddr,
    tls: bool,
    workers: u32,
    busy_poll: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Reloader {
    /// `path` is the file reloads read (None: the config did not come from a file).
    pub(crate) fn new(shared: Arc<Shared>, path: Option<PathBuf>, file_sha256: String) -> Reloader {
        let snapshot = shared.snapshot.load_full();
        let c = &snapshot.config;
        Reloader {
            started: Started {
                listen: c.listen,
                admin_listen: c.admin_listen,
                tls: c.tls.is_some(),
                workers: c.worker_threads(),
                busy_poll: c.busy_poll(),
            },
            inner: Mutex::new(Inner {
                monitors: Some(Monitors::start(&snapshot)),
                file_sha256,
            }),
            shared,
            path,
        }
    }

    pub(crate) fn path(&self) -> Option<&PathBuf> {
        self.path.as_ref()
    }

    pub(crate) fn file_sha256(&self) -> String {
        lock(&self.inner).file_sha256.clone()
    }

    /// Reads the file again and applies it, or refuses it leaving everything as it was.
    pub(crate) fn reload(&self, trigger: &str) -> Outcome {
        let outcome = self.try_reload();
        let result = match &outcome {
            Outcome::Applied {
                version,
                restart_required,
            } => {
                tracing::info!(
                    trigger,
                    config_version = version,
                    ?restart_required,
                    "config reloaded"
                );
                "applied"
            }
            Outcome::Refused { error, problems } => {
                let listed: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                tracing::warn!(trigger, %error, problems = ?listed, "config reload refused; the old config keeps serving");
                "refused"
            }
        };
        self.shared.metrics.count_reload(result);
        outcome
    }

    fn try_reload(&self) -> Outcome {
        let Some(path) = &self.path else {
            return Outcome::Refused {
                error: "this process was not started from a config file".to_owned(),
                problems: Vec::new(),
            };
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Refused {
                    error: format!("cannot read {}: {e}", path.display()),
                    problems: Vec::new(),
                }
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        let config = match Config::from_yaml_str(&text) {
            Ok(c) => c,
            Err(ConfigError::Invalid { problems }) => {
                return Outcome::Refused {
                    error: format!("{} problem(s) in {}", problems.len(), path.display()),
                    problems,
                }
            }
            Err(e) => {
                return Outcome::Refused {
                    error: e.to_string(),
                    problems: Vec::new(),
                }
            }
        };
        let mut inner = lock(&self.inner);
        let old = self.shared.snapshot.load_full();
        let mut restart_required = Vec::new();
        if config.listen != self.started.listen {
            restart_required.push("listen");
        }
        if config.admin_listen != self.started.admin_listen {
            restart_required.push("admin_listen");
        }
        if config.worker_threads() != self.started.workers {
            restart_required.push("workers");
        }
        if config.busy_poll() != self.started.busy_poll {
            restart_required.push("busy_poll_us");
        }
        if config.tls.is_some() != self.started.tls || config.tls != old.config.tls {
            restart_required.push("tls");
        }
        resize_semaphore(
            &self.shared.client_slots,
            old.config.pool.max_client_connections,
            config.pool.max_client_connections,
        );
        let version = old.version + 1;
        let snapshot = Arc::new(Snapshot::build(
            config,
            version,
            &self.shared.metrics,
            Some(&old),
        ));
        if let Some(m) = inner.monitors.as_mut() {
            m.update(&snapshot);
        }
        self.shared.snapshot.store(snapshot.clone());
        inner.file_sha256 = sha256_hex(&bytes);
        drain_removed(&old, &snapshot);
        Outcome::Applied {
            version,
            restart_required,
        }
    }

    /// Stops the monitors (shutdown).
    pub(crate) fn stop(&self) -> Vec<tokio::task::JoinHandle<()>> {
        lock(&self.inner)
            .monitors
            .take()
            .map(Monitors::stop)
            .unwrap_or_default()
    }
}

/// Grows or shrinks a semaphore to a new number of permits.
fn resize_semaphore(sem: &Arc<tokio::sync::Semaphore>, old: u32, new: u32) {
    if new > old {
        sem.add_permits((new - old) as usize);
    } else if new < old {
        let sem = sem.clone();
        tokio::spawn(async move {
            if let Ok(p) = sem.acquire_many_owned(old - new).await {
                p.forget();
            }
        });
    }
}

/// Nodes of `old` that `new` no longer has stop getting work at once (they are not in
/// the new snapshot); their connections close as they become idle, bounded by a timeout.
fn drain_removed(old: &Snapshot, new: &Snapshot) {
    let removed: Vec<_> = old
        .nodes()
        .filter(|(_, n)| new.node(&n.addr).is_none())
        .map(|(_, n)| n.clone())
        .collect();
    // Pools of kept nodes whose user was removed drain the same way.
    let mut pools: Vec<_> = removed
        .iter()
        .flat_map(|n| n.pools.values().cloned())
        .collect();
    for (_, node) in old.nodes() {
        if let Some(kept) = new.node(&node.addr) {
            for (user, pool) in &node.pools {
                if kept.pools.get(user).is_none_or(|p| !Arc::ptr_eq(p, pool)) {
                    pools.push(pool.clone());
                }
            }
        }
    }
    if pools.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let started = SystemTime::now();
        loop {
            let in_use: usize = pools.iter().map(|p| p.retire()).sum();
            if in_use == 0 {
                for n in &removed {
                    tracing::info!(node = %n.addr, "removed node drained");
                }
                return;
            }
            if started.elapsed().unwrap_or_default() > DRAIN_TIMEOUT {
                tracing::warn!(
                    in_use,
                    timeout_s = DRAIN_TIMEOUT.as_secs(),
                    "drain timeout: removed pools still have connections in use; they close when released"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
