//! The hub: one per process. It owns the hot windows (a bounded in-memory tail per stream that
//! has readers), keeps them filled from the store's live feed, repairs gaps from the store, and
//! is the entry point for publishing, sessions and connections.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::task::AtomicWaker;
use parking_lot::{Mutex, RwLock};
use slab::Slab;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::appender::Appender;
use crate::connection::{self, ConnectRequest, Connection};
use crate::session::{SessionRecord, SessionStore};
use crate::token::{TokenClaims, TokenError, TokenKeys};
use crate::{
    Appended, Config, Epoch, Error, EventBuffer, FeedItem, NewEvent, Notification, Position,
    ReadPage, Result, SessionId, SseTransport, StreamName, Transport,
};

/// The protocol engine of one process. Cheap to clone (a reference count); create one per
/// process and share it.
///
/// Creating a hub spawns its feed task on the current tokio runtime; the task ends when the
/// last clone is dropped.
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
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("buffer", &self.inner.buffer)
            .field("streams", &self.inner.streams.lock().len())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Hub`]: stores are required, everything else has a default.
#[derive(Debug)]
#[must_use]
pub struct HubBuilder {
    buffer: Arc<dyn EventBuffer>,
    sessions: Arc<dyn SessionStore>,
    transport: Arc<dyn Transport>,
    keys: Option<TokenKeys>,
    config: Config,
}

impl HubBuilder {
    /// The engine configuration (default: [`Config::default`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The session token keys (default: one random key, so tokens do not survive a restart
    /// and are not shared between instances: set real keys in production).
    pub fn keys(mut self, keys: TokenKeys) -> Self {
        self.keys = Some(keys);
        self
    }

    /// The wire transport (default: [`SseTransport::default`]).
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = transport;
        self
    }

    /// Builds the hub and spawns its feed task.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn build(self) -> Hub {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut config = self.config;
        config.hot_window = config.hot_window.max(1);
        config.page_size = config.page_size.max(1);
        // Subscribe before the hub exists, so no append made through it can be missed.
        let feed = self.buffer.live_feed();
        // Two ticks per heartbeat interval: see `State::next_chunk`.
        let heartbeat = (config.heartbeat / 2).max(Duration::from_millis(5));
        let keepalive = (config.session_ttl / 2).max(Duration::from_millis(10));
        let inner = Arc::new(Inner {
            appender: Appender::new(self.buffer.clone()),
            buffer: self.buffer,
            sessions: self.sessions,
            transport: self.transport,
            keys: self.keys.unwrap_or_else(TokenKeys::random),
            config,
            streams: Mutex::new(HashMap::new()),
            commands: tx,
            connections: Mutex::new(Slab::new()),
            tick: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            live_sessions: Mutex::new(HashMap::new()),
            closed: Mutex::new(ClosedCursors::default()),
        });
        tokio::spawn(run_ticker(Arc::downgrade(&inner), heartbeat));
        tokio::spawn(run_session_keeper(Arc::downgrade(&inner), keepalive));
        tokio::spawn(run_feed(Arc::downgrade(&inner), rx, feed));
        Hub { inner }
    }
}

pub(crate) struct Inner {
    pub(crate) buffer: Arc<dyn EventBuffer>,
    /// Publishes go through it: concurrent ones to a stream share store writes.
    appender: Arc<Appender>,
    pub(crate) sessions: Arc<dyn SessionStore>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) keys: TokenKeys,
    pub(crate) config: Config,
    streams: Mutex<HashMap<StreamName, Arc<StreamState>>>,
    commands: mpsc::UnboundedSender<Command>,
    /// Every open connection's wake-up signal: heartbeat ticks and closing reach them here.
    connections: Mutex<Slab<Arc<Signal>>>,
    /// Heartbeat ticks so far; a connection that wrote nothing during a tick sends a comment.
    pub(crate) tick: AtomicU64,
    pub(crate) closing: AtomicBool,
    /// Sessions with open connections (and how many), kept alive by the session keeper.
    live_sessions: Mutex<HashMap<SessionId, usize>>,
    /// Cursors of closed connections waiting to be recorded, and whether a task records them.
    closed: Mutex<ClosedCursors>,
}

#[derive(Default)]
struct ClosedCursors {
    waiting: Vec<(SessionId, String)>,
    recording: bool,
}

enum Command {
    /// A connection read where a stream stands, after subscribing to it: a window that is
    /// not ready yet starts there, without a read of its own.
    Seed {
        state: Weak<StreamState>,
        epoch: Option<Epoch>,
        head: Position,
    },
    /// A connection could not read the store: wake it again in a moment.
    Retry(Weak<Signal>),
}

/// A connection's wake-up: raised by its streams, the heartbeat ticker and the retry timer;
/// one flag and one waker, registered once, so waking a connection allocates nothing and a
/// waiting connection holds no timer and no per-wait registration.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Clears the flag; `true` if it was raised.
    pub(crate) fn take(&self) -> bool {
        self.raised.swap(false, Ordering::AcqRel)
    }

    /// Registers the task to wake when raised.
    pub(crate) fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }
}

/// A connection's registration with the hub; dropping it unregisters.
pub(crate) struct Registration {
    key: usize,
    session: Option<SessionId>,
    hub: Weak<Inner>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        hub.connections.lock().try_remove(self.key);
        if let Some(id) = self.session {
            let mut live = hub.live_sessions.lock();
            if let Some(n) = live.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    live.remove(&id);
                }
            }
        }
    }
}

/// The hot window of one stream: bodies of positions `start ..= start + len - 1`, contiguous.
pub(crate) struct Window {
    pub(crate) ready: bool,
    pub(crate) epoch: Option<Epoch>,
    pub(crate) start: Position,
    pub(crate) entries: VecDeque<Bytes>,
}

impl Window {
    pub(crate) fn head(&self) -> Position {
        self.start + self.entries.len() as Position - 1
    }

    /// Whether a reader at this cursor entry continues from the window: same log, and the
    /// window starts at or before its next position (it may be ahead of the window's head,
    /// having read the store while the window was catching up). A cursor from before the
    /// stream existed (no epoch, position 0) continues in whatever epoch the stream got, if the
    /// window holds it from its first event.
    pub(crate) fn holds(&self, epoch: Option<Epoch>, position: Position) -> bool {
        let same_log = self.epoch == epoch || (epoch.is_none() && position == 0 && self.start == 1);
        same_log && position + 1 >= self.start
    }
}

pub(crate) struct StreamState {
    pub(crate) name: StreamName,
    pub(crate) window: RwLock<Window>,
    subscribers: Mutex<Slab<Arc<Signal>>>,
    watchers: AtomicUsize,
}

impl StreamState {
    fn notify(&self) {
        for (_, signal) in self.subscribers.lock().iter() {
            signal.raise();
        }
    }
}

/// A connection's hold on a stream's window; dropping the last one frees the window.
pub(crate) struct Watch {
    pub(crate) state: Arc<StreamState>,
    key: usize,
    hub: Weak<Inner>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.state.subscribers.lock().try_remove(self.key);
        if let Some(hub) = self.hub.upgrade() {
            let mut streams = hub.streams.lock();
            if self.state.watchers.fetch_sub(1, Ordering::AcqRel) == 1 {
                streams.remove(&self.state.name);
            }
        }
    }
}

/// The outcome of [`Hub::resolve_session`].
#[derive(Clone, Debug)]
pub struct ResolvedSession {
    /// The session.
    pub record: SessionRecord,
    /// A freshly signed token for it, to return to the client.
    pub token: String,
    /// How it was found.
    pub status: SessionStatus,
}

impl ResolvedSession {
    /// What [`ConnectRequest::session`] needs.
    pub fn context(&self) -> connection::SessionContext {
        connection::SessionContext {
            id: self.record.id,
            cursor: self.record.cursor.clone(),
            status: self.status,
        }
    }
}

/// How a request's session was resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionStatus {
    /// No token, or one that is not genuine: a new session.
    New,
    /// A genuine token of a live session.
    Resumed,
    /// A genuine token whose session (or the token itself) has expired: a new session, and any
    /// cursor of the old one is answered with a `reset` (reason `session_expired`).
    Expired,
}

impl Hub {
    /// Starts building a hub over an event store and a session store (one value may be both).
    pub fn builder(buffer: Arc<dyn EventBuffer>, sessions: Arc<dyn SessionStore>) -> HubBuilder {
        HubBuilder {
            buffer,
            sessions,
            transport: Arc::new(SseTransport::default()),
            keys: None,
            config: Config::default(),
        }
    }

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
        self.check_size(&event)?;
        self.inner.appender.append(stream, event).await
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
            self.check_size(event)?;
        }
        self.inner.buffer.append_many(stream, events).await
    }

    /// Sends an event to one session's private stream: every connection of that session gets
    /// it, and a session that is away gets it when it reconnects (within its TTL).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when the session does not exist (or has expired), and as
    /// [`Hub::publish`].
    pub async fn send_to_session(&self, session: &SessionId, event: NewEvent) -> Result<Appended> {
        self.check_size(&event)?;
        if self.inner.sessions.load(session).await?.is_none() {
            return Err(Error::NotFound(format!("session {session}")));
        }
        self.inner.appender.append(&session.stream(), event).await
    }

    fn check_size(&self, event: &NewEvent) -> Result<()> {
        let size = event.data().len();
        let limit = self.inner.config.max_event_bytes;
        if size > limit {
            return Err(Error::TooLarge { size, limit });
        }
        Ok(())
    }

    /// Resolves the session of a request from the token it brought (cookie or header) and the
    /// principal the application authenticated, creating a session when there is none.
    ///
    /// Forged, tampered, malformed and expired tokens never resolve to an existing session:
    /// they yield a new one.
    ///
    /// # Errors
    ///
    /// [`Error::Forbidden`] when a genuine token is bound to a principal other than
    /// `principal` (an anonymous token presented with a principal, as after a login, gets a
    /// new session instead), and the session store's errors.
    pub async fn resolve_session(
        &self,
        token: Option<&str>,
        principal: Option<&str>,
    ) -> Result<ResolvedSession> {
        let inner = &self.inner;
        let now = SystemTime::now();
        let status = match token.map(|t| inner.keys.verify(t, now)) {
            // An anonymous session presented by a request that has since authenticated (a
            // login) is not reused: the user gets a session of their own.
            Some(Ok(claims)) if claims.principal.is_none() && principal.is_some() => {
                SessionStatus::New
            }
            Some(Ok(claims)) => {
                if claims.principal.as_deref() != principal {
                    return Err(Error::Forbidden(
                        "the session belongs to another principal".into(),
                    ));
                }
                match inner.sessions.load(&claims.session).await? {
                    Some(record) if record.principal.as_deref() == principal => {
                        let token = self.sign(&record);
                        return Ok(ResolvedSession {
                            record,
                            token,
                            status: SessionStatus::Resumed,
                        });
                    }
                    Some(_) => {
                        return Err(Error::Forbidden(
                            "the session belongs to another principal".into(),
                        ));
                    }
                    None => SessionStatus::Expired,
                }
            }
            Some(Err(TokenError::Expired)) => SessionStatus::Expired,
            Some(Err(_)) => {
                tracing::debug!("refused a session token that is not genuine");
                SessionStatus::New
            }
            None => SessionStatus::New,
        };
        let record = SessionRecord::new(principal.map(str::to_owned), inner.config.session_ttl);
        inner.sessions.create(&record).await?;
        tracing::debug!(session = %record.id, ?status, "created a session");
        let token = self.sign(&record);
        Ok(ResolvedSession {
            record,
            token,
            status,
        })
    }

    fn sign(&self, record: &SessionRecord) -> String {
        self.inner.keys.sign(&TokenClaims {
            session: record.id,
            expires_at: SystemTime::now() + self.inner.config.token_ttl,
            principal: record.principal.clone(),
        })
    }

    /// Opens a connection: decides where each stream starts (resume, reset or head) and
    /// returns the byte stream to send, starting with the retry hint and the `connected`
    /// frame.
    ///
    /// # Errors
    ///
    /// [`Error::Forbidden`] for a reserved stream other than the session's own,
    /// [`Error::InvalidStreamName`] when no stream or too many are asked for, and the store's
    /// errors.
    pub async fn connect(&self, request: ConnectRequest) -> Result<Connection> {
        connection::open(self.clone(), request).await
    }

    /// Ends every open connection (now and in the future) with the retry hint, so clients
    /// reconnect, to another instance or to this one once it is back. Call it on graceful
    /// shutdown: SSE responses never finish on their own.
    pub fn close_connections(&self) {
        self.inner.closing.store(true, Ordering::Release);
        for (_, signal) in self.inner.connections.lock().iter() {
            signal.raise();
        }
    }

    /// Number of streams that currently have a hot window (streams with readers).
    pub fn active_streams(&self) -> usize {
        self.inner.streams.lock().len()
    }

    /// Events currently held in all hot windows: the hub's memory bound is
    /// `active_streams × hot_window` events.
    pub fn window_events(&self) -> usize {
        let streams: Vec<_> = self.inner.streams.lock().values().cloned().collect();
        streams.iter().map(|s| s.window.read().entries.len()).sum()
    }

    /// Registers a connection: heartbeat ticks, closing and its session's keep-alive.
    pub(crate) fn register(
        &self,
        signal: &Arc<Signal>,
        session: Option<SessionId>,
    ) -> Registration {
        let key = self.inner.connections.lock().insert(signal.clone());
        if let Some(id) = session {
            *self.inner.live_sessions.lock().entry(id).or_insert(0) += 1;
        }
        Registration {
            key,
            session,
            hub: Arc::downgrade(&self.inner),
        }
    }

    /// Asks the feed task to raise `signal` after a short delay (the store failed a read).
    pub(crate) fn retry_later(&self, signal: &Arc<Signal>) {
        let _ = self
            .inner
            .commands
            .send(Command::Retry(Arc::downgrade(signal)));
    }

    /// Records the cursor a closed connection reached in its session, for a later connection
    /// without `Last-Event-ID` (a page reload). Cursors of connections that close while a
    /// write is in flight are written together by one task, [`CURSOR_BATCH`] per store
    /// request: a mass disconnect costs a few writes, not one per connection.
    pub(crate) fn record_cursor(&self, id: SessionId, cursor: String) {
        let start = {
            let mut closed = self.inner.closed.lock();
            closed.waiting.push((id, cursor));
            !std::mem::replace(&mut closed.recording, true)
        };
        if !start {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(record_closed(self.inner.clone()));
            }
            Err(_) => {
                // Dropped outside a runtime (the process is ending): nothing can write it.
                let mut closed = self.inner.closed.lock();
                closed.waiting.clear();
                closed.recording = false;
            }
        }
    }

    /// Tells the feed task where a stream stood when a connection read it after subscribing
    /// ([`Hub::watch`]): a window that is not ready yet starts there. Any append after that
    /// read reaches the feed task after this, or made the window ready already (then this is
    /// ignored), so the window misses nothing. This is how windows start: one read per
    /// connection that opens, not a second one per window.
    /// A window that is ready already needs nothing: most connections send nothing.
    pub(crate) fn seed(&self, watch: &Watch, page: &ReadPage) {
        if watch.state.window.read().ready {
            return;
        }
        let _ = self.inner.commands.send(Command::Seed {
            state: Arc::downgrade(&watch.state),
            epoch: page.epoch,
            head: page.head,
        });
    }

    pub(crate) fn watch(&self, name: &StreamName, signal: &Arc<Signal>) -> Watch {
        let mut streams = self.inner.streams.lock();
        let state = streams
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(StreamState {
                    name: name.clone(),
                    window: RwLock::new(Window {
                        ready: false,
                        epoch: None,
                        start: 1,
                        entries: VecDeque::new(),
                    }),
                    subscribers: Mutex::new(Slab::new()),
                    watchers: AtomicUsize::new(0),
                })
            })
            .clone();
        state.watchers.fetch_add(1, Ordering::AcqRel);
        let key = state.subscribers.lock().insert(signal.clone());
        Watch {
            state,
            key,
            hub: Arc::downgrade(&self.inner),
        }
    }
}

const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);
/// Sessions extended per store request by the session keeper.
const TOUCH_BATCH: usize = 1000;
/// Cursors of closed connections recorded per store request.
const CURSOR_BATCH: usize = 1000;

/// The feed task: applies the live feed and window initialisations, one at a time, so each
/// window only ever moves forward by contiguous positions.
async fn run_feed(
    hub: Weak<Inner>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut feed: crate::LiveFeed,
) {
    let mut failed: HashSet<StreamName> = HashSet::new();
    let mut waiting: Vec<Weak<Signal>> = Vec::new();
    let mut retry_at: Option<Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            command = commands.recv() => {
                if hub.strong_count() == 0 {
                    return;
                }
                match command {
                    None => return,
                    Some(Command::Seed { state, epoch, head }) => {
                        if let Some(state) = state.upgrade() {
                            seed(&state, epoch, head);
                        }
                    }
                    Some(Command::Retry(signal)) => waiting.push(signal),
                }
            }
            item = feed.next() => {
                let Some(inner) = hub.upgrade() else { return };
                match item {
                    Some(FeedItem::Appended(n)) => {
                        let name = n.stream.clone();
                        if inner.on_appended(n).await.is_err() {
                            failed.insert(name);
                        }
                    }
                    Some(FeedItem::Resync) => failed.extend(inner.resync_all().await),
                    None => {
                        // Subscribe again after a pause, without blocking window
                        // initialisations meanwhile, then resync: whatever was appended in
                        // between is read from the store.
                        tracing::warn!("live feed ended; subscribing again");
                        let buffer = inner.buffer.clone();
                        feed = futures_util::stream::once(async move {
                            tokio::time::sleep(RETRY_AFTER_ERROR).await;
                            // Subscribed before the resync reads, so nothing falls between.
                            let fresh = buffer.live_feed();
                            futures_util::stream::once(async { FeedItem::Resync }).chain(fresh)
                        })
                        .flatten()
                        .boxed();
                    }
                }
            }
            () = retry => {
                retry_at = None;
                for signal in waiting.drain(..).filter_map(|s| s.upgrade()) {
                    signal.raise();
                }
                let Some(inner) = hub.upgrade() else { return };
                for name in std::mem::take(&mut failed) {
                    if inner.refresh_by_name(&name).await.is_err() {
                        failed.insert(name);
                    }
                }
            }
        }
        if (!failed.is_empty() || !waiting.is_empty()) && retry_at.is_none() {
            retry_at = Some(Instant::now() + RETRY_AFTER_ERROR);
        }
    }
}

/// Raises every connection twice per heartbeat interval; each decides whether it was idle.
async fn run_ticker(hub: Weak<Inner>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(inner) = hub.upgrade() else { return };
        inner.tick.fetch_add(1, Ordering::AcqRel);
        for (_, signal) in inner.connections.lock().iter() {
            signal.raise();
        }
    }
}

/// Writes the cursors of closed connections until none is waiting.
async fn record_closed(inner: Arc<Inner>) {
    loop {
        let batch: Vec<(SessionId, String)> = {
            let mut closed = inner.closed.lock();
            if closed.waiting.is_empty() {
                closed.recording = false;
                return;
            }
            let n = closed.waiting.len().min(CURSOR_BATCH);
            closed.waiting.drain(..n).collect()
        };
        let expires = SystemTime::now() + inner.config.session_ttl;
        if let Err(err) = inner.sessions.record_cursors(&batch, expires).await {
            tracing::warn!(sessions = batch.len(), error = %err, "could not record the cursors of closed connections");
        }
    }
}

/// Extends every session that has open connections, every half TTL, in batches of
/// [`TOUCH_BATCH`] (one store request each with the Redis and PostgreSQL stores), however many
/// connections each session has.
async fn run_session_keeper(hub: Weak<Inner>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(inner) = hub.upgrade() else { return };
        let live: Vec<SessionId> = inner.live_sessions.lock().keys().copied().collect();
        let (sessions, ttl) = (inner.sessions.clone(), inner.config.session_ttl);
        drop(inner);
        for batch in live.chunks(TOUCH_BATCH) {
            if let Err(err) = sessions.touch_many(batch, SystemTime::now() + ttl).await {
                tracing::warn!(sessions = batch.len(), error = %err, "could not extend sessions");
            }
        }
    }
}

impl Inner {
    fn state(&self, name: &StreamName) -> Option<Arc<StreamState>> {
        self.streams.lock().get(name).cloned()
    }

    async fn on_appended(&self, n: Notification) -> Result<()> {
        let Some(state) = self.state(&n.stream) else {
            return Ok(());
        };
        {
            let mut w = state.window.write();
            if w.ready && w.epoch == Some(n.epoch) {
                if n.position <= w.head() {
                    return Ok(());
                }
                if let (true, Some(event)) = (n.position == w.head() + 1, &n.event) {
                    let body = self.transport.encode_body(event);
                    push(&mut w, body, self.config.hot_window);
                    drop(w);
                    state.notify();
                    return Ok(());
                }
            }
        }
        // Not initialised, another epoch, a skipped position or no payload: read the store.
        self.refresh(&state).await
    }

    async fn resync_all(&self) -> Vec<StreamName> {
        let states: Vec<_> = self.streams.lock().values().cloned().collect();
        let mut failed = Vec::new();
        for state in states {
            if self.refresh(&state).await.is_err() {
                failed.push(state.name.clone());
            }
        }
        failed
    }

    async fn refresh_by_name(&self, name: &StreamName) -> Result<()> {
        match self.state(name) {
            Some(state) => self.refresh(&state).await,
            None => Ok(()),
        }
    }

    /// Brings a window up to the store's head: initialises it, follows an epoch change, or
    /// fills a gap in the feed from the store.
    async fn refresh(&self, state: &StreamState) -> Result<()> {
        let (ready, epoch, head) = {
            let w = state.window.read();
            (w.ready, w.epoch, w.head())
        };
        let failed = |err: &Error| {
            tracing::warn!(stream = %state.name, error = %err, "could not refresh a hot window");
        };
        let mut next = None;
        if ready {
            let page = self
                .buffer
                .read(&state.name, head, self.config.hot_window)
                .await
                .inspect_err(failed)?;
            if page.epoch == epoch && page.oldest <= head + 1 {
                next = Some(page);
            } else if epoch.is_some() && page.epoch != epoch {
                tracing::info!(stream = %state.name, "the stream's epoch changed");
            }
        }
        let continues = next.is_some();
        // A window that starts (or starts over, in a new epoch) holds the stream's newest
        // events from the start, not just its head: readers whose cursor is behind the head
        // (most often "no epoch, position 0", from before a stream got its first event)
        // find them in memory, rather than each of them reading the store at once.
        let page = match next {
            Some(page) => page,
            None => self.load_tail(&state.name).await.inspect_err(failed)?,
        };
        // Encoded before the lock: connections read the window meanwhile.
        let bodies: Vec<Bytes> = page
            .events
            .iter()
            .map(|e| self.transport.encode_body(e))
            .collect();
        {
            let mut w = state.window.write();
            if w.ready && (w.epoch != epoch || w.head() != head) {
                // Someone else moved the window meanwhile; only the feed task writes, so this
                // cannot happen, but never apply a stale page.
                return Ok(());
            }
            if !continues {
                let start = page
                    .events
                    .first()
                    .map_or(page.head, |e| e.position.saturating_sub(1));
                reset_window(&mut w, page.epoch, start);
            }
            for body in bodies {
                push(&mut w, body, self.config.hot_window);
            }
            if page.head > w.head() {
                // Further behind than one page: restart the window at the head; readers
                // behind it read the store.
                reset_window(&mut w, page.epoch, page.head);
            }
        }
        state.notify();
        Ok(())
    }

    /// The newest events of a stream, up to a hot window's worth, ending at its head: one
    /// read when the stream holds no more than that, two otherwise. No events if the store
    /// answers anything but a contiguous run up to its head.
    async fn load_tail(&self, name: &StreamName) -> Result<ReadPage> {
        let hot = self.config.hot_window;
        let mut page = self.buffer.read(name, 0, hot).await?;
        if !is_tail(&page) {
            let from = page.head.saturating_sub(hot as Position);
            page = self.buffer.read(name, from, hot).await?;
        }
        if !is_tail(&page) {
            page.events.clear();
        }
        Ok(page)
    }
}

/// Whether a page's events are contiguous and end at its head.
fn is_tail(page: &ReadPage) -> bool {
    let contiguous = page
        .events
        .windows(2)
        .all(|pair| pair[1].position == pair[0].position + 1);
    contiguous && page.events.last().is_none_or(|e| e.position == page.head)
}

/// Starts a window that is not ready yet at `head` (see [`Hub::seed`]); run by the feed task.
fn seed(state: &StreamState, epoch: Option<Epoch>, head: Position) {
    {
        let mut w = state.window.write();
        if w.ready {
            return;
        }
        reset_window(&mut w, epoch, head);
    }
    state.notify();
}

fn reset_window(w: &mut Window, epoch: Option<Epoch>, head: Position) {
    w.ready = true;
    w.epoch = epoch;
    w.start = head + 1;
    w.entries.clear();
}

fn push(w: &mut Window, body: Bytes, cap: usize) {
    w.entries.push_back(body);
    while w.entries.len() > cap {
        w.entries.pop_front();
        w.start += 1;
    }
}
