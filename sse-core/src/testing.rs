//! The backend conformance suite: the contract of [`EventBuffer`] and [`SessionStore`],
//! written once as generic async test functions that every store must pass.
//!
//! A store crate runs the whole suite with one macro call in `tests/conformance.rs`, given two
//! async functions (or closures returning futures):
//!
//! - `setup` builds a store with the [`Retention`] a test asks for; stores may share a
//!   backend between tests, since every test works on streams and sessions of its own, with
//!   random names;
//! - `lose_data` makes a store lose its data, as a crash without persistence, a flush or a
//!   restored backup would, and returns it (or, for a store whose data dies with it, a new
//!   one on the same backend): [`buffer_epoch_changes_when_data_is_lost`] checks that the
//!   streams then change epoch. It may wipe only what this one store owns (its key prefix,
//!   its schema), since other tests run at the same time.
//!
//! ```
//! // sse-store-memory/tests/conformance.rs
//! use resumable_sse_core::Retention;
//! use resumable_sse_store_memory::{MemoryConfig, MemoryStore};
//!
//! async fn setup(retention: Retention) -> MemoryStore {
//!     MemoryStore::new(MemoryConfig::default().with_retention(retention))
//! }
//!
//! /// A memory store's data dies with its process: the restarted process builds a new store.
//! async fn lose_data(store: MemoryStore) -> MemoryStore {
//!     drop(store);
//!     setup(Retention::default()).await
//! }
//!
//! resumable_sse_core::conformance_tests!(setup, lose_data);
//! # fn main() {}
//! ```
//!
//! [`conformance_tests!`](crate::conformance_tests) expands to one `#[test]` per function of
//! this module, each on its own multi-threaded tokio runtime; callers import nothing else.
//! A store that implements only one of the traits uses
//! [`event_buffer_tests!`](crate::event_buffer_tests) or
//! [`session_store_tests!`](crate::session_store_tests) instead.
//!
//! The functions can also be called directly:
//!
//! ```
//! use resumable_sse_core::testing;
//! use resumable_sse_store_memory::MemoryStore;
//!
//! # #[tokio::main] async fn main() {
//! testing::buffer_idempotent_publisher_id(MemoryStore::default()).await;
//! # }
//! ```
//!
//! Time-dependent points use real time. Retention may be applied lazily (by a sweeper) but
//! must be within [`DEADLINE`], so give such sweepers an interval of a second or less in the
//! setup. Session expiry may not wait for a sweeper: an expired session is absent at once.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::time::unix_ms;
use crate::{
    Appended, Epoch, EventBuffer, FeedItem, LiveFeed, NewEvent, Position, ReadPage, Retention,
    SessionId, SessionRecord, SessionStore, StreamName,
};

/// How long a lazy backend may take to apply retention or expiry, and how long a live feed
/// may take to deliver a notification, before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// How often a test polls while it waits for something to happen.
const POLL: Duration = Duration::from_millis(25);

/// The retention [`buffer_retention_by_count`] needs: three events, one hour.
pub const COUNT_RETENTION: Retention = Retention::new(3, Duration::from_secs(3600));

/// The retention [`buffer_retention_by_age`] needs: 1000 events, 300 ms.
pub const AGE_RETENTION: Retention = Retention::new(1000, Duration::from_millis(300));

/// The retention [`buffer_readers_during_concurrent_appends`] needs: 50 events (fewer than it
/// appends, so that trimming goes on while it reads), one hour.
pub const READERS_RETENTION: Retention = Retention::new(50, Duration::from_secs(3600));

/// The retention [`buffer_retention_by_bytes`] needs: 1000 events, one hour, 1000 bytes of
/// data.
pub const BYTES_RETENTION: Retention =
    Retention::new(1000, Duration::from_secs(3600)).with_max_bytes(1000);

/// The retention every other test is given: 1000 events, one hour (the default).
pub const DEFAULT_RETENTION: Retention = Retention::new(1000, Duration::from_secs(3600));

/// Runs one conformance test on a fresh multi-threaded runtime (two workers, time and I/O
/// enabled). The macros call it; it is public only for them.
///
/// # Panics
///
/// When the runtime cannot be built, and when the test panics.
#[doc(hidden)]
pub fn run<F: Future<Output = ()>>(test: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the conformance test")
        .block_on(test);
}

/// A stream name no other test (and no earlier run against a persistent backend) uses.
///
/// # Panics
///
/// When `prefix` makes an invalid name.
pub fn unique_stream(prefix: &str) -> StreamName {
    StreamName::new(format!("{prefix}-{:016x}", rand::random::<u64>()))
        .expect("a valid stream name")
}

/// The next item of `feed` that concerns `stream`: an append to it, or a resync. Appends to
/// other streams are skipped.
///
/// ```
/// use resumable_sse_core::{EventBuffer, FeedItem, NewEvent, testing};
/// use resumable_sse_store_memory::MemoryStore;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store = MemoryStore::default();
/// let (news, other) = (testing::unique_stream("news"), testing::unique_stream("other"));
/// let mut feed = store.live_feed();
/// store.append(&other, NewEvent::new("elsewhere")).await.unwrap();
/// store.append(&news, NewEvent::new("hello")).await.unwrap();
/// let FeedItem::Appended(n) = testing::next_feed_item(&mut feed, &news).await else {
///     panic!("an append")
/// };
/// assert_eq!((n.stream, n.position), (news, 1));
/// # }
/// ```
///
/// # Panics
///
/// When nothing concerning `stream` arrives within [`DEADLINE`] of the previous item, or the
/// feed ends.
pub async fn next_feed_item(feed: &mut LiveFeed, stream: &StreamName) -> FeedItem {
    loop {
        let item = tokio::time::timeout(DEADLINE, feed.next())
            .await
            .expect("a live feed item within the deadline")
            .expect("the live feed does not end");
        match &item {
            FeedItem::Appended(n) if &n.stream != stream => continue,
            // Says nothing about appends; a reconnect's resync follows.
            FeedItem::Disconnected => continue,
            _ => return item,
        }
    }
}

