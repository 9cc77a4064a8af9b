//! The metrics this workspace records, through the [`metrics`] facade.
//!
//! Library crates only record; the application chooses the exporter (the reference server
//! installs `metrics-exporter-prometheus`). Without a recorder installed every call is a
//! no-op, so an application that does not want metrics pays nothing worth measuring.
//! Install the recorder before building the [`Hub`](crate::Hub): the hub registers the
//! delivery path's counters once, when it is built.
//!
//! Names follow Prometheus conventions: the `sse_` prefix, the unit in the name, `_total` on
//! counters. Labels take a few fixed values only, never a stream name nor a session, so the
//! number of series stays bounded whatever clients do.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | [`CONNECTIONS_ACTIVE`] | gauge | | event streams open now |
//! | [`CONNECTIONS_TOTAL`] | counter | `outcome`: `fresh`, `resumed`, `reset` | event streams opened |
//! | [`RESETS_TOTAL`] | counter | `reason` | `reset` events sent, one per reason and connection |
//! | [`SESSIONS_ACTIVE`] | gauge | | sessions with at least one open event stream here |
//! | [`EVENTS_PUBLISHED_TOTAL`] | counter | | events appended through the hub |
//! | [`PUBLISH_ERRORS_TOTAL`] | counter | | publishes that failed |
//! | [`DELIVERIES_TOTAL`] | counter | | events written to connections |
//! | [`DELIVERED_BYTES_TOTAL`] | counter | | bytes written to connections |
//! | [`REPLAYED_EVENTS`] | histogram | | events a connection replays when it opens |
//! | [`WINDOW_MISSES_TOTAL`] | counter | | connection reads the hot window could not serve |
//! | [`WINDOW_EVENTS`] | gauge | | events held in the hot windows |
//! | [`APPEND_BATCH_EVENTS`] | histogram | | events per group-committed store write |
//! | [`FEED_CONNECTED`] | gauge | | 1 while the live feed is connected, else 0 |
//! | [`FEED_RESYNCS_TOTAL`] | counter | | live-feed resyncs (re-reads after lost notifications) |
//! | [`FEED_DISCONNECTS_TOTAL`] | counter | | times the live feed lost its connection |
//! | [`STORE_OPERATION_DURATION_SECONDS`] | histogram | `store`, `op` | store round trips |
//! | [`STORE_ERRORS_TOTAL`] | counter | `store`, `op` | store operations that failed |
//! | [`STORE_RETAINED_EVENTS`] | gauge | `store` | events a store holds against its retention limit (memory store) |
//! | [`REFUSALS_TOTAL`] | counter | `reason` | requests refused by a limit or by authorization |
//! | [`CONNECTIONS_DROPPED_TOTAL`] | counter | `reason`: `head_timeout`, `shed`, `body_timeout` | slow or idle connections the server dropped |
//! | [`STORE_CIRCUIT_OPEN`] | gauge | | 1 while the store circuit breaker is open, else 0 |
//!
//! ```
//! use resumable_sse_core::metrics;
//!
//! assert!(metrics::ALL.iter().all(|(name, _, _)| name.starts_with("sse_")));
//! assert!(metrics::ALL.iter().any(|(name, _, _)| *name == metrics::CONNECTIONS_TOTAL));
//! // Register descriptions and units with whatever recorder is installed (none here).
//! metrics::describe();
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use metrics::Unit;

use crate::{
    Appended, EventBuffer, LiveFeed, NewEvent, Position, ReadPage, Result, SessionId,
    SessionRecord, SessionStore, StreamName,
};

