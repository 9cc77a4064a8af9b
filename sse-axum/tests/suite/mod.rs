//! The HTTP-level suite of sse-axum, written once and run against every backend.
//!
//! Every test serves [`resumable_sse_axum::router`] on `127.0.0.1:0` and reads it with the real SSE
//! client of [`resumable_sse_axum::testing`] (reqwest plus the one parser of `sse-core`), so it sees
//! exactly the bytes a browser would.
//!
//! A backend is a function from a [`Retention`] to fresh, independent [`Stores`]. Each call
//! must return a new store: a second call has other epochs and no sessions, which is how the
//! suite simulates a server restart. A backend's test file is `mod suite;` and one macro call:
//!
//! ```ignore
//! mod suite;
//!
//! suite::http_suite!(|retention| async move { my_backend_stores(retention).await });
//! ```
//!
//! No test relies on a sleep for correctness: every wait is on a condition with a deadline
//! (an event within a timeout, or a polled condition in [`wait_for`]). The only other sleeps
//! shape the load (the chaos test's random cut delays, a publisher's pacing) and decide
//! nothing. No test bounds how late something may be on real sockets (a loaded machine
//! decides that); the heartbeat test bounds only how early, which causality fixes.
//!
//! A test that exposes a library bug stays in the suite, marked in the list of
//! [`http_suite!`] with `#[ignore = "BUG: …"]` until the bug is fixed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use resumable_sse_axum::testing::{SseStream, TestServer, connect};
use resumable_sse_axum::{SseLayer, Stores};
use resumable_sse_core::codec::{Item, ParsedEvent};
use resumable_sse_core::{Config, Hub, Retention, SessionId, SessionRecord, TokenKeys};
use serde_json::{Value, json};

/// Expands to one `#[tokio::test]` per suite test, each over stores from `$setup`, a
/// function (usually a closure) `Fn(Retention) -> impl Future<Output = resumable_sse_axum::Stores>`
/// that returns fresh, independent stores on every call.
macro_rules! http_suite {
    ($setup:expr) => {
        $crate::suite::__http_tests!($setup;
            healthz_answers,
            resume_after_disconnect,
            chaos_random_cuts_lose_nothing,
            clients_join_a_busy_stream,
            clients_join_while_the_live_feed_lags,
            reset_when_cursor_is_behind_retention,
            reset_when_epoch_changed,
            reset_on_garbage_ids,
            session_survives_reconnects,
            session_cursor_resumes_without_last_event_id,
            session_expires_after_ttl,
            session_lives_while_connected,
            tokenless_client_resumes_public_streams,
            tokenless_client_is_told_of_missed_private_messages,
            bad_bytes_in_last_event_id_get_a_reset,
            empty_session_header_does_not_hide_the_cookie,
            forged_and_tampered_tokens_get_a_fresh_session,
            resume_from_the_connected_frame,
            invalid_requests_get_4xx,
            stalled_reader_holds_up_nobody,
            heartbeats_arrive_at_the_interval,
            broadcast_is_the_default_stream,
            json_data_arrives_as_compact_text,
            line_breaks_arrive_as_lf,
            duplicate_publisher_id_is_delivered_once,
            refused_requests_create_no_session,
        );
    };
}

