//! The sharding workloads (issue #4): a custom pgbench script of point SELECTs and UPDATEs by
//! key, through shardgate over two shards, against the same script directly on one primary
//! holding every row. Two more targets split the difference into its parts: shardgate over
//! that one primary without a `sharding` section (the proxy's relay cost), and with one (plus
//! the per-statement shard planning).
//!
//! Rows are placed by the public hash rule computed here, independently of shardgate. Every
//! transaction adds 1 to one row's balance, so afterwards each topology's balances must add up
//! to the transactions pgbench reported for it: a statement sent to a shard that does not hold
//! its row updates nothing and still "succeeds", and only this check would notice.

use std::fmt::Write as _;
use std::path::Path;

use shardgate_testkit::Topology;
use xxhash_rust::xxh3::xxh3_64;

use crate::pgbench::{Pgbench, RunOutcome, Script, Target, Workload};
use crate::report::{self, BASELINE};
use crate::shardgate::Shardgate;
use crate::{measure, warm_up, BenchError, Settings, POOL_SIZE, WARMUP};

/// Rows in `accounts`, keys `1..=ROWS`.
const ROWS: i64 = 100_000;
/// Shards of the sharded topology. No replicas: on a 2-core machine they would only split the
/// same cores further, and this workload writes on every transaction anyway.
const SHARDS: usize = 2;
/// `sharding.logical_shards`.
const LOGICAL_SHARDS: u64 = 1024;
/// Keys per INSERT: at about 7 bytes a key this keeps each `psql -c` argument well under
/// Linux's 128 KiB limit on one argument.
const INSERT_CHUNK: usize = 10_000;

/// shardgate over the one-primary topology without and with a `sharding` section, and over
/// the two-shard topology.
const UNSHARDED: &str = "sg-unsharded";
const ONE_SHARD: &str = "sg-1shard";
const TWO_SHARDS: &str = "sg-2shards";

/// The pgbench script of the issue: one point read and one point write by key.
fn script_text() -> String {
    format!(
        "\\set id random(1, {ROWS})\n\
         SELECT balance FROM accounts WHERE id = :id;\n\
         UPDATE accounts SET balance = balance + 1 WHERE id = :id;\n"
    )
}

/// The `sharding:` section both shardgates run with; on one shard it routes every key to s0
/// but still analyzes every statement, which is the point of the `sg-1shard` target.
fn sharding_yaml() -> String {
    format!("sharding:\n  logical_shards: {LOGICAL_SHARDS}\n  tables: {{accounts: id}}\n")
}

/// The shard of `id` under the default map: `floor(logical * shards / logical_shards)` with
/// `logical = xxh3_64(i64 little-endian bytes) % logical_shards`.
pub(crate) fn shard_of(id: i64, shards: usize) -> usize {
    let logical = xxh3_64(&id.to_le_bytes()) % LOGICAL_SHARDS;
    (logical * shards as u64 / LOGICAL_SHARDS) as usize
}

/// Runs `workloads` (all sharding ones) and prints their table.
pub(crate) fn run(
    settings: &Settings,
    bindir: &Path,
    workloads: &[Workload],
) -> Result<(), BenchError> {
    eprintln!("sharded: starting a 1-shard and a {SHARDS}-shard topology ...");
    let one = topology(1)?;
    let two = topology(SHARDS)?;
    eprintln!("sharded: loading {ROWS} rows into each ...");
    load(&one)?;
    load(&two)?;
    let dir = tempfile::tempdir()?;
    let script_path = dir.path().join("sharded.sql");
    std::fs::write(&script_path, script_text())?;
    let script = Script::File(&script_path);

    let sg_plain = Shardgate::start(&one, POOL_SIZE)?;
    let sg_one = Shardgate::start_with(&one, POOL_SIZE, &sharding_yaml())?;
    let sg_two = Shardgate::start_with(&two, POOL_SIZE, &sharding_yaml())?;
    let targets = [
        Target::new(BASELINE, one.shards[0].primary.port()),
        Target::proxy(UNSHARDED, sg_plain.port(), Some(sg_plain.pid())),
        Target::proxy(ONE_SHARD, sg_one.port(), Some(sg_one.pid())),
        Target::proxy(TWO_SHARDS, sg_two.port(), Some(sg_two.pid())),
    ];
    let pgbench = Pgbench::new(bindir.join("pgbench"), &two);
    let pg_version = one.shards[0]
        .primary
        .sql("postgres", "SHOW server_version")?;
    print_header(settings, workloads, &pg_version, targets.len());

    let mut tally = Tally::default();
    warm_up(
        &pgbench,
        &targets,
        Workload::ShardedSimple,
        script,
        |i, o| {
            tally.add(targets[i].name, o);
        },
    );
    let measurements = measure(&pgbench, &targets, workloads, script, settings, |i, o| {
        tally.add(targets[i].name, o)
    });

    let names: Vec<&str> = targets.iter().map(|t| t.name).collect();
    println!();
    print!("{}", report::table(&measurements, workloads, &names));
    for &workload in workloads {
        let tps = |target| measurements.median_tps(workload, target);
        let ratio = |a, b| match (tps(a), tps(b)) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".to_owned(),
        };
        println!(
            "{}: {ONE_SHARD} / {UNSHARDED} = {}, {TWO_SHARDS} / {ONE_SHARD} = {}",
            workload.name(),
            ratio(ONE_SHARD, UNSHARDED),
            ratio(TWO_SHARDS, ONE_SHARD),
        );
    }
    drop((sg_plain, sg_one, sg_two));
    let checks = [
        tally.check("1-shard topology", &one, &[BASELINE, UNSHARDED, ONE_SHARD]),
        tally.check("2-shard topology", &two, &[TWO_SHARDS]),
    ];
    checks.into_iter().collect()
}

