#!/usr/bin/env bash
# Runs the whole comparison and writes docs/benchmarks.md: sse-server on each backend and the
# baseline (axum Sse + broadcast), the same load, several runs, medians and ratios.
# Needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 for those backends
# (pass --stores memory to skip them). Extra arguments go to `sse-load compare`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p resumable-sse-server -p sse-benches --bins
exec target/release/sse-load compare "$@"
