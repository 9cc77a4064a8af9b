//! Behaviour of the PostgreSQL store beyond the shared conformance suite: migrations, the
//! schema parameter, epochs after a lost row, retention before and by the sweeper, session
//! expiry, the live feed after its connection is killed, and unreachable servers.

use std::time::{Duration, Instant, SystemTime};

use resumable_sse_core::testing::next_feed_item;
use resumable_sse_core::{
    EventBuffer, FeedItem, NewEvent, Position, SessionRecord, SessionStore, StreamName,
};
use resumable_sse_store_postgres::testing::{self, TempStore, temp_store};
use resumable_sse_store_postgres::{PostgresConfig, PostgresStore, PostgresStoreError, Schema};
use sqlx::AssertSqlSafe;

const DEADLINE: Duration = Duration::from_secs(15);

/// Drops a schema made by hand when the test ends, also when it fails.
struct DropSchema(Schema);

impl Drop for DropSchema {
    fn drop(&mut self) {
        testing::drop_schema_blocking(&testing::url(), &self.0);
    }
}

fn name(text: &str) -> StreamName {
    StreamName::new(text).expect("a valid name")
}

async fn count(store: &PostgresStore, table: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.{table}",
        store.schema().quoted()
    )))
    .fetch_one(store.pool())
    .await
    .expect("count")
}

/// Terminates the server processes of the connections named `application_name`.
async fn kill_connections(store: &PostgresStore, application_name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()) AS killed",
    )
    .bind(application_name)
    .fetch_one(store.pool())
    .await
    .expect("pg_terminate_backend")
}

fn appended(item: &FeedItem) -> Option<Position> {
    match item {
        FeedItem::Appended(n) => Some(n.position),
        _ => None,
    }
}

#[tokio::test]
async fn migrate_is_idempotent_and_safe_to_run_concurrently() {
    let schema = testing::fresh_schema();
    let _cleanup = DropSchema(schema.clone());
    let url = testing::url();
    let _ = testing::require_server(&url).await;
    let mut stores = Vec::new();
    for _ in 0..3 {
        let config = PostgresConfig::default().with_schema(schema.clone());
        stores.push(PostgresStore::connect(&url, config).await.expect("connect"));
    }
    let runs = futures_util::future::join_all(stores.iter().map(PostgresStore::migrate)).await;
    let mut applied: Vec<Vec<i32>> = runs
        .into_iter()
        .map(|r| r.expect("migrate succeeds"))
        .collect();
    applied.sort();
    assert_eq!(
        applied,
        [vec![], vec![], vec![1, 2, 3, 4]],
        "exactly one run applies them"
    );
    assert_eq!(
        stores[0].migrate().await.expect("migrate"),
        Vec::<i32>::new()
    );

    stores[0]
        .append(&name("s"), NewEvent::new("x"))
        .await
        .expect("the migrated schema works");

    // A migration changed after it was applied is refused.
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {}.sse_migrations SET checksum = 'changed'",
        schema.quoted()
    )))
    .execute(stores[0].pool())
    .await
    .expect("update");
    assert!(matches!(
        stores[0].migrate().await,
        Err(PostgresStoreError::MigrationChanged { version: 1, .. })
    ));
}

#[tokio::test]
async fn the_url_names_the_schema_and_debug_shows_no_password() {
    let schema = testing::fresh_schema();
    let _cleanup = DropSchema(schema.clone());
    let base = testing::url();
    // Trust authentication ignores the password: it is there to be hidden.
    let url = match base.split_once("://") {
        Some((scheme, rest)) if !rest.split('@').next().unwrap_or("").contains(':') => {
            format!(
                "{scheme}://{}",
                rest.replacen('@', ":not-a-secret-4711@", 1)
            )
        }
        _ => base.clone(),
    };
    let password = "not-a-secret-4711";
    let store = PostgresStore::connect(
        &format!("{url}?sse_schema={schema}"),
        PostgresConfig::default(),
    )
    .await
    .expect("connect");
    assert_eq!(store.schema(), &schema, "sse_schema overrides the config");
    assert_eq!(store.channel(), format!("{schema}_feed"));
    store.migrate().await.expect("migrate");
    let debug = format!("{store:?}");
    assert!(debug.contains(schema.as_str()), "{debug}");
    assert!(
        !debug.contains(password),
        "Debug prints the password: {debug}"
    );

    let bad =
        PostgresStore::connect(&format!("{url}?sse_schema=Not-Valid"), Default::default()).await;
    assert!(matches!(bad, Err(PostgresStoreError::InvalidSchema { .. })));
}

