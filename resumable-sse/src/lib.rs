//! Server-Sent Events that survive disconnects: one dependency for the whole of it.
//!
//! Every event gets a position in a bounded per-stream log; the SSE `id:` is the client's
//! cursor into those logs, so a browser's automatic `Last-Event-ID` brings it back exactly
//! where it left, with nothing lost, duplicated or reordered, and an in-band `reset` event
//! whenever continuity truly cannot be kept.
//!
//! This crate re-exports the pieces, each behind a Cargo feature:
//!
//! | feature | module | crate |
//! |---|---|---|
//! | (always) | the crate root: [`Hub`], the storage traits, the types | `resumable-sse-core` |
//! | `memory` (default) | `memory` | `resumable-sse-store-memory` |
//! | `redis` | `redis` | `resumable-sse-store-redis` |
//! | `postgres` | `postgres` | `resumable-sse-store-postgres` |
//! | `axum` | `axum`: the tower layer, the endpoint, `serve` | `resumable-sse-axum` |
//! | `client` | `client`: a reconnecting SSE client for Rust programs | `resumable-sse-client` |
//!
//! ```
//! # #[cfg(feature = "memory")] {
//! use std::sync::Arc;
//! use futures_util::StreamExt;
//! use resumable_sse::{ConnectRequest, Hub, NewEvent, StreamName, codec};
//! use resumable_sse::memory::MemoryStore;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = Arc::new(MemoryStore::default());
//! let hub = Hub::builder(store.clone(), store).build();
//! let news = StreamName::new("news")?;
//! let mut connection = hub.connect(ConnectRequest::new(vec![news.clone()])).await?;
//! hub.publish(&news, NewEvent::new("hello")).await?;
//!
//! // The retry hint and the `connected` event come first; then the event, whose `id:` is the
//! // cursor a reconnecting client sends back as `Last-Event-ID`.
//! let mut parser = codec::Parser::new();
//! let mut events = Vec::new();
//! while events.len() < 2 {
//!     for item in parser.feed(&connection.next().await.unwrap()) {
//!         if let codec::Item::Event(e) = item { events.push(e) }
//!     }
//! }
//! assert_eq!(events[0].event, "connected");
//! assert_eq!(events[1].data, "hello");
//! assert!(!events[1].last_event_id.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! # }
//! ```
//!
//! The README (the project's front page) shows an axum application; its example is compiled
//! as a test of this crate.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use resumable_sse_core::*;

#[cfg(feature = "axum")]
pub use resumable_sse_axum as axum;
#[cfg(feature = "client")]
pub use resumable_sse_client as client;
#[cfg(feature = "memory")]
pub use resumable_sse_store_memory as memory;
#[cfg(feature = "postgres")]
pub use resumable_sse_store_postgres as postgres;
#[cfg(feature = "redis")]
pub use resumable_sse_store_redis as redis;

/// The README's examples, compiled and run as doctests so that they cannot drift.
#[cfg(all(doctest, feature = "axum", feature = "memory", feature = "client"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