/// Gauge: event streams open now in this process.
pub const CONNECTIONS_ACTIVE: &str = "sse_connections_active";
/// Counter: event streams opened, by `outcome` (`fresh`, `resumed` or `reset`).
pub const CONNECTIONS_TOTAL: &str = "sse_connections_total";
/// Counter: `reset` events sent when connections opened or fell behind, by `reason`
/// (the reasons of [`ResetReason`](crate::ResetReason)).
pub const RESETS_TOTAL: &str = "sse_resets_total";
/// Gauge: sessions with at least one open event stream in this process.
pub const SESSIONS_ACTIVE: &str = "sse_sessions_active";
/// Counter: events appended through the hub (publishes and messages to sessions).
pub const EVENTS_PUBLISHED_TOTAL: &str = "sse_events_published_total";
/// Counter: publishes that failed (store errors, events over the size limit).
pub const PUBLISH_ERRORS_TOTAL: &str = "sse_publish_errors_total";
/// Counter: events written to connections (replays included), counted once per wake-up.
pub const DELIVERIES_TOTAL: &str = "sse_deliveries_total";
/// Counter: bytes handed to connections' writers (events, markers and heartbeats).
pub const DELIVERED_BYTES_TOTAL: &str = "sse_delivered_bytes_total";
/// Histogram: events a connection has to replay when it opens.
pub const REPLAYED_EVENTS: &str = "sse_replayed_events";
/// Counter: connection reads that the hot window could not serve and went to the store.
pub const WINDOW_MISSES_TOTAL: &str = "sse_window_misses_total";
/// Gauge: events held in all the hub's hot windows, sampled on each window change.
pub const WINDOW_EVENTS: &str = "sse_window_events";
/// Histogram: events per group-committed store write (ADR 0013).
pub const APPEND_BATCH_EVENTS: &str = "sse_append_batch_events";
/// Gauge: 1 while the hub's live feed is connected, 0 while it is not.
pub const FEED_CONNECTED: &str = "sse_feed_connected";
/// Counter: resyncs of the live feed (hot windows re-read after notifications may be lost).
pub const FEED_RESYNCS_TOTAL: &str = "sse_feed_resyncs_total";
/// Counter: times the live feed lost its connection to the store.
pub const FEED_DISCONNECTS_TOTAL: &str = "sse_feed_disconnects_total";
/// Histogram: the duration of store operations, by `store` and `op`.
pub const STORE_OPERATION_DURATION_SECONDS: &str = "sse_store_operation_duration_seconds";
/// Counter: store operations that failed, by `store` and `op`.
pub const STORE_ERRORS_TOTAL: &str = "sse_store_errors_total";
/// Gauge: events a store holds against its retention limit, by `store` (the memory store
/// reports it; networked stores are watched with their own exporters).
pub const STORE_RETAINED_EVENTS: &str = "sse_store_retained_events";
/// Counter: requests refused, by `reason` (a limit, `invalid_token`, `insufficient_scope`).
pub const REFUSALS_TOTAL: &str = "sse_refusals_total";
/// Counter: connections the server dropped for being slow or idle, or to keep descriptors in
/// reserve, by `reason` (`head_timeout`, `shed`, `body_timeout`).
pub const CONNECTIONS_DROPPED_TOTAL: &str = "sse_connections_dropped_total";
/// Gauge: 1 while the store circuit breaker is open (requests that need the store are
/// refused at once), else 0.
pub const STORE_CIRCUIT_OPEN: &str = "sse_store_circuit_open";
/// Gauge: the allocator's heap in bytes, by `state`: `in_use` (allocated and not freed) and
/// `free` (freed and kept by the allocator for reuse, still resident until given back). The
/// reference server sets it on glibc when `/metrics` is read; the library never does.
pub const HEAP_BYTES: &str = "sse_heap_bytes";

