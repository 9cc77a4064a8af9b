//! The backend conformance suite of `sse-core`, run against the memory store.

use std::time::Duration;

use sse_core::Retention;
use sse_store_memory::{MemoryConfig, MemoryStore};

/// A fresh store per test. The sweeper runs often so that it races the tests, as it would
/// in production, instead of never running during them.
async fn setup(retention: Retention) -> MemoryStore {
    MemoryStore::new(
        MemoryConfig::default()
            .with_max_len(retention.max_len)
            .with_max_age(retention.max_age)
            .with_sweep_interval(Duration::from_millis(100)),
    )
}

sse_core::conformance_tests!(setup);
