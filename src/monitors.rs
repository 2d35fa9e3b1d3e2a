//! Starting a lag monitor for every shard that has replicas.

use std::time::Duration;

use shardgate_pool::lag::{spawn_shard_monitor, ShardMonitorSpec};
use shardgate_pool::{LagBounds, MonitorSettings};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::proxy::Snapshot;

/// The monitor settings a config asks for.
pub(crate) fn settings(snapshot: &Snapshot) -> MonitorSettings {
    let r = &snapshot.config.routing;
    MonitorSettings {
        interval: Duration::from_millis(r.lag_check_interval_ms),
        bounds: LagBounds {
            max_bytes: r.max_replica_lag_bytes,
            max_ms: r.max_replica_lag_ms,
        },
    }
}

/// One monitor per shard with replicas, logging in as the first configured user.
/// They stop when `stop` turns true.
pub(crate) fn spawn_all(snapshot: &Snapshot, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let Some(user) = snapshot.config.users.first() else {
        return Vec::new();
    };
    // The sender lives as long as the monitors: a reload will keep it to change settings.
    let (tx, rx) = watch::channel(settings(snapshot));
    let handles = snapshot
        .shards
        .iter()
        .filter(|s| !s.replicas.is_empty())
        .map(|shard| {
            let spec = ShardMonitorSpec {
                shard: shard.name.to_string(),
                primary: (*shard.primary.addr).clone(),
                replicas: shard
                    .replicas
                    .iter()
                    .filter_map(|r| r.health.clone())
                    .collect(),
                user: user.name.clone(),
                password: user.password.clone(),
                database: snapshot.config.database.clone(),
            };
            spawn_shard_monitor(spec, rx.clone(), stop.clone())
        })
        .collect();
    // Keep the settings channel open for the monitors' lifetime.
    std::mem::forget(tx);
    handles
}
