//! Append throughput of the Redis store, against a real Redis on `127.0.0.1:6379` (or at
//! `REDIS_URL`). Run with: `cargo bench -p sse-benches --bench redis_store`.
//!
//! - `single`: one `append` at a time, each a round trip running the append script;
//! - `concurrent_16`: 16 appends in flight on the store's one multiplexed connection;
//! - `batch_100`: one `append_many` of 100 events: one script call, one round trip.
//!
//! Events carry 256 bytes of data; retention is the default (1000 events, one hour), so every
//! append also trims. The store's live feed is subscribed, as in a server, so Redis also
//! delivers every notification. Results and method are in `docs/benchmarks.md`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use resumable_sse_core::{EventBuffer, NewEvent, StreamName};
use resumable_sse_store_redis::testing::HOW_TO_START;
use resumable_sse_store_redis::{RedisConfig, RedisStore};

fn redis_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("bench:{}:", resumable_sse_core::SessionId::random());
    let store = runtime
        .block_on(RedisStore::connect(
            &url,
            RedisConfig::default().with_key_prefix(prefix),
        ))
        .unwrap_or_else(|err| {
            panic!("the Redis benchmarks need Redis at {url} ({err}); {HOW_TO_START}")
        });
    let stream = StreamName::new("bench").unwrap();
    let data = "x".repeat(256);
    let event = || NewEvent::new(data.clone());

    let mut group = c.benchmark_group("redis_append");
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));
    group.bench_function("single", |b| {
        b.to_async(&runtime)
            .iter(|| async { store.append(&stream, event()).await.unwrap() })
    });
    group.throughput(Throughput::Elements(16));
    group.bench_function("concurrent_16", |b| {
        b.to_async(&runtime).iter(|| async {
            let tasks: Vec<_> = (0..16)
                .map(|_| {
                    let (store, stream, event) = (store.clone(), stream.clone(), event());
                    tokio::spawn(async move { store.append(&stream, event).await.unwrap() })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        })
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("batch_100", |b| {
        b.to_async(&runtime).iter(|| async {
            let batch = (0..100).map(|_| event()).collect();
            store.append_many(&stream, batch).await.unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, redis_append);
criterion_main!(benches);
