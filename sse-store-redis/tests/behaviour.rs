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
use resumable_sse_store_redis::{MAX_BATCH, RedisConfig, RedisStore, RedisStoreError};

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

/// A field of `INFO <section>` as a number (0 when absent).
async fn info_number(
    conn: &mut redis::aio::MultiplexedConnection,
    section: &str,
    prefix: &str,
) -> u64 {
    let info: String = query(conn, &["INFO", section]).await;
    info.lines()
        .find_map(|line| line.strip_prefix(prefix))
        .map_or(0, |rest| {
            rest.split([',', '\r']).next().unwrap().parse().unwrap()
        })
}

/// How many scripts Redis has run (`EVALSHA` and `EVAL`), from `INFO commandstats`.
async fn script_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    info_number(conn, "commandstats", "cmdstat_evalsha:calls=").await
        + info_number(conn, "commandstats", "cmdstat_eval:calls=").await
}

/// Asserts that a key's `PTTL`, read `elapsed` after the moment its expiry was computed
/// from, is `expected` less at most that time (and the millisecond Redis truncates).
fn assert_expires_in(what: &str, pttl: i64, expected: Duration, elapsed: Duration) {
    let expected = i64::try_from(expected.as_millis()).unwrap();
    let slack = i64::try_from(elapsed.as_millis()).unwrap() + 1;
    assert!(
        (expected - slack..=expected).contains(&pttl),
        "{what}: PTTL {pttl} ms, expected {expected} ms less at most {slack} ms"
    );
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

/// One notification carries at most `feed_inline_budget` (64 KiB) of event data: in a batch of
/// 7 KiB events (each under `feed_inline_max`) the first ones travel inline, the rest are
/// announced by position only, and readers get them all the same.
#[tokio::test]
async fn one_notification_carries_at_most_its_budget() {
    let store = shared_store(RedisConfig::default().with_key_prefix(unique_prefix("budget"))).await;
    let news = stream("news");
    let mut feed = store.live_feed();
    let batch: Vec<NewEvent> = (0..20)
        .map(|i| NewEvent::new(format!("{i:02}{}", "x".repeat(7 * 1024 - 2))))
        .collect();
    store.append_many(&news, batch).await.unwrap();
    let mut inline = Vec::new();
    for position in 1..=20 {
        let notification = next_notification(&mut feed, &news).await;
        assert_eq!(notification.position, position);
        inline.push(notification.event.map(|e| e.data.len()));
    }
    let carried = inline.iter().take_while(|d| d.is_some()).count();
    assert!(
        inline[carried..].iter().all(Option::is_none),
        "inline data after an event announced by position: {inline:?}"
    );
    let bytes: usize = inline.iter().flatten().sum();
    assert!(
        (1..20).contains(&carried) && bytes <= 64 * 1024,
        "{carried} events inline, {bytes} bytes: {inline:?}"
    );
    let page = store.read(&news, 0, 100).await.unwrap();
    assert_eq!(page.events.len(), 20, "every event is in the log");
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

/// A store on a private Redis, keeping up to `max_len` events and `max_bytes` of data per
/// stream for an hour.
async fn private_store(redis: &PrivateRedis, max_len: usize, max_bytes: usize) -> RedisStore {
    RedisStore::connect(
        &redis.url(),
        RedisConfig::default().with_retention(
            resumable_sse_core::Retention::new(max_len, Duration::from_secs(3600))
                .with_max_bytes(max_bytes),
        ),
    )
    .await
    .unwrap()
}

/// With `maxmemory` reached under `noeviction`, an append fails with Redis's `OOM` as
/// [`Error::Unavailable`] (503 over HTTP, counted by the breaker), stores nothing of the
/// refused event, reads still work, and once there is room appends work again at the next
/// position. A new stream's first append and a quiet stream's next one are refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_appends_as_unavailable() {
    let redis = PrivateRedis::start(false);
    let store = private_store(&redis, 100_000, 1 << 30).await;
    let mut conn = raw(&redis.url()).await;
    let news = stream("news");
    store.append(&news, NewEvent::new("first")).await.unwrap();
    // A stream whose log expired while its meta lives on (a quiet stream): its next append
    // starts by deleting what is left, and a new stream's by writing its meta.
    let max_age = Duration::from_millis(100);
    let short = RedisStore::connect(
        &redis.url(),
        RedisConfig::default()
            .with_retention(resumable_sse_core::Retention::new(1000, max_age))
            .with_stream_ttl(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    let quiet = stream("quiet");
    short.append(&quiet, NewEvent::new("old")).await.unwrap();
    let quiet_log = short.key_layout().log(&quiet);
    eventually("the quiet stream's log expires", async || {
        let exists: i64 = query(&mut conn, &["EXISTS", &quiet_log]).await;
        exists == 0
    })
    .await;
    // A megabyte of room above what the server uses now, so the test does not depend on
    // how much an empty server takes.
    let used = info_number(&mut conn, "memory", "used_memory:").await;
    let limit = (used + (1 << 20)).to_string();
    let _: () = query(
        &mut conn,
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
    )
    .await;
    let _: () = query(&mut conn, &["CONFIG", "SET", "maxmemory", &limit]).await;

    let event = |n: u64| format!("{n:04} {}", "x".repeat(64 << 10));
    let mut last = store.read(&news, 0, 0).await.unwrap().head;
    let (refused, err) = loop {
        let n = last + 1;
        // 200 events of 64 KiB are 12 MiB: far past the limit.
        assert!(n <= 200, "appends never failed with maxmemory {limit}");
        match store.append(&news, NewEvent::new(event(n))).await {
            Ok(appended) => {
                assert_eq!(appended.position, n);
                last = n;
            }
            Err(err) => break (n, err),
        }
    };
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.is_unavailable() && !err.is_circuit_open(), "{err:?}");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("OOM"), "Redis's OOM error: {source}");
    assert!(last > 1, "at least one large event fitted before the limit");

    // Nothing of the refused event: not readable, and not half-written in any key.
    let page = store.read(&news, 0, 1000).await.unwrap();
    assert_eq!(page.head, last, "the refused event took no position");
    let positions: Vec<u64> = page.events.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=last).collect::<Vec<_>>());
    assert!(
        page.events.iter().all(|e| *e.data != *event(refused)),
        "the refused event is not readable"
    );
    let keys = store.key_layout().clone();
    let xlen: u64 = query(&mut conn, &["XLEN", &keys.log(&news)]).await;
    let sizes: u64 = query(&mut conn, &["LLEN", &keys.sizes(&news)]).await;
    let head: String = query(&mut conn, &["HGET", &keys.meta(&news), "head"]).await;
    let bytes: String = query(&mut conn, &["HGET", &keys.meta(&news), "bytes"]).await;
    let data: usize = page.events.iter().map(|e| e.data.len()).sum();
    assert_eq!(
        (xlen, sizes, head, bytes),
        (last, last, last.to_string(), data.to_string())
    );

    // Every append is refused while Redis is full, whatever its first write would be. The
    // limit goes below what Redis uses: the refused append's freed buffers may have made
    // room for a small one.
    let used = info_number(&mut conn, "memory", "used_memory:").await;
    let half = (used / 2).to_string();
    let _: () = query(&mut conn, &["CONFIG", "SET", "maxmemory", &half]).await;
    let err = store
        .append(&news, NewEvent::new("small"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unavailable(_)),
        "a small event: {err:?}"
    );
    let fresh = stream("fresh");
    let err = store
        .append(&fresh, NewEvent::new("new"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unavailable(_)),
        "a new stream: {err:?}"
    );
    assert_eq!(
        store.read(&fresh, 0, 10).await.unwrap(),
        resumable_sse_core::ReadPage::missing(),
        "a refused first append creates nothing"
    );
    let err = short
        .append(&quiet, NewEvent::new("new"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unavailable(_)),
        "a quiet stream: {err:?}"
    );
    let kept = short.read(&quiet, 0, 10).await.unwrap();
    assert_eq!((kept.head, kept.events.len()), (1, 0), "{kept:?}");

    let _: () = query(&mut conn, &["CONFIG", "SET", "maxmemory", "0"]).await;
    assert_eq!(
        store
            .append(&fresh, NewEvent::new("new"))
            .await
            .unwrap()
            .position,
        1
    );
    assert_eq!(
        short
            .append(&quiet, NewEvent::new("new"))
            .await
            .unwrap()
            .position,
        2
    );
    let after = store.append(&news, NewEvent::new("after")).await.unwrap();
    assert_eq!(
        (after.epoch, after.position),
        (page.epoch.unwrap(), last + 1)
    );
    let page = store.read(&news, last, 10).await.unwrap();
    let data: Vec<&str> = page.events.iter().map(|e| &*e.data).collect();
    assert_eq!(data, ["after"]);
}

