//! `Hub::feed_connected` follows what the store's live feed says: false from a
//! `FeedItem::Disconnected` until the feed yields again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use resumable_sse_core::{
    Appended, EventBuffer, FeedItem, Hub, LiveFeed, NewEvent, Position, ReadPage, Result,
    StreamName,
};
use resumable_sse_store_memory::MemoryStore;
use tokio::sync::mpsc;

/// The memory store, with a live feed the test writes.
#[derive(Debug)]
struct Controlled {
    store: MemoryStore,
    feed: Mutex<Option<mpsc::UnboundedReceiver<FeedItem>>>,
}

#[async_trait]
impl EventBuffer for Controlled {
    async fn append(&self, stream: &StreamName, event: NewEvent) -> Result<Appended> {
        self.store.append(stream, event).await
    }
    async fn read(&self, stream: &StreamName, after: Position, limit: usize) -> Result<ReadPage> {
        self.store.read(stream, after, limit).await
    }
    fn live_feed(&self) -> LiveFeed {
        match self.feed.lock().expect("the feed").take() {
            Some(rx) => futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            })
            .boxed(),
            // The hub subscribing again after the first feed ended: a feed that stays silent.
            None => futures_util::stream::pending().boxed(),
        }
    }
}

async fn until(hub: &Hub, connected: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub.feed_connected() != connected {
        assert!(
            Instant::now() < deadline,
            "feed_connected() never became {connected}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn feed_connected_follows_the_feed() {
    let (tx, rx) = mpsc::unbounded_channel();
    let buffer = Arc::new(Controlled {
        store: MemoryStore::default(),
        feed: Mutex::new(Some(rx)),
    });
    let hub = Hub::builder(buffer, Arc::new(MemoryStore::default())).build();
    assert!(hub.feed_connected());
    tx.send(FeedItem::Disconnected).expect("send");
    until(&hub, false).await;
    tx.send(FeedItem::Resync).expect("send");
    until(&hub, true).await;
    // A feed that ends is not connected until the hub has subscribed again.
    drop(tx);
    until(&hub, false).await;
}
