//! `shardgate demo`: a local topology (2 shards, each a primary and one streaming
//! replica) built by the testkit, with the proxy in front of it on 127.0.0.1:6432.

use std::process::ExitCode;

use shardgate_config::Config;
use shardgate_testkit::{TestkitError, Topology};
use tokio::sync::watch;

const LISTEN: &str = "127.0.0.1:6432";
const ADMIN: &str = "127.0.0.1:9930";

fn demo_config(topology: &Topology) -> String {
    format!(
        "listen: {LISTEN}\nadmin_listen: {ADMIN}\ndatabase: {db}\nusers:\n  - name: {user}\n    password: {password}\npool:\n  mode: transaction\n  size: 20\n{shards}sharding:\n  logical_shards: 1024\n",
        db = topology.database(),
        user = topology.user(),
        password = topology.password(),
        shards = topology.shards_yaml(),
    )
}

pub(crate) fn run() -> ExitCode {
    eprintln!("shardgate demo: starting 2 shards, each a primary and 1 streaming replica...");
    let topology = match Topology::builder().shards(2).replicas(1).build() {
        Ok(t) => t,
        Err(TestkitError::NoPostgres(msg)) => {
            eprintln!("error: {msg}");
            eprintln!(
                "The demo needs PostgreSQL's server binaries (initdb, pg_ctl, pg_basebackup)."
            );
            eprintln!("On Debian/Ubuntu: sudo apt-get install postgresql");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: could not start the demo topology: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Until sharding lands the proxy uses the first shard only; keep both listed so
    // the topology is visible, and s0 first.
    let text = demo_config(&topology);
    let config = match Config::from_yaml_str(&text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: demo config invalid: {e:?}\n{text}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    for shard in &topology.shards {
        let replicas: Vec<String> = shard
            .replicas
            .iter()
            .map(|r| r.addr().to_string())
            .collect();
        eprintln!(
            "  shard {}: primary {}  replicas [{}]",
            shard.name,
            shard.primary.addr(),
            replicas.join(", ")
        );
    }
    eprintln!("  data under {}", topology.dir().display());
    let code = runtime.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        let source = crate::app::Source {
            path: None,
            sha256: crate::reload::sha256_hex(text.as_bytes()),
        };
        let proxy = tokio::spawn(crate::app::run(config, source, stop_rx));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if proxy.is_finished() {
            return match proxy.await {
                Ok(Err(e)) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::FAILURE,
            };
        }
        println!();
        println!("shardgate is ready (routing to shard s0 until sharding lands). Connect with:");
        println!();
        println!(
            "  PGPASSWORD={} psql -h 127.0.0.1 -p 6432 -U {} {}",
            topology.password(),
            topology.user(),
            topology.database()
        );
        println!();
        println!("Admin: curl http://{ADMIN}/healthz   curl http://{ADMIN}/metrics");
        println!("Press Ctrl-C to stop and remove everything.");
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("stopping...");
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), proxy).await;
        ExitCode::SUCCESS
    });
    drop(topology);
    code
}
