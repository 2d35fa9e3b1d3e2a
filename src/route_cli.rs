//! `shardgate route --config PATH "SQL"`: where a statement would go under a candidate
//! config, before reloading it. Offline, so no lag check runs: every replica is
//! assumed healthy and caught up.

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use shardgate_config::Config;
use shardgate_pool::lag::{observe, LagBounds, Observation, Sample};
use shardgate_router::Role;

use crate::metrics::Metrics;
use crate::proxy::{explain_route, Snapshot};

pub(crate) fn run(path: &Path, sql: &str) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            crate::app::print_config_error(path, &e);
            return ExitCode::from(2);
        }
    };
    let snapshot = Snapshot::build(config, 0, &Metrics::new(), None);
    assume_replicas_healthy(&snapshot);
    let e = explain_route(&snapshot, None, sql);
    println!("kind:   {}", e.kind.as_str());
    let shards: Vec<&str> = e.shards.iter().map(|s| &**s).collect();
    println!("shard:  {}", shards.join(", "));
    match (e.node, e.role) {
        (Some(node), Some(role)) => {
            let role = if role == Role::Primary {
                "primary"
            } else {
                "replica"
            };
            println!("node:   {node} ({role})");
        }
        _ => println!("node:   none"),
    }
    println!("reason: {}", e.reason);
    if !e.class.parsed {
        println!("note:   the SQL parser could not read this statement; it goes to the primary");
    }
    println!("(offline: replicas are assumed healthy and caught up)");
    ExitCode::SUCCESS
}

/// Two good observations make a replica routable, as two good lag checks would.
fn assume_replicas_healthy(snapshot: &Snapshot) {
    let bounds = LagBounds {
        max_bytes: u64::MAX,
        max_ms: u64::MAX,
    };
    for (_, node) in snapshot.nodes() {
        if let Some(h) = &node.health {
            for _ in 0..2 {
                let sample = Sample {
                    primary_lsn: Some(0),
                    replay_lsn: Some(0),
                    receive_lsn: Some(0),
                    replay_age_ms: Some(0),
                    in_recovery: true,
                };
                observe(h, Observation::Sample(sample), bounds, SystemTime::now());
            }
        }
    }
}
