//! Scatter-gather, differentially (issue 5): the same seeded rows are loaded through shardgate
//! into two shards and directly into one plain PostgreSQL server, and every query runs both
//! ways, with the simple protocol and the extended one. shardgate must return exactly the
//! reference's answer (columns, types, row count, every value, the order ORDER BY fixes) or
//! refuse with 0A000; any other outcome fails. Keyless UPDATE/DELETE, a shard dying under a
//! scatter, and the "may refuse" shapes are covered too.

#[path = "scatter_diff/binary.rs"]
mod binary;
#[path = "scatter_diff/collation.rs"]
mod collation;
#[path = "scatter_diff/compare.rs"]
mod compare;
#[path = "scatter_diff/corpus.rs"]
mod corpus;
#[path = "scatter_diff/data.rs"]
mod data;
#[path = "scatter_diff/edges.rs"]
mod edges;
#[path = "scatter_diff/failures.rs"]
mod failures;
#[path = "scatter_diff/mended.rs"]
mod mended;
#[path = "scatter_diff/shard_faults.rs"]
mod shard_faults;
mod support;
#[path = "scatter_diff/txn_begin.rs"]
mod txn_begin;
#[path = "scatter_diff/writes.rs"]
mod writes;

use std::time::{Duration, Instant};

use compare::{check, run_simple, Order, Param, Query, Tally};
use corpus::{
    distinct_query, group_query, order_query, random_agg, random_filter, random_having, some_cols,
    Key, Limit, FILTERS, GROUPABLE, ORDERED, SORTABLE, SUMMABLE,
};
use data::Rng;
use shardgate_testkit::Topology;
use support::{connect, direct_conn_str, Proxy, ProxyOptions};
use tokio::time::timeout;
use tokio_postgres::Client;

/// Rows loaded into `ev`.
const ROWS: usize = 3000;
/// Default seed of the rows, the corpus and the random cases.
const SEED: u64 = 0x5ca7_7e12;

