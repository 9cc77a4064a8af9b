//! The in-memory store for `sse-core`: the default backend, zero set-up.
//!
//! - events: one ring per stream, bounded by count, age and bytes ([`Retention`]);
//! - memory: a total budget for all rings and a cap on the number of streams
//!   ([`MemoryConfig::budget`], [`MemoryConfig::max_streams`]); an append that would go over
//!   either is refused with [`Error::Full`], nothing stored;
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

#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::Mutex;
use resumable_sse_core::collections::{shrink_deque_when_sparse, shrink_when_sparse};
use resumable_sse_core::task::spawn_periodic;
use resumable_sse_core::text::Chunks;
use resumable_sse_core::time::unix_ms;
use resumable_sse_core::{
    Appended, Epoch, Error, Event, EventBuffer, FeedItem, LiveFeed, NewEvent, Notification,
    Position, ReadPage, Result, Retention, SessionId, SessionRecord, SessionStore, StreamName,
    Text,
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
/// assert_eq!(config.budget, 512 << 20);
/// assert_eq!(config.max_streams, 100_000);
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
    /// Most bytes all rings together may hold (default 512 MiB): each event counts its data,
    /// event name and publisher id plus [`EVENT_OVERHEAD`], each stream [`STREAM_OVERHEAD`].
    /// An append that would go over it, after what its own stream's retention frees, is
    /// refused with [`Error::Full`]; retention by age,
    /// count and bytes and expired sessions free room.
    pub budget: usize,
    /// Most streams held at once, session streams included (default 100 000). An append that
    /// would create one more is refused with [`Error::Full`].
    /// A stream goes when all its events have expired (at the next sweep) or its session
    /// expired.
    pub max_streams: usize,
}

/// What an event costs in [`MemoryConfig::budget`] beyond its data, name and id: its record
/// in the log (128 bytes), its entry in the publisher-id map (40 bytes and the map's spare
/// room) and its share of a chunk's bookkeeping and unused end (ADR 0031).
pub const EVENT_OVERHEAD: usize = 224;

/// What a stream costs in [`MemoryConfig::budget`] before any event: its log and map entry.
pub const STREAM_OVERHEAD: usize = 256;

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            retention: Retention::default(),
            sweep_interval: Duration::from_secs(10),
            feed_capacity: 4096,
            budget: 512 << 20,
            max_streams: 100_000,
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

    /// Sets [`MemoryConfig::budget`].
    ///
    /// ```
    /// use resumable_sse_core::{Error, EventBuffer, NewEvent, StreamName};
    /// use resumable_sse_store_memory::{MemoryConfig, MemoryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> resumable_sse_core::Result<()> {
    /// let store = MemoryStore::new(MemoryConfig::default().with_budget(64 * 1024));
    /// let big = StreamName::new("big")?;
    /// store.append(&big, NewEvent::new("x".repeat(40_000))).await?;
    /// let refused = store.append(&StreamName::new("other")?, NewEvent::new("y".repeat(40_000))).await;
    /// assert!(matches!(refused, Err(Error::Full(_))));
    /// assert!(store.used_bytes() <= 64 * 1024);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_budget(mut self, budget: usize) -> Self {
        self.budget = budget;
        self
    }

    /// Sets [`MemoryConfig::max_streams`].
    ///
    /// ```
    /// use resumable_sse_core::{Error, EventBuffer, NewEvent, StreamName};
    /// use resumable_sse_store_memory::{MemoryConfig, MemoryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> resumable_sse_core::Result<()> {
    /// let store = MemoryStore::new(MemoryConfig::default().with_max_streams(1));
    /// store.append(&StreamName::new("a")?, NewEvent::new("1")).await?;
    /// store.append(&StreamName::new("a")?, NewEvent::new("2")).await?;
    /// let refused = store.append(&StreamName::new("b")?, NewEvent::new("1")).await;
    /// assert!(matches!(refused, Err(Error::Full(_))));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_max_streams(mut self, max_streams: usize) -> Self {
        self.max_streams = max_streams;
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
    streams: Mutex<Streams>,
    sessions: Mutex<HashMap<SessionId, SessionRecord>>,
    feed: broadcast::Sender<Notification>,
}

/// Every stream's log, and what they cost together in [`MemoryConfig::budget`].
#[derive(Debug, Default)]
struct Streams {
    logs: HashMap<StreamName, Log>,
    /// The sum of the logs' `cost` plus [`STREAM_OVERHEAD`] per log.
    used: usize,
}

impl Streams {
    /// Removes a log, giving back what it cost.
    fn remove(&mut self, name: &StreamName) {
        if let Some(log) = self.logs.remove(name) {
            self.used -= log.cost + STREAM_OVERHEAD;
        }
    }
}