/// Every metric: name, unit and description, as [`describe`] registers them.
pub const ALL: &[(&str, Unit, &str)] = &[
    (CONNECTIONS_ACTIVE, Unit::Count, "Event streams open now."),
    (
        CONNECTIONS_TOTAL,
        Unit::Count,
        "Event streams opened, by outcome (fresh, resumed, reset).",
    ),
    (RESETS_TOTAL, Unit::Count, "Reset events sent, by reason."),
    (
        SESSIONS_ACTIVE,
        Unit::Count,
        "Sessions with at least one open event stream.",
    ),
    (
        EVENTS_PUBLISHED_TOTAL,
        Unit::Count,
        "Events appended through the hub.",
    ),
    (PUBLISH_ERRORS_TOTAL, Unit::Count, "Publishes that failed."),
    (
        DELIVERIES_TOTAL,
        Unit::Count,
        "Events written to connections.",
    ),
    (
        DELIVERED_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes written to connections.",
    ),
    (
        REPLAYED_EVENTS,
        Unit::Count,
        "Events a connection replays when it opens.",
    ),
    (
        WINDOW_MISSES_TOTAL,
        Unit::Count,
        "Connection reads the hot window could not serve.",
    ),
    (
        WINDOW_EVENTS,
        Unit::Count,
        "Events held in the hot windows.",
    ),
    (
        APPEND_BATCH_EVENTS,
        Unit::Count,
        "Events per group-committed store write.",
    ),
    (
        FEED_CONNECTED,
        Unit::Count,
        "1 while the live feed is connected.",
    ),
    (FEED_RESYNCS_TOTAL, Unit::Count, "Resyncs of the live feed."),
    (
        FEED_DISCONNECTS_TOTAL,
        Unit::Count,
        "Times the live feed lost its connection.",
    ),
    (
        STORE_OPERATION_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of store operations, by store and operation.",
    ),
    (
        STORE_ERRORS_TOTAL,
        Unit::Count,
        "Store operations that failed, by store and operation.",
    ),
    (
        STORE_RETAINED_EVENTS,
        Unit::Count,
        "Events a store holds against its retention limit.",
    ),
    (
        REFUSALS_TOTAL,
        Unit::Count,
        "Requests refused by a limit or by authorization, by reason.",
    ),
    (
        CONNECTIONS_DROPPED_TOTAL,
        Unit::Count,
        "Slow, idle or shed connections the server dropped, by reason.",
    ),
    (
        STORE_CIRCUIT_OPEN,
        Unit::Count,
        "1 while the store circuit breaker is open.",
    ),
    (
        HEAP_BYTES,
        Unit::Bytes,
        "The allocator's heap, by state (in_use, free); set by sse-server on glibc.",
    ),
];

/// Registers the description and unit of every metric in [`ALL`] with the installed
/// recorder. Call it once after installing one; without a recorder it does nothing.
///
/// ```
/// resumable_sse_core::metrics::describe();
/// ```
pub fn describe() {
    for &(name, unit, help) in ALL {
        if name.ends_with("_seconds") || name == REPLAYED_EVENTS || name == APPEND_BATCH_EVENTS {
            metrics::describe_histogram!(name, unit, help);
        } else if name.ends_with("_total") {
            metrics::describe_counter!(name, unit, help);
        } else {
            metrics::describe_gauge!(name, unit, help);
        }
    }
}

/// Runs one store operation, recording its duration in
/// [`STORE_OPERATION_DURATION_SECONDS`] and, when it fails, [`STORE_ERRORS_TOTAL`], both
/// labelled with `store` and `op`. Stores wrap each round trip in it.
///
/// ```
/// use resumable_sse_core::metrics::timed;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let answer: Result<u32, ()> = timed("mine", "read", async { Ok(42) }).await;
/// assert_eq!(answer, Ok(42));
/// # }
/// ```
pub async fn timed<T, E>(
    store: &'static str,
    op: &'static str,
    operation: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let start = Instant::now();
    let result = operation.await;
    metrics::histogram!(STORE_OPERATION_DURATION_SECONDS, "store" => store, "op" => op)
        .record(start.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!(STORE_ERRORS_TOTAL, "store" => store, "op" => op).increment(1);
    }
    result
}

