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

/// Retained events' text is kept in the log's chunks, side by side, not an allocation each
/// (ADR 0031): a burst of connections leaves no page pinned by one small event. Large data
/// is kept as it came, not copied.
#[tokio::test]
async fn retained_text_is_kept_in_chunks() {
    let store = MemoryStore::default();
    let name = unique_stream("chunked");
    // Enough retained that a chunk holds many events.
    for i in 0..200 {
        let new = NewEvent::new(format!("{i:04}"))
            .with_event("tick")
            .unwrap()
            .with_id(format!("id-{i:04}"))
            .unwrap();
        store.append(&name, new).await.unwrap();
    }
    let page = store.read(&name, 190, 10).await.unwrap();
    assert_eq!(page.events[0].data, "0190");
    // Each event's data, name and id, and then the next event's, follow one another in a
    // chunk: of the 29 steps between the 30 values, at most one crosses into a new chunk.
    let values: Vec<&str> = page
        .events
        .iter()
        .flat_map(|e| {
            [
                &*e.data,
                e.event.as_deref().unwrap(),
                e.id.as_deref().unwrap(),
            ]
        })
        .collect();
    let adjacent = values
        .windows(2)
        .filter(|w| w[0].as_ptr() as usize + w[0].len() == w[1].as_ptr() as usize)
        .count();
    assert!(
        adjacent >= 28,
        "only {adjacent} of 29 values follow the one before"
    );
    // The publisher id still finds its event.
    let again = NewEvent::new("dup").with_id("id-0195").unwrap();
    assert!(store.append(&name, again).await.unwrap().duplicate);

    let large = "L".repeat(64 << 10);
    let kept = NewEvent::new(large.clone());
    let at = kept.data().as_ptr();
    store.append(&name, kept).await.unwrap();
    let page = store.read(&name, 200, 1).await.unwrap();
    assert_eq!(page.events[0].data, large);
    assert_eq!(page.events[0].data.as_ptr(), at, "large data is not copied");
}

/// A stream that retains far less than its chunks were sized for (large events, then small
/// ones) has its text copied into new chunks at the next sweep: the few events left do not
/// hold the old chunks (ADR 0031). Publisher ids still find their events.
#[tokio::test]
async fn a_shrunk_stream_moves_its_text_to_new_chunks() {
    let store = MemoryStore::new(
        MemoryConfig::default().with_retention(Retention::new(10, Duration::from_secs(3600))),
    );
    let name = unique_stream("shrunk");
    for _ in 0..10 {
        store
            .append(&name, NewEvent::new("x".repeat(900)))
            .await
            .unwrap();
    }
    // Ten small events push the large ones out: 60 bytes retained, in a chunk of 2 KiB.
    for i in 0..10 {
        let small = NewEvent::new(format!("s{i}"))
            .with_id(format!("id{i}"))
            .unwrap();
        store.append(&name, small).await.unwrap();
    }
    // Where each retained event's data is.
    let places = || async {
        let page = store.read(&name, 0, 10).await.unwrap();
        page.events
            .iter()
            .map(|e| e.data.as_ptr() as usize)
            .collect::<Vec<_>>()
    };
    let before = places().await;
    store.sweep();
    let page = store.read(&name, 0, 10).await.unwrap();
    let data: Vec<&str> = page.events.iter().map(|e| &*e.data).collect();
    assert_eq!(
        data,
        ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9"]
    );
    for (event, was) in page.events.iter().zip(&before) {
        assert_ne!(
            event.data.as_ptr() as usize,
            *was,
            "copied into a new chunk"
        );
    }
    let again = NewEvent::new("dup").with_id("id4").unwrap();
    let appended = store.append(&name, again).await.unwrap();
    assert!(appended.duplicate);
    assert_eq!(appended.position, 15);
    // A second sweep has nothing to move.
    let moved = places().await;
    store.sweep();
    assert_eq!(places().await, moved);
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
