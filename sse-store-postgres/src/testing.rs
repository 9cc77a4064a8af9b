//! Test support: stores on a real PostgreSQL, each in a fresh schema that is dropped
//! afterwards. Used by this workspace's tests, benchmarks and doctests; usable by yours.
//!
//! The server is the one [`URL_VAR`] names, by default [`DEFAULT_URL`] (a local PostgreSQL
//! with trust authentication and a database `test`). When it cannot be reached the helpers
//! panic with a message saying how to start it: a test against PostgreSQL fails, it never
//! skips silently.
//!
//! ```
//! use resumable_sse_core::{EventBuffer, NewEvent, StreamName};
//! use resumable_sse_store_postgres::{PostgresConfig, testing};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> resumable_sse_core::Result<()> {
//! let store = testing::temp_store(PostgresConfig::default()).await;
//! let news = StreamName::new("news")?;
//! store.append(&news, NewEvent::new("hello")).await?;
//! assert_eq!(store.read(&news, 0, 10).await?.head, 1);
//! // The schema is dropped when the last clone of `store` is.
//! # Ok(()) }
//! ```

#![allow(clippy::missing_panics_doc)]

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use resumable_sse_core::{
    Appended, EventBuffer, LiveFeed, NewEvent, Position, ReadPage, Result, SessionId,
    SessionRecord, SessionStore, StreamName,
};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::{PostgresConfig, PostgresStore, Schema};

/// The environment variable naming the test server's URL.
pub const URL_VAR: &str = "SSE_TEST_POSTGRES_URL";

/// The URL used when [`URL_VAR`] is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// How to get a test server, for failure messages.
pub const HOW_TO_START: &str = "start the local cluster with \
    `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
    (trust authentication for 127.0.0.1, a database `test`: `createdb -U postgres test`), \
    or set SSE_TEST_POSTGRES_URL to a server you can create schemas in";

/// Prefix of the schemas [`fresh_schema`] names.
pub const SCHEMA_PREFIX: &str = "sse_test_";

/// Test schemas older than this are dropped by [`temp_store`], should a crashed run have
/// left them behind.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// The test server's URL: [`URL_VAR`] or [`DEFAULT_URL`].
pub fn url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _password)) => format!("{scheme}://{name}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A schema name no other test uses: `sse_test_<unix seconds>_<random>`.
pub fn fresh_schema() -> Schema {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Schema::new(format!(
        "{SCHEMA_PREFIX}{secs}_{:016x}",
        rand::random::<u64>()
    ))
    .expect("a valid schema name")
}

/// Connects to the test server once, failing the test with [`HOW_TO_START`] when it cannot.
pub async fn require_server(url: &str) -> PgConnection {
    match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(url)).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(err)) => panic!(
            "PostgreSQL is not reachable at {} ({err}): the tests need a real PostgreSQL; {HOW_TO_START}",
            redact(url)
        ),
        Err(_) => panic!(
            "PostgreSQL at {} did not answer within 10 s: the tests need a real PostgreSQL; {HOW_TO_START}",
            redact(url)
        ),
    }
}

/// Drops `schema` with everything in it (errors are logged, not raised: this is cleanup).
pub async fn drop_schema(url: &str, schema: &Schema) {
    let result = async {
        let mut connection = PgConnection::connect(url).await?;
        // Give up rather than wait long for a lock held by a connection still closing.
        sqlx::raw_sql("SET lock_timeout = '10s'")
            .execute(&mut connection)
            .await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            schema.quoted()
        )))
        .execute(&mut connection)
        .await?;
        connection.close().await
    }
    .await;
    if let Err(err) = result {
        eprintln!("could not drop the test schema {schema}: {err}");
    }
}

/// [`drop_schema`] from synchronous code (a `Drop`), on a thread with its own runtime, so it
/// works inside and outside a tokio runtime alike.
pub fn drop_schema_blocking(url: &str, schema: &Schema) {
    let (url, schema) = (url.to_owned(), schema.clone());
    let cleanup = std::thread::spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(drop_schema(&url, &schema)),
            Err(err) => eprintln!("could not drop the test schema {schema}: {err}"),
        }
    });
    let _ = cleanup.join();
}

/// Drops test schemas left behind by runs that crashed (older than an hour), once per process.
async fn drop_stale_schemas(url: &str) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut connection = require_server(url).await;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(SCHEMA_PREFIX)
            .fetch_all(&mut connection)
            .await
            .unwrap_or_default();
    let _ = connection.close().await;
    for name in names {
        let created = name
            .strip_prefix(SCHEMA_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|secs| secs + STALE_AFTER.as_secs() < now)
            && let Ok(schema) = Schema::new(name)
        {
            drop_schema(url, &schema).await;
        }
    }
}

