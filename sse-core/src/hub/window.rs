//! Hot windows: the bounded in-memory tail of each stream that has readers, and a connection's
//! hold on one.
//!
//! Only the feed task writes a window (see [`feed`](super::feed)); connections ask it
//! questions under a read lock: does it hold my cursor, and which bodies follow it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use slab::Slab;

use super::Inner;
use crate::signal::Signal;
use crate::text::Chunks;
use crate::{Epoch, Position, StreamName};

/// The hot window of one stream: bodies of positions `start ..= start + len - 1`, contiguous.
pub(super) struct Window {
    ready: bool,
    epoch: Option<Epoch>,
    start: Position,
    entries: VecDeque<Bytes>,
    /// The bodies' total length.
    bytes: usize,
    /// Where the bodies are kept: together, apart from the connections' short-lived memory
    /// (ADR 0031).
    chunks: Chunks,
}

impl Window {
    fn new() -> Self {
        Window {
            ready: false,
            epoch: None,
            start: 1,
            entries: VecDeque::new(),
            bytes: 0,
            chunks: Chunks::new(),
        }
    }

    /// Whether the window has started: until then it holds nothing and answers no cursor.
    pub(super) fn is_ready(&self) -> bool {
        self.ready
    }

    /// The epoch of the log the window holds.
    pub(super) fn epoch(&self) -> Option<Epoch> {
        self.epoch
    }

    /// The position of the newest body held (`start - 1` when empty).
    #[inline]
    pub(super) fn head(&self) -> Position {
        self.start + self.entries.len() as Position - 1
    }

    /// Bodies held.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether a reader at this cursor entry continues from the window: same log, and the
    /// window starts at or before its next position (it may be ahead of the window's head,
    /// having read the store while the window was catching up). A cursor from before the
    /// stream existed (no epoch, position 0) continues in whatever epoch the stream got, if the
    /// window holds it from its first event.
    #[inline]
    fn holds(&self, epoch: Option<Epoch>, position: Position) -> bool {
        let same_log = self.epoch == epoch || (epoch.is_none() && position == 0 && self.start == 1);
        same_log && position + 1 >= self.start
    }

    /// Starts the window, or starts it over, empty after `head` in `epoch`.
    pub(super) fn reset(&mut self, epoch: Option<Epoch>, head: Position) {
        self.ready = true;
        self.epoch = epoch;
        self.start = head + 1;
        metrics::gauge!(crate::metrics::WINDOW_EVENTS).decrement(self.entries.len() as f64);
        self.entries.clear();
        self.bytes = 0;
        // Its chunks go with the bodies: the next ones are sized for what it holds then.
        self.chunks = Chunks::new();
    }

    /// Appends the body of position `head + 1` (kept in the window's chunks), dropping the
    /// oldest beyond `cap` bodies or `cap_bytes` bytes (the newest body stays whatever its
    /// size).
    pub(super) fn push(&mut self, body: Bytes, cap: usize, cap_bytes: usize) {
        let body = self.chunks.keep_bytes(body, self.bytes);
        self.bytes += body.len();
        self.entries.push_back(body);
        let mut dropped = 0;
        while self.entries.len() > cap || (self.bytes > cap_bytes && self.entries.len() > 1) {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.len();
            }
            self.start += 1;
            dropped += 1;
        }
        if dropped == 0 {
            metrics::gauge!(crate::metrics::WINDOW_EVENTS).increment(1.0);
        } else if dropped > 1 {
            metrics::gauge!(crate::metrics::WINDOW_EVENTS).decrement(f64::from(dropped - 1));
        }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::WINDOW_EVENTS).decrement(self.entries.len() as f64);
    }
}

/// One stream with readers: its window and the signals of the connections reading it.
pub(crate) struct StreamState {
    name: StreamName,
    window: RwLock<Window>,
    subscribers: Mutex<Slab<Arc<Signal>>>,
    watchers: AtomicUsize,
}

impl StreamState {
    pub(super) fn name(&self) -> &StreamName {
        &self.name
    }

    pub(super) fn read(&self) -> RwLockReadGuard<'_, Window> {
        self.window.read()
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, Window> {
        self.window.write()
    }

    /// Raises every connection reading the stream.
    pub(super) fn notify(&self) {
        for (_, signal) in self.subscribers.lock().iter() {
            signal.raise();
        }
    }
}

/// What [`Watch::take_after`] found.
pub(crate) enum Taken {
    /// The window has not started yet: it raises its readers when it does.
    NotReady,
    /// The window does not hold the cursor (behind it, or another epoch): read the store.
    NotHeld,
    /// The bodies after the cursor, possibly none, were taken; they are in this epoch.
    Held(Option<Epoch>),
}

