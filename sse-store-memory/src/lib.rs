//! The in-memory store for `sse-core`: the default backend, zero set-up.
//!
//! - events: one ring per stream, bounded by count and by age ([`Retention`]);
//! - epochs: a random epoch per stream log, so every process start (and every log dropped
//!   after all its events expired) is a new epoch and old cursors get a `reset`;
//! - sessions: a map with TTL, swept periodically with the logs of expired sessions;
//! - the live feed: an in-process broadcast carrying the events themselves.
//!
//! State lives in this process only: use the Redis or PostgreSQL backend to share it between
//! instances or keep it across restarts.
//!
//! ```
//! use std::time::Duration;
//! use resumable_sse_core::{EventBuffer, NewEvent, Retention, StreamName};
//! use resumable_sse_store_memory::{MemoryConfig, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> resumable_sse_core::Result<()> {
//! let retention = Retention::new(2, Duration::from_secs(3600));
//! let store = MemoryStore::new(MemoryConfig::default().with_retention(retention));
//! let news = StreamName::new("news")?;
//! for data in ["a", "b", "c"] {
//!     store.append(&news, NewEvent::new(data)).await?;
//! }
//! let page = store.read(&news, 0, 10).await?;
//! assert_eq!((page.oldest, page.head, page.events.len()), (2, 3, 2));
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::Mutex;
use resumable_sse_core::task::spawn_periodic;
use resumable_sse_core::time::unix_ms;
use resumable_sse_core::{
    Appended, Epoch, Event, EventBuffer, FeedItem, LiveFeed, NewEvent, Notification, Position,
    ReadPage, Result, Retention, SessionId, SessionRecord, SessionStore, StreamName,
};
use tokio::sync::broadcast;

/// Settings of a [`MemoryStore`].
///
/// ```
/// use std::time::Duration;
/// use resumable_sse_core::Retention;
/// use resumable_sse_store_memory::MemoryConfig;
///
/// let config = MemoryConfig::default()
///     .with_retention(Retention::new(10_000, Duration::from_secs(600)));
/// assert_eq!(config.retention.max_len(), 10_000);
/// assert_eq!(config.sweep_interval, Duration::from_secs(10));
/// ```
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Events kept per stream, by count and age (default 1000 events, one hour).
    pub retention: Retention,
    /// How often expired sessions and events are swept (default 10 s). Expired sessions are
    /// never returned, swept or not; sweeping frees their memory.
    pub sweep_interval: Duration,
    /// Capacity of the live feed's channel (default 4096). A hub that falls further behind
    /// gets a resync and reads what it missed from the rings.
    pub feed_capacity: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            retention: Retention::default(),
            sweep_interval: Duration::from_secs(10),
            feed_capacity: 4096,
        }
    }
}

impl MemoryConfig {
    /// Sets [`MemoryConfig::retention`].
    #[must_use]
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Sets [`MemoryConfig::sweep_interval`] (at least 10 ms is used).
    #[must_use]
    pub fn with_sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Sets [`MemoryConfig::feed_capacity`] (at least 16 is used).
    #[must_use]
    pub fn with_feed_capacity(mut self, capacity: usize) -> Self {
        self.feed_capacity = capacity;
        self
    }
}

/// The in-memory [`EventBuffer`] and [`SessionStore`]. Cheap to clone: clones share state.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: MemoryConfig,
    streams: Mutex<HashMap<StreamName, Log>>,
    sessions: Mutex<HashMap<SessionId, SessionRecord>>,
    feed: broadcast::Sender<Notification>,
}

#[derive(Debug)]
struct Log {
    epoch: Epoch,
    head: Position,
    events: VecDeque<Event>,
    ids: HashMap<Arc<str>, Position>,
}

impl Log {
    fn new() -> Self {
        Log {
            epoch: Epoch::random(),
            head: 0,
            events: VecDeque::new(),
            ids: HashMap::new(),
        }
    }

    fn pop_front(&mut self) {
        if let Some(Event { id: Some(id), .. }) = self.events.pop_front() {
            self.ids.remove(&id);
        }
    }

    fn trim(&mut self, retention: &Retention, now_ms: u64) {
        let max_age = retention.max_age().as_millis() as u64;
        while self.events.len() > retention.max_len()
            || self
                .events
                .front()
                .is_some_and(|e| now_ms.saturating_sub(e.time_ms) > max_age)
        {
            self.pop_front();
        }
    }

    fn oldest(&self) -> Position {
        self.events.front().map_or(self.head + 1, |e| e.position)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(MemoryConfig::default())
    }
}

impl MemoryStore {
    /// A new, empty store. When called inside a tokio runtime it spawns the sweeper, which
    /// stops when the last clone of the store is dropped.
    pub fn new(config: MemoryConfig) -> Self {
        let shared = Arc::new(Shared {
            config,
            streams: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            feed: broadcast::channel(config.feed_capacity.max(16)).0,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            let interval = config.sweep_interval.max(Duration::from_millis(10));
            spawn_periodic(Arc::downgrade(&shared), interval, |shared| async move {
                shared.sweep();
            });
        }
        MemoryStore { shared }
    }

    /// Drops expired sessions (with their private streams), expired events and stream logs
    /// left empty. The sweeper calls this every [`MemoryConfig::sweep_interval`].
    pub fn sweep(&self) {
        self.shared.sweep();
    }

    /// Number of events held in all rings (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shared
            .streams
            .lock()
            .values()
            .map(|l| l.events.len())
            .sum()
    }

