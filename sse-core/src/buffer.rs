//! [`EventBuffer`]: the durable, bounded, per-stream log, and its live feed.
//!
//! The trait's docs show a complete implementation.

use std::fmt::Debug;
use std::pin::Pin;

use async_trait::async_trait;
use futures_core::Stream;

use crate::{Appended, Epoch, Event, NewEvent, Position, ReadPage, Result, StreamName};

/// An append, announced on the live feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The stream appended to.
    pub stream: StreamName,
    /// Its epoch.
    pub epoch: Epoch,
    /// The new event's position.
    pub position: Position,
    /// The event itself when it travelled with the notification: always with the memory store;
    /// with Redis and PostgreSQL when it is small enough (Redis: `feed_inline_max`;
    /// PostgreSQL, since migration 0002: appends whose notification fits `NOTIFY`'s 8000
    /// bytes). `None` makes the hub read it from the store.
    pub event: Option<Event>,
}

/// One item of the live feed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FeedItem {
    /// An event was appended.
    Appended(Notification),
    /// Notifications may have been lost (a lagging receiver, a reconnected pub/sub or LISTEN
    /// connection): the hub re-reads the head of every stream it serves.
    Resync,
    /// The feed lost its connection to the store and is reconnecting: until its next item
    /// the hub reports the feed as not connected ([`Hub::feed_connected`](crate::Hub::feed_connected),
    /// which readiness probes ask). A feed that reconnects yields [`FeedItem::Resync`] then.
    /// Optional: a store whose feed cannot lose a connection never yields it.
    Disconnected,
}

/// The live feed: every append made by any node sharing the backend, in position order per
/// stream. When it ends the hub asks for a new one (and resyncs).
pub type LiveFeed = Pin<Box<dyn Stream<Item = FeedItem> + Send + 'static>>;