/// A connection's hold on a stream's window; dropping the last one frees the window.
pub(crate) struct Watch {
    state: Arc<StreamState>,
    key: usize,
    hub: Weak<Inner>,
}

impl Watch {
    /// Subscribes `signal` to the stream `name`, creating its window (not ready) if it has no
    /// other reader.
    pub(super) fn new(hub: &Arc<Inner>, name: &StreamName, signal: &Arc<Signal>) -> Watch {
        let mut streams = hub.streams.lock();
        let state = streams
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(StreamState {
                    name: name.clone(),
                    window: RwLock::new(Window::new()),
                    subscribers: Mutex::new(Slab::new()),
                    watchers: AtomicUsize::new(0),
                })
            })
            .clone();
        state.watchers.fetch_add(1, Ordering::AcqRel);
        let key = state.subscribers.lock().insert(signal.clone());
        drop(streams);
        Watch {
            state,
            key,
            hub: Arc::downgrade(hub),
        }
    }

    pub(super) fn state(&self) -> &Arc<StreamState> {
        &self.state
    }

    /// The window's head, if the window holds this cursor entry and the entry is not ahead of
    /// it: a reader there continues from the window.
    pub(crate) fn holds_up_to(&self, epoch: Option<Epoch>, position: Position) -> Option<Position> {
        let w = self.state.read();
        (w.ready && w.holds(epoch, position) && position <= w.head()).then(|| w.head())
    }

    /// Appends to `out` the bodies after this cursor entry, at most `max` of them and, once
    /// one is taken, no more than `room` bytes (counting [`FRAME_OVERHEAD`] per body), if the
    /// window holds the entry. With `first_free`, the first body goes whatever its size (the
    /// caller holds nothing yet). The entry may be ahead of the window's head (its reader read
    /// the store while the window was catching up): then there is nothing to take yet.
    #[inline]
    pub(crate) fn take_after(
        &self,
        epoch: Option<Epoch>,
        position: Position,
        max: usize,
        room: usize,
        first_free: bool,
        out: &mut Vec<Bytes>,
    ) -> Taken {
        let w = self.state.read();
        if !w.ready {
            return Taken::NotReady;
        }
        if !w.holds(epoch, position) {
            return Taken::NotHeld;
        }
        let take = w.head().saturating_sub(position).min(max as u64) as usize;
        if take > 0 {
            let from = (position + 1 - w.start) as usize;
            let mut left = room;
            for (k, body) in w.entries.range(from..from + take).enumerate() {
                let size = body.len() + FRAME_OVERHEAD;
                if size > left && !(k == 0 && first_free) {
                    break;
                }
                left = left.saturating_sub(size);
                out.push(body.clone());
            }
        }
        Taken::Held(w.epoch)
    }
}

/// Bytes an event's frame adds to its body, as counted against
/// [`Config::max_pending_bytes`](crate::Config::max_pending_bytes): its `id:` line (a cursor
/// of a few streams) and separators.
pub(crate) const FRAME_OVERHEAD: usize = 64;

impl Drop for Watch {
    fn drop(&mut self) {
        self.state.subscribers.lock().try_remove(self.key);
        if let Some(hub) = self.hub.upgrade() {
            let mut streams = hub.streams.lock();
            if self.state.watchers.fetch_sub(1, Ordering::AcqRel) == 1 {
                streams.remove(&self.state.name);
                crate::collections::shrink_when_sparse(&mut streams);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bodies are kept in the window's chunks, side by side (ADR 0031); a large one as it
    /// came. What the window answers is unchanged.
    #[test]
    fn bodies_are_kept_in_chunks() {
        let mut window = Window::new();
        window.reset(Some(Epoch::random()), 0);
        for i in 0..100 {
            window.push(Bytes::from(format!("data: {i:03}\n\n")), 1000, 1 << 20);
        }
        assert_eq!((window.len(), window.head()), (100, 100));
        let adjacent = window
            .entries
            .iter()
            .zip(window.entries.iter().skip(1))
            .filter(|(a, b)| a.as_ptr() as usize + a.len() == b.as_ptr() as usize)
            .count();
        // A chunk is a quarter of what the window holds: about twenty new ones while it grows
        // from nothing to a hundred bodies, the rest side by side.
        assert!(
            adjacent >= 75,
            "only {adjacent} of 99 bodies follow the one before"
        );
        assert_eq!(&window.entries[42][..], b"data: 042\n\n");

        let large = Bytes::from(vec![b'x'; 64 << 10]);
        window.push(large.clone(), 1000, 1 << 20);
        assert_eq!(window.entries.back().unwrap().as_ptr(), large.as_ptr());
    }
}
