//! Engine configuration and its defaults.

use std::time::Duration;

use crate::BreakerConfig;

/// What to do when continuity is lost (cursor behind retention, epoch changed, unusable id).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResetPolicy {
    /// After the `reset` event, send every event still retained that the client cannot have
    /// seen (after an epoch change, the whole new epoch; behind retention, from the oldest
    /// retained). The default: the client loses as little as possible.
    #[default]
    ReplayRetained,
    /// After the `reset` event, continue from the head: the client refetches its state and
    /// only needs what comes next.
    SkipToHead,
}

/// Engine configuration. Every field has a documented default; build with
/// `Config::default()` and the `with_*` methods.
///
/// ```
/// use std::time::Duration;
/// use resumable_sse_core::Config;
///
/// let config = Config::default().with_heartbeat(Duration::from_secs(5));
/// assert_eq!(config.heartbeat, Duration::from_secs(5));
/// assert_eq!(config.session_ttl, Duration::from_secs(30));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// How long a session is kept after its last connection ends (default 30 s). Long enough
    /// for a reload or a network blip; short enough that abandoned tabs do not pile up.
    pub session_ttl: Duration,
    /// How long a session token stays valid (default 24 h). Every response carries a freshly
    /// signed token, so an active client never sees it expire.
    pub token_ttl: Duration,
    /// Interval of heartbeat comments on an idle connection (default 15 s, below the 30–60 s
    /// idle timeouts common in proxies and load balancers). An idle connection gets one
    /// exactly every interval; after an event the next comes within half to one interval, so
    /// no connection is silent for longer than this. One hub-wide timer drives them (no timer
    /// per connection).
    pub heartbeat: Duration,
    /// The `retry:` hint sent first on every response (default 2 s; browsers otherwise wait
    /// about 3 s).
    pub retry: Duration,
    /// Events kept in memory per stream with readers, the hot window live delivery is served
    /// from (default 1024).
    pub hot_window: usize,
    /// Bytes of encoded events a hot window holds at most (default 16 MiB; the newest event
    /// stays whatever its size): with large events, the window holds fewer than
    /// [`Config::hot_window`] and readers further behind read the store.
    pub hot_window_bytes: usize,
    /// Most events a connection sends in one chunk, and reads from the store in one page when
    /// it is behind its stream's hot window (default 512): a replay of any length streams in
    /// pages of this size.
    ///
    /// It does not bound store writes: publishes batched together (see
    /// [`Hub::publish`](crate::Hub::publish)) are written at most 256 events or 1 MiB of data
    /// at a time, the engine's `MAX_BATCH_EVENTS` and `MAX_BATCH_BYTES`.
    pub page_size: usize,
    /// Largest accepted event data in bytes (default 256 KiB).
    pub max_event_bytes: usize,
    /// Most bytes of output one connection holds before the client has read them (default
    /// 256 KiB), replays included: a connection takes its next batch of events (from the hot
    /// window or a page from the store) only once what it handed to the socket writer is
    /// below this, so a client that stops reading pins about this much, not a page of events.
    /// A single event larger than this still goes, alone. `0` is taken as 1 (one event at a
    /// time).
    pub max_pending_bytes: usize,
    /// Most streams one connection may read, its private session stream not counted
    /// (default 32).
    pub max_streams: usize,
    /// What follows a `reset` (default [`ResetPolicy::ReplayRetained`]).
    pub reset_policy: ResetPolicy,
    /// How long a connection without `Last-Event-ID` (a plain page reload) waits for the
    /// other connections of its session in this process to close, so that it resumes from
    /// the cursor the last of them reached rather than an older one or the head (default
    /// 500 ms). A reload's old connection is usually gone well within it; a session with
    /// another tab open waits the whole bound, then resumes from the newest cursor known.
    /// Zero turns the wait off. See docs/protocol.md, "Page reloads".
    pub reload_wait: Duration,
    /// The store circuit breaker (default [`BreakerConfig::default`]: open after 5
    /// consecutive store failures, probe every second). While it is open, publishes and
    /// connection opens fail at once with [`Error::Unavailable`](crate::Error::Unavailable)
    /// (see [`Hub::store_failing`](crate::Hub::store_failing)).
    pub breaker: BreakerConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            session_ttl: Duration::from_secs(30),
            token_ttl: Duration::from_secs(24 * 3600),
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(2),
            hot_window: 1024,
            hot_window_bytes: 16 << 20,
            page_size: 512,
            max_event_bytes: 256 * 1024,
            max_pending_bytes: 256 * 1024,
            max_streams: 32,
            reset_policy: ResetPolicy::ReplayRetained,
            reload_wait: Duration::from_millis(500),
            breaker: BreakerConfig::default(),
        }
    }
}

