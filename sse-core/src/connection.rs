//! Connections: a cursor over the logs of a few streams, turned into bytes.
//!
//! A connection holds no queue. When one of its streams advances it takes every event after
//! its cursor, from the hot window when the window covers the cursor and from the store
//! otherwise, encodes the batch into one buffer and hands it to the writer in one go. A client
//! that reads slowly is simply polled less often and falls behind; it costs its cursor, not a
//! growing buffer.

use std::fmt;
use std::future::Future;
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
        // A resume whose cursor the hot window holds continues from the window: the store
        // is not asked (a reconnect storm would otherwise read it once per client). A fresh
        // start asks it, for its head: the window may lag behind appends already
        // acknowledged, which a client connecting after them must not receive.
        let held = match &start {
            Start::Resume(cursor) if i < public => {
                let (epoch, position) = cursor.entries()[i];
                let w = subs[i].state.window.read();
                (w.ready && w.holds(epoch, position) && position <= w.head())
                    .then(|| ((epoch, position), w.head()))
            }
            _ => None,
        };
        if let Some((entry, head)) = held {
            replay += head - entry.1;
            entries.push(entry);
            continue;
        }
        let page = inner.buffer.read(name, 0, 0).await?;
        hub.seed(&subs[i], &page);
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
        out: pending,
        read: None,
        session: session.map(|s| s.id),
        signal,
        _registration: registration,
        delivered: 0,
        done: false,
        span,
        id: String::with_capacity(48),
    };
    Ok(Connection {
        info,
        inner: Box::pin(state),
    })
}

/// A store read in flight: the stream's index and the page.
type PendingRead = Pin<Box<dyn Future<Output = (usize, Result<ReadPage>)> + Send>>;

/// What one pass over the streams found.
enum Collected {
    /// Everything available was taken (possibly nothing).
    Done,
    /// Stream `i` must be read from the store first.
    NeedsStore(usize),
}

