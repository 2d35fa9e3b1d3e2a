//! Hot-path timings for the scanner: `cargo bench -p shardgate-sql`. A plain loop over
//! `Instant` (no criterion, to keep the dev tree lean); it reports the best of several rounds.

use shardgate_sql::{for_each_statement, leading_keywords, session_command, LexOptions};
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
    println!("{label:<40} {best:>8.1} ns/iter");
}

fn main() {
    let pgbench: &[u8] = b"SELECT abalance FROM pgbench_accounts WHERE aid = 1;";
    let hinted: &[u8] = b"/* shardgate: shard=3 */ UPDATE t SET v = 'a;b' WHERE id = $1; \
                          SELECT $$x;y$$, E'\\';' FROM u -- trailing; comment\n";
    let opts = LexOptions::default();
    time("split pgbench select (60 B)", 1_000_000, || {
        let mut n = 0;
        for_each_statement(black_box(pgbench), opts, |r| n += r.len());
        black_box(n);
    });
    time("split hinted multi-statement", 1_000_000, || {
        let mut n = 0;
        for_each_statement(black_box(hinted), opts, |r| n += r.len());
        black_box(n);
    });
    time("leading_keywords pgbench select", 1_000_000, || {
        black_box(leading_keywords(black_box(pgbench)));
    });
    time("session_command on a SELECT", 1_000_000, || {
        black_box(session_command(black_box(pgbench)));
    });
    time("session_command SET", 1_000_000, || {
        black_box(session_command(black_box(b"SET search_path TO public")));
    });
}
