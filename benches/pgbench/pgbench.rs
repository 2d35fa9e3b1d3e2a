//! Driving the `pgbench` tool: the workloads, one timed run against one target, and reading
//! throughput and latency from its report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use shardgate_testkit::Topology;

use crate::BenchError;

/// One pgbench configuration from the issues' benchmark plans: the pooling issue's are
/// select-only (`-S`), the sharding issue's run a custom script of point reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    /// 32 clients, simple query protocol.
    Simple,
    /// 32 clients, extended protocol with unnamed statements.
    Extended,
    /// 32 clients, named prepared statements reused across transactions.
    Prepared,
    /// 1 client, simple protocol: the round-trip time a proxy adds.
    Latency,
    /// The sharding script, 32 clients, simple query protocol.
    ShardedSimple,
    /// The sharding script, 32 clients, named prepared statements.
    ShardedPrepared,
}

impl Workload {
    /// What runs when `SG_BENCH_WORKLOADS` is unset.
    pub(crate) const DEFAULT: [Workload; 4] = [
        Workload::Simple,
        Workload::Extended,
        Workload::Prepared,
        Workload::Latency,
    ];

    const ALL: [Workload; 6] = [
        Workload::Simple,
        Workload::Extended,
        Workload::Prepared,
        Workload::Latency,
        Workload::ShardedSimple,
        Workload::ShardedPrepared,
    ];

    /// The name that selects every sharding workload.
    pub(crate) const SHARDED_GROUP: &'static str = "sharded";

    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Simple => "simple",
            Workload::Extended => "extended",
            Workload::Prepared => "prepared",
            Workload::Latency => "latency",
            Workload::ShardedSimple => "sharded-simple",
            Workload::ShardedPrepared => "sharded-prepared",
        }
    }

    /// The workloads `name` selects: one by its own name, or all sharding ones by
    /// [`Workload::SHARDED_GROUP`].
    pub(crate) fn from_name(name: &str) -> Option<Vec<Workload>> {
        if name == Self::SHARDED_GROUP {
            return Some(Self::ALL.into_iter().filter(|w| w.is_sharded()).collect());
        }
        Self::ALL
            .into_iter()
            .find(|w| w.name() == name)
            .map(|w| vec![w])
    }

    /// Runs the sharding script on the sharding setup rather than `-S` on the pgbench tables.
    pub(crate) fn is_sharded(self) -> bool {
        matches!(self, Workload::ShardedSimple | Workload::ShardedPrepared)
    }

    fn args(self) -> [&'static str; 6] {
        let (clients, threads, mode) = match self {
            Workload::Simple | Workload::ShardedSimple => ("32", "2", "simple"),
            Workload::Extended => ("32", "2", "extended"),
            Workload::Prepared | Workload::ShardedPrepared => ("32", "2", "prepared"),
            Workload::Latency => ("1", "1", "simple"),
        };
        ["-c", clients, "-j", threads, "-M", mode]
    }
}

/// What each pgbench transaction runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Script<'a> {
    /// The built-in select-only script (`-S`) over the `pgbench -i` tables.
    SelectOnly,
    /// A custom script file (`-f`).
    File(&'a Path),
}

/// Somewhere pgbench connects to: PostgreSQL itself or a proxy in front of it, on loopback.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) name: &'static str,
    port: u16,
    /// The proxy's process, whose CPU time each run is charged with; `None` for PostgreSQL.
    pub(crate) proxy_pid: Option<u32>,
}

impl Target {
    pub(crate) fn new(name: &'static str, port: u16) -> Target {
        Target {
            name,
            port,
            proxy_pid: None,
        }
    }

    /// A proxy on `port` running as process `pid` (`None` when its pid is unknown).
    pub(crate) fn proxy(name: &'static str, port: u16, pid: Option<u32>) -> Target {
        Target {
            name,
            port,
            proxy_pid: pid,
        }
    }
}

