//! What the hub keeps for its open connections: the registry through which heartbeat ticks
//! and closing reach them, the keep-alive of their sessions, and the cursors they reached
//! when they closed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{Hub, Inner};
use crate::SessionId;
use crate::collections::{shrink_deque_when_sparse, shrink_when_sparse};
use crate::signal::Signal;
use crate::task::spawn_periodic;

/// Sessions extended per store request by the session keeper.
const TOUCH_BATCH: usize = 1000;
/// Cursors of closed connections recorded per store request.
const CURSOR_BATCH: usize = 1000;

/// How long the cursor a closed connection reached is kept in memory, besides being
/// recorded in the session store: longer than a reload's gap between the session's load (in
/// the session layer) and the connection's open plus the store write, so that a reload never
/// resumes from a cursor the store had not been given yet when its session was loaded.
const RECENT_CURSORS_KEPT: Duration = Duration::from_secs(5);

/// Cursors of closed connections waiting to be recorded, and whether a task records them.
#[derive(Default)]
pub(super) struct ClosedCursors {
    waiting: Vec<(SessionId, String)>,
    recording: bool,
    /// The last cursor each session's closed connections reached, for
    /// [`RECENT_CURSORS_KEPT`]; `expiry` holds when each was added, oldest first.
    recent: HashMap<SessionId, (Instant, String)>,
    expiry: VecDeque<(Instant, SessionId)>,
}

impl ClosedCursors {
    fn remember(&mut self, id: SessionId, cursor: &str) {
        let now = Instant::now();
        self.forget_expired(now);
        self.recent.insert(id, (now, cursor.to_owned()));
        self.expiry.push_back((now, id));
    }

    /// The cursor `id`'s last closed connection reached, if it closed recently.
    fn recent(&self, id: &SessionId) -> Option<String> {
        let (at, cursor) = self.recent.get(id)?;
        (at.elapsed() < RECENT_CURSORS_KEPT).then(|| cursor.clone())
    }

    /// Forgets cursors kept longer than [`RECENT_CURSORS_KEPT`], and gives back the room a
    /// mass disconnect took.
    fn forget_expired(&mut self, now: Instant) {
        while let Some((at, old)) = self.expiry.front().copied() {
            if now.duration_since(at) < RECENT_CURSORS_KEPT {
                break;
            }
            self.expiry.pop_front();
            if self.recent.get(&old).is_some_and(|(t, _)| *t == at) {
                self.recent.remove(&old);
            }
        }
        shrink_when_sparse(&mut self.recent);
        shrink_deque_when_sparse(&mut self.expiry);
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
                    shrink_when_sparse(&mut live);
                    metrics::gauge!(crate::metrics::SESSIONS_ACTIVE).decrement(1.0);
                }
            }
        }
        hub.unregistered.notify_waiters();
    }
}

impl Hub {
    /// Registers a connection: heartbeat ticks, closing and its session's keep-alive.
    pub(crate) fn register(
        &self,
        signal: &Arc<Signal>,
        session: Option<SessionId>,
    ) -> Registration {
        let key = self.inner.connections.lock().insert(signal.clone());
        if let Some(id) = session {
            let mut live = self.inner.live_sessions.lock();
            let n = live.entry(id).or_insert(0);
            if *n == 0 {
                metrics::gauge!(crate::metrics::SESSIONS_ACTIVE).increment(1.0);
            }
            *n += 1;
        }
        Registration {
            key,
            session,
            hub: Arc::downgrade(&self.inner),
        }
    }

