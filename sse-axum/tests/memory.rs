//! The HTTP-level suite run against the in-memory backend.

mod suite;

suite::http_suite!(|retention| async move {
    // The sweeper runs often so that it races the tests, as it would in production.
    let store = std::sync::Arc::new(resumable_sse_store_memory::MemoryStore::new(
        resumable_sse_store_memory::MemoryConfig::default()
            .with_retention(retention)
            .with_sweep_interval(std::time::Duration::from_millis(100)),
    ));
    resumable_sse_axum::Stores {
        buffer: store.clone(),
        sessions: store,
    }
});
