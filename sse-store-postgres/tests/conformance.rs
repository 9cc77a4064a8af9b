//! The backend conformance suite of `sse-core`, run against PostgreSQL: each test gets a
//! fresh schema, dropped when the test ends. Losing data is truncating that schema's tables.

use std::time::Duration;

use resumable_sse_core::Retention;
use resumable_sse_store_postgres::PostgresConfig;
use resumable_sse_store_postgres::testing::{TempStore, temp_store};

/// The sweeper runs every 200 ms so that it races the tests, as it would in production; the
/// suite's retention and expiry checks must also hold before it has run.
async fn setup(retention: Retention) -> TempStore {
    temp_store(
        PostgresConfig::default()
            .with_retention(retention)
            .with_sweep_interval(Duration::from_millis(200)),
    )
    .await
}

/// What restoring an empty database does to a store, done to this store's schema only (the
/// server holds other tests' schemas): its tables are truncated.
async fn lose_data(store: TempStore) -> TempStore {
    let schema = store.schema().quoted();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "TRUNCATE {schema}.events, {schema}.streams, {schema}.sessions"
    )))
    .execute(store.pool())
    .await
    .expect("TRUNCATE succeeds");
    store
}

resumable_sse_core::conformance_tests!(setup, lose_data);