/// A session's key expires `session_grace` (5 s by default) after the session: from its
/// creation, and moved (later or earlier) by every touch.
#[tokio::test]
async fn session_keys_expire_a_grace_after_their_session() {
    use resumable_sse_core::{SessionRecord, SessionStore};

    let grace = Duration::from_secs(5);
    let store = shared_store(RedisConfig::default().with_key_prefix(unique_prefix("grace"))).await;
    assert_eq!(
        store.config().session_grace,
        grace,
        "the documented default"
    );
    let keys = store.key_layout().clone();
    let mut conn = raw(&shared_url()).await;

    let ttl = Duration::from_secs(60);
    let started = Instant::now();
    let session = SessionRecord::new(None, ttl);
    store.create(&session).await.unwrap();
    let key = keys.session(&session.id);
    let pttl: i64 = query(&mut conn, &["PTTL", &key]).await;
    assert!(
        u128::try_from(pttl).unwrap() > ttl.as_millis(),
        "the key outlives the session: PTTL {pttl}"
    );
    assert_expires_in("after create", pttl, ttl + grace, started.elapsed());

    let started = Instant::now();
    let later = std::time::SystemTime::now() + Duration::from_secs(120);
    assert!(store.touch(&session.id, later).await.unwrap());
    let pttl: i64 = query(&mut conn, &["PTTL", &key]).await;
    assert_expires_in(
        "after touch",
        pttl,
        Duration::from_secs(120) + grace,
        started.elapsed(),
    );

    let other = SessionRecord::new(None, ttl);
    store.create(&other).await.unwrap();
    let started = Instant::now();
    let sooner = std::time::SystemTime::now() + Duration::from_secs(30);
    let touched = store
        .touch_many(&[session.id, other.id], sooner)
        .await
        .unwrap();
    assert_eq!(touched, 2);
    let mut pttls = Vec::new();
    for id in [session.id, other.id] {
        let pttl: i64 = query(&mut conn, &["PTTL", &keys.session(&id)]).await;
        pttls.push(pttl);
    }
    let elapsed = started.elapsed();
    for pttl in pttls {
        let expected = Duration::from_secs(30) + grace;
        assert_expires_in("after touch_many", pttl, expected, elapsed);
    }
}

