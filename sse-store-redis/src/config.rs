//! [`RedisConfig`]: retention, key prefix, timeouts, live feed and session settings.

use std::time::Duration;

use resumable_sse_core::Retention;

/// Settings of a [`RedisStore`](crate::RedisStore). Every field has a default; set the ones
/// you need with the `with_*` methods.
///
/// ```
/// use std::time::Duration;
/// use resumable_sse_core::Retention;
/// use resumable_sse_store_redis::RedisConfig;
///
/// let config = RedisConfig::default()
///     .with_retention(Retention::new(10_000, Duration::from_secs(600)))
///     .with_key_prefix("chat:");
/// assert_eq!(config.retention.max_len(), 10_000);
/// assert_eq!(config.key_prefix, "chat:");
/// // An idle stream keeps its epoch for a day by default.
/// assert_eq!(config.stream_ttl(), Duration::from_secs(24 * 3600));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Events kept per stream, by count and by age (default 1000 events, one hour). Count is
    /// enforced exactly at every append; age at every append and every read (a read never
    /// returns an event older than `max_age`, trimmed or not).
    pub retention: Retention,
    /// Put in front of every key and of the notification channel (default `sse:`), so several
    /// applications can share one Redis database. It must not contain `{` or `}`: the stream
    /// name in braces is each key's Redis Cluster hash tag.
    pub key_prefix: String,
    /// How long a stream's epoch and head are kept after its last append (default: one day,
    /// and never less than `retention.max_age`). Within this time an idle stream keeps its
    /// epoch, so clients that saw everything resume without a reset; after it the stream
    /// starts again in a new epoch and old cursors get a `reset`. The events themselves expire
    /// with `retention.max_age`.
    pub stream_ttl: Option<Duration>,
    /// Bound on establishing a connection (default 1 s).
    pub connect_timeout: Duration,
    /// Bound on one command's answer (default 2 s). With Redis down or unreachable an
    /// operation fails with [`resumable_sse_core::Error::Unavailable`] after at most
    /// `connect_timeout + response_timeout`.
    pub response_timeout: Duration,
    /// Largest event (data, name and publisher id) carried inside its notification (default
    /// 8 KiB): a hub then needs no read to deliver it. Larger events are announced by
    /// position only and read from the stream.
    pub feed_inline_max: usize,
    /// Most event bytes one notification message carries (default 64 KiB): the rest of a
    /// large batch is announced by position only.
    pub feed_inline_budget: usize,
    /// Notifications buffered per live feed (default 4096). A hub that falls further behind
    /// gets a resync and reads what it missed from the streams.
    pub feed_capacity: usize,
    /// How often the pub/sub connection is checked with a `PING` (default 5 s), so a
    /// connection that died silently is noticed and replaced.
    pub feed_ping_interval: Duration,
    /// Longest wait between two attempts to reconnect the pub/sub connection (default 1 s;
    /// attempts start at 50 ms and double).
    pub reconnect_max_delay: Duration,
    /// How long Redis keeps a session's key after its expiry (default 5 s). Expiry itself is
    /// decided by the session's `expires_at`, against the clock of the process that asks;
    /// the key's native TTL is garbage collection, and this slack keeps clock skew between
    /// application servers and Redis from dropping a live session early.
    pub session_grace: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            retention: Retention::default(),
            key_prefix: "sse:".to_owned(),
            stream_ttl: None,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
            feed_inline_max: 8 * 1024,
            feed_inline_budget: 64 * 1024,
            feed_capacity: 4096,
            feed_ping_interval: Duration::from_secs(5),
            reconnect_max_delay: Duration::from_secs(1),
            session_grace: Duration::from_secs(5),
        }
    }
}

/// The idle TTL of a stream's meta when none is configured.
const DEFAULT_STREAM_TTL: Duration = Duration::from_secs(24 * 3600);