    /// Records the cursor a closed connection reached in its session, for a later connection
    /// without `Last-Event-ID` (a page reload). Cursors of connections that close while a
    /// write is in flight are written together by one task, [`CURSOR_BATCH`] per store
    /// request: a mass disconnect costs a few writes, not one per connection.
    pub(crate) fn record_cursor(&self, id: SessionId, cursor: String) {
        let start = {
            let mut closed = self.inner.closed.lock();
            if !self.inner.config.reload_wait.is_zero() {
                closed.remember(id, &cursor);
            }
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

    /// For a connection of session `id` that brought no `Last-Event-ID` (a plain reload):
    /// waits, at most [`Config::reload_wait`](crate::Config::reload_wait), until no other
    /// connection of the session is open in this process, then returns the cursor the last
    /// of them reached, if one closed within the last few seconds.
    ///
    /// A reloaded page's new request often arrives before the server has seen the old
    /// connection go: without the wait it would resume from the cursor recorded before (or,
    /// with none, at the head) and miss what the old connection delivered since.
    pub(crate) async fn settle(&self, id: &SessionId) -> Option<String> {
        let wait = self.inner.config.reload_wait;
        if wait.is_zero() {
            return None;
        }
        let deadline = Instant::now() + wait;
        loop {
            let unregistered = self.inner.unregistered.notified();
            tokio::pin!(unregistered);
            // Enabled before the check, so an unregistration between the check and the wait
            // still wakes it.
            unregistered.as_mut().enable();
            if self.is_closing() || !self.inner.live_sessions.lock().contains_key(id) {
                break;
            }
            if tokio::time::timeout_at(deadline, unregistered)
                .await
                .is_err()
            {
                tracing::debug!(session = %id, "another connection of the session stayed open");
                break;
            }
        }
        self.inner.closed.lock().recent(id)
    }

    /// Ends every open connection like [`Hub::close_connections`], then waits, at most
    /// `bound`, until each has written its last frame and its response body was dropped (the
    /// server finished writing it or lost the client). Returns how many were still open at
    /// the bound: zero when every client got the retry hint and the end of its response.
    ///
    /// Call it on graceful shutdown, before the process exits.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use futures_util::StreamExt;
    /// use resumable_sse_core::{ConnectRequest, Hub, StreamName};
    /// use resumable_sse_store_memory::MemoryStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> resumable_sse_core::Result<()> {
    /// let store = Arc::new(MemoryStore::default());
    /// let hub = Hub::builder(store.clone(), store).build();
    /// let connection = hub
    ///     .connect(ConnectRequest::new(vec![StreamName::new("news")?]))
    ///     .await?;
    /// // The server writes the response until its end, then drops it.
    /// let writer = tokio::spawn(async move {
    ///     let chunks: Vec<_> = connection.collect().await;
    ///     String::from_utf8(chunks.concat()).unwrap()
    /// });
    /// assert_eq!(hub.drain(Duration::from_secs(5)).await, 0);
    /// let written = writer.await.unwrap();
    /// assert!(written.ends_with("retry: 2000\n\n"), "{written}");
    /// # Ok(()) }
    /// ```
    pub async fn drain(&self, bound: Duration) -> usize {
        self.close_connections();
        let deadline = Instant::now() + bound;
        loop {
            let unregistered = self.inner.unregistered.notified();
            tokio::pin!(unregistered);
            unregistered.as_mut().enable();
            let open = self.inner.connections.lock().len();
            if open == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, unregistered)
                .await
                .is_err()
            {
                return self.inner.connections.lock().len();
            }
        }
    }
}

impl Inner {
    /// Raises every open connection.
    pub(super) fn raise_connections(&self) {
        for (_, signal) in self.connections.lock().iter() {
            signal.raise();
        }
    }
}

/// Spawns the heartbeat ticker, which counts a tick and raises every connection every `tick`
/// (each decides whether it was idle), and the session keeper, which extends every session
/// that has open connections every `keepalive`, in batches of [`TOUCH_BATCH`] (one store
/// request each with the Redis and PostgreSQL stores), however many connections each session
/// has.
pub(super) fn spawn(inner: &Arc<Inner>, tick: Duration, keepalive: Duration) {
    spawn_periodic(Arc::downgrade(inner), tick, |inner| {
        inner.tick.fetch_add(1, Ordering::AcqRel);
        inner.raise_connections();
        std::future::ready(())
    });
    spawn_periodic(Arc::downgrade(inner), keepalive, |inner| {
        inner.closed.lock().forget_expired(Instant::now());
        let live: Vec<SessionId> = inner.live_sessions.lock().keys().copied().collect();
        let (sessions, ttl) = (inner.sessions.clone(), inner.config.session_ttl);
        // The store requests below do not keep the hub alive.
        drop(inner);
        async move {
            for batch in live.chunks(TOUCH_BATCH) {
                if let Err(err) = sessions.touch_many(batch, SystemTime::now() + ttl).await {
                    tracing::warn!(sessions = batch.len(), error = %err, "could not extend sessions");
                }
            }
        }
    });
}

/// Writes the cursors of closed connections until none is waiting.
async fn record_closed(inner: Arc<Inner>) {
    loop {
        let batch: Vec<(SessionId, String)> = {
            let mut closed = inner.closed.lock();
            if closed.waiting.is_empty() {
                closed.recording = false;
                // A mass disconnect's room goes with it.
                closed.waiting = Vec::new();
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