#[tokio::test]
async fn a_lost_stream_row_comes_back_in_a_new_epoch() {
    let store = temp_store(PostgresConfig::default()).await;
    let stream = name("lost");
    let mut old = None;
    for i in 1..=3 {
        old = Some(
            store
                .append(&stream, NewEvent::new(i.to_string()))
                .await
                .expect("append")
                .epoch,
        );
    }
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {}.streams WHERE name = $1",
        store.schema().quoted()
    )))
    .bind(stream.as_str())
    .execute(store.pool())
    .await
    .expect("delete the row");
    let page = store.read(&stream, 0, 10).await.expect("read");
    assert_eq!(
        (page.epoch, page.head, page.oldest, page.events.len()),
        (None, 0, 1, 0),
        "the stream is gone, events included"
    );
    let again = store
        .append(&stream, NewEvent::new("again"))
        .await
        .expect("append");
    assert_eq!(again.position, 1, "positions restart");
    assert_ne!(Some(again.epoch), old, "under a new epoch");
    assert_eq!(count(&store, "events").await, 1);
}

#[tokio::test]
async fn retention_holds_before_the_sweeper_which_then_frees_the_rows() {
    let store = temp_store(
        PostgresConfig::default()
            .with_retention(resumable_sse_core::Retention::new(
                5,
                Duration::from_secs(1),
            ))
            // Never on its own during the test: it is called by hand.
            .with_sweep_interval(Duration::from_secs(3600))
            .with_idle_stream_ttl(Some(Duration::ZERO)),
    )
    .await;
    let stream = name("trimmed");
    let batch = (1..=10).map(|i| NewEvent::new(i.to_string())).collect();
    store.append_many(&stream, batch).await.expect("append");
    let page = store.read(&stream, 0, 100).await.expect("read");
    assert_eq!((page.oldest, page.head, page.events.len()), (6, 10, 5));
    assert_eq!(count(&store, "events").await, 10, "not swept yet");
    let stats = store.sweep().await.expect("sweep");
    assert_eq!(stats.events, 5);
    assert_eq!(count(&store, "events").await, 5);

    let session = SessionRecord::new(None, Duration::from_millis(200));
    store.create(&session).await.expect("create");
    store
        .append(&session.id.stream(), NewEvent::new("private"))
        .await
        .expect("append");

    // Past max_age (and the session's expiry): nothing is readable, swept or not.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let page = store.read(&stream, 0, 100).await.expect("read");
    assert_eq!(
        (page.oldest, page.head, page.events.len()),
        (11, 10, 0),
        "every event aged out, the head stays"
    );
    assert_eq!(store.load(&session.id).await.expect("load"), None);
    assert_eq!(count(&store, "sessions").await, 1, "not swept yet");

    let stats = store.sweep().await.expect("sweep");
    assert_eq!(
        stats.sessions, 1,
        "the expired session, with its private stream"
    );
    assert_eq!(stats.events, 5, "the events that aged out");
    assert_eq!(stats.streams, 1, "the idle stream's row");
    assert_eq!(
        (
            count(&store, "events").await,
            count(&store, "sessions").await,
            count(&store, "streams").await
        ),
        (0, 0, 0)
    );
    let fresh = store
        .append(&stream, NewEvent::new("fresh"))
        .await
        .expect("append");
    assert_eq!(fresh.position, 1, "a dropped stream starts a new epoch");
}

