//! The conformance suite rejects broken stores: each store here breaks one promise of
//! [`EventBuffer`], and a test runs the suite's check of that promise against it and expects
//! it to fail, for that reason. The same stores without their fault pass, and so does the
//! example store of the `EventBuffer` docs (which this file checks is the code shown there).

// The example store is the one in the docs, which unwraps its mutex for brevity.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap as Map};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;

use parking_lot::Mutex as Lock;
use resumable_sse_core::testing::{self, COUNT_RETENTION, DEFAULT_RETENTION};
use resumable_sse_store_memory::{MemoryConfig, MemoryStore};

include!("support/vec_store.rs");

/// Runs one conformance function and expects it to fail with a message containing `because`
/// (or one of its alternatives, separated by `|`).
async fn rejects(check: &str, because: &str, test: impl Future<Output = ()>) {
    let panic = AssertUnwindSafe(test)
        .catch_unwind()
        .await
        .expect_err(&format!("{check} accepted a store that breaks its promise"));
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(not a text panic)");
    assert!(
        because.split('|').any(|reason| message.contains(reason)),
        "{check} failed, but not because {because:?}: {message}"
    );
}

// ---------------------------------------------------------------------------------------
// The example store of the docs.

async fn example(retention: Retention) -> VecStore {
    VecStore::new(retention)
}

/// The example's data lives in the store: a restart is a new store.
async fn example_lost(store: VecStore) -> VecStore {
    drop(store);
    VecStore::new(DEFAULT_RETENTION)
}

mod example_store {
    resumable_sse_core::event_buffer_tests!(super::example, super::example_lost);
}

#[test]
fn the_example_store_is_the_one_in_the_docs() {
    let docs = include_str!("../src/buffer.rs");
    let start = docs
        .find("/// # Writing a store")
        .expect("buffer.rs has the section");
    let shown: Vec<&str> = docs[start..]
        .lines()
        .map(|line| line.trim_start())
        .skip_while(|line| *line != "/// ```")
        .skip(1)
        .take_while(|line| !line.starts_with("/// # #[tokio::main"))
        .map(|line| {
            line.strip_prefix("/// ")
                .unwrap_or(line.trim_start_matches("///"))
        })
        .collect();
    let tested: Vec<&str> = include_str!("support/vec_store.rs").lines().collect();
    let shown = shown.join("\n");
    assert_eq!(
        shown.trim_end(),
        tested.join("\n").trim_end(),
        "the store in buffer.rs's docs and tests/support/vec_store.rs differ"
    );
}

// ---------------------------------------------------------------------------------------
// Faults on top of the memory store.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// None: the memory store as it is, through the wrapper.
    None,
    /// The live feed says `Resync` once, then nothing.
    ResyncOnce,
    /// The live feed says only `Resync`, again and again.
    ResyncForever,
    /// A stream keeps its first epoch when the store loses its data.
    EpochSurvivesLoss,
    /// Retention by count keeps one event too few.
    RetentionOffByOne,
    /// Retention ignores the age of events.
    RetentionIgnoresAge,
    /// Retention ignores the size of events.
    RetentionIgnoresBytes,
    /// A publisher id stays taken after its event was trimmed.
    IdNeverFreed,
    /// An append with a retained publisher id announces the first event again.
    DuplicatesOnFeed,
    /// `read` takes the events and the head from two snapshots.
    SplitSnapshot,
}

#[derive(Clone, Debug)]
struct Faulty {
    fault: Fault,
    inner: MemoryStore,
    /// The first epoch seen per stream ([`Fault::EpochSurvivesLoss`]).
    epochs: Arc<Lock<Map<StreamName, Epoch>>>,
    /// Every publisher id ever appended ([`Fault::IdNeverFreed`]).
    ids: Arc<Lock<Map<(StreamName, String), Appended>>>,
    /// Extra notifications ([`Fault::DuplicatesOnFeed`]).
    echoes: broadcast::Sender<Notification>,
}

impl Faulty {
    fn new(fault: Fault, retention: Retention) -> Self {
        let retention = match fault {
            Fault::RetentionOffByOne => {
                Retention::new(retention.max_len() - 1, retention.max_age())
            }
            Fault::RetentionIgnoresAge => {
                Retention::new(retention.max_len(), Duration::from_secs(86_400 * 365))
            }
            Fault::RetentionIgnoresBytes => retention.with_max_bytes(usize::MAX),
            _ => retention,
        };
        Faulty {
            fault,
            inner: MemoryStore::new(MemoryConfig::default().with_retention(retention)),
            epochs: Arc::default(),
            ids: Arc::default(),
            echoes: broadcast::channel(1024).0,
        }
    }

