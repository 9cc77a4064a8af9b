//! What the hub keeps for its open connections: the registry through which heartbeat ticks
//! and closing reach them, the keep-alive of their sessions, and the cursors they reached
//! when they closed.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use super::{Hub, Inner};
use crate::SessionId;
use crate::signal::Signal;
use crate::task::spawn_periodic;

/// Sessions extended per store request by the session keeper.
const TOUCH_BATCH: usize = 1000;
/// Cursors of closed connections recorded per store request.
const CURSOR_BATCH: usize = 1000;

/// Cursors of closed connections waiting to be recorded, and whether a task records them.
#[derive(Default)]
pub(super) struct ClosedCursors {
    waiting: Vec<(SessionId, String)>,
    recording: bool,
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
                    metrics::gauge!(crate::metrics::SESSIONS_ACTIVE).decrement(1.0);
                }
            }
        }
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
