//! `shardgate route --config PATH "SQL"`: where a statement would go under a candidate
//! config, before reloading it. Offline, so no lag check runs: every replica is
//! assumed healthy and caught up.

use std::fmt::Write as _;
use std::io::Write as _;
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
    // Written in one go, and a closed pipe (`| head`) is no error: println! would panic.
    let mut out = String::new();
    let _ = writeln!(out, "kind:   {}", e.kind.as_str());
    let shards: Vec<&str> = e.shards.iter().map(|s| &**s).collect();
    let _ = writeln!(out, "shard:  {}", shards.join(", "));
    match (e.node, e.role) {
        (Some(node), Some(role)) => {
            let role = if role == Role::Primary {
                "primary"
            } else {
                "replica"
            };
            let _ = writeln!(out, "node:   {node} ({role})");
        }
        _ => {
            let _ = writeln!(out, "node:   none");
        }
    }
    let _ = writeln!(out, "reason: {}", e.reason);
    if !e.class.parsed {
        let _ = writeln!(
            out,
            "note:   the SQL parser could not read this statement; it goes to the primary"
        );
    }
    let _ = writeln!(out, "(offline: replicas are assumed healthy and caught up)");
    let _ = std::io::stdout().write_all(out.as_bytes());
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
