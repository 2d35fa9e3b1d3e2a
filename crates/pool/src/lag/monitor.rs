//! The per-shard monitor task: every interval, one primary query, then all of the shard's
//! replicas checked concurrently against it, each result applied with [`observe`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shardgate_config::NodeAddr;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::health::ReplicaHealth;
use super::observe::{observe, LagBounds, Observation};
use super::primary::PrimaryCheck;
use super::probe::{Login, Probe};

/// A check waits at most this long for a connect or a query, however long the interval.
const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Interval floor: a zero interval from a bad reload must not turn the monitor into a busy loop.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Settings a config reload may change while the monitor runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonitorSettings {
    /// Time between the starts of two checks.
    pub interval: Duration,
    pub bounds: LagBounds,
}

/// What one shard's monitor watches, and how it logs in (to `database`, as `user`).
#[derive(Debug)]
pub struct ShardMonitorSpec {
    pub shard: String,
    pub primary: NodeAddr,
    /// Where each cycle records whether the primary answered.
    pub primary_check: Arc<PrimaryCheck>,
    pub replicas: Vec<Arc<ReplicaHealth>>,
    pub user: String,
    pub password: String,
    pub database: String,
}

/// Spawns the monitor for one shard on the current tokio runtime: it checks at once, then every
/// `settings.interval` (read afresh each cycle), until `stop` turns true or its sender is
/// dropped. The first check happens immediately; replicas become routable after 2 good checks.
pub fn spawn_shard_monitor(
    spec: ShardMonitorSpec,
    settings: watch::Receiver<MonitorSettings>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    for replica in &spec.replicas {
        replica.set_shard(&spec.shard);
    }
    let login = Arc::new(Login {
        user: spec.user,
        password: spec.password,
        database: spec.database,
    });
    let monitor = ShardMonitor {
        primary: Probe::new(spec.primary, Arc::clone(&login)),
        primary_check: spec.primary_check,
        replicas: spec
            .replicas
            .into_iter()
            .map(|health| {
                let probe = Probe::new(health.addr().clone(), Arc::clone(&login));
                (health, Some(probe))
            })
            .collect(),
        shard: spec.shard,
    };
    tokio::spawn(monitor.run(settings, stop))
}

struct ShardMonitor {
    shard: String,
    primary: Probe,
    primary_check: Arc<PrimaryCheck>,
    /// A probe is `None` only while its check runs in a task of the current cycle.
    replicas: Vec<(Arc<ReplicaHealth>, Option<Probe>)>,
}

impl ShardMonitor {
    async fn run(
        mut self,
        settings: watch::Receiver<MonitorSettings>,
        mut stop: watch::Receiver<bool>,
    ) {
        tracing::debug!(shard = %self.shard, "lag monitor started");
        loop {
            let current = *settings.borrow();
            let interval = current.interval.max(MIN_INTERVAL);
            let next = Instant::now() + interval;
            // A stop request aborts a cycle in progress: its checks are cancel safe.
            tokio::select! {
                biased;
                () = stop_requested(&mut stop) => break,
                () = self.cycle(interval, current.bounds) => {}
            }
            tokio::select! {
                biased;
                () = stop_requested(&mut stop) => break,
                () = tokio::time::sleep_until(next) => {}
            }
        }
        tracing::debug!(shard = %self.shard, "lag monitor stopped");
    }

    async fn cycle(&mut self, interval: Duration, bounds: LagBounds) {
        let timeout = (interval.saturating_mul(5)).min(MAX_PROBE_TIMEOUT);
        // The primary first: a replica read after it can only have replayed more, so a
        // caught-up replica is seen as caught up, never as behind by in-flight writes.
        let primary_lsn = match self.primary.primary_lsn(timeout).await {
            Ok(lsn) => {
                self.primary_check.record(SystemTime::now(), None);
                Some(lsn)
            }
            Err(e) => {
                self.primary_check
                    .record(SystemTime::now(), Some(e.describe()));
                // Replicas are still judged, by time lag against what they received.
                tracing::debug!(shard = %self.shard, node = %self.primary.addr(),
                    error = %e.describe(), "lag monitor could not read the primary's LSN");
                None
            }
        };
        let mut checks = JoinSet::new();
        for (index, (_, slot)) in self.replicas.iter_mut().enumerate() {
            if let Some(mut probe) = slot.take() {
                checks.spawn(async move {
                    let obs = probe.check_replica(primary_lsn, timeout).await;
                    (index, probe, obs)
                });
            }
        }
        // Dropping the JoinSet (cycle cancelled by stop) aborts the checks still running.
        while let Some(done) = checks.join_next().await {
            match done {
                Ok((index, probe, obs)) => self.apply(index, probe, obs, bounds),
                Err(e) => tracing::error!(shard = %self.shard, error = %e, "lag check task failed"),
            }
        }
        self.restore_lost_probes(bounds);
    }

    fn apply(&mut self, index: usize, probe: Probe, obs: Observation, bounds: LagBounds) {
        let Some((health, slot)) = self.replicas.get_mut(index) else {
            return;
        };
        *slot = Some(probe);
        observe(health, obs, bounds, SystemTime::now());
    }

    /// A check task that panicked took its probe with it; start over with a fresh one rather
    /// than stop checking that replica.
    fn restore_lost_probes(&mut self, bounds: LagBounds) {
        for (health, slot) in &mut self.replicas {
            if slot.is_none() {
                let login = Arc::clone(self.primary.login());
                *slot = Some(Probe::new(health.addr().clone(), login));
                observe(
                    health,
                    Observation::QueryFailed("lag check task failed".to_owned()),
                    bounds,
                    SystemTime::now(),
                );
            }
        }
    }
}

/// Resolves when `stop` is true or can never change again (its sender is gone).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|&stopped| stopped).await;
}
