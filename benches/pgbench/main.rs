//! End-to-end throughput and latency benchmark: pgbench against PostgreSQL directly, through
//! shardgate and (when installed) through PgBouncer, on one throwaway testkit primary; and,
//! when asked for (`SG_BENCH_WORKLOADS=sharded`), point reads and writes over two shards, or
//! (`SG_BENCH_WORKLOADS=scatter`) keyless scatter-gather SELECTs over two shards.
//!
//! Run with `cargo bench --bench pgbench`; see docs/benchmarks.md for what it measures and the
//! goals. Targets take turns round by round, so drift on a shared machine (other builds, CPU
//! frequency) spreads over all of them instead of biasing whichever ran last.

mod cpu;
mod mux;
mod pgbench;
mod pgbouncer;
mod relay;
mod report;
mod rss;
mod scatter;
mod sharded;
mod shardgate;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::time::{Duration, Instant};

use shardgate_testkit::{pg_bindir, TestkitError, Topology};

use crate::cpu::CpuPerTxn;
use crate::pgbench::{Pgbench, RunOutcome, Script, Target, Workload};
use crate::report::Measurements;
use crate::shardgate::Backend;

/// pgbench scale factor: 1,000,000 rows in pgbench_accounts, enough that `-S` does real index
/// lookups yet fits in shared_buffers, so the benchmark measures the proxy, not the disk.
const SCALE: &str = "10";
/// Server connections per proxy (shardgate `pool.size`, PgBouncer `default_pool_size`).
const POOL_SIZE: u32 = 20;
/// Untimed run per target before measuring, so caches and pools are warm for round one.
const WARMUP: Duration = Duration::from_secs(2);

/// Everything that can stop the benchmark as a whole. A single failing pgbench run is not one
/// of them: it is recorded and shown in the table (PgBouncer fails `-M prepared` by design).
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    #[error("testkit: {0}")]
    Testkit(#[from] TestkitError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("{var}={value:?}: {why}")]
    Setting {
        var: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("`{command}` failed: {detail}")]
    Tool { command: String, detail: String },
    #[error("{what} did not start: {detail}")]
    NotReady { what: &'static str, detail: String },
    /// Some UPDATE reached a shard without its row, or rows changed behind pgbench's back.
    #[error(
        "{topology}: balances add up to {found}, but pgbench reported {expected} transactions \
         (each adds 1 to one row)"
    )]
    LostUpdates {
        topology: String,
        found: u64,
        expected: u64,
    },
}

/// What to run, from the environment.
#[derive(Debug)]
struct Settings {
    rounds: usize,
    seconds: u64,
    workloads: Vec<Workload>,
    /// The scatter-gather workloads, which are not pgbench runs (see `scatter`).
    scatter: bool,
    /// How the proxies reach PostgreSQL in the pooling workloads (`SG_BENCH_BACKEND`).
    backends: Vec<Backend>,
    /// Whether to measure a bare TCP relay too (`SG_BENCH_RELAY`, default on).
    relay: bool,
    /// Server connections per worker thread of the multiplexing relay (`SG_BENCH_MUX`,
    /// default 4; 0 leaves it out).
    mux: usize,
    /// shardgate's `pool.multiplex` for a second shardgate target, `shardgate-mux`
    /// (`SG_BENCH_MULTIPLEX`, default 4; 0 leaves it out).
    multiplex: u32,
}

impl Settings {
    fn from_env() -> Result<Settings, BenchError> {
        let rounds = env_number("SG_BENCH_ROUNDS", 3)?;
        let seconds = env_number("SG_BENCH_SECONDS", 20)?;
        let mut scatter = false;
        let workloads = match std::env::var("SG_BENCH_WORKLOADS") {
            Ok(list) => {
                let mut workloads = Vec::new();
                for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    if name == "scatter" {
                        scatter = true;
                        continue;
                    }
                    let named = Workload::from_name(name).ok_or_else(|| BenchError::Setting {
                        var: "SG_BENCH_WORKLOADS",
                        value: list.clone(),
                        why: "expected a comma list of simple, extended, prepared, latency, \
                              sharded (or sharded-simple, sharded-prepared), scatter",
                    })?;
                    for w in named {
                        if !workloads.contains(&w) {
                            workloads.push(w);
                        }
                    }
                }
                workloads
            }
            Err(_) => Workload::DEFAULT.to_vec(),
        };
        let backends = match std::env::var("SG_BENCH_BACKEND").as_deref() {
            Err(_) | Ok("tcp") => vec![Backend::Tcp],
            Ok("unix") => vec![Backend::Unix],
            Ok("both") => vec![Backend::Tcp, Backend::Unix],
            Ok(other) => {
                return Err(BenchError::Setting {
                    var: "SG_BENCH_BACKEND",
                    value: other.to_owned(),
                    why: "expected tcp, unix or both",
                })
            }
        };
        let relay = match std::env::var("SG_BENCH_RELAY").as_deref() {
            Err(_) | Ok("1") => true,
            Ok("0") => false,
            Ok(other) => {
                return Err(BenchError::Setting {
                    var: "SG_BENCH_RELAY",
                    value: other.to_owned(),
                    why: "expected 1 (measure the bare relay) or 0",
                })
            }
        };
        let mux = match std::env::var("SG_BENCH_MUX") {
            Err(_) => 4,
            Ok(value) => value.trim().parse().map_err(|_| BenchError::Setting {
                var: "SG_BENCH_MUX",
                value,
                why: "expected server connections per worker (0: leave the mux relay out)",
            })?,
        };
        let multiplex = match std::env::var("SG_BENCH_MULTIPLEX") {
            Err(_) => 4,
            Ok(value) => value.trim().parse().map_err(|_| BenchError::Setting {
                var: "SG_BENCH_MULTIPLEX",
                value,
                why: "expected shardgate's pool.multiplex (0: leave shardgate-mux out)",
            })?,
        };
        Ok(Settings {
            relay,
            mux,
            multiplex,
            backends,
            rounds: usize::try_from(rounds).unwrap_or(usize::MAX),
            seconds,
            workloads,
            scatter,
        })
    }
}

