//! Classifier timings: `cargo bench -p shardgate-sql --bench classify`. A plain loop over
//! `Instant` (no criterion, to keep the dev tree lean); it reports the best of several rounds.

use shardgate_sql::cache_key_internals::{cache_key, cache_key_reference};
use shardgate_sql::Classifier;
use std::hint::black_box;
use std::time::Instant;

fn time(label: &str, iters: u32, mut f: impl FnMut()) {
    let mut best = f64::MAX;
    for _ in 0..7 {
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        best = best.min(start.elapsed().as_nanos() as f64 / f64::from(iters));
    }
    println!("{label:<44} {best:>9.1} ns/iter");
}

fn main() {
    let pgbench: &[u8] = b"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;";
    let update: &[u8] = b"UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 1;";
    let join: &[u8] = b"/* shardgate: replica */ WITH r AS (SELECT a.id, sum(b.v) AS s FROM a \
        JOIN b ON b.a_id = a.id WHERE a.created > now() - interval '1 day' GROUP BY a.id) \
        SELECT * FROM r WHERE s > 10 ORDER BY s DESC LIMIT 20";
    let mut key = Vec::new();
    // The reference (the lexer's token stream) next to the key the classifier uses.
    for (name, f) in [
        ("cache_key", cache_key as fn(&[u8], &mut Vec<u8>)),
        ("cache_key_reference", cache_key_reference),
    ] {
        for (what, sql) in [
            ("pgbench select", pgbench),
            ("pgbench update", update),
            ("CTE + join + hint", join),
        ] {
            time(&format!("{name} {what}"), 1_000_000, || {
                f(black_box(sql), &mut key);
                black_box(&key);
            });
        }
    }
    let c = Classifier::new(1024, &[]);
    time("uncached (parse) pgbench select", 20_000, || {
        black_box(c.classify_uncached(black_box(pgbench)));
    });
    time("uncached (keywords only) pgbench update", 200_000, || {
        black_box(c.classify_uncached(black_box(update)));
    });
    time("uncached (parse) CTE + join + hint", 20_000, || {
        black_box(c.classify_uncached(black_box(join)));
    });
    c.classify(pgbench);
    time("cached pgbench select", 2_000_000, || {
        black_box(c.classify(black_box(pgbench)));
    });
    c.classify(join);
    time("cached CTE + join + hint", 2_000_000, || {
        black_box(c.classify(black_box(join)));
    });
    // Two threads hitting the cache at once, as two worker threads do: one shared cache
    // against one cache per thread.
    for caches in [1, 2] {
        let c = Classifier::with_caches(1024, caches, &[]);
        let iters = 2_000_000u32;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            std::thread::scope(|s| {
                for slot in 0..2 {
                    let c = &c;
                    s.spawn(move || {
                        shardgate_sql::bind_thread_cache(slot);
                        for _ in 0..iters {
                            black_box(c.classify(black_box(pgbench)));
                        }
                    });
                }
            });
            best = best.min(start.elapsed().as_nanos() as f64 / f64::from(iters));
        }
        println!(
            "{:<44} {best:>9.1} ns/iter",
            format!("cached pgbench select, 2 threads, {caches} cache(s)")
        );
    }
}
