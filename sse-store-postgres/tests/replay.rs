//! A replay of 10 000 events streams in pages: a real SSE client resuming from before the
//! first event gets all of them, in order, over HTTP, while the store is only ever asked
//! for (and only ever returns) pages of at most `page_size` events.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use resumable_sse_axum::SseLayer;
use resumable_sse_axum::testing::{TestServer, connect};
use resumable_sse_core::{
    Appended, Config, EventBuffer, Hub, LiveFeed, NewEvent, Position, ReadPage, StreamName,
};
use resumable_sse_store_postgres::PostgresConfig;
use resumable_sse_store_postgres::testing::{TempStore, temp_store};

const EVENTS: usize = 10_000;
const PAGE: usize = 200;

/// The real PostgreSQL store, with every read recorded: the largest limit asked for and the
/// largest page returned.
#[derive(Debug)]
struct Recording {
    inner: TempStore,
    reads: AtomicUsize,
    largest_limit: AtomicUsize,
    largest_page: AtomicUsize,
}

#[resumable_sse_core::async_trait]
impl EventBuffer for Recording {
    async fn append(
        &self,
        stream: &StreamName,
        event: NewEvent,
    ) -> resumable_sse_core::Result<Appended> {
        self.inner.append(stream, event).await
    }

    async fn append_many(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
    ) -> resumable_sse_core::Result<Vec<Appended>> {
        self.inner.append_many(stream, events).await
    }

    async fn read(
        &self,
        stream: &StreamName,
        after: Position,
        limit: usize,
    ) -> resumable_sse_core::Result<ReadPage> {
        self.largest_limit.fetch_max(limit, Ordering::Relaxed);
        let page = self.inner.read(stream, after, limit).await?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.largest_page
            .fetch_max(page.events.len(), Ordering::Relaxed);
        Ok(page)
    }

    fn live_feed(&self) -> LiveFeed {
        self.inner.live_feed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_replay_in_pages() {
    let store = temp_store(PostgresConfig::default().with_max_len(EVENTS)).await;
    let recording = Arc::new(Recording {
        inner: store.clone(),
        reads: AtomicUsize::new(0),
        largest_limit: AtomicUsize::new(0),
        largest_page: AtomicUsize::new(0),
    });
    // The hot window is no larger than a page either, so no read of the hub asks for more.
    let config = Config::default().with_page_size(PAGE).with_hot_window(PAGE);
    let hub = Hub::builder(recording.clone(), Arc::new(store.clone()))
        .config(config)
        .build();
    let server = TestServer::start(resumable_sse_axum::router(SseLayer::new(hub))).await;
    let url = server.url("/events?stream=history");

    // The cursor before the first event: the `connected` frame's id on the empty stream.
    let mut first = connect(&url, &[]).await;
    let connected = first
        .next_event(Duration::from_secs(10))
        .await
        .expect("a connected event");
    assert_eq!(connected.event, "connected");
    let token = first.token().expect("a session token");
    drop(first);

    let history = StreamName::new("history").expect("a name");
    for chunk in 0..EVENTS / 500 {
        let batch = (0..500)
            .map(|i| NewEvent::new(format!("event {}", chunk * 500 + i + 1)))
            .collect();
        store.append_many(&history, batch).await.expect("append");
    }
    recording.largest_limit.store(0, Ordering::Relaxed);
    recording.largest_page.store(0, Ordering::Relaxed);
    recording.reads.store(0, Ordering::Relaxed);

    let started = Instant::now();
    let mut client = connect(
        &url,
        &[
            ("x-sse-session", &token),
            ("last-event-id", &connected.last_event_id),
        ],
    )
    .await;
    assert_eq!(client.status, 200);
    let hello = client
        .next_event(Duration::from_secs(10))
        .await
        .expect("a connected event");
    assert_eq!(hello.event, "connected");
    let info: serde_json::Value = serde_json::from_str(&hello.data).expect("JSON");
    assert_eq!(info["replay"], EVENTS as u64, "{info}");
    assert_eq!(info["reset"], false, "{info}");
    for n in 1..=EVENTS {
        let event = client
            .next_event(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("event {n} did not arrive"));
        assert_eq!(event.data, format!("event {n}"), "events arrive in order");
    }
    let elapsed = started.elapsed();
    let (reads, limit, page) = (
        recording.reads.load(Ordering::Relaxed),
        recording.largest_limit.load(Ordering::Relaxed),
        recording.largest_page.load(Ordering::Relaxed),
    );
    eprintln!(
        "replayed {EVENTS} events in {elapsed:?}: {reads} reads, largest limit {limit}, \
         largest page {page}"
    );
    assert!(
        limit <= PAGE,
        "the store was asked for {limit} events at once"
    );
    assert!(page <= PAGE, "the store returned {page} events at once");
    assert!(
        reads >= EVENTS / PAGE,
        "{reads} reads cannot have carried {EVENTS} events in pages of {PAGE}"
    );

    // The store itself caps a page, whatever a caller asks for.
    let greedy = store.read(&history, 0, usize::MAX).await.expect("read");
    assert_eq!(greedy.events.len(), store.config().page_size);
}