/// What one successful run reported.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// Transactions per second, without the initial connection time.
    pub(crate) tps: f64,
    /// pgbench's "latency average", in milliseconds.
    pub(crate) latency_ms: f64,
    /// Transactions completed ("number of transactions actually processed").
    pub(crate) transactions: u64,
}

/// A run either yields a sample or the reason it failed, shown in the report.
pub(crate) type RunOutcome = Result<Sample, String>;

/// The pgbench binary plus the credentials every target accepts.
#[derive(Debug)]
pub(crate) struct Pgbench {
    bin: PathBuf,
    user: String,
    password: String,
    database: String,
}

impl Pgbench {
    /// Uses `bin` (the server's own pgbench, so versions match) with the topology's user.
    pub(crate) fn new(bin: PathBuf, topology: &Topology) -> Pgbench {
        Pgbench {
            bin,
            user: topology.user().to_owned(),
            password: topology.password().to_owned(),
            database: topology.database().to_owned(),
        }
    }

    /// `pgbench -i -s scale` straight against PostgreSQL on `port`.
    pub(crate) fn initialise(&self, port: u16, scale: &str) -> Result<(), BenchError> {
        let out = self
            .command(port)
            .args(["-i", "-q", "-s", scale])
            .arg(&self.database)
            .output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(BenchError::Tool {
                command: format!("pgbench -i -s {scale}"),
                detail: first_error_line(&out),
            })
        }
    }

    /// One timed run of `workload` with `script` against `target`. `-n` skips pgbench's
    /// VACUUM, which the setup already did and which would only add noise to each run (and
    /// which needs the `pgbench -i` tables, absent from the sharding setup).
    pub(crate) fn run(
        &self,
        target: &Target,
        workload: Workload,
        script: Script<'_>,
        duration: Duration,
    ) -> RunOutcome {
        let seconds = duration.as_secs().max(1).to_string();
        let mut cmd = self.command(target.port);
        cmd.args(["-n", "-T", &seconds]);
        match script {
            Script::SelectOnly => cmd.arg("-S"),
            Script::File(path) => cmd.arg("-f").arg(path),
        };
        let out = cmd
            .args(workload.args())
            .arg(&self.database)
            .output()
            .map_err(|e| format!("could not run {}: {e}", self.bin.display()))?;
        if !out.status.success() {
            return Err(first_error_line(&out));
        }
        parse_report(&String::from_utf8_lossy(&out.stdout))
            .ok_or_else(|| "no tps/latency in pgbench output".to_owned())
    }

    fn command(&self, port: u16) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", &self.user])
            .env("PGPASSWORD", &self.password)
            // Same handshake for every target: none of them offers TLS or GSS here, and
            // libpq would otherwise spend a round trip asking each one.
            .env("PGSSLMODE", "disable")
            .env("PGGSSENCMODE", "disable");
        cmd
    }
}

/// Reads `tps = ...`, `latency average = ... ms` and the transaction count from pgbench's
/// summary.
fn parse_report(stdout: &str) -> Option<Sample> {
    let mut tps = None;
    let mut latency_ms = None;
    let mut transactions = None;
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("number of transactions actually processed: ") {
            // `N`, or `N/M` when run with -t.
            transactions = rest.split('/').next()?.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("tps = ") {
            tps = rest.split_whitespace().next()?.parse().ok();
        } else if let Some(rest) = line.strip_prefix("latency average = ") {
            latency_ms = rest.strip_suffix(" ms")?.trim().parse().ok();
        }
    }
    Some(Sample {
        tps: tps?,
        latency_ms: latency_ms?,
        transactions: transactions?,
    })
}

/// The most telling line of a failed run: the first error pgbench printed, else its last line.
fn first_error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| l.contains("ERROR") || l.contains("FATAL") || l.contains("error"))
        .or(lines.last())
        .map_or_else(
            || format!("exit status {}", out.status),
            |l| (*l).to_owned(),
        )
}