/// Polls `probe` until it yields a value, failing the test after [`DEADLINE`].
async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting until {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn read<B: EventBuffer + ?Sized>(
    store: &B,
    stream: &StreamName,
    after: Position,
    limit: usize,
) -> ReadPage {
    let page = store
        .read(stream, after, limit)
        .await
        .expect("read succeeds");
    assert_page_consistent(stream, after, limit, &page);
    page
}

/// What holds for any page: `oldest <= head + 1`, at most `limit` events, all of this stream,
/// contiguous, starting right after `after` (or at `oldest` when `after` is behind it),
/// none past `head`.
fn assert_page_consistent(stream: &StreamName, after: Position, limit: usize, page: &ReadPage) {
    assert!(
        page.oldest >= 1 && page.oldest <= page.head + 1,
        "{stream}: oldest {} and head {} are inconsistent",
        page.oldest,
        page.head
    );
    assert!(
        page.events.len() <= limit,
        "{stream}: {} events returned for a limit of {limit}",
        page.events.len()
    );
    if page.epoch.is_none() {
        assert_eq!(
            (page.head, page.events.len()),
            (0, 0),
            "{stream}: a stream without an epoch has no events"
        );
    }
    let first = (after + 1).max(page.oldest);
    for (i, event) in page.events.iter().enumerate() {
        assert_eq!(&event.stream, stream, "an event of another stream was read");
        assert_eq!(
            event.position,
            first + i as Position,
            "{stream}: read after {after} is not contiguous from {first}"
        );
        assert!(
            event.position <= page.head,
            "{stream}: event {} is past the head {}",
            event.position,
            page.head
        );
    }
}

/// Reads every retained event after `after`, page by page.
async fn read_all<B: EventBuffer + ?Sized>(
    store: &B,
    stream: &StreamName,
    after: Position,
) -> Vec<crate::Event> {
    let mut out = Vec::new();
    let mut position = after;
    loop {
        let page = read(store, stream, position, 64).await;
        let Some(last) = page.events.last() else {
            return out;
        };
        position = last.position;
        out.extend(page.events);
    }
}

/// A live feed followed for one stream: it checks that notifications arrive in position
/// order with neither gap nor repeat, and counts what it has seen.
///
/// A [`FeedItem::Resync`] is honoured as the contract says, and no further: it announces
/// nothing, so only what a read of the store right after it returns counts as seen.
/// Notifications of events that read returned may then still arrive, and are skipped; any
/// other repeat fails. A feed that resyncs more than [`MAX_RESYNCS`] times in one test
/// fails too: a resync is a repair after lost notifications, not a way of delivering them.
struct Follower {
    feed: LiveFeed,
    stream: StreamName,
    /// The highest position accounted for.
    seen: Position,
    /// Positions up to this one were read after a resync: their notifications may repeat.
    repeats_until: Position,
    resyncs: usize,
}

/// How many [`FeedItem::Resync`]s one feed may yield in one test. Real feeds yield one when
/// they start listening (PostgreSQL) or after a reconnection or lag, none of which the suite
/// provokes more than once.
const MAX_RESYNCS: usize = 3;

impl Follower {
    fn new(feed: LiveFeed, stream: &StreamName) -> Self {
        Follower {
            feed,
            stream: stream.clone(),
            seen: 0,
            repeats_until: 0,
            resyncs: 0,
        }
    }

    /// Reads the feed until it has accounted for position `until` of epoch `epoch`.
    async fn until<B: EventBuffer + ?Sized>(&mut self, store: &B, epoch: Epoch, until: Position) {
        let stream = &self.stream;
        while self.seen < until {
            let seen = self.seen;
            let item = tokio::time::timeout(DEADLINE, self.feed.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{stream}: the live feed accounted for {seen} of {until} appends within \
                         {DEADLINE:?}: not every append reaches every live feed"
                    )
                })
                .expect("the live feed does not end while the store is alive");
            match item {
                FeedItem::Appended(n) if &n.stream == stream => {
                    assert_eq!(n.epoch, epoch, "{stream}: notification of another epoch");
                    if n.position <= seen {
                        assert!(
                            n.position <= self.repeats_until,
                            "{stream}: the live feed announced {} after {seen}: out of order or \
                             twice",
                            n.position
                        );
                        continue;
                    }
                    assert_eq!(
                        n.position,
                        seen + 1,
                        "{stream}: the live feed skipped a position"
                    );
                    if let Some(event) = n.event {
                        let page = read(store, stream, n.position - 1, 1).await;
                        assert_eq!(
                            page.events.first(),
                            Some(&event),
                            "{stream}: the event on the live feed differs from the stored one"
                        );
                    }
                    self.seen = n.position;
                }
                FeedItem::Appended(_) => {}
                FeedItem::Resync => {
                    self.resyncs += 1;
                    assert!(
                        self.resyncs <= MAX_RESYNCS,
                        "{stream}: the live feed resynced {} times: a resync repairs lost \
                         notifications, it does not replace them",
                        self.resyncs
                    );
                    // A resync announces nothing: what a read returns now is all it accounts for.
                    if let Some(last) = read_all(store, stream, seen).await.last() {
                        self.seen = last.position;
                        self.repeats_until = last.position;
                    }
                }
                // A lost connection; the resync after it accounts for what was missed.
                FeedItem::Disconnected => {}
            }
        }
    }
}

fn assert_consecutive(appended: &[Appended], first: Position, epoch: Epoch) {
    for (i, a) in appended.iter().enumerate() {
        assert_eq!(
            (a.epoch, a.position, a.duplicate),
            (epoch, first + i as Position, false),
            "append {i} did not get the next position in the same epoch"
        );
    }
}

/// Positions start at 1 and increase by exactly one per append, in one epoch; `read` returns
/// the events as appended, with `oldest` 1 and `head` the last position.
pub async fn buffer_positions_start_at_one_and_are_gap_free<B: EventBuffer>(store: B) {
    let stream = unique_stream("gap-free");
    let mut appended = Vec::new();
    for i in 0..5 {
        let a = store
            .append(&stream, NewEvent::new(format!("event {i}")))
            .await
            .expect("append succeeds");
        appended.push(a);
    }
    let epoch = appended[0].epoch;
    assert_consecutive(&appended, 1, epoch);

    let page = read(&store, &stream, 0, 100).await;
    assert_eq!(
        page.epoch,
        Some(epoch),
        "read reports the epoch of the appends"
    );
    assert_eq!((page.oldest, page.head), (1, 5));
    let data: Vec<&str> = page.events.iter().map(|e| &*e.data).collect();
    assert_eq!(
        data,
        ["event 0", "event 1", "event 2", "event 3", "event 4"]
    );
}

/// `append_many` appends in order, at consecutive positions following the earlier appends,
/// and answers one [`Appended`] per event; an empty batch appends nothing.
pub async fn buffer_append_many_appends_in_order<B: EventBuffer>(store: B) {
    let stream = unique_stream("many");
    let first = store
        .append(&stream, NewEvent::new("first"))
        .await
        .expect("append succeeds");
    assert_eq!(first.position, 1);
    let batch = (0..4)
        .map(|i| NewEvent::new(format!("batch {i}")))
        .collect();
    let appended = store
        .append_many(&stream, batch)
        .await
        .expect("append_many succeeds");
    assert_eq!(appended.len(), 4, "one Appended per event");
    assert_consecutive(&appended, 2, first.epoch);

    let none = store
        .append_many(&stream, Vec::new())
        .await
        .expect("an empty append_many succeeds");
    assert!(none.is_empty());

    let page = read(&store, &stream, 0, 100).await;
    assert_eq!(page.head, 5, "an empty batch appends nothing");
    let data: Vec<&str> = page.events.iter().map(|e| &*e.data).collect();
    assert_eq!(data, ["first", "batch 0", "batch 1", "batch 2", "batch 3"]);
}

/// `read` after a position returns exactly the later events, oldest first, at most `limit`
/// of them, and always reports the epoch, oldest and head (also with a limit of 0 and when
/// nothing is newer).
pub async fn buffer_read_returns_events_after_position<B: EventBuffer>(store: B) {
    let stream = unique_stream("read");
    let events = (1..=10).map(|i| NewEvent::new(i.to_string())).collect();
    let appended = store
        .append_many(&stream, events)
        .await
        .expect("append_many succeeds");
    let epoch = appended[0].epoch;

    let positions = |page: &ReadPage| page.events.iter().map(|e| e.position).collect::<Vec<_>>();
    for (after, limit, expected) in [
        (0, 3, vec![1, 2, 3]),
        (3, 4, vec![4, 5, 6, 7]),
        (8, 100, vec![9, 10]),
        (9, 1, vec![10]),
        (10, 10, vec![]),
        (4, 0, vec![]),
    ] {
        let page = read(&store, &stream, after, limit).await;
        assert_eq!(
            positions(&page),
            expected,
            "read after {after} with limit {limit}"
        );
        assert_eq!(
            (page.epoch, page.oldest, page.head),
            (Some(epoch), 1, 10),
            "read after {after} with limit {limit} reports epoch, oldest and head"
        );
        for event in &page.events {
            assert_eq!(*event.data, event.position.to_string());
        }
    }
}