    fn first_epoch(&self, stream: &StreamName, epoch: Epoch) -> Epoch {
        *self.epochs.lock().entry(stream.clone()).or_insert(epoch)
    }
}

/// Loses the data: a new memory store, the rest of the wrapper kept.
async fn lose(store: Faulty) -> Faulty {
    Faulty {
        inner: MemoryStore::new(MemoryConfig::default().with_retention(DEFAULT_RETENTION)),
        ..store
    }
}

#[async_trait]
impl EventBuffer for Faulty {
    async fn append(&self, stream: &StreamName, event: NewEvent) -> Result<Appended> {
        match self.fault {
            Fault::IdNeverFreed => {
                let key = event.id().map(|id| (stream.clone(), id.to_owned()));
                if let Some(first) = key
                    .as_ref()
                    .and_then(|key| self.ids.lock().get(key).copied())
                {
                    return Ok(Appended {
                        duplicate: true,
                        ..first
                    });
                }
                let appended = self.inner.append(stream, event).await?;
                if let Some(key) = key {
                    self.ids.lock().insert(key, appended);
                }
                Ok(appended)
            }
            Fault::DuplicatesOnFeed => {
                let appended = self.inner.append(stream, event).await?;
                if appended.duplicate {
                    let page = self.inner.read(stream, appended.position - 1, 1).await?;
                    let _ = self.echoes.send(Notification {
                        stream: stream.clone(),
                        epoch: appended.epoch,
                        position: appended.position,
                        event: page.events.into_iter().next(),
                    });
                }
                Ok(appended)
            }
            Fault::EpochSurvivesLoss => {
                let appended = self.inner.append(stream, event).await?;
                let epoch = self.first_epoch(stream, appended.epoch);
                Ok(Appended { epoch, ..appended })
            }
            _ => self.inner.append(stream, event).await,
        }
    }

    async fn append_many(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Appended>> {
        match self.fault {
            Fault::IdNeverFreed | Fault::DuplicatesOnFeed | Fault::EpochSurvivesLoss => {
                let mut out = Vec::new();
                for event in events {
                    out.push(self.append(stream, event).await?);
                }
                Ok(out)
            }
            _ => self.inner.append_many(stream, events).await,
        }
    }

    async fn read(&self, stream: &StreamName, after: Position, limit: usize) -> Result<ReadPage> {
        let page = self.inner.read(stream, after, limit).await?;
        match self.fault {
            Fault::SplitSnapshot => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let later = self.inner.read(stream, 0, 0).await?;
                Ok(ReadPage {
                    events: page.events,
                    ..later
                })
            }
            Fault::EpochSurvivesLoss => Ok(ReadPage {
                epoch: page.epoch.map(|epoch| self.first_epoch(stream, epoch)),
                ..page
            }),
            _ => Ok(page),
        }
    }

    fn live_feed(&self) -> LiveFeed {
        match self.fault {
            Fault::ResyncOnce => futures_util::stream::once(async { FeedItem::Resync })
                .chain(futures_util::stream::pending())
                .boxed(),
            Fault::ResyncForever => futures_util::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Some((FeedItem::Resync, ()))
            })
            .boxed(),
            Fault::DuplicatesOnFeed => {
                let echoes = self.echoes.subscribe();
                let echoes = futures_util::stream::unfold(echoes, |mut rx| async move {
                    rx.recv().await.ok().map(|n| (FeedItem::Appended(n), rx))
                });
                futures_util::stream::select(self.inner.live_feed(), echoes).boxed()
            }
            Fault::EpochSurvivesLoss => {
                let store = self.clone();
                self.inner
                    .live_feed()
                    .map(move |item| match item {
                        FeedItem::Appended(n) => FeedItem::Appended(Notification {
                            epoch: store.first_epoch(&n.stream, n.epoch),
                            ..n
                        }),
                        other => other,
                    })
                    .boxed()
            }
            _ => self.inner.live_feed(),
        }
    }
}

async fn intact(retention: Retention) -> Faulty {
    Faulty::new(Fault::None, retention)
}

