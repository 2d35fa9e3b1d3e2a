//! Per-statement routing cost for sharding (issue #4's benchmark): the shard-key analysis of a
//! point SELECT and a point UPDATE, the hash rule from key text to shard, and the existing
//! read/write `route` decision. Run with `cargo bench -p shardgate-router --bench plan`.
//!
//! The statements are the ones the pgbench `sharded` workload sends (benches/pgbench), with the
//! literal inlined as simple-protocol pgbench does, so these timings and its TPS describe the
//! same traffic.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use shardgate_config::{LoadBalance, WhenNoReplica};
use shardgate_router::{
    plan_statement, route, KeyValue, Policy, ReplicaView, RequestView, SessionView, ShardMap,
    Target,
};
use shardgate_sql::{analyze, analyze_with, KeyConstraint, KeySource, ShardingSpec};

const SELECT: &[u8] = b"SELECT balance FROM accounts WHERE id = 48213;";
const UPDATE: &[u8] = b"UPDATE accounts SET balance = balance + 1 WHERE id = 48213;";
const LOGICAL_SHARDS: u32 = 1024;

/// `sharding: {logical_shards: 1024, tables: {accounts: id}}`, as the pgbench workload has it.
fn spec() -> ShardingSpec {
    ShardingSpec::new(&[(None, "accounts".to_owned(), "id".to_owned())], &[])
}

/// The single literal key the analysis found; panics if it found something else, so the bench
/// cannot silently time a statement that would have been refused or scattered.
fn literal_key(sql: &[u8], spec: &ShardingSpec) -> String {
    match analyze(sql, spec).key {
        Some(KeyConstraint::Values(values)) => match values.as_slice() {
            [KeySource::Literal { text, .. }] => text.clone(),
            other => panic!("expected one literal key, got {other:?}"),
        },
        other => panic!("expected a key constraint, got {other:?}"),
    }
}

fn analysis(c: &mut Criterion) {
    let spec = spec();
    let mut group = c.benchmark_group("analyze");
    group.bench_function("point_select", |b| {
        b.iter(|| black_box(analyze(black_box(SELECT), &spec)))
    });
    group.bench_function("point_update", |b| {
        b.iter(|| black_box(analyze(black_box(UPDATE), &spec)))
    });
    // What the proxy runs: the classifier's cached verdict saves the read/write parse.
    group.bench_function("point_select, verdict known", |b| {
        b.iter(|| black_box(analyze_with(black_box(SELECT), &spec, Some(false))))
    });
    // What the proxy runs for a new literal: the shape's analysis reused, no parse.
    let cache = shardgate_sql::AnalysisCache::new(64);
    let _ = cache.analyze(SELECT, &spec, Some(false));
    let other: &[u8] = b"SELECT balance FROM accounts WHERE id = 77;";
    group.bench_function("point_select, shape cached", |b| {
        b.iter(|| black_box(cache.analyze(black_box(other), &spec, Some(false))))
    });
    group.finish();
}

/// The pure plan of an analyzed statement: key values to shards, with the reason.
fn plan(c: &mut Criterion) {
    let spec = spec();
    let map = ShardMap::default_for(LOGICAL_SHARDS, 2);
    let a = analyze(SELECT, &spec);
    let mut resolve = |src: &KeySource| match src {
        KeySource::Literal { text, .. } => Ok(Some(KeyValue::from_text(text))),
        KeySource::Param(_) => Err("no parameters here".to_owned()),
    };
    assert!(matches!(
        plan_statement(&a, &map, 2, &mut resolve).map(|p| p.target),
        Ok(Target::Shards(_))
    ));
    c.bench_function("plan_statement point_select", |b| {
        b.iter(|| black_box(plan_statement(black_box(&a), &map, 2, &mut resolve)))
    });
}

fn hash_rule(c: &mut Criterion) {
    let spec = spec();
    let key = literal_key(SELECT, &spec);
    assert_eq!(key, literal_key(UPDATE, &spec));
    let map = ShardMap::default_for(LOGICAL_SHARDS, 2);
    let mut group = c.benchmark_group("hash_rule");
    group.bench_function("from_text+shard_of", |b| {
        b.iter(|| black_box(map.shard_of(&KeyValue::from_text(black_box(&key)))))
    });
    let text_key = "user-48213@example.com";
    group.bench_function("from_text+shard_of (text key)", |b| {
        b.iter(|| black_box(map.shard_of(&KeyValue::from_text(black_box(text_key)))))
    });
    group.finish();
}

fn read_write_route(c: &mut Criterion) {
    let policy = Policy {
        read_write_split: true,
        when_no_replica: WhenNoReplica::Primary,
        load_balance: LoadBalance::RoundRobin,
        read_your_writes: true,
    };
    // The benchmark topology has no replicas: reads fall back to the primary, writes go there.
    let read = RequestView {
        write: false,
        parsed: true,
        ..RequestView::default()
    };
    let write = RequestView {
        write: true,
        ..read
    };
    let two_replicas = [
        ReplicaView {
            routable: true,
            replay_lsn: 100,
            active: 3,
        },
        ReplicaView {
            routable: true,
            replay_lsn: 100,
            active: 1,
        },
    ];
    let mut group = c.benchmark_group("route");
    group.bench_function("read, no replicas", |b| {
        b.iter(|| {
            black_box(route(
                black_box(read),
                SessionView::default(),
                policy,
                &[],
                7,
            ))
        })
    });
    group.bench_function("write", |b| {
        b.iter(|| {
            black_box(route(
                black_box(write),
                SessionView::default(),
                policy,
                &[],
                7,
            ))
        })
    });
    group.bench_function("read, 2 replicas, least_busy", |b| {
        let policy = Policy {
            load_balance: LoadBalance::LeastBusy,
            ..policy
        };
        b.iter(|| {
            black_box(route(
                black_box(read),
                SessionView::default(),
                policy,
                &two_replicas,
                7,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, analysis, plan, hash_rule, read_write_route);
criterion_main!(benches);