/// Retention by bytes: reads stop at the stream's floor at once, the sweeper then deletes the
/// rows below it; with publisher ids too; and rows written before migration 0003 (no size)
/// are measured when the floor moves.
#[tokio::test]
async fn retention_by_bytes_moves_the_floor_and_the_sweeper_follows() {
    let store = temp_store(
        PostgresConfig::default()
            .with_retention(
                resumable_sse_core::Retention::new(1000, Duration::from_secs(3600))
                    .with_max_bytes(1000),
            )
            .with_sweep_interval(Duration::from_secs(3600)),
    )
    .await;
    let stream = name("bytes");
    let batch = (0..10).map(|_| NewEvent::new("x".repeat(300))).collect();
    store.append_many(&stream, batch).await.expect("append");
    let page = store.read(&stream, 0, 100).await.expect("read");
    assert_eq!((page.oldest, page.head, page.events.len()), (8, 10, 3));
    assert_eq!(count(&store, "events").await, 10, "not swept yet");
    assert_eq!(store.sweep().await.expect("sweep").events, 7);
    assert_eq!(count(&store, "events").await, 3);

    // As rows of an earlier version: no size.
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {}.events SET size = NULL",
        store.schema().quoted()
    )))
    .execute(store.pool())
    .await
    .expect("update");
    let with_id = NewEvent::new("y".repeat(500)).with_id("k").expect("an id");
    let a = store
        .append(&stream, with_id.clone())
        .await
        .expect("append");
    assert_eq!(a.position, 11);
    let page = store.read(&stream, 0, 100).await.expect("read");
    assert_eq!(
        (page.oldest, page.events.len()),
        (10, 2),
        "300 + 500 bytes fit, 600 + 500 do not"
    );
    let again = store.append(&stream, with_id).await.expect("append");
    assert!(again.duplicate && again.position == 11);
}

