//! PostgreSQL unreachable, then back: operations fail fast with `Error::Unavailable`, the live
//! feed keeps trying, and once the server is reachable again everything works and the feed
//! resyncs (the notifications sent meanwhile are lost).
//!
//! The outage is a TCP relay in front of the real server that stops listening and cuts every
//! connection, then listens again on the same port: what a server restart looks like from
//! the client's side, without restarting the shared server. (The reference server's tests
//! restart a private cluster for real.)

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use resumable_sse_core::{
    EventBuffer, FeedItem, LiveFeed, NewEvent, SessionId, SessionStore, StreamName,
};
use resumable_sse_store_postgres::testing::{self, temp_store};
use resumable_sse_store_postgres::{PostgresConfig, PostgresStore};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(20);

/// A TCP relay to the test server that can be taken down (connections refused, open ones
/// cut) and brought back on the same port.
struct Relay {
    addr: SocketAddr,
    upstream: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    async fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let relay = Relay {
            addr: listener.local_addr().expect("an address"),
            upstream,
            tasks: Arc::default(),
        };
        relay.serve(listener);
        relay
    }

    fn serve(&self, listener: TcpListener) {
        let tasks = self.tasks.clone();
        let upstream = self.upstream.clone();
        let acceptor = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().expect("the task list").push(pipe);
            }
        });
        self.tasks.lock().expect("the task list").push(acceptor);
    }

    /// Stops listening and cuts every relayed connection.
    fn down(&self) {
        let tasks: Vec<_> = match self.tasks.lock() {
            Ok(mut tasks) => tasks.drain(..).collect(),
            Err(_) => return,
        };
        for task in tasks {
            task.abort();
        }
    }

    /// Listens again on the same port.
    async fn up(&self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => return self.serve(listener),
                Err(err) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot bind {} again: {err}",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.down();
    }
}

/// `host:port` and the rest of the test server's URL.
fn split_url(url: &str) -> (String, String, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (user, rest) = rest.rsplit_once('@').map_or(("", rest), |(u, r)| (u, r));
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    let prefix = if user.is_empty() {
        format!("{scheme}://")
    } else {
        format!("{scheme}://{user}@")
    };
    (prefix, host, path.to_owned())
}

