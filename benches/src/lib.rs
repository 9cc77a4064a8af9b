//! Benchmarks of resumable SSE. Run with: `cargo bench -p sse-benches`.
//!
//! - `benches/hot_paths.rs`: criterion micro-benchmarks of SSE encoding, cursor encoding and
//!   decoding, and the memory store's append and read.
//!
//! Results and method are in `docs/benchmarks.md`.
