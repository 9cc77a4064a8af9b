//! `redis://` URLs: a [`RedisStore`] serving as both halves of the backend.
//!
//! The URL is redis-rs's (`redis://[user:password@]host[:port][/db]`; `rediss://…` needs a
//! TLS feature of the `redis` crate, which this build does not enable), plus an optional
//! `key_prefix` query parameter
//! (`redis://host/0?key_prefix=app1:`; default `sse:`) so several deployments can share one
//! Redis database.

use std::sync::Arc;

use resumable_sse_core::Retention;
use resumable_sse_store_redis::{RedisConfig, RedisStore};

use super::{OpenStoreError, Stores};

pub(super) async fn open(url: &str, retention: Retention) -> Result<Stores, OpenStoreError> {
    let mut config = RedisConfig::default().with_retention(retention);
    if let Some(prefix) = key_prefix(url) {
        config = config.with_key_prefix(prefix);
    }
    let store = RedisStore::connect(url, config)
        .await
        .map_err(|err| OpenStoreError::Open(err.into()))?;
    let store = Arc::new(store);
    Ok(Stores {
        buffer: store.clone(),
        sessions: store,
    })
}

/// The `key_prefix` query parameter, if the URL has one (redis-rs ignores it).
fn key_prefix(url: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    let query = query.split('#').next().unwrap_or_default();
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "key_prefix")
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::key_prefix;

    #[test]
    fn key_prefix_comes_from_the_query() {
        assert_eq!(key_prefix("redis://127.0.0.1:6379"), None);
        assert_eq!(
            key_prefix("redis://h/2?key_prefix=app1:").as_deref(),
            Some("app1:")
        );
        assert_eq!(
            key_prefix("redis+unix:///run/r.sock?db=1&key_prefix=a%3Ab%3A").as_deref(),
            Some("a:b:")
        );
        assert_eq!(key_prefix("redis://h/?protocol=resp3"), None);
    }
}
