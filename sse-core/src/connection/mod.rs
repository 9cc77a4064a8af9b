//! Connections: a cursor over the logs of a few streams, turned into bytes.
//!
//! A connection holds no queue. When one of its streams advances it takes every event after
//! its cursor, from the hot window when the window covers the cursor and from the store
//! otherwise, encodes the batch into one buffer and hands it to the writer in one go. A client
//! that reads slowly is simply polled less often and falls behind; it costs its cursor, not a
//! growing buffer.
//!
//! - [`open`] decides where each stream of a new connection starts (resume, reset or head);
//! - [`state`] is the state machine that then delivers events.
//!
//! Connections use the hub (its windows, its registry, its feed task); the hub knows nothing
//! of connections.

mod log;
mod open;
mod state;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use futures_core::Stream;
use serde::Serialize;

use crate::hub::{Hub, SessionContext};
use crate::{Result, StreamName};

/// What a connection should read and where it comes from.
///
/// ```
/// use resumable_sse_core::{ConnectRequest, StreamName};
///
/// let request = ConnectRequest::new(vec![StreamName::new("news")?])
///     .last_event_id(Some("AQAAAAACAAAAAAAAAAcq".to_owned()));
/// # Ok::<(), resumable_sse_core::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct ConnectRequest {
    streams: Vec<StreamName>,
    last_event_id: Option<String>,
    session: Option<SessionContext>,
    expires_at: Option<SystemTime>,
    log_span: Option<log::MakeSpan>,
}

impl ConnectRequest {
    /// A request for these streams.
    pub fn new(streams: Vec<StreamName>) -> Self {
        ConnectRequest {
            streams,
            last_event_id: None,
            session: None,
            expires_at: None,
            log_span: None,
        }
    }

    /// The `Last-Event-ID` the client sent (an empty value counts as none).
    pub fn last_event_id(mut self, id: Option<String>) -> Self {
        self.last_event_id = id.filter(|id| !id.is_empty());
        self
    }

    /// The client's session: its private stream is read too.
    pub fn session(mut self, session: SessionContext) -> Self {
        self.session = Some(session);
        self
    }

    /// When the client's authorization ends (a token's expiry): from then on the connection
    /// writes an [`ended`](crate::Frame::Ended) frame with reason `authorization_expired` and
    /// ends, at the latest one heartbeat interval after `at`, so that the client comes back
    /// with fresh credentials (and resumes from its cursor, losing nothing).
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use resumable_sse_core::{ConnectRequest, StreamName};
    ///
    /// let request = ConnectRequest::new(vec![StreamName::new("news")?])
    ///     .expires_at(SystemTime::now() + Duration::from_secs(300));
    /// # Ok::<(), resumable_sse_core::Error>(())
    /// ```
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// The span the connection's log lines go under, made afresh for each line (a connection
    /// logs rarely after it opened: when it closes, resets a stream or cannot read the
    /// store). Without it, the span current when the connection opens is kept for the
    /// connection's life; a subscriber's registry (`tracing-subscriber`'s) keeps room for
    /// every span open at once, and after a spike of connections that room stays allocated,
    /// scattered among the freed memory, long after they left.
    ///
    /// ```
    /// use resumable_sse_core::{ConnectRequest, StreamName};
    ///
    /// let request_id = "a1b2c3".to_owned();
    /// let request = ConnectRequest::new(vec![StreamName::new("news")?])
    ///     .log_span(move || tracing::info_span!("request", request_id = %request_id));
    /// # Ok::<(), resumable_sse_core::Error>(())
    /// ```
    pub fn log_span(mut self, make: impl Fn() -> tracing::Span + Send + Sync + 'static) -> Self {
        self.log_span = Some(log::MakeSpan(Arc::new(make)));
        self
    }
}

/// Why continuity could not be kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResetReason {
    /// The cursor is older than the oldest retained event.
    Retention,
    /// The stream's log was lost and started again (another epoch).
    EpochChanged,
    /// The session expired; its private stream starts again in a new session.
    SessionExpired,
    /// The cursor belonged to another session than the one presented (no token, a forged one,
    /// or another live session): that session's private stream is not this client's to read.
    SessionChanged,
    /// The `Last-Event-ID` was not a cursor for these streams.
    InvalidId,
}