#[derive(Debug)]
struct Log {
    epoch: Epoch,
    head: Position,
    events: VecDeque<Event>,
    ids: HashMap<Text, Position>,
    /// Where the retained events' text is kept: together, apart from the connections'
    /// short-lived memory (ADR 0031).
    chunks: Chunks,
    /// The sum of the retained events' data lengths (retention by bytes).
    data_bytes: usize,
    /// The sum of the retained events' [`cost`] (the budget).
    cost: usize,
}

/// An event's data length and its cost in the budget.
fn sizes(data: usize, event: Option<&str>, id: Option<&str>) -> (usize, usize) {
    let extra = event.map_or(0, str::len) + id.map_or(0, str::len);
    (data, data + extra + EVENT_OVERHEAD)
}

/// `event` with its data, name and id kept in `chunks`, sized for `retained` bytes of text.
fn kept_in(chunks: &mut Chunks, event: Event, retained: usize) -> Event {
    let mut keep = |text: Text| chunks.keep(text, retained);
    Event {
        data: keep(event.data),
        event: event.event.map(&mut keep),
        id: event.id.map(&mut keep),
        ..event
    }
}

fn event_sizes(e: &Event) -> (usize, usize) {
    sizes(e.data.len(), e.event.as_deref(), e.id.as_deref())
}

/// Whether retention drops the oldest of `len` events holding `data_bytes`, the oldest
/// appended at `oldest_ms`: over the count, too old, or over the bytes (the newest event is
/// kept whatever its size).
fn over(retention: &Retention, now_ms: u64, len: usize, data_bytes: usize, oldest_ms: u64) -> bool {
    len > retention.max_len()
        || now_ms.saturating_sub(oldest_ms) > retention.max_age().as_millis() as u64
        || (len > 1 && data_bytes > retention.max_bytes())
}

impl Log {
    fn new() -> Self {
        Log {
            epoch: Epoch::random(),
            head: 0,
            events: VecDeque::new(),
            ids: HashMap::new(),
            chunks: Chunks::new(),
            data_bytes: 0,
            cost: 0,
        }
    }

    /// `event` with its text copied into the log's chunks, which are sized for the text the
    /// log retains.
    fn keep(&mut self, event: Event) -> Event {
        let retained = self.text_bytes();
        kept_in(&mut self.chunks, event, retained)
    }

    fn push(&mut self, event: Event) {
        let (data, cost) = event_sizes(&event);
        self.data_bytes += data;
        self.cost += cost;
        self.events.push_back(event);
    }

    /// Drops the oldest event; returns its cost.
    fn pop_front(&mut self) -> usize {
        let Some(event) = self.events.pop_front() else {
            return 0;
        };
        let (data, cost) = event_sizes(&event);
        self.data_bytes -= data;
        self.cost -= cost;
        if let Some(id) = event.id {
            self.ids.remove(&id);
        }
        cost
    }

    /// Applies retention; returns the cost freed.
    fn trim(&mut self, retention: &Retention, now_ms: u64) -> usize {
        let mut freed = 0;
        while let Some(front) = self.events.front() {
            if !over(
                retention,
                now_ms,
                self.events.len(),
                self.data_bytes,
                front.time_ms,
            ) {
                break;
            }
            freed += self.pop_front();
        }
        freed
    }

    /// The retained events' text: data, names and ids.
    fn text_bytes(&self) -> usize {
        self.cost - self.events.len() * EVENT_OVERHEAD
    }

    /// Gives back the room of events that have gone (a burst, then quiet), at each sweep:
    /// the maps' and the chunks'. A log whose chunks were sized for far more than it now
    /// retains copies its events' text into new ones (ADR 0031), so that a few events left
    /// from a burst do not hold its chunks.
    fn compact(&mut self) {
        let retained = self.text_bytes();
        if self.chunks.oversized(retained) {
            let mut chunks = Chunks::new();
            for event in &mut self.events {
                *event = kept_in(&mut chunks, event.clone(), retained);
            }
            self.ids = self
                .events
                .iter()
                .filter_map(|e| Some((e.id.clone()?, e.position)))
                .collect();
            self.chunks = chunks;
        }
        shrink_when_sparse(&mut self.ids);
        shrink_deque_when_sparse(&mut self.events);
    }

