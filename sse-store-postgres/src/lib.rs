//! The PostgreSQL store for `sse-core`: durable event history, shared by every instance that
//! uses the same database.
//!
//! - **Positions in commit order**: every append locks its stream's row and takes the new
//!   head from it (`INSERT … ON CONFLICT DO UPDATE SET head = head + n RETURNING`), so
//!   positions are gap-free and commit in order; a reader that has seen position `n` never
//!   later sees a new `n' < n` (a sequence would not give that).
//! - **One round trip per append or batch**: [`EventBuffer::append_many`] runs one statement
//!   (a PL/pgSQL function over arrays), in one transaction.
//! - **Epochs**: drawn at random when a stream's row is created; a stream whose row is lost
//!   comes back under a new epoch, so old cursors get a `reset`, never a wrong event.
//! - **Live feed**: `NOTIFY` carrying `(epoch, positions, stream)` and, when they fit its 8000
//!   bytes, the events themselves, received by a [`PgListener`](sqlx::postgres::PgListener) on a dedicated
//!   connection that reconnects by itself and yields [`FeedItem::Resync`](resumable_sse_core::FeedItem::Resync) after every
//!   (re)connect, since notifications sent meanwhile are lost.
//! - **Retention** by count, bytes and age, **session expiry** and idle-stream cleanup, enforced on
//!   every read at once and by a sweeper task that deletes rows every
//!   [`PostgresConfig::sweep_interval`].
//! - **Paged replays**: a read returns at most [`PostgresConfig::page_size`] events.
//! - **Migrations** embedded in the crate, run by [`PostgresStore::migrate`], in a configurable,
//!   validated [`Schema`].
//! - **Outages**: connection-level failures map to [`resumable_sse_core::Error::Unavailable`] within
//!   [`PostgresConfig::acquire_timeout`] (the HTTP adapter answers 503), and everything
//!   recovers by itself when PostgreSQL is back.
//!
//! | table | holds | key |
//! |---|---|---|
//! | `<schema>.streams` | name, epoch, head, time of the last append | `name` |
//! | `<schema>.events` | stream, position, event name, publisher id, data, append time | `(stream, position)`; unique `(stream, publisher_id)` where an id is set; `(appended_at)` |
//! | `<schema>.sessions` | id, principal, created, expires, last cursor | `id`; `(expires_at)` |
//! | `<schema>.sse_migrations` | applied migrations with checksums | `version` |
//!
//! See `docs/postgres.md` for the schema in full, the indexes and why, sizing and deployment.
//!
//! ```
//! use std::time::Duration;
//! use futures_util::StreamExt;
//! use resumable_sse_core::{EventBuffer, FeedItem, NewEvent, Retention, StreamName};
//! use resumable_sse_store_postgres::{PostgresConfig, PostgresStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let url = resumable_sse_store_postgres::testing::url();
//! # let schema = resumable_sse_store_postgres::testing::fresh_schema();
//! // url: "postgres://user:password@host:5432/database"
//! let config = PostgresConfig::default()
//!     .with_schema(schema.clone())
//!     .with_retention(Retention::new(10_000, Duration::from_secs(3600)));
//! let store = PostgresStore::connect(&url, config).await?;
//! store.migrate().await?;
//!
//! let news = StreamName::new("news")?;
//! let mut feed = store.live_feed();
//! assert_eq!(feed.next().await, Some(FeedItem::Resync)); // listening now
//!
//! let first = store.append(&news, NewEvent::new("hello").with_id("msg-1")?).await?;
//! let again = store.append(&news, NewEvent::new("hello").with_id("msg-1")?).await?;
//! assert_eq!((first.position, again.position, again.duplicate), (1, 1, true));
//! store.append_many(&news, vec![NewEvent::new("a"), NewEvent::new("b")]).await?;
//!
//! let page = store.read(&news, 1, 10).await?;
//! assert_eq!((page.oldest, page.head), (1, 3));
//! assert_eq!(page.events.iter().map(|e| &*e.data).collect::<Vec<_>>(), ["a", "b"]);
//! for position in 1..=3 {
//!     let Some(FeedItem::Appended(n)) = feed.next().await else { panic!("a notification") };
//!     assert_eq!((n.stream.as_str(), n.position), ("news", position));
//! }
//! # drop((feed, store));
//! # resumable_sse_store_postgres::testing::drop_schema(&url, &schema).await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use resumable_sse_core::task::spawn_periodic;
use resumable_sse_core::time::{from_unix_ms, unix_ms};
use resumable_sse_core::{
    Appended, Epoch, Event, EventBuffer, LiveFeed, NewEvent, Position, ReadPage, Result, SessionId,
    SessionRecord, SessionStore, StreamName, Text,
};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

