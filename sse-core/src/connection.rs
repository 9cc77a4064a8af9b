//! Connections: a cursor over the logs of a few streams, turned into bytes.
//!
//! A connection holds no queue. When one of its streams advances it takes every event after
//! its cursor, from the hot window when the window covers the cursor and from the store
//! otherwise, encodes the batch into one buffer and hands it to the writer in one go. A client
//! that reads slowly is simply polled less often and falls behind; it costs its cursor, not a
//! growing buffer.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use serde::Serialize;
use std::sync::Arc;

use crate::cursor::{Cursor, fingerprint, session_tag};
use crate::hub::{Hub, Registration, SessionStatus, Signal, Watch};
use crate::transport::Frame;
use crate::{Epoch, Error, Position, ReadPage, ResetPolicy, Result, SessionId, StreamName};

/// The session side of a connection request (see [`ResolvedSession::context`](crate::ResolvedSession::context)).
#[derive(Clone, Debug)]
pub struct SessionContext {
    /// The session id; its private stream is added to the connection.
    pub id: SessionId,
    /// The cursor its previous connection reached, used when no `Last-Event-ID` is given.
    pub cursor: Option<String>,
    /// How the session was resolved.
    pub status: SessionStatus,
}

/// What a connection should read and where it comes from.
///
/// ```
/// use sse_core::{ConnectRequest, StreamName};
///
/// let request = ConnectRequest::new(vec![StreamName::new("news")?])
///     .last_event_id(Some("AQAAAAACAAAAAAAAAAcq".to_owned()));
/// # Ok::<(), sse_core::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct ConnectRequest {
    streams: Vec<StreamName>,
    last_event_id: Option<String>,
    session: Option<SessionContext>,
}

impl ConnectRequest {
    /// A request for these streams.
    pub fn new(streams: Vec<StreamName>) -> Self {
        ConnectRequest {
            streams,
            last_event_id: None,
            session: None,
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
    /// How many events are replayed before live delivery.
    pub replay: u64,
    /// `true` when at least one stream was reset.
    pub reset: bool,
}

/// An open connection: a stream of byte chunks to write to the client, each ending on a frame
/// boundary. It never ends on its own (heartbeats keep it alive) except when the hub closes
/// connections.
pub struct Connection {
    info: ConnectedInfo,
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
}

impl Stream for Connection {
    type Item = Bytes;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.inner.as_mut().poll_next(cx)
    }
}

enum Start {
    Resume(Cursor),
    Reset(ResetReason),
    Fresh,
}

#[derive(Serialize)]
struct ResetData<'a> {
    reason: &'static str,
    streams: Vec<&'a str>,
}

fn compatible(epoch: Option<Epoch>, position: Position, store: Option<Epoch>) -> bool {
    epoch == store || (epoch.is_none() && position == 0)
}

fn restart(page: &ReadPage, policy: ResetPolicy) -> (Option<Epoch>, Position) {
    match policy {
        ResetPolicy::SkipToHead => (page.epoch, page.head),
        _ => (page.epoch, page.oldest.saturating_sub(1).min(page.head)),
    }
}

/// Where one stream of a connection continues, given its cursor entry and a fresh page:
/// the entry to use and the reason for a reset, if one is needed.
fn check(
    (epoch, position): (Option<Epoch>, Position),
    page: &ReadPage,
    policy: ResetPolicy,
) -> ((Option<Epoch>, Position), Option<ResetReason>) {
    if !compatible(epoch, position, page.epoch) {
        (restart(page, policy), Some(ResetReason::EpochChanged))
    } else if position > page.head {
        // A cursor from the future in this epoch: not one we issued.
        (restart(page, policy), Some(ResetReason::InvalidId))
    } else if page.oldest > position + 1 {
        (restart(page, policy), Some(ResetReason::Retention))
    } else {
        ((page.epoch.or(epoch), position), None)
    }
}