/// The durable log of events, bounded per stream by count and age.
///
/// Contract (checked by the conformance suite in [`crate::testing`]):
///
/// - positions start at 1 and are gap-free, strictly increasing and in commit order per
///   stream: a reader that has seen `n` never later sees a new `n' < n`;
/// - the epoch of a stream changes exactly when its log is lost, and a new epoch restarts
///   positions at 1;
/// - `read` reports `oldest` and `head` from the same snapshot as the events, so the caller can
///   tell "nothing new" from "trimmed away";
/// - every append, from any node sharing the backend, shows up on every live feed, once;
///   [`FeedItem::Resync`] is for repairing lost notifications, not a way of delivering them;
/// - a publisher id names at most one retained event of a stream, also when appends with it
///   race; appending it again appends and announces nothing; once its event has been
///   trimmed, the id is free again.
///
/// # Writing a store
///
/// A complete store: one log per stream behind a mutex, trimmed by count, age and bytes as
/// [`Retention`](crate::Retention) says, deduplicating by publisher id, with the live feed on
/// a broadcast channel (whose lag becomes [`FeedItem::Resync`]). It passes the whole
/// [conformance suite](crate::testing) (`sse-core/tests/broken_stores.rs` runs it, and checks
/// that this example and that store are the same code); see `docs/stores.md` for how a store
/// of yours runs the suite.
///
/// ```
/// use std::collections::{HashMap, VecDeque};
/// use std::sync::Mutex;
/// use std::time::{Duration, SystemTime};
/// use async_trait::async_trait;
/// use futures_util::StreamExt;
/// use resumable_sse_core::time::unix_ms;
/// use resumable_sse_core::{
///     Appended, Epoch, EventBuffer, Event, FeedItem, LiveFeed, NewEvent, Notification,
///     Position, ReadPage, Result, Retention, StreamName,
/// };
/// use tokio::sync::broadcast;
///
/// #[derive(Debug)]
/// struct VecStore {
///     retention: Retention,
///     streams: Mutex<HashMap<StreamName, Log>>,
///     feed: broadcast::Sender<Notification>,
/// }
///
/// #[derive(Debug)]
/// struct Log {
///     epoch: Epoch,
///     head: Position,
///     events: VecDeque<Event>,
/// }
///
/// impl VecStore {
///     fn new(retention: Retention) -> Self {
///         VecStore { retention, streams: Mutex::default(), feed: broadcast::channel(1024).0 }
///     }
/// }
///
/// impl Log {
///     /// Drops the events past retention: beyond the newest `max_len`, older than `max_age`,
///     /// or beyond `max_bytes` of data (the newest event stays whatever its size).
///     fn trim(&mut self, retention: &Retention) {
///         let max_age = retention.max_age().as_millis() as u64;
///         let now = unix_ms(SystemTime::now());
///         let mut bytes: usize = self.events.iter().map(|e| e.data.len()).sum();
///         while self.events.len() > retention.max_len()
///             || self.events.front().is_some_and(|e| now.saturating_sub(e.time_ms) > max_age)
///             || (self.events.len() > 1 && bytes > retention.max_bytes())
///         {
///             bytes -= self.events.pop_front().map_or(0, |e| e.data.len());
///         }
///     }
/// }
///
/// #[async_trait]
/// impl EventBuffer for VecStore {
///     async fn append(&self, stream: &StreamName, event: NewEvent) -> Result<Appended> {
///         let mut streams = self.streams.lock().unwrap();
///         // A new log gets a new epoch: this store's data dies with it.
///         let log = streams.entry(stream.clone()).or_insert_with(|| Log {
///             epoch: Epoch::random(), head: 0, events: VecDeque::new(),
///         });
///         log.trim(&self.retention);
///         // A publisher id is an idempotency key while its event is retained.
///         if let Some(id) = event.id()
///             && let Some(first) = log.events.iter().find(|e| e.id.as_deref() == Some(id))
///         {
///             return Ok(Appended { epoch: log.epoch, position: first.position, duplicate: true });
///         }
///         log.head += 1;
///         let event = event.into_event(stream.clone(), log.head, SystemTime::now());
///         log.events.push_back(event.clone());
///         log.trim(&self.retention);
///         // Announce while holding the lock, so notifications leave in position order.
///         let _ = self.feed.send(Notification {
///             stream: stream.clone(), epoch: log.epoch, position: log.head, event: Some(event),
///         });
///         Ok(Appended { epoch: log.epoch, position: log.head, duplicate: false })
///     }
///
///     async fn read(&self, stream: &StreamName, after: Position, limit: usize) -> Result<ReadPage> {
///         let mut streams = self.streams.lock().unwrap();
///         let Some(log) = streams.get_mut(stream) else {
///             return Ok(ReadPage::missing());
///         };
///         log.trim(&self.retention);
///         let oldest = log.events.front().map_or(log.head + 1, |e| e.position);
///         let skip = (after + 1).saturating_sub(oldest) as usize;
///         Ok(ReadPage {
///             epoch: Some(log.epoch),
///             oldest,
///             head: log.head,
///             events: log.events.iter().skip(skip).take(limit).cloned().collect(),
///         })
///     }
///
///     fn live_feed(&self) -> LiveFeed {
///         let rx = self.feed.subscribe();
///         futures_util::stream::unfold(rx, |mut rx| async move {
///             let item = match rx.recv().await {
///                 Ok(n) => FeedItem::Appended(n),
///                 Err(broadcast::error::RecvError::Lagged(_)) => FeedItem::Resync,
///                 Err(broadcast::error::RecvError::Closed) => return None,
///             };
///             Some((item, rx))
///         })
///         .boxed()
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
/// let store = VecStore::new(Retention::new(2, Duration::from_secs(60)));
/// let news = StreamName::new("news")?;
/// let mut feed = store.live_feed();
/// for data in ["a", "b", "c"] {
///     store.append(&news, NewEvent::new(data)).await?;
/// }
/// let page = store.read(&news, 0, 10).await?;
/// assert_eq!((page.oldest, page.head, page.events[0].data.as_ref()), (2, 3, "b"));
/// assert!(matches!(feed.next().await, Some(FeedItem::Appended(n)) if n.position == 1));
/// # Ok(()) }
/// ```
#[async_trait]
pub trait EventBuffer: Debug + Send + Sync + 'static {
    /// Appends one event and returns its position. An event whose publisher id is already
    /// retained in the stream is not appended again (`duplicate` is set).
    async fn append(&self, stream: &StreamName, event: NewEvent) -> Result<Appended>;

    /// Appends several events to one stream, in order. Backends override this to do it in one
    /// round trip; the default appends one by one.
    async fn append_many(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Appended>> {
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            out.push(self.append(stream, event).await?);
        }
        Ok(out)
    }

    /// Reads up to `limit` events with a position greater than `after`, oldest first,
    /// together with the stream's epoch, oldest retained position and head.
    async fn read(&self, stream: &StreamName, after: Position, limit: usize) -> Result<ReadPage>;

    /// A new subscription to the live feed.
    fn live_feed(&self) -> LiveFeed;

    /// Checks that the store answers (used by health checks). The default reads nothing from
    /// a reserved stream.
    async fn ping(&self) -> Result<()> {
        let probe = StreamName::new("@ping").expect("valid name");
        self.read(&probe, 0, 0).await.map(drop)
    }

    /// The `store` label of this store's operations in the
    /// [metrics](crate::metrics::STORE_OPERATION_DURATION_SECONDS) the hub records around each
    /// call: a short fixed name (`memory`, `redis`, `postgres`); `custom` by default.
    fn store_label(&self) -> &'static str {
        "custom"
    }
}

#[async_trait]
impl<T: EventBuffer + ?Sized> EventBuffer for std::sync::Arc<T> {
    async fn append(&self, stream: &StreamName, event: NewEvent) -> Result<Appended> {
        (**self).append(stream, event).await
    }
    async fn append_many(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Appended>> {
        (**self).append_many(stream, events).await
    }
    async fn read(&self, stream: &StreamName, after: Position, limit: usize) -> Result<ReadPage> {
        (**self).read(stream, after, limit).await
    }
    fn live_feed(&self) -> LiveFeed {
        (**self).live_feed()
    }
    async fn ping(&self) -> Result<()> {
        (**self).ping().await
    }
    fn store_label(&self) -> &'static str {
        (**self).store_label()
    }
}