/// A stream nothing was appended to reads as empty: no events, head 0 and oldest 1 (whether
/// or not the store reports an epoch for it). `ping` answers.
pub async fn buffer_missing_stream_reads_empty<B: EventBuffer>(store: B) {
    let stream = unique_stream("missing");
    for (after, limit) in [(0, 0), (0, 10), (5, 10)] {
        let page = store
            .read(&stream, after, limit)
            .await
            .expect("reading a missing stream succeeds");
        assert!(page.events.is_empty(), "a missing stream has no events");
        assert_eq!(
            (page.head, page.oldest),
            (0, 1),
            "a missing stream has head 0 and oldest head + 1"
        );
    }
    store.ping().await.expect("ping succeeds");
}

/// Retention by count: with [`COUNT_RETENTION`] (three events), once trimming has happened
/// only the newest three are retained, `oldest` says where they start, `head` is unchanged,
/// and a read behind retention returns the retained events so the caller sees the gap.
///
/// The store must be built with [`COUNT_RETENTION`].
pub async fn buffer_retention_by_count<B: EventBuffer>(store: B) {
    let max_len = COUNT_RETENTION.max_len() as Position;
    let stream = unique_stream("count");
    let mut epoch = None;
    for i in 1..=10 {
        let a = store
            .append(&stream, NewEvent::new(i.to_string()))
            .await
            .expect("append succeeds");
        assert_eq!(a.position, i, "positions continue past trimmed events");
        epoch = Some(a.epoch);
    }
    let page = eventually("the stream is trimmed to max_len", async || {
        let page = read(&store, &stream, 0, 100).await;
        (page.events.len() as Position <= max_len).then_some(page)
    })
    .await;
    assert_eq!((page.epoch, page.head), (epoch, 10));
    assert_eq!(
        page.oldest,
        10 - max_len + 1,
        "exactly max_len events are retained"
    );
    let data: Vec<&str> = page.events.iter().map(|e| &*e.data).collect();
    assert_eq!(data, ["8", "9", "10"], "the newest events are retained");

    let behind = read(&store, &stream, 2, 100).await;
    assert_eq!(behind.oldest, 8, "a read behind retention reports the gap");
    assert_eq!(behind.events.len(), 3);
    let tail = read(&store, &stream, 8, 100).await;
    assert_eq!(
        tail.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [9, 10]
    );
}

/// Retention by bytes: with [`BYTES_RETENTION`] (1000 bytes of data), ten events of 300
/// bytes leave the newest three (900 bytes); an event larger than the limit is kept alone,
/// whatever its size, and goes as soon as a newer one is appended. `head` is unchanged
/// throughout, and `oldest` says where the retained events start.
///
/// The store must be built with [`BYTES_RETENTION`].
pub async fn buffer_retention_by_bytes<B: EventBuffer>(store: B) {
    let stream = unique_stream("bytes");
    let data = |i: u64, len: usize| format!("{i:03}{}", "x".repeat(len - 3));
    for i in 1..=10 {
        let a = store
            .append(&stream, NewEvent::new(data(i, 300)))
            .await
            .expect("append succeeds");
        assert_eq!(a.position, i, "positions continue past trimmed events");
    }
    let page = eventually("the stream is trimmed to max_bytes", async || {
        let page = read(&store, &stream, 0, 100).await;
        (page.events.len() <= 3).then_some(page)
    })
    .await;
    assert_eq!(page.head, 10);
    assert_eq!(
        (page.oldest, page.events.len()),
        (8, 3),
        "the newest events within max_bytes are retained"
    );
    let positions: Vec<Position> = page.events.iter().map(|e| e.position).collect();
    assert_eq!(positions, [8, 9, 10]);
    assert!(
        page.events
            .iter()
            .all(|e| e.data[..3] == format!("{:03}", e.position)),
        "the retained events are the newest"
    );

    let big = store
        .append(&stream, NewEvent::new(data(11, 5000)))
        .await
        .expect("an event larger than max_bytes is appended");
    assert_eq!(big.position, 11);
    let page = eventually("only the large event is retained", async || {
        let page = read(&store, &stream, 0, 100).await;
        (page.events.len() <= 1).then_some(page)
    })
    .await;
    assert_eq!(
        (page.oldest, page.head, page.events.len()),
        (11, 11, 1),
        "the newest event is kept whatever its size"
    );
    assert_eq!(page.events[0].data.len(), 5000, "and kept whole");

    store
        .append(&stream, NewEvent::new(data(12, 100)))
        .await
        .expect("append succeeds");
    let page = eventually("the large event goes once a newer one comes", async || {
        let page = read(&store, &stream, 0, 100).await;
        (page.oldest == 12).then_some(page)
    })
    .await;
    assert_eq!((page.head, page.events.len()), (12, 1));
    assert_eq!(&*page.events[0].data, data(12, 100));
}

/// Retention by age: with [`AGE_RETENTION`] (300 ms), events older than that disappear
/// (within [`DEADLINE`]), the page stays consistent (`oldest == head + 1` while nothing is
/// retained), and an event appended afterwards is retained and readable: in the same epoch at
/// the next position, or, if the store dropped the emptied log, in a new epoch from 1.
///
/// The store must be built with [`AGE_RETENTION`].
pub async fn buffer_retention_by_age<B: EventBuffer>(store: B) {
    let stream = unique_stream("age");
    let events = (1..=3).map(|i| NewEvent::new(i.to_string())).collect();
    let start = Instant::now();
    let appended = store
        .append_many(&stream, events)
        .await
        .expect("append_many succeeds");
    let epoch = appended[0].epoch;
    let young = read(&store, &stream, 0, 100).await;
    // Only meaningful while the events are surely younger than max_age: a stalled machine
    // may take longer than that between the append and the read.
    if start.elapsed() < AGE_RETENTION.max_age() / 2 {
        assert_eq!(
            young.events.len(),
            3,
            "events younger than max_age are retained"
        );
    }

    let page = eventually("events older than max_age are dropped", async || {
        let page = read(&store, &stream, 0, 100).await;
        page.events.is_empty().then_some(page)
    })
    .await;
    assert_eq!(
        page.oldest,
        page.head + 1,
        "nothing retained: oldest is head + 1"
    );
    if page.epoch == Some(epoch) {
        assert_eq!(page.head, 3, "the head survives trimming within an epoch");
    } else {
        assert_eq!(page.head, 0, "a dropped log starts again from 0");
    }

    let fresh = store
        .append(&stream, NewEvent::new("fresh"))
        .await
        .expect("append succeeds");
    let expected = if fresh.epoch == epoch { 4 } else { 1 };
    assert_eq!(
        fresh.position, expected,
        "after expiry, positions continue in the epoch or restart in a new one"
    );
    let page = read(&store, &stream, 0, 100).await;
    assert_eq!(page.epoch, Some(fresh.epoch));
    assert_eq!(
        page.events
            .iter()
            .map(|e| (&*e.data, e.position))
            .collect::<Vec<_>>(),
        [("fresh", expected)],
        "a fresh event is retained"
    );
}