/// The metrics of the delivery path, registered once when the hub is built: each wake-up of
/// each connection then costs an atomic add per metric, not a lookup in the recorder. (So a
/// recorder must be installed before the hub is built for these to be recorded.)
#[derive(Clone)]
pub(crate) struct Hot {
    pub(crate) deliveries: metrics::Counter,
    pub(crate) bytes: metrics::Counter,
}

impl Hot {
    pub(crate) fn register() -> Hot {
        Hot {
            deliveries: metrics::counter!(DELIVERIES_TOTAL),
            bytes: metrics::counter!(DELIVERED_BYTES_TOTAL),
        }
    }
}

/// A store whose every operation is [`timed`]: the hub wraps the stores it is built with.
pub(crate) struct Metered<T: ?Sized> {
    label: &'static str,
    inner: Arc<T>,
}

impl<T: ?Sized> fmt::Debug for Metered<T>
where
    T: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Metered<dyn EventBuffer> {
    pub(crate) fn new(inner: Arc<dyn EventBuffer>) -> Self {
        Metered {
            label: inner.store_label(),
            inner,
        }
    }
}

impl Metered<dyn SessionStore> {
    pub(crate) fn new(inner: Arc<dyn SessionStore>) -> Self {
        Metered {
            label: inner.store_label(),
            inner,
        }
    }
}

#[async_trait]
impl EventBuffer for Metered<dyn EventBuffer> {
    async fn append(&self, stream: &StreamName, event: NewEvent) -> Result<Appended> {
        timed(self.label, "append", self.inner.append(stream, event)).await
    }
    async fn append_many(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Appended>> {
        timed(self.label, "append", self.inner.append_many(stream, events)).await
    }
    async fn read(&self, stream: &StreamName, after: Position, limit: usize) -> Result<ReadPage> {
        timed(self.label, "read", self.inner.read(stream, after, limit)).await
    }
    fn live_feed(&self) -> LiveFeed {
        self.inner.live_feed()
    }
    async fn ping(&self) -> Result<()> {
        timed(self.label, "ping", self.inner.ping()).await
    }
    fn store_label(&self) -> &'static str {
        self.label
    }
}

#[async_trait]
impl SessionStore for Metered<dyn SessionStore> {
    async fn create(&self, record: &SessionRecord) -> Result<()> {
        timed(self.label, "session_create", self.inner.create(record)).await
    }
    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        timed(self.label, "session_load", self.inner.load(id)).await
    }
    async fn touch(&self, id: &SessionId, expires_at: SystemTime) -> Result<bool> {
        timed(
            self.label,
            "session_touch",
            self.inner.touch(id, expires_at),
        )
        .await
    }
    async fn touch_many(&self, ids: &[SessionId], expires_at: SystemTime) -> Result<usize> {
        let touched = self.inner.touch_many(ids, expires_at);
        timed(self.label, "session_touch", touched).await
    }
    async fn record_cursor(
        &self,
        id: &SessionId,
        cursor: &str,
        expires_at: SystemTime,
    ) -> Result<bool> {
        let recorded = self.inner.record_cursor(id, cursor, expires_at);
        timed(self.label, "session_record_cursor", recorded).await
    }
    async fn record_cursors(
        &self,
        cursors: &[(SessionId, String)],
        expires_at: SystemTime,
    ) -> Result<usize> {
        let recorded = self.inner.record_cursors(cursors, expires_at);
        timed(self.label, "session_record_cursor", recorded).await
    }
    async fn delete(&self, id: &SessionId) -> Result<()> {
        timed(self.label, "session_delete", self.inner.delete(id)).await
    }
    fn store_label(&self) -> &'static str {
        self.label
    }
}

#[cfg(test)]
mod tests {
    use super::ALL;

    #[test]
    fn names_follow_prometheus_conventions() {
        for (name, _, _) in ALL {
            assert!(name.starts_with("sse_"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()),
                "{name}"
            );
        }
        let mut names: Vec<_> = ALL.iter().map(|(n, _, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "a name is listed twice");
    }
}