/// The seed in force: `SCATTER_SEED` (decimal) replays or explores another one.
fn seed() -> u64 {
    std::env::var("SCATTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED)
}
/// Both sessions' TimeZone: an offset that is not a whole hour, so a timestamptz printed in
/// the wrong zone shows.
const TIME_ZONE: &str = "SET TimeZone = 'Pacific/Chatham'";
/// Bound on each whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(150);

/// Shards (topology A, through shardgate) and the reference server (topology B).
struct Env {
    a: Topology,
    proxy: Proxy,
    _b: Topology,
    /// Through shardgate.
    pa: Client,
    /// Straight to the reference server.
    pb: Client,
}

/// `ev` (and `ev2`, keyed by another column, for joins) sharded by key.
fn options() -> ProxyOptions {
    ProxyOptions {
        extra_yaml: "sharding:\n  logical_shards: 1024\n  tables: {ev: id, ev2: k}\n".into(),
        ..ProxyOptions::default()
    }
}

/// Both topologies, `ev` created and loaded with `rows` seeded rows on both sides, `ev2` too.
async fn env(rows: usize, trust: bool) -> Env {
    let a = Topology::builder()
        .shards(2)
        .replicas(0)
        .build()
        .expect("topology A");
    let b = Topology::builder().build().expect("topology B");
    let proxy = if trust {
        support::start_trust(&a, options())
    } else {
        Proxy::start_with(&a, options())
    };
    let pa = proxy.connect(&a).await;
    let pb = connect(&direct_conn_str(&b, &b.shards[0].primary))
        .await
        .expect("reference");
    let ddl = format!(
        "{}; CREATE TABLE ev2 (k bigint NOT NULL, id bigint, note text)",
        data::SCHEMA
    );
    for c in [&pa, &pb] {
        c.batch_execute(TIME_ZONE).await.expect("TimeZone");
        c.batch_execute(&ddl).await.expect("schema");
    }
    let values = data::rows(seed(), rows);
    for sql in data::inserts("ev", &data::COLUMNS.join(", "), &values, 250) {
        let got = run_simple(&pa, &sql).await.expect("load through shardgate");
        let want = run_simple(&pb, &sql).await.expect("load reference");
        assert_eq!(got.count, want.count, "INSERT counts");
    }
    let ev2: Vec<String> = (0..rows / 4)
        .map(|i| format!("({}, {}, 'n{i}')", i * 3, (i as i64 - 100) * 7))
        .collect();
    for sql in data::inserts("ev2", "k, id, note", &ev2, 250) {
        run_simple(&pa, &sql)
            .await
            .expect("load ev2 through shardgate");
        run_simple(&pb, &sql).await.expect("load ev2 reference");
    }
    Env {
        a,
        proxy,
        _b: b,
        pa,
        pb,
    }
}

/// The corpus: hundreds of queries from every template.
fn corpus(seed: u64) -> Vec<Query> {
    let mut rng = Rng::new(seed);
    let mut qs = vec![Query::plain("concat", "SELECT * FROM ev", Order::Set)];
    for f in FILTERS {
        qs.push(Query::plain(
            "filter",
            format!("SELECT id, t, n FROM ev {f}"),
            Order::Set,
        ));
        qs.push(Query::plain(
            "filter",
            format!("SELECT count(*) FROM ev {f}"),
            Order::Exact,
        ));
    }
    for _ in 0..15 {
        let n = 1 + usize::try_from(rng.below(5)).expect("small");
        let cols = some_cols(&mut rng, &SORTABLE, n);
        let f = *rng.pick(&FILTERS);
        qs.push(Query::plain(
            "concat",
            format!("SELECT {} FROM ev {f}", cols.join(", ")),
            Order::Set,
        ));
    }
    qs.push(Query::plain(
        "concat",
        "SELECT id, i2 + 1 AS x, upper(t) AS up, n * 2, d + 1 FROM ev WHERE g < 4",
        Order::Set,
    ));
    // One key over every sortable type, every direction and NULLS placement.
    for col in SORTABLE {
        for dir in 0..3 {
            for nulls in 0..3 {
                let cols: Vec<&'static str> = match rng.below(3) {
                    0 => vec![col],
                    1 if col != "id" => vec!["id", col],
                    _ if col != "t" => vec![col, "t"],
                    _ => vec![col, "v"],
                };
                let limit = if rng.chance(30) {
                    Limit::random(&mut rng)
                } else {
                    None
                };
                let f = (*rng.pick(&FILTERS[..6]), None);
                qs.push(order_query(
                    &mut rng,
                    "order1",
                    &cols,
                    vec![Key { col, dir, nulls }],
                    &f,
                    limit,
                ));
            }
        }
    }
    // Two or three keys, keys outside the select list, LIMIT/OFFSET.
    for i in 0..90 {
        let nk = 2 + usize::try_from(rng.below(2)).expect("small");
        let keys = some_cols(&mut rng, &SORTABLE, nk)
            .into_iter()
            .map(|c| Key::random(&mut rng, c))
            .collect();
        let nc = 1 + usize::try_from(rng.below(4)).expect("small");
        let cols = some_cols(&mut rng, &SORTABLE, nc);
        let f = random_filter(&mut rng);
        let limit = Limit::random(&mut rng);
        let cat = match limit {
            Some(l) if l.params => "limit_param",
            Some(_) => "limit",
            None if i % 2 == 0 => "orderN",
            None => "orderN",
        };
        qs.push(order_query(&mut rng, cat, &cols, keys, &f, limit));
    }
    // Aggregates without GROUP BY, over every type they take; the last filter is empty.
    for f in [FILTERS[0], FILTERS[3], FILTERS[12]] {
        for c in SUMMABLE {
            let sql = format!(
                "SELECT count(*), count({c}), sum({c}), avg({c}), min({c}), max({c}) FROM ev {f}"
            );
            qs.push(Query::plain("agg", sql, Order::Exact));
        }
        for c in ORDERED {
            let sql = format!("SELECT min({c}), max({c}), count({c}) FROM ev {f}");
            qs.push(Query::plain("agg", sql, Order::Exact));
        }
        let sql = format!("SELECT bool_and(b), bool_or(b), count(b), count(u) FROM ev {f}");
        qs.push(Query::plain("agg", sql, Order::Exact));
        for c in ["f4", "f8"] {
            let sql = format!("SELECT sum({c}), avg({c}) FROM ev {f}");
            qs.push(Query::plain("agg_float", sql, Order::Exact));
        }
    }
    // GROUP BY each groupable type, then random shapes with HAVING.
    for k in GROUPABLE {
        for ordered in [false, true] {
            let aggs: Vec<String> = (0..3).map(|_| random_agg(&mut rng)).collect();
            let limit = if ordered && rng.chance(50) {
                Limit::random(&mut rng)
            } else {
                None
            };
            qs.push(group_query(
                &mut rng,
                "group",
                &[k],
                &aggs,
                None,
                ordered,
                limit,
            ));
        }
    }
    for _ in 0..40 {
        qs.push(random_group(&mut rng, "group", 1, 30, 60));
    }
    for _ in 0..40 {
        qs.push(random_group(&mut rng, "having", 0, 100, 50));
    }
    for _ in 0..30 {
        let n = 1 + usize::try_from(rng.below(3)).expect("small");
        let cols = some_cols(&mut rng, &GROUPABLE, n);
        let ordered = rng.chance(60);
        qs.push(distinct_query(&mut rng, &cols, ordered));
    }
    qs
}

