//! The scatter-gather workloads (issue #5, `SG_BENCH_WORKLOADS=scatter`): keyless SELECTs on
//! `ev(id bigint primary key, v int, t text)` with 1,000,000 rows, through shardgate over two
//! shards, against the same query on one server holding every row:
//!
//! - `SELECT count(*) FROM ev` (a merged aggregate),
//! - `SELECT id, v FROM ev ORDER BY v, id LIMIT 100` (a k-way merge cut short),
//! - `SELECT id, v, t FROM ev ORDER BY v, id` read to the end while shardgate's resident memory
//!   is sampled: the issue bounds it at 64 MiB for this 1M-row ordered scatter.
//!
//! A tokio-postgres client loop drives them rather than pgbench: it times every query (so the
//! median is a real one, not a median of per-run averages), checks every answer against the
//! single server's, and streams the full result row by row as a driver would (psql would hold
//! all of it). Rows are placed by the public hash rule computed here, independently of
//! shardgate, and loaded with COPY straight into each primary.

use std::fmt::Write as _;
use std::pin::pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use shardgate_testkit::Topology;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::rss::{self, RssSampler};
use crate::shardgate::Shardgate;
use crate::{sharded, BenchError, Settings, POOL_SIZE};

mod report;

use report::{Full, Timed};

/// Rows in `ev`, keys `1..=ROWS`.
const ROWS: i64 = 1_000_000;
/// Distinct values of `v`: about ten rows share each, so the `id` tie-break matters.
const V_VALUES: u64 = 100_000;
const SHARDS: usize = 2;
/// Rows per COPY data message.
const COPY_CHUNK: usize = 10_000;
/// The bound on shardgate's resident memory during the full ordered scatter.
const RSS_LIMIT_MIB: f64 = 64.0;
/// Concurrent clients of the throughput runs; the latency runs use one.
const CLIENT_COUNTS: [usize; 2] = [1, 4];
/// The stalled reader's pause, and after how many rows it comes: long enough for every
/// socket buffer between the shards and the client to fill many times over.
const STALL: Duration = Duration::from_secs(3);
const STALL_AFTER: i64 = 1_000;

const COUNT: &str = "SELECT count(*) FROM ev";
const TOP: &str = "SELECT id, v FROM ev ORDER BY v, id LIMIT 100";
const FULL: &str = "SELECT id, v, t FROM ev ORDER BY v, id";

/// The two targets: one server with every row, and shardgate over two shards.
const DIRECT: &str = "direct";
const SCATTER: &str = "sg-2shards";

/// `v` of row `id`: spread by a hash so neither side's physical order matches `ORDER BY v`.
fn v_of(id: i64) -> i64 {
    (xxh3_64_with_seed(&id.to_le_bytes(), 5) % V_VALUES) as i64
}

fn t_of(id: i64) -> String {
    format!(
        "event {id:07} {:016x}",
        xxh3_64_with_seed(&id.to_le_bytes(), 9)
    )
}

fn tool(command: &str) -> impl FnOnce(tokio_postgres::Error) -> BenchError + '_ {
    move |e| BenchError::Tool {
        command: command.to_owned(),
        detail: e.to_string(),
    }
}

fn mismatch(detail: String) -> BenchError {
    BenchError::Tool {
        command: "scatter check".to_owned(),
        detail,
    }
}

/// Runs the scatter workloads and prints their tables.
pub(crate) fn run(settings: &Settings) -> Result<(), BenchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    eprintln!("scatter: starting a 1-node and a {SHARDS}-shard topology ...");
    let one = topology(1, "shared_buffers = '256MB'")?;
    let two = topology(SHARDS, "shared_buffers = '128MB'")?;
    let pg_version = one.shards[0]
        .primary
        .sql("postgres", "SHOW server_version")?;
    let yaml = "sharding:\n  logical_shards: 1024\n  tables: {ev: id}\n";
    runtime.block_on(async {
        eprintln!("scatter: loading {ROWS} rows into each ...");
        load(&one).await?;
        load(&two).await?;
        let proxy = Shardgate::start_with(&two, POOL_SIZE, yaml)?;
        let ports = [
            (DIRECT, one.shards[0].primary.port()),
            (SCATTER, proxy.port()),
        ];
        println!("PostgreSQL: {pg_version}");
        println!(
            "scatter: ev with {ROWS} rows; {DIRECT} = one server with every row, {SCATTER} = \
             shardgate over {SHARDS} shards (no replicas), pool size {POOL_SIZE}; {} round(s) \
             of {} s per query, client count and target",
            settings.rounds, settings.seconds
        );
        check_answers(&one, &ports).await?;
        let mut timed = Vec::new();
        for (name, sql) in [("count(*)", COUNT), ("ORDER BY LIMIT 100", TOP)] {
            for clients in CLIENT_COUNTS {
                timed.extend(measure(settings, &one, &ports, name, sql, clients).await?);
            }
        }
        print!("{}", report::timed_table(&timed));
        drop(proxy);

        // A fresh proxy, so its lifetime peak (VmHWM) covers the ordered scatter alone.
        let proxy = Shardgate::start_with(&two, POOL_SIZE, yaml)?;
        let full = full_scatter(settings, &one, ports[0].1, &proxy).await?;
        print!("{}", report::full_table(&full, RSS_LIMIT_MIB));
        Ok(())
    })
}

