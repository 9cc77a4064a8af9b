//! The connection's state machine, polled as the response body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures_core::Stream;

use super::log::ConnectionLog;
use super::open::check;
use crate::cursor::Cursor;
use crate::hub::{FRAME_OVERHEAD, Hub, Registration, Taken, Watch};
use crate::signal::Signal;
use crate::transport::Frame;
use crate::{Epoch, ReadPage, Result, SessionId, StreamName};

/// A store read in flight: the stream's index and the page.
type PendingRead = Pin<Box<dyn Future<Output = (usize, Result<ReadPage>)> + Send>>;

/// What one pass over the streams found.
enum Collected {
    /// Everything available was taken (possibly nothing).
    Done,
    /// Stream `i` must be read from the store first.
    NeedsStore(usize),
}

/// Where a connection starts, as [`open`](super::open::open) decided.
pub(super) struct Opened {
    pub(super) hub: Hub,
    /// The streams read, sorted, then the session's private stream, if any.
    pub(super) names: Vec<StreamName>,
    /// A hold on each stream's window, in the order of `names`.
    pub(super) subs: Vec<Watch>,
    pub(super) cursor: Cursor,
    /// The fingerprint of the requested streams, for encoding the cursor.
    pub(super) fp: u32,
    /// The retry hint, `connected` and any `reset` frames.
    pub(super) first_frames: BytesMut,
    pub(super) session: Option<SessionId>,
    /// The wake-up every stream in `subs` raises.
    pub(super) signal: Arc<Signal>,
    pub(super) log: ConnectionLog,
    /// When the client's authorization ends.
    pub(super) expires_at: Option<SystemTime>,
}

/// The connection's state machine, polled directly as the response body: taking events from
/// the hot windows is synchronous (a read lock and reference-counted bytes); only a read from
/// the store suspends it.
pub(super) struct State {
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
    log: ConnectionLog,
    id: String,
    expires_at: Option<SystemTime>,
    /// The size of an event's frame as last seen in a page from the store, for sizing the
    /// next read so that its events fit [`Config::max_pending_bytes`](crate::Config); until
    /// a page has been seen, the largest event allowed.
    event_bytes: usize,
}

impl State {
    /// Registers the connection with the hub (heartbeat ticks, closing, its session's
    /// keep-alive) and starts delivering after the first frames.
    pub(super) fn new(opened: Opened) -> State {
        let Opened {
            hub,
            names,
            subs,
            cursor,
            fp,
            first_frames,
            session,
            signal,
            log,
            expires_at,
        } = opened;
        let registration = hub.register(&signal, session);
        let event_bytes = hub.config().max_event_bytes + FRAME_OVERHEAD;
        metrics::gauge!(crate::metrics::CONNECTIONS_ACTIVE).increment(1.0);
        State {
            last_write_tick: hub.tick(),
            hub,
            names,
            subs,
            cursor,
            fp,
            out: first_frames,
            read: None,
            session,
            signal,
            _registration: registration,
            delivered: 0,
            done: false,
            log,
            id: String::with_capacity(48),
            expires_at,
            event_bytes,
        }
    }
}