/// A positive integer from `var`, or `default` when it is unset.
fn env_number(var: &'static str, default: u64) -> Result<u64, BenchError> {
    match std::env::var(var) {
        Err(_) => Ok(default),
        Ok(value) => match value.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(BenchError::Setting {
                var,
                value,
                why: "expected a positive integer",
            }),
        },
    }
}

fn main() -> ExitCode {
    if let Some(code) = relay::child_main() {
        return code;
    }
    if let Some(code) = mux::child_main() {
        return code;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgbench benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), BenchError> {
    let settings = Settings::from_env()?;
    let bindir = pg_bindir()?;
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    println!("nproc: {nproc}");
    let (sharded, select_only): (Vec<Workload>, Vec<Workload>) =
        settings.workloads.iter().partition(|w| w.is_sharded());
    if !select_only.is_empty() {
        run_select_only(&settings, &bindir, &select_only)?;
    }
    if !sharded.is_empty() {
        sharded::run(&settings, &bindir, &sharded)?;
    }
    if settings.scatter {
        scatter::run(&settings)?;
    }
    Ok(())
}

/// The pooling issue's workloads: `-S` on the pgbench tables, direct vs the proxies.
fn run_select_only(
    settings: &Settings,
    bindir: &Path,
    workloads: &[Workload],
) -> Result<(), BenchError> {
    let topology = Topology::builder()
        // The default 32MB would not hold scale 10; more keeps `-S` in memory.
        .conf("shared_buffers = '256MB'")
        .conf("max_connections = 200")
        .build()?;
    let primary = &topology.shards[0].primary;
    let pg_version = primary.sql("postgres", "SHOW server_version")?;
    let pgbench = Pgbench::new(bindir.join("pgbench"), &topology);

    eprintln!("initialising pgbench tables (scale {SCALE}) on the primary ...");
    pgbench.initialise(primary.port(), SCALE)?;

    let mut targets = vec![Target::new(report::BASELINE, primary.port())];
    let mut proxies = Vec::new();
    let mut bouncers = Vec::new();
    let mut relays = Vec::new();
    let mut muxes = Vec::new();
    let bouncer_bin = pgbouncer::find();
    for &backend in &settings.backends {
        let (sg_name, pgb_name, relay_name) = match backend {
            Backend::Tcp => ("shardgate", "pgbouncer", "relay"),
            Backend::Unix => ("shardgate-unix", "pgbouncer-unix", "relay-unix"),
        };
        if settings.relay {
            let relay = relay::Relay::start(primary.port(), primary.socket_dir(), backend)?;
            targets.push(Target::proxy(relay_name, relay.port(), Some(relay.pid())));
            relays.push(relay);
        }
        if settings.mux > 0 && matches!(backend, Backend::Tcp) {
            let mux = mux::Mux::start(primary.port(), topology.database(), settings.mux)?;
            targets.push(Target::proxy("mux", mux.port(), Some(mux.pid())));
            muxes.push(mux);
        }
        let proxy = shardgate::Shardgate::start_over(&topology, POOL_SIZE, backend, 0)?;
        targets.push(Target::proxy(sg_name, proxy.port(), Some(proxy.pid())));
        proxies.push(proxy);
        if settings.multiplex > 0 && matches!(backend, Backend::Tcp) {
            let proxy = shardgate::Shardgate::start_over(
                &topology,
                POOL_SIZE,
                backend,
                settings.multiplex,
            )?;
            targets.push(Target::proxy(
                "shardgate-mux",
                proxy.port(),
                Some(proxy.pid()),
            ));
            proxies.push(proxy);
        }
        if let Some(bin) = &bouncer_bin {
            let b = pgbouncer::Pgbouncer::start(bin, &topology, POOL_SIZE, backend)?;
            targets.push(Target::proxy(pgb_name, b.port(), b.pid()));
            bouncers.push(b);
        }
    }
    let bouncer = bouncers.first();

    print_header(settings, workloads, &pg_version, bouncer, targets.len());
    warm_up(
        &pgbench,
        &targets,
        Workload::Simple,
        Script::SelectOnly,
        |_, _| {},
    );
    let measurements = measure(
        &pgbench,
        &targets,
        workloads,
        Script::SelectOnly,
        settings,
        |_, _| {},
    );
    let names: Vec<&str> = targets.iter().map(|t| t.name).collect();
    println!();
    print!("{}", report::table(&measurements, workloads, &names));
    drop(bouncers);
    drop(proxies);
    drop(relays);
    drop(muxes);
    Ok(())
}

/// An untimed run of `workload` per target, so caches and pools are warm for round one. Its
/// outcome goes only to `seen` (with the target's index): a failure shows again, with its
/// message, in the measured runs.
fn warm_up(
    pgbench: &Pgbench,
    targets: &[Target],
    workload: Workload,
    script: Script<'_>,
    mut seen: impl FnMut(usize, &RunOutcome),
) {
    for (i, target) in targets.iter().enumerate() {
        seen(i, &pgbench.run(target, workload, script, WARMUP));
    }
}

/// Every workload for `settings.rounds` rounds over all targets, logged as it goes; each
/// outcome is also shown to `seen` with its target's index.
fn measure(
    pgbench: &Pgbench,
    targets: &[Target],
    workloads: &[Workload],
    script: Script<'_>,
    settings: &Settings,
    mut seen: impl FnMut(usize, &RunOutcome),
) -> Measurements {
    let mut measurements = Measurements::default();
    let duration = Duration::from_secs(settings.seconds);
    for &workload in workloads {
        for round in 0..settings.rounds {
            // Rotating the starting target each round keeps any one of them from always
            // running right after the same neighbour.
            for i in 0..targets.len() {
                let index = (round + i) % targets.len();
                let target = &targets[index];
                let before = target.proxy_pid.and_then(cpu::read);
                let outcome = pgbench.run(target, workload, script, duration);
                let after = target.proxy_pid.and_then(cpu::read);
                let cpu = cpu::per_transaction(before, after, &outcome);
                log_run(workload, target, round, &outcome, cpu);
                seen(index, &outcome);
                measurements.record(workload, target.name, outcome, cpu);
            }
        }
    }
    measurements
}

fn print_header(
    settings: &Settings,
    workloads: &[Workload],
    pg_version: &str,
    bouncer: Option<&pgbouncer::Pgbouncer>,
    targets: usize,
) {
    let runs = workloads.len() * settings.rounds * targets;
    println!("PostgreSQL: {pg_version}");
    let backends: Vec<&str> = settings
        .backends
        .iter()
        .map(|b| match b {
            Backend::Tcp => "loopback TCP",
            Backend::Unix => "Unix socket (targets named -unix)",
        })
        .collect();
    println!("proxies reach PostgreSQL over: {}", backends.join(" and "));
    match bouncer {
        Some(b) => println!("pgbouncer: {}", b.version()),
        None => println!(
            "pgbouncer: not installed, skipped (apt-get install pgbouncer to compare with it)"
        ),
    }
    println!(
        "scale {SCALE}, pool size {POOL_SIZE}, {} round(s) of {} s per workload and target; \
         {runs} runs, about {} min",
        settings.rounds,
        settings.seconds,
        (runs as u64 * settings.seconds).div_ceil(60)
    );
}

fn log_run(
    workload: Workload,
    target: &Target,
    round: usize,
    outcome: &RunOutcome,
    cpu: Option<CpuPerTxn>,
) {
    match outcome {
        Ok(s) => eprintln!(
            "{:<16} {:<12} round {}: {:>10.1} tps, {:.3} ms{}",
            workload.name(),
            target.name,
            round + 1,
            s.tps,
            s.latency_ms,
            cpu.map_or_else(String::new, |c| format!(
                ", proxy cpu {:.1}+{:.1} us/txn",
                c.user_us, c.system_us
            ))
        ),
        Err(why) => eprintln!(
            "{:<16} {:<12} round {}: FAILED: {why}",
            workload.name(),
            target.name,
            round + 1
        ),
    }
}

/// The first existing file called `name` in `$PATH` or in `extra` directories.
pub(crate) fn find_executable(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Waits until `child` listens on loopback `port`, for at most `timeout`. A failure names
/// `what` and ends with `log()`, where to look for why.
pub(crate) fn wait_listening(
    child: &mut Child,
    port: u16,
    what: &'static str,
    timeout: Duration,
    log: &dyn Fn() -> String,
) -> Result<(), BenchError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Err(BenchError::NotReady {
                what,
                detail: format!("exited with {status}{}", log()),
            });
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(BenchError::NotReady {
        what,
        detail: format!("not listening on {addr} after {timeout:?}{}", log()),
    })
}