/// A random grouped query: `min_keys` or more group keys (at most `min_keys + 1`, or 2 with
/// none required), one to three aggregates, a HAVING `having_pct`% of the time, and ORDER BY
/// (maybe with LIMIT) `ordered_pct`% of the time.
fn random_group(
    rng: &mut Rng,
    label: &'static str,
    min_keys: usize,
    having_pct: u64,
    ordered_pct: u64,
) -> Query {
    let spread = if min_keys == 0 { 3 } else { 2 };
    let nk = min_keys + usize::try_from(rng.below(spread)).expect("small");
    let keys = some_cols(rng, &GROUPABLE, nk);
    let na = 1 + usize::try_from(rng.below(3)).expect("small");
    let aggs: Vec<String> = (0..na).map(|_| random_agg(rng)).collect();
    let having = rng.chance(having_pct).then(|| random_having(rng, &keys, 0));
    let ordered = rng.chance(ordered_pct);
    let limit = if ordered { Limit::random(rng) } else { None };
    group_query(rng, label, &keys, &aggs, having, ordered, limit)
}

/// Runs every query of `qs` both ways and both protocols; the tally says what happened.
async fn run_all(env: &Env, qs: &[Query]) -> Tally {
    let mut tally = Tally::default();
    for q in qs {
        check(&env.pa, &env.pb, q, &mut tally).await;
    }
    tally
}

#[tokio::test]
async fn differential_corpus() {
    timeout(TEST_TIMEOUT, async {
        let start = Instant::now();
        let env = env(ROWS, false).await;
        let loaded = start.elapsed();
        let qs = corpus(seed());
        assert!(qs.len() >= 400, "corpus of {} queries", qs.len());
        let tally = run_all(&env, &qs).await;
        println!(
            "{}  ({} queries, load {loaded:?}, total {:?})",
            tally.report("differential corpus"),
            qs.len(),
            start.elapsed()
        );
        assert!(
            tally.failures.is_empty(),
            "{}",
            tally.report("differential corpus")
        );
        assert!(
            tally.exact() > tally.refused(),
            "mostly refused: {}",
            tally.report("corpus")
        );
    })
    .await
    .expect("test timed out");
}

/// The "must merge exactly" shapes: never refused, always exact.
fn must_merge() -> Vec<Query> {
    let p = |sql: &str, ext: &str, params: Vec<Param>, order| Query {
        cat: "must",
        simple: sql.into(),
        ext: ext.into(),
        params,
        order,
    };
    let q = |sql: &str, order| Query::plain("must", sql, order);
    vec![
        q("SELECT id, t FROM ev", Order::Set),
        q("SELECT * FROM ev WHERE g = 3", Order::Set),
        q("SELECT id, i4 FROM ev ORDER BY i4 DESC NULLS LAST, id", Order::Exact),
        q("SELECT id AS k, t FROM ev ORDER BY t, k", Order::Exact),
        q("SELECT id, n FROM ev ORDER BY 2 ASC NULLS FIRST, 1 DESC", Order::Exact),
        q("SELECT id FROM ev ORDER BY f8, ts DESC, id", Order::Exact),
        q("SELECT f4 FROM ev ORDER BY f4 DESC", Order::Exact),
        q("SELECT id, u FROM ev ORDER BY u, id LIMIT 10 OFFSET 5", Order::Exact),
        p(
            "SELECT id, tz FROM ev ORDER BY tz DESC, id LIMIT 25 OFFSET 7",
            "SELECT id, tz FROM ev ORDER BY tz DESC, id LIMIT $1 OFFSET $2",
            vec![Param::I64(25), Param::I64(7)],
            Order::Exact,
        ),
        q("SELECT id, d, b FROM ev ORDER BY b, d NULLS FIRST, id", Order::Exact),
        q("SELECT t, v FROM ev ORDER BY t DESC, v", Order::Exact),
        q("SELECT id, i2, i8 FROM ev ORDER BY i2, i8 DESC, id", Order::Exact),
        q(
            "SELECT count(*), count(n), sum(i2), sum(i4), sum(i8), sum(n), min(t), max(v), \
             avg(i2), avg(i4), avg(i8), avg(n), bool_and(b), bool_or(b), min(f8), max(f4), \
             min(d), max(ts), min(tz) FROM ev",
            Order::Exact,
        ),
        q("SELECT sum(i4), count(*), count(i4), avg(n), max(t) FROM ev WHERE id < -100000000", Order::Exact),
        q("SELECT g, count(*), sum(i8), avg(i2), min(ts), max(tz) FROM ev GROUP BY g ORDER BY g", Order::Exact),
        q("SELECT g, count(*) FROM ev GROUP BY g", Order::Set),
        q(
            "SELECT b, d, count(*) FROM ev GROUP BY b, d HAVING count(*) > 1 AND NOT (max(i4) < 0) \
             OR min(t) >= 'a' ORDER BY 1, 2 LIMIT 20",
            Order::Exact,
        ),
        q("SELECT g, avg(i4) FROM ev GROUP BY g HAVING avg(i4) > 0 ORDER BY g", Order::Exact),
        q("SELECT g, sum(n) FROM ev GROUP BY g HAVING g > 2 ORDER BY 2 DESC, 1", Order::Exact),
        q("SELECT t, count(*) FROM ev GROUP BY t HAVING t > 'a' ORDER BY t", Order::Exact),
        q("SELECT u, count(*) FROM ev GROUP BY u ORDER BY count(*) DESC, u LIMIT 5", Order::Exact),
        q("SELECT DISTINCT g, b FROM ev ORDER BY g, b", Order::Exact),
        q("SELECT DISTINCT t FROM ev", Order::Set),
        q("SELECT DISTINCT d FROM ev ORDER BY d DESC LIMIT 30", Order::Exact),
        q("SELECT id, n FROM ev ORDER BY n DESC NULLS LAST, id LIMIT 50", Order::Exact),
        q("SELECT id FROM ev WHERE t = 'a''B' OR t LIKE '%''%' ORDER BY id", Order::Exact),
    ]
}