impl Stream for State {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let hub = this.hub.clone();
        let page_size = hub.config().page_size;
        let mut budget = page_size;
        // Streams read from the store during this poll: not read again before the next
        // wake-up, or a stream whose window is not usable (starting after the cursor, another
        // epoch) would be read over and over while nothing changes.
        let mut read_already: Vec<usize> = Vec::new();
        let delivered_before = this.delivered;
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
            if hub.is_closing() {
                let retry = Some(hub.config().retry);
                hub.transport()
                    .write_frame(&mut this.out, &Frame::Close { retry });
                tracing::info!(parent: &this.log.span(), "closed by the server");
                this.done = true;
                return Poll::Ready(Some(this.flush(delivered_before)));
            }
            // Checked at every wake-up, heartbeat ticks included (two per interval).
            if this.expires_at.is_some_and(|at| SystemTime::now() >= at) {
                let transport = hub.transport();
                transport.write_frame(
                    &mut this.out,
                    &Frame::Ended {
                        data: r#"{"reason":"authorization_expired"}"#,
                    },
                );
                transport.write_frame(&mut this.out, &Frame::Close { retry: None });
                tracing::info!(parent: &this.log.span(), "authorization expired");
                this.done = true;
                return Poll::Ready(Some(this.flush(delivered_before)));
            }
            match this.collect(&mut budget, &read_already) {
                Collected::NeedsStore(i) if budget > 0 && this.room() > 0 => {
                    let buffer = hub.buffer().clone();
                    let name = this.names[i].clone();
                    let after = this.cursor.entries()[i].1;
                    // No more events than fit the room left (at least one): a page read
                    // from a networked store is fresh memory, held until it is written.
                    let limit = (this.room() / this.event_bytes.max(1)).clamp(1, budget);
                    metrics::counter!(crate::metrics::WINDOW_MISSES_TOTAL).increment(1);
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
        let tick = hub.tick();
        if !this.out.is_empty() {
            this.last_write_tick = tick;
        } else if tick >= this.last_write_tick + 2 {
            // Silent for a whole interval (two half-interval ticks): say we are alive. Idle
            // connections thus get a comment exactly every interval, and no connection stays
            // silent longer than one interval.
            hub.transport()
                .write_frame(&mut this.out, &Frame::Heartbeat);
            this.last_write_tick = tick;
        }
        if !this.out.is_empty() {
            return Poll::Ready(Some(this.flush(delivered_before)));
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
    /// What is ready to be written, counted once per wake-up (not per event): the events
    /// written since `delivered_before` and the bytes.
    fn flush(&mut self, delivered_before: u64) -> Bytes {
        let bytes = self.out.split().freeze();
        let hot = self.hub.hot_metrics();
        let events = self.delivered - delivered_before;
        if events > 0 {
            hot.deliveries.increment(events);
        }
        hot.bytes.increment(bytes.len() as u64);
        bytes
    }

    /// Takes every event after the cursor that the hot windows hold, up to `budget`, into
    /// `out`; stops at the first stream that needs the store, skipping those in `skip`.
    fn collect(&mut self, budget: &mut usize, skip: &[usize]) -> Collected {
        let mut bodies: Vec<Bytes> = Vec::new();
        for i in 0..self.subs.len() {
            let room = self.room();
            if *budget == 0 || room == 0 {
                return Collected::Done;
            }
            let (epoch, position) = self.cursor.entries()[i];
            let first_free = self.out.is_empty();
            let taken =
                self.subs[i].take_after(epoch, position, *budget, room, first_free, &mut bodies);
            let window_epoch = match taken {
                Taken::Held(window_epoch) => window_epoch,
                // The window starts where this connection's read at open found the stream
                // (`Hub::seed`), or at the stream's first append, whichever the feed task sees
                // first; it raises every subscriber then. Reading the store here instead would
                // cost a read per wake-up per connection until then: with many subscribers,
                // that load once kept windows from ever becoming ready on a networked store.
                Taken::NotReady => continue,
                Taken::NotHeld if skip.contains(&i) => continue,
                Taken::NotHeld => return Collected::NeedsStore(i),
            };
            *budget -= bodies.len();
            // One allocation of the batch's size: growing by doubling would hold up to twice
            // that, and the whole allocation stays alive until the client has read it.
            self.out
                .reserve(bodies.iter().map(|b| b.len() + FRAME_OVERHEAD).sum());
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
        let hub = self.hub.clone();
        let page = match page {
            Ok(page) => page,
            Err(err) => {
                tracing::warn!(parent: &self.log.span(), stream = %self.names[i], error = %err, "could not read the store; will retry");
                self.hub.retry_later(&self.signal);
                return 0;
            }
        };
        let (entry, reason) = check(self.cursor.entries()[i], &page, hub.config().reset_policy);
        self.cursor.entries_mut()[i] = entry;
        if let Some(reason) = reason {
            let name = self.names[i].as_str();
            tracing::info!(parent: &self.log.span(), stream = %name, reason = reason.as_str(), "reset");
            metrics::counter!(crate::metrics::RESETS_TOTAL, "reason" => reason.as_str())
                .increment(1);
            self.id.clear();
            self.cursor.encode_into(self.fp, &mut self.id);
            let data =
                serde_json::json!({"reason": reason.as_str(), "streams": [name]}).to_string();
            hub.transport().write_frame(
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
        if let Some(bytes) = page
            .events
            .iter()
            .map(|e| e.data.len() + FRAME_OVERHEAD)
            .sum::<usize>()
            .checked_div(page.events.len())
        {
            self.event_bytes = bytes;
        }
        // One allocation for what fits (see `collect`).
        let mut fits = 0;
        for event in &page.events {
            let size = event.data.len() + FRAME_OVERHEAD;
            if fits > 0 && fits + size > self.room() {
                break;
            }
            fits += size;
        }
        self.out.reserve(fits);
        let mut n = 0;
        for event in &page.events {
            let size = event.data.len() + FRAME_OVERHEAD;
            if !self.out.is_empty() && size > self.room() {
                // Full: the rest of the page is read again once the client has taken this.
                break;
            }
            if event.position != self.cursor.entries()[i].1 + 1 {
                // Never skip: a store that returned a hole is read again later.
                tracing::error!(parent: &self.log.span(), stream = %self.names[i], position = event.position, "store returned a non-contiguous page");
                self.hub.retry_later(&self.signal);
                break;
            }
            let body = hub.transport().encode_body(event);
            self.write_event(i, entry.0, &body);
            n += 1;
        }
        n
    }

    /// Bytes the connection may still take before the client reads what it holds.
    fn room(&self) -> usize {
        self.hub
            .config()
            .max_pending_bytes
            .saturating_sub(self.out.len())
    }

    fn write_event(&mut self, i: usize, epoch: Option<Epoch>, body: &[u8]) {
        let entry = &mut self.cursor.entries_mut()[i];
        entry.0 = epoch;
        entry.1 += 1;
        self.id.clear();
        self.cursor.encode_into(self.fp, &mut self.id);
        self.hub
            .transport()
            .write_event(&mut self.out, &self.id, body);
        self.delivered += 1;
    }
}

impl Drop for State {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::CONNECTIONS_ACTIVE).decrement(1.0);
        tracing::info!(parent: &self.log.span(), session = %self.log.session(), delivered = self.delivered, "disconnected");
        let Some(id) = self.session else { return };
        let mut wire = String::new();
        self.cursor.encode_into(self.fp, &mut wire);
        self.hub.record_cursor(id, wire);
    }
}