/// Drops its schema when the last [`TempStore`] clone goes.
struct SchemaGuard {
    url: String,
    schema: Schema,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        drop_schema_blocking(&self.url, &self.schema);
    }
}

/// A [`PostgresStore`] in a fresh schema of the test server, dropped with the last clone.
/// Implements both store traits by delegation, and derefs to the store.
#[derive(Clone)]
pub struct TempStore {
    store: PostgresStore,
    guard: Arc<SchemaGuard>,
}

impl fmt::Debug for TempStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TempStore").field(&self.store).finish()
    }
}

impl Deref for TempStore {
    type Target = PostgresStore;
    fn deref(&self) -> &PostgresStore {
        &self.store
    }
}

impl TempStore {
    /// The store itself (its clones do not keep the schema alive).
    pub fn store(&self) -> &PostgresStore {
        &self.store
    }

    /// The URL of the server, with `sse_schema` naming this store's schema: what another
    /// process needs to open the same store.
    pub fn url(&self) -> String {
        let separator = if self.guard.url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{separator}{}={}",
            self.guard.url,
            crate::SCHEMA_PARAM,
            self.guard.schema
        )
    }

    /// Another store on the same schema, with its own connections, sweeper and feed (as
    /// another process would have); `config`'s schema is replaced by this store's.
    pub async fn another(&self, config: PostgresConfig) -> PostgresStore {
        let config = config.with_schema(self.guard.schema.clone());
        PostgresStore::connect(&self.guard.url, config)
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "cannot connect to {}: {err}; {HOW_TO_START}",
                    redact(&self.guard.url)
                )
            })
    }
}

/// A migrated store in a [`fresh_schema`] of the test server ([`url`]), with `config`
/// otherwise. Also drops test schemas that crashed runs left behind.
///
/// # Panics
///
/// When PostgreSQL cannot be reached (with [`HOW_TO_START`]) or the migration fails.
pub async fn temp_store(config: PostgresConfig) -> TempStore {
    let url = url();
    drop_stale_schemas(&url).await;
    let schema = fresh_schema();
    let guard = Arc::new(SchemaGuard {
        url: url.clone(),
        schema: schema.clone(),
    });
    let store = match PostgresStore::connect(&url, config.with_schema(schema)).await {
        Ok(store) => store,
        Err(err) => panic!(
            "PostgreSQL is not reachable at {} ({err}): the tests need a real PostgreSQL; {HOW_TO_START}",
            redact(&url)
        ),
    };
    if let Err(err) = store.migrate().await {
        panic!("migrating a test schema failed: {err}");
    }
    TempStore { store, guard }
}

#[async_trait]
impl EventBuffer for TempStore {
    async fn append(&self, stream: &StreamName, event: NewEvent) -> Result<Appended> {
        self.store.append(stream, event).await
    }
    async fn append_many(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Appended>> {
        self.store.append_many(stream, events).await
    }
    async fn read(&self, stream: &StreamName, after: Position, limit: usize) -> Result<ReadPage> {
        self.store.read(stream, after, limit).await
    }
    fn live_feed(&self) -> LiveFeed {
        self.store.live_feed()
    }
    async fn ping(&self) -> Result<()> {
        self.store.ping().await
    }
}

#[async_trait]
impl SessionStore for TempStore {
    async fn create(&self, record: &SessionRecord) -> Result<()> {
        self.store.create(record).await
    }
    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        self.store.load(id).await
    }
    async fn touch(&self, id: &SessionId, expires_at: SystemTime) -> Result<bool> {
        self.store.touch(id, expires_at).await
    }
    async fn touch_many(&self, ids: &[SessionId], expires_at: SystemTime) -> Result<usize> {
        self.store.touch_many(ids, expires_at).await
    }
    async fn record_cursors(
        &self,
        cursors: &[(SessionId, String)],
        expires_at: SystemTime,
    ) -> Result<usize> {
        self.store.record_cursors(cursors, expires_at).await
    }
    async fn record_cursor(
        &self,
        id: &SessionId,
        cursor: &str,
        expires_at: SystemTime,
    ) -> Result<bool> {
        self.store.record_cursor(id, cursor, expires_at).await
    }
    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.store.delete(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert!(fresh_schema().as_str().starts_with(SCHEMA_PREFIX));
    }
}
