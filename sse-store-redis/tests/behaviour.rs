//! What the Redis store promises beyond the shared conformance suite: key layout and TTLs,
//! exact trimming, epochs that change when the meta is lost, notifications with and
//! without the event, and behaviour while Redis is down and after it comes back.
//!
//! Tests that stop Redis run their own `redis-server` on a free port, in a temp directory,
//! killed when the test ends (also on panic). The others use the Redis at `127.0.0.1:6379`
//! (or `REDIS_URL`) with a key prefix of their own. Nothing is skipped: without Redis the
//! tests fail with a message saying how to start it.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use resumable_sse_core::testing::next_feed_item;
use resumable_sse_core::{
    Appended, Error, EventBuffer, FeedItem, LiveFeed, NewEvent, Notification, StreamName,
};
use resumable_sse_store_redis::testing::{HOW_TO_START, PrivateRedis};
use resumable_sse_store_redis::{RedisConfig, RedisStore, RedisStoreError};

/// How long anything that should happen may take.
const DEADLINE: Duration = Duration::from_secs(15);

fn shared_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn unique_prefix(what: &str) -> String {
    format!(
        "behaviour:{what}:{}:",
        resumable_sse_core::SessionId::random()
    )
}

async fn shared_store(config: RedisConfig) -> RedisStore {
    let url = shared_url();
    RedisStore::connect(&url, config)
        .await
        .unwrap_or_else(|err| panic!("these tests need Redis at {url} ({err}); {HOW_TO_START} (or point REDIS_URL at another server)"))
}

/// A plain connection for looking at keys directly.
async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|err| {
            panic!("Redis at {url}: {err}; {HOW_TO_START} (or point REDIS_URL at another server)")
        })
}