/// The expansion of [`http_suite!`]: one multi-threaded tokio test per name.
macro_rules! __http_tests {
    ($setup:expr; $( $(#[$attr:meta])* $name:ident ),* $(,)?) => {
        $(
            $(#[$attr])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                // Once through `axum::serve` (hyper serves the SSE response), once through
                // `resumable_sse_axum::serve` (its fast path does).
                $crate::suite::$name($crate::suite::Backend::new($setup)).await;
                $crate::suite::$name($crate::suite::Backend::new($setup).fast()).await;
            }
        )*
    };
}

pub(crate) use {__http_tests, http_suite};

type StoresFuture = Pin<Box<dyn Future<Output = Stores>>>;

/// A backend under test: makes fresh, independent stores for a retention.
pub(crate) struct Backend {
    make: Box<dyn Fn(Retention) -> StoresFuture>,
    /// Serve with `resumable_sse_axum::serve` instead of `axum::serve`.
    fast: bool,
}

impl Backend {
    /// Wraps a setup function (a closure's argument type is inferred from this bound).
    pub(crate) fn new<S, F>(setup: S) -> Self
    where
        S: Fn(Retention) -> F + 'static,
        F: Future<Output = Stores> + 'static,
    {
        Backend {
            make: Box::new(move |retention| Box::pin(setup(retention))),
            fast: false,
        }
    }

    /// The same backend served through `resumable_sse_axum::serve`'s fast path.
    pub(crate) fn fast(mut self) -> Self {
        self.fast = true;
        self
    }

    async fn stores(&self, retention: Retention) -> Stores {
        (self.make)(retention).await
    }
}

/// Held by the load-heavy tests so that they do not run at the same time: the stalled-reader
/// test measures the process's memory, which another heavy test would disturb. (Tests of one
/// binary share a process and run two at a time; each has its own runtime, and a tokio mutex
/// works across runtimes.)
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long one expected event may take. Generous: a loaded CI machine with two cores.
const WAIT: Duration = Duration::from_secs(10);

/// Fixed token keys, shared by every server of a test so that a token outlives a "restart".
fn keys() -> TokenKeys {
    TokenKeys::new([b"http-suite-signing-key-0123456789abcdef".as_slice()]).expect("a valid key")
}

fn retention(max_len: usize) -> Retention {
    Retention::new(max_len, Retention::default().max_age())
}

/// A hub over some stores, served on port 0.
struct Server {
    hub: Hub,
    http: TestServer,
}

impl Server {
    async fn start(backend: &Backend, retention: Retention, config: Config) -> Server {
        Server::over(backend.stores(retention).await, config, backend.fast).await
    }

    async fn over(stores: Stores, config: Config, fast: bool) -> Server {
        let hub = Hub::builder(stores.buffer, stores.sessions)
            .config(config)
            .keys(keys())
            .build();
        let layer = SseLayer::new(hub.clone());
        let http = if fast {
            TestServer::start_fast(resumable_sse_axum::router(layer)).await
        } else {
            TestServer::start(resumable_sse_axum::router(layer)).await
        };
        Server { hub, http }
    }

    fn url(&self, path: &str) -> String {
        self.http.url(path)
    }

    /// `POST /publish`; returns the status and the JSON answer.
    async fn publish(&self, body: Value) -> (u16, Value) {
        let (status, json) = resumable_sse_axum::testing::publish(&self.http, body).await;
        (status.as_u16(), json)
    }

    /// Publishes `data` to `stream` and insists on success; returns the position.
    async fn publish_ok(&self, stream: &str, data: &str) -> u64 {
        let (status, answer) = self.publish(json!({"stream": stream, "data": data})).await;
        assert_eq!(status, 200, "publishing {data:?} to {stream}: {answer}");
        answer["position"].as_u64().expect("a position")
    }

    /// Opens `path` with an optional session token (`x-sse-session`) and `Last-Event-ID`,
    /// and reads the `connected` frame.
    async fn open(&self, path: &str, token: Option<&str>, last_id: Option<&str>) -> Opened {
        let mut headers = Vec::new();
        if let Some(token) = token {
            headers.push(("x-sse-session", token));
        }
        if let Some(id) = last_id {
            headers.push(("last-event-id", id));
        }
        self.open_with(path, &headers).await
    }

    /// A client of `news` that read one event, `data`, published after it connected, then
    /// disconnected.
    async fn departed(&self, data: &str) -> Departed {
        let mut opened = self.open("/events?stream=news", None, None).await;
        self.publish_ok("news", data).await;
        let (_, last_id) = opened.messages(1).await;
        Departed {
            session: opened.session,
            token: opened.token,
            last_id,
        }
    }

    /// Opens `news` again as `client`, with its session token and `Last-Event-ID`.
    async fn come_back(&self, client: &Departed) -> Opened {
        self.open(
            "/events?stream=news",
            Some(&client.token),
            Some(&client.last_id),
        )
        .await
    }

    /// The session store's record of `id`.
    async fn session(&self, id: SessionId) -> Option<SessionRecord> {
        self.hub
            .sessions()
            .load(&id)
            .await
            .expect("the store answers")
    }

    /// Waits until the session store no longer has `id` (`what`, for the failure message).
    async fn wait_for_session_gone(&self, id: SessionId, what: &str) {
        wait_for(
            what,
            WAIT,
            || async move { self.session(id).await.is_none() },
        )
        .await;
    }

    /// Opens `path` with these request headers and reads the `connected` frame.
    async fn open_with(&self, path: &str, headers: &[(&str, &str)]) -> Opened {
        let mut stream = connect(&self.url(path), headers).await;
        assert_eq!(stream.status, 200, "GET {path}");
        let event = stream.next_event(WAIT).await.unwrap_or_else(|| {
            panic!(
                "GET {path}: no connected event (response ended: {})",
                stream.ended()
            )
        });
        assert_eq!(
            event.event, "connected",
            "GET {path}: the first event: {event:?}"
        );
        assert!(
            !event.last_event_id.is_empty(),
            "the connected event has an id"
        );
        let info: Value = serde_json::from_str(&event.data).expect("connected data is JSON");
        let token = stream
            .token()
            .expect("the response carries the session token");
        Opened {
            session: info["session"].as_str().expect("a session id").to_owned(),
            id: event.last_event_id,
            token,
            info,
            stream,
        }
    }
}

/// What a client keeps of a connection it closed.
struct Departed {
    /// The session id its `connected` frame named.
    session: String,
    /// The session token its response carried.
    token: String,
    /// The id of the last event it read.
    last_id: String,
}

/// An open SSE response whose `connected` frame has been read.
struct Opened {
    stream: SseStream,
    /// The `connected` frame's JSON data.
    info: Value,
    /// The `connected` frame's id (the cursor at connection time).
    id: String,
    /// The session id the `connected` frame named.
    session: String,
    /// The session token the response carried.
    token: String,
}

impl Opened {
    /// The next event, which must be a plain `message`; returns its data and id.
    async fn message(&mut self) -> (String, String) {
        let event = next_event(&mut self.stream).await;
        assert_eq!(event.event, "message", "expected a message, got {event:?}");
        (event.data, event.last_event_id)
    }

    /// The data of the next `n` events, which must all be plain messages; also the id of
    /// the last one (the connected frame's when `n` is 0).
    async fn messages(&mut self, n: usize) -> (Vec<String>, String) {
        let mut data = Vec::with_capacity(n);
        let mut id = self.id.clone();
        for _ in 0..n {
            let (d, i) = self.message().await;
            data.push(d);
            id = i;
        }
        (data, id)
    }

    /// The next event, which must be a `reset`; returns its JSON data.
    async fn reset(&mut self) -> Value {
        let event = next_event(&mut self.stream).await;
        assert_eq!(event.event, "reset", "expected a reset, got {event:?}");
        serde_json::from_str(&event.data).expect("reset data is JSON")
    }
}

async fn next_event(stream: &mut SseStream) -> ParsedEvent {
    match stream.next_event(WAIT).await {
        Some(event) => event,
        None if stream.ended() => panic!("the server ended the response"),
        None => panic!("no event within {WAIT:?}"),
    }
}

/// `GET` with headers; the status and the body as JSON (`Null` when it is not JSON).
async fn get_json(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the request is answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A 4xx answer with a JSON body that has an `error` code and a non-empty `message`.
fn assert_json_error(what: &str, (status, body): &(u16, Value), expected: u16) {
    assert_eq!(*status, expected, "{what}: {body}");
    let code = body["error"].as_str().unwrap_or_default();
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        !code.is_empty() && !code.contains(' ') && !message.is_empty(),
        "{what}: a JSON error body, got {body}"
    );
}

/// Waits for `condition`, checking every few milliseconds, failing after `deadline`.
async fn wait_for<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    while !condition().await {
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn session_id(text: &str) -> SessionId {
    text.parse().expect("a session id")
}

// URL-safe base64 without padding, the cursor's wire alphabet (the suite has no base64
// dependency of its own).
const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_decode(text: &str) -> Vec<u8> {
    let (mut bits, mut n, mut out) = (0u32, 0u32, Vec::new());
    for c in text.bytes() {
        let value = B64.iter().position(|&b| b == c).expect("base64url") as u32;
        bits = (bits << 6) | value;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}

fn b64_encode(bytes: &[u8]) -> String {
    let (mut bits, mut n, mut out) = (0u32, 0u32, String::new());
    for &b in bytes {
        bits = (bits << 8) | u32::from(b);
        n += 8;
        while n >= 6 {
            n -= 6;
            out.push(B64[((bits >> n) & 63) as usize] as char);
        }
        bits &= (1 << n) - 1;
    }
    if n > 0 {
        out.push(B64[((bits << (6 - n)) & 63) as usize] as char);
    }
    out
}

/// Resident set size of this process in bytes (`VmRSS` of `/proc/self/status`, which states
/// its unit, unlike `statm`'s pages); `None` where there is no procfs.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

/// `GET /healthz` answers 200 when the store answers.
pub(crate) async fn healthz_answers(backend: Backend) {
    let server = Server::start(&backend, Retention::default(), Config::default()).await;
    let (status, body) = get_json(&server.url("/healthz"), &[]).await;
    assert_eq!(status, 200, "{body}");
}

/// Disconnect, K events published, reconnect with `Last-Event-ID` and the session token:
/// exactly those K events in order, then live delivery.
pub(crate) async fn resume_after_disconnect(backend: Backend) {
    let server = Server::start(&backend, Retention::default(), Config::default()).await;
    let mut first = server.open("/events?stream=news", None, None).await;
    assert_eq!(first.info["resumed"], false, "{}", first.info);
    assert_eq!(first.info["reset"], false, "{}", first.info);
    for data in ["before-1", "before-2"] {
        server.publish_ok("news", data).await;
    }
    let (seen, last_id) = first.messages(2).await;
    assert_eq!(seen, ["before-1", "before-2"]);
    drop(first.stream);

    const K: usize = 7;
    let away: Vec<String> = (1..=K).map(|i| format!("away-{i}")).collect();
    for data in &away {
        server.publish_ok("news", data).await;
    }
    let mut second = server
        .open("/events?stream=news", Some(&first.token), Some(&last_id))
        .await;
    assert_eq!(second.session, first.session, "the session is kept");
    assert_eq!(second.info["resumed"], true, "{}", second.info);
    assert_eq!(second.info["reset"], false, "{}", second.info);
    assert_eq!(second.info["replay"], K as u64, "{}", second.info);
    let (replayed, _) = second.messages(K).await;
    assert_eq!(
        replayed, away,
        "exactly the events published while away, in order"
    );

    server.publish_ok("news", "live").await;
    let (live, _) = second.message().await;
    assert_eq!(
        live, "live",
        "live delivery follows the replay, with nothing in between"
    );
}

/// 20 clients cut and reconnected at random, 1000 cuts in all, while 1500 events are
/// published: every client ends with every event exactly once, in order, and never a reset.
/// Half of them keep their session token; the other half never send it (as curl, most SSE
/// libraries and cross-origin pages without credentials do), get a new session on every
/// reconnect, and must see no reset either: nothing was lost.
pub(crate) async fn chaos_random_cuts_lose_nothing(backend: Backend) {
    const CLIENTS: u64 = 20;
    const CUTS: usize = 1000;
    const EVENTS: u64 = 1500;
    /// Most events read before a cut.
    const MAX_READ: usize = 20;
    /// Longest wait before a cut, in milliseconds.
    const MAX_WAIT_MS: u64 = 15;
    const SEED: u64 = 0x5EED_CAFE;

    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let server = Arc::new(Server::start(&backend, retention(100_000), Config::default()).await);
    // Cuts are claimed from `claimed` (so there are exactly CUTS) and reported to `made`,
    // which paces the publisher: event i goes out once i × CUTS / EVENTS cuts have happened,
    // so publishing spans the whole cutting period whatever the machine's speed.
    let claimed = Arc::new(AtomicUsize::new(0));
    let (made_tx, made_rx) = tokio::sync::watch::channel(0usize);
    let made_tx = Arc::new(made_tx);

    // Every client takes its first cursor before anything is published: a connection
    // without `Last-Event-ID` starts at the head, so earlier events are not its to miss.
    let ready = Arc::new(tokio::sync::Barrier::new(CLIENTS as usize + 1));

    let publisher = {
        let server = server.clone();
        let mut made = made_rx;
        let ready = ready.clone();
        tokio::spawn(async move {
            ready.wait().await;
            let client = reqwest::Client::new();
            let url = server.url("/publish");
            for i in 1..=EVENTS {
                let due = |m: &usize| *m >= CUTS || (*m as u64) * EVENTS >= (i - 1) * CUTS as u64;
                made.wait_for(due).await.expect("the cut counter lives");
                let response = client
                    .post(&url)
                    .json(&json!({"stream": "chaos", "data": i.to_string()}))
                    .send()
                    .await
                    .expect("publish is answered");
                assert_eq!(response.status(), 200, "publishing event {i}");
            }
        })
    };

    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        let server = server.clone();
        let claimed = claimed.clone();
        let made = made_tx.clone();
        let ready = ready.clone();
        clients.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(SEED + k);
            let path = "/events?stream=chaos";
            let initial = server.open(path, None, None).await;
            drop(initial.stream);
            ready.wait().await;
            let keeps_token = k % 2 == 0;
            let mut token = keeps_token.then_some(initial.token);
            let mut session = keeps_token.then_some(initial.session);
            // What a browser would send back: the id of the last event it dispatched, here the
            // last event this client consumed. (`SseStream::last_event_id` may be further on:
            // the parser can hold events already parsed from the last chunk but not yet
            // consumed, and counting those as received would be the test's own loss.)
            let mut last_id = Some(initial.id);
            let mut next = 1u64;
            let mut cuts = 0usize;
            loop {
                let last = claimed.fetch_add(1, Ordering::SeqCst) >= CUTS;
                let mut headers = Vec::new();
                if let Some(t) = &token {
                    headers.push(("x-sse-session", t.as_str()));
                }
                if let Some(id) = &last_id {
                    headers.push(("last-event-id", id.as_str()));
                }
                let mut stream = connect(&server.url(path), &headers).await;
                assert_eq!(stream.status, 200, "client {k}");
                let answered = stream.token().expect("a token");
                if keeps_token {
                    token = Some(answered);
                }
                if !last && rng.random_range(0..10) == 0 {
                    // Cut before anything was read: the next attempt reuses the old id.
                    drop(stream);
                    cuts += 1;
                    made.send_modify(|m| *m += 1);
                    continue;
                }
                let connected = next_event(&mut stream).await;
                assert_eq!(connected.event, "connected", "client {k}: {connected:?}");
                let info: Value = serde_json::from_str(&connected.data).expect("JSON");
                assert_eq!(info["reset"], false, "client {k} after {cuts} cuts: {info}");
                let id = info["session"].as_str().expect("a session").to_owned();
                if let Some(s) = &session {
                    assert_eq!(&id, s, "client {k} keeps its session");
                }
                if keeps_token {
                    session = Some(id);
                }
                let mut seen_id = connected.last_event_id;

                let (limit, deadline) = if last {
                    (
                        usize::MAX,
                        tokio::time::Instant::now() + Duration::from_secs(40),
                    )
                } else {
                    let wait = Duration::from_millis(rng.random_range(0..=MAX_WAIT_MS));
                    (
                        rng.random_range(0..=MAX_READ),
                        tokio::time::Instant::now() + wait,
                    )
                };
                let mut read = 0;
                while read < limit && next <= EVENTS {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let Some(event) = stream.next_event(left).await else {
                        break;
                    };
                    assert_eq!(
                        event.event, "message",
                        "client {k} after {cuts} cuts, expecting event {next}: {event:?}"
                    );
                    assert_eq!(
                        event.data,
                        next.to_string(),
                        "client {k} after {cuts} cuts: events arrive once each, in order"
                    );
                    next += 1;
                    read += 1;
                    seen_id = event.last_event_id;
                }
                assert!(
                    !stream.ended(),
                    "client {k}: the server ended a response (after {cuts} cuts, at event {next})"
                );
                if last {
                    assert_eq!(
                        next,
                        EVENTS + 1,
                        "client {k} got every event before the deadline"
                    );
                    return cuts;
                }
                drop(stream);
                last_id = Some(seen_id);
                cuts += 1;
                made.send_modify(|m| *m += 1);
            }
        }));
    }
    let mut total = 0;
    for client in clients {
        total += client.await.expect("a client task");
    }
    publisher.await.expect("the publisher task");
    assert_eq!(total, CUTS);
    let elapsed = started.elapsed();
    // How long it took is for the log, not an assertion: a loaded machine is slower.
    eprintln!("chaos: {CLIENTS} clients, {CUTS} cuts, {EVENTS} events in {elapsed:?}");
}