/// A publisher id makes appends idempotent: appending an id already retained appends
/// nothing and answers the first event's position with `duplicate` set, also within one
/// `append_many` batch. Events without a publisher id are never deduplicated.
pub async fn buffer_idempotent_publisher_id<B: EventBuffer>(store: B) {
    let stream = unique_stream("idempotent");
    let with_id = |data: &str, id: &str| {
        NewEvent::new(data)
            .with_id(id)
            .expect("a valid publisher id")
    };
    let first = store
        .append(&stream, with_id("first", "order-1"))
        .await
        .expect("append succeeds");
    let second = store
        .append(&stream, with_id("second", "order-2"))
        .await
        .expect("append succeeds");
    assert_eq!((first.position, second.position), (1, 2));
    assert!(!first.duplicate && !second.duplicate);

    let again = store
        .append(&stream, with_id("retry of first", "order-1"))
        .await
        .expect("a duplicate append succeeds");
    assert_eq!(
        again,
        Appended {
            epoch: first.epoch,
            position: 1,
            duplicate: true
        },
        "a retained publisher id answers the first position"
    );

    let batch = store
        .append_many(
            &stream,
            vec![
                with_id("third", "order-3"),
                with_id("third again", "order-3"),
                with_id("second again", "order-2"),
                NewEvent::new("no id"),
                NewEvent::new("no id"),
            ],
        )
        .await
        .expect("append_many succeeds");
    let summary: Vec<(Position, bool)> = batch.iter().map(|a| (a.position, a.duplicate)).collect();
    assert_eq!(
        summary,
        [(3, false), (3, true), (2, true), (4, false), (5, false)],
        "append_many deduplicates against the stream and within the batch"
    );

    let page = read(&store, &stream, 0, 100).await;
    assert_eq!(page.head, 5, "duplicates append nothing");
    let data: Vec<(&str, Option<&str>)> = page
        .events
        .iter()
        .map(|e| (&*e.data, e.id.as_deref()))
        .collect();
    assert_eq!(
        data,
        [
            ("first", Some("order-1")),
            ("second", Some("order-2")),
            ("third", Some("order-3")),
            ("no id", None),
            ("no id", None),
        ],
        "the first event with an id is kept, unchanged"
    );
}

/// Every live feed announces every append made after it was created, once, in position
/// order, with the store's epoch, and with the stored event when it carries one.
///
/// The feeds are read while the appends go on: first in lock step (each append must reach
/// both feeds before the next is made, so a feed that falls silent cannot catch up by
/// reading the finished stream after a resync), then concurrently with a task appending
/// single events and batches.
pub async fn buffer_live_feed_delivers_every_append<B: EventBuffer>(store: B) {
    const LOCK_STEP: Position = 12;
    const TOTAL: Position = 40;
    let store = Arc::new(store);
    let stream = unique_stream("feed");
    let mut feeds = [
        Follower::new(store.live_feed(), &stream),
        Follower::new(store.live_feed(), &stream),
    ];
    let mut head = 0;
    let mut epoch = None;
    while head < LOCK_STEP {
        let appended = if head % 4 == 3 {
            let batch = vec![NewEvent::new(format!("{head}")), NewEvent::new("and one")];
            store
                .append_many(&stream, batch)
                .await
                .expect("append_many succeeds")
        } else {
            vec![
                store
                    .append(&stream, NewEvent::new(head.to_string()))
                    .await
                    .expect("append succeeds"),
            ]
        };
        let epoch = *epoch.get_or_insert(appended[0].epoch);
        assert_consecutive(&appended, head + 1, epoch);
        head += appended.len() as Position;
        for feed in &mut feeds {
            feed.until(&*store, epoch, head).await;
        }
    }
    let epoch = epoch.expect("appended");

    let appender = tokio::spawn({
        let (store, stream) = (store.clone(), stream.clone());
        async move {
            while head < TOTAL {
                let n = if head % 5 == 0 {
                    3.min(TOTAL - head)
                } else {
                    1
                };
                let batch = (0..n)
                    .map(|i| NewEvent::new(format!("{head}+{i}")))
                    .collect();
                let appended = store
                    .append_many(&stream, batch)
                    .await
                    .expect("append_many succeeds");
                assert_consecutive(&appended, head + 1, epoch);
                head += n;
                tokio::task::yield_now().await;
            }
        }
    });
    let [first, second] = &mut feeds;
    tokio::join!(
        joined(appender),
        first.until(&*store, epoch, TOTAL),
        second.until(&*store, epoch, TOTAL),
    );
}

/// Appends from several tasks at once get distinct, gap-free positions; what `read` returns
/// matches what each append answered; and the live feed announces them in position order.
pub async fn buffer_concurrent_appends_are_gap_free<B: EventBuffer>(store: B) {
    const TASKS: usize = 4;
    const PER_TASK: usize = 50;
    let store = Arc::new(store);
    let stream = unique_stream("concurrent");
    let mut feed = Follower::new(store.live_feed(), &stream);

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        let stream = stream.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = 0;
            while i < PER_TASK {
                let data = |i: usize| format!("{t}/{i}");
                if i % 5 == 0 {
                    // Mix batches in: they must not interleave badly with single appends.
                    let batch = vec![NewEvent::new(data(i)), NewEvent::new(data(i + 1))];
                    let appended = store
                        .append_many(&stream, batch)
                        .await
                        .expect("append_many succeeds");
                    out.extend([data(i), data(i + 1)].into_iter().zip(appended));
                    i += 2;
                } else {
                    let appended = store
                        .append(&stream, NewEvent::new(data(i)))
                        .await
                        .expect("append succeeds");
                    out.push((data(i), appended));
                    i += 1;
                }
            }
            out
        }));
    }
    let mut appended = Vec::new();
    for task in tasks {
        appended.extend(joined(task).await);
    }
    let total = (TASKS * PER_TASK) as Position;
    let epoch = appended[0].1.epoch;
    let mut positions: Vec<Position> = appended
        .iter()
        .map(|(_, a)| {
            assert_eq!(a.epoch, epoch, "one epoch for all appends");
            assert!(!a.duplicate);
            a.position
        })
        .collect();
    positions.sort_unstable();
    assert_eq!(
        positions,
        (1..=total).collect::<Vec<_>>(),
        "concurrent appends get distinct, gap-free positions"
    );

    let events = read_all(&*store, &stream, 0).await;
    assert_eq!(events.len() as Position, total);
    for (data, a) in &appended {
        let event = &events[(a.position - 1) as usize];
        assert_eq!(
            &*event.data, data,
            "position {} holds another event",
            a.position
        );
    }
    feed.until(&*store, epoch, total).await;
}

fn with_id(data: &str, id: &str) -> NewEvent {
    NewEvent::new(data)
        .with_id(id)
        .expect("a valid publisher id")
}

/// An append with a retained publisher id is not announced on the live feed: neither a
/// repeated single append nor duplicates inside or against an `append_many` batch put
/// anything on it; only the events actually appended are announced, once each.
pub async fn buffer_duplicates_stay_off_the_live_feed<B: EventBuffer>(store: B) {
    let stream = unique_stream("feed-dup");
    let mut feed = Follower::new(store.live_feed(), &stream);
    // A first event makes sure the feed is listening (a feed may start with a resync) before
    // the events whose duplicates must stay off it.
    let warm_up = store
        .append(&stream, NewEvent::new("warm-up"))
        .await
        .expect("append succeeds");
    let epoch = warm_up.epoch;
    feed.until(&store, epoch, 1).await;

    let first = store
        .append(&stream, with_id("first", "dup-a"))
        .await
        .expect("append succeeds");
    assert_eq!((first.position, first.duplicate), (2, false));
    feed.until(&store, epoch, 2).await;
    let again = store
        .append(&stream, with_id("first again", "dup-a"))
        .await
        .expect("a duplicate append succeeds");
    assert_eq!((again.position, again.duplicate), (2, true));
    let batch = store
        .append_many(
            &stream,
            vec![
                with_id("second", "dup-b"),
                with_id("second again", "dup-b"),
                with_id("first once more", "dup-a"),
                NewEvent::new("no id"),
            ],
        )
        .await
        .expect("append_many succeeds");
    let summary: Vec<(Position, bool)> = batch.iter().map(|a| (a.position, a.duplicate)).collect();
    assert_eq!(summary, [(3, false), (3, true), (2, true), (4, false)]);
    let last = store
        .append(&stream, with_id("second, third time", "dup-b"))
        .await
        .expect("a duplicate append succeeds");
    assert_eq!((last.position, last.duplicate), (3, true));
    // A last event after all the duplicates: once the feed reaches it, every notification a
    // duplicate could have caused has been read (the feed is in position order).
    let marker = store
        .append(&stream, NewEvent::new("marker"))
        .await
        .expect("append succeeds");
    assert_eq!(marker.position, 5);
    feed.until(&store, epoch, 5).await;
}

