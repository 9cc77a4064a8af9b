//! The memory store's total budget and stream cap: what counts, what frees room, and that a
//! refused append stores nothing.

use std::time::Duration;

use resumable_sse_core::testing::unique_stream;
use resumable_sse_core::{Error, EventBuffer, NewEvent, Retention};
use resumable_sse_store_memory::{EVENT_OVERHEAD, MemoryConfig, MemoryStore, STREAM_OVERHEAD};

const KIB: usize = 1024;

fn event(size: usize) -> NewEvent {
    NewEvent::new("x".repeat(size))
}

#[tokio::test]
async fn a_batch_over_the_budget_is_refused_whole() {
    let store = MemoryStore::new(MemoryConfig::default().with_budget(100 * KIB));
    let a = unique_stream("a");
    store
        .append_many(&a, (0..5).map(|_| event(10 * KIB)).collect())
        .await
        .unwrap();
    let used = store.used_bytes();
    assert_eq!(used, STREAM_OVERHEAD + 5 * (10 * KIB + EVENT_OVERHEAD));
    let refused = store
        .append_many(&a, (0..6).map(|_| event(10 * KIB)).collect())
        .await;
    assert!(matches!(refused, Err(Error::Full(_))), "{refused:?}");
    assert_eq!(store.used_bytes(), used, "nothing of the batch is stored");
    assert_eq!(store.read(&a, 0, 100).await.unwrap().head, 5);
    // A new stream refused for the budget leaves no empty log behind.
    let b = unique_stream("b");
    assert!(matches!(
        store.append(&b, event(60 * KIB)).await,
        Err(Error::Full(_))
    ));
    assert_eq!(store.stream_count(), 1);
}

#[tokio::test]
async fn retention_frees_room() {
    // Each stream keeps 20 KiB: a stream at its limit goes on appending in a full store.
    let retention = Retention::new(1000, Duration::from_secs(3600)).with_max_bytes(20 * KIB);
    let store = MemoryStore::new(
        MemoryConfig::default()
            .with_retention(retention)
            .with_budget(50 * KIB),
    );
    let (a, b, c) = (unique_stream("a"), unique_stream("b"), unique_stream("c"));
    for stream in [&a, &b] {
        for _ in 0..2 {
            store.append(stream, event(10 * KIB)).await.unwrap();
        }
    }
    assert!(matches!(
        store.append(&c, event(10 * KIB)).await,
        Err(Error::Full(_))
    ));
    for _ in 0..10 {
        store.append(&a, event(10 * KIB)).await.unwrap();
    }
    assert!(store.used_bytes() <= 50 * KIB);
    assert_eq!(store.read(&a, 0, 100).await.unwrap().events.len(), 2);
}

#[tokio::test]
async fn expired_events_and_streams_give_back_their_room() {
    let retention = Retention::new(1000, Duration::from_millis(50));
    let store = MemoryStore::new(
        MemoryConfig::default()
            .with_retention(retention)
            .with_budget(30 * KIB)
            .with_max_streams(1),
    );
    let (a, b) = (unique_stream("a"), unique_stream("b"));
    store.append(&a, event(20 * KIB)).await.unwrap();
    assert!(matches!(
        store.append(&b, event(10)).await,
        Err(Error::Full(_))
    ));
    // Past max_age, the sweep drops the event and the emptied log.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.stream_count() > 0 {
        assert!(std::time::Instant::now() < deadline, "the log never went");
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.sweep();
    }
    assert_eq!(store.used_bytes(), 0);
    store.append(&b, event(20 * KIB)).await.unwrap();
}

/// Retained events share their stream's name: the copy each publish parses is not kept with
/// its event (1 000 events of a stream would keep 1 000 copies, scattered over the heap).
#[tokio::test]
async fn events_share_their_streams_name() {
    let store = MemoryStore::default();
    let name = unique_stream("shared");
    for _ in 0..3 {
        // A fresh copy of the name for each append, as each publish request parses its own.
        let copy = resumable_sse_core::StreamName::new(name.as_str()).unwrap();
        store.append(&copy, event(8)).await.unwrap();
    }
    let page = store.read(&name, 0, 10).await.unwrap();
    assert_eq!(page.events.len(), 3);
    let first = page.events[0].stream.as_str().as_ptr();
    for event in &page.events {
        assert_eq!(event.stream, name);
        assert_eq!(
            event.stream.as_str().as_ptr(),
            first,
            "a copy of the name per event"
        );
    }
}

/// The budget counts an event's name and publisher id with its data (docs/limits.md): a
/// budget that fits the data alone refuses the event once its name and id are counted.
#[tokio::test]
async fn names_and_ids_count_against_the_budget() {
    let store = MemoryStore::default();
    let s = unique_stream("named");
    let named = NewEvent::new("x".repeat(100))
        .with_event("tick".repeat(10))
        .unwrap()
        .with_id("i".repeat(30))
        .unwrap();
    store.append(&s, named).await.unwrap();
    assert_eq!(
        store.used_bytes(),
        STREAM_OVERHEAD + 100 + 40 + 30 + EVENT_OVERHEAD
    );

    let exact = STREAM_OVERHEAD + 100 + EVENT_OVERHEAD;
    let store = MemoryStore::new(MemoryConfig::default().with_budget(exact + 69));
    let refused = store
        .append(
            &s,
            NewEvent::new("x".repeat(100))
                .with_event("tick".repeat(10))
                .unwrap()
                .with_id("i".repeat(30))
                .unwrap(),
        )
        .await;
    assert!(matches!(refused, Err(Error::Full(_))), "{refused:?}");
    assert_eq!(store.stream_count(), 0);
    // The data alone fits.
    store.append(&s, event(100)).await.unwrap();
    assert_eq!(store.used_bytes(), exact);
}
