//! Positions are gap-free and in commit order under contention: 8 writers, each a store with
//! a connection of its own (as 8 processes would be), append 1000 events each to one stream
//! while readers poll it, through the store and straight from the table.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use resumable_sse_core::{EventBuffer, NewEvent, Position, StreamName};
use resumable_sse_store_postgres::testing::{self, temp_store};
use resumable_sse_store_postgres::{PostgresConfig, PostgresStore};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

const WRITERS: usize = 8;
const PER_WRITER: usize = 1000;
const TOTAL: Position = (WRITERS * PER_WRITER) as Position;

fn config() -> PostgresConfig {
    PostgresConfig::default()
        .with_max_len(100_000)
        .with_max_connections(1)
}

/// Polls the stream through the store until it has seen every event, checking every page:
/// contiguous from where the reader was, nothing past the head, and, when the page is not
/// full, everything up to the head. A position committed before a smaller one would show as
/// a hole here, or as a head the reader cannot read up to.
async fn store_reader(store: PostgresStore, stream: StreamName, max_seen: Arc<AtomicU64>) -> usize {
    const LIMIT: usize = 128;
    let mut seen: Position = 0;
    let mut polls = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen < TOTAL {
        assert!(
            Instant::now() < deadline,
            "the store reader is stuck at {seen}"
        );
        let page = store.read(&stream, seen, LIMIT).await.expect("read");
        polls += 1;
        for (i, event) in page.events.iter().enumerate() {
            assert_eq!(
                event.position,
                seen + 1 + i as Position,
                "a hole after {seen}: a later position committed before an earlier one"
            );
            assert!(event.position <= page.head);
        }
        if page.events.len() < LIMIT {
            assert_eq!(
                seen + page.events.len() as Position,
                page.head,
                "the head is {} but the reader reached only {}",
                page.head,
                seen + page.events.len() as Position
            );
        }
        assert!(
            page.head >= seen,
            "the head went back from {seen} to {}",
            page.head
        );
        seen += page.events.len() as Position;
        max_seen.fetch_max(seen, Ordering::Relaxed);
        if page.events.is_empty() {
            tokio::task::yield_now().await;
        }
    }
    polls
}

/// Polls the events table directly (no head, no function): whatever a snapshot shows after
/// the reader's position must start right after it and have no hole.
async fn table_reader(schema: String, stream: StreamName) -> usize {
    let mut connection = PgConnection::connect(&testing::url())
        .await
        .expect("a connection for the table reader");
    let sql = format!(
        "SELECT position FROM \"{schema}\".events WHERE stream = $1 AND position > $2 \
         ORDER BY position"
    );
    let mut seen: i64 = 0;
    let mut polls = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen < TOTAL as i64 {
        assert!(
            Instant::now() < deadline,
            "the table reader is stuck at {seen}"
        );
        let positions: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(sql.clone()))
            .bind(stream.as_str())
            .bind(seen)
            .fetch_all(&mut connection)
            .await
            .expect("select");
        polls += 1;
        for p in positions {
            assert_eq!(
                p,
                seen + 1,
                "the table shows {p} committed while {} is not",
                seen + 1
            );
            seen = p;
        }
    }
    let _ = connection.close().await;
    polls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_commit_positions_in_order() {
    let base = temp_store(config()).await;
    let stream = StreamName::new("contended").expect("a name");
    let max_seen = Arc::new(AtomicU64::new(0));

    let readers = vec![
        tokio::spawn(store_reader(
            base.another(config()).await,
            stream.clone(),
            max_seen.clone(),
        )),
        tokio::spawn(store_reader(
            base.another(config()).await,
            stream.clone(),
            max_seen.clone(),
        )),
    ];
    let table = tokio::spawn(table_reader(base.schema().to_string(), stream.clone()));

    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = base.another(config()).await;
        let stream = stream.clone();
        writers.push(tokio::spawn(async move {
            let mut positions = Vec::with_capacity(PER_WRITER);
            for i in 0..PER_WRITER {
                let appended = store
                    .append(&stream, NewEvent::new(format!("{w}/{i}")))
                    .await
                    .expect("append");
                assert!(!appended.duplicate);
                positions.push((appended.position, format!("{w}/{i}")));
            }
            positions
        }));
    }
    let mut appended = Vec::new();
    for writer in writers {
        appended.extend(writer.await.expect("a writer"));
    }
    let elapsed = started.elapsed();

    let mut positions: Vec<Position> = appended.iter().map(|(p, _)| *p).collect();
    positions.sort_unstable();
    assert_eq!(
        positions,
        (1..=TOTAL).collect::<Vec<_>>(),
        "distinct, gap-free positions"
    );
    let mut polls = Vec::new();
    for reader in readers {
        polls.push(reader.await.expect("a store reader"));
    }
    let table_polls = table.await.expect("the table reader");
    assert_eq!(max_seen.load(Ordering::Relaxed), TOTAL);

    // Every event is where its append said.
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = base.read(&stream, after, 1000).await.expect("read");
        let Some(last) = page.events.last() else {
            break;
        };
        after = last.position;
        stored.extend(page.events);
    }
    assert_eq!(stored.len() as Position, TOTAL);
    let distinct: HashSet<&str> = stored.iter().map(|e| &*e.data).collect();
    assert_eq!(distinct.len() as Position, TOTAL);
    for (position, data) in &appended {
        assert_eq!(&*stored[(*position - 1) as usize].data, data);
    }
    eprintln!(
        "{TOTAL} appends from {WRITERS} connections in {elapsed:?} ({:.0}/s); \
         store readers polled {polls:?} times, the table reader {table_polls}",
        TOTAL as f64 / elapsed.as_secs_f64()
    );
}
