//! `shardgate demo`: a local topology (by default 2 shards, each a primary and one
//! streaming replica) built by the testkit, with the proxy in front of it on
//! 127.0.0.1:6432. The generated config is written next to the data, so it can be
//! edited and reloaded like any other.

use std::process::ExitCode;

use shardgate_config::Config;
use shardgate_testkit::{TestkitError, Topology};
use tokio::sync::watch;

const LISTEN: &str = "127.0.0.1:6432";
const ADMIN: &str = "127.0.0.1:9930";

/// The demo's sharding: two sharded tables and a reference table, created on every shard.
const SHARDING: &str = "sharding:\n  logical_shards: 1024\n  tables:\n    users: id\n    orders: user_id\n  reference_tables: [countries]\n";

const SCHEMA: &str = "CREATE TABLE users (id bigint PRIMARY KEY, name text); \
     CREATE TABLE orders (id bigserial, user_id bigint NOT NULL, total numeric, PRIMARY KEY (user_id, id)); \
     CREATE TABLE countries (code text PRIMARY KEY, name text);";

fn grants(user: &str) -> String {
    format!(
        "GRANT ALL ON users, orders, countries TO \"{user}\"; \
         GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO \"{user}\"; \
         GRANT CREATE ON SCHEMA public TO \"{user}\";"
    )
}

fn demo_config(topology: &Topology) -> String {
    format!(
        "listen: {LISTEN}\nadmin_listen: {ADMIN}\ndatabase: {db}\nusers:\n  - name: {user}\n    password: {password}\npool:\n  mode: transaction\n  size: 20\n{shards}{sharding}",
        db = topology.database(),
        user = topology.user(),
        password = topology.password(),
        shards = topology.shards_yaml(),
        sharding = SHARDING,
    )
}

pub(crate) fn run(shards: usize, replicas: usize) -> ExitCode {
    if shards == 0 {
        eprintln!("error: --shards must be at least 1");
        return ExitCode::from(2);
    }
    eprintln!(
        "shardgate demo: starting {shards} shard(s), each a primary and {replicas} streaming replica(s)..."
    );
    let topology = match Topology::builder()
        .shards(shards)
        .replicas(replicas)
        .build()
    {
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
    for shard in &topology.shards {
        let sql = format!("{SCHEMA} {}", grants(topology.user()));
        if let Err(e) = shard.primary.sql(topology.database(), &sql) {
            eprintln!("error: could not create the demo tables: {e}");
            return ExitCode::FAILURE;
        }
    }
    let text = demo_config(&topology);
    let config = match Config::from_yaml_str(&text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: demo config invalid: {e:?}\n{text}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match crate::app::build_runtime() {
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
        let path = topology.dir().join("proxy.yaml");
        let source = crate::app::Source {
            path: std::fs::write(&path, &text).is_ok().then(|| path.clone()),
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
        println!("shardgate is ready. Connect with:");
        println!();
        println!(
            "  PGPASSWORD={} psql -h 127.0.0.1 -p 6432 -U {} {}",
            topology.password(),
            topology.user(),
            topology.database()
        );
        println!();
        println!("Admin: curl http://{ADMIN}/api/topology   curl http://{ADMIN}/api/decisions");
        println!(
            "Config: {} (edit it, then: curl -X POST http://{ADMIN}/api/reload)",
            path.display()
        );
        println!("Try: INSERT INTO users (id, name) VALUES (1, 'ann'), (2, 'bob');  SELECT * FROM users WHERE id = 2;");
        println!("     then curl http://{ADMIN}/api/decisions to see which shard each statement went to.");
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
