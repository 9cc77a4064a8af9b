//! Settings of a [`PostgresStore`](crate::PostgresStore) and the validated schema name.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use resumable_sse_core::Retention;

use crate::PostgresStoreError;

/// Longest accepted schema name, in bytes. PostgreSQL cuts identifiers at 63 bytes; the store
/// derives its LISTEN channel (`<schema>_feed`) and connection names from the schema, which
/// must stay within that limit too.
pub const MAX_SCHEMA_LEN: usize = 48;

/// A validated schema name: 1–48 bytes of `[a-z0-9_]`, starting with a letter or `_`, and not
/// starting with `pg_` (reserved by PostgreSQL).
///
/// Every table, index and function of the store lives in this schema, so several
/// applications (or tests) can share one database, each in a schema of its own.
///
/// ```
/// use resumable_sse_store_postgres::Schema;
///
/// let schema: Schema = "tenant_42".parse()?;
/// assert_eq!(schema.as_str(), "tenant_42");
/// assert!(Schema::new("Tenant").is_err()); // upper case would need quoting everywhere
/// assert!(Schema::new("a-b").is_err());
/// assert!(Schema::new("pg_sse").is_err());
/// # Ok::<(), resumable_sse_store_postgres::PostgresStoreError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Schema(String);

impl Schema {
    /// Validates `name`.
    ///
    /// # Errors
    ///
    /// [`PostgresStoreError::InvalidSchema`] when the name is empty, longer than
    /// [`MAX_SCHEMA_LEN`], holds a byte outside `[a-z0-9_]`, starts with a digit or starts
    /// with `pg_`.
    pub fn new(name: impl Into<String>) -> Result<Self, PostgresStoreError> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > MAX_SCHEMA_LEN {
            Some("it is longer than 48 bytes")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            Some("use only lowercase ASCII letters, digits and '_'")
        } else if name.as_bytes()[0].is_ascii_digit() {
            Some("it starts with a digit")
        } else if name.starts_with("pg_") {
            Some("names starting with pg_ are reserved by PostgreSQL")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(PostgresStoreError::InvalidSchema { name, reason }),
            None => Ok(Schema(name)),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted SQL identifier (`"name"`), safe to paste into statements: the
    /// validation leaves nothing that needs escaping, and quoting keeps reserved words such
    /// as `user` usable.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl Default for Schema {
    fn default() -> Self {
        Schema("sse".to_owned())
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl FromStr for Schema {
    type Err = PostgresStoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schema::new(s)
    }
}

/// Settings of a [`PostgresStore`](crate::PostgresStore). Every field has a documented
/// default; build with `PostgresConfig::default()` and the `with_*` methods.
///
/// ```
/// use std::time::Duration;
/// use resumable_sse_core::Retention;
/// use resumable_sse_store_postgres::PostgresConfig;
///
/// let config = PostgresConfig::default()
///     .with_schema("chat".parse()?)
///     .with_retention(Retention::new(10_000, Duration::from_secs(600)))
///     .with_sweep_interval(Duration::from_secs(5));
/// assert_eq!(config.schema.as_str(), "chat");
/// assert_eq!(config.max_connections, 10);
/// # Ok::<(), resumable_sse_store_postgres::PostgresStoreError>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// Events kept per stream, by count and age (default 1000 events, one hour). Reads never
    /// return an event outside retention, whether or not the sweeper has deleted it yet.
    pub retention: Retention,
    /// The schema holding the store's tables (default `sse`). A URL given to
    /// [`PostgresStore::connect`](crate::PostgresStore::connect) may override it with an
    /// `sse_schema=NAME` parameter.
    pub schema: Schema,
    /// How often the sweeper deletes events outside retention, expired sessions and idle
    /// streams (default 10 s).
    pub sweep_interval: Duration,
    /// Most rows one sweeper statement deletes, so that no statement holds locks or builds
    /// WAL for long (default 10 000); the sweeper repeats until nothing is left.
    pub sweep_batch: usize,
    /// Most events one `read` returns, whatever limit the caller asks for (default 1024):
    /// replays are read in pages of at most this many events, never a whole history at once.
    pub page_size: usize,
    /// Size of the connection pool for appends, reads and sessions (default 10). Every live
    /// feed holds one more connection of its own.
    pub max_connections: u32,
    /// How long an operation waits for a pooled connection, including connecting, before it
    /// fails with [`resumable_sse_core::Error::Unavailable`] (default 3 s). Keeps publishers from
    /// hanging while PostgreSQL is down.
    pub acquire_timeout: Duration,
    /// How long an operation (its connection acquired) waits for PostgreSQL's answer before
    /// it fails with [`resumable_sse_core::Error::Unavailable`] (default 5 s): a network that
    /// drops packets silently, or a server that stopped answering, does not hang publishers
    /// and readers until TCP gives up, and the hub's circuit breaker sees the failures. An
    /// append that times out may have been stored (like one whose connection broke); it is
    /// not retried.
    pub operation_timeout: Duration,
    /// Pause between attempts of a live feed to reconnect its LISTEN connection (default
    /// 500 ms; each attempt itself waits up to `acquire_timeout`).
    pub listen_retry: Duration,
    /// A stream without an append for this long (and never less than the retention's
    /// `max_age`, so it holds no retained event) has its row dropped by the sweeper
    /// (default 24 h; `None` keeps stream rows forever). If it is appended to again it
    /// starts a new epoch, so clients still holding a cursor into it get a `reset`.
    pub idle_stream_ttl: Option<Duration>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            retention: Retention::default(),
            schema: Schema::default(),
            sweep_interval: Duration::from_secs(10),
            sweep_batch: 10_000,
            page_size: 1024,
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
            operation_timeout: Duration::from_secs(5),
            listen_retry: Duration::from_millis(500),
            idle_stream_ttl: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

impl PostgresConfig {
    /// Sets [`PostgresConfig::retention`].
    #[must_use]
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Sets [`PostgresConfig::schema`].
    #[must_use]
    pub fn with_schema(mut self, schema: Schema) -> Self {
        self.schema = schema;
        self
    }

    /// Sets [`PostgresConfig::sweep_interval`] (at least 10 ms is used).
    #[must_use]
    pub fn with_sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Sets [`PostgresConfig::page_size`] (at least 1 is used).
    #[must_use]
    pub fn with_page_size(mut self, page_size: usize) -> Self {
        self.page_size = page_size;
        self
    }

    /// Sets [`PostgresConfig::max_connections`] (at least 1 is used).
    #[must_use]
    pub fn with_max_connections(mut self, max_connections: u32) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// Sets [`PostgresConfig::acquire_timeout`].
    #[must_use]
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Sets [`PostgresConfig::operation_timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use resumable_sse_store_postgres::PostgresConfig;
    ///
    /// let config = PostgresConfig::default().with_operation_timeout(Duration::from_secs(2));
    /// assert_eq!(config.operation_timeout, Duration::from_secs(2));
    /// ```
    #[must_use]
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Sets [`PostgresConfig::idle_stream_ttl`].
    #[must_use]
    pub fn with_idle_stream_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.idle_stream_ttl = ttl;
        self
    }

    /// The retention's `max_age` in milliseconds, capped at 100 years so that PostgreSQL's
    /// interval arithmetic cannot overflow.
    pub(crate) fn max_age_ms(&self) -> i64 {
        const CAP_MS: u128 = 100 * 365 * 24 * 3600 * 1000;
        self.retention.max_age().as_millis().min(CAP_MS) as i64
    }

    /// The retention's `max_len` as SQL wants it.
    pub(crate) fn max_len(&self) -> i64 {
        i64::try_from(self.retention.max_len()).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        for ok in [
            "sse",
            "_x",
            "a1",
            "tenant_42",
            &"s".repeat(MAX_SCHEMA_LEN),
            "user",
        ] {
            assert!(Schema::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Sse",
            "1abc",
            "a-b",
            "a b",
            "a\"b",
            "a;drop",
            "é",
            "pg_x",
            &"s".repeat(MAX_SCHEMA_LEN + 1),
        ] {
            assert!(
                matches!(
                    Schema::new(bad),
                    Err(PostgresStoreError::InvalidSchema { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            Schema::new("user").map(|s| s.quoted()).ok(),
            Some("\"user\"".into())
        );
    }

    #[test]
    fn max_age_is_capped() {
        let config = PostgresConfig::default()
            .with_retention(Retention::new(1000, Duration::from_secs(u64::MAX)));
        assert!(config.max_age_ms() > 0);
        let config = PostgresConfig::default().with_retention(Retention::new(0, Duration::ZERO));
        assert_eq!(config.max_len(), 1);
    }
}