fn topology(shards: usize, memory: &str) -> Result<Topology, BenchError> {
    Ok(Topology::builder()
        .shards(shards)
        .replicas(0)
        .conf(memory)
        .build()?)
}

async fn connect(topology: &Topology, port: u16) -> Result<Client, BenchError> {
    let conn = format!(
        "host=127.0.0.1 port={port} user={} password={} dbname={}",
        topology.user(),
        topology.password(),
        topology.database()
    );
    let (client, connection) = tokio_postgres::connect(&conn, NoTls)
        .await
        .map_err(tool("connect"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Creates `ev` on every primary of `topology` and COPYs each row to its shard.
async fn load(topology: &Topology) -> Result<(), BenchError> {
    let shards = topology.shards.len();
    let owner = format!("\"{}\"", topology.user().replace('"', "\"\""));
    let mut data: Vec<Vec<String>> = vec![Vec::new(); shards];
    let mut counts = vec![0usize; shards];
    for id in 1..=ROWS {
        let s = sharded::shard_of(id, shards);
        if counts[s].is_multiple_of(COPY_CHUNK) {
            data[s].push(String::with_capacity(COPY_CHUNK * 48));
        }
        counts[s] += 1;
        if let Some(chunk) = data[s].last_mut() {
            let _ = writeln!(chunk, "{id}\t{}\t{}", v_of(id), t_of(id));
        }
    }
    for ((shard, chunks), rows) in topology.shards.iter().zip(data).zip(counts) {
        let primary = &shard.primary;
        primary.sql(
            topology.database(),
            &format!(
                "CREATE TABLE ev (id bigint PRIMARY KEY, v int, t text); \
                 ALTER TABLE ev OWNER TO {owner}"
            ),
        )?;
        let client = connect(topology, primary.port()).await?;
        let copy = "COPY ev (id, v, t) FROM STDIN";
        let sink = client.copy_in(copy).await.map_err(tool(copy))?;
        let mut sink = pin!(sink);
        for chunk in chunks {
            sink.send(Bytes::from(chunk)).await.map_err(tool(copy))?;
        }
        sink.as_mut().finish().await.map_err(tool(copy))?;
        primary.sql(topology.database(), "VACUUM ANALYZE ev")?;
        eprintln!("  {}: {rows} rows", shard.name);
    }
    Ok(())
}

/// The rows of a simple query's reply, as text.
async fn rows(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, BenchError> {
    let reply = client.simple_query(sql).await.map_err(tool(sql))?;
    Ok(reply
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect())
}

/// The timed queries answer the same through shardgate as on the single server.
async fn check_answers(topology: &Topology, ports: &[(&str, u16)]) -> Result<(), BenchError> {
    let direct = connect(topology, ports[0].1).await?;
    let scatter = connect(topology, ports[1].1).await?;
    for sql in [COUNT, TOP] {
        let (want, got) = (rows(&direct, sql).await?, rows(&scatter, sql).await?);
        if want != got {
            return Err(mismatch(format!("{sql}: shardgate's answer differs")));
        }
    }
    let count = rows(&direct, COUNT).await?;
    if count != [[Some(ROWS.to_string())]] {
        return Err(mismatch(format!("{COUNT} gave {count:?}")));
    }
    Ok(())
}

/// `sql` on `clients` connections per target for `settings.seconds`, round by round with the
/// targets taking turns; every query's latency is kept.
async fn measure(
    settings: &Settings,
    topology: &Topology,
    ports: &[(&'static str, u16)],
    name: &'static str,
    sql: &'static str,
    clients: usize,
) -> Result<Vec<Timed>, BenchError> {
    let mut timed: Vec<Timed> = ports
        .iter()
        .map(|&(target, _)| Timed::new(name, clients, target))
        .collect();
    let mut conns = Vec::new();
    for &(_, port) in ports {
        let mut list = Vec::new();
        for _ in 0..clients {
            let client = connect(topology, port).await?;
            client.simple_query(sql).await.map_err(tool(sql))?;
            list.push(client);
        }
        conns.push(list);
    }
    let duration = Duration::from_secs(settings.seconds);
    for round in 0..settings.rounds {
        for i in 0..ports.len() {
            let index = (round + i) % ports.len();
            let start = Instant::now();
            let deadline = start + duration;
            let loops = conns[index].iter().map(|c| async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    c.simple_query(sql).await.map_err(tool(sql))?;
                    latencies.push(t.elapsed());
                }
                Ok::<_, BenchError>(latencies)
            });
            let per_client = futures_util::future::try_join_all(loops).await?;
            let wall = start.elapsed();
            let t = &mut timed[index];
            t.add_round(per_client.into_iter().flatten().collect(), wall);
            eprintln!(
                "{name:<18} -c {clients} {:<10} round {}: {:>8.1} qps",
                t.target,
                round + 1,
                t.last_qps()
            );
        }
    }
    Ok(timed)
}

/// The full ordered scatter `settings.rounds` times per target (taking turns), with
/// shardgate's RSS sampled throughout.
async fn full_scatter(
    settings: &Settings,
    topology: &Topology,
    direct_port: u16,
    proxy: &Shardgate,
) -> Result<Full, BenchError> {
    let pid = proxy.pid();
    let idle_kib = rss::status_kib(pid, "VmRSS").unwrap_or(0);
    let clients = [
        connect(topology, direct_port).await?,
        connect(topology, proxy.port()).await?,
    ];
    let mut full = Full::new(idle_kib);
    let sampler = RssSampler::start(pid);
    for round in 0..settings.rounds {
        for i in 0..clients.len() {
            let index = (round + i) % clients.len();
            let took = read_ordered(&clients[index], None).await?;
            full.add(index == 1, took);
            eprintln!(
                "full ordered scatter {:<10} round {}: {:.3} s",
                [DIRECT, SCATTER][index],
                round + 1,
                took.as_secs_f64()
            );
        }
    }
    let (peak_kib, samples) = sampler.finish();
    full.set_peak(peak_kib, samples, rss::status_kib(pid, "VmHWM"));
    // A fast reader never lets rows pile up; one that stops shows whether shardgate stops
    // reading the shards too (back-pressure) or buffers what they keep sending.
    let sampler = RssSampler::start(pid);
    let took = read_ordered(&clients[1], Some(STALL)).await?;
    let (stalled_kib, _) = sampler.finish();
    eprintln!(
        "full ordered scatter, stalled reader: {:.3} s",
        took.as_secs_f64()
    );
    full.set_stalled(stalled_kib, took);
    Ok(full)
}

/// Streams [`FULL`] to the end, checking that every row is there once, in order, intact;
/// with `stall`, the client stops reading that long after [`STALL_AFTER`] rows.
async fn read_ordered(client: &Client, stall: Option<Duration>) -> Result<Duration, BenchError> {
    let start = Instant::now();
    let stream = client.simple_query_raw(FULL).await.map_err(tool(FULL))?;
    let mut stream = pin!(stream);
    let mut last: Option<(i64, i64)> = None;
    let mut count = 0i64;
    while let Some(message) = stream.next().await {
        let SimpleQueryMessage::Row(row) = message.map_err(tool(FULL))? else {
            continue;
        };
        let text = |i| row.try_get(i).ok().flatten();
        let field = |i| text(i).and_then(|s: &str| s.parse::<i64>().ok());
        let (Some(id), Some(v)) = (field(0), field(1)) else {
            return Err(mismatch(format!("row {count}: bad id or v")));
        };
        let in_order = last.is_none_or(|prev| prev < (v, id));
        if !in_order
            || !(1..=ROWS).contains(&id)
            || v != v_of(id)
            || text(2) != Some(t_of(id).as_str())
        {
            return Err(mismatch(format!(
                "row {count} ({id}, {v}) out of order or wrong"
            )));
        }
        last = Some((v, id));
        count += 1;
        if let (Some(pause), STALL_AFTER) = (stall, count) {
            tokio::time::sleep(pause).await;
        }
    }
    if count != ROWS {
        return Err(mismatch(format!("{FULL} returned {count} rows")));
    }
    Ok(start.elapsed())
}