/// Clients joining a stream that is published to continuously (their cursor starts at the
/// store's head, which the hub's hot window may not have reached yet) get the `connected`
/// frame and then every later event, contiguously. The load is published in-process, in
/// batches, to keep the feed busy; the clients are real HTTP clients.
pub(crate) async fn clients_join_a_busy_stream(backend: Backend) {
    const JOINS: usize = 200;
    let _heavy = HEAVY.lock().await;
    let server = Server::start(&backend, retention(100_000), Config::default()).await;
    // One reader keeps the stream's hot window alive for the whole test.
    let _keeper = server.open("/events?stream=busy", None, None).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let hub = server.hub.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let busy: resumable_sse_core::StreamName = "busy".parse().expect("a name");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<_> = (0..16)
                    .map(|_| {
                        n += 1;
                        resumable_sse_core::NewEvent::new(n.to_string())
                    })
                    .collect();
                hub.publish_many(&busy, batch).await.expect("publish");
                // Pacing only: about 16 000 events a second, enough to keep the feed busy.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    for join in 0..JOINS {
        let mut stream = connect(&server.url("/events?stream=busy"), &[]).await;
        assert_eq!(stream.status, 200, "join {join}");
        let connected = stream.next_event(WAIT).await.unwrap_or_else(|| {
            panic!(
                "join {join}: no connected event (response ended: {})",
                stream.ended()
            )
        });
        assert_eq!(connected.event, "connected", "join {join}: {connected:?}");
        let mut previous: Option<u64> = None;
        for _ in 0..3 {
            let event = next_event(&mut stream).await;
            assert_eq!(event.event, "message", "join {join}: {event:?}");
            let n: u64 = event.data.parse().expect("a number");
            if let Some(p) = previous {
                assert_eq!(n, p + 1, "join {join}: contiguous events");
            }
            previous = Some(n);
        }
    }
    stop.store(true, Ordering::Relaxed);
    publisher.await.expect("the publisher task");
}

/// An event buffer whose live feed runs `lag` behind the store, as Redis pub/sub and
/// PostgreSQL NOTIFY do: an append is readable before its notification arrives.
#[derive(Debug)]
struct LaggingFeed {
    inner: Arc<dyn resumable_sse_core::EventBuffer>,
    lag: Duration,
}