/// The connection's state machine, polled directly as the response body: taking events from
/// the hot windows is synchronous (a read lock and reference-counted bytes); only a read from
/// the store suspends it.
struct State {
    hub: Hub,
    names: Vec<StreamName>,
    subs: Vec<Watch>,
    cursor: Cursor,
    fp: u32,
    /// What is ready to be written (the first frames, then each batch).
    out: BytesMut,
    read: Option<PendingRead>,
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

impl Stream for State {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        use std::sync::atomic::Ordering;
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let inner = this.hub.inner.clone();
        let page_size = inner.config.page_size;
        let mut budget = page_size;
        // Streams read from the store during this poll: not read again before the next
        // wake-up, or a stream whose window is not usable (starting after the cursor, another
        // epoch) would be read over and over while nothing changes.
        let mut read_already: Vec<usize> = Vec::new();
        loop {
            if let Some(read) = this.read.as_mut() {
                match read.as_mut().poll(cx) {
                    Poll::Pending if this.out.is_empty() => return Poll::Pending,
                    // Send what is ready; the read goes on at the next poll.
                    Poll::Pending => break,
                    Poll::Ready((i, page)) => {
                        this.read = None;
                        read_already.push(i);
                        budget = budget.saturating_sub(this.apply_page(i, page));
                    }
                }
            }
            // Cleared before reading, so a raise during the read is not lost.
            this.signal.take();
            if inner.closing.load(Ordering::Acquire) {
                let retry = Some(inner.config.retry);
                inner
                    .transport
                    .write_frame(&mut this.out, &Frame::Close { retry });
                tracing::info!(parent: &this.span, "closed by the server");
                this.done = true;
                return Poll::Ready(Some(this.out.split().freeze()));
            }
            match this.collect(&mut budget, &read_already) {
                Collected::NeedsStore(i) if budget > 0 => {
                    let buffer = inner.buffer.clone();
                    let name = this.names[i].clone();
                    let after = this.cursor.entries()[i].1;
                    let limit = budget;
                    this.read = Some(Box::pin(async move {
                        let page = buffer.read(&name, after, limit).await;
                        (i, page)
                    }));
                    continue;
                }
                _ => {}
            }
            break;
        }
        let tick = inner.tick.load(Ordering::Acquire);
        if !this.out.is_empty() {
            this.last_write_tick = tick;
        } else if tick >= this.last_write_tick + 2 {
            // Silent for a whole interval (two half-interval ticks): say we are alive. Idle
            // connections thus get a comment exactly every interval, and no connection stays
            // silent longer than one interval.
            inner
                .transport
                .write_frame(&mut this.out, &Frame::Heartbeat);
            this.last_write_tick = tick;
        }
        if !this.out.is_empty() {
            return Poll::Ready(Some(this.out.split().freeze()));
        }
        if this.read.is_some() {
            // Woken by the read.
            return Poll::Pending;
        }
        this.signal.register(cx.waker());
        if this.signal.take() {
            // Raised between the pass and the registration: go again.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl State {
    /// Takes every event after the cursor that the hot windows hold, up to `budget`, into
    /// `out`; stops at the first stream that needs the store, skipping those in `skip`.
    fn collect(&mut self, budget: &mut usize, skip: &[usize]) -> Collected {
        let mut bodies: Vec<Bytes> = Vec::new();
        for i in 0..self.subs.len() {
            if *budget == 0 {
                return Collected::Done;
            }
            let (epoch, position) = self.cursor.entries()[i];
            let mut window_epoch = epoch;
            let from_window = {
                let w = self.subs[i].state.window.read();
                if !w.ready {
                    // The window starts where this connection's read at open found the
                    // stream (`Hub::seed`), or at the stream's first append, whichever the
                    // feed task sees first; it raises every subscriber then. Reading the
                    // store here instead would cost a read per wake-up per connection until
                    // then: with many subscribers, that load once kept windows from ever
                    // becoming ready on a networked store.
                    continue;
                }
                if w.holds(epoch, position) {
                    window_epoch = w.epoch;
                    // The cursor may be ahead of the window (it read the store directly while
                    // the window was catching up): then there is nothing to take yet.
                    let take = w.head().saturating_sub(position).min(*budget as u64) as usize;
                    if take > 0 {
                        let from = (position + 1 - w.start) as usize;
                        bodies.extend(w.entries.range(from..from + take).cloned());
                    }
                    true
                } else {
                    false
                }
            };
            if !from_window {
                if skip.contains(&i) {
                    continue;
                }
                return Collected::NeedsStore(i);
            }
            *budget -= bodies.len();
            for body in bodies.drain(..) {
                self.write_event(i, window_epoch, &body);
            }
        }
        Collected::Done
    }

    /// The slow path's second half: a page read from the store because the window did not
    /// cover the cursor (the cursor is behind it or in another epoch). Handles any gap with a
    /// reset; returns how many events were written.
    fn apply_page(&mut self, i: usize, page: Result<ReadPage>) -> usize {
        let inner = self.hub.inner.clone();
        let page = match page {
            Ok(page) => page,
            Err(err) => {
                tracing::warn!(parent: &self.span, stream = %self.names[i], error = %err, "could not read the store; will retry");
                self.hub.retry_later(&self.signal);
                return 0;
            }
        };
        let (entry, reason) = check(self.cursor.entries()[i], &page, inner.config.reset_policy);
        self.cursor.entries_mut()[i] = entry;
        if let Some(reason) = reason {
            let name = self.names[i].as_str();
            tracing::info!(parent: &self.span, stream = %name, reason = reason.as_str(), "reset");
            self.id.clear();
            self.cursor.encode_into(self.fp, &mut self.id);
            let data =
                serde_json::json!({"reason": reason.as_str(), "streams": [name]}).to_string();
            inner.transport.write_frame(
                &mut self.out,
                &Frame::Reset {
                    id: &self.id,
                    data: &data,
                },
            );
            // The page was read from a position the reset moved away from: the next pass
            // reads from the new one.
            return 0;
        }
        let mut n = 0;
        for event in &page.events {
            if event.position != self.cursor.entries()[i].1 + 1 {
                // Never skip: a store that returned a hole is read again later.
                tracing::error!(parent: &self.span, stream = %self.names[i], position = event.position, "store returned a non-contiguous page");
                self.hub.retry_later(&self.signal);
                break;
            }
            let body = inner.transport.encode_body(event);
            self.write_event(i, entry.0, &body);
            n += 1;
        }
        n
    }

    fn write_event(&mut self, i: usize, epoch: Option<Epoch>, body: &[u8]) {
        let entry = &mut self.cursor.entries_mut()[i];
        entry.0 = epoch;
        entry.1 += 1;
        self.id.clear();
        self.cursor.encode_into(self.fp, &mut self.id);
        self.hub
            .inner
            .transport
            .write_event(&mut self.out, &self.id, body);
        self.delivered += 1;
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let session = self.session.map(|s| s.to_string()).unwrap_or_default();
        tracing::info!(parent: &self.span, session = %session, delivered = self.delivered, "disconnected");
        let Some(id) = self.session else { return };
        let mut wire = String::new();
        self.cursor.encode_into(self.fp, &mut wire);
        self.hub.record_cursor(id, wire);
    }
}