mod config;
mod error;
mod feed;
mod health;
mod migrate;
mod sql;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{MAX_SCHEMA_LEN, PostgresConfig, Schema};
pub use error::PostgresStoreError;

use feed::FeedSource;
use health::Health;
use sql::{Queries, Sql};

/// The URL query parameter that names the schema (see [`PostgresStore::connect`]).
pub const SCHEMA_PARAM: &str = "sse_schema";

/// The PostgreSQL [`EventBuffer`] and [`SessionStore`]. Cheap to clone: clones share one
/// connection pool and one sweeper, which stops when the last clone is dropped.
///
/// See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
}

struct Shared {
    pool: PgPool,
    health: Arc<Health>,
    config: PostgresConfig,
    sql: Queries,
    feed: Arc<FeedSource>,
    /// `user@host:port/database`, for `Debug` and logs: never the password.
    target: String,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.shared;
        f.debug_struct("PostgresStore")
            .field("target", &shared.target)
            .field("schema", &shared.config.schema)
            .field("retention", &shared.config.retention)
            .field("connections", &shared.pool.size())
            .finish_non_exhaustive()
    }
}

/// What one run of the sweeper deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepStats {
    /// Events outside retention (by count, bytes or age).
    pub events: u64,
    /// Expired sessions (their private streams went with them).
    pub sessions: u64,
    /// Idle stream rows (see [`PostgresConfig::idle_stream_ttl`]).
    pub streams: u64,
}

/// Splits an `sse_schema=NAME` parameter off a URL's query string.
fn split_schema_param(url: &str) -> Result<(String, Option<Schema>), PostgresStoreError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let mut schema = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((SCHEMA_PARAM, value)) => schema = Some(Schema::new(value)?),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, schema))
}

