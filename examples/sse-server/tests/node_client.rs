//! An independent client proves that `sse-server` sends a `reset` only when something was
//! lost: Node's `eventsource` npm package (`clients/node-check`), which this workspace did not
//! write, keeps no cookies and never sees the `x-sse-session` header, so every reconnect comes
//! back without a session token, with only its `Last-Event-ID`.
//!
//! For each backend (memory, Redis, PostgreSQL; one test each, so they run in parallel) the
//! real binary runs on a free port with its default settings, and [`CLIENTS`] EventSources
//! reach it through a TCP proxy that plays the network. While [`EVENTS`] numbered events are
//! published to a stream of a random name (straight to the server, not through the proxy),
//! the proxy cuts every open connection [`CUTS`] times at random moments (a seeded RNG; every
//! cut lands on at least one open connection: while it connects, replays or reads live), and
//! some cuts are followed by a spell of refusing new connections. The clients reconnect on
//! their own, as the server's `retry:` asks (2 s). Once publishing is done the test waits,
//! with a deadline, until every client has every event, and checks that:
//!
//! - every client got every event exactly once, in order: nothing lost, duplicated or
//!   reordered;
//! - no client saw a `reset` event, and no `connected` event said `reset`;
//! - every reconnect was answered in a new session (the client sent no token: no request
//!   carried a cookie or `x-sse-session`), resumed from its `Last-Event-ID`.
//!
//! A second test sends bytes that are not text in `Last-Event-ID` with Node's own `http`
//! module: status 200 and a `reset` with reason `invalid_id`.
//!
//! Needs Node.js 20 or later and the client's packages (`npm ci --prefix clients/node-check`,
//! which `scripts/test` runs when they are missing), the shared Redis at 127.0.0.1:6379 and
//! the shared PostgreSQL (`SSE_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`). Without them the tests fail, saying how to get
//! them: they never skip.

mod support;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use resumable_sse_store_postgres::testing as postgres;
use resumable_sse_store_redis::testing as redis;
use serde_json::{Value, json};
use support::node::{Clients, Node, Seen};
use support::proxy::Proxy;
use support::{Context, Result, Server, tail};