#[resumable_sse_core::async_trait]
impl resumable_sse_core::EventBuffer for LaggingFeed {
    async fn append(
        &self,
        stream: &resumable_sse_core::StreamName,
        event: resumable_sse_core::NewEvent,
    ) -> resumable_sse_core::Result<resumable_sse_core::Appended> {
        self.inner.append(stream, event).await
    }

    async fn append_many(
        &self,
        stream: &resumable_sse_core::StreamName,
        events: Vec<resumable_sse_core::NewEvent>,
    ) -> resumable_sse_core::Result<Vec<resumable_sse_core::Appended>> {
        self.inner.append_many(stream, events).await
    }

    async fn ping(&self) -> resumable_sse_core::Result<()> {
        self.inner.ping().await
    }

    async fn read(
        &self,
        stream: &resumable_sse_core::StreamName,
        after: u64,
        limit: usize,
    ) -> resumable_sse_core::Result<resumable_sse_core::ReadPage> {
        self.inner.read(stream, after, limit).await
    }

    fn live_feed(&self) -> resumable_sse_core::LiveFeed {
        use futures_util::StreamExt;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut feed = self.inner.live_feed();
        let lag = self.lag;
        tokio::spawn(async move {
            while let Some(item) = feed.next().await {
                if tx.send((tokio::time::Instant::now() + lag, item)).is_err() {
                    return;
                }
            }
        });
        futures_util::stream::unfold(rx, |mut rx| async move {
            let (at, item) = rx.recv().await?;
            tokio::time::sleep_until(at).await;
            Some((item, rx))
        })
        .boxed()
    }
}

/// A client that joins (or resumes) while the live feed has not yet announced the latest
/// append: its cursor starts at the store's head, ahead of the hub's hot window. It must
/// get the `connected` frame and then exactly the events after its cursor.
pub(crate) async fn clients_join_while_the_live_feed_lags(backend: Backend) {
    let stores = backend.stores(Retention::default()).await;
    let stores = Stores {
        buffer: Arc::new(LaggingFeed {
            inner: stores.buffer,
            lag: Duration::from_millis(300),
        }),
        sessions: stores.sessions,
    };
    let server = Server::over(stores, Config::default(), backend.fast).await;
    // The keeper holds the stream's hot window; once it has e0 the window is in the epoch.
    let mut keeper = server.open("/events?stream=busy", None, None).await;
    server.publish_ok("busy", "e0").await;
    assert_eq!(keeper.message().await.0, "e0");
    // e1 is in the store; its notification is 300 ms away.
    server.publish_ok("busy", "e1").await;
    let mut joiner = server.open("/events?stream=busy", None, None).await;
    assert_eq!(joiner.info["replay"], 0, "{}", joiner.info);
    server.publish_ok("busy", "e2").await;
    assert_eq!(
        joiner.message().await.0,
        "e2",
        "only what follows its cursor"
    );
    assert_eq!(keeper.messages(2).await.0, ["e1", "e2"]);
}

/// A cursor older than retention: 200, `connected` with `reset: true`, a `reset` with reason
/// `retention`, the retained events, then live delivery.
pub(crate) async fn reset_when_cursor_is_behind_retention(backend: Backend) {
    let server = Server::start(&backend, retention(5), Config::default()).await;
    let first = server.departed("p0").await;
    let published: Vec<String> = (1..=20).map(|i| format!("q{i}")).collect();
    for data in &published {
        server.publish_ok("news", data).await;
    }

    let mut second = server.come_back(&first).await;
    assert_eq!(second.session, first.session);
    assert_eq!(second.info["reset"], true, "{}", second.info);
    assert_eq!(second.info["replay"], 5, "{}", second.info);
    let reset = second.reset().await;
    assert_eq!(reset["reason"], "retention", "{reset}");
    assert_eq!(reset["streams"], json!(["news"]), "{reset}");
    let (retained, _) = second.messages(5).await;
    assert_eq!(retained, published[15..], "then every event still retained");
    server.publish_ok("news", "live").await;
    assert_eq!(second.message().await.0, "live");
}

/// A cursor from another epoch: the event log was lost (fresh stores) while the session
/// survived (its record is carried over, as a session store outliving the log would) →
/// `reset` with reason `epoch_changed` and the whole new epoch. When everything was lost, the
/// old token and cursor get a new session and reason `session_expired`.
pub(crate) async fn reset_when_epoch_changed(backend: Backend) {
    let a = Server::start(&backend, Retention::default(), Config::default()).await;
    let first = a.departed("a1").await;
    let record = a
        .session(session_id(&first.session))
        .await
        .expect("the session is alive");

    // Server B: fresh stores (another epoch), the session carried over.
    let stores = backend.stores(Retention::default()).await;
    stores
        .sessions
        .create(&record)
        .await
        .expect("create the session");
    let b = Server::over(stores, Config::default(), backend.fast).await;
    for data in ["b1", "b2"] {
        b.publish_ok("news", data).await;
    }
    let mut second = b.come_back(&first).await;
    assert_eq!(
        second.session, first.session,
        "the carried-over session is resumed"
    );
    assert_eq!(second.info["reset"], true, "{}", second.info);
    let reset = second.reset().await;
    assert_eq!(reset["reason"], "epoch_changed", "{reset}");
    assert_eq!(reset["streams"], json!(["news"]), "{reset}");
    let (replayed, _) = second.messages(2).await;
    assert_eq!(replayed, ["b1", "b2"], "the whole new epoch");
    b.publish_ok("news", "b-live").await;
    assert_eq!(second.message().await.0, "b-live");

    // Server C: everything lost, sessions included.
    let c = Server::start(&backend, Retention::default(), Config::default()).await;
    let mut third = c.come_back(&first).await;
    assert_ne!(
        third.session, first.session,
        "a lost session is never revived"
    );
    assert_eq!(third.info["reset"], true, "{}", third.info);
    // Both are said: the public stream's log is another epoch, the private stream belonged
    // to a session that is gone, with whatever it was sent.
    let mut reasons = vec![third.reset().await, third.reset().await];
    reasons.sort_by_key(|r| r["reason"].to_string());
    assert_eq!(reasons[0]["reason"], "epoch_changed", "{reasons:?}");
    assert_eq!(reasons[0]["streams"], json!(["news"]), "{reasons:?}");
    assert_eq!(reasons[1]["reason"], "session_expired", "{reasons:?}");
    c.publish_ok("news", "c-live").await;
    assert_eq!(third.message().await.0, "c-live");
}

