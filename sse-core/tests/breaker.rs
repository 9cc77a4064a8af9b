//! The hub's store circuit breaker against a store that goes down and comes back: it opens
//! after the configured number of consecutive failed store operations (a failed batch of
//! publishes counts once), then refuses publishes and connects without touching the store,
//! stays open while the store fails its probes, and closes once a probe succeeds.

// A test panics on what it finds wrong.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use resumable_sse_core::{
    Appended, BreakerConfig, Config, ConnectRequest, Error, EventBuffer, Hub, LiveFeed, NewEvent,
    ReadPage, Result, SessionId, SessionRecord, SessionStore, StreamName,
};
use resumable_sse_store_memory::MemoryStore;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

/// The memory store, down (every operation `Unavailable`) while `down` is set; writes wait
/// while the gate is closed.
#[derive(Debug)]
struct Flaky {
    store: MemoryStore,
    down: AtomicBool,
    writes: AtomicUsize,
    gate: tokio::sync::watch::Sender<bool>,
}

impl Flaky {
    fn new() -> Arc<Self> {
        Arc::new(Flaky {
            store: MemoryStore::default(),
            down: AtomicBool::new(false),
            writes: AtomicUsize::new(0),
            gate: tokio::sync::watch::Sender::new(true),
        })
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::unavailable(std::io::Error::other(
                "the store is down",
            )));
        }
        Ok(())
    }

    async fn write(&self) -> Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        let _ = self.gate.subscribe().wait_for(|open| *open).await;
        self.check()
    }
}

