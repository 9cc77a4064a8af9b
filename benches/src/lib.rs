//! Benchmarks of resumable SSE.
//!
//! - `benches/hot_paths.rs`: criterion micro-benchmarks of SSE encoding, cursor encoding and
//!   decoding, the memory store, and the hub's wake-up and batch assembly
//!   (`cargo bench -p sse-benches --bench hot_paths`);
//! - `sse-load` (a binary): the load tool — fan-out, resume, idle memory per connection and
//!   reconnect storms against any SSE server through URL templates, plus `compare`, which runs
//!   the whole comparison and writes `docs/benchmarks.md`;
//! - `sse-baseline` (a binary): axum's `Sse` over a `tokio::sync::broadcast`, no replay — what
//!   a Rust developer writes without this library.
//!
//! Results and method are in `docs/benchmarks.md`.

#![forbid(unsafe_code)]

pub mod client;
pub mod proc;