pub(crate) async fn open(hub: Hub, request: ConnectRequest) -> Result<Connection> {
    let inner = &hub.inner;
    let config = &inner.config;
    if request.streams.is_empty() {
        return Err(Error::InvalidStreamName("no stream was requested".into()));
    }
    if request.streams.len() > config.max_streams {
        return Err(Error::InvalidStreamName(format!(
            "{} streams requested, at most {} are allowed",
            request.streams.len(),
            config.max_streams
        )));
    }
    let own = request.session.as_ref().map(|s| s.id.stream());
    if let Some(bad) = request
        .streams
        .iter()
        .find(|s| s.is_reserved() && Some(*s) != own.as_ref())
    {
        return Err(Error::Forbidden(format!("stream {bad} is private")));
    }
    // The requested streams, sorted, then the session's private stream last: the cursor's
    // fingerprint covers the requested streams only, so a client that comes back without its
    // session still resumes them (see ADR 0003).
    let mut names: Vec<StreamName> = request
        .streams
        .iter()
        .filter(|s| Some(*s) != own.as_ref())
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    let fp = fingerprint(&names);
    let public = names.len();
    names.extend(own);
    let session = request.session.as_ref();
    let tag = session.map(|s| session_tag(&s.id));

    // Subscribe first: anything appended from here on wakes this connection, so the replay
    // read below and live delivery cannot miss an event between them.
    let signal = Arc::new(Signal::default());
    let subs: Vec<Watch> = names.iter().map(|n| hub.watch(n, &signal)).collect();
    let start = match (&request.last_event_id, session) {
        (Some(id), _) => match Cursor::decode(id, &names[..public]) {
            Ok(cursor) => Start::Resume(cursor),
            Err(_) => Start::Reset(ResetReason::InvalidId),
        },
        (None, Some(s)) => match s
            .cursor
            .as_deref()
            .map(|c| Cursor::decode(c, &names[..public]))
        {
            Some(Ok(cursor)) if cursor.session_tag() == tag => Start::Resume(cursor),
            _ => Start::Fresh,
        },
        (None, None) => Start::Fresh,
    };

    let mut entries = Vec::with_capacity(names.len());
    let mut resets: Vec<(ResetReason, Vec<&str>)> = Vec::new();
    let mut replay = 0;
    for (i, name) in names.iter().enumerate() {
        let page = inner.buffer.read(name, 0, 0).await?;
        let (entry, reason) = match &start {
            Start::Fresh => ((page.epoch, page.head), None),
            Start::Reset(reason) => (restart(&page, config.reset_policy), Some(*reason)),
            Start::Resume(cursor) if i < public => {
                check(cursor.entries()[i], &page, config.reset_policy)
            }
            // The session's private stream.
            Start::Resume(cursor) => match cursor.session_tag() {
                Some(t) if Some(t) == tag => {
                    check(cursor.entries()[public], &page, config.reset_policy)
                }
                // The cursor came from another session: its private messages are not this
                // client's, and whatever that session missed is lost to it. Say so.
                Some(_) => {
                    let reason = if session.is_some_and(|s| s.status == SessionStatus::Expired) {
                        ResetReason::SessionExpired
                    } else {
                        ResetReason::SessionChanged
                    };
                    (restart(&page, config.reset_policy), Some(reason))
                }
                // A cursor made without a session (an embedding without one): nothing was
                // read from this stream before.
                None => ((page.epoch, page.head), None),
            },
        };
        replay += page.head.saturating_sub(entry.1);
        if let Some(reason) = reason {
            match resets.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, streams)) => streams.push(name.as_str()),
                None => resets.push((reason, vec![name.as_str()])),
            }
        }
        entries.push(entry);
    }
    let cursor = match tag {
        Some(tag) => Cursor::with_session(entries, tag),
        None => Cursor::new(entries),
    };
    let info = ConnectedInfo {
        session: session.map(|s| s.id.to_string()),
        resumed: matches!(start, Start::Resume(_)),
        replay,
        reset: !resets.is_empty(),
    };

    // A debug-level span (a live span per connection costs memory in the subscriber's
    // registry); the lifecycle events are info-level and carry the session id themselves.
    // The token is never logged.
    let session_field = session.map(|s| s.id.to_string()).unwrap_or_default();
    let span =
        tracing::debug_span!("sse.connection", session = %session_field, streams = names.len());
    tracing::info!(
        parent: &span,
        session = %session_field,
        resumed = info.resumed,
        replay,
        reset = info.reset,
        "connected"
    );
    for (reason, streams) in &resets {
        tracing::info!(parent: &span, session = %session_field, reason = reason.as_str(), ?streams, "reset");
    }

    let mut pending = BytesMut::new();
    let mut id = String::new();
    cursor.encode_into(fp, &mut id);
    let transport = &inner.transport;
    transport.write_frame(&mut pending, &Frame::Retry(config.retry));
    let data = serde_json::to_string(&info).map_err(Error::store)?;
    transport.write_frame(
        &mut pending,
        &Frame::Connected {
            id: &id,
            data: &data,
        },
    );
    for (reason, streams) in resets {
        let data = serde_json::to_string(&ResetData {
            reason: reason.as_str(),
            streams,
        })
        .map_err(Error::store)?;
        transport.write_frame(
            &mut pending,
            &Frame::Reset {
                id: &id,
                data: &data,
            },
        );
    }

    if let Some(s) = session {
        let expires = SystemTime::now() + config.session_ttl;
        if let Err(err) = inner.sessions.touch(&s.id, expires).await {
            tracing::warn!(parent: &span, session = %session_field, error = %err, "could not extend the session");
        }
    }

    let registration = hub.register(&signal, session.map(|s| s.id));
    let state = State {
        last_write_tick: inner.tick.load(std::sync::atomic::Ordering::Acquire),
        hub: hub.clone(),
        names,
        subs,
        cursor,
        fp,
        pending,
        session: session.map(|s| s.id),
        signal,
        _registration: registration,
        delivered: 0,
        done: false,
        span,
        id: String::with_capacity(48),
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        let chunk = state.next_chunk().await?;
        Some((chunk, state))
    });
    Ok(Connection {
        info,
        inner: Box::pin(stream),
    })
}