impl ResetReason {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::Retention => "retention",
            ResetReason::EpochChanged => "epoch_changed",
            ResetReason::SessionExpired => "session_expired",
            ResetReason::SessionChanged => "session_changed",
            ResetReason::InvalidId => "invalid_id",
        }
    }
}

/// What the `connected` frame told the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnectedInfo {
    /// The session id, if the connection has a session.
    pub session: Option<String>,
    /// `true` when the connection continues from an earlier cursor (a `Last-Event-ID` or the
    /// session's recorded cursor).
    pub resumed: bool,
    /// How many events are replayed before live delivery: those between the cursor and the
    /// head as the server knew it at connect time (the store's, or the hot window's when it
    /// holds the cursor, which may not yet include an append made a moment before).
    pub replay: u64,
    /// `true` when at least one stream was reset.
    pub reset: bool,
}

/// An open connection: a stream of byte chunks to write to the client, each ending on a frame
/// boundary. It never ends on its own (heartbeats keep it alive) except when the hub closes
/// connections.
pub struct Connection {
    info: ConnectedInfo,
    log: log::ConnectionLog,
    inner: Pin<Box<dyn Stream<Item = Bytes> + Send>>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// What the `connected` frame says.
    pub fn info(&self) -> &ConnectedInfo {
        &self.info
    }

    /// A span for a log line about this connection, the one its own lines go under (see
    /// [`ConnectRequest::log_span`]). Made on each call: name it as the line's parent, so that
    /// it is made only when the line is logged.
    ///
    /// ```
    /// # use resumable_sse_core::{ConnectRequest, Hub, StreamName};
    /// # use std::sync::Arc;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> resumable_sse_core::Result<()> {
    /// # let store = Arc::new(resumable_sse_store_memory::MemoryStore::default());
    /// # let hub = Hub::builder(store.clone(), store).build();
    /// let connection = hub
    ///     .connect(ConnectRequest::new(vec![StreamName::new("news")?]).log_span(|| {
    ///         tracing::info_span!("request", request_id = "a1b2c3")
    ///     }))
    ///     .await?;
    /// tracing::debug!(parent: &connection.log_span(), "the client went away");
    /// # Ok(()) }
    /// ```
    pub fn log_span(&self) -> tracing::Span {
        self.log.span()
    }

    /// Keeps `value` alive as long as the connection: it is dropped when the connection is
    /// (the client went away, the server closed it), whichever server writes it. Used for
    /// the guards that count open connections against a limit.
    ///
    /// ```
    /// # use resumable_sse_core::{ConnectRequest, Hub, StreamName};
    /// # use std::sync::Arc;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> resumable_sse_core::Result<()> {
    /// # let store = Arc::new(resumable_sse_store_memory::MemoryStore::default());
    /// # let hub = Hub::builder(store.clone(), store).build();
    /// let guard = Arc::new(());
    /// let connection = hub
    ///     .connect(ConnectRequest::new(vec![StreamName::new("news")?]))
    ///     .await?
    ///     .hold(guard.clone());
    /// assert_eq!(Arc::strong_count(&guard), 2);
    /// drop(connection);
    /// assert_eq!(Arc::strong_count(&guard), 1);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn hold<T: Send + 'static>(mut self, value: T) -> Self {
        self.inner = Box::pin(Holding {
            inner: self.inner,
            _value: value,
        });
        self
    }
}

/// A stream that keeps a value alive with it.
struct Holding<T> {
    inner: Pin<Box<dyn Stream<Item = Bytes> + Send>>,
    _value: T,
}

// The inner stream is boxed and the value never pinned: moving `Holding` is fine.
impl<T> Unpin for Holding<T> {}

impl<T> Stream for Holding<T> {
    type Item = Bytes;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Stream for Connection {
    type Item = Bytes;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Hub {
    /// Opens a connection: decides where each stream starts (resume, reset or head) and
    /// returns the byte stream to send, starting with the retry hint and the `connected`
    /// frame.
    ///
    /// # Errors
    ///
    /// [`Error::Forbidden`](crate::Error::Forbidden) for a reserved stream other than the
    /// session's own, [`Error::InvalidStreamName`](crate::Error::InvalidStreamName) when no stream or too many are asked for, and the store's
    /// errors.
    pub async fn connect(&self, request: ConnectRequest) -> Result<Connection> {
        self.guarded(open::open(self.clone(), request)).await
    }
}