/// Garbage ids (4 KB of random bytes in the `lastEventId` parameter, 4 KB of printable ASCII
/// in the header, a well-formed cursor with a wrong version byte, a truncated cursor): 200,
/// a `reset` with reason `invalid_id`, the retained events, then live delivery. Never a 500.
pub(crate) async fn reset_on_garbage_ids(backend: Backend) {
    let server = Server::start(&backend, Retention::default(), Config::default()).await;
    let first = server.open("/events?stream=news", None, None).await;
    let token = first.token.clone();
    let real = first.id.clone();
    drop(first.stream);
    let mut published = vec!["g0".to_owned()];
    server.publish_ok("news", "g0").await;

    let mut rng = StdRng::seed_from_u64(0x0BAD_1D00);
    let random_bytes: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
    let query: String = random_bytes.iter().map(|b| format!("%{b:02X}")).collect();
    let printable: String = (0..4096)
        .map(|_| char::from(rng.random_range(0x20u8..=0x7e)))
        .collect();
    let mut raw = b64_decode(&real);
    assert_eq!(
        b64_encode(&raw),
        real,
        "the suite's base64 round-trips a real cursor"
    );
    raw[0] = raw[0].wrapping_add(1);
    let wrong_version = b64_encode(&raw);
    let truncated = real[..real.len() - 3].to_owned();

    let cases: Vec<(&str, String, Option<String>)> = vec![
        (
            "4 KB of random bytes in lastEventId",
            format!("/events?stream=news&lastEventId={query}"),
            None,
        ),
        (
            "4 KB of printable ASCII in Last-Event-ID",
            "/events?stream=news".into(),
            Some(printable),
        ),
        (
            "a cursor with a wrong version byte",
            "/events?stream=news".into(),
            Some(wrong_version),
        ),
        (
            "a truncated cursor",
            "/events?stream=news".into(),
            Some(truncated),
        ),
    ];
    for (i, (what, path, header)) in cases.into_iter().enumerate() {
        let mut opened = server.open(&path, Some(&token), header.as_deref()).await;
        assert_eq!(opened.info["reset"], true, "{what}: {}", opened.info);
        let reset = opened.reset().await;
        assert_eq!(reset["reason"], "invalid_id", "{what}: {reset}");
        let (replayed, _) = opened.messages(published.len()).await;
        assert_eq!(
            replayed, published,
            "{what}: the retained events follow the reset"
        );
        let live = format!("live-{i}");
        server.publish_ok("news", &live).await;
        assert_eq!(opened.message().await.0, live, "{what}: then live delivery");
        published.push(live);
    }
}