/// A publisher id frees up when its event leaves retention by bytes too, swept yet or not:
/// with [`BYTES_RETENTION`] (1000 bytes), an event of 600 bytes with an id is pushed out by
/// another of 600 bytes; the same id then appends a new event. A store that still matched
/// the trimmed event would answer `duplicate` and drop the new one: a silent loss.
///
/// The store must be built with [`BYTES_RETENTION`].
pub async fn buffer_publisher_id_reusable_after_byte_trim<B: EventBuffer>(store: B) {
    let stream = unique_stream("reuse-bytes");
    let first = store
        .append(&stream, with_id(&"a".repeat(600), "reused"))
        .await
        .expect("append succeeds");
    assert_eq!(first.position, 1);
    store
        .append(&stream, NewEvent::new("b".repeat(600)))
        .await
        .expect("append succeeds");
    eventually("the event with the publisher id is trimmed", async || {
        let page = read(&store, &stream, 0, 100).await;
        (page.oldest > 1).then_some(())
    })
    .await;

    let reused = store
        .append(&stream, with_id("second", "reused"))
        .await
        .expect("append succeeds");
    assert_eq!(
        reused,
        Appended {
            epoch: first.epoch,
            position: 3,
            duplicate: false
        },
        "the id of an event trimmed by bytes appends a new event"
    );
    let page = read(&store, &stream, 0, 100).await;
    assert_eq!(
        page.events.last().map(|e| &*e.data),
        Some("second"),
        "the new event is stored"
    );
}

/// A publisher id is an idempotency key only while its event is retained: once that event
/// has been trimmed (by count here), the same id appends a new event, which the id then
/// names (a further append with it is a duplicate of the new one).
///
/// The store must be built with [`COUNT_RETENTION`].
pub async fn buffer_publisher_id_reusable_after_trim<B: EventBuffer>(store: B) {
    let max_len = COUNT_RETENTION.max_len() as Position;
    let stream = unique_stream("reuse");
    let first = store
        .append(&stream, with_id("first", "reused"))
        .await
        .expect("append succeeds");
    assert_eq!(first.position, 1);
    let filler = (0..max_len).map(|i| NewEvent::new(i.to_string())).collect();
    store
        .append_many(&stream, filler)
        .await
        .expect("append_many succeeds");
    eventually("the event with the publisher id is trimmed", async || {
        let page = read(&store, &stream, 0, 100).await;
        (page.oldest > 1).then_some(())
    })
    .await;

    let reused = store
        .append(&stream, with_id("second", "reused"))
        .await
        .expect("append succeeds");
    assert_eq!(
        reused,
        Appended {
            epoch: first.epoch,
            position: max_len + 2,
            duplicate: false
        },
        "the id of a trimmed event appends a new event"
    );
    let again = store
        .append(&stream, with_id("second again", "reused"))
        .await
        .expect("a duplicate append succeeds");
    assert_eq!(
        (again.position, again.duplicate),
        (max_len + 2, true),
        "the reused id now names the new event"
    );
    let page = read(&store, &stream, 0, 100).await;
    let last = page.events.last().expect("the new event is retained");
    assert_eq!(
        (last.position, &*last.data, last.id.as_deref()),
        (max_len + 2, "second", Some("reused"))
    );
}

/// Appends with one publisher id racing each other store exactly one event: one append
/// answers `duplicate: false`, the others answer its position with `duplicate` set.
pub async fn buffer_concurrent_appends_one_publisher_id<B: EventBuffer>(store: B) {
    const ROUNDS: usize = 5;
    const RACERS: usize = 4;
    let store = Arc::new(store);
    let stream = unique_stream("race");
    for round in 0..ROUNDS {
        let id = format!("racing-{round}");
        let start = Arc::new(tokio::sync::Barrier::new(RACERS));
        let racers: Vec<_> = (0..RACERS)
            .map(|racer| {
                let (store, stream, id, start) =
                    (store.clone(), stream.clone(), id.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    let event = with_id(&format!("{round}/{racer}"), &id);
                    if racer % 2 == 0 {
                        store.append(&stream, event).await
                    } else {
                        store
                            .append_many(&stream, vec![event])
                            .await
                            .map(|mut a| a.remove(0))
                    }
                })
            })
            .collect();
        let mut answers = Vec::new();
        for racer in racers {
            answers.push(joined(racer).await.expect("append succeeds"));
        }
        let stored: Vec<&Appended> = answers.iter().filter(|a| !a.duplicate).collect();
        assert_eq!(
            stored.len(),
            1,
            "{RACERS} concurrent appends with one publisher id stored {} events",
            stored.len()
        );
        let position = stored[0].position;
        assert_eq!(position, round as Position + 1);
        assert!(
            answers.iter().all(|a| a.position == position),
            "every duplicate answers the stored event's position: {answers:?}"
        );
    }
    let events = read_all(&*store, &stream, 0).await;
    assert_eq!(events.len(), ROUNDS, "one event per publisher id is stored");
}

/// When a store loses its data (`lose` makes it: a flush, a truncation, a restart without
/// persistence), the streams it held change epoch: a read no longer reports the old epoch
/// nor returns the lost events, and the next append starts a new epoch at position 1,
/// announced on the live feed with that epoch.
///
/// `lose` takes the store and returns it after the loss: the same store, or (for a store
/// whose data dies with it) a new one on the same backend.
pub async fn buffer_epoch_changes_when_data_is_lost<B, F, Fut>(store: B, lose: F)
where
    B: EventBuffer,
    F: FnOnce(B) -> Fut,
    Fut: Future<Output = B>,
{
    let stream = unique_stream("lost");
    let events = (1..=3).map(|i| NewEvent::new(i.to_string())).collect();
    let before = store
        .append_many(&stream, events)
        .await
        .expect("append_many succeeds")[0]
        .epoch;

    let store = lose(store).await;
    let page = read(&store, &stream, 0, 100).await;
    assert_ne!(
        page.epoch,
        Some(before),
        "after the data was lost, the stream still reports its old epoch"
    );
    assert!(page.events.is_empty(), "lost events are still read");

    let mut feed = Follower::new(store.live_feed(), &stream);
    let after = store
        .append(&stream, NewEvent::new("after the loss"))
        .await
        .expect("append succeeds");
    assert_ne!(
        after.epoch, before,
        "an append after the data was lost continues the old epoch"
    );
    assert_eq!(
        (after.position, after.duplicate),
        (1, false),
        "a new epoch starts at 1"
    );
    let page = read(&store, &stream, 0, 100).await;
    assert_eq!(
        (page.epoch, page.oldest, page.head),
        (Some(after.epoch), 1, 1)
    );
    assert_eq!(
        page.events.iter().map(|e| &*e.data).collect::<Vec<_>>(),
        ["after the loss"]
    );
    feed.until(&store, after.epoch, 1).await;
}

