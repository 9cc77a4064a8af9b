//! Append throughput of the PostgreSQL store against a real server: one event per append,
//! batches of 100 in one `append_many`, and single appends from 8 concurrent publishers on
//! 8 streams. Each run uses a fresh schema of the test server (`SSE_TEST_POSTGRES_URL`, by
//! default `postgres://postgres@127.0.0.1:5432/test`), dropped at the end.
//!
//! Run with: `cargo bench -p sse-benches --bench postgres_store`

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use resumable_sse_core::{EventBuffer, NewEvent, StreamName};
use resumable_sse_store_postgres::PostgresConfig;
use resumable_sse_store_postgres::testing::temp_store;

/// A typical notification: 128 bytes of JSON-ish text.
fn payload() -> String {
    format!("{{\"type\":\"tick\",\"body\":\"{}\"}}", "x".repeat(100))
}

fn appends(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Retention keeps the tables small whatever the run length, as in production.
    let store = runtime.block_on(temp_store(
        PostgresConfig::default()
            .with_retention(resumable_sse_core::Retention::new(
                10_000,
                Duration::from_secs(3600),
            ))
            .with_sweep_interval(Duration::from_secs(1)),
    ));
    let data = payload();
    let mut group = c.benchmark_group("postgres_append");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));

    let single = StreamName::new("bench-single").unwrap();
    group.throughput(Throughput::Elements(1));
    group.bench_function("single", |b| {
        b.to_async(&runtime)
            .iter(|| store.append(&single, NewEvent::new(data.clone())))
    });

    let batched = StreamName::new("bench-batch").unwrap();
    group.throughput(Throughput::Elements(100));
    group.bench_function("append_many_100", |b| {
        b.to_async(&runtime).iter(|| {
            let batch = (0..100).map(|_| NewEvent::new(data.clone())).collect();
            store.append_many(&batched, batch)
        })
    });

    // 8 publishers, each on its own stream: what the server does with concurrent commits.
    const PUBLISHERS: u64 = 8;
    group.throughput(Throughput::Elements(PUBLISHERS));
    group.bench_function("single_8_publishers", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let store = store.clone();
            let data = data.clone();
            async move {
                let started = Instant::now();
                let tasks: Vec<_> = (0..PUBLISHERS)
                    .map(|p| {
                        let store = store.clone();
                        let data = data.clone();
                        tokio::spawn(async move {
                            let stream = StreamName::new(format!("bench-publisher-{p}")).unwrap();
                            for _ in 0..iters {
                                store
                                    .append(&stream, NewEvent::new(data.clone()))
                                    .await
                                    .unwrap();
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
                started.elapsed()
            }
        })
    });
    group.finish();
    drop(store);
}

criterion_group!(benches, appends);
criterion_main!(benches);
