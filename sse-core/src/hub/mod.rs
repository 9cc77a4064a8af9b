//! The hub: one per process. It owns the hot windows (a bounded in-memory tail per stream that
//! has readers), keeps them filled from the store's live feed, repairs gaps from the store, and
//! is the entry point for publishing, sessions and connections.
//!
//! - [`builder`]: [`HubBuilder`], which spawns the hub's three background tasks;
//! - [`window`]: the hot windows, and a connection's hold on one ([`Watch`]);
//! - [`feed`]: the feed task, which fills the windows;
//! - [`keeper`]: open connections' registrations, heartbeat ticks, their sessions'
//!   keep-alive and the cursors they reach;
//! - [`sessions`]: resolving a request's session;
//! - [`breaker`]: the store circuit breaker, which refuses requests at once while the store is
//!   failing and probes it until it answers.
//!
//! Connections (`crate::connection`) use the hub; the hub knows nothing of them.

mod breaker;
mod builder;
mod feed;
mod keeper;
mod sessions;
mod window;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use slab::Slab;
use tokio::sync::mpsc;

pub(crate) use breaker::Breaker;
pub use breaker::{BreakerConfig, CircuitOpen};
pub use builder::HubBuilder;
pub(crate) use keeper::Registration;
pub use sessions::{ResolvedSession, SessionContext, SessionStatus};
pub(crate) use window::{FRAME_OVERHEAD, Taken, Watch};

use crate::appender::Appender;
use crate::session::SessionStore;
use crate::signal::Signal;
use crate::token::TokenKeys;
use crate::{
    Appended, Config, Error, EventBuffer, NewEvent, Result, SessionId, StreamName, Transport,
};
use window::StreamState;

/// The protocol engine of one process. Cheap to clone (a reference count); create one per
/// process and share it.
///
/// Building a hub spawns three tasks on the current tokio runtime: the feed task (which keeps
/// the hot windows filled), the heartbeat ticker and the session keeper; they end when the last
/// clone is dropped.
///
/// ```
/// use std::sync::Arc;
/// use futures_util::StreamExt;
/// use resumable_sse_core::{codec, ConnectRequest, Config, Hub, NewEvent, StreamName};
/// use resumable_sse_store_memory::MemoryStore;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> resumable_sse_core::Result<()> {
/// let store = Arc::new(MemoryStore::default());
/// let hub = Hub::builder(store.clone(), store).config(Config::default()).build();
///
/// let news = StreamName::new("news")?;
/// let session = hub.resolve_session(None, None).await?;
/// let mut connection = hub
///     .connect(ConnectRequest::new(vec![news.clone()]).session(session.context()))
///     .await?;
/// hub.publish(&news, NewEvent::new("hello")).await?;
///
/// // The first chunk is the retry hint and the `connected` event; the event follows.
/// let mut parser = codec::Parser::new();
/// let mut seen = Vec::new();
/// while seen.len() < 2 {
///     let chunk = connection.next().await.unwrap();
///     for item in parser.feed(&chunk) {
///         if let codec::Item::Event(e) = item { seen.push(e) }
///     }
/// }
/// assert_eq!(seen[0].event, "connected");
/// assert_eq!(seen[1].data, "hello");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("buffer", &self.inner.buffer)
            .field("streams", &self.inner.streams.lock().len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    buffer: Arc<dyn EventBuffer>,
    /// Publishes go through it: concurrent ones to a stream share store writes.
    appender: Arc<Appender>,
    sessions: Arc<dyn SessionStore>,
    transport: Arc<dyn Transport>,
    keys: TokenKeys,
    config: Config,
    streams: Mutex<HashMap<StreamName, Arc<StreamState>>>,
    commands: mpsc::UnboundedSender<feed::Command>,
    /// Every open connection's wake-up signal: heartbeat ticks and closing reach them here.
    connections: Mutex<Slab<Arc<Signal>>>,
    /// Heartbeat ticks so far; a connection that wrote nothing during a tick sends a comment.
    tick: AtomicU64,
    closing: AtomicBool,
    /// The delivery path's metric handles.
    hot: crate::metrics::Hot,
    /// Whether the live feed is connected (see [`Hub::feed_connected`]).
    feed_connected: AtomicBool,
    /// Sessions with open connections (and how many), kept alive by the session keeper.
    live_sessions: Mutex<HashMap<SessionId, usize>>,
    /// Cursors of closed connections waiting to be recorded, and whether a task records them.
    closed: Mutex<keeper::ClosedCursors>,
    /// Raised whenever a connection unregisters: [`Hub::drain`] and the reload wait
    /// ([`Config::reload_wait`]) wait on it.
    unregistered: tokio::sync::Notify,
    /// The store circuit breaker (shared with the appender, which reports its writes).
    breaker: Arc<Breaker>,
}

