//! Resumable Server-Sent Events: the engine.
//!
//! - **Types**: validated [`StreamName`]s, [`Position`]s, [`Epoch`]s, [`Event`]s and the
//!   [`Cursor`](cursor::Cursor) whose wire form is the SSE `id:`.
//! - **Traits** for storage and wire: [`EventBuffer`] (the bounded per-stream log and its
//!   live feed), [`SessionStore`] and [`Transport`], all usable as `Arc<dyn …>`.
//! - **The protocol engine**, [`Hub`]: hot windows filled from the live feed, gap repair from
//!   the store, connections that are cursors over the log (never queues), resume from
//!   `Last-Event-ID` with subscribe-then-replay-then-dedupe, and an in-band `reset` whenever
//!   continuity cannot be kept.
//! - **Session tokens** ([`TokenKeys`]): HMAC-SHA256, bound to a principal, with key rotation.
//! - **One SSE codec** ([`codec`]), exact to the WHATWG rules.
//! - A backend **conformance suite** behind the `testing` feature.
//!
//! | backend | crate |
//! |---|---|
//! | in-memory (default) | `resumable-sse-store-memory` |
//! | Redis | `resumable-sse-store-redis` |
//! | PostgreSQL | `resumable-sse-store-postgres` |
//!
//! Most applications use the axum adapter, `resumable-sse-axum`, rather than this crate
//! directly, or the `resumable-sse` package, which re-exports every piece behind features.
//!
//! ## Where things are
//!
//! The crate root holds what applications and store implementations name: the [`Hub`] and
//! its [`Config`], the three traits and every type in their signatures, sessions and their
//! [`TokenKeys`], and the errors. Each item has one path. The modules hold the rest:
//!
//! | module | what |
//! |---|---|
//! | [`codec`] | the SSE encoder and the one parser (tests, benches, clients) |
//! | [`cursor`] | the cursor's wire format, for tools that inspect ids |
//! | [`time`] | millisecond timestamps as stores keep them |
//! | [`metrics`] | the names of the metrics recorded (through the `metrics` facade) |
//! | [`task`] | the periodic background task the hub and the stores run |
//! | [`text`] | [`Text`], shared UTF-8, and the [`Chunks`](text::Chunks) stores keep it in |
//! | `testing` | the backend conformance suite (feature `testing`) |
//!
//! ```
//! use std::sync::Arc;
//! use futures_util::StreamExt;
//! use resumable_sse_core::{codec, ConnectRequest, Hub, NewEvent, StreamName};
//! use resumable_sse_store_memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Arc::new(MemoryStore::default());
//! let hub = Hub::builder(store.clone(), store).build();
//! let news = StreamName::new("news")?;
//!
//! // A client reads one event, then goes away.
//! let mut first = hub.connect(ConnectRequest::new(vec![news.clone()])).await?;
//! hub.publish(&news, NewEvent::new("one")).await?;
//! let mut parser = codec::Parser::new();
//! while !parser.feed(&first.next().await.unwrap()).iter().any(|i| matches!(i, codec::Item::Event(e) if e.data == "one")) {}
//! let last_event_id = parser.last_event_id().to_owned();
//! drop(first);
//!
//! // Two events while it is away; it comes back with its Last-Event-ID and gets both.
//! hub.publish(&news, NewEvent::new("two")).await?;
//! hub.publish(&news, NewEvent::new("three")).await?;
//! let mut again = hub
//!     .connect(ConnectRequest::new(vec![news]).last_event_id(Some(last_event_id)))
//!     .await?;
//! let mut parser = codec::Parser::new();
//! let mut data = Vec::new();
//! while data.len() < 3 {
//!     for item in parser.feed(&again.next().await.unwrap()) {
//!         if let codec::Item::Event(e) = item { data.push(e.data) }
//!     }
//! }
//! assert_eq!(data[1..], ["two", "three"]);
//! assert!(data[0].contains("\"resumed\":true"));
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod appender;
mod buffer;
pub mod codec;
pub mod collections;
mod config;
mod connection;
pub mod cursor;
mod error;
mod hub;
pub mod metrics;
mod session;
mod signal;
pub mod task;
pub mod text;
mod token;
mod transport;
mod types;

#[cfg(feature = "testing")]
pub mod testing;

pub use buffer::{EventBuffer, FeedItem, LiveFeed, Notification};
pub use config::{Config, ResetPolicy};
pub use connection::{ConnectRequest, ConnectedInfo, Connection, ResetReason};
pub use error::{BoxError, Error, Result};
pub use hub::{
    BreakerConfig, CircuitOpen, Hub, HubBuilder, ResolvedSession, SessionContext, SessionStatus,
};
pub use session::{ParseSessionIdError, SessionId, SessionRecord, SessionStore};
pub use text::Text;
pub use token::{KeyError, TokenClaims, TokenError, TokenKeys};
pub use transport::{Frame, SseTransport, Transport};
pub use types::{
    Appended, Epoch, Event, NewEvent, ParseEpochError, Position, ReadPage, Retention, StreamName,
};

/// Millisecond timestamps, as the stores keep expiry and event times.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use resumable_sse_core::time::{from_unix_ms, unix_ms};
///
/// let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
/// assert_eq!(unix_ms(t), 1_700_000_000_123);
/// assert_eq!(from_unix_ms(unix_ms(t)), t);
/// ```
pub mod time {
    pub use crate::types::{from_unix_ms, unix_ms};
}

// Re-exported for the conformance macro and custom stores.
#[doc(hidden)]
pub use async_trait::async_trait;
