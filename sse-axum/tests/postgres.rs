//! The HTTP-level suite run against the PostgreSQL backend. Every call of the setup makes a
//! store in a fresh schema (its own tables, so its own epochs and no sessions), dropped when
//! the test ends; the sweeper runs often so that it races the tests.

mod suite;

suite::http_suite!(|retention| async move {
    let store = std::sync::Arc::new(
        resumable_sse_store_postgres::testing::temp_store(
            resumable_sse_store_postgres::PostgresConfig::default()
                .with_retention(retention)
                .with_sweep_interval(std::time::Duration::from_millis(100)),
        )
        .await,
    );
    resumable_sse_axum::Stores {
        buffer: store.clone(),
        sessions: store,
    }
});