    /// What appending `new` (data length and cost of each, appended now) would add to the
    /// log's cost, net of what retention would then drop: the same greedy trim from the
    /// front as [`Log::trim`] after each push, which ends in the same state as one trim at
    /// the end.
    fn net_cost(&self, retention: &Retention, now_ms: u64, new: &[(usize, usize)]) -> isize {
        let added: usize = new.iter().map(|n| n.1).sum();
        let mut len = self.events.len() + new.len();
        let mut data_bytes = self.data_bytes + new.iter().map(|n| n.0).sum::<usize>();
        let mut freed = 0;
        let old = self
            .events
            .iter()
            .map(|e| (event_sizes(e), e.time_ms))
            .chain(new.iter().map(|&n| (n, now_ms)));
        for ((data, cost), time_ms) in old {
            if !over(retention, now_ms, len, data_bytes, time_ms) {
                break;
            }
            len -= 1;
            data_bytes -= data;
            freed += cost;
        }
        added as isize - freed as isize
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
            streams: Mutex::new(Streams::default()),
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
            .logs
            .values()
            .map(|l| l.events.len())
            .sum()
    }

    /// Bytes counted against [`MemoryConfig::budget`] now.
    ///
    /// ```
    /// use resumable_sse_core::{EventBuffer, NewEvent, StreamName};
    /// use resumable_sse_store_memory::{MemoryStore, EVENT_OVERHEAD, STREAM_OVERHEAD};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> resumable_sse_core::Result<()> {
    /// let store = MemoryStore::default();
    /// store.append(&StreamName::new("a")?, NewEvent::new("four")).await?;
    /// assert_eq!(store.used_bytes(), STREAM_OVERHEAD + 4 + EVENT_OVERHEAD);
    /// assert_eq!(store.stream_count(), 1);
    /// # Ok(()) }
    /// ```
    pub fn used_bytes(&self) -> usize {
        self.shared.streams.lock().used
    }

    /// Number of streams held.
    pub fn stream_count(&self) -> usize {
        self.shared.streams.lock().logs.len()
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
            shrink_when_sparse(&mut sessions);
            expired
        };
        let now_ms = unix_ms(now);
        let mut streams = self.streams.lock();
        for id in expired {
            streams.remove(&id.stream());
        }
        let mut retained = 0;
        let Streams { logs, used } = &mut *streams;
        logs.retain(|_, log| {
            *used -= log.trim(&self.config.retention, now_ms);
            log.compact();
            retained += log.events.len();
            // An empty log may go: if the stream comes back it gets a new epoch, so a cursor
            // into the old log is answered with a reset, never mistaken for the new one.
            let keep = !log.events.is_empty();
            if !keep {
                *used -= STREAM_OVERHEAD;
            }
            keep
        });
        shrink_when_sparse(logs);
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
        let config = &shared.config;
        let mut guard = shared.streams.lock();
        let streams = &mut *guard;
        let created = !streams.logs.contains_key(stream);
        if created {
            if streams.logs.len() >= config.max_streams {
                return Err(Error::Full(format!(
                    "the memory store holds its maximum of {} streams",
                    config.max_streams
                )));
            }
            streams.logs.insert(stream.clone(), Log::new());
            streams.used += STREAM_OVERHEAD;
        }
        let Streams { logs, used } = streams;
        // The log's own name, shared by its events: the caller's copy (one per publish) would
        // be kept with each event for as long as it is retained.
        let name = logs
            .get_key_value(stream)
            .map(|(name, _)| name.clone())
            .expect("inserted above");
        let log = logs.get_mut(stream).expect("inserted above");
        *used -= log.trim(&config.retention, now_ms);
        // All or nothing: the batch is checked whole against the budget, net of what its own
        // stream's retention drops, before anything is appended.
        let new: Vec<(usize, usize)> = events
            .iter()
            .filter(|e| e.id().is_none_or(|id| !log.ids.contains_key(id)))
            .map(|e| sizes(e.data().len(), e.event(), e.id()))
            .collect();
        let net = log.net_cost(&config.retention, now_ms, &new);
        if net > 0 && *used + net as usize > config.budget {
            if created {
                // Created for this append: not kept.
                logs.remove(stream);
                *used -= STREAM_OVERHEAD;
            }
            return Err(Error::Full(format!(
                "the memory store's budget of {} bytes is used up",
                config.budget
            )));
        }
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
            let event = log.keep(event.into_event(name.clone(), log.head, now));
            if let Some(id) = &event.id {
                log.ids.insert(id.clone(), log.head);
            }
            log.push(event.clone());
            *used += event_sizes(&event).1;
            *used -= log.trim(&config.retention, now_ms);
            // Sent under the lock so notifications leave in position order.
            let _ = shared.feed.send(Notification {
                stream: name.clone(),
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
        let mut guard = shared.streams.lock();
        let Streams { logs, used } = &mut *guard;
        let Some(log) = logs.get_mut(stream) else {
            return Ok(ReadPage::missing());
        };
        *used -= log.trim(&shared.config.retention, unix_ms(SystemTime::now()));
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