/// The session is kept across reconnects through the cookie and through the header, and a
/// message sent to it while it is away arrives on reconnect.
pub(crate) async fn session_survives_reconnects(backend: Backend) {
    let server = Server::start(&backend, Retention::default(), Config::default()).await;
    let first = server.open("/events?stream=news", None, None).await;
    let cookie = first.stream.cookie().expect("a Set-Cookie");
    assert!(cookie.starts_with("sse_session="), "{cookie}");
    let set_cookie = first.stream.headers["set-cookie"].to_str().expect("ASCII");
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    drop(first.stream);

    let by_cookie = server
        .open_with(
            "/events?stream=news",
            &[("cookie", &cookie), ("last-event-id", &first.id)],
        )
        .await;
    assert_eq!(
        by_cookie.session, first.session,
        "the cookie keeps the session"
    );
    assert_eq!(by_cookie.info["reset"], false, "{}", by_cookie.info);
    drop(by_cookie.stream);

    let by_header = server
        .open(
            "/events?stream=news",
            Some(&first.token),
            Some(&by_cookie.id),
        )
        .await;
    assert_eq!(
        by_header.session, first.session,
        "the header keeps the session"
    );
    assert_eq!(by_header.info["reset"], false, "{}", by_header.info);
    drop(by_header.stream);

    let (status, answer) = server
        .publish(json!({"session": first.session, "data": "for-you"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["stream"],
        format!("@session:{}", first.session),
        "{answer}"
    );
    let mut back = server
        .open(
            "/events?stream=news",
            Some(&by_header.token),
            Some(&by_header.id),
        )
        .await;
    assert_eq!(back.session, first.session);
    assert_eq!(back.info["reset"], false, "{}", back.info);
    assert_eq!(back.info["replay"], 1, "{}", back.info);
    assert_eq!(
        back.message().await.0,
        "for-you",
        "the message sent while away"
    );
    server.publish_ok("news", "live").await;
    assert_eq!(back.message().await.0, "live");
}

/// A reload that brings the session but no `Last-Event-ID` continues from the cursor the
/// session's last connection recorded.
pub(crate) async fn session_cursor_resumes_without_last_event_id(backend: Backend) {
    let server = Server::start(&backend, Retention::default(), Config::default()).await;
    let first = server.departed("seen").await;
    let id = session_id(&first.session);
    // The cursor is recorded when the server notices the disconnect.
    let (server, seen_id) = (&server, first.last_id.as_str());
    wait_for("the session's recorded cursor", WAIT, || async move {
        let record = server.session(id).await;
        record.and_then(|r| r.cursor).as_deref() == Some(seen_id)
    })
    .await;
    server.publish_ok("news", "missed").await;
    let mut back = server
        .open("/events?stream=news", Some(&first.token), None)
        .await;
    assert_eq!(back.session, first.session);
    assert_eq!(back.info["resumed"], true, "{}", back.info);
    assert_eq!(back.info["reset"], false, "{}", back.info);
    assert_eq!(
        back.message().await.0,
        "missed",
        "only what came after the recorded cursor"
    );
}

/// After the session TTL, the old token and the old `Last-Event-ID` get a new session, and
/// since the expired session had been sent a message the client never got, a `reset` with
/// reason `session_expired`.
pub(crate) async fn session_expires_after_ttl(backend: Backend) {
    let config = Config::default().with_session_ttl(Duration::from_millis(300));
    let server = Server::start(&backend, Retention::default(), config).await;
    let first = server.departed("e1").await;
    // A private message it will never receive: its session expires before it comes back.
    let (status, answer) = server
        .publish(json!({"session": first.session, "data": "too late"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    server
        .wait_for_session_gone(session_id(&first.session), "the session to expire")
        .await;

    let mut back = server.come_back(&first).await;
    assert_ne!(
        back.session, first.session,
        "an expired session is never revived"
    );
    assert_eq!(back.info["reset"], true, "{}", back.info);
    let reset = back.reset().await;
    assert_eq!(reset["reason"], "session_expired", "{reset}");
    let private = format!("@session:{}", back.session);
    assert_eq!(
        reset["streams"],
        serde_json::json!([private]),
        "only the private stream is reset; news resumes exactly"
    );
    assert_ne!(back.token, first.token);
    server.publish_ok("news", "live").await;
    assert_eq!(
        back.message().await.0,
        "live",
        "nothing before it: e1 was seen"
    );
}

/// A session with an open connection outlives its TTL (the hub extends it
/// every half TTL); once the connection ends, it expires.
pub(crate) async fn session_lives_while_connected(backend: Backend) {
    // The keeper extends the session every half TTL. What is under test is that it does,
    // again and again, while the client stays connected past a whole TTL: the test waits for
    // two extensions (conditions, however slow the machine), never for a set time. A TTL of
    // 4 s leaves a keeper 2 s of slack before a late extension would lose the session.
    let ttl = Duration::from_secs(4);
    let config = Config::default().with_session_ttl(ttl);
    let server = Server::start(&backend, Retention::default(), config).await;
    let first = server.open("/events?stream=news", None, None).await;
    let id = session_id(&first.session);
    let started = std::time::Instant::now();
    let expiry = |record: Option<SessionRecord>| {
        record
            .unwrap_or_else(|| {
                panic!(
                    "the session expired after {:?} while connected",
                    started.elapsed()
                )
            })
            .expires_at
    };
    let mut last = expiry(server.session(id).await);
    let mut extended = 0;
    let deadline = started + ttl * 5;
    while extended < 2 || started.elapsed() <= ttl {
        assert!(
            std::time::Instant::now() < deadline,
            "the session was extended {extended} times in {:?}",
            ttl * 5
        );
        let now = expiry(server.session(id).await);
        if now > last {
            extended += 1;
            last = now;
        }
        tokio::time::sleep(ttl / 16).await;
    }
    drop(first.stream);
    // Gone once a TTL has passed without an extension.
    let server = &server;
    wait_for(
        "the session to expire once disconnected",
        ttl * 2 + WAIT,
        || async move { server.session(id).await.is_none() },
    )
    .await;
}

/// A client that keeps no session token (curl, a generic SSE library) but sends
/// `Last-Event-ID` resumes its streams exactly, in a new session; its old session was sent
/// nothing it missed, so nothing was lost and there is no `reset`.
pub(crate) async fn tokenless_client_resumes_public_streams(backend: Backend) {
    let server = Server::start(&backend, Retention::default(), Config::default()).await;
    let first = server.departed("p1").await;
    for data in ["p2", "p3"] {
        server.publish_ok("news", data).await;
    }
    let mut back = server
        .open("/events?stream=news", None, Some(&first.last_id))
        .await;
    assert_ne!(back.session, first.session, "no token: a new session");
    assert_eq!(back.info["reset"], false, "{}", back.info);
    assert_eq!(back.info["resumed"], true, "{}", back.info);
    let (missed, id) = back.messages(2).await;
    assert_eq!(missed, ["p2", "p3"], "the public stream resumes exactly");
    server.publish_ok("news", "live").await;
    assert_eq!(back.message().await.0, "live");

    // Again without a token, from the new cursor (it names the second session): still exact.
    drop(back);
    server.publish_ok("news", "p4").await;
    let mut again = server.open("/events?stream=news", None, Some(&id)).await;
    assert_eq!(again.info["reset"], false, "{}", again.info);
    assert_eq!(again.messages(2).await.0, ["live", "p4"]);
}

/// A client that comes back without its token after its old session was sent a private
/// message: that message is lost to it (it cannot prove it owns the old session), so it is
/// told with a `reset`, reason `session_changed`, naming its new private stream; the public
/// stream still resumes exactly. With its token it would have received the message.
pub(crate) async fn tokenless_client_is_told_of_missed_private_messages(backend: Backend) {
    let server = Server::start(&backend, Retention::default(), Config::default()).await;
    let first = server.departed("p1").await;
    let (status, answer) = server
        .publish(json!({"session": first.session, "data": "for you"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    server.publish_ok("news", "p2").await;

    let mut back = server
        .open("/events?stream=news", None, Some(&first.last_id))
        .await;
    assert_ne!(back.session, first.session);
    assert_eq!(back.info["reset"], true, "{}", back.info);
    let reset = back.reset().await;
    assert_eq!(reset["reason"], "session_changed", "{reset}");
    assert_eq!(
        reset["streams"],
        json!([format!("@session:{}", back.session)]),
        "only the private stream is reset"
    );
    assert_eq!(back.messages(1).await.0, ["p2"], "news resumes exactly");

    // The owner, with its token, gets the private message and no reset.
    let mut owner = server.come_back(&first).await;
    assert_eq!(owner.session, first.session);
    assert_eq!(owner.info["reset"], false, "{}", owner.info);
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(next_event(&mut owner.stream).await.data);
    }
    got.sort();
    assert_eq!(got, ["for you", "p2"]);
}

/// A `Last-Event-ID` header whose bytes are not text is answered like any id that is not a
/// cursor: 200, `reset` with reason `invalid_id`, the retained events, then live.
pub(crate) async fn bad_bytes_in_last_event_id_get_a_reset(backend: Backend) {
    let server = Server::start(&backend, Retention::default(), Config::default()).await;
    for data in ["r1", "r2"] {
        server.publish_ok("news", data).await;
    }
    for bad in ["caf\u{e9}", "\u{fffd}\u{80}x"] {
        let mut back = server
            .open_with("/events?stream=news", &[("last-event-id", bad)])
            .await;
        assert_eq!(back.info["reset"], true, "{bad:?}: {}", back.info);
        let reset = back.reset().await;
        assert_eq!(reset["reason"], "invalid_id", "{bad:?}: {reset}");
        assert_eq!(back.messages(2).await.0, ["r1", "r2"], "{bad:?}");
    }
}

/// An empty `x-sse-session` header is no token: the cookie's session is used.
pub(crate) async fn empty_session_header_does_not_hide_the_cookie(backend: Backend) {
    let server = Server::start(&backend, Retention::default(), Config::default()).await;
    let first = server.open("/events?stream=news", None, None).await;
    let cookie = format!("sse_session={}", first.token);
    let again = server
        .open_with(
            "/events?stream=news",
            &[("cookie", &cookie), ("x-sse-session", "")],
        )
        .await;
    assert_eq!(again.session, first.session);
}

/// A forged token (random text) and tampered tokens (one character of a real token changed)
/// each get a fresh session, never the victim's, which stays intact.
pub(crate) async fn forged_and_tampered_tokens_get_a_fresh_session(backend: Backend) {
    let server = Server::start(&backend, Retention::default(), Config::default()).await;
    let victim = server.open("/events?stream=news", None, None).await;
    drop(victim.stream);

    let mut rng = StdRng::seed_from_u64(0xF096_ED00);
    let forged: String = (0..victim.token.len())
        .map(|_| char::from(B64[rng.random_range(0..64)]))
        .collect();
    let mut attempts = vec![("forged".to_owned(), forged)];
    let dot = victim.token.find('.').expect("payload.tag");
    for at in [1, dot / 2, dot - 1, dot + 1, victim.token.len() - 2] {
        let mut bytes = victim.token.clone().into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("ASCII");
        attempts.push((format!("tampered at {at}"), tampered));
    }
    for (what, token) in &attempts {
        for header in ["x-sse-session", "cookie"] {
            let value = match header {
                "cookie" => format!("sse_session={token}"),
                _ => token.clone(),
            };
            let opened = server
                .open_with("/events?stream=news", &[(header, &value)])
                .await;
            assert_ne!(opened.session, victim.session, "{what} token in {header}");
            assert_eq!(
                opened.info["resumed"], false,
                "{what} in {header}: {}",
                opened.info
            );
        }
    }
    let again = server
        .open("/events?stream=news", Some(&victim.token), None)
        .await;
    assert_eq!(
        again.session, victim.session,
        "the victim's own token still works"
    );
}

/// A client that disconnects right after the `connected` frame resumes from that frame's id
/// without loss, on a stream that did not exist yet and on one with history.
pub(crate) async fn resume_from_the_connected_frame(backend: Backend) {
    let server = Server::start(&backend, Retention::default(), Config::default()).await;
    server.publish_ok("old", "history").await;
    for stream in ["fresh", "old"] {
        let path = format!("/events?stream={stream}");
        let first = server.open(&path, None, None).await;
        drop(first.stream);
        let away: Vec<String> = (1..=3).map(|i| format!("{stream}-{i}")).collect();
        for data in &away {
            server.publish_ok(stream, data).await;
        }
        let mut back = server
            .open(&path, Some(&first.token), Some(&first.id))
            .await;
        assert_eq!(back.session, first.session);
        assert_eq!(back.info["reset"], false, "{stream}: {}", back.info);
        assert_eq!(back.info["replay"], 3, "{stream}: {}", back.info);
        assert_eq!(
            back.messages(3).await.0,
            away,
            "{stream}: exactly the 3 events"
        );
        server.publish_ok(stream, "live").await;
        assert_eq!(back.message().await.0, "live", "{stream}");
    }
}

/// Plainly invalid requests get a 4xx with a JSON error: bad stream names (400), CR/LF/NUL
/// in `event` or `id` (400), oversized data and bodies (413), another session's private
/// stream (403).
pub(crate) async fn invalid_requests_get_4xx(backend: Backend) {
    let config = Config::default().with_max_event_bytes(1024);
    let server = Server::start(&backend, Retention::default(), config).await;
    let long = "x".repeat(200);
    for path in [
        "/events?stream=bad%20name",
        &format!("/events?stream={long}"),
        "/events?stream=",
    ] {
        let answer = get_json(&server.url(path), &[("accept", "text/event-stream")]).await;
        assert_json_error(path, &answer, 400);
    }
    for field in ["event", "id"] {
        for bad in ["a\rb", "a\nb", "a\0b"] {
            let mut body = json!({"stream": "news", "data": "x"});
            body[field] = json!(bad);
            let answer = server.publish(body).await;
            assert_json_error(&format!("{field} = {bad:?}"), &answer, 400);
        }
    }
    let answer = server
        .publish(json!({"stream": "bad name", "data": "x"}))
        .await;
    assert_json_error("publishing to a bad name", &answer, 400);
    let answer = server
        .publish(json!({"stream": "@session:x", "data": "x"}))
        .await;
    assert_json_error("publishing to a reserved name", &answer, 400);
    let answer = server
        .publish(json!({"session": SessionId::random().to_string(), "data": "x"}))
        .await;
    assert_json_error("sending to an unknown session", &answer, 404);

    let (status, body) = server
        .publish(json!({"stream": "news", "data": "y".repeat(2048)}))
        .await;
    assert_eq!(status, 413, "data over max_event_bytes: {body}");
    let (status, body) = server
        .publish(json!({"stream": "news", "data": "z".repeat(200_000)}))
        .await;
    assert_eq!(status, 413, "a body far over the limit: {body}");
    let (status, body) = server
        .publish(json!({"stream": "news", "data": "w".repeat(1024)}))
        .await;
    assert_eq!(status, 200, "data of exactly max_event_bytes: {body}");

    let victim = server.open("/events?stream=news", None, None).await;
    let private = format!("/events?stream=@session:{}", victim.session);
    let answer = get_json(&server.url(&private), &[("accept", "text/event-stream")]).await;
    assert_json_error("another session's stream", &answer, 403);
    // Its owner may read it.
    let own = server.open(&private, Some(&victim.token), None).await;
    assert_eq!(own.session, victim.session);
}

/// A client that stops reading holds up nobody: a normal client receives 1000 × 32 KiB events
/// while a raw socket that never reads stays connected; the hot windows and the store stay
/// within their bounds and the process does not grow with what was published.
pub(crate) async fn stalled_reader_holds_up_nobody(backend: Backend) {
    const EVENTS: usize = 1000;
    const SIZE: usize = 32 * 1024;
    const MAX_LEN: usize = 100;
    const HOT_WINDOW: usize = 64;
    /// How far the publisher may run ahead of the normal client (below the hot window, so
    /// the client is never legitimately reset).
    const AHEAD: usize = 32;

    let _heavy = HEAVY.lock().await;
    let config = Config::default().with_hot_window(HOT_WINDOW);
    let server = Server::start(&backend, retention(MAX_LEN), config).await;

    // The stalled client: a raw socket with a small receive buffer that never reads.
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stalled = socket.connect(server.http.addr).await.expect("connect");
    let request = format!(
        "GET /events?stream=big HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        server.http.addr
    );
    tokio::io::AsyncWriteExt::write_all(&mut stalled, request.as_bytes())
        .await
        .expect("write the request");

    let mut reader = server.open("/events?stream=big", None, None).await;
    // "big" and the two private session streams.
    wait_for("both clients to be connected", WAIT, || {
        let hub = server.hub.clone();
        async move { hub.active_streams() == 3 }
    })
    .await;

    let rss_before = rss_bytes();
    let started = Instant::now();
    let client = reqwest::Client::new();
    let url = server.url("/publish");
    let filler = "x".repeat(SIZE - 8);
    let mut received = 0usize;
    let check_bounds = |hub: &Hub| {
        let (windows, active) = (hub.window_events(), hub.active_streams());
        assert!(
            windows <= HOT_WINDOW * active,
            "{windows} events in {active} hot windows"
        );
    };
    for i in 1..=EVENTS {
        let data = format!("{i:07}:{filler}");
        let response = client
            .post(&url)
            .json(&json!({"stream": "big", "data": data}))
            .send()
            .await
            .expect("publish is answered");
        assert_eq!(response.status(), 200, "publishing event {i}");
        while received + AHEAD < i || (i == EVENTS && received < EVENTS) {
            let (data, _) = reader.message().await;
            received += 1;
            assert_eq!(data.len(), SIZE, "event {received}");
            assert_eq!(
                &data[..8],
                format!("{received:07}:"),
                "events arrive in order"
            );
        }
        if i % 50 == 0 {
            check_bounds(&server.hub);
        }
    }
    // No wall-clock bound: every event reached the normal client within `WAIT` of being
    // published while the stalled one read nothing, which is the point. How long it took is
    // for the log (a loaded machine takes longer, and that is no failure).
    let elapsed = started.elapsed();
    eprintln!("the normal client took {elapsed:?}");
    check_bounds(&server.hub);
    assert_eq!(
        server.hub.active_streams(),
        3,
        "the stalled client is still connected"
    );

    let page = server
        .hub
        .buffer()
        .read(&"big".parse().expect("a name"), 0, 10 * MAX_LEN)
        .await
        .expect("the store answers");
    assert!(
        page.events.len() <= MAX_LEN,
        "the store holds {} events",
        page.events.len()
    );
    assert_eq!(page.head, EVENTS as u64);

    // Memory: what is retained is bounded by the store (MAX_LEN events), the hot window
    // (HOT_WINDOW encoded events), at most one batch per connection in flight (no more than
    // the store retains) and socket buffers (kernel memory). That is about
    // (100 + 64 + 100) × 32 KiB ≈ 8.3 MiB however much is published; a per-connection queue
    // for the stalled client would instead hold all 1000 × 32 KiB = 31 MiB. The bound below,
    // half of what was published, leaves room for allocator slack and concurrently running
    // tests of this binary.
    let published = (EVENTS * SIZE) as u64;
    match (rss_before, rss_bytes()) {
        (Some(before), Some(after)) => {
            let growth = after.saturating_sub(before);
            eprintln!(
                "stalled reader: RSS {} → {} MiB (+{} KiB) for {} MiB published, in {elapsed:?}",
                before >> 20,
                after >> 20,
                growth >> 10,
                published >> 20
            );
            assert!(
                growth < published / 2,
                "RSS grew by {growth} bytes for {published} bytes published"
            );
        }
        _ => eprintln!("no /proc/self/status: the RSS bound is not checked on this system"),
    }
    drop(stalled);
}

/// Heartbeat comments arrive at the configured interval on an idle connection.
pub(crate) async fn heartbeats_arrive_at_the_interval(backend: Backend) {
    // Their exact schedule is checked in paused time (sse-core's engine tests). Over real
    // sockets only what holds however loaded the machine is: they keep coming on an idle
    // connection, and never faster than the interval, since the server's timer never fires
    // early and nothing arrives before it is sent.
    let interval = Duration::from_millis(150);
    let config = Config::default().with_heartbeat(interval);
    let server = Server::start(&backend, Retention::default(), config).await;
    let asked = Instant::now();
    let mut opened = server.open("/events?stream=quiet", None, None).await;
    let mut heartbeats = 0;
    while heartbeats < 4 {
        match opened.stream.next_item(WAIT).await {
            Some(Item::Comment(_)) => heartbeats += 1,
            Some(Item::Retry(_)) => {}
            Some(Item::Event(event)) => panic!("an idle connection got {event:?}"),
            None => panic!(
                "no heartbeat within {WAIT:?} (ended: {})",
                opened.stream.ended()
            ),
        }
    }
    // The first comes at least half an interval after the connection, each next one a whole
    // interval after the one before.
    let least = interval * 3 + interval / 2;
    assert!(
        asked.elapsed() >= least,
        "4 heartbeats within {:?} of the request, at least {least:?} expected",
        asked.elapsed()
    );
}

/// Publishing with neither stream nor session goes to `broadcast`, which `/events` reads
/// when no stream is named.
pub(crate) async fn broadcast_is_the_default_stream(backend: Backend) {
    let server = Server::start(&backend, Retention::default(), Config::default()).await;
    let mut opened = server.open("/events", None, None).await;
    let (status, answer) = server.publish(json!({"data": "to everyone"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["stream"], "broadcast", "{answer}");
    assert_eq!(opened.message().await.0, "to everyone");
}

/// `data` given as another JSON value arrives as its compact JSON text; a string as is.
pub(crate) async fn json_data_arrives_as_compact_text(backend: Backend) {
    let server = Server::start(&backend, Retention::default(), Config::default()).await;
    let mut opened = server.open("/events?stream=news", None, None).await;
    let values = [
        json!({"a": 1, "b": [true, null, "x y"], "c": {"d": 2.5}}),
        json!([1, 2, 3]),
        json!(42),
        json!(false),
        json!("{\"already\": \"text\"}"),
    ];
    for value in &values {
        let (status, answer) = server
            .publish(json!({"stream": "news", "data": value}))
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    // Numbers keep every digit, and white space outside strings goes.
    let raw = r#"{"stream": "news", "data": { "n" : 12345678901234567890123, "f": 1.50 }}"#;
    let answer = reqwest::Client::new()
        .post(server.url("/publish"))
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .expect("publish");
    assert_eq!(answer.status(), 200);
    for value in &values {
        let expected = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(opened.message().await.0, expected);
    }
    assert_eq!(
        opened.message().await.0,
        r#"{"n":12345678901234567890123,"f":1.50}"#
    );
    assert_eq!(
        values[0].to_string(),
        r#"{"a":1,"b":[true,null,"x y"],"c":{"d":2.5}}"#
    );
}

/// Line breaks in data (CRLF, CR, LF) arrive as LF.
pub(crate) async fn line_breaks_arrive_as_lf(backend: Backend) {
    let server = Server::start(&backend, Retention::default(), Config::default()).await;
    let mut opened = server.open("/events?stream=news", None, None).await;
    let cases = [
        ("a\r\nb\rc\nd", "a\nb\nc\nd"),
        ("\r\nleading and trailing\r", "\nleading and trailing\n"),
        ("blank\r\n\r\nline", "blank\n\nline"),
        ("\r\r\n\n", "\n\n\n"),
        (
            "data: not a field\nid: nor this\n\nevent: x",
            "data: not a field\nid: nor this\n\nevent: x",
        ),
    ];
    for (sent, _) in &cases {
        server.publish_ok("news", sent).await;
    }
    for (sent, expected) in &cases {
        assert_eq!(opened.message().await.0, *expected, "sent {sent:?}");
    }
}

/// Publishing the same publisher `id` twice: the second answers `"duplicate": true` with the
/// first position, and clients receive the event once.
pub(crate) async fn duplicate_publisher_id_is_delivered_once(backend: Backend) {
    let server = Server::start(&backend, Retention::default(), Config::default()).await;
    let mut opened = server.open("/events?stream=news", None, None).await;
    let body = json!({"stream": "news", "id": "order-17", "event": "order", "data": "once"});
    let (status, first) = server.publish(body.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["duplicate"], false, "{first}");
    let (status, second) = server.publish(body).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["duplicate"], true, "{second}");
    assert_eq!(second["position"], first["position"], "{second}");
    server.publish_ok("news", "after").await;

    let event = next_event(&mut opened.stream).await;
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("order", "once")
    );
    assert_eq!(
        opened.message().await.0,
        "after",
        "the duplicate was not delivered"
    );
}

/// A session store that counts the sessions written through it, over the backend's real one.
#[derive(Debug)]
struct CountingSessions {
    inner: Arc<dyn resumable_sse_core::SessionStore>,
    created: AtomicUsize,
}

#[resumable_sse_core::async_trait]
impl resumable_sse_core::SessionStore for CountingSessions {
    async fn create(&self, record: &SessionRecord) -> resumable_sse_core::Result<()> {
        self.created.fetch_add(1, Ordering::SeqCst);
        self.inner.create(record).await
    }
    async fn load(&self, id: &SessionId) -> resumable_sse_core::Result<Option<SessionRecord>> {
        self.inner.load(id).await
    }
    async fn touch(
        &self,
        id: &SessionId,
        expires_at: std::time::SystemTime,
    ) -> resumable_sse_core::Result<bool> {
        self.inner.touch(id, expires_at).await
    }
    async fn record_cursor(
        &self,
        id: &SessionId,
        cursor: &str,
        expires_at: std::time::SystemTime,
    ) -> resumable_sse_core::Result<bool> {
        self.inner.record_cursor(id, cursor, expires_at).await
    }
    async fn delete(&self, id: &SessionId) -> resumable_sse_core::Result<()> {
        self.inner.delete(id).await
    }
}

/// Everyone may read everything but streams named `secret…`.
struct NoSecrets;

#[resumable_sse_core::async_trait]
impl resumable_sse_axum::Authorize for NoSecrets {
    async fn identify(
        &self,
        _: &http::request::Parts,
    ) -> Result<resumable_sse_axum::Identity, resumable_sse_axum::Refusal> {
        Ok(resumable_sse_axum::Identity::anonymous())
    }
    async fn may_subscribe(
        &self,
        _: &resumable_sse_axum::Identity,
        stream: &resumable_sse_core::StreamName,
    ) -> Result<(), resumable_sse_axum::Refusal> {
        if stream.as_str().starts_with("secret") {
            Err(resumable_sse_axum::Refusal::insufficient_scope("secret"))
        } else {
            Ok(())
        }
    }
    async fn may_publish(
        &self,
        _: &resumable_sse_axum::Identity,
        _: resumable_sse_axum::Target<'_>,
    ) -> Result<(), resumable_sse_axum::Refusal> {
        Ok(())
    }
}

/// Sessions are lazy: only a stream actually opened (or a handler that uses its session)
/// creates one. Preflights, other methods, refused streams (400, 403) and other routes write
/// nothing to the session store and set no cookie.
pub(crate) async fn refused_requests_create_no_session(backend: Backend) {
    let stores = backend.stores(Retention::default()).await;
    let sessions = Arc::new(CountingSessions {
        inner: stores.sessions,
        created: AtomicUsize::new(0),
    });
    let hub = Hub::builder(stores.buffer, sessions.clone())
        .keys(keys())
        .build();
    let layer = SseLayer::new(hub).with_authorization(NoSecrets);
    let router = resumable_sse_axum::router(layer);
    let server = if backend.fast {
        TestServer::start_fast(router).await
    } else {
        TestServer::start(router).await
    };
    let http = reqwest::Client::new();
    let requests = [
        (reqwest::Method::OPTIONS, "/events", 405),
        (reqwest::Method::HEAD, "/events?stream=bad%20name", 400),
        (reqwest::Method::POST, "/events", 405),
        (reqwest::Method::GET, "/events?stream=bad%20name", 400),
        (reqwest::Method::GET, "/events?stream=secret", 403),
        (reqwest::Method::GET, "/events?stream=@session:00", 403),
        (reqwest::Method::GET, "/healthz", 200),
    ];
    for round in 0..20 {
        for (method, path, status) in &requests {
            let response = http
                .request(method.clone(), server.url(path))
                .header("accept", "text/event-stream")
                .send()
                .await
                .unwrap_or_else(|err| panic!("{method} {path}: {err}"));
            assert_eq!(response.status(), *status, "{method} {path}");
            if round == 0 {
                assert!(
                    response.headers().get("set-cookie").is_none()
                        && response.headers().get("x-sse-session").is_none(),
                    "{method} {path}: no session for a request that does not use one: {:?}",
                    response.headers()
                );
            }
        }
    }
    assert_eq!(
        sessions.created.load(Ordering::SeqCst),
        0,
        "{} refused or unrelated requests wrote sessions",
        20 * requests.len()
    );

    // A stream actually opened creates its session and answers its token.
    let mut events = connect(&server.url("/events?stream=news"), &[]).await;
    assert_eq!(events.status, 200);
    assert!(events.cookie().is_some() && events.token().is_some());
    assert_eq!(
        events.next_event(WAIT).await.map(|e| e.event).as_deref(),
        Some("connected")
    );
    assert_eq!(sessions.created.load(Ordering::SeqCst), 1);
}
