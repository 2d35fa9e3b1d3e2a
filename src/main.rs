//! shardgate: a PostgreSQL proxy. Clients connect as to one database; shardgate pools
//! server connections (and, as later issues land, splits reads and writes, routes by
//! shard key, and merges cross-shard results).

mod admin_view;
mod app;
mod app_tls;
mod decisions;
mod demo;
mod explain;
mod lane_metrics;
mod metrics;
mod monitors;
mod proxy;
mod reload;
mod route_cli;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "shardgate",
    version,
    about = "A PostgreSQL proxy: pooling, read/write splitting, sharding"
)]
struct Cli {
    /// Config file [default: $SHARDGATE_CONFIG, else ./proxy.yaml]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a config file: print every problem with its key path.
    Check,
    /// Start a local topology (default: 2 shards, each a primary and 1 streaming replica)
    /// and the proxy in front of it.
    Demo {
        /// Number of shards.
        #[arg(long, default_value_t = 2)]
        shards: usize,
        /// Streaming replicas per shard.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
    /// Show where a statement would be routed under a config, without running it.
    Route {
        /// The SQL statement.
        sql: String,
    },
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| std::env::var_os("SHARDGATE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("proxy.yaml"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(
        cli.command,
        Some(Command::Check) | Some(Command::Route { .. })
    );
    app::init_logging(if quiet { "warn" } else { "info" });
    match cli.command {
        Some(Command::Check) => app::check(&config_path(&cli)),
        Some(Command::Demo { shards, replicas }) => demo::run(shards, replicas),
        Some(Command::Route { ref sql }) => route_cli::run(&config_path(&cli), sql),
        None => app::run_from_file(&config_path(&cli)),
    }
}
