//! Micro-benchmarks of the hot paths: what every delivered event costs.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use resumable_sse_core::{
    Cursor, Epoch, EventBuffer, NewEvent, SseTransport, StreamName, Transport, cursor,
};
use resumable_sse_store_memory::MemoryStore;

fn encoding(c: &mut Criterion) {
    let transport = SseTransport::default();
    let mut group = c.benchmark_group("sse_encode");
    for size in [64usize, 1024, 16 * 1024] {
        let data = "x".repeat(size - 1) + "\n";
        let event = NewEvent::new(data).with_event("tick").unwrap().into_event(
            StreamName::new("news").unwrap(),
            1,
            std::time::SystemTime::now(),
        );
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("body", size), &event, |b, event| {
            b.iter(|| transport.encode_body(black_box(event)))
        });
        let body = transport.encode_body(&event);
        group.bench_with_input(
            BenchmarkId::new("per_connection", size),
            &body,
            |b, body| {
                let mut out = BytesMut::with_capacity(64 * 1024);
                b.iter(|| {
                    out.clear();
                    transport.write_event(&mut out, black_box("AQAAAAACAAAAAAAAAAcq"), body);
                })
            },
        );
    }
    group.finish();
}

fn cursors(c: &mut Criterion) {
    let streams = vec![
        StreamName::new("@session:0123456789abcdef0123456789abcdef").unwrap(),
        StreamName::new("news").unwrap(),
    ];
    let epoch = Epoch::from_u64(0x1234_5678_9abc_def0);
    let cursor = Cursor::new(vec![(Some(epoch), 3), (Some(epoch), 123_456)]);
    let fp = cursor::fingerprint(&streams);
    c.bench_function("cursor_encode", |b| {
        let mut out = String::with_capacity(64);
        b.iter(|| {
            out.clear();
            black_box(&cursor).encode_into(fp, &mut out);
        })
    });
    let wire = cursor.encode(&streams);
    c.bench_function("cursor_decode", |b| {
        b.iter(|| Cursor::decode(black_box(&wire), &streams).unwrap())
    });
}

fn memory_store(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = runtime.block_on(async { MemoryStore::default() });
    let news = StreamName::new("news").unwrap();
    c.bench_function("memory_append", |b| {
        b.to_async(&runtime)
            .iter(|| async { store.append(&news, NewEvent::new("payload")).await.unwrap() })
    });
    c.bench_function("memory_read_100", |b| {
        b.to_async(&runtime).iter(|| async {
            let page = store.read(&news, 0, 10_000).await.unwrap();
            let after = page.head.saturating_sub(100);
            store.read(&news, after, 100).await.unwrap()
        })
    });
}

criterion_group!(benches, encoding, cursors, memory_store);
criterion_main!(benches);