impl Config {
    /// Sets [`Config::session_ttl`].
    #[must_use]
    pub fn with_session_ttl(mut self, session_ttl: Duration) -> Self {
        self.session_ttl = session_ttl;
        self
    }

    /// Sets [`Config::token_ttl`].
    #[must_use]
    pub fn with_token_ttl(mut self, token_ttl: Duration) -> Self {
        self.token_ttl = token_ttl;
        self
    }

    /// Sets [`Config::heartbeat`].
    #[must_use]
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Sets [`Config::retry`].
    #[must_use]
    pub fn with_retry(mut self, retry: Duration) -> Self {
        self.retry = retry;
        self
    }

    /// Sets [`Config::hot_window`] (at least 1 is used).
    #[must_use]
    pub fn with_hot_window(mut self, hot_window: usize) -> Self {
        self.hot_window = hot_window;
        self
    }

    /// Sets [`Config::hot_window_bytes`].
    ///
    /// ```
    /// use resumable_sse_core::Config;
    ///
    /// assert_eq!(Config::default().hot_window_bytes, 16 << 20);
    /// assert_eq!(Config::default().with_hot_window_bytes(1 << 20).hot_window_bytes, 1 << 20);
    /// ```
    #[must_use]
    pub fn with_hot_window_bytes(mut self, hot_window_bytes: usize) -> Self {
        self.hot_window_bytes = hot_window_bytes;
        self
    }

    /// Sets [`Config::page_size`] (at least 1 is used).
    #[must_use]
    pub fn with_page_size(mut self, page_size: usize) -> Self {
        self.page_size = page_size;
        self
    }

    /// Sets [`Config::max_event_bytes`].
    #[must_use]
    pub fn with_max_event_bytes(mut self, max_event_bytes: usize) -> Self {
        self.max_event_bytes = max_event_bytes;
        self
    }

    /// Sets [`Config::max_pending_bytes`].
    ///
    /// ```
    /// use resumable_sse_core::Config;
    ///
    /// assert_eq!(Config::default().max_pending_bytes, 256 * 1024);
    /// let config = Config::default().with_max_pending_bytes(1 << 20);
    /// assert_eq!(config.max_pending_bytes, 1 << 20);
    /// ```
    #[must_use]
    pub fn with_max_pending_bytes(mut self, max_pending_bytes: usize) -> Self {
        self.max_pending_bytes = max_pending_bytes;
        self
    }

    /// Sets [`Config::max_streams`].
    #[must_use]
    pub fn with_max_streams(mut self, max_streams: usize) -> Self {
        self.max_streams = max_streams;
        self
    }

    /// Sets [`Config::reset_policy`].
    #[must_use]
    pub fn with_reset_policy(mut self, reset_policy: ResetPolicy) -> Self {
        self.reset_policy = reset_policy;
        self
    }

    /// Sets [`Config::reload_wait`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use resumable_sse_core::Config;
    ///
    /// assert_eq!(Config::default().reload_wait, Duration::from_millis(500));
    /// let config = Config::default().with_reload_wait(Duration::ZERO);
    /// assert_eq!(config.reload_wait, Duration::ZERO);
    /// ```
    #[must_use]
    pub fn with_reload_wait(mut self, reload_wait: Duration) -> Self {
        self.reload_wait = reload_wait;
        self
    }

    /// Sets [`Config::breaker`].
    ///
    /// ```
    /// use resumable_sse_core::{BreakerConfig, Config};
    /// assert!(Config::default().with_breaker(BreakerConfig::off()).breaker.is_off());
    /// ```
    #[must_use]
    pub fn with_breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }
}