/// The wrapper without a fault passes the whole suite: the failures below come from the
/// faults.
mod intact_wrapper {
    resumable_sse_core::event_buffer_tests!(super::intact, super::lose);
}

fn faulty(fault: Fault) -> Faulty {
    Faulty::new(fault, DEFAULT_RETENTION)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_that_resyncs_once_then_falls_silent_is_rejected() {
    let store = faulty(Fault::ResyncOnce);
    rejects(
        "buffer_live_feed_delivers_every_append",
        "not every append reaches every live feed",
        testing::buffer_live_feed_delivers_every_append(store),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_that_only_resyncs_is_rejected() {
    let store = faulty(Fault::ResyncForever);
    rejects(
        "buffer_live_feed_delivers_every_append",
        "a resync repairs lost notifications",
        testing::buffer_live_feed_delivers_every_append(store),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_that_survives_data_loss_is_rejected() {
    let store = faulty(Fault::EpochSurvivesLoss);
    rejects(
        "buffer_epoch_changes_when_data_is_lost",
        "old epoch",
        testing::buffer_epoch_changes_when_data_is_lost(store, lose),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_off_by_one_is_rejected() {
    let store = Faulty::new(Fault::RetentionOffByOne, COUNT_RETENTION);
    rejects(
        "buffer_retention_by_count",
        "exactly max_len events are retained",
        testing::buffer_retention_by_count(store),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_ignoring_age_is_rejected() {
    let store = Faulty::new(Fault::RetentionIgnoresAge, testing::AGE_RETENTION);
    rejects(
        "buffer_retention_by_age",
        "events older than max_age are dropped",
        testing::buffer_retention_by_age(store),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_ignoring_bytes_is_rejected() {
    let store = Faulty::new(Fault::RetentionIgnoresBytes, testing::BYTES_RETENTION);
    rejects(
        "buffer_retention_by_bytes",
        "the stream is trimmed to max_bytes",
        testing::buffer_retention_by_bytes(store),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_id_never_freed_is_rejected() {
    let store = Faulty::new(Fault::IdNeverFreed, COUNT_RETENTION);
    rejects(
        "buffer_publisher_id_reusable_after_trim",
        "the id of a trimmed event appends a new event",
        testing::buffer_publisher_id_reusable_after_trim(store),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_id_kept_after_a_byte_trim_is_rejected() {
    let store = Faulty::new(Fault::IdNeverFreed, testing::BYTES_RETENTION);
    rejects(
        "buffer_publisher_id_reusable_after_byte_trim",
        "the id of an event trimmed by bytes appends a new event",
        testing::buffer_publisher_id_reusable_after_byte_trim(store),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_on_the_feed_are_rejected() {
    let store = faulty(Fault::DuplicatesOnFeed);
    rejects(
        "buffer_duplicates_stay_off_the_live_feed",
        "out of order or twice",
        testing::buffer_duplicates_stay_off_the_live_feed(store),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_from_another_snapshot_is_rejected() {
    let store = Faulty::new(Fault::SplitSnapshot, testing::READERS_RETENTION);
    rejects(
        "buffer_readers_during_concurrent_appends",
        // With oldest from the later snapshot, the events do not start where it says.
        "are not one snapshot|is not contiguous",
        testing::buffer_readers_during_concurrent_appends(store),
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// A store whose positions come from a counter, so appends may commit out of order, and
// whose publisher-id check may race.

#[derive(Debug)]
struct Sequenced {
    /// Positions are taken from a counter and committed after a pause, out of order.
    out_of_order: bool,
    /// The publisher-id check and the append are two steps, with a pause between.
    racy_ids: bool,
    /// Events kept per stream.
    max_len: usize,
    epoch: Epoch,
    logs: Lock<Map<StreamName, Counted>>,
    feed: broadcast::Sender<Notification>,
}

#[derive(Debug, Default)]
struct Counted {
    taken: Position,
    events: BTreeMap<Position, Event>,
}

impl Sequenced {
    fn new(out_of_order: bool, racy_ids: bool, retention: Retention) -> Self {
        Sequenced {
            out_of_order,
            racy_ids,
            max_len: retention.max_len(),
            epoch: Epoch::random(),
            logs: Lock::default(),
            feed: broadcast::channel(1024).0,
        }
    }

    fn find(&self, stream: &StreamName, id: &str) -> Option<Position> {
        let logs = self.logs.lock();
        let log = logs.get(stream)?;
        log.events
            .values()
            .find(|e| e.id.as_deref() == Some(id))
            .map(|e| e.position)
    }

    fn commit(&self, stream: &StreamName, event: Event) {
        let mut logs = self.logs.lock();
        let log = logs.entry(stream.clone()).or_default();
        self.commit_into(log, stream, event);
    }

    /// Stores and announces `event` in `log`, whose lock the caller holds.
    fn commit_into(&self, log: &mut Counted, stream: &StreamName, event: Event) {
        let _ = self.feed.send(Notification {
            stream: stream.clone(),
            epoch: self.epoch,
            position: event.position,
            event: Some(event.clone()),
        });
        log.events.insert(event.position, event);
        while log.events.len() > self.max_len {
            log.events.pop_first();
        }
    }
}

#[async_trait]
impl EventBuffer for Sequenced {
    async fn append(&self, stream: &StreamName, event: NewEvent) -> Result<Appended> {
        let duplicate = |position| Appended {
            epoch: self.epoch,
            position,
            duplicate: true,
        };
        if let Some(id) = event.id() {
            if let Some(position) = self.find(stream, id) {
                return Ok(duplicate(position));
            }
            if self.racy_ids {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let position = {
            let mut logs = self.logs.lock();
            let log = logs.entry(stream.clone()).or_default();
            if !self.racy_ids
                && let Some(id) = event.id()
                && let Some(e) = log.events.values().find(|e| e.id.as_deref() == Some(id))
            {
                return Ok(duplicate(e.position));
            }
            log.taken += 1;
            let position = log.taken;
            if !self.out_of_order {
                // Committed under the lock that took the position and checked the id: a
                // racing append with the same id finds this event, and positions commit
                // in order. (Releasing the lock first let a racer store a second event.)
                self.commit_into(
                    log,
                    stream,
                    event.into_event(stream.clone(), position, SystemTime::now()),
                );
                return Ok(Appended {
                    epoch: self.epoch,
                    position,
                    duplicate: false,
                });
            }
            position
        };
        let pause = rand::random::<u64>() % 1500;
        tokio::time::sleep(Duration::from_micros(pause)).await;
        self.commit(
            stream,
            event.into_event(stream.clone(), position, SystemTime::now()),
        );
        Ok(Appended {
            epoch: self.epoch,
            position,
            duplicate: false,
        })
    }

    async fn read(&self, stream: &StreamName, after: Position, limit: usize) -> Result<ReadPage> {
        let logs = self.logs.lock();
        let Some(log) = logs.get(stream) else {
            return Ok(ReadPage::missing());
        };
        let head = log.events.keys().next_back().copied().unwrap_or(0);
        Ok(ReadPage {
            epoch: Some(self.epoch),
            oldest: log.events.keys().next().copied().unwrap_or(head + 1),
            head,
            events: log
                .events
                .range(after + 1..)
                .take(limit)
                .map(|(_, e)| e.clone())
                .collect(),
        })
    }

    fn live_feed(&self) -> LiveFeed {
        let rx = self.feed.subscribe();
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.ok().map(|n| (FeedItem::Appended(n), rx))
        })
        .boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sequenced_store_without_its_faults_passes() {
    let store = Sequenced::new(false, false, testing::READERS_RETENTION);
    testing::buffer_readers_during_concurrent_appends(store).await;
    let store = Sequenced::new(false, false, DEFAULT_RETENTION);
    testing::buffer_concurrent_appends_one_publisher_id(store).await;
    let store = Sequenced::new(false, false, DEFAULT_RETENTION);
    testing::buffer_live_feed_delivers_every_append(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_out_of_commit_order_are_rejected() {
    rejects(
        "buffer_readers_during_concurrent_appends",
        "is not contiguous",
        testing::buffer_readers_during_concurrent_appends(Sequenced::new(
            true,
            false,
            testing::READERS_RETENTION,
        )),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racy_publisher_id_check_is_rejected() {
    rejects(
        "buffer_concurrent_appends_one_publisher_id",
        "concurrent appends with one publisher id stored",
        testing::buffer_concurrent_appends_one_publisher_id(Sequenced::new(
            false,
            true,
            DEFAULT_RETENTION,
        )),
    )
    .await;
}
