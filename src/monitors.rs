//! The lag monitors of a topology: one task per shard with replicas. A reload that
//! keeps the topology only changes their settings; one that changes it restarts them
//! with the same health handles, so unchanged replicas stay routable.

use std::time::Duration;

use shardgate_config::NodeAddr;
use shardgate_pool::lag::{spawn_shard_monitor, ShardMonitorSpec};
use shardgate_pool::{LagBounds, MonitorSettings};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::proxy::Snapshot;

/// The monitor settings a config asks for.
fn settings(snapshot: &Snapshot) -> MonitorSettings {
    let r = &snapshot.config.routing;
    MonitorSettings {
        interval: Duration::from_millis(r.lag_check_interval_ms),
        bounds: LagBounds {
            max_bytes: r.max_replica_lag_bytes,
            max_ms: r.max_replica_lag_ms,
        },
    }
}

/// What the monitors watch and how they log in; a change restarts them.
type Shape = (
    Vec<(String, NodeAddr, Vec<NodeAddr>)>,
    Option<(String, String, String)>,
);

fn shape(snapshot: &Snapshot) -> Shape {
    let shards = snapshot
        .shards
        .iter()
        .map(|s| {
            let replicas = s.replicas.iter().map(|r| (*r.addr).clone()).collect();
            (s.name.to_string(), (*s.primary.addr).clone(), replicas)
        })
        .collect();
    let login = snapshot.config.users.first().map(|u| {
        (
            u.name.clone(),
            u.password.clone(),
            snapshot.config.database.clone(),
        )
    });
    (shards, login)
}

/// The running monitors.
pub(crate) struct Monitors {
    shape: Shape,
    settings: watch::Sender<MonitorSettings>,
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

impl Monitors {
    /// One monitor per shard with replicas, logging in as the first configured user.
    pub(crate) fn start(snapshot: &Snapshot) -> Monitors {
        let (settings_tx, settings_rx) = watch::channel(settings(snapshot));
        let (stop_tx, stop_rx) = watch::channel(false);
        let shape = shape(snapshot);
        let mut handles = Vec::new();
        if let Some((user, password, database)) = &shape.1 {
            for shard in snapshot.shards.iter().filter(|s| !s.replicas.is_empty()) {
                let spec = ShardMonitorSpec {
                    shard: shard.name.to_string(),
                    primary: (*shard.primary.addr).clone(),
                    primary_check: shard.primary.primary_check.clone().unwrap_or_default(),
                    replicas: shard
                        .replicas
                        .iter()
                        .filter_map(|r| r.health.clone())
                        .collect(),
                    user: user.clone(),
                    password: password.clone(),
                    database: database.clone(),
                };
                handles.push(spawn_shard_monitor(
                    spec,
                    settings_rx.clone(),
                    stop_rx.clone(),
                ));
            }
        }
        Monitors {
            shape,
            settings: settings_tx,
            stop: stop_tx,
            handles,
        }
    }

    /// Follows a new snapshot: new settings at once, or a restart if what is watched changed.
    pub(crate) fn update(&mut self, snapshot: &Snapshot) {
        if shape(snapshot) == self.shape {
            self.settings.send_replace(settings(snapshot));
        } else {
            let old = std::mem::replace(self, Monitors::start(snapshot));
            old.stop();
        }
    }

    /// Stops every monitor; the returned handles finish shortly after.
    pub(crate) fn stop(self) -> Vec<JoinHandle<()>> {
        self.stop.send_replace(true);
        self.handles
    }
}