/// EventSources, each its own client.
const CLIENTS: usize = 10;
/// Events published, numbered from 1.
const EVENTS: u64 = 400;
/// Cuts of every open connection.
const CUTS: usize = 100;
/// Every this many cuts, the proxy refuses new connections for a while after the cut.
const REFUSE_EVERY: usize = 20;
/// Longest a connection attempt waits before it starts (a network's latency), so that the
/// clients a cut hits together do not all come back together.
const LATENCY: Duration = Duration::from_millis(500);
/// Longest wait, once a connection is open, before the cut.
const MAX_HOLD_MS: u64 = 250;
/// Longest pause between two publishes.
const MAX_PUBLISH_GAP_MS: u64 = 30;
const SEED: u64 = 0x5EED_0DE5;
/// How long one expected thing may take (a client's first connection, the next open
/// connection to cut, the catch-up after the last cut).
const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy)]
enum Backend {
    Memory,
    Redis,
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Memory => "memory",
            Backend::Redis => "redis",
            Backend::Postgres => "postgres",
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cookieless_clients_lose_nothing_and_see_no_reset() {
    cookieless_clients_lose_nothing_and_see_no_reset(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cookieless_clients_lose_nothing_and_see_no_reset() {
    cookieless_clients_lose_nothing_and_see_no_reset(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cookieless_clients_lose_nothing_and_see_no_reset() {
    cookieless_clients_lose_nothing_and_see_no_reset(Backend::Postgres).await;
}

/// Bytes that are not text in `Last-Event-ID`, sent by Node's `http` module: 200, the
/// `connected` event, then `reset` with reason `invalid_id`. (The HTTP suite checks this on
/// every backend; here a client of another language does it against the binary.)
#[test]
fn bad_bytes_in_last_event_id_reset_with_invalid_id() {
    let node = Node::locate();
    let server = Server::start("15s").unwrap_or_else(|err| panic!("{err}"));
    let url = server.url("/events?stream=news");
    let out = node
        .check(&["bad-id", &url])
        .output()
        .unwrap_or_else(|err| panic!("cannot run node: {err}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node check.mjs bad-id failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_str(stdout.trim()).expect("a JSON line");
    assert_eq!(answer["status"], 200, "{answer}");
    let events = answer["events"].as_array().expect("events");
    assert_eq!(events.len(), 2, "{answer}");
    assert_eq!(events[0]["event"], "connected", "{answer}");
    let connected: Value =
        serde_json::from_str(events[0]["data"].as_str().unwrap_or_default()).expect("JSON");
    assert_eq!(connected["reset"], true, "{connected}");
    assert_eq!(events[1]["event"], "reset", "{answer}");
    let reset: Value =
        serde_json::from_str(events[1]["data"].as_str().unwrap_or_default()).expect("JSON");
    assert_eq!(reset["reason"], "invalid_id", "{reset}");
    assert!(
        reset["streams"]
            .as_array()
            .is_some_and(|s| s.contains(&json!("news"))),
        "{reset}"
    );
}

async fn cookieless_clients_lose_nothing_and_see_no_reset(backend: Backend) {
    let started = Instant::now();
    let node = Node::locate();
    // Declared before the server, so dropped after it.
    let (store, _schema) = store(backend).await;
    let mut args = vec!["--listen", "127.0.0.1:0"];
    if let Some(store) = &store {
        args.extend(["--store", store.as_str()]);
    }
    let server = Arc::new(Server::start_with(&args).unwrap_or_else(|err| panic!("{err}")));
    let upstream = server.addr.parse().expect("the server's address");
    let proxy = Proxy::start(upstream)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let stream = format!("node-{}", resumable_sse_core::SessionId::random());
    let url = format!("http://{}/events?stream={stream}", proxy.addr);
    let mut clients = Clients::start(&node, &url, CLIENTS, LATENCY)
        .unwrap_or_else(|err| panic!("{err}\n{}", tail(&server.log, 30)));

    let outcome = run(backend, &server, &proxy, &mut clients, &stream).await;
    let figures = match outcome {
        Ok(figures) => figures,
        Err(err) => panic!(
            "{backend}: {err}\n\nclients: {}\nproxy: {} open, {} refused, {} GET /events relayed\
             \n--- node output ---\n{}\n--- sse-server output ---\n{}",
            summary(&clients.seen()),
            proxy.open(),
            proxy.refused(),
            proxy.event_requests().len(),
            tail(&clients.log, 30),
            tail(&server.log, 40),
        ),
    };
    eprintln!(
        "{backend}: {CLIENTS} clients, {EVENTS} events, {CUTS} cuts ({} with refusal, {} \
         connections refused), {} reconnects, {} client errors, 0 resets, in {:?}",
        CUTS / REFUSE_EVERY,
        figures.refused,
        figures.reconnects,
        figures.errors,
        started.elapsed(),
    );
}

/// The store argument for `backend` (none: the default, memory), and for PostgreSQL a
/// schema that is dropped with its guard.
async fn store(backend: Backend) -> (Option<String>, Option<SchemaGuard>) {
    match backend {
        Backend::Memory => (None, None),
        Backend::Redis => {
            assert!(
                redis::answers(6379),
                "this test needs Redis on 127.0.0.1:6379; {}",
                redis::HOW_TO_START
            );
            (Some("redis://127.0.0.1:6379".to_owned()), None)
        }
        Backend::Postgres => {
            let url = postgres::url();
            drop(postgres::require_server(&url).await);
            let schema = postgres::fresh_schema();
            let separator = if url.contains('?') { '&' } else { '?' };
            let store = format!("{url}{separator}sse_schema={schema}");
            (Some(store), Some(SchemaGuard { url, schema }))
        }
    }
}

/// Drops its PostgreSQL schema when dropped.
struct SchemaGuard {
    url: String,
    schema: resumable_sse_store_postgres::Schema,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        postgres::drop_schema_blocking(&self.url, &self.schema);
    }
}

/// What a run measured besides what it checks.
struct Figures {
    reconnects: usize,
    errors: usize,
    refused: usize,
}

/// `ensure!(condition, "format", args…)`: an `Err` with the message when the condition fails.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

async fn run(
    backend: Backend,
    server: &Arc<Server>,
    proxy: &Proxy,
    clients: &mut Clients,
    stream: &str,
) -> Result<Figures> {
    // Every client takes its first cursor before anything is published: a connection
    // without `Last-Event-ID` starts at the head, so earlier events are not its to miss.
    clients
        .wait_until("every client connected", WAIT, |seen| {
            seen.iter().all(|s| !s.connected.is_empty())
        })
        .await?;

    // The publisher is paced by the cuts made: event i goes out once (i - 1) × CUTS / EVENTS
    // cuts have happened, so publishing spans the whole cutting period whatever the
    // machine's speed.
    let (made_tx, made_rx) = tokio::sync::watch::channel(0usize);
    let mut publisher = tokio::spawn(publish_all(
        server.clone(),
        stream.to_owned(),
        made_rx,
        SEED ^ backend as u64,
    ));

    let mut rng = StdRng::seed_from_u64(SEED ^ backend as u64);
    for cut in 1..=CUTS {
        let deadline = Instant::now() + WAIT;
        while proxy.open() == 0 {
            ensure!(
                Instant::now() < deadline,
                "no client connection open to cut within {WAIT:?} (cut {cut})"
            );
            // It ends only after the last cut, so ending now means it failed.
            if publisher.is_finished() {
                let outcome = (&mut publisher).await;
                return Err(format!("the publisher stopped early: {outcome:?}"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..=MAX_HOLD_MS))).await;
        if cut % REFUSE_EVERY == 0 {
            proxy.refuse(true);
            proxy.cut_all();
            tokio::time::sleep(Duration::from_millis(rng.random_range(200..=1500))).await;
            proxy.refuse(false);
        } else {
            proxy.cut_all();
        }
        made_tx.send_replace(cut);
    }
    publisher
        .await
        .ctx("the publisher task")?
        .map_err(|err| format!("publishing: {err}"))?;

    // Until every client has every event, or one of them shows what it should never show.
    let caught_up = clients
        .wait_until("every client has every event", WAIT, |seen| {
            seen.iter().any(|s| check_client(0, s, false).is_err())
                || seen.iter().all(|s| s.messages.len() as u64 >= EVENTS)
        })
        .await;
    let seen = clients.seen();
    for (k, client) in seen.iter().enumerate() {
        check_client(k, client, false)?;
    }
    caught_up?;
    for (k, client) in seen.iter().enumerate() {
        check_client(k, client, true)?;
    }

    // Every request came without a token, and every reconnect that got an answer came
    // with the Last-Event-ID from before.
    let requests = proxy.event_requests();
    for request in &requests {
        let lower = request.to_ascii_lowercase();
        ensure!(
            !lower.contains("\r\ncookie:") && !lower.contains("\r\nx-sse-session:"),
            "a request carried a session token:\n{request}"
        );
    }
    let reconnects: usize = seen.iter().map(|s| s.connected.len() - 1).sum();
    let with_id = requests
        .iter()
        .filter(|r| r.to_ascii_lowercase().contains("\r\nlast-event-id:"))
        .count();
    ensure!(
        with_id >= reconnects,
        "{reconnects} reconnects were answered but only {with_id} requests carried a Last-Event-ID"
    );
    Ok(Figures {
        reconnects,
        errors: seen.iter().map(|s| s.errors).sum(),
        refused: proxy.refused(),
    })
}

/// Publishes events 1..=EVENTS as plain messages, paced by the cuts `made`.
async fn publish_all(
    server: Arc<Server>,
    stream: String,
    mut made: tokio::sync::watch::Receiver<usize>,
    seed: u64,
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed.rotate_left(17));
    let client = reqwest::Client::new();
    let url = server.url("/publish");
    for i in 1..=EVENTS {
        let due = |m: &usize| *m >= CUTS || (*m as u64) * EVENTS >= (i - 1) * CUTS as u64;
        made.wait_for(due).await.ctx("the cut counter")?;
        let response = client
            .post(&url)
            .json(&json!({"stream": stream, "data": i.to_string()}))
            .send()
            .await
            .ctx(&format!("publishing event {i}"))?;
        let status = response.status();
        ensure!(
            status == 200,
            "publishing event {i}: {status} {}",
            response.text().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(
            rng.random_range(0..=MAX_PUBLISH_GAP_MS),
        ))
        .await;
    }
    Ok(())
}

/// Events once each, in order (all of them when `complete`); no reset; a new session on every
/// connection, each reconnect resumed.
fn check_client(k: usize, seen: &Seen, complete: bool) -> Result<()> {
    ensure!(
        seen.closed.is_none(),
        "client {k} gave up: {}",
        seen.closed.as_deref().unwrap_or_default()
    );
    ensure!(
        seen.resets.is_empty(),
        "client {k} was reset after {} connections: {:?}",
        seen.connected.len(),
        seen.resets
    );
    for (i, data) in seen.messages.iter().enumerate() {
        let expected = (i + 1).to_string();
        ensure!(
            *data == expected,
            "client {k}: event #{} is {data:?}, expected {expected:?} (lost, duplicated or \
             reordered); around it: {:?}",
            i + 1,
            &seen.messages[i.saturating_sub(3)..(i + 4).min(seen.messages.len())]
        );
    }
    ensure!(
        !complete || seen.messages.len() as u64 == EVENTS,
        "client {k} got {} of {EVENTS} events",
        seen.messages.len()
    );
    let mut sessions = Vec::new();
    for (i, info) in seen.connected.iter().enumerate() {
        ensure!(
            info["reset"] == false,
            "client {k}, connection {}: {info}",
            i + 1
        );
        ensure!(
            i == 0 || info["resumed"] == true,
            "client {k}, connection {} did not resume: {info}",
            i + 1
        );
        let session = info["session"].as_str().unwrap_or_default().to_owned();
        ensure!(
            !sessions.contains(&session),
            "client {k}, connection {} came back in session {session}: it sent no token",
            i + 1
        );
        sessions.push(session);
    }
    Ok(())
}

/// One line per client: connections, events, resets, errors.
fn summary(seen: &[Seen]) -> String {
    seen.iter()
        .enumerate()
        .map(|(k, s)| {
            format!(
                "\n  client {k}: {} connections, {} events (last {:?}), {} resets, {} errors{}",
                s.connected.len(),
                s.messages.len(),
                s.messages.last(),
                s.resets.len(),
                s.errors,
                s.closed
                    .as_deref()
                    .map(|c| format!(", gave up: {c}"))
                    .unwrap_or_default(),
            )
        })
        .collect()
}
