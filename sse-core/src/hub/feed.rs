//! The feed task: keeps the hot windows filled from the store's live feed, starts windows
//! where connections found their streams, and repairs gaps from the store.
//!
//! It applies the live feed and window initialisations one at a time, so each window only
//! ever moves forward by contiguous positions.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::window::{FRAME_OVERHEAD, StreamState, Watch};
use super::{Hub, Inner};
use crate::signal::Signal;
use crate::{
    Epoch, Error, FeedItem, LiveFeed, Notification, Position, ReadPage, Result, StreamName,
};

/// The pause before reading the store again after a failed read, and before subscribing again
/// after the live feed ended.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// A message to the feed task.
pub(super) enum Command {
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

impl Hub {
    /// Asks the feed task to raise `signal` after a short delay (the store failed a read).
    pub(crate) fn retry_later(&self, signal: &Arc<Signal>) {
        let _ = self
            .inner
            .commands
            .send(Command::Retry(Arc::downgrade(signal)));
    }

    /// Tells the feed task where a stream stood when a connection read it after subscribing
    /// ([`Hub::watch`]): a window that is not ready yet starts there. Any append after that
    /// read reaches the feed task after this, or made the window ready already (then this is
    /// ignored), so the window misses nothing. This is how windows start: one read per
    /// connection that opens, not a second one per window.
    /// A window that is ready already needs nothing: most connections send nothing.
    pub(crate) fn seed(&self, watch: &Watch, page: &ReadPage) {
        if watch.state().read().is_ready() {
            return;
        }
        let _ = self.inner.commands.send(Command::Seed {
            state: Arc::downgrade(watch.state()),
            epoch: page.epoch,
            head: page.head,
        });
    }
}

/// The feed task; it ends when the hub is dropped.
pub(super) async fn run(
    hub: Weak<Inner>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut feed: LiveFeed,
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
                inner.set_feed_connected(!matches!(item, None | Some(FeedItem::Disconnected)));
                match item {
                    Some(FeedItem::Appended(n)) => {
                        let name = n.stream.clone();
                        if inner.on_appended(n).await.is_err() {
                            failed.insert(name);
                        }
                    }
                    Some(FeedItem::Resync) => {
                        metrics::counter!(crate::metrics::FEED_RESYNCS_TOTAL).increment(1);
                        failed.extend(inner.resync_all().await);
                    }
                    Some(FeedItem::Disconnected) => {
                        tracing::warn!("the live feed lost its connection to the store");
                        metrics::counter!(crate::metrics::FEED_DISCONNECTS_TOTAL).increment(1);
                    }
                    // Items a newer store may yield: nothing to do.
                    #[allow(unreachable_patterns)]
                    Some(_) => {}
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

impl Inner {
    fn set_feed_connected(&self, connected: bool) {
        let was = self
            .feed_connected
            .swap(connected, std::sync::atomic::Ordering::AcqRel);
        if was != connected {
            metrics::gauge!(crate::metrics::FEED_CONNECTED).set(if connected { 1.0 } else { 0.0 });
        }
    }

    fn state(&self, name: &StreamName) -> Option<Arc<StreamState>> {
        self.streams.lock().get(name).cloned()
    }

    async fn on_appended(&self, n: Notification) -> Result<()> {
        let Some(state) = self.state(&n.stream) else {
            return Ok(());
        };
        {
            let mut w = state.write();
            if w.is_ready() && w.epoch() == Some(n.epoch) {
                if n.position <= w.head() {
                    return Ok(());
                }
                if let (true, Some(event)) = (n.position == w.head() + 1, &n.event) {
                    let body = self.transport.encode_body(event);
                    w.push(body, self.config.hot_window, self.config.hot_window_bytes);
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
                failed.push(state.name().clone());
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
            let w = state.read();
            (w.is_ready(), w.epoch(), w.head())
        };
        let name = state.name();
        let failed = |err: &Error| {
            tracing::warn!(stream = %name, error = %err, "could not refresh a hot window");
        };
        let mut next = None;
        if ready {
            let page = self
                .buffer
                .read(name, head, self.config.hot_window)
                .await
                .inspect_err(failed)?;
            if page.epoch == epoch && page.oldest <= head + 1 {
                next = Some(page);
            } else if epoch.is_some() && page.epoch != epoch {
                tracing::info!(stream = %name, "the stream's epoch changed");
            }
        }
        let continues = next.is_some();
        // A window that starts (or starts over, in a new epoch) holds the stream's newest
        // events from the start, not just its head: readers whose cursor is behind the head
        // (most often "no epoch, position 0", from before a stream got its first event)
        // find them in memory, rather than each of them reading the store at once.
        let page = match next {
            Some(page) => page,
            None => self.load_tail(name).await.inspect_err(failed)?,
        };
        // Only the newest events that fit the window's bytes are encoded (the newest one
        // whatever its size): with large events, a page holds far more than the window keeps.
        let mut skip = page.events.len();
        let mut bytes = 0;
        while skip > 0 {
            let size = page.events[skip - 1].data.len() + FRAME_OVERHEAD;
            if skip < page.events.len() && bytes + size > self.config.hot_window_bytes {
                break;
            }
            bytes += size;
            skip -= 1;
        }
        let events = &page.events[skip..];
        // Encoded before the lock: connections read the window meanwhile.
        let bodies: Vec<Bytes> = events
            .iter()
            .map(|e| self.transport.encode_body(e))
            .collect();
        {
            let mut w = state.write();
            if w.is_ready() && (w.epoch() != epoch || w.head() != head) {
                // Someone else moved the window meanwhile; only the feed task writes, so this
                // cannot happen, but never apply a stale page.
                return Ok(());
            }
            // A page cut at its start no longer continues the window: it starts over there.
            if !continues || skip > 0 {
                let start = events
                    .first()
                    .map_or(page.head, |e| e.position.saturating_sub(1));
                w.reset(page.epoch, start);
            }
            for body in bodies {
                w.push(body, self.config.hot_window, self.config.hot_window_bytes);
            }
            if page.head > w.head() {
                // Further behind than one page: restart the window at the head; readers
                // behind it read the store.
                w.reset(page.epoch, page.head);
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

/// Starts a window that is not ready yet at `head` (see [`Hub::seed`]).
fn seed(state: &StreamState, epoch: Option<Epoch>, head: Position) {
    {
        let mut w = state.write();
        if w.is_ready() {
            return;
        }
        w.reset(epoch, head);
    }
    state.notify();
}