async fn query<T: redis::FromRedisValue>(
    conn: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> T {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(conn).await.unwrap()
}

fn stream(name: &str) -> StreamName {
    resumable_sse_core::testing::unique_stream(name)
}

async fn next_notification(feed: &mut LiveFeed, stream: &StreamName) -> Notification {
    match next_feed_item(feed, stream).await {
        FeedItem::Appended(n) => n,
        other => panic!("expected a notification, got {other:?}"),
    }
}

/// Polls `probe` until it answers `true`, failing after [`DEADLINE`].
async fn eventually(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !probe().await {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Appends `data` once Redis answers again, failing after [`DEADLINE`].
async fn append_when_back(store: &RedisStore, stream: &StreamName, data: &str) -> Appended {
    let mut appended = None;
    eventually("appends work again", async || {
        appended = store.append(stream, NewEvent::new(data)).await.ok();
        appended.is_some()
    })
    .await;
    appended.unwrap()
}

/// Events whose data are these numbers.
fn numbered(numbers: impl IntoIterator<Item = u64>) -> Vec<NewEvent> {
    numbers
        .into_iter()
        .map(|i| NewEvent::new(i.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

/// The keys are where the layout says, the log holds exactly `max_len` entries with ids
/// `<position>-0`, the publisher ids follow the trimming, and a trimmed id is no longer a
/// duplicate.
#[tokio::test]
async fn keys_trimming_and_publisher_ids() {
    let prefix = unique_prefix("keys");
    let store = shared_store(
        RedisConfig::default()
            .with_retention(resumable_sse_core::Retention::new(
                10,
                Duration::from_secs(3600),
            ))
            .with_key_prefix(&prefix),
    )
    .await;
    let news = stream("news");
    let keys = store.key_layout().clone();
    assert_eq!(keys.log(&news), format!("{prefix}{{{news}}}:log"));
    let events: Vec<NewEvent> = (1..=100)
        .map(|i| {
            NewEvent::new(i.to_string())
                .with_id(format!("id-{i}"))
                .unwrap()
        })
        .collect();
    let appended = store.append_many(&news, events).await.unwrap();
    assert_eq!(appended.last().unwrap().position, 100);

    let mut conn = raw(&shared_url()).await;
    let xlen: u64 = query(&mut conn, &["XLEN", &keys.log(&news)]).await;
    assert_eq!(xlen, 10, "exactly max_len entries are kept");
    let ids: u64 = query(&mut conn, &["ZCARD", &keys.ids(&news)]).await;
    assert_eq!(ids, 10, "publisher ids are trimmed with their events");
    let first: Vec<redis::Value> = query(
        &mut conn,
        &["XRANGE", &keys.log(&news), "-", "+", "COUNT", "1"],
    )
    .await;
    let rendered = format!("{first:?}");
    assert!(
        rendered.contains("91-0"),
        "the oldest entry is position 91: {rendered}"
    );
    let head: String = query(&mut conn, &["HGET", &keys.meta(&news), "head"]).await;
    assert_eq!(head, "100");

    let retained = store
        .append(&news, NewEvent::new("again").with_id("id-95").unwrap())
        .await
        .unwrap();
    assert!(retained.duplicate && retained.position == 95);
    let trimmed = store
        .append(&news, NewEvent::new("again").with_id("id-5").unwrap())
        .await
        .unwrap();
    assert!(
        !trimmed.duplicate,
        "an id trimmed away no longer deduplicates"
    );
    assert_eq!(trimmed.position, 101);
}

/// Retention by bytes keeps `sizes` (one length per retained entry) and the meta's `bytes`
/// in step with the log, trims in the append itself, and measures a log that has no `sizes`
/// yet (written by an earlier version) on its next append.
#[tokio::test]
async fn bytes_trimming_keeps_sizes_in_step() {
    let prefix = unique_prefix("bytes");
    let store = shared_store(
        RedisConfig::default()
            .with_retention(
                resumable_sse_core::Retention::new(1000, Duration::from_secs(3600))
                    .with_max_bytes(10_000),
            )
            .with_key_prefix(&prefix),
    )
    .await;
    let news = stream("news");
    let keys = store.key_layout().clone();
    let events: Vec<NewEvent> = (1..=50).map(|_| NewEvent::new("x".repeat(1000))).collect();
    store.append_many(&news, events).await.unwrap();

    let mut conn = raw(&shared_url()).await;
    let check = async |conn: &mut redis::aio::MultiplexedConnection, entries: u64, bytes: &str| {
        let xlen: u64 = query(conn, &["XLEN", &keys.log(&news)]).await;
        let sizes: u64 = query(conn, &["LLEN", &keys.sizes(&news)]).await;
        let total: String = query(conn, &["HGET", &keys.meta(&news), "bytes"]).await;
        assert_eq!((xlen, sizes, total.as_str()), (entries, entries, bytes));
    };
    check(&mut conn, 10, "10000").await;

    // As an earlier version left it: no sizes, no byte count.
    let _: i64 = query(&mut conn, &["DEL", &keys.sizes(&news)]).await;
    let _: i64 = query(&mut conn, &["HDEL", &keys.meta(&news), "bytes"]).await;
    store
        .append(&news, NewEvent::new("y".repeat(4000)))
        .await
        .unwrap();
    check(&mut conn, 7, "10000").await;
    let page = store.read(&news, 0, 100).await.unwrap();
    assert_eq!((page.oldest, page.head), (45, 51));
}

/// Entries past `max_age` are never read, and the next append removes them from Redis.
#[tokio::test]
async fn age_trimming_removes_entries() {
    let prefix = unique_prefix("age");
    let store = shared_store(
        RedisConfig::default()
            .with_retention(resumable_sse_core::Retention::new(
                1000,
                Duration::from_millis(300),
            ))
            .with_key_prefix(&prefix),
    )
    .await;
    let max_age = Duration::from_millis(300);
    let news = stream("news");
    let events = numbered(0..50);
    // Taken before the append: the events' append time is later, so they cannot be hidden
    // before `max_age` from here (less a millisecond of Redis's clock granularity).
    let before = Instant::now();
    store.append_many(&news, events).await.unwrap();
    eventually("the old events are hidden", async || {
        store.read(&news, 0, 100).await.unwrap().events.is_empty()
    })
    .await;
    assert!(
        before.elapsed() >= max_age - Duration::from_millis(1),
        "hidden too early"
    );
    store.append(&news, NewEvent::new("fresh")).await.unwrap();
    let mut conn = raw(&shared_url()).await;
    let xlen: u64 = query(&mut conn, &["XLEN", &store.key_layout().log(&news)]).await;
    assert_eq!(xlen, 1, "the append removed the expired entries");
    let page = store.read(&news, 0, 100).await.unwrap();
    assert_eq!((page.oldest, page.head, page.events.len()), (51, 51, 1));

    // Half expired: the bisection finds the boundary. The halves are appended half a
    // `max_age` apart, so for half a `max_age` only the first has expired. A read must fall
    // in that window: one that starts after it (a stalled machine) proves nothing, and the
    // scenario runs again on a new stream rather than failing on the machine's timing.
    for attempt in 1..=5 {
        let half = stream("half");
        store.append_many(&half, numbered(0..40)).await.unwrap();
        // Shapes the events' ages; no check depends on how long it really takes.
        tokio::time::sleep(max_age / 2).await;
        let second = Instant::now();
        store.append_many(&half, numbered(40..80)).await.unwrap();
        let window_closes = second + max_age - Duration::from_millis(1);
        loop {
            let read_at = Instant::now();
            let page = store.read(&half, 0, 100).await.unwrap();
            let first = page.events.first().map(|e| e.position);
            if page.oldest == 41 {
                assert_eq!((first, page.events.len()), (Some(41), 40), "{page:?}");
                return;
            }
            if read_at >= window_closes {
                eprintln!("attempt {attempt}: the read came after the window; again");
                break;
            }
            assert_eq!(
                (page.oldest, first),
                (1, Some(1)),
                "before the first half expires, everything is there"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    panic!("5 attempts in a row could not read within a 150 ms window");
}

/// Idle keys expire: the log with `max_age`, the meta with the stream TTL; a stream whose
/// meta expired comes back in a new epoch from position 1.
#[tokio::test]
async fn idle_streams_expire_and_come_back_in_a_new_epoch() {
    let prefix = unique_prefix("ttl");
    let store = shared_store(
        RedisConfig::default()
            .with_retention(resumable_sse_core::Retention::new(
                1000,
                Duration::from_millis(200),
            ))
            .with_stream_ttl(Duration::from_millis(800))
            .with_key_prefix(&prefix),
    )
    .await;
    let news = stream("news");
    let first = store
        .append(&news, NewEvent::new("one").with_id("k").unwrap())
        .await
        .unwrap();
    let keys = store.key_layout().clone();
    let mut conn = raw(&shared_url()).await;
    let log_ttl: i64 = query(&mut conn, &["PTTL", &keys.log(&news)]).await;
    let ids_ttl: i64 = query(&mut conn, &["PTTL", &keys.ids(&news)]).await;
    let meta_ttl: i64 = query(&mut conn, &["PTTL", &keys.meta(&news)]).await;
    assert!((1..=200).contains(&log_ttl), "log TTL {log_ttl}");
    assert!((1..=200).contains(&ids_ttl), "ids TTL {ids_ttl}");
    assert!((201..=800).contains(&meta_ttl), "meta TTL {meta_ttl}");

    eventually("the log expires, the meta stays", async || {
        let log: i64 = query(&mut conn, &["EXISTS", &keys.log(&news)]).await;
        log == 0
    })
    .await;
    let page = store.read(&news, 0, 10).await.unwrap();
    assert_eq!(
        page.epoch,
        Some(first.epoch),
        "the epoch outlives the events"
    );
    assert_eq!((page.oldest, page.head), (2, 1));

    eventually("the meta expires", async || {
        store.read(&news, 0, 0).await.unwrap().epoch.is_none()
    })
    .await;
    let again = store.append(&news, NewEvent::new("two")).await.unwrap();
    assert_ne!(again.epoch, first.epoch, "a new epoch");
    assert_eq!(again.position, 1);
}

/// Durations too large for Redis (`Duration::MAX` retention and stream TTL, a session
/// expiring in a thousand years) are clamped, not turned into an immediate expiry.
#[tokio::test]
async fn huge_durations_are_clamped() {
    use resumable_sse_core::{SessionRecord, SessionStore};

    let store = shared_store(
        RedisConfig::default()
            .with_retention(resumable_sse_core::Retention::new(1000, Duration::MAX))
            .with_stream_ttl(Duration::MAX)
            .with_key_prefix(unique_prefix("huge")),
    )
    .await;
    let news = stream("news");
    store.append(&news, NewEvent::new("kept")).await.unwrap();
    assert_eq!(store.read(&news, 0, 10).await.unwrap().events.len(), 1);
    let mut conn = raw(&shared_url()).await;
    for key in [
        store.key_layout().log(&news),
        store.key_layout().meta(&news),
    ] {
        let ttl: i64 = query(&mut conn, &["PTTL", &key]).await;
        assert!(ttl > 1_000_000_000, "{key} expires in {ttl} ms");
    }
    let forever = SessionRecord::new(None, Duration::from_secs(1000 * 365 * 24 * 3600));
    store.create(&forever).await.unwrap();
    assert!(store.load(&forever.id).await.unwrap().is_some());
}

/// Losing the meta (a flush, an eviction) starts a new epoch even if the log survived: old
/// entries do not leak into it and positions restart at 1.
#[tokio::test]
async fn a_lost_meta_starts_a_new_epoch() {
    let store = shared_store(RedisConfig::default().with_key_prefix(unique_prefix("meta"))).await;
    let news = stream("news");
    let old = store
        .append_many(
            &news,
            (0..3)
                .map(|i| {
                    NewEvent::new(format!("old {i}"))
                        .with_id(format!("k{i}"))
                        .unwrap()
                })
                .collect(),
        )
        .await
        .unwrap();
    let mut conn = raw(&shared_url()).await;
    let _: i64 = query(&mut conn, &["DEL", &store.key_layout().meta(&news)]).await;
    assert_eq!(
        store.read(&news, 0, 10).await.unwrap(),
        resumable_sse_core::ReadPage::missing()
    );
    let new = store
        .append(&news, NewEvent::new("new").with_id("k0").unwrap())
        .await
        .unwrap();
    assert_ne!(new.epoch, old[0].epoch);
    assert_eq!((new.position, new.duplicate), (1, false));
    let page = store.read(&news, 0, 10).await.unwrap();
    let data: Vec<&str> = page.events.iter().map(|e| &*e.data).collect();
    assert_eq!(data, ["new"]);
}

/// Small events travel inside their notification; large ones (over `feed_inline_max`) are
/// announced by position, and their readers read the stream.
#[tokio::test]
async fn notifications_carry_small_events_only() {
    let store = shared_store(RedisConfig::default().with_key_prefix(unique_prefix("inline"))).await;
    let news = stream("news");
    let mut feed = store.live_feed();
    store.append(&news, NewEvent::new("small")).await.unwrap();
    store
        .append(&news, NewEvent::new("x".repeat(9000)))
        .await
        .unwrap();
    let small = next_notification(&mut feed, &news).await;
    assert_eq!(small.event.map(|e| e.data), Some("small".into()));
    let large = next_notification(&mut feed, &news).await;
    assert_eq!((large.position, large.event), (2, None));
}

/// A prefix with braces is refused; `Debug` names the server but never credentials.
#[tokio::test]
async fn configuration_and_debug() {
    let err = RedisStore::connect(
        &shared_url(),
        RedisConfig::default().with_key_prefix("a{b}:"),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RedisStoreError::Config(_)), "{err}");
    let store = shared_store(RedisConfig::default().with_key_prefix("dbg:")).await;
    let debug = format!("{store:?}");
    assert!(
        debug.contains("127.0.0.1") && debug.contains("dbg:"),
        "{debug}"
    );
}

/// Nothing listening: `connect` fails fast, as unavailable.
#[tokio::test]
async fn unreachable_redis_fails_fast() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let started = Instant::now();
    let err = RedisStore::connect(&format!("redis://127.0.0.1:{port}"), RedisConfig::default())
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

/// Redis killed and restarted without persistence: while it is down, appends and reads
/// fail quickly with `Unavailable`; once it is back the live feed resyncs by itself, appends
/// work again, and the stream is in a new epoch from position 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_without_persistence_changes_the_epoch() {
    let mut redis = PrivateRedis::start(false);
    let store = RedisStore::connect(&redis.url(), RedisConfig::default())
        .await
        .unwrap();
    let news = stream("news");
    let mut feed = store.live_feed();
    let before = store.append(&news, NewEvent::new("before")).await.unwrap();
    assert_eq!(next_notification(&mut feed, &news).await.position, 1);

    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let err = store
            .append(&news, NewEvent::new("lost"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "an append failed only after {:?}",
            started.elapsed()
        );
    }
    let err = store.read(&news, 0, 10).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(store.ping().await.is_err());

    redis.restart();
    assert!(
        matches!(next_feed_item(&mut feed, &news).await, FeedItem::Resync),
        "the feed resyncs once it is subscribed again"
    );
    let after = append_when_back(&store, &news, "after").await;
    assert_ne!(after.epoch, before.epoch, "the log was lost: a new epoch");
    assert_eq!(after.position, 1);
    let n = next_notification(&mut feed, &news).await;
    assert_eq!((n.epoch, n.position), (after.epoch, 1));
}

/// Redis killed and restarted with AOF (`appendfsync always`): the epoch, head, events and
/// sessions survive, and the live feed resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_with_aof_keeps_everything() {
    use resumable_sse_core::{SessionRecord, SessionStore};

    let mut redis = PrivateRedis::start(true);
    let store = RedisStore::connect(&redis.url(), RedisConfig::default())
        .await
        .unwrap();
    let news = stream("news");
    // Subscribed before the first appends, and their notifications read, so that only the
    // notification of 4 can still be in flight when the feed resyncs after the restart.
    let mut feed = store.live_feed();
    let first = store.append_many(&news, numbered(1..=3)).await.unwrap();
    for position in 1..=3 {
        assert_eq!(next_notification(&mut feed, &news).await.position, position);
    }
    let session = SessionRecord::new(None, Duration::from_secs(60));
    store.create(&session).await.unwrap();

    redis.kill();
    redis.restart();
    let after = append_when_back(&store, &news, "4").await;
    assert_eq!((after.epoch, after.position), (first[0].epoch, 4));
    let page = store.read(&news, 0, 10).await.unwrap();
    let data: Vec<&str> = page.events.iter().map(|e| &*e.data).collect();
    assert_eq!(data, ["1", "2", "3", "4"]);
    assert_eq!(
        store.load(&session.id).await.unwrap().map(|s| s.id),
        Some(session.id)
    );
    // The feed resubscribes (a resync: the notification of 4 may have been published
    // before it was subscribed again) and announces appends again.
    loop {
        match next_feed_item(&mut feed, &news).await {
            FeedItem::Resync => break,
            FeedItem::Appended(n) => assert_eq!(n.position, 4, "{n:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    store.append(&news, NewEvent::new("5")).await.unwrap();
    loop {
        let n = next_notification(&mut feed, &news).await;
        assert_eq!(n.epoch, first[0].epoch);
        if n.position == 5 {
            break;
        }
        assert_eq!(n.position, 4, "{n:?}");
    }
}

/// The pub/sub connection killed behind the store's back (`CLIENT KILL TYPE pubsub`): the
/// feed reconnects by itself, resyncs, and announces later appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_reconnects_after_its_connection_is_killed() {
    let redis = PrivateRedis::start(false);
    let store = RedisStore::connect(&redis.url(), RedisConfig::default())
        .await
        .unwrap();
    let news = stream("news");
    let mut feed = store.live_feed();
    let mut conn = raw(&redis.url()).await;
    let killed: i64 = query(&mut conn, &["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert_eq!(killed, 1, "the store has one pub/sub connection");
    assert!(matches!(
        next_feed_item(&mut feed, &news).await,
        FeedItem::Resync
    ));
    store.append(&news, NewEvent::new("after")).await.unwrap();
    assert_eq!(next_notification(&mut feed, &news).await.position, 1);
}

/// The pub/sub connection is checked with `PING`: on a healthy connection the checks pass
/// unnoticed (no resync), and a server that stops answering (here `CLIENT PAUSE`) makes the
/// feed reconnect and resync once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_pings_detect_a_server_that_stops_answering() {
    let redis = PrivateRedis::start(false);
    let mut config = RedisConfig::default().with_response_timeout(Duration::from_millis(300));
    config.feed_ping_interval = Duration::from_millis(50);
    let store = RedisStore::connect(&redis.url(), config).await.unwrap();
    let news = stream("news");
    let mut feed = store.live_feed();
    for i in 1..=10 {
        store
            .append(&news, NewEvent::new(i.to_string()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            next_notification(&mut feed, &news).await.position,
            i,
            "healthy pings cause no resync"
        );
    }
    let mut conn = raw(&redis.url()).await;
    let _: () = query(&mut conn, &["CLIENT", "PAUSE", "1500", "ALL"]).await;
    assert!(matches!(
        next_feed_item(&mut feed, &news).await,
        FeedItem::Resync
    ));
    store.append(&news, NewEvent::new("after")).await.unwrap();
    assert_eq!(next_notification(&mut feed, &news).await.position, 11);
}
