//! axum adapter for resumable Server-Sent Events.
//!
//! - [`SseLayer`]: tower middleware that gives every request its session (signed token in an
//!   HttpOnly cookie or the `x-sse-session` header), found or created only when a handler
//!   uses it, so refused requests leave nothing in the store;
//! - [`Session`]: an extractor to publish or send to the current (or any) session from any
//!   handler; its rejection names the missing layer;
//! - [`Authorize`]: who may subscribe to and publish on which stream (async; RFC 6750
//!   refusals; an expiry ends the streams it opened);
//! - [`RequestIdLayer`]: an `x-request-id` for every request, in its response and in a span
//!   around every log line of its connection (with the session id);
//! - [`Limits`]: connection caps and rate limits, refused with a `200` and a growing
//!   `retry:` hint that keeps browsers' `EventSource` coming back (`429` for publishes);
//! - [`events`]: the SSE endpoint (`Last-Event-ID` header, `lastEventId` query fallback, the
//!   authorization hook, the session's private stream);
//! - [`router`]: the whole reference HTTP contract (`/events`, `/publish`, `/healthz`);
//! - [`BodyTimeoutLayer`]: request bodies must arrive within a timeout (`408` otherwise);
//! - [`serve`]: an HTTP/1.1 server that runs every request through the router (with all its
//!   middleware) and writes the event streams it answers outside hyper, so an idle
//!   connection keeps none of hyper's buffers (figures in docs/benchmarks.md), with head,
//!   keep-alive and body timeouts and a descriptor reserve against slow and hostile clients;
//! - backends by Cargo feature: `memory` (default); [`open_store`] picks one by URL.
//!
//! ```no_run
//! use axum::{Router, routing::{get, post}};
//! use resumable_sse_axum::{ApiError, Session, SseLayer};
//! use resumable_sse_core::{NewEvent, StreamName};
//!
//! async fn chat(session: Session, body: String) -> Result<(), ApiError> {
//!     session.publish(&StreamName::new("chat")?, NewEvent::new(body)).await?;
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() {
//!     let hub = resumable_sse_axum::memory_hub(Default::default());
//!     let app = Router::new()
//!         .route("/events", get(resumable_sse_axum::events))
//!         .route("/chat", post(chat))
//!         .layer(SseLayer::new(hub));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.unwrap();
//!     axum::serve(listener, app).await.unwrap();
//! }
//! ```

#![forbid(unsafe_code)]

mod auth;
pub mod body_timeout;
#[cfg(feature = "cors")]
mod cors;
mod error;
mod handler;
mod layer;
mod limits;
mod metrics;
pub mod request_id;
mod response;
mod serve;
mod session;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use auth::{Authorize, Identity, Refusal, Target};
pub use body_timeout::{BodyTimeout, BodyTimeoutLayer};
#[cfg(feature = "cors")]
pub use cors::{CorsOrigins, InvalidOrigin};
pub use error::ApiError;
pub use handler::{PublishState, events, healthz, publish, router};
/// CIDR networks, for [`Limits::trusted_proxy`] (re-exported from `ipnet`).
pub use ipnet::IpNet;
pub use layer::{SseLayer, SseService, future};
pub use limits::Limits;
pub use request_id::{RequestId, RequestIdLayer};
pub use serve::{Serve, serve};
pub use session::{InvalidSameSite, SameSite, Session, SessionRejection};
#[cfg(feature = "memory")]
pub use store::memory_hub;
pub use store::{OpenStoreError, Stores, open_store};
