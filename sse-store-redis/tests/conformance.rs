//! The backend conformance suite of `sse-core`, run against a real Redis.
//!
//! Redis must listen on `127.0.0.1:6379` (or at `REDIS_URL`); without it every test fails
//! with a message saying how to start it. Each store gets a key prefix of its own, so runs
//! never see each other's keys, and losing data is deleting every key under that prefix.

use resumable_sse_core::Retention;
use resumable_sse_store_redis::{RedisConfig, RedisStore};

const START_REDIS: &str = "start it with: redis-server --daemonize yes --bind 127.0.0.1 -::1 \
     --port 6379 --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log \
     (or point REDIS_URL at another server)";

async fn setup(retention: Retention) -> RedisStore {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("conformance:{}:", resumable_sse_core::SessionId::random());
    let config = RedisConfig::default()
        .with_retention(retention)
        .with_key_prefix(prefix);
    RedisStore::connect(&url, config)
        .await
        .unwrap_or_else(|err| panic!("these tests need Redis at {url} ({err}); {START_REDIS}"))
}

/// What `FLUSHDB` does to a store, done to this store's keys only (the shared server holds
/// other tests' keys): every key under its prefix is deleted.
async fn lose_data(store: RedisStore) -> RedisStore {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut conn = redis::Client::open(url.as_str())
        .and_then(|client| client.get_connection())
        .unwrap_or_else(|err| panic!("these tests need Redis at {url} ({err}); {START_REDIS}"));
    let pattern = format!("{}*", store.key_layout().prefix());
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query(&mut conn)
        .expect("KEYS answers");
    assert!(
        !keys.is_empty(),
        "the store has keys under {pattern} to lose"
    );
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query(&mut conn)
        .expect("DEL answers");
    store
}

resumable_sse_core::conformance_tests!(setup, lose_data);
