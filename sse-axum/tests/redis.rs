//! The HTTP-level suite run against the Redis backend.
//!
//! Redis must listen on `127.0.0.1:6379` (or at `REDIS_URL`); without it every test fails
//! with a message saying how to start it. Every call of the setup is a store with a key
//! prefix of its own: an independent store, with its own epochs and no sessions, as the
//! suite requires.

mod suite;

suite::http_suite!(|retention| async move {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("http-suite:{}:", resumable_sse_core::SessionId::random());
    let config = resumable_sse_store_redis::RedisConfig::default()
        .with_retention(retention)
        .with_key_prefix(prefix);
    let store = resumable_sse_store_redis::RedisStore::connect(&url, config)
        .await
        .unwrap_or_else(|err| {
            panic!(
                "these tests need Redis at {url} ({err}); start it with: redis-server \
                 --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no \
                 --dir /var/lib/redis --logfile /var/log/redis/ci.log (or set REDIS_URL)"
            )
        });
    let store = std::sync::Arc::new(store);
    resumable_sse_axum::Stores {
        buffer: store.clone(),
        sessions: store,
    }
});