struct State {
    hub: Hub,
    names: Vec<StreamName>,
    subs: Vec<Watch>,
    cursor: Cursor,
    fp: u32,
    pending: BytesMut,
    session: Option<SessionId>,
    signal: Arc<Signal>,
    _registration: Registration,
    /// The hub's heartbeat tick (two per interval) at the last write.
    last_write_tick: u64,
    delivered: u64,
    done: bool,
    span: tracing::Span,
    id: String,
}

impl State {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let inner = self.hub.inner.clone();
        loop {
            let mut out = std::mem::take(&mut self.pending);
            // Cleared before reading, so a raise during the read makes the wait return at once.
            self.signal.take();
            if inner.closing.load(std::sync::atomic::Ordering::Acquire) {
                return Some(self.close(out));
            }
            self.collect(&mut out).await;
            let tick = inner.tick.load(std::sync::atomic::Ordering::Acquire);
            if !out.is_empty() {
                self.last_write_tick = tick;
            } else if tick >= self.last_write_tick + 2 {
                // Silent for a whole interval (two half-interval ticks): say we are alive.
                // Idle connections thus get a comment exactly every interval, and no
                // connection stays silent longer than one interval.
                inner.transport.write_frame(&mut out, &Frame::Heartbeat);
                self.last_write_tick = tick;
            }
            if !out.is_empty() {
                return Some(out.freeze());
            }
            self.signal.wait().await;
        }
    }

    fn close(&mut self, mut out: BytesMut) -> Bytes {
        self.done = true;
        let retry = Some(self.hub.inner.config.retry);
        self.hub
            .inner
            .transport
            .write_frame(&mut out, &crate::Frame::Close { retry });
        tracing::info!(parent: &self.span, "closed by the server");
        out.freeze()
    }

    /// Appends every event after the cursor (at most one page in all) to `out`.
    async fn collect(&mut self, out: &mut BytesMut) {
        let page_size = self.hub.inner.config.page_size;
        let mut budget = page_size;
        let mut bodies: Vec<Bytes> = Vec::new();
        for i in 0..self.subs.len() {
            if budget == 0 {
                return;
            }
            let (epoch, position) = self.cursor.entries()[i];
            let from_window = {
                let w = self.subs[i].state.window.read();
                if w.ready && w.epoch == epoch && position + 1 >= w.start {
                    // The cursor may be ahead of the window (it read the store directly while
                    // the window was catching up): then there is nothing to take yet.
                    let take = w.head().saturating_sub(position).min(budget as u64) as usize;
                    if take > 0 {
                        let from = (position + 1 - w.start) as usize;
                        bodies.extend(w.entries.range(from..from + take).cloned());
                    }
                    true
                } else {
                    false
                }
            };
            if from_window {
                budget -= bodies.len();
                for body in bodies.drain(..) {
                    self.write_event(out, i, epoch, body);
                }
            } else {
                budget -= self.collect_from_store(out, i, budget).await;
            }
        }
    }

    /// The slow path: the window does not cover the cursor (behind it, not ready yet, or
    /// another epoch). Reads one page from the store and handles any gap with a reset.
    async fn collect_from_store(&mut self, out: &mut BytesMut, i: usize, budget: usize) -> usize {
        let inner = self.hub.inner.clone();
        let name = self.names[i].clone();
        // Two rounds at most: one that may reset, one that reads after the reset.
        for _ in 0..2 {
            let entry = self.cursor.entries()[i];
            let page = match inner.buffer.read(&name, entry.1, budget).await {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(parent: &self.span, stream = %name, error = %err, "could not read the store; will retry");
                    self.hub.retry_later(&self.signal);
                    return 0;
                }
            };
            let (entry, reason) = check(entry, &page, inner.config.reset_policy);
            self.cursor.entries_mut()[i] = entry;
            if let Some(reason) = reason {
                tracing::info!(parent: &self.span, stream = %name, reason = reason.as_str(), "reset");
                self.id.clear();
                self.cursor.encode_into(self.fp, &mut self.id);
                let data =
                    serde_json::json!({"reason": reason.as_str(), "streams": [name.as_str()]})
                        .to_string();
                inner.transport.write_frame(
                    out,
                    &Frame::Reset {
                        id: &self.id,
                        data: &data,
                    },
                );
                continue;
            }
            let mut n = 0;
            for event in &page.events {
                if event.position != self.cursor.entries()[i].1 + 1 {
                    // Never skip: a store that returned a hole is read again next time.
                    tracing::error!(stream = %name, position = event.position, "store returned a non-contiguous page");
                    self.hub.retry_later(&self.signal);
                    break;
                }
                let body = inner.transport.encode_body(event);
                self.write_event(out, i, entry.0, body);
                n += 1;
            }
            return n;
        }
        0
    }

    fn write_event(&mut self, out: &mut BytesMut, i: usize, epoch: Option<Epoch>, body: Bytes) {
        let entry = &mut self.cursor.entries_mut()[i];
        entry.0 = epoch;
        entry.1 += 1;
        self.id.clear();
        self.cursor.encode_into(self.fp, &mut self.id);
        self.hub.inner.transport.write_event(out, &self.id, &body);
        self.delivered += 1;
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let session = self.session.map(|s| s.to_string()).unwrap_or_default();
        tracing::info!(parent: &self.span, session = %session, delivered = self.delivered, "disconnected");
        let Some(id) = self.session else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.hub.inner.sessions.clone();
        let mut wire = String::new();
        self.cursor.encode_into(self.fp, &mut wire);
        let expires = SystemTime::now() + self.hub.inner.config.session_ttl;
        runtime.spawn(async move {
            if let Err(err) = store.record_cursor(&id, &wire, expires).await {
                tracing::warn!(error = %err, "could not record the session's cursor");
            }
        });
    }
}
