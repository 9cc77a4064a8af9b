//! The backend conformance suite of `sse-core`, run against the memory store.

use resumable_sse_core::Retention;
use resumable_sse_store_memory::{MemoryConfig, MemoryStore};

/// A fresh store per test, with the default sweep interval (10 s): retention and session
/// expiry must hold without the sweeper's help.
async fn setup(retention: Retention) -> MemoryStore {
    MemoryStore::new(MemoryConfig::default().with_retention(retention))
}

/// A memory store's data dies with its process: the restarted process builds a new store.
async fn lose_data(store: MemoryStore) -> MemoryStore {
    drop(store);
    setup(Retention::default()).await
}

resumable_sse_core::conformance_tests!(setup, lose_data);