fn describe(options: &PgConnectOptions) -> String {
    let database = options.get_database().unwrap_or_default();
    match options.get_socket() {
        Some(socket) => format!("{}@{}/{database}", options.get_username(), socket.display()),
        None => format!(
            "{}@{}:{}/{database}",
            options.get_username(),
            options.get_host(),
            options.get_port()
        ),
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn ms(time: SystemTime) -> i64 {
    to_i64(unix_ms(time))
}

fn from_ms(ms: i64) -> SystemTime {
    from_unix_ms(u64::try_from(ms).unwrap_or(0))
}

fn position(value: i64) -> Result<Position, PostgresStoreError> {
    Position::try_from(value)
        .map_err(|_| PostgresStoreError::Corrupt(format!("negative position {value}")))
}

impl PostgresStore {
    /// Connects to PostgreSQL at `url` (`postgres://user:password@host:port/database`, with
    /// any parameter sqlx accepts) and spawns the sweeper. Does not touch the schema: call
    /// [`PostgresStore::migrate`] (once per deployment, or at every start: it is idempotent
    /// and safe to run from several instances at once).
    ///
    /// The URL may also carry `sse_schema=NAME`, which overrides [`PostgresConfig::schema`]:
    /// handy where only a URL can be given, as with `sse-server --store`.
    ///
    /// # Errors
    ///
    /// [`PostgresStoreError::InvalidSchema`] for a bad `sse_schema`, and sqlx's errors for a
    /// malformed URL or a server that cannot be reached within
    /// [`PostgresConfig::acquire_timeout`].
    pub async fn connect(url: &str, config: PostgresConfig) -> Result<Self, PostgresStoreError> {
        let (url, schema) = split_schema_param(url)?;
        let mut config = config;
        if let Some(schema) = schema {
            config.schema = schema;
        }
        config.page_size = config.page_size.max(1);
        config.sweep_batch = config.sweep_batch.max(1);
        config.max_connections = config.max_connections.max(1);
        let options: PgConnectOptions = url.parse()?;
        let target = describe(&options);
        let health = Health::new();
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            // Connections are tested only when they may be dead (see `health`).
            .test_before_acquire(false)
            .before_acquire(health.before_acquire())
            .connect_with(
                options
                    .clone()
                    .application_name(&format!("sse-store:{}", config.schema)),
            )
            .await?;
        let feed = Arc::new(FeedSource {
            options: options.application_name(&format!("sse-feed:{}", config.schema)),
            channel: format!("{}_feed", config.schema),
            acquire_timeout: config.acquire_timeout,
            retry: config.listen_retry,
        });
        let shared = Arc::new(Shared {
            pool,
            health,
            sql: Queries::new(&config.schema),
            config,
            feed,
            target,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            let interval = shared.config.sweep_interval.max(Duration::from_millis(10));
            // Whether the last run failed: a failure is logged once, until a run works again.
            let failing = Arc::new(AtomicBool::new(false));
            spawn_periodic(Arc::downgrade(&shared), interval, move |shared| {
                let failing = failing.clone();
                async move { sweep_logged(&shared, &failing).await }
            });
        }
        tracing::debug!(target = %shared.target, schema = %shared.config.schema, "connected");
        Ok(PostgresStore { shared })
    }

    /// Creates the schema, tables, indexes and functions, or brings them up to date. Runs the
    /// migrations embedded in this crate in one transaction, under an advisory lock (so
    /// instances starting together wait for each other), and records them in
    /// `<schema>.sse_migrations`. Returns the versions it applied (empty when the schema was
    /// up to date).
    ///
    /// # Errors
    ///
    /// [`PostgresStoreError::MigrationChanged`] when an applied migration differs from this
    /// build's, and sqlx's errors (for instance a role without the `CREATE` privilege).
    pub async fn migrate(&self) -> Result<Vec<i32>, PostgresStoreError> {
        migrate::run(&self.shared.pool, &self.shared.config.schema).await
    }

    /// The configuration in use (with any `sse_schema` from the URL applied).
    pub fn config(&self) -> &PostgresConfig {
        &self.shared.config
    }

    /// The schema holding the store's tables.
    pub fn schema(&self) -> &Schema {
        &self.shared.config.schema
    }

    /// The connection pool, for queries of your own (health checks, reports).
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// The NOTIFY channel appends are announced on (`<schema>_feed`).
    pub fn channel(&self) -> &str {
        &self.shared.feed.channel
    }

    /// Deletes events outside retention, expired sessions with their private streams, and
    /// idle stream rows, in batches of [`PostgresConfig::sweep_batch`]. The sweeper calls
    /// this every [`PostgresConfig::sweep_interval`]; reads and session loads never return
    /// what it would delete, so it only frees space.
    ///
    /// # Errors
    ///
    /// sqlx's errors; what was deleted before the error stays deleted.
    pub async fn sweep(&self) -> Result<SweepStats, PostgresStoreError> {
        self.shared.sweep().await
    }

    /// Runs an operation for the traits, each attempt bounded by
    /// [`PostgresConfig::operation_timeout`]. A connection-level failure marks every pooled
    /// connection opened before it for a test before its next use, and the operation is run
    /// once more when that is safe: always when the server said it terminated the session
    /// (nothing was committed), and for idempotent operations (everything but appends) after
    /// any connection-level failure other than a pool timeout (which has already waited).
    async fn run<T, F, Fut>(&self, idempotent: bool, operation: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, PostgresStoreError>>,
    {
        let limit = self.shared.config.operation_timeout;
        let operation = || async {
            tokio::time::timeout(limit, operation())
                .await
                .unwrap_or(Err(PostgresStoreError::TimedOut(limit)))
        };
        match operation().await {
            Ok(value) => Ok(value),
            Err(err) if err.is_unavailable() => {
                self.shared.health.outage();
                if !err.is_retry_safe(idempotent) {
                    return Err(err.into());
                }
                tracing::debug!(error = %err, "a pooled connection was dead; trying again");
                operation().await.map_err(|err| {
                    if err.is_unavailable() {
                        self.shared.health.outage();
                    }
                    err.into()
                })
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn append_rows(
        &self,
        stream: &StreamName,
        events: &[NewEvent],
    ) -> Result<Vec<Appended>, PostgresStoreError> {
        let shared = &self.shared;
        let names: Vec<Option<&str>> = events.iter().map(NewEvent::event).collect();
        let data: Vec<&str> = events.iter().map(NewEvent::data).collect();
        let ids: Option<Vec<Option<&str>>> = events
            .iter()
            .any(|e| e.id().is_some())
            .then(|| events.iter().map(NewEvent::id).collect());
        let rows = sqlx::query(shared.sql.append.get())
            .bind(stream.as_str())
            .bind(Epoch::random().as_u64() as i64)
            .bind(names)
            .bind(ids)
            .bind(data)
            .bind(shared.config.max_len())
            .bind(shared.config.max_age_ms())
            .bind(shared.feed.channel.as_str())
            .bind(i64::try_from(shared.config.retention.max_bytes()).unwrap_or(i64::MAX))
            .fetch_all(&shared.pool)
            .await?;
        if rows.len() != events.len() {
            return Err(PostgresStoreError::Corrupt(format!(
                "{} rows for an append of {} events",
                rows.len(),
                events.len()
            )));
        }
        rows.iter()
            .map(|row| {
                Ok(Appended {
                    epoch: Epoch::from_u64(row.try_get::<i64, _>(0)? as u64),
                    position: position(row.try_get(1)?)?,
                    duplicate: row.try_get(2)?,
                })
            })
            .collect()
    }

    async fn read_page(
        &self,
        stream: &StreamName,
        after: Position,
        limit: usize,
    ) -> Result<ReadPage, PostgresStoreError> {
        let shared = &self.shared;
        let limit = limit.min(shared.config.page_size);
        let rows = sqlx::query(shared.sql.read.get())
            .bind(stream.as_str())
            .bind(shared.config.max_len())
            .bind(shared.config.max_age_ms())
            .bind(to_i64(after))
            .bind(to_i64(limit as u64))
            .fetch_all(&shared.pool)
            .await?;
        let Some(first) = rows.first() else {
            return Ok(ReadPage::missing());
        };
        let epoch = Epoch::from_u64(first.try_get::<i64, _>(0)? as u64);
        let head = position(first.try_get(1)?)?;
        let oldest = position(first.try_get(2)?)?;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(pos) = row.try_get::<Option<i64>, _>(3)? else {
                continue;
            };
            let data: String = row.try_get(6)?;
            events.push(Event {
                stream: stream.clone(),
                position: position(pos)?,
                event: row.try_get::<Option<String>, _>(4)?.map(Text::from),
                id: row.try_get::<Option<String>, _>(5)?.map(Text::from),
                data: Text::from(data),
                time_ms: u64::try_from(row.try_get::<i64, _>(7)?).unwrap_or(0),
            });
        }
        Ok(ReadPage {
            epoch: Some(epoch),
            oldest,
            head,
            events,
        })
    }

    async fn load_session(
        &self,
        id: &SessionId,
    ) -> Result<Option<SessionRecord>, PostgresStoreError> {
        let row = sqlx::query(self.shared.sql.session_load.get())
            .bind(id.as_bytes().as_slice())
            .bind(ms(SystemTime::now()))
            .fetch_optional(&self.shared.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(SessionRecord {
            id: *id,
            principal: row.try_get(0)?,
            created_at: from_ms(row.try_get(1)?),
            expires_at: from_ms(row.try_get(2)?),
            cursor: row.try_get(3)?,
        }))
    }
}

impl Shared {
    async fn sweep(&self) -> Result<SweepStats, PostgresStoreError> {
        let batch = to_i64(self.config.sweep_batch as u64);
        let sessions = in_batches(batch, || async move {
            let n: i64 = sqlx::query_scalar(self.sql.sweep_sessions.get())
                .bind(ms(SystemTime::now()))
                .bind(batch)
                .fetch_one(&self.pool)
                .await?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await?;
        let by_count = self
            .delete_in_batches(&self.sql.sweep_count, self.config.max_len(), batch)
            .await?;
        let by_age = self
            .delete_in_batches(&self.sql.sweep_age, self.config.max_age_ms(), batch)
            .await?;
        let streams = match self.config.idle_stream_ttl {
            // Never before the newest event has expired: a dropped row takes its log along.
            Some(ttl) => {
                let idle_ms = to_i64(ttl.as_millis() as u64).max(self.config.max_age_ms());
                self.delete_in_batches(&self.sql.sweep_streams, idle_ms, batch)
                    .await?
            }
            None => 0,
        };
        Ok(SweepStats {
            events: by_count + by_age,
            sessions,
            streams,
        })
    }

    /// Runs the sweep statement `sql`, bound to `(param, batch)`, in batches until one
    /// deletes less than `batch` rows; answers how many rows went.
    async fn delete_in_batches(
        &self,
        sql: &Sql,
        param: i64,
        batch: i64,
    ) -> Result<u64, PostgresStoreError> {
        in_batches(batch, || async move {
            Ok(sqlx::query(sql.get())
                .bind(param)
                .bind(batch)
                .execute(&self.pool)
                .await?
                .rows_affected())
        })
        .await
    }
}

// A plain closure returning a future rather than an async closure: the sweeper task must be
// `Send`, which an async closure's borrow of `Shared` cannot yet be shown to be.
/// Repeats `run`, one batch of a delete answering how many rows it deleted, until a batch is
/// not full; answers the total.
async fn in_batches<F>(batch: i64, mut run: impl FnMut() -> F) -> Result<u64, PostgresStoreError>
where
    F: Future<Output = Result<u64, PostgresStoreError>>,
{
    let mut total = 0;
    loop {
        let n = run().await?;
        total += n;
        if n < batch as u64 {
            return Ok(total);
        }
    }
}

/// One run of the sweeper task, which runs [`Shared::sweep`] every
/// [`PostgresConfig::sweep_interval`] until the store is dropped. `failing` says whether the
/// previous run failed.
async fn sweep_logged(shared: &Shared, failing: &AtomicBool) {
    let result = shared.sweep().await;
    if result
        .as_ref()
        .is_err_and(PostgresStoreError::is_unavailable)
    {
        shared.health.outage();
    }
    match result {
        Ok(stats) => {
            if failing.swap(false, Ordering::Relaxed) {
                tracing::info!(schema = %shared.config.schema, "the sweeper works again");
            }
            if stats != SweepStats::default() {
                tracing::debug!(schema = %shared.config.schema, ?stats, "swept");
            }
        }
        Err(err) if failing.swap(true, Ordering::Relaxed) => {
            tracing::debug!(schema = %shared.config.schema, error = %err, "the sweeper failed again");
        }
        Err(err) => {
            tracing::warn!(schema = %shared.config.schema, error = %err, "the sweeper failed; it tries again every interval");
        }
    }
}

#[async_trait]
impl EventBuffer for PostgresStore {
    fn store_label(&self) -> &'static str {
        "postgres"
    }

    async fn append(&self, stream: &StreamName, event: NewEvent) -> Result<Appended> {
        let events = std::slice::from_ref(&event);
        let mut out = self.run(false, || self.append_rows(stream, events)).await?;
        out.pop()
            .ok_or_else(|| PostgresStoreError::Corrupt("an append returned no row".into()).into())
    }

    async fn append_many(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Appended>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.run(false, || self.append_rows(stream, &events)).await
    }

    async fn read(&self, stream: &StreamName, after: Position, limit: usize) -> Result<ReadPage> {
        self.run(true, || self.read_page(stream, after, limit))
            .await
    }

    fn live_feed(&self) -> LiveFeed {
        feed::live_feed(self.shared.feed.clone())
    }

    async fn ping(&self) -> Result<()> {
        self.run(true, || async {
            sqlx::query(self.shared.sql.ping.get())
                .execute(&self.shared.pool)
                .await?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl SessionStore for PostgresStore {
    fn store_label(&self) -> &'static str {
        "postgres"
    }

    async fn create(&self, record: &SessionRecord) -> Result<()> {
        // An upsert: running it twice is harmless.
        self.run(true, || async {
            sqlx::query(self.shared.sql.session_create.get())
                .bind(record.id.as_bytes().as_slice())
                .bind(record.principal.as_deref())
                .bind(ms(record.created_at))
                .bind(ms(record.expires_at))
                .bind(record.cursor.as_deref())
                .execute(&self.shared.pool)
                .await?;
            Ok(())
        })
        .await
    }

    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        self.run(true, || self.load_session(id)).await
    }

    async fn touch(&self, id: &SessionId, expires_at: SystemTime) -> Result<bool> {
        self.run(true, || async {
            let done = sqlx::query(self.shared.sql.session_touch.get())
                .bind(id.as_bytes().as_slice())
                .bind(ms(expires_at))
                .bind(ms(SystemTime::now()))
                .execute(&self.shared.pool)
                .await?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    /// One `UPDATE … WHERE id = ANY($1)`.
    async fn touch_many(&self, ids: &[SessionId], expires_at: SystemTime) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&[u8]> = ids.iter().map(|id| id.as_bytes().as_slice()).collect();
        self.run(true, || async {
            let done = sqlx::query(self.shared.sql.session_touch_many.get())
                .bind(&ids)
                .bind(ms(expires_at))
                .bind(ms(SystemTime::now()))
                .execute(&self.shared.pool)
                .await?;
            Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
        })
        .await
    }

    /// One `UPDATE … FROM unnest(…)`; a session listed twice gets its last cursor.
    async fn record_cursors(
        &self,
        cursors: &[(SessionId, String)],
        expires_at: SystemTime,
    ) -> Result<usize> {
        let mut last: HashMap<&SessionId, &str> = HashMap::with_capacity(cursors.len());
        for (id, cursor) in cursors {
            last.insert(id, cursor);
        }
        if last.is_empty() {
            return Ok(0);
        }
        let (ids, wires): (Vec<&[u8]>, Vec<&str>) = last
            .into_iter()
            .map(|(id, cursor)| (id.as_bytes().as_slice(), cursor))
            .unzip();
        self.run(true, || async {
            let done = sqlx::query(self.shared.sql.session_record_cursors.get())
                .bind(&ids)
                .bind(&wires)
                .bind(ms(expires_at))
                .bind(ms(SystemTime::now()))
                .execute(&self.shared.pool)
                .await?;
            Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
        })
        .await
    }

    async fn record_cursor(
        &self,
        id: &SessionId,
        cursor: &str,
        expires_at: SystemTime,
    ) -> Result<bool> {
        self.run(true, || async {
            let done = sqlx::query(self.shared.sql.session_record_cursor.get())
                .bind(id.as_bytes().as_slice())
                .bind(cursor)
                .bind(ms(expires_at))
                .bind(ms(SystemTime::now()))
                .execute(&self.shared.pool)
                .await?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.run(true, || async {
            sqlx::query(self.shared.sql.session_delete.get())
                .bind(id.as_bytes().as_slice())
                .bind(id.stream().as_str())
                .execute(&self.shared.pool)
                .await?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_parameter_is_split_off() {
        let split = |url| split_schema_param(url).map(|(u, s)| (u, s.map(|s| s.to_string())));
        assert_eq!(
            split("postgres://h/db").ok(),
            Some(("postgres://h/db".into(), None))
        );
        assert_eq!(
            split("postgres://h/db?sse_schema=app").ok(),
            Some(("postgres://h/db".into(), Some("app".into())))
        );
        assert_eq!(
            split("postgres://h/db?sslmode=disable&sse_schema=app&application_name=x").ok(),
            Some((
                "postgres://h/db?sslmode=disable&application_name=x".into(),
                Some("app".into())
            ))
        );
        assert!(split("postgres://h/db?sse_schema=Bad-Name").is_err());
    }
}
