//! A reconnecting Server-Sent Events client for any SSE server, with first-class support for
//! resumable-sse servers.
//!
//! - **Spec-exact parsing**: the WHATWG "interpret an event stream" rules, by the one parser
//!   of `resumable-sse-core` ([`resumable_sse_core::codec::Parser`]).
//! - **Reconnects like `EventSource`**: `Accept: text/event-stream`, `Last-Event-ID` with the
//!   last event id (which carries over events without an `id:` and across connections), the
//!   server's `retry:` as the base delay, then exponential [`Backoff`] with jitter and a cap.
//! - **Stops like `EventSource`, configurably**: HTTP 204 ends the stream; any other status
//!   than 200 and a content type other than `text/event-stream` end it with an [`Error`],
//!   unless [`ClientBuilder::retry_on_status`] says to retry that status. Network errors and
//!   ended responses are retried for ever, or [`ClientBuilder::max_attempts`] times in a row.
//! - **Sessions**: the token a resumable-sse server returns in `x-sse-session` is sent back
//!   on every reconnect, so messages sent to the session while the client was away arrive.
//!   Add your own headers (`Authorization: Bearer …`) with [`ClientBuilder::header`].
//! - **Typed markers**: a resumable-sse server's `connected` and `reset` events arrive as
//!   [`Event::Connected`] and [`Event::Reset`]; everything else, from any server, is an
//!   [`Event::Message`]. [`Event::Opened`] and [`Event::Disconnected`] tell the connection's
//!   state.
//! - **Survives restarts**: [`Client::resume_state`] is the cursor and token to save;
//!   [`ClientBuilder::resume`] starts a new client from it, losing nothing.
//! - **Tokens stay secret**: no `Debug` output of this crate shows a token; the crate logs
//!   nothing.
//!
//! # Example
//!
//! ```no_run
//! use resumable_sse_client::{Client, Event};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut events = Client::builder("http://127.0.0.1:3000/events?stream=news")
//!     .header("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9")
//!     .build()?;
//! while let Some(event) = events.next().await {
//!     match event? {
//!         Event::Message(message) => println!("{}: {}", message.event, message.data),
//!         Event::Reset(reset) => println!("lost continuity on {:?}: refetch", reset.streams),
//!         Event::Connected(connected) => println!("session {:?}", connected.session),
//!         Event::Disconnected(d) => println!("reconnecting in {:?}", d.retry_in),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Saving the cursor and carrying on after a restart:
//!
//! ```no_run
//! use resumable_sse_client::{Client, Resume};
//!
//! # async fn run(saved: Option<String>) -> Result<(), Box<dyn std::error::Error>> {
//! let resume: Resume = saved.map(|json| serde_json::from_str(&json)).transpose()?.unwrap_or_default();
//! let mut events = Client::builder("http://127.0.0.1:3000/events?stream=news")
//!     .resume(resume)
//!     .build()?;
//! while let Some(event) = events.next().await {
//!     let _event = event?;
//!     // … handle it, then save where the client is:
//!     let _json = serde_json::to_string(&events.resume_state())?;
//! }
//! # Ok(()) }
//! ```
//!
//! # TLS
//!
//! The crate turns on no TLS backend of `reqwest` (whose default features the workspace
//! leaves off), so plain `http://` works out of the box and the application picks its TLS:
//! add `reqwest = { version = "0.12", features = ["rustls-tls"] }` (or `native-tls`) to its
//! own manifest — Cargo unifies the features — or hand a configured client to
//! [`ClientBuilder::http_client`]. Without one, `https://` URLs fail to connect.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
mod builder;
mod client;
mod error;
mod event;
mod resume;

pub use backoff::Backoff;
pub use builder::{ClientBuilder, DEFAULT_SESSION_HEADER};
pub use client::Client;
pub use error::Error;
pub use event::{Connected, Disconnected, Ended, Event, Message, Refused, Reset, ResetReason};
pub use resume::Resume;
