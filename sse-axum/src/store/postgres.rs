//! `postgres://` URLs: connect, bring the schema up to date, and share one store for events
//! and sessions. The URL may name the schema with `sse_schema=NAME` (default `sse`).

use std::sync::Arc;

use resumable_sse_core::Retention;
use resumable_sse_store_postgres::{PostgresConfig, PostgresStore};

use super::{OpenStoreError, Stores};

pub(super) async fn open(url: &str, retention: Retention) -> Result<Stores, OpenStoreError> {
    let open =
        |err: resumable_sse_store_postgres::PostgresStoreError| OpenStoreError::Open(err.into());
    let config = PostgresConfig::default().with_retention(retention);
    let store = PostgresStore::connect(url, config).await.map_err(open)?;
    store.migrate().await.map_err(open)?;
    tracing::info!(?store, "opened the PostgreSQL store");
    let store = Arc::new(store);
    Ok(Stores {
        buffer: store.clone(),
        sessions: store,
    })
}