/// `append_many` splits a batch over [`MAX_BATCH`] events, or over 8 MiB of data, into as
/// few script calls as fit those limits, and answers as one call would: every event, in
/// order, at gap-free positions of one epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_are_split_into_several_calls() {
    assert_eq!(MAX_BATCH, 1000, "docs/redis.md states 1000");
    // A server of its own, so that its script count is this test's.
    let redis = PrivateRedis::start(false);
    let store = private_store(&redis, 10_000, 64 << 20).await;
    let mut conn = raw(&redis.url()).await;
    // Loads the script, so that every later call is exactly one EVALSHA.
    store
        .append(&stream("warm-up"), NewEvent::new("0"))
        .await
        .unwrap();

    let check =
        async |conn: &mut redis::aio::MultiplexedConnection, events: Vec<NewEvent>, calls: u64| {
            let news = stream("news");
            let expected: Vec<String> = events.iter().map(|e| e.data().to_owned()).collect();
            let n = u64::try_from(events.len()).unwrap();
            let before = script_calls(conn).await;
            let appended = store.append_many(&news, events).await.unwrap();
            assert_eq!(script_calls(conn).await - before, calls, "script calls");
            let positions: Vec<u64> = appended.iter().map(|a| a.position).collect();
            assert_eq!(positions, (1..=n).collect::<Vec<_>>());
            let epoch = appended[0].epoch;
            assert!(appended.iter().all(|a| a.epoch == epoch && !a.duplicate));
            let page = store.read(&news, 0, expected.len() + 1).await.unwrap();
            assert_eq!((page.epoch, page.oldest, page.head), (Some(epoch), 1, n));
            let positions: Vec<u64> = page.events.iter().map(|e| e.position).collect();
            assert_eq!(positions, (1..=n).collect::<Vec<_>>());
            let data: Vec<&str> = page.events.iter().map(|e| &*e.data).collect();
            assert!(
                data == expected,
                "the events read back are the batch, in order"
            );
        };
    check(&mut conn, numbered(1..=1000), 1).await;
    // 1000 + 1000 + 500.
    check(&mut conn, numbered(1..=2500), 3).await;
    // 20 events of 1 MiB: 8 MiB + 8 MiB + 4 MiB.
    let mib = (1..=20)
        .map(|i| NewEvent::new(format!("{i:02}{}", "x".repeat((1 << 20) - 2))))
        .collect();
    check(&mut conn, mib, 3).await;
}
