//! `Config::max_pending_bytes`: a connection hands its writer no more than the cap at a time,
//! whether it replays from the hot window or from pages read from the store; an event larger
//! than the cap still goes, alone; nothing is lost or reordered by the cutting.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use resumable_sse_core::codec::{Item, Parser};
use resumable_sse_core::{Config, ConnectRequest, Connection, Hub, NewEvent, StreamName};
use resumable_sse_store_memory::{MemoryConfig, MemoryStore};
use tokio::time::timeout;

/// Longest wait for anything a test expects; reaching it fails the test.
const WAIT: Duration = Duration::from_secs(10);

/// What a frame adds to its data at most here: `id: <cursor>`, `data:` and the blank line.
const FRAME: usize = 64;

fn hub(config: Config) -> Hub {
    let store = Arc::new(MemoryStore::new(MemoryConfig::default()));
    Hub::builder(store.clone(), store).config(config).build()
}

/// Reads chunks until `count` message events have arrived; returns their data in order and
/// the size of every chunk that held one.
async fn read_events(connection: &mut Connection, count: usize) -> (Vec<String>, Vec<usize>) {
    let mut parser = Parser::new();
    let (mut data, mut chunks) = (Vec::new(), Vec::new());
    while data.len() < count {
        let chunk = timeout(WAIT, connection.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} events within {WAIT:?}", data.len()))
            .expect("the connection stays open");
        let before = data.len();
        for item in parser.feed(&chunk) {
            if let Item::Event(e) = item
                && e.event == "message"
            {
                data.push(e.data);
            }
        }
        if data.len() > before {
            chunks.push(chunk.len());
        }
    }
    (data, chunks)
}

/// Connects to `stream` and reads up to the `connected` event, so that whatever is published
/// next is a replay for this connection once it reads again.
async fn connect(hub: &Hub, stream: &StreamName) -> Connection {
    let mut connection = hub
        .connect(ConnectRequest::new(vec![stream.clone()]))
        .await
        .expect("connect succeeds");
    let mut parser = Parser::new();
    loop {
        let chunk = timeout(WAIT, connection.next())
            .await
            .expect("the first frames arrive")
            .expect("the connection stays open");
        if parser
            .feed(&chunk)
            .iter()
            .any(|item| matches!(item, Item::Event(e) if e.event == "connected"))
        {
            return connection;
        }
    }
}

/// Publishes `count` events of `size` bytes each, numbered in their first bytes.
async fn publish(hub: &Hub, stream: &StreamName, count: usize, size: usize) -> Vec<String> {
    let mut sent = Vec::new();
    for i in 0..count {
        let data = format!("{i:06}{}", "x".repeat(size - 6));
        hub.publish(stream, NewEvent::new(data.clone()))
            .await
            .expect("publish succeeds");
        sent.push(data);
    }
    sent
}

#[tokio::test]
async fn a_replay_from_the_hot_window_comes_in_chunks_within_the_cap() {
    let cap = 64 * 1024;
    let hub = hub(Config::default().with_max_pending_bytes(cap));
    let news = StreamName::new("news").unwrap();
    let mut connection = connect(&hub, &news).await;
    let sent = publish(&hub, &news, 100, 10_000).await;
    let (got, chunks) = read_events(&mut connection, 100).await;
    assert_eq!(got, sent, "every event, once, in order");
    assert!(
        chunks.iter().all(|&c| c <= cap),
        "a chunk over the cap of {cap}: {chunks:?}"
    );
    assert!(
        chunks.iter().any(|&c| c > cap / 2),
        "chunks are filled up to the cap, not one event each: {chunks:?}"
    );
}

#[tokio::test]
async fn a_replay_from_the_store_is_read_and_sent_within_the_cap() {
    let cap = 64 * 1024;
    // A window of four events: a reader at the start of the stream replays from the store.
    let hub = hub(Config::default()
        .with_max_pending_bytes(cap)
        .with_hot_window(4));
    let news = StreamName::new("news").unwrap();
    let mut connection = connect(&hub, &news).await;
    let sent = publish(&hub, &news, 100, 10_000).await;
    let (got, chunks) = read_events(&mut connection, 100).await;
    assert_eq!(got, sent, "every event, once, in order");
    assert!(
        chunks.iter().all(|&c| c <= cap),
        "a chunk over the cap of {cap}: {chunks:?}"
    );
}

#[tokio::test]
async fn an_event_larger_than_the_cap_goes_alone() {
    let cap = 1024;
    for window in [1024, 2] {
        let hub = hub(Config::default()
            .with_max_pending_bytes(cap)
            .with_hot_window(window));
        let news = StreamName::new("news").unwrap();
        let mut connection = connect(&hub, &news).await;
        let sent = publish(&hub, &news, 20, 5_000).await;
        let (got, chunks) = read_events(&mut connection, 20).await;
        assert_eq!(got, sent, "every event, once, in order (window {window})");
        assert!(
            chunks.iter().all(|&c| c <= 5_000 + FRAME),
            "one event per chunk (window {window}): {chunks:?}"
        );
    }
}

#[tokio::test]
async fn small_events_still_go_a_page_at_a_time() {
    // The default cap (256 KiB) holds a whole page of small events: no more chunks than before.
    let hub = hub(Config::default().with_page_size(100));
    let news = StreamName::new("news").unwrap();
    let mut connection = connect(&hub, &news).await;
    let sent = publish(&hub, &news, 300, 100).await;
    let (got, chunks) = read_events(&mut connection, 300).await;
    assert_eq!(got, sent);
    assert!(chunks.len() <= 3 + 1, "pages of 100 events: {chunks:?}");
}

#[tokio::test]
async fn a_hot_window_holds_no_more_than_its_bytes() {
    let hub = hub(Config::default().with_hot_window_bytes(50_000));
    let news = StreamName::new("news").unwrap();
    let mut live = connect(&hub, &news).await;
    let mut late = connect(&hub, &news).await;
    let sent = publish(&hub, &news, 20, 10_000).await;
    let (got, _) = read_events(&mut live, 20).await;
    assert_eq!(got, sent);
    assert!(
        hub.window_events() <= 5,
        "{} events of 10 000 bytes in a window of 50 000 bytes",
        hub.window_events()
    );
    // What the window no longer holds is replayed from the store.
    let (got, _) = read_events(&mut late, 20).await;
    assert_eq!(got, sent);
}
