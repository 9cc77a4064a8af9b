//! [`HubBuilder`]: the stores, and optionally the configuration, keys and transport.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use parking_lot::Mutex;
use slab::Slab;
use tokio::sync::mpsc;

use super::breaker::Breaker;
use super::{Hub, Inner, feed, keeper};
use crate::appender::Appender;
use crate::metrics::Metered;
use crate::session::SessionStore;
use crate::token::TokenKeys;
use crate::{Config, EventBuffer, SseTransport, Transport};

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

    /// Builds the hub and spawns its background tasks: the feed task, the heartbeat ticker,
    /// the session keeper and (unless [`Config::breaker`] is off) the store probe of the
    /// circuit breaker.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn build(self) -> Hub {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut config = self.config;
        config.hot_window = config.hot_window.max(1);
        config.page_size = config.page_size.max(1);
        config.max_pending_bytes = config.max_pending_bytes.max(1);
        // Subscribe before the hub exists, so no append made through it can be missed.
        let feed = self.buffer.live_feed();
        // Every store operation the hub makes is timed and its failures counted.
        let buffer: Arc<dyn EventBuffer> = Arc::new(Metered::<dyn EventBuffer>::new(self.buffer));
        let sessions: Arc<dyn SessionStore> =
            Arc::new(Metered::<dyn SessionStore>::new(self.sessions));
        // Two ticks per heartbeat interval: see `State::poll_next` in the connection module.
        let tick = (config.heartbeat / 2).max(Duration::from_millis(5));
        let keepalive = (config.session_ttl / 2).max(Duration::from_millis(10));
        let breaker = Arc::new(Breaker::new(config.breaker));
        let inner = Arc::new(Inner {
            appender: Appender::new(buffer.clone(), breaker.clone()),
            buffer,
            sessions,
            transport: self.transport,
            keys: self.keys.unwrap_or_else(TokenKeys::random),
            config,
            streams: Mutex::new(HashMap::new()),
            commands: tx,
            connections: Mutex::new(Slab::new()),
            tick: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            feed_connected: AtomicBool::new(true),
            hot: crate::metrics::Hot::register(),
            live_sessions: Mutex::new(HashMap::new()),
            breaker,
            closed: Mutex::new(keeper::ClosedCursors::default()),
            unregistered: tokio::sync::Notify::new(),
        });
        if !inner.breaker.config().is_off() {
            crate::task::spawn_periodic(
                Arc::downgrade(&inner),
                inner.breaker.config().probe,
                |inner| async move { inner.breaker.probe(&inner.buffer, &inner.sessions).await },
            );
        }
        metrics::gauge!(crate::metrics::FEED_CONNECTED).set(1.0);
        keeper::spawn(&inner, tick, keepalive);
        tokio::spawn(feed::run(Arc::downgrade(&inner), rx, feed));
        Hub { inner }
    }
}
