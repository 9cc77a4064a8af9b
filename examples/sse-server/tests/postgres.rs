//! The reference server on PostgreSQL, as separate processes with real SSE clients over HTTP.
//!
//! - Two `sse-server` processes on one database: an event published on A reaches B's live
//!   clients; a client hopping from A to B with its `Last-Event-ID` and session token gets
//!   exactly the events it missed; sessions are shared.
//! - A PostgreSQL restart: a private cluster this test creates with `initdb` and `pg_ctl` in
//!   a temporary directory, on a port of its own. While it is down `POST /publish` answers
//!   503 with a JSON error and connected clients stay connected; once it is back the LISTEN
//!   connection recovers and catches up, and clients resume without loss.
//!
//! Needs PostgreSQL: the shared test server (`SSE_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`) and its binaries (`PG_BIN`, by default the
//! newest `/usr/lib/postgresql/*/bin`). Without them the tests fail, saying how to get them:
//! they never skip.

mod support;

use std::time::{Duration, Instant};

use resumable_sse_axum::testing::{SseStream, connect};
use resumable_sse_core::codec::{Item, ParsedEvent};
use serde_json::{Value, json};
use support::postgres::{Cluster, Schema};
use support::{Server, tail};

/// The signing key both servers share, so a session token from one is genuine on the other.
const KEY: &str = "postgres-test-signing-key-0123456789abcdef";
/// How long one expected thing may take.
const WAIT: Duration = Duration::from_secs(20);

fn start(store: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--listen", "127.0.0.1:0", "--store", store, "--secret", KEY];
    args.extend_from_slice(extra);
    Server::start_with(&args).unwrap_or_else(|err| panic!("{err}"))
}

async fn publish(server: &Server, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url("/publish"))
        .timeout(WAIT)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|err| panic!("POST /publish: {err}\n{}", tail(&server.log, 30)));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn publish_ok(server: &Server, stream: &str, data: &str) -> u64 {
    let (status, answer) = publish(server, json!({"stream": stream, "data": data})).await;
    assert_eq!(
        status,
        200,
        "publishing {data:?}: {answer}\n{}",
        tail(&server.log, 30)
    );
    answer["position"].as_u64().expect("a position")
}

/// An SSE client whose `connected` frame has been read.
struct Client {
    stream: SseStream,
    info: Value,
    token: String,
    /// The id of the last event read (what a browser sends back as `Last-Event-ID`).
    last_id: String,
}

impl Client {
    async fn open(server: &Server, path: &str, token: Option<&str>, last_id: Option<&str>) -> Self {
        let mut headers = Vec::new();
        if let Some(token) = token {
            headers.push(("x-sse-session", token));
        }
        if let Some(id) = last_id {
            headers.push(("last-event-id", id));
        }
        let mut stream = connect(&server.url(path), &headers).await;
        assert_eq!(stream.status, 200, "GET {path}");
        let connected = stream
            .next_event(WAIT)
            .await
            .unwrap_or_else(|| panic!("no connected event\n{}", tail(&server.log, 30)));
        assert_eq!(connected.event, "connected", "{connected:?}");
        Client {
            token: stream.token().expect("a session token"),
            info: serde_json::from_str(&connected.data).expect("JSON"),
            last_id: connected.last_event_id,
            stream,
        }
    }

    fn session(&self) -> String {
        self.info["session"].as_str().expect("a session").to_owned()
    }

    async fn next(&mut self) -> ParsedEvent {
        let event = self.stream.next_event(WAIT).await.unwrap_or_else(|| {
            panic!(
                "no event within {WAIT:?} (response ended: {})",
                self.stream.ended()
            )
        });
        self.last_id = event.last_event_id.clone();
        event
    }