    /// `true` when no event is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of sessions held, expired ones not yet swept included.
    pub fn session_count(&self) -> usize {
        self.shared.sessions.lock().len()
    }
}

impl Shared {
    fn sweep(&self) {
        let now = SystemTime::now();
        let expired: Vec<SessionId> = {
            let mut sessions = self.sessions.lock();
            let expired = sessions
                .values()
                .filter(|r| r.expires_at <= now)
                .map(|r| r.id)
                .collect::<Vec<_>>();
            for id in &expired {
                sessions.remove(id);
            }
            expired
        };
        let now_ms = unix_ms(now);
        let mut streams = self.streams.lock();
        for id in expired {
            streams.remove(&id.stream());
        }
        let mut retained = 0;
        streams.retain(|_, log| {
            log.trim(&self.config.retention, now_ms);
            retained += log.events.len();
            // An empty log may go: if the stream comes back it gets a new epoch, so a cursor
            // into the old log is answered with a reset, never mistaken for the new one.
            !log.events.is_empty()
        });
        // Sampled at each sweep: appends do not pay for it.
        metrics::gauge!(resumable_sse_core::metrics::STORE_RETAINED_EVENTS, "store" => "memory")
            .set(retained as f64);
    }
}

#[async_trait]
impl EventBuffer for MemoryStore {
    fn store_label(&self) -> &'static str {
        "memory"
    }

    async fn append(&self, stream: &StreamName, event: NewEvent) -> Result<Appended> {
        let mut out = self.append_many(stream, vec![event]).await?;
        Ok(out.remove(0))
    }

    async fn append_many(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Appended>> {
        let shared = &self.shared;
        let now = SystemTime::now();
        let now_ms = unix_ms(now);
        let mut streams = shared.streams.lock();
        let log = streams.entry(stream.clone()).or_insert_with(Log::new);
        log.trim(&shared.config.retention, now_ms);
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            if let Some(&position) = event.id().and_then(|id| log.ids.get(id)) {
                out.push(Appended {
                    epoch: log.epoch,
                    position,
                    duplicate: true,
                });
                continue;
            }
            log.head += 1;
            let event = event.into_event(stream.clone(), log.head, now);
            if let Some(id) = &event.id {
                log.ids.insert(id.clone(), log.head);
            }
            log.events.push_back(event.clone());
            log.trim(&shared.config.retention, now_ms);
            // Sent under the lock so notifications leave in position order.
            let _ = shared.feed.send(Notification {
                stream: stream.clone(),
                epoch: log.epoch,
                position: log.head,
                event: Some(event),
            });
            out.push(Appended {
                epoch: log.epoch,
                position: log.head,
                duplicate: false,
            });
        }
        Ok(out)
    }

    async fn read(&self, stream: &StreamName, after: Position, limit: usize) -> Result<ReadPage> {
        let shared = &self.shared;
        let mut streams = shared.streams.lock();
        let Some(log) = streams.get_mut(stream) else {
            return Ok(ReadPage::missing());
        };
        log.trim(&shared.config.retention, unix_ms(SystemTime::now()));
        let oldest = log.oldest();
        let skip = (after + 1).saturating_sub(oldest) as usize;
        Ok(ReadPage {
            epoch: Some(log.epoch),
            oldest,
            head: log.head,
            events: log.events.iter().skip(skip).take(limit).cloned().collect(),
        })
    }

    fn live_feed(&self) -> LiveFeed {
        let rx = self.shared.feed.subscribe();
        futures_util::stream::unfold(rx, |mut rx| async move {
            let item = match rx.recv().await {
                Ok(n) => FeedItem::Appended(n),
                Err(broadcast::error::RecvError::Lagged(_)) => FeedItem::Resync,
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((item, rx))
        })
        .boxed()
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    fn store_label(&self) -> &'static str {
        "memory"
    }

    async fn create(&self, record: &SessionRecord) -> Result<()> {
        self.shared
            .sessions
            .lock()
            .insert(record.id, record.clone());
        Ok(())
    }

    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        let now = SystemTime::now();
        Ok(self
            .shared
            .sessions
            .lock()
            .get(id)
            .filter(|r| r.expires_at > now)
            .cloned())
    }

    async fn touch(&self, id: &SessionId, expires_at: SystemTime) -> Result<bool> {
        let now = SystemTime::now();
        let mut sessions = self.shared.sessions.lock();
        match sessions.get_mut(id).filter(|r| r.expires_at > now) {
            Some(record) => {
                record.expires_at = expires_at;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn record_cursor(
        &self,
        id: &SessionId,
        cursor: &str,
        expires_at: SystemTime,
    ) -> Result<bool> {
        let now = SystemTime::now();
        let mut sessions = self.shared.sessions.lock();
        match sessions.get_mut(id).filter(|r| r.expires_at > now) {
            Some(record) => {
                record.cursor = Some(cursor.to_owned());
                record.expires_at = expires_at;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.shared.sessions.lock().remove(id);
        Ok(())
    }
}
