//! The HTTP-level suite run against the in-memory backend.

mod suite;

suite::http_suite!(|retention| async move {
    // The sweeper runs often so that it races the tests, as it would in production.
    let store = std::sync::Arc::new(resumable_sse_store_memory::MemoryStore::new(
        resumable_sse_store_memory::MemoryConfig::default()
            .with_max_len(retention.max_len)
            .with_max_age(retention.max_age)
            .with_sweep_interval(std::time::Duration::from_millis(100)),
    ));
    resumable_sse_axum::Stores {
        buffer: store.clone(),
        sessions: store,
    }
});