/// Readers running while several tasks append (and retention trims) see the stream in commit
/// order and each page as one snapshot: a reader that has seen position `n` finds `n + 1`
/// next (or, once `n + 1` is trimmed, `oldest`), never a later position first; `head` never
/// goes back; and every page holds exactly the retained events between where it starts and
/// its `head` (the suite reads with a limit above the stream's length), so `oldest` and
/// `head` come from the same snapshot as the events.
///
/// The store must be built with [`READERS_RETENTION`].
pub async fn buffer_readers_during_concurrent_appends<B: EventBuffer>(store: B) {
    const APPENDERS: usize = 3;
    const PER_APPENDER: usize = 40;
    const TOTAL: Position = (APPENDERS * PER_APPENDER) as Position;
    const LIMIT: usize = 1000;
    let store = Arc::new(store);
    let stream = unique_stream("readers");
    let appending = Arc::new(AtomicUsize::new(APPENDERS));
    let reads = Arc::new(AtomicUsize::new(0));

    let appenders: Vec<_> = (0..APPENDERS)
        .map(|t| {
            let (store, stream) = (store.clone(), stream.clone());
            let (appending, reads) = (appending.clone(), reads.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while i < PER_APPENDER {
                    // Pace the appends by the reads, so that the two overlap however fast
                    // the store appends: the k-th append of each task waits for k reads.
                    let deadline = Instant::now() + DEADLINE;
                    while reads.load(SeqCst) < i {
                        assert!(Instant::now() < deadline, "the readers stopped reading");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    if i % 7 == 3 {
                        let batch = vec![NewEvent::new(format!("{t}/{i}")), NewEvent::new("+")];
                        store
                            .append_many(&stream, batch)
                            .await
                            .expect("append_many succeeds");
                        i += 2;
                    } else {
                        store
                            .append(&stream, NewEvent::new(format!("{t}/{i}")))
                            .await
                            .expect("append succeeds");
                        i += 1;
                    }
                }
                appending.fetch_sub(1, SeqCst);
            })
        })
        .collect();

    // One reader follows the stream with a cursor, as the hub does; the other reads it whole.
    let readers: Vec<_> = [true, false]
        .into_iter()
        .map(|follows| {
            let (store, stream) = (store.clone(), stream.clone());
            let (appending, reads) = (appending.clone(), reads.clone());
            tokio::spawn(async move {
                let (mut cursor, mut head) = (0, 0);
                let deadline = Instant::now() + DEADLINE;
                loop {
                    let done = appending.load(SeqCst) == 0;
                    let after = if follows { cursor } else { 0 };
                    let page = read(&*store, &stream, after, LIMIT).await;
                    reads.fetch_add(1, SeqCst);
                    assert!(
                        page.head >= head,
                        "{stream}: head went back from {head} to {}",
                        page.head
                    );
                    head = page.head;
                    let start = after.max(page.oldest - 1);
                    assert_eq!(
                        page.events.len() as Position,
                        head.saturating_sub(start),
                        "{stream}: a read after {after} returned {} events with oldest {} and \
                         head {head}: the events, oldest and head are not one snapshot",
                        page.events.len(),
                        page.oldest
                    );
                    if let Some(last) = page.events.last() {
                        cursor = cursor.max(last.position);
                    }
                    if done && cursor == TOTAL {
                        return;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{stream}: a reader saw {cursor} of {TOTAL} events within {DEADLINE:?}"
                    );
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();

    // The readers first: when one fails, the appenders wait for reads that never come.
    for task in readers.into_iter().chain(appenders) {
        joined(task).await;
    }
    let retained = READERS_RETENTION.max_len() as Position;
    let page = read(&*store, &stream, 0, LIMIT).await;
    assert_eq!(
        (page.oldest, page.head, page.events.len() as Position),
        (TOTAL - retained + 1, TOTAL, retained),
        "{stream}: the newest max_len events are retained"
    );
}

/// The output of a spawned task; its panic, if it panicked, is raised again as it was, so
/// that the test fails with the task's message.
async fn joined<T>(task: tokio::task::JoinHandle<T>) -> T {
    match task.await {
        Ok(value) => value,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => panic!("a task of the test was cancelled: {err}"),
    }
}

/// Data round-trips exactly, whatever it holds: CR, LF and CRLF, text that looks like SSE
/// fields, empty data, non-ASCII text and a large payload. Event names and publisher ids
/// round-trip too, and the event carries a plausible append time.
pub async fn buffer_data_round_trips_exactly<B: EventBuffer>(store: B) {
    let stream = unique_stream("data");
    let large: String = "0123456789abcdef\u{e9}\u{1f30d}\r\n"
        .chars()
        .cycle()
        .take(64 * 1024)
        .collect();
    let payloads = [
        "",
        "plain",
        "a\nb",
        "a\r\nb",
        "a\rb",
        "\n",
        "\r\n\r\n",
        "trailing\n",
        " leading space",
        "data: fake\n\nevent: x\nid: 9",
        ": comment",
        "\u{e9}t\u{e9} \u{1f30d} \u{4e2d}\u{6587} \u{202e}rtl",
        "{\"json\": [1, 2, \"\\n\"]}",
        "tab\tand\u{b}vertical",
        large.as_str(),
    ];
    let before = unix_ms(SystemTime::now());
    for (i, data) in payloads.iter().enumerate() {
        let event = NewEvent::new(*data)
            .with_event(format!("type:{i}"))
            .expect("a valid event name")
            .with_id(format!("id \u{e9} {i}"))
            .expect("a valid publisher id");
        store.append(&stream, event).await.expect("append succeeds");
    }
    store
        .append(&stream, NewEvent::new("unnamed"))
        .await
        .expect("append succeeds");
    let after = unix_ms(SystemTime::now());

    let events = read_all(&store, &stream, 0).await;
    assert_eq!(events.len(), payloads.len() + 1);
    for (i, data) in payloads.iter().enumerate() {
        let event = &events[i];
        assert!(*event.data == **data, "data {i} did not round-trip");
        assert_eq!(event.event.as_deref(), Some(format!("type:{i}").as_str()));
        assert_eq!(event.id.as_deref(), Some(format!("id \u{e9} {i}").as_str()));
    }
    let unnamed = &events[payloads.len()];
    assert_eq!(
        (unnamed.event.as_deref(), unnamed.id.as_deref()),
        (None, None)
    );
    for event in &events {
        // The store may stamp with its own clock: allow for some skew.
        assert!(
            event.time_ms + 60_000 >= before && event.time_ms <= after + 60_000,
            "event {} has an implausible time {}",
            event.position,
            event.time_ms
        );
    }
}

/// Streams are independent: each has its own positions from 1, reads return only its own
/// events, and every valid name works, including reserved `@` names and 128-byte names.
pub async fn buffer_streams_are_independent<B: EventBuffer>(store: B) {
    let a = unique_stream("indep-a");
    let b = unique_stream("@session:indep-b/x.y_z");
    let mut long = format!("{}-", unique_stream("long").as_str());
    long.extend(std::iter::repeat_n(
        'x',
        crate::StreamName::MAX_LEN - long.len(),
    ));
    let long = StreamName::new(long).expect("a valid 128-byte name");
    for (stream, data) in [
        (&a, "a1"),
        (&b, "b1"),
        (&a, "a2"),
        (&long, "l1"),
        (&b, "b2"),
        (&a, "a3"),
    ] {
        store
            .append(stream, NewEvent::new(data))
            .await
            .expect("append succeeds");
    }
    for (stream, expected) in [
        (&a, vec!["a1", "a2", "a3"]),
        (&b, vec!["b1", "b2"]),
        (&long, vec!["l1"]),
    ] {
        let page = read(&store, stream, 0, 100).await;
        assert_eq!(
            page.head,
            expected.len() as Position,
            "{stream} has its own head"
        );
        let data: Vec<&str> = page.events.iter().map(|e| &*e.data).collect();
        assert_eq!(data, expected, "{stream} holds only its own events");
    }
}

/// Timestamps may be rounded by a store (to milliseconds, or even to seconds).
fn assert_close(what: &str, got: SystemTime, expected: SystemTime) {
    let diff = got
        .duration_since(expected)
        .or_else(|_| expected.duration_since(got))
        .unwrap_or_default();
    assert!(
        diff <= Duration::from_secs(1),
        "{what}: got {got:?}, expected about {expected:?}"
    );
}

fn assert_same_record(got: &SessionRecord, expected: &SessionRecord) {
    assert_eq!(got.id, expected.id);
    assert_eq!(got.principal, expected.principal);
    assert_eq!(got.cursor, expected.cursor);
    assert_close("created_at", got.created_at, expected.created_at);
    assert_close("expires_at", got.expires_at, expected.expires_at);
}

async fn load<S: SessionStore + ?Sized>(store: &S, id: &SessionId) -> Option<SessionRecord> {
    store.load(id).await.expect("load succeeds")
}

/// The session `expected.id` loads (else the test fails with `what`) and is `expected`.
async fn assert_loads_as<S: SessionStore + ?Sized>(
    store: &S,
    expected: &SessionRecord,
    what: &str,
) {
    let loaded = load(store, &expected.id).await.expect(what);
    assert_same_record(&loaded, expected);
}

/// Neither `touch` nor `record_cursor` finds the session `id` (`what`, for messages): both
/// answer `false`.
async fn assert_not_revived<S: SessionStore + ?Sized>(
    store: &S,
    id: &SessionId,
    later: SystemTime,
    what: &str,
) {
    assert!(
        !store.touch(id, later).await.expect("touch succeeds"),
        "touch does not revive {what}"
    );
    assert!(
        !store
            .record_cursor(id, "AQ", later)
            .await
            .expect("record_cursor succeeds"),
        "record_cursor does not revive {what}"
    );
}

/// Three live sessions, the first with `first_principal`, and the id of one that does not
/// exist: what a batch operation is given.
async fn three_sessions_and_an_unknown<S: SessionStore + ?Sized>(
    store: &S,
    first_principal: Option<&str>,
) -> (Vec<SessionRecord>, SessionId) {
    let records: Vec<SessionRecord> = (0..3)
        .map(|i| {
            let principal = if i == 0 { first_principal } else { None };
            SessionRecord::new(principal.map(str::to_owned), Duration::from_secs(30))
        })
        .collect();
    for record in &records {
        store.create(record).await.expect("create succeeds");
    }
    (records, SessionId::random())
}

/// After a batch operation `op` given the first two of `records` and `unknown`: the third
/// session is as it was and the unknown one was not created.
async fn assert_batch_left_alone<S: SessionStore + ?Sized>(
    store: &S,
    records: &[SessionRecord],
    unknown: &SessionId,
    op: &str,
) {
    assert_loads_as(store, &records[2], "the third session loads").await;
    assert_eq!(load(store, unknown).await, None, "{op} creates nothing");
}

/// A created session loads back as it was stored (with and without a principal).
pub async fn session_create_load_roundtrip<S: SessionStore>(store: S) {
    for principal in [
        None,
        Some("alice@example.com".to_owned()),
        Some("\u{e9}\u{1f30d}".to_owned()),
    ] {
        let record = SessionRecord::new(principal, Duration::from_secs(60));
        store.create(&record).await.expect("create succeeds");
        assert_loads_as(&store, &record, "a created session loads").await;
    }
}

/// Unknown sessions: `load` answers `None`, `touch` and `record_cursor` answer `false` (and
/// create nothing), `delete` succeeds.
pub async fn session_unknown_is_absent<S: SessionStore>(store: S) {
    let id = SessionId::random();
    let later = SystemTime::now() + Duration::from_secs(60);
    assert_eq!(load(&store, &id).await, None);
    assert_not_revived(&store, &id, later, "an unknown session").await;
    assert_eq!(
        load(&store, &id).await,
        None,
        "touching an unknown session creates nothing"
    );
    store
        .delete(&id)
        .await
        .expect("deleting an unknown session succeeds");
}

/// `touch` moves the expiry of a live session and answers `true`, leaving the rest alone.
pub async fn session_touch_extends<S: SessionStore>(store: S) {
    let record = SessionRecord::new(Some("bob".into()), Duration::from_secs(30));
    store.create(&record).await.expect("create succeeds");
    let later = SystemTime::now() + Duration::from_secs(3600);
    assert!(
        store
            .touch(&record.id, later)
            .await
            .expect("touch succeeds")
    );
    let touched = SessionRecord {
        expires_at: later,
        ..record
    };
    assert_loads_as(&store, &touched, "a touched session loads").await;
}

/// `touch_many` moves the expiry of every live session it is given, answers how many were
/// live, and neither creates the unknown ones nor touches sessions it was not given.
pub async fn session_touch_many<S: SessionStore>(store: S) {
    let (records, unknown) = three_sessions_and_an_unknown(&store, Some("carol")).await;
    let later = SystemTime::now() + Duration::from_secs(3600);
    let ids = [records[0].id, unknown, records[1].id];
    assert_eq!(
        store
            .touch_many(&ids, later)
            .await
            .expect("touch_many succeeds"),
        2,
        "two of the three sessions were live"
    );
    for record in &records[..2] {
        let touched = SessionRecord {
            expires_at: later,
            ..record.clone()
        };
        assert_loads_as(&store, &touched, "a touched session loads").await;
    }
    assert_batch_left_alone(&store, &records, &unknown, "touch_many").await;
    assert_eq!(
        store
            .touch_many(&[], later)
            .await
            .expect("touch_many of nothing succeeds"),
        0
    );
}

/// `record_cursors` stores each live session's cursor (the last one given for a session listed
/// twice), moves its expiry, answers how many were live, and creates no unknown session.
pub async fn session_record_cursors<S: SessionStore>(store: S) {
    let (records, unknown) = three_sessions_and_an_unknown(&store, None).await;
    let later = SystemTime::now() + Duration::from_secs(3600);
    let cursors = [
        (records[0].id, "AQAAAAEAAAAAAAAAAQ".to_owned()),
        (unknown, "AQAAAAEAAAAAAAAAAw".to_owned()),
        (records[1].id, "AQAAAAEAAAAAAAAAAg".to_owned()),
        (records[0].id, "AQAAAAEAAAAAAAAABA".to_owned()),
    ];
    let alive = store
        .record_cursors(&cursors, later)
        .await
        .expect("record_cursors succeeds");
    assert!(
        (2..=3).contains(&alive),
        "two live sessions (one listed twice) answered {alive}"
    );
    for (record, cursor) in [
        (&records[0], "AQAAAAEAAAAAAAAABA"),
        (&records[1], "AQAAAAEAAAAAAAAAAg"),
    ] {
        let recorded = SessionRecord {
            expires_at: later,
            cursor: Some(cursor.to_owned()),
            ..record.clone()
        };
        assert_loads_as(&store, &recorded, "the session loads").await;
    }
    assert_batch_left_alone(&store, &records, &unknown, "record_cursors").await;
    assert_eq!(
        store
            .record_cursors(&[], later)
            .await
            .expect("record_cursors of nothing succeeds"),
        0
    );
}

/// `record_cursor` stores the cursor, moves the expiry and answers `true`; a later call
/// replaces the cursor.
pub async fn session_record_cursor<S: SessionStore>(store: S) {
    let record = SessionRecord::new(None, Duration::from_secs(30));
    store.create(&record).await.expect("create succeeds");
    let later = SystemTime::now() + Duration::from_secs(3600);
    assert!(
        store
            .record_cursor(&record.id, "AQAAAAACAAAAAAAAAAcq", later)
            .await
            .expect("record_cursor succeeds")
    );
    let recorded = SessionRecord {
        expires_at: later,
        cursor: Some("AQAAAAACAAAAAAAAAAcq".into()),
        ..record.clone()
    };
    assert_loads_as(&store, &recorded, "the session loads").await;

    let even_later = later + Duration::from_secs(60);
    assert!(
        store
            .record_cursor(&record.id, "AQ-_", even_later)
            .await
            .expect("record_cursor succeeds")
    );
    let loaded = load(&store, &record.id).await.expect("the session loads");
    assert_eq!(
        loaded.cursor.as_deref(),
        Some("AQ-_"),
        "the cursor is replaced"
    );
    assert_close("expires_at", loaded.expires_at, even_later);
}

/// A deleted session is gone: `load` answers `None`, `touch` and `record_cursor` `false`;
/// deleting it again succeeds. Other sessions are untouched.
pub async fn session_delete<S: SessionStore>(store: S) {
    let record = SessionRecord::new(None, Duration::from_secs(60));
    let other = SessionRecord::new(None, Duration::from_secs(60));
    store.create(&record).await.expect("create succeeds");
    store.create(&other).await.expect("create succeeds");
    store.delete(&record.id).await.expect("delete succeeds");
    assert_eq!(load(&store, &record.id).await, None);
    let later = SystemTime::now() + Duration::from_secs(60);
    assert_not_revived(&store, &record.id, later, "a deleted session").await;
    store
        .delete(&record.id)
        .await
        .expect("deleting twice succeeds");
    assert!(
        load(&store, &other.id).await.is_some(),
        "delete forgets one session only"
    );
}

/// A session past its expiry is absent at once, swept or not: `load` answers `None`, and
/// neither `touch` nor `record_cursor` brings it back. (The test waits one second past the
/// expiry, for stores that round timestamps.)
pub async fn session_expired_is_absent<S: SessionStore>(store: S) {
    let record = SessionRecord::new(None, Duration::from_millis(200));
    store.create(&record).await.expect("create succeeds");
    let past_expiry = record
        .expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        + Duration::from_secs(1);
    tokio::time::sleep(past_expiry).await;
    assert_eq!(
        load(&store, &record.id).await,
        None,
        "a session past its expiry loads as None, even before a sweeper removes it"
    );
    let later = SystemTime::now() + Duration::from_secs(3600);
    assert_not_revived(&store, &record.id, later, "an expired session").await;
    assert_eq!(load(&store, &record.id).await, None);
}

/// Runs the whole conformance suite, [`event_buffer_tests!`](crate::event_buffer_tests) and
/// [`session_store_tests!`](crate::session_store_tests), against a store implementing both
/// traits.
///
/// `$setup` is an async function or a closure returning a future, called with the
/// [`Retention`](crate::Retention) each test needs and returning a fresh store (it may share
/// a backend with other tests). `$lose_data` takes a store and returns it after making it
/// lose its data (see
/// [`buffer_epoch_changes_when_data_is_lost`](crate::testing::buffer_epoch_changes_when_data_is_lost)).
/// Expands to one `#[test]` per function of [`testing`](crate::testing); see the
/// [module docs](crate::testing) for an example.
#[macro_export]
macro_rules! conformance_tests {
    ($setup:expr, $lose_data:expr) => {
        $crate::event_buffer_tests!($setup, $lose_data);
        $crate::session_store_tests!($setup);
    };
}

/// The [`EventBuffer`](crate::EventBuffer) half of
/// [`conformance_tests!`](crate::conformance_tests), for a store implementing only that
/// trait. `$setup` is called with the [`Retention`](crate::Retention) each test needs;
/// `$lose_data` is as for [`conformance_tests!`](crate::conformance_tests).
#[macro_export]
macro_rules! event_buffer_tests {
    ($setup:expr, $lose_data:expr) => {
        $crate::__conformance_test!(
            $setup,
            buffer_positions_start_at_one_and_are_gap_free,
            DEFAULT_RETENTION
        );
        $crate::__conformance_test!(
            $setup,
            buffer_append_many_appends_in_order,
            DEFAULT_RETENTION
        );
        $crate::__conformance_test!(
            $setup,
            buffer_read_returns_events_after_position,
            DEFAULT_RETENTION
        );
        $crate::__conformance_test!($setup, buffer_missing_stream_reads_empty, DEFAULT_RETENTION);
        $crate::__conformance_test!($setup, buffer_retention_by_count, COUNT_RETENTION);
        $crate::__conformance_test!($setup, buffer_retention_by_age, AGE_RETENTION);
        $crate::__conformance_test!($setup, buffer_retention_by_bytes, BYTES_RETENTION);
        $crate::__conformance_test!(
            $setup,
            buffer_publisher_id_reusable_after_byte_trim,
            BYTES_RETENTION
        );
        $crate::__conformance_test!($setup, buffer_idempotent_publisher_id, DEFAULT_RETENTION);
        $crate::__conformance_test!(
            $setup,
            buffer_live_feed_delivers_every_append,
            DEFAULT_RETENTION
        );
        $crate::__conformance_test!(
            $setup,
            buffer_concurrent_appends_are_gap_free,
            DEFAULT_RETENTION
        );
        $crate::__conformance_test!($setup, buffer_data_round_trips_exactly, DEFAULT_RETENTION);
        $crate::__conformance_test!($setup, buffer_streams_are_independent, DEFAULT_RETENTION);
        $crate::__conformance_test!(
            $setup,
            buffer_duplicates_stay_off_the_live_feed,
            DEFAULT_RETENTION
        );
        $crate::__conformance_test!(
            $setup,
            buffer_publisher_id_reusable_after_trim,
            COUNT_RETENTION
        );
        $crate::__conformance_test!(
            $setup,
            buffer_concurrent_appends_one_publisher_id,
            DEFAULT_RETENTION
        );
        $crate::__conformance_test!(
            $setup,
            buffer_readers_during_concurrent_appends,
            READERS_RETENTION
        );
        #[test]
        fn buffer_epoch_changes_when_data_is_lost() {
            $crate::testing::run(async {
                let store = ($setup)($crate::testing::DEFAULT_RETENTION).await;
                $crate::testing::buffer_epoch_changes_when_data_is_lost(store, $lose_data).await;
            });
        }
    };
}

/// The [`SessionStore`](crate::SessionStore) half of
/// [`conformance_tests!`](crate::conformance_tests), for a store implementing only that
/// trait. `$setup` is called with [`Retention::default`](crate::Retention::default).
#[macro_export]
macro_rules! session_store_tests {
    ($setup:expr) => {
        $crate::__conformance_test!($setup, session_create_load_roundtrip, DEFAULT_RETENTION);
        $crate::__conformance_test!($setup, session_unknown_is_absent, DEFAULT_RETENTION);
        $crate::__conformance_test!($setup, session_touch_extends, DEFAULT_RETENTION);
        $crate::__conformance_test!($setup, session_touch_many, DEFAULT_RETENTION);
        $crate::__conformance_test!($setup, session_record_cursor, DEFAULT_RETENTION);
        $crate::__conformance_test!($setup, session_record_cursors, DEFAULT_RETENTION);
        $crate::__conformance_test!($setup, session_delete, DEFAULT_RETENTION);
        $crate::__conformance_test!($setup, session_expired_is_absent, DEFAULT_RETENTION);
    };
}

/// One conformance test: a `#[test]` running `testing::$name` on a store from `$setup`.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test {
    ($setup:expr, $name:ident, $retention:ident) => {
        #[test]
        fn $name() {
            $crate::testing::run(async {
                let store = ($setup)($crate::testing::$retention).await;
                $crate::testing::$name(store).await;
            });
        }
    };
}