impl Hub {
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The event store.
    pub fn buffer(&self) -> &Arc<dyn EventBuffer> {
        &self.inner.buffer
    }

    /// The session store.
    pub fn sessions(&self) -> &Arc<dyn SessionStore> {
        &self.inner.sessions
    }

    /// The transport.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.transport
    }

    /// Appends an event to a stream. Returns once the store has it (fan-out to connections
    /// happens afterwards, from the live feed).
    ///
    /// Concurrent publishes to one stream share store writes: those that arrive while a write
    /// to the stream is in flight are appended together, in arrival order, in one
    /// [`EventBuffer::append_many`] as soon as it finishes (ADR 0013). A lone publisher waits
    /// for one store round trip, as without batching.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStreamName`] for a reserved (`@…`) stream, [`Error::TooLarge`] for data
    /// over [`Config::max_event_bytes`], and the store's errors.
    pub async fn publish(&self, stream: &StreamName, event: NewEvent) -> Result<Appended> {
        if stream.is_reserved() {
            return Err(Error::InvalidStreamName(
                "names starting with '@' are reserved; use send_to_session for a session".into(),
            ));
        }
        self.check_size(&event)
            .inspect_err(|_| count_publish_error())?;
        // The appender tells the breaker how its store writes went.
        self.inner
            .breaker
            .check()
            .inspect_err(|_| count_publish_error())?;
        counted(self.inner.appender.append(stream, event).await)
    }

    /// Publishes waiting, right now, for a write to their stream to finish so that they can be
    /// written together (see [`Hub::publish`]). Steadily high means the store's writes are the
    /// bottleneck.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let store = std::sync::Arc::new(resumable_sse_store_memory::MemoryStore::default());
    /// let hub = resumable_sse_core::Hub::builder(store.clone(), store).build();
    /// assert_eq!(hub.queued_publishes(), 0);
    /// # }
    /// ```
    pub fn queued_publishes(&self) -> usize {
        self.inner.appender.queued()
    }

    /// Appends several events to one stream, in order, in one store operation where the
    /// backend supports it.
    ///
    /// # Errors
    ///
    /// As [`Hub::publish`]; nothing is appended when a check fails.
    pub async fn publish_many(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Appended>> {
        if stream.is_reserved() {
            return Err(Error::InvalidStreamName(
                "names starting with '@' are reserved".into(),
            ));
        }
        for event in &events {
            self.check_size(event)
                .inspect_err(|_| count_publish_error())?;
        }
        let appended = self
            .guarded(self.inner.buffer.append_many(stream, events))
            .await;
        match &appended {
            Ok(all) => {
                metrics::counter!(crate::metrics::EVENTS_PUBLISHED_TOTAL)
                    .increment(all.len() as u64);
            }
            Err(_) => count_publish_error(),
        }
        appended
    }

    /// Sends an event to one session's private stream: every connection of that session gets
    /// it, and a session that is away gets it when it reconnects (within its TTL).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when the session does not exist (or has expired), and as
    /// [`Hub::publish`].
    pub async fn send_to_session(&self, session: &SessionId, event: NewEvent) -> Result<Appended> {
        self.check_size(&event)
            .inspect_err(|_| count_publish_error())?;
        if self
            .guarded(self.inner.sessions.load(session))
            .await
            .inspect_err(|_| count_publish_error())?
            .is_none()
        {
            return Err(Error::NotFound(format!("session {session}")));
        }
        counted(self.inner.appender.append(&session.stream(), event).await)
    }

    /// Whether the store circuit breaker is open: the store failed
    /// [`BreakerConfig::failures`] times in a row and has not answered a probe since. While it
    /// is, publishing, opening connections and resolving sessions that need the store fail at
    /// once with [`Error::Unavailable`] (its source [`CircuitOpen`]) without asking the store;
    /// connections already open stay open.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let store = std::sync::Arc::new(resumable_sse_store_memory::MemoryStore::default());
    /// let hub = resumable_sse_core::Hub::builder(store.clone(), store).build();
    /// assert!(!hub.store_failing());
    /// # }
    /// ```
    pub fn store_failing(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// Runs a store operation of a request through the circuit breaker: refused at once while
    /// it is open, its outcome counted otherwise.
    pub(crate) async fn guarded<T>(&self, operation: impl Future<Output = Result<T>>) -> Result<T> {
        self.inner.breaker.check()?;
        let outcome = operation.await;
        self.inner.breaker.record(&outcome);
        outcome
    }

    fn check_size(&self, event: &NewEvent) -> Result<()> {
        let size = event.data().len();
        let limit = self.inner.config.max_event_bytes;
        if size > limit {
            return Err(Error::TooLarge { size, limit });
        }
        Ok(())
    }

    /// Ends every open connection (now and in the future) with the retry hint, so clients
    /// reconnect, to another instance or to this one once it is back. Call it on graceful
    /// shutdown: SSE responses never finish on their own. [`Hub::drain`] does it and also
    /// waits until they are written.
    pub fn close_connections(&self) {
        self.inner.closing.store(true, Ordering::Release);
        self.inner.raise_connections();
    }

    /// Whether the hub's live feed is connected to the store: `false` from the moment the
    /// store's feed says it lost its connection ([`FeedItem::Disconnected`](crate::FeedItem::Disconnected))
    /// or ends, until it yields again. While it is `false`, appends made through other
    /// instances reach this one's clients only once the feed is back (they lose nothing: the
    /// hub resyncs). Readiness probes ask it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let store = std::sync::Arc::new(resumable_sse_store_memory::MemoryStore::default());
    /// let hub = resumable_sse_core::Hub::builder(store.clone(), store).build();
    /// assert!(hub.feed_connected());
    /// # }
    /// ```
    pub fn feed_connected(&self) -> bool {
        self.inner.feed_connected.load(Ordering::Acquire)
    }

    /// Number of streams that currently have a hot window (streams with readers).
    pub fn active_streams(&self) -> usize {
        self.inner.streams.lock().len()
    }

    /// Events currently held in all hot windows: the hub's memory bound is
    /// `active_streams × hot_window` events, and `active_streams × hot_window_bytes` bytes.
    pub fn window_events(&self) -> usize {
        let streams: Vec<_> = self.inner.streams.lock().values().cloned().collect();
        streams.iter().map(|s| s.read().len()).sum()
    }

    /// The delivery path's metric handles.
    #[inline]
    pub(crate) fn hot_metrics(&self) -> &crate::metrics::Hot {
        &self.inner.hot
    }

    /// Heartbeat ticks so far (two per [`Config::heartbeat`]).
    #[inline]
    pub(crate) fn tick(&self) -> u64 {
        self.inner.tick.load(Ordering::Acquire)
    }

    /// Whether [`Hub::close_connections`] was called.
    #[inline]
    pub(crate) fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    /// Subscribes `signal` to a stream: anything appended to it from now on raises `signal`,
    /// and the stream keeps a hot window while the returned [`Watch`] lives.
    pub(crate) fn watch(&self, name: &StreamName, signal: &Arc<Signal>) -> Watch {
        Watch::new(&self.inner, name, signal)
    }
}

fn count_publish_error() {
    metrics::counter!(crate::metrics::PUBLISH_ERRORS_TOTAL).increment(1);
}

/// Counts one publish's outcome.
fn counted(appended: Result<Appended>) -> Result<Appended> {
    match &appended {
        Ok(_) => metrics::counter!(crate::metrics::EVENTS_PUBLISHED_TOTAL).increment(1),
        Err(_) => count_publish_error(),
    }
    appended
}