impl RedisConfig {
    /// Sets [`RedisConfig::retention`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use resumable_sse_core::Retention;
    /// use resumable_sse_store_redis::RedisConfig;
    ///
    /// let config = RedisConfig::default().with_retention(Retention::new(50, Duration::from_secs(60)));
    /// assert_eq!(config.retention.max_len(), 50);
    /// assert_eq!(config.retention.max_age(), Duration::from_secs(60));
    /// ```
    #[must_use]
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Sets the key prefix (checked when connecting: no `{` or `}`).
    ///
    /// ```
    /// let config = resumable_sse_store_redis::RedisConfig::default().with_key_prefix("app1:");
    /// assert_eq!(config.key_layout().channel(), "app1:feed");
    /// ```
    #[must_use]
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets how long an idle stream keeps its epoch and head.
    ///
    /// ```
    /// use std::time::Duration;
    /// use resumable_sse_store_redis::RedisConfig;
    ///
    /// let config = RedisConfig::default().with_stream_ttl(Duration::from_secs(7 * 24 * 3600));
    /// assert_eq!(config.stream_ttl(), Duration::from_secs(7 * 24 * 3600));
    /// // Never less than max_age: the events would outlive their epoch.
    /// let config = RedisConfig::default().with_stream_ttl(Duration::from_secs(1));
    /// assert_eq!(config.stream_ttl(), config.retention.max_age());
    /// ```
    #[must_use]
    pub fn with_stream_ttl(mut self, ttl: Duration) -> Self {
        self.stream_ttl = Some(ttl);
        self
    }

    /// Sets the connection timeout.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let config = resumable_sse_store_redis::RedisConfig::default().with_connect_timeout(Duration::from_millis(500));
    /// assert_eq!(config.connect_timeout, Duration::from_millis(500));
    /// ```
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the response timeout.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let config = resumable_sse_store_redis::RedisConfig::default().with_response_timeout(Duration::from_secs(5));
    /// assert_eq!(config.response_timeout, Duration::from_secs(5));
    /// ```
    #[must_use]
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Sets the largest event carried inside its notification (0: notifications never carry
    /// events, and hubs read every event from the streams).
    ///
    /// ```
    /// let config = resumable_sse_store_redis::RedisConfig::default().with_feed_inline_max(0);
    /// assert_eq!(config.feed_inline_max, 0);
    /// ```
    #[must_use]
    pub fn with_feed_inline_max(mut self, bytes: usize) -> Self {
        self.feed_inline_max = bytes;
        self
    }

    /// Sets the notifications buffered per live feed (at least 16 are used).
    ///
    /// ```
    /// let config = resumable_sse_store_redis::RedisConfig::default().with_feed_capacity(1 << 16);
    /// assert_eq!(config.feed_capacity, 65_536);
    /// ```
    #[must_use]
    pub fn with_feed_capacity(mut self, capacity: usize) -> Self {
        self.feed_capacity = capacity.max(16);
        self
    }

    /// Sets how long Redis keeps a session's key after its expiry.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let config = resumable_sse_store_redis::RedisConfig::default().with_session_grace(Duration::ZERO);
    /// assert_eq!(config.session_grace, Duration::ZERO);
    /// ```
    #[must_use]
    pub fn with_session_grace(mut self, grace: Duration) -> Self {
        self.session_grace = grace;
        self
    }

    /// The idle TTL of a stream's epoch and head in effect: [`RedisConfig::stream_ttl`] or
    /// one day, and at least `retention.max_age`.
    pub fn stream_ttl(&self) -> Duration {
        self.stream_ttl
            .unwrap_or(DEFAULT_STREAM_TTL)
            .max(self.retention.max_age())
    }

    /// The names of the keys and channel this configuration uses.
    pub fn key_layout(&self) -> crate::KeyLayout {
        crate::KeyLayout::new(&self.key_prefix)
    }

    /// The longest an operation may take before it fails as unavailable.
    pub(crate) fn operation_timeout(&self) -> Duration {
        self.connect_timeout + self.response_timeout
    }
}