    /// The data of the next `n` events, which must be plain messages.
    async fn messages(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let event = self.next().await;
            assert_eq!(event.event, "message", "{event:?}");
            out.push(event.data);
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_database() {
    let schema = Schema::new();
    let url = schema.store_url();
    let a = start(&url, &[]);
    let b = start(&url, &[]);

    // Published on A, delivered live to B's client.
    let mut on_b = Client::open(&b, "/events?stream=news", None, None).await;
    publish_ok(&a, "news", "from-a").await;
    assert_eq!(on_b.messages(1).await, ["from-a"]);

    // A client reads on A, goes away, and comes back on B with its Last-Event-ID and token.
    let mut hopper = Client::open(&a, "/events?stream=news", None, None).await;
    for data in ["a1", "a2"] {
        publish_ok(&a, "news", data).await;
    }
    assert_eq!(hopper.messages(2).await, ["a1", "a2"]);
    let session = hopper.session();
    let (token, last_id) = (hopper.token.clone(), hopper.last_id.clone());
    drop(hopper);
    let missed: Vec<String> = (1..=3).map(|i| format!("missed-{i}")).collect();
    for (i, data) in missed.iter().enumerate() {
        // From both servers: the log is one.
        let via = if i % 2 == 0 { &a } else { &b };
        publish_ok(via, "news", data).await;
    }
    let mut back = Client::open(&b, "/events?stream=news", Some(&token), Some(&last_id)).await;
    assert_eq!(back.session(), session, "B knows the session A created");
    assert_eq!(back.info["resumed"], true, "{}", back.info);
    assert_eq!(back.info["reset"], false, "{}", back.info);
    // `replay` counts up to the head as B knew it at connect time, which may not yet include
    // an append made through A a moment before (`ConnectedInfo::replay`): what must be exact
    // is what arrives.
    let replay = back.info["replay"].as_u64().unwrap_or(u64::MAX);
    assert!(replay <= 3, "{}", back.info);
    assert_eq!(back.messages(3).await, missed, "exactly the missed events");
    publish_ok(&a, "news", "live").await;
    assert_eq!(back.messages(1).await, ["live"], "then live, nothing twice");
    assert_eq!(
        on_b.messages(6).await,
        ["a1", "a2", "missed-1", "missed-2", "missed-3", "live"]
    );

    // A message for the session, sent through A, reaches its connection on B.
    let (status, answer) = publish(&a, json!({"session": session, "data": "for-you"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(back.messages(1).await, ["for-you"]);
    // And a session created on B is known to A.
    let fresh = Client::open(&b, "/events?stream=news", None, None).await;
    let (status, answer) = publish(&a, json!({"session": fresh.session(), "data": "hi"})).await;
    assert_eq!(status, 200, "{answer}");
}

/// Reads items for `span`: the response must stay open, carrying only heartbeats.
async fn stays_connected(client: &mut Client, span: Duration) -> usize {
    let end = Instant::now() + span;
    let mut heartbeats = 0;
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        match client.stream.next_item(left).await {
            Some(Item::Comment(_)) => heartbeats += 1,
            Some(Item::Retry(_)) => {}
            Some(Item::Event(event)) => panic!("an event while PostgreSQL is down: {event:?}"),
            None => assert!(!client.stream.ended(), "the server ended the response"),
        }
    }
    heartbeats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_loses_nothing() {
    let cluster = Cluster::init();
    cluster.start();
    let server = start(&cluster.url(), &["--heartbeat", "500ms"]);

    let mut live = Client::open(&server, "/events?stream=news", None, None).await;
    let mut away = Client::open(&server, "/events?stream=news", None, None).await;
    for data in ["e1", "e2"] {
        publish_ok(&server, "news", data).await;
    }
    assert_eq!(live.messages(2).await, ["e1", "e2"]);
    assert_eq!(away.messages(2).await, ["e1", "e2"]);
    let (away_token, away_id) = (away.token.clone(), away.last_id.clone());
    drop(away);

    cluster.stop();
    let started = Instant::now();
    let (status, answer) = publish(&server, json!({"stream": "news", "data": "lost"})).await;
    assert_eq!(status, 503, "publishing while PostgreSQL is down: {answer}");
    assert_eq!(answer["error"], "store_unavailable", "{answer}");
    assert!(
        !answer["message"].as_str().unwrap_or_default().is_empty(),
        "a JSON error: {answer}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the 503 took {:?}",
        started.elapsed()
    );
    let heartbeats = stays_connected(&mut live, Duration::from_secs(3)).await;
    assert!(
        heartbeats >= 2,
        "{heartbeats} heartbeats in 3 s while PostgreSQL is down"
    );

    cluster.start();
    // Right away, before the server's LISTEN connection is back: only a catch-up from the
    // table can deliver these.
    let deadline = Instant::now() + WAIT;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (status, answer) = publish(&server, json!({"stream": "news", "data": "e3"})).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{answer}");
        assert!(
            Instant::now() < deadline,
            "publishing still fails {WAIT:?} after PostgreSQL is back: {answer}\n{}",
            tail(&server.log, 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for data in ["e4", "e5"] {
        publish_ok(&server, "news", data).await;
    }
    assert_eq!(
        live.messages(3).await,
        ["e3", "e4", "e5"],
        "the connected client gets every event once PostgreSQL is back ({attempts} publish attempts)"
    );
    let mut back = Client::open(
        &server,
        "/events?stream=news",
        Some(&away_token),
        Some(&away_id),
    )
    .await;
    assert_eq!(back.info["reset"], false, "{}", back.info);
    // `replay` counts up to the head as B knew it at connect time, which may not yet include
    // an append made through A a moment before (`ConnectedInfo::replay`): what must be exact
    // is what arrives.
    let replay = back.info["replay"].as_u64().unwrap_or(u64::MAX);
    assert!(replay <= 3, "{}", back.info);
    assert_eq!(
        back.messages(3).await,
        ["e3", "e4", "e5"],
        "exactly the missed events"
    );
    publish_ok(&server, "news", "e6").await;
    assert_eq!(live.messages(1).await, ["e6"]);
    assert_eq!(back.messages(1).await, ["e6"]);
    let log = tail(&server.log, 200);
    assert!(
        log.contains("the live feed"),
        "the server logs the live feed's outage and recovery:\n{log}"
    );
}

/// The store circuit breaker on PostgreSQL (a private cluster stopped, then started): once
/// the breaker is open every publish is a 503 with `Retry-After` within 100 ms, event streams
/// get 200 with a `retry:` and a `refused` event, and a connected client stays connected. Once
/// PostgreSQL is back, publishing resumes and nothing is lost: the connected client gets every
/// event, a client that was away resumes without a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_fails_fast_while_postgres_is_down_and_nothing_is_lost() {
    use support::breaker;
    let cluster = Cluster::init();
    cluster.start();
    let server = start(
        &cluster.url(),
        &[
            "--heartbeat",
            "500ms",
            "--breaker-failures",
            "3",
            "--breaker-probe",
            "200ms",
        ],
    );
    let mut live = Client::open(&server, "/events?stream=news", None, None).await;
    let mut away = Client::open(&server, "/events?stream=news", None, None).await;
    publish_ok(&server, "news", "e1").await;
    assert_eq!(live.messages(1).await, ["e1"]);
    assert_eq!(away.messages(1).await, ["e1"]);
    let (away_token, away_id) = (away.token.clone(), away.last_id.clone());
    drop(away);

    cluster.stop();
    let http = reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("a client");
    let (failed, slowest) = breaker::until_open(&http, &server, "news", WAIT * 2).await;
    assert!(failed >= 3, "opened after {failed} failures, not 3");
    let (p50, max) = breaker::fast_refusals(&http, &server, "news", 200).await;
    eprintln!(
        "postgres down: {failed} publishes failed by the store (slowest {slowest:?}); \
         breaker open: 200 publishes, p50 {p50:?}, max {max:?}"
    );
    breaker::stream_is_refused(&server, "news", None).await;
    breaker::stream_is_refused(&server, "news", Some(&away_token)).await;
    let heartbeats = stays_connected(&mut live, Duration::from_secs(1)).await;
    assert!(
        heartbeats >= 1,
        "{heartbeats} heartbeats while PostgreSQL is down"
    );

    cluster.start();
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, answer) = publish(&server, json!({"stream": "news", "data": "e2"})).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{answer}");
        assert!(
            Instant::now() < deadline,
            "publishing still fails {WAIT:?} after PostgreSQL is back: {answer}\n{}",
            tail(&server.log, 30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish_ok(&server, "news", "e3").await;
    assert_eq!(
        live.messages(2).await,
        ["e2", "e3"],
        "nothing lost, no reset"
    );
    let mut back = Client::open(
        &server,
        "/events?stream=news",
        Some(&away_token),
        Some(&away_id),
    )
    .await;
    assert_eq!(back.info["reset"], false, "{}", back.info);
    assert_eq!(back.messages(2).await, ["e2", "e3"]);
    publish_ok(&server, "news", "e4").await;
    assert_eq!(live.messages(1).await, ["e4"]);
    assert_eq!(back.messages(1).await, ["e4"]);
}

/// Events older than `--max-age` are gone: a client that was behind them gets a `reset`
/// (`retention`); one that had read them all lost nothing and resumes without one, on an
/// instance whose hot window is empty too (the database alone answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aged_out_events_reset_only_the_clients_that_missed_them() {
    let schema = Schema::new();
    let url = schema.store_url();
    let server = start(&url, &["--max-age", "1s"]);
    let path = "/events?stream=aging";
    let behind = Client::open(&server, path, None, None).await;
    let (behind_id, behind_token) = (behind.last_id.clone(), behind.token.clone());
    drop(behind);
    let mut reader = Client::open(&server, path, None, None).await;
    // Every event is written after this: none can age out less than `--max-age` after it.
    let published = Instant::now();
    for i in 1..=5 {
        publish_ok(&server, "aging", &format!("old {i}")).await;
    }
    assert_eq!(reader.messages(5).await.len(), 5);
    let (read_id, read_token) = (reader.last_id.clone(), reader.token.clone());
    drop(reader);

    // The client that was behind comes back once the events have aged out.
    let deadline = published + WAIT;
    let mut back = loop {
        let back = Client::open(&server, path, Some(&behind_token), Some(&behind_id)).await;
        let replay = back.info["replay"].as_u64().expect("replay");
        if back.info["reset"] == true {
            // Events age out one by one: a reset for those gone, the rest replayed.
            if replay == 0 {
                break back;
            }
            assert!(replay < 5, "{}", back.info);
        } else {
            assert_eq!(replay, 5, "{}", back.info);
        }
        assert!(Instant::now() < deadline, "the events did not age out");
        drop(back);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        published.elapsed() >= Duration::from_millis(900),
        "aged out too early"
    );
    assert_eq!(back.info["replay"], 0, "{}", back.info);
    let reset = back.next().await;
    assert_eq!(reset.event, "reset");
    let reset: Value = serde_json::from_str(&reset.data).expect("JSON");
    assert_eq!(reset["reason"], "retention", "{reset}");

    let other = start(&url, &["--max-age", "1s"]);
    for server in [&server, &other] {
        let quiet = Client::open(server, path, Some(&read_token), Some(&read_id)).await;
        assert_eq!(quiet.info["reset"], false, "{}", quiet.info);
        assert_eq!(quiet.info["resumed"], true, "{}", quiet.info);
        assert_eq!(quiet.info["replay"], 0, "{}", quiet.info);
    }
    let mut quiet = Client::open(&other, path, Some(&read_token), Some(&read_id)).await;
    assert_eq!(
        publish_ok(&server, "aging", "fresh").await,
        6,
        "the same epoch goes on"
    );
    assert_eq!(back.messages(1).await, ["fresh"]);
    assert_eq!(quiet.messages(1).await, ["fresh"], "no reset before it");
}
