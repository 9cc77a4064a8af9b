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
pub enum FeedItem {
    /// An event was appended.
    Appended(Notification),
    /// Notifications may have been lost (a lagging receiver, a reconnected pub/sub or LISTEN
    /// connection): the hub re-reads the head of every stream it serves.
    Resync,
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
/// - every append, from any node sharing the backend, shows up on every live feed.
///
/// # Writing a store
///
/// A complete store: one vector per stream behind a mutex, never trimmed, with the live feed
/// on a broadcast channel (whose lag becomes [`FeedItem::Resync`]). It passes the same
/// contract the shipped backends do (idempotency by publisher id aside, which it skips for
/// brevity).
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::SystemTime;
/// use async_trait::async_trait;
/// use futures_util::StreamExt;
/// use resumable_sse_core::{
///     Appended, Epoch, EventBuffer, Event, FeedItem, LiveFeed, NewEvent, Notification,
///     Position, ReadPage, Result, StreamName,
/// };
/// use tokio::sync::broadcast;
///
/// #[derive(Debug)]
/// struct VecStore {
///     epoch: Epoch,
///     streams: Mutex<HashMap<StreamName, Vec<Event>>>,
///     feed: broadcast::Sender<Notification>,
/// }
///
/// #[async_trait]
/// impl EventBuffer for VecStore {
///     async fn append(&self, stream: &StreamName, event: NewEvent) -> Result<Appended> {
///         let mut streams = self.streams.lock().unwrap();
///         let log = streams.entry(stream.clone()).or_default();
///         let position = log.len() as Position + 1;
///         let event = event.into_event(stream.clone(), position, SystemTime::now());
///         log.push(event.clone());
///         // Announce while holding the lock, so notifications leave in position order.
///         let _ = self.feed.send(Notification {
///             stream: stream.clone(), epoch: self.epoch, position, event: Some(event),
///         });
///         Ok(Appended { epoch: self.epoch, position, duplicate: false })
///     }
///
///     async fn read(&self, stream: &StreamName, after: Position, limit: usize) -> Result<ReadPage> {
///         let streams = self.streams.lock().unwrap();
///         let log = streams.get(stream).map(Vec::as_slice).unwrap_or_default();
///         Ok(ReadPage {
///             epoch: Some(self.epoch),
///             oldest: 1,
///             head: log.len() as Position,
///             events: log.iter().skip(after as usize).take(limit).cloned().collect(),
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
/// let store = VecStore {
///     epoch: Epoch::random(),
///     streams: Mutex::default(),
///     feed: broadcast::channel(1024).0,
/// };
/// let news = StreamName::new("news")?;
/// let mut feed = store.live_feed();
/// store.append(&news, NewEvent::new("hello")).await?;
/// let page = store.read(&news, 0, 10).await?;
/// assert_eq!((page.head, page.events[0].data.as_ref()), (1, "hello"));
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
}
