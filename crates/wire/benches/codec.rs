//! Benchmarks for the pass-through hot path over a realistic server response chunk:
//! RowDescription + 10 DataRows + CommandComplete + ReadyForQuery.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::ops::ControlFlow;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shardgate_wire::{
    backend, encode_data_row, scan_frames, split_frame, FieldDescription, RowDescription,
    DEFAULT_MAX_MESSAGE_LEN,
};

fn response_chunk() -> BytesMut {
    let column = |name: &str, type_oid| FieldDescription {
        name: name.into(),
        table_oid: 16_384,
        column_attr: 1,
        type_oid,
        type_len: -1,
        type_modifier: -1,
        format: 0,
    };
    let mut buf = BytesMut::new();
    RowDescription {
        fields: vec![
            column("id", 23),
            column("email", 25),
            column("created_at", 1184),
        ],
    }
    .encode(&mut buf);
    for i in 0..10 {
        let id = i.to_string();
        let email = format!("user{i}@example.com");
        encode_data_row(
            &[
                Some(id.as_bytes()),
                Some(email.as_bytes()),
                Some(b"2024-01-01 00:00:00+00"),
            ],
            &mut buf,
        );
    }
    backend::command_complete("SELECT 10", &mut buf);
    backend::ready_for_query(b'I', &mut buf);
    buf
}

fn codec(c: &mut Criterion) {
    let chunk = response_chunk();
    let mut group = c.benchmark_group("response_chunk");
    group.throughput(Throughput::Bytes(chunk.len() as u64));

    // The chunk is cloned in untimed setup: splitting consumes the buffer, as a read loop would.
    group.bench_function("split_frame", |b| {
        b.iter_batched(
            || chunk.clone(),
            |mut buf| {
                let mut n = 0;
                while let Some(frame) = split_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN).unwrap() {
                    n += frame.body.len();
                }
                black_box(n)
            },
            BatchSize::SmallInput,
        )
    });

    group.bench_function("scan_frames", |b| {
        b.iter(|| {
            let mut ready = false;
            let covered = scan_frames(black_box(&chunk), DEFAULT_MAX_MESSAGE_LEN, |h, _| {
                ready = h.tag == b'Z';
                ControlFlow::Continue(())
            })
            .unwrap();
            black_box((covered, ready))
        })
    });

    group.bench_function("forward", |b| {
        let mut out = BytesMut::with_capacity(chunk.len() * 2);
        b.iter_batched(
            || chunk.clone(),
            |mut buf| {
                out.clear();
                while let Some(frame) = split_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN).unwrap() {
                    out.extend_from_slice(&[frame.tag]);
                    out.extend_from_slice(&(frame.body.len() as i32 + 4).to_be_bytes());
                    out.extend_from_slice(&frame.body);
                }
                black_box(out.len())
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