#[tokio::test]
async fn must_merge_exactly() {
    timeout(TEST_TIMEOUT, async {
        let env = env(ROWS / 2, false).await;
        let mut tally = Tally::default();
        for q in must_merge() {
            let outcomes = check(&env.pa, &env.pb, &q, &mut tally).await;
            if outcomes.contains(&false) {
                tally.failures.push(format!("refused: {}", q.simple));
            }
        }
        println!("{}", tally.report("must merge exactly"));
        assert!(
            tally.failures.is_empty(),
            "{}",
            tally.report("must merge exactly")
        );
        assert_eq!(tally.refused(), 0);
    })
    .await
    .expect("test timed out");
}

/// A random query: ORDER BY/LIMIT over random columns, or GROUP BY with random aggregates,
/// HAVING and ORDER BY/LIMIT, or DISTINCT.
fn random_query(rng: &mut Rng) -> Query {
    match rng.below(3) {
        0 => {
            let nk = 1 + usize::try_from(rng.below(3)).expect("small");
            let keys = some_cols(rng, &SORTABLE, nk)
                .into_iter()
                .map(|c| Key::random(rng, c))
                .collect();
            let nc = 1 + usize::try_from(rng.below(4)).expect("small");
            let cols = some_cols(rng, &SORTABLE, nc);
            let f = random_filter(rng);
            let limit = Limit::random(rng);
            order_query(rng, "prop_order", &cols, keys, &f, limit)
        }
        1 => {
            let nk = usize::try_from(rng.below(3)).expect("small");
            let keys = some_cols(rng, &GROUPABLE, nk);
            let na = 1 + usize::try_from(rng.below(4)).expect("small");
            let aggs: Vec<String> = (0..na).map(|_| random_agg(rng)).collect();
            let having = rng.chance(40).then(|| random_having(rng, &keys, 0));
            let ordered = rng.chance(60);
            let limit = if ordered { Limit::random(rng) } else { None };
            group_query(rng, "prop_group", &keys, &aggs, having, ordered, limit)
        }
        _ => {
            let n = 1 + usize::try_from(rng.below(3)).expect("small");
            let cols = some_cols(rng, &SORTABLE, n);
            let ordered = rng.chance(70);
            distinct_query(rng, &cols, ordered)
        }
    }
}

/// A property test: proptest generates the seeds of random ORDER BY / LIMIT / OFFSET /
/// GROUP BY / HAVING / DISTINCT combinations (`random_query`), each compared with the reference
/// server like the corpus. A failure prints (and proptest shrinks to) the seed that replays it.
#[test]
fn random_combinations() {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let env = rt.block_on(env(ROWS / 2, false));
    let started = Instant::now();
    let mut runner = TestRunner::new(Config {
        cases: 40,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::prelude::any::<u64>(), |seed| {
        if started.elapsed() > TEST_TIMEOUT {
            return Ok(());
        }
        let q = random_query(&mut Rng::new(seed));
        let mut tally = Tally::default();
        rt.block_on(async {
            timeout(TEST_TIMEOUT, check(&env.pa, &env.pb, &q, &mut tally))
                .await
                .map_err(|_| TestCaseError::fail("timed out"))
        })?;
        if tally.failures.is_empty() {
            Ok(())
        } else {
            Err(TestCaseError::fail(format!(
                "seed {seed:#x}: {}",
                tally.report("random combination")
            )))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