fn topology(shards: usize) -> Result<Topology, BenchError> {
    Ok(Topology::builder()
        .shards(shards)
        // 32 direct clients plus three proxies' pools on the one-primary topology.
        .conf("max_connections = 200")
        .build()?)
}

/// Creates `accounts` on every primary of `topology` and inserts each key on its shard.
fn load(topology: &Topology) -> Result<(), BenchError> {
    let db = topology.database();
    let owner = format!("\"{}\"", topology.user().replace('"', "\"\""));
    let shards = topology.shards.len();
    let mut keys: Vec<Vec<i64>> = vec![Vec::new(); shards];
    for id in 1..=ROWS {
        keys[shard_of(id, shards)].push(id);
    }
    for (shard, keys) in topology.shards.iter().zip(&keys) {
        let primary = &shard.primary;
        primary.sql(
            db,
            &format!(
                "CREATE TABLE accounts (id bigint PRIMARY KEY, balance int); \
                 ALTER TABLE accounts OWNER TO {owner}"
            ),
        )?;
        for chunk in keys.chunks(INSERT_CHUNK) {
            let mut list = String::with_capacity(chunk.len() * 7);
            for id in chunk {
                let _ = write!(list, "{id},");
            }
            list.pop();
            primary.sql(
                db,
                &format!("INSERT INTO accounts SELECT unnest('{{{list}}}'::bigint[]), 0"),
            )?;
        }
        primary.sql(db, "VACUUM ANALYZE accounts")?;
        eprintln!("  {}: {} rows", shard.name, keys.len());
    }
    Ok(())
}

/// Transactions pgbench reported per target, and whether any run failed (a failed run may
/// have updated rows it never reported).
#[derive(Debug, Default)]
struct Tally {
    transactions: Vec<(&'static str, u64)>,
    runs: Vec<(&'static str, u64)>,
    failed: u64,
}

impl Tally {
    fn add(&mut self, target: &'static str, outcome: &RunOutcome) {
        bump(&mut self.runs, target, 1);
        match outcome {
            Ok(sample) => bump(&mut self.transactions, target, sample.transactions),
            Err(_) => self.failed += 1,
        }
    }

    fn sum(list: &[(&'static str, u64)], targets: &[&str]) -> u64 {
        list.iter()
            .filter(|(t, _)| targets.contains(t))
            .map(|&(_, n)| n)
            .sum()
    }

    /// Compares the balances on `topology` with the transactions run against `targets`.
    /// pgbench may stop a client at `-T` with its UPDATE already sent but not counted, so up
    /// to one transaction per client and run may be missing from its report.
    fn check(&self, label: &str, topology: &Topology, targets: &[&str]) -> Result<(), BenchError> {
        let expected = Self::sum(&self.transactions, targets);
        let slack = Self::sum(&self.runs, targets) * CLIENTS;
        let mut found = 0;
        let mut per_shard = Vec::new();
        for shard in &topology.shards {
            let sum = shard.primary.sql(
                topology.database(),
                "SELECT coalesce(sum(balance), 0) FROM accounts",
            )?;
            let sum: u64 = sum.parse().map_err(|_| BenchError::Tool {
                command: "SELECT sum(balance) FROM accounts".into(),
                detail: format!("unexpected output {sum:?}"),
            })?;
            found += sum;
            per_shard.push(format!("{} {sum}", shard.name));
        }
        println!(
            "check {label}: {found} rows updated ({}), pgbench reported {expected} transactions",
            per_shard.join(", ")
        );
        if self.failed > 0 {
            println!("  not compared: {} run(s) failed", self.failed);
            return Ok(());
        }
        if found < expected || found > expected + slack {
            return Err(BenchError::LostUpdates {
                topology: label.to_owned(),
                found,
                expected,
            });
        }
        Ok(())
    }
}

/// Clients per sharding run (`-c`), for the slack in [`Tally::check`].
const CLIENTS: u64 = 32;

fn bump(list: &mut Vec<(&'static str, u64)>, target: &'static str, n: u64) {
    match list.iter_mut().find(|(t, _)| *t == target) {
        Some((_, total)) => *total += n,
        None => list.push((target, n)),
    }
}

fn print_header(settings: &Settings, workloads: &[Workload], pg_version: &str, targets: usize) {
    let runs = workloads.len() * settings.rounds * targets;
    println!("PostgreSQL: {pg_version}");
    println!(
        "sharded: accounts with {ROWS} rows; {BASELINE} = one primary with every row, \
         {UNSHARDED} = shardgate over it without a sharding section, {ONE_SHARD} = with one, \
         {TWO_SHARDS} = shardgate over {SHARDS} shards (logical_shards {LOGICAL_SHARDS}, no \
         replicas); pool size {POOL_SIZE} per node"
    );
    println!(
        "{} round(s) of {} s per workload and target; {runs} runs, about {} min",
        settings.rounds,
        settings.seconds,
        (runs as u64 * settings.seconds + targets as u64 * WARMUP.as_secs()).div_ceil(60)
    );
}
