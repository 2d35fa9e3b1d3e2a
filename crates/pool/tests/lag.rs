//! The lag monitor against real servers: one shard, two streaming replicas. Replay is paused on
//! one to make it lag, and a replica is killed to make it unreachable.

use std::error::Error;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use shardgate_config::NodeAddr;
use shardgate_pool::lag::{
    spawn_shard_monitor, LagBounds, MonitorSettings, PrimaryCheck, ReplicaHealth, ShardMonitorSpec,
};
use shardgate_testkit::{Node, Topology};
use tokio::sync::watch;

type TestResult = Result<(), Box<dyn Error>>;

const INTERVAL: Duration = Duration::from_millis(100);
/// Room for a loaded, shared machine on top of the check intervals a rule needs.
const SLACK: Duration = Duration::from_secs(1);

fn node_addr(node: &Node) -> Result<NodeAddr, Box<dyn Error>> {
    Ok(node.addr().to_string().parse()?)
}

/// Polls `cond` until it holds; returns how long that took, or fails after `limit`.
fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) -> Result<Duration, String> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            return Err(format!("{what}: not within {limit:?}"));
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(start.elapsed())
}

#[test]
fn monitor_tracks_lag_failures_and_recovery() -> TestResult {
    let topo = Topology::builder().replicas(2).build()?;
    let shard = &topo.shards[0];
    let lagger = ReplicaHealth::new(node_addr(&shard.replicas[0])?);
    let steady = ReplicaHealth::new(node_addr(&shard.replicas[1])?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let settings = MonitorSettings {
        interval: INTERVAL,
        // A generous time bound, so the paused replica is excluded for its byte lag.
        bounds: LagBounds {
            max_bytes: 64 * 1024,
            max_ms: 60_000,
        },
    };
    let (_settings_tx, settings_rx) = watch::channel(settings);
    let (stop_tx, stop_rx) = watch::channel(false);
    let primary_check = PrimaryCheck::new();
    let spec = ShardMonitorSpec {
        shard: shard.name.clone(),
        primary: node_addr(&shard.primary)?,
        primary_check: Arc::clone(&primary_check),
        replicas: vec![Arc::clone(&lagger), Arc::clone(&steady)],
        user: topo.user().to_owned(),
        password: topo.password().to_owned(),
        database: topo.database().to_owned(),
    };
    let monitor = {
        let _entered = runtime.enter();
        spawn_shard_monitor(spec, settings_rx, stop_rx)
    };
    let both = || lagger.routable() && steady.routable();

    let took = wait_until("both replicas admitted", 2 * SLACK, both)?;
    println!("both replicas routable after {took:?}");
    assert_eq!(lagger.status().reason, "ok");
    assert!(lagger.replay_lsn() > 0);
    assert!(lagger.status().healthy && lagger.status().checked_at.is_some());
    let primary = primary_check.status().expect("primary checked");
    assert_eq!(primary.error, None, "the primary answered");

    // A connection failure seen by the proxy excludes at once; the monitor re-admits.
    steady.mark_failed("query failed: test");
    assert!(!steady.routable());
    let took = wait_until(
        "re-admission after mark_failed",
        3 * INTERVAL + SLACK,
        || steady.routable(),
    )?;
    println!("re-admitted after mark_failed in {took:?}");

    shard.replicas[0].pause_replay()?;
    shard.primary.sql(
        topo.database(),
        "CREATE TABLE filler AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 10000) g",
    )?;
    let took = wait_until("paused replica excluded", 3 * INTERVAL + SLACK, || {
        !lagger.routable()
    })?;
    let status = lagger.status();
    println!("paused replica excluded after {took:?}: {}", status.reason);
    assert!(
        status.reason.starts_with("excluded: lag ") && status.reason.ends_with("> bound 64.0 KiB"),
        "{}",
        status.reason
    );
    assert!(status.healthy, "a lagging replica is still healthy");
    assert!(status.lag_bytes.is_some_and(|b| b > 64 * 1024));
    assert!(steady.routable(), "{}", steady.status().reason);

    shard.replicas[0].resume_replay()?;
    let took = wait_until("resumed replica re-admitted", 3 * INTERVAL + SLACK, || {
        lagger.routable()
    })?;
    println!("resumed replica re-admitted after {took:?}");
    assert_eq!(lagger.status().reason, "ok");
    assert_eq!(
        steady.exclusions(),
        1,
        "only mark_failed excluded the steady replica"
    );

    shard.replicas[1].kill()?;
    let took = wait_until("killed replica excluded", 2 * INTERVAL + SLACK, || {
        !steady.routable()
    })?;
    let reason = steady.status().reason;
    println!("killed replica excluded after {took:?}: {reason}");
    assert!(reason.starts_with("excluded: unreachable: "), "{reason}");
    assert!(!steady.status().healthy);
    assert!(lagger.routable());
    assert_eq!(lagger.transitions(), 3);

    stop_tx.send(true)?;
    runtime.block_on(async { tokio::time::timeout(SLACK, monitor).await })??;
    Ok(())
}

#[test]
fn monitor_stops_when_its_stop_sender_is_dropped() -> TestResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // Nothing listens on this port: the replica stays excluded as unreachable.
    let port = shardgate_testkit::free_port();
    let replica = ReplicaHealth::new(format!("127.0.0.1:{port}").parse()?);
    let settings = MonitorSettings {
        interval: INTERVAL,
        bounds: LagBounds {
            max_bytes: 1024,
            max_ms: 1000,
        },
    };
    let (_settings_tx, settings_rx) = watch::channel(settings);
    let (stop_tx, stop_rx) = watch::channel(false);
    let primary_check = PrimaryCheck::new();
    let spec = ShardMonitorSpec {
        shard: "s0".to_owned(),
        primary: format!("127.0.0.1:{port}").parse()?,
        primary_check: Arc::clone(&primary_check),
        replicas: vec![Arc::clone(&replica)],
        user: "app".to_owned(),
        password: "x".to_owned(),
        database: "app".to_owned(),
    };
    let monitor = {
        let _entered = runtime.enter();
        spawn_shard_monitor(spec, settings_rx, stop_rx)
    };
    wait_until("unreachable replica checked", SLACK, || {
        replica.status().checked_at.is_some()
    })?;
    let reason = replica.status().reason;
    assert!(
        reason.starts_with("excluded: unreachable: could not connect"),
        "{reason}"
    );
    assert!(!replica.routable());
    // Nothing listens for the primary either: the check records why.
    let primary = primary_check.status().expect("primary checked");
    assert!(
        primary
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("could not connect")),
        "{primary:?}"
    );
    drop(stop_tx);
    runtime.block_on(async { tokio::time::timeout(SLACK, monitor).await })??;
    Ok(())
}