async fn next_item(feed: &mut LiveFeed) -> FeedItem {
    tokio::time::timeout(DEADLINE, feed.next())
        .await
        .expect("a feed item before the deadline")
        .expect("the feed does not end")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_fast_and_everything_recovers() {
    let direct = temp_store(PostgresConfig::default()).await;
    let (prefix, host, path) = split_url(&testing::url());
    let relay = Relay::start(host).await;
    let config = PostgresConfig::default()
        .with_acquire_timeout(Duration::from_secs(1))
        .with_schema(direct.schema().clone());
    let via_relay = PostgresStore::connect(&format!("{prefix}{}/{path}", relay.addr), config)
        .await
        .expect("connect through the relay");

    let stream = StreamName::new("outage").expect("a name");
    let mut feed = via_relay.live_feed();
    assert_eq!(next_item(&mut feed).await, FeedItem::Resync, "listening");
    via_relay
        .append(&stream, NewEvent::new("1"))
        .await
        .expect("append");
    assert!(matches!(next_item(&mut feed).await, FeedItem::Appended(n) if n.position == 1));

    relay.down();
    let started = Instant::now();
    let err = via_relay
        .append(&stream, NewEvent::new("lost"))
        .await
        .expect_err("PostgreSQL is unreachable");
    assert!(
        matches!(err, resumable_sse_core::Error::Unavailable(_)),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the append took {:?} to fail",
        started.elapsed()
    );
    for result in [
        via_relay.read(&stream, 0, 10).await.map(drop),
        via_relay.load(&SessionId::random()).await.map(drop),
        via_relay.ping().await,
    ] {
        assert!(
            matches!(result, Err(resumable_sse_core::Error::Unavailable(_))),
            "{result:?}"
        );
    }

    // Appended while the feed cannot listen: only the table knows.
    for data in ["2", "3"] {
        direct
            .append(&stream, NewEvent::new(data))
            .await
            .expect("append");
    }
    // The feed waits (it keeps trying); at most it says, once, that it lost its connection.
    let mut said_lost = false;
    match tokio::time::timeout(Duration::from_millis(1500), feed.next()).await {
        Err(_) => {}
        Ok(Some(FeedItem::Disconnected)) => said_lost = true,
        Ok(other) => panic!("the feed yielded {other:?} while the server was unreachable"),
    }

    relay.up().await;
    let mut item = next_item(&mut feed).await;
    if item == FeedItem::Disconnected && !said_lost {
        // The loss was noticed only now (the feed probes a quiet connection periodically).
        item = next_item(&mut feed).await;
    }
    assert_eq!(
        item,
        FeedItem::Resync,
        "the first item after the outage is a resync"
    );
    let page = via_relay.read(&stream, 1, 10).await.expect("read");
    assert_eq!(
        page.events.iter().map(|e| &*e.data).collect::<Vec<_>>(),
        ["2", "3"],
        "the catch-up read finds what was appended meanwhile"
    );
    let four = via_relay
        .append(&stream, NewEvent::new("4"))
        .await
        .expect("appends work again");
    assert_eq!(four.position, 4);
    assert!(matches!(next_item(&mut feed).await, FeedItem::Appended(n) if n.position == 4));
}

/// A server that takes no answer back (here: the tables locked by another transaction, so
/// every statement waits): operations fail with `Unavailable` within `operation_timeout`
/// instead of waiting for as long as the server does, and work again once it answers. An
/// append that timed out may still be stored when the server gets to it (it is not retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_answer_fails_within_the_operation_timeout() {
    use sqlx::Connection as _;

    let limit = Duration::from_millis(500);
    let store = temp_store(PostgresConfig::default().with_operation_timeout(limit)).await;
    let stream = StreamName::new("stuck").expect("a name");
    store
        .append(&stream, NewEvent::new("1"))
        .await
        .expect("append");

    let mut locker = testing::require_server(&testing::url()).await;
    let mut lock = locker.begin().await.expect("a transaction");
    let schema = store.schema().as_str().to_owned();
    for table in ["streams", "events", "sessions"] {
        // The schema name is the test's own (validated by `Schema`).
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "LOCK TABLE {schema}.{table} IN ACCESS EXCLUSIVE MODE"
        )))
        .execute(&mut *lock)
        .await
        .expect("lock");
    }
    for (what, started, result) in [
        (
            "append",
            Instant::now(),
            store
                .append(&stream, NewEvent::new("maybe"))
                .await
                .map(drop),
        ),
        (
            "read",
            Instant::now(),
            store.read(&stream, 0, 10).await.map(drop),
        ),
        (
            "session",
            Instant::now(),
            store.load(&SessionId::random()).await.map(drop),
        ),
    ] {
        let took = started.elapsed();
        assert!(
            matches!(result, Err(resumable_sse_core::Error::Unavailable(_))),
            "{what}: {result:?}"
        );
        // One attempt, or two for a read (idempotent), each bounded by the timeout.
        assert!(took < limit * 4, "{what} took {took:?} to fail");
    }

    lock.rollback().await.expect("rollback");
    let deadline = Instant::now() + DEADLINE;
    let after = loop {
        match store.append(&stream, NewEvent::new("after")).await {
            Ok(appended) => break appended,
            Err(err) => assert!(
                Instant::now() < deadline,
                "appends do not work again: {err:?}"
            ),
        }
    };
    let page = store.read(&stream, 0, 10).await.expect("read");
    let data: Vec<&str> = page.events.iter().map(|e| &*e.data).collect();
    assert!(
        data == ["1", "after"] || data == ["1", "maybe", "after"],
        "in order, the timed-out append stored at most once: {data:?}"
    );
    assert_eq!(after.position, page.head);
}