#[tokio::test]
async fn the_sweeper_runs_by_itself() {
    let store = temp_store(
        PostgresConfig::default()
            .with_retention(resumable_sse_core::Retention::new(
                2,
                Duration::from_secs(3600),
            ))
            .with_sweep_interval(Duration::from_millis(100)),
    )
    .await;
    let batch = (1..=20).map(|i| NewEvent::new(i.to_string())).collect();
    store
        .append_many(&name("swept"), batch)
        .await
        .expect("append");
    let deadline = Instant::now() + DEADLINE;
    while count(&store, "events").await > 2 {
        assert!(
            Instant::now() < deadline,
            "the sweeper did not trim the stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_publisher_id_is_free_again_once_out_of_retention() {
    let store = temp_store(
        PostgresConfig::default()
            .with_retention(resumable_sse_core::Retention::new(
                2,
                Duration::from_secs(3600),
            ))
            .with_sweep_interval(Duration::from_secs(3600)),
    )
    .await;
    let stream = name("ids");
    let keyed = || NewEvent::new("keyed").with_id("key").expect("an id");
    assert_eq!(
        store
            .append(&stream, keyed())
            .await
            .expect("append")
            .position,
        1
    );
    let again = store.append(&stream, keyed()).await.expect("append");
    assert_eq!((again.position, again.duplicate), (1, true));
    store
        .append_many(&stream, vec![NewEvent::new("x"), NewEvent::new("y")])
        .await
        .expect("append");
    // Position 1 is out of retention (max_len 2), though not swept yet.
    let third = store.append(&stream, keyed()).await.expect("append");
    assert_eq!((third.position, third.duplicate), (4, false));
    let page = store.read(&stream, 0, 10).await.expect("read");
    assert_eq!(
        page.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [3, 4]
    );
}

/// Notifications carry small appends whole (events, ids and data exactly as read back), with
/// publisher ids and without; an append too large for a notification announces positions only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_carry_small_events_only() {
    let store = temp_store(PostgresConfig::default()).await;
    let stream = name("inline");
    let mut feed = store.live_feed();
    assert_eq!(next_feed_item(&mut feed, &stream).await, FeedItem::Resync);
    let quoted = "a \"quoted\"\nline, \u{e9}t\u{e9} \\ {\"json\": [1]}";
    store
        .append_many(
            &stream,
            vec![
                NewEvent::new(quoted)
                    .with_event("tick")
                    .expect("an event name"),
                NewEvent::new("second"),
            ],
        )
        .await
        .expect("append");
    store
        .append(
            &stream,
            NewEvent::new("keyed").with_id("order-1").expect("an id"),
        )
        .await
        .expect("append");
    store
        .append(&stream, NewEvent::new("x".repeat(9000)))
        .await
        .expect("append");
    let page = store.read(&stream, 0, 10).await.expect("read");
    for expected in &page.events[..3] {
        let FeedItem::Appended(n) = next_feed_item(&mut feed, &stream).await else {
            panic!("a resync instead of an append");
        };
        assert_eq!(n.position, expected.position);
        assert_eq!(n.event.as_ref(), Some(expected), "carried whole");
    }
    let FeedItem::Appended(large) = next_feed_item(&mut feed, &stream).await else {
        panic!("a resync instead of an append");
    };
    assert_eq!((large.position, large.event), (4, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_resyncs_after_its_connection_is_killed() {
    let store = temp_store(PostgresConfig::default()).await;
    let stream = name("feed");
    let mut feed = store.live_feed();
    assert_eq!(
        next_feed_item(&mut feed, &stream).await,
        FeedItem::Resync,
        "listening"
    );
    store
        .append(&stream, NewEvent::new("1"))
        .await
        .expect("append");
    assert_eq!(appended(&next_feed_item(&mut feed, &stream).await), Some(1));

    let feed_name = format!("sse-feed:{}", store.schema());
    assert_eq!(kill_connections(&store, &feed_name).await, 1);
    store
        .append(&stream, NewEvent::new("2"))
        .await
        .expect("append");
    // The notification of 2 may be lost; a resync must follow the reconnect.
    loop {
        match next_feed_item(&mut feed, &stream).await {
            FeedItem::Resync => break,
            FeedItem::Appended(n) => assert_eq!(n.position, 2),
            other => panic!("unexpected {other:?}"),
        }
    }
    store
        .append(&stream, NewEvent::new("3"))
        .await
        .expect("append");
    loop {
        let item = next_feed_item(&mut feed, &stream).await;
        if appended(&item) == Some(3) {
            break;
        }
        assert!(
            matches!(item, FeedItem::Resync) || appended(&item) == Some(2),
            "{item:?}"
        );
    }
}

#[tokio::test]
async fn killed_pool_connections_are_replaced_without_an_error() {
    let store = temp_store(PostgresConfig::default()).await;
    let stream = name("pool");
    store
        .append(&stream, NewEvent::new("1"))
        .await
        .expect("append");
    let pool_name = format!("sse-store:{}", store.schema());
    assert!(kill_connections(&store, &pool_name).await >= 1);
    // Idle connections are tested before use: the dead one is replaced.
    let a = store
        .append(&stream, NewEvent::new("2"))
        .await
        .expect("append");
    assert_eq!(a.position, 2);
}

#[tokio::test]
async fn an_unreachable_server_fails_fast_as_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let started = Instant::now();
    let result = PostgresStore::connect(
        &format!("postgres://postgres@127.0.0.1:{port}/test"),
        PostgresConfig::default().with_acquire_timeout(Duration::from_secs(1)),
    )
    .await;
    let err = result.expect_err("nothing listens there");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(
        resumable_sse_core::Error::from(err),
        resumable_sse_core::Error::Unavailable(_)
    ));
}

/// Sessions survive across store instances (two processes sharing the database).
#[tokio::test]
async fn sessions_are_shared_between_instances() {
    let a: TempStore = temp_store(PostgresConfig::default()).await;
    let b = a.another(PostgresConfig::default()).await;
    let record = SessionRecord::new(Some("alice".into()), Duration::from_secs(60));
    a.create(&record).await.expect("create");
    let later = SystemTime::now() + Duration::from_secs(120);
    assert!(
        b.record_cursor(&record.id, "AQ", later)
            .await
            .expect("record")
    );
    let loaded = a.load(&record.id).await.expect("load").expect("alive");
    assert_eq!(loaded.cursor.as_deref(), Some("AQ"));
    assert_eq!(loaded.principal.as_deref(), Some("alice"));
    b.delete(&record.id).await.expect("delete");
    assert_eq!(a.load(&record.id).await.expect("load"), None);
}

/// A role with only the run-time privileges docs/postgres.md lists (on a schema migrated by
/// another role) can do everything the store does: append (with ids, so retention and the
/// notification run), read, listen, keep sessions, sweep.
#[tokio::test]
async fn the_documented_run_time_privileges_suffice() {
    as_app_role(&[], |app: PostgresStore| async move {
        let mut feed = app.live_feed();
        let stream = StreamName::new("privileges").expect("a name");
        app.append(&stream, NewEvent::new("one"))
            .await
            .expect("append");
        // The feed listens (a resync first, as after every connect), then hears appends.
        let mut heard = next_feed_item(&mut feed, &stream).await;
        if heard == FeedItem::Resync {
            app.append(&stream, NewEvent::new("again"))
                .await
                .expect("append");
            heard = next_feed_item(&mut feed, &stream).await;
        }
        assert!(matches!(heard, FeedItem::Appended(_)), "{heard:?}");
        let with_id = NewEvent::new("two").with_id("p1").expect("an id");
        app.append(&stream, with_id)
            .await
            .expect("append with an id");
        let page = app.read(&stream, 0, 10).await.expect("read");
        assert_eq!(page.events.last().map(|e| &*e.data), Some("two"));
        let record = SessionRecord::new(None, Duration::from_secs(60));
        app.create(&record).await.expect("create a session");
        assert!(app.load(&record.id).await.expect("load").is_some());
        let later = SystemTime::now() + Duration::from_secs(120);
        assert!(app.touch(&record.id, later).await.expect("touch"));
        assert!(
            app.record_cursor(&record.id, "AQAAAAEAAAAAAAAAAQ", later)
                .await
                .expect("record a cursor")
        );
        app.delete(&record.id).await.expect("delete a session");
        app.sweep().await.expect("sweep");
        app.ping().await.expect("ping");
    })
    .await;
}

/// A read-only server (a standby after a failover, here a role whose transactions are
/// read-only: `25006`) is an outage, not a client's error: appends and session writes answer
/// `Unavailable`, so the hub's breaker and the server's 503 and retry hints apply; reads go on.
#[tokio::test]
async fn a_read_only_server_is_unavailable() {
    as_app_role(
        &["ALTER ROLE {role} SET default_transaction_read_only = on"],
        |app: PostgresStore| async move {
            let stream = StreamName::new("read-only").expect("a name");
            let appended = app.append(&stream, NewEvent::new("one")).await;
            assert!(
                matches!(appended, Err(resumable_sse_core::Error::Unavailable(_))),
                "{appended:?}"
            );
            let record = SessionRecord::new(None, Duration::from_secs(60));
            let created = app.create(&record).await;
            assert!(
                matches!(created, Err(resumable_sse_core::Error::Unavailable(_))),
                "{created:?}"
            );
            let page = app.read(&stream, 0, 10).await.expect("reads go on");
            assert!(page.events.is_empty());
        },
    )
    .await;
}

/// Runs `check` with a store connected as a new role holding exactly the run-time privileges
/// docs/postgres.md lists (plus `extra` statements, `{role}` replaced by its name), on a
/// schema migrated by the administrator; the role is dropped afterwards, whatever happened.
async fn as_app_role<F, Fut>(extra: &[&str], check: F)
where
    F: FnOnce(PostgresStore) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let store = temp_store(PostgresConfig::default()).await;
    let schema = store.schema().as_str().to_owned();
    let role = format!("sse_app_{:016x}", rand::random::<u64>());
    let password = format!("{:032x}", rand::random::<u128>());
    let mut admin = testing::require_server(&testing::url()).await;
    // Names made here from hex digits and a validated schema name.
    let mut setup = vec![
        format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"),
        format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}"),
    ];
    setup.extend(extra.iter().map(|sql| sql.replace("{role}", &role)));
    for sql in setup {
        sqlx::query(AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .expect("set up the role");
    }
    let url = testing::url();
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let as_role = format!("{scheme}://{role}:{password}@{host}");

    let checked = tokio::spawn(async move {
        let app = PostgresStore::connect(
            &as_role,
            PostgresConfig::default().with_schema(Schema::new(schema.clone()).expect("valid")),
        )
        .await
        .expect("connect as the application's role");
        check(app).await;
    })
    .await;
    // The role goes, whatever happened; the schema goes with the store.
    for sql in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::query(AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .expect("drop the role");
    }
    drop(store);
    if let Err(failed) = checked {
        std::panic::resume_unwind(failed.into_panic());
    }
}
