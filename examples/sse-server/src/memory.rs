//! Memory bounds in bytes (docs/limits.md, "Memory"): what one event stream may hold before
//! its client reads it, how much each stream keeps, and the memory store's total budget and
//! number of streams.

use std::sync::Arc;

use resumable_sse_axum::{OpenStoreError, Stores};
use resumable_sse_core::{Config, Retention};
use resumable_sse_store_memory::{MemoryConfig, MemoryStore};

/// Memory bounds, in bytes (`1048576`, `256KiB`, `16MiB`, `1GiB`; `K`, `M`, `G` are the
/// same binary units).
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Memory (bytes: 262144, 256KiB, 16MiB, 1GiB)")]
pub(crate) struct MemoryArgs {
    /// Output one event stream holds before its client has read it, replays included: a
    /// client that stops reading pins about this much (an event larger than this still goes,
    /// alone).
    #[arg(long, value_name = "BYTES", env = "SSE_MAX_PENDING", default_value = "256KiB", value_parser = parse_bytes)]
    max_pending: usize,
    /// Event data kept per stream, besides --max-len and --max-age (the newest event is kept
    /// whatever its size); every backend.
    #[arg(long, value_name = "BYTES", env = "SSE_MAX_BYTES", default_value = "16MiB", value_parser = parse_bytes)]
    max_bytes: usize,
    /// Largest event data a publish may carry.
    #[arg(long, value_name = "BYTES", env = "SSE_MAX_EVENT_BYTES", default_value = "256KiB", value_parser = parse_bytes)]
    max_event_bytes: usize,
    /// The memory store's budget for all streams together: a publish that would go over it
    /// is answered 507 `store_full` (retention frees room).
    #[arg(long, value_name = "BYTES", env = "SSE_MEMORY_BUDGET", default_value = "512MiB", value_parser = parse_bytes)]
    memory_budget: usize,
    /// Most streams the memory store holds (session streams included): a publish to one more
    /// is answered 507 `store_full`.
    #[arg(
        long,
        value_name = "N",
        env = "SSE_MEMORY_MAX_STREAMS",
        default_value_t = 100_000
    )]
    memory_max_streams: usize,
    /// Give memory freed after a spike back to the system: with glibc, no per-thread caches
    /// and no free top kept in its arenas (`GLIBC_TUNABLES`, set by starting the process
    /// again, once; a tunable the operator set is kept) and `malloc_trim` once the freed
    /// memory glibc holds grew by 16 KiB and a 64th of what is in use (checked every 5 s);
    /// elsewhere nothing (other allocators do it themselves).
    #[arg(long, value_name = "BOOL", env = "SSE_RELEASE_MEMORY", default_value_t = true, action = clap::ArgAction::Set)]
    release_memory: bool,
}

impl MemoryArgs {
    /// Sets glibc's tunables for `--release-memory` (the process starts again with them, see
    /// [`trim::with_tunables`](crate::trim::with_tunables)): why not, when that failed. Call
    /// it first thing, before any thread starts.
    pub(crate) fn prepare_release(&self) -> Option<std::io::Error> {
        if self.release_memory {
            crate::trim::with_tunables()
        } else {
            None
        }
    }

    /// Starts giving freed memory back to the system, unless `--release-memory false`.
    pub(crate) fn spawn_release(&self) {
        if self.release_memory {
            crate::trim::spawn();
        }
    }

    /// The retention of every backend: by count and age as given, by bytes from here.
    pub(crate) fn retention(&self, max_len: usize, max_age: std::time::Duration) -> Retention {
        Retention::new(max_len, max_age).with_max_bytes(self.max_bytes)
    }

    /// The engine settings these flags own.
    pub(crate) fn config(&self, config: Config) -> Config {
        config
            .with_max_pending_bytes(self.max_pending)
            .with_max_event_bytes(self.max_event_bytes)
    }

    /// Opens the store `url` names; the memory store with this budget and cap.
    pub(crate) async fn open_store(
        &self,
        url: &str,
        retention: Retention,
    ) -> Result<Stores, OpenStoreError> {
        if url != "memory" {
            return resumable_sse_axum::open_store(url, retention).await;
        }
        let store = Arc::new(MemoryStore::new(
            MemoryConfig::default()
                .with_retention(retention)
                .with_budget(self.memory_budget)
                .with_max_streams(self.memory_max_streams),
        ));
        tracing::info!(
            budget = self.memory_budget,
            max_streams = self.memory_max_streams,
            max_bytes_per_stream = self.max_bytes,
            "memory store"
        );
        Ok(Stores {
            buffer: store.clone(),
            sessions: store,
        })
    }
}

/// A byte count: digits, then optionally `B`, `K`/`KiB`, `M`/`MiB` or `G`/`GiB` (binary units).
fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count (262144, 256KiB, 16MiB, 1GiB)"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        other => return Err(format!("unknown unit {other:?}: use B, KiB, MiB or GiB")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        memory: MemoryArgs,
    }

    #[test]
    fn byte_counts_parse_in_binary_units() {
        assert_eq!(parse_bytes("262144"), Ok(262_144));
        assert_eq!(parse_bytes("256KiB"), Ok(256 << 10));
        assert_eq!(parse_bytes("16M"), Ok(16 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "12 parsecs",
            "-1",
            "99999999999999999999GiB",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_and_flags() {
        let memory = Args::try_parse_from(["sse-server"]).unwrap().memory;
        assert_eq!(memory.max_pending, 256 << 10);
        assert_eq!(memory.memory_budget, 512 << 20);
        assert_eq!(memory.memory_max_streams, 100_000);
        let retention = memory.retention(1000, std::time::Duration::from_secs(60));
        assert_eq!(retention.max_bytes(), 16 << 20);
        let memory = Args::try_parse_from([
            "sse-server",
            "--max-pending=1MiB",
            "--max-bytes=4MiB",
            "--memory-budget=64MiB",
        ])
        .unwrap()
        .memory;
        assert_eq!(memory.config(Config::default()).max_pending_bytes, 1 << 20);
        assert_eq!(
            memory
                .retention(1000, std::time::Duration::from_secs(60))
                .max_bytes(),
            4 << 20
        );
        assert_eq!(memory.memory_budget, 64 << 20);
    }
}