#[async_trait::async_trait]
impl EventBuffer for Flaky {
    async fn append(&self, stream: &StreamName, event: NewEvent) -> Result<Appended> {
        self.write().await?;
        self.store.append(stream, event).await
    }
    async fn append_many(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Appended>> {
        self.write().await?;
        self.store.append_many(stream, events).await
    }
    async fn read(&self, stream: &StreamName, after: u64, limit: usize) -> Result<ReadPage> {
        self.check()?;
        self.store.read(stream, after, limit).await
    }
    fn live_feed(&self) -> LiveFeed {
        self.store.live_feed()
    }
    async fn ping(&self) -> Result<()> {
        self.check()
    }
}

/// The memory store's sessions, down (every operation `Unavailable`) while `down` is set.
#[derive(Debug, Default)]
struct FlakySessions {
    store: MemoryStore,
    down: AtomicBool,
}

impl FlakySessions {
    fn check(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::unavailable(std::io::Error::other(
                "the session store is down",
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl SessionStore for FlakySessions {
    async fn create(&self, record: &SessionRecord) -> Result<()> {
        self.check()?;
        self.store.create(record).await
    }
    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        self.check()?;
        self.store.load(id).await
    }
    async fn touch(&self, id: &SessionId, expires_at: SystemTime) -> Result<bool> {
        self.check()?;
        self.store.touch(id, expires_at).await
    }
    async fn record_cursor(
        &self,
        id: &SessionId,
        cursor: &str,
        expires_at: SystemTime,
    ) -> Result<bool> {
        self.check()?;
        self.store.record_cursor(id, cursor, expires_at).await
    }
    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.check()?;
        self.store.delete(id).await
    }
}

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_after_failed_store_operations_refuses_at_once_and_closes_when_a_probe_answers() {
    let flaky = Flaky::new();
    let sessions = Arc::new(MemoryStore::default());
    let config = Config::default().with_breaker(BreakerConfig::new(3, Duration::from_millis(20)));
    let hub = Hub::builder(flaky.clone(), sessions).config(config).build();
    let news = StreamName::new("news").unwrap();
    let publish = |data: &'static str| {
        let (hub, news) = (hub.clone(), news.clone());
        tokio::spawn(async move { hub.publish(&news, NewEvent::new(data)).await })
    };

    // A write in flight, four publishes queued behind it; the store goes down: the write and
    // the batch fail, two store operations, two failures, not five.
    flaky.gate.send_replace(false);
    let lone = publish("lone");
    until("the lone write started", || flaky.writes() == 1).await;
    let batch: Vec<_> = ["a", "b", "c", "d"].into_iter().map(publish).collect();
    until("four publishes queued", || hub.queued_publishes() == 4).await;
    flaky.set_down(true);
    flaky.gate.send_replace(true);
    assert!(lone.await.unwrap().unwrap_err().is_unavailable());
    for publish in batch {
        let err = publish.await.unwrap().unwrap_err();
        assert!(err.is_unavailable() && !err.is_circuit_open(), "{err:?}");
    }
    assert_eq!(flaky.writes(), 2);
    assert!(!hub.store_failing(), "a failed batch counts once");

    // A third failed operation opens it.
    assert!(publish("third").await.unwrap().is_err());
    assert!(hub.store_failing());
    // Now nothing reaches the store: publishes and connects fail at once.
    let writes = flaky.writes();
    for _ in 0..10 {
        let err = hub
            .publish(&news, NewEvent::new("refused"))
            .await
            .unwrap_err();
        assert!(err.is_circuit_open(), "{err:?}");
    }
    let err = hub
        .connect(ConnectRequest::new(vec![news.clone()]))
        .await
        .unwrap_err();
    assert!(err.is_circuit_open(), "{err:?}");
    assert_eq!(flaky.writes(), writes, "the store was not asked");
    // Validation still comes first: a bad request is told so, not "store down".
    let err = hub
        .publish(&StreamName::new("@reserved").unwrap(), NewEvent::new("x"))
        .await
        .unwrap_err();
    assert!(err.is_client_error(), "{err:?}");
    // The probes fail while the store is down: it stays open.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(hub.store_failing(), "open while the store fails its probes");

    flaky.set_down(false);
    until("a probe closes the breaker", || !hub.store_failing()).await;
    let appended = hub.publish(&news, NewEvent::new("back")).await.unwrap();
    assert_eq!(appended.position, 1, "nothing refused was stored");
}

/// A session store that fails opens the breaker like an event store that fails, and the
/// breaker stays open, the event store answering its pings, until the session store answers
/// too: it does not close at the first probe to open again a few requests later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stays_open_while_the_session_store_fails() {
    let sessions = Arc::new(FlakySessions::default());
    let config = Config::default().with_breaker(BreakerConfig::new(2, Duration::from_millis(10)));
    let hub = Hub::builder(Arc::new(MemoryStore::default()), sessions.clone())
        .config(config)
        .build();
    sessions.down.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let err = hub.resolve_session(None, None).await.unwrap_err();
        assert!(err.is_unavailable() && !err.is_circuit_open(), "{err:?}");
    }
    assert!(hub.store_failing(), "two failed session operations open it");
    // Many probes' worth of time, the event store answering every ping.
    let probes = Instant::now() + Duration::from_millis(200);
    while Instant::now() < probes {
        assert!(
            hub.store_failing(),
            "closed while the session store is down"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = hub.resolve_session(None, None).await.unwrap_err();
    assert!(err.is_circuit_open(), "{err:?}");

    sessions.down.store(false, Ordering::SeqCst);
    until("a probe closes the breaker", || !hub.store_failing()).await;
    hub.resolve_session(None, None).await.unwrap();
}

#[tokio::test]
async fn off_never_refuses() {
    let flaky = Flaky::new();
    let config = Config::default().with_breaker(BreakerConfig::off());
    let hub = Hub::builder(flaky.clone(), Arc::new(MemoryStore::default()))
        .config(config)
        .build();
    let news = StreamName::new("news").unwrap();
    flaky.set_down(true);
    for _ in 0..20 {
        let err = hub.publish(&news, NewEvent::new("x")).await.unwrap_err();
        assert!(!err.is_circuit_open());
    }
    assert!(!hub.store_failing());
    assert_eq!(flaky.writes(), 20, "every publish asked the store");
}
