//! `sse-server` processes on Redis: several instances sharing streams and sessions, an
//! instance restarting, Redis restarting with and without persistence, and retention.
//!
//! Everything goes through real HTTP: the real binary on a free port, real SSE clients
//! (`resumable_sse_axum::testing::connect`), `POST /publish`. Instances of one test share a `--secret`,
//! so a session token issued by one is genuine on the others.
//!
//! Two kinds of Redis:
//!
//! - the shared one at `127.0.0.1:6379`, for tests that only need Redis up. Their streams have
//!   random names, so tests (and earlier runs) never see each other's events. Without it the
//!   tests fail with a message saying how to start it; they never skip.
//! - a private `redis-server` per test that kills Redis, on a free port with a temp directory,
//!   killed and removed when the test ends (also on panic).
//!
//! Every wait is on a condition with a deadline; no sleep decides an outcome.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use resumable_sse_axum::testing::{SseStream, connect};
use resumable_sse_core::codec::{Item, ParsedEvent};
use resumable_sse_store_redis::testing::{HOW_TO_START, PrivateRedis, answers, command};
use serde_json::{Value, json};
use support::{Server, tail};

/// The session token key every instance of a test shares.
const SECRET: &str = "redis-tests-shared-signing-key-0123456789abcdef";
/// The shared Redis.
const SHARED_PORT: u16 = 6379;
/// How long one expected thing may take.
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// Redis: the shared server and what a test reads from a server.
// ---------------------------------------------------------------------------------------

/// The shared Redis's URL; fails the test when it does not answer.
fn shared_redis() -> String {
    assert!(
        answers(SHARED_PORT),
        "these tests need Redis on 127.0.0.1:{SHARED_PORT}; {HOW_TO_START}"
    );
    format!("redis://127.0.0.1:{SHARED_PORT}")
}

/// `used_memory` from `INFO memory`.
fn used_memory(port: u16) -> u64 {
    let info = command(port, &["INFO", "memory"])
        .expect("INFO answers")
        .text();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO memory has used_memory")
}

/// The log key of a stream under sse-server's (default) key prefix.
fn log_key(stream: &str) -> String {
    format!("sse:{{{stream}}}:log")
}

// ---------------------------------------------------------------------------------------
// sse-server instances and clients.
// ---------------------------------------------------------------------------------------

/// Starts `sse-server` on `listen` over the Redis at `url`, with the shared secret.
fn start_server(listen: &str, url: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--listen", listen, "--store", url, "--secret", SECRET];
    args.extend_from_slice(extra);
    Server::start_with(&args).unwrap_or_else(|err| panic!("{err}"))
}

fn start(url: &str) -> Server {
    start_server("127.0.0.1:0", url, &[])
}

/// A private Redis (`aof` as in [`PrivateRedis::start`]) and an `sse-server` over it with
/// 300 ms heartbeats, whose output is printed if the test panics.
fn over_private_redis(aof: bool) -> (PrivateRedis, Server, Logs) {
    let redis = PrivateRedis::start(aof);
    let server = start_server("127.0.0.1:0", &redis.url(), &["--heartbeat", "300ms"]);
    let logs = Logs(vec![("sse-server", server.log.clone())]);
    (redis, server, logs)
}

/// Prints the servers' output if the test panics.
struct Logs(Vec<(&'static str, support::Log)>);

impl Drop for Logs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, log) in &self.0 {
                eprintln!("--- {name} output ---\n{}", tail(log, 40));
            }
        }
    }
}

/// A stream name no other test or run uses.
fn unique(what: &str) -> String {
    format!("{what}-{}", resumable_sse_core::SessionId::random())
}

/// `POST /publish`; the status and the JSON answer.
async fn publish(server: &Server, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url("/publish"))
        .json(&body)
        .send()
        .await
        .expect("/publish answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn publish_ok(server: &Server, stream: &str, data: &str) -> u64 {
    let (status, answer) = publish(server, json!({"stream": stream, "data": data})).await;
    assert_eq!(status, 200, "publishing {data:?} to {stream}: {answer}");
    answer["position"].as_u64().expect("a position")
}

/// Publishes until it succeeds (Redis coming back), failing after [`WAIT`].
async fn publish_when_back(server: &Server, stream: &str, data: &str) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, answer) = publish(server, json!({"stream": stream, "data": data})).await;
        if status == 200 {
            return answer["position"].as_u64().expect("a position");
        }
        assert_eq!(status, 503, "while Redis comes back: {answer}");
        assert!(
            Instant::now() < deadline,
            "publishing did not recover: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An SSE response whose `connected` frame has been read.
struct Client {
    stream: SseStream,
    info: Value,
    /// The id of the last event consumed (the `connected` frame's at first).
    id: String,
    session: String,
    token: String,
}

impl Client {
    /// `GET /events?stream=…` with an optional session token and `Last-Event-ID`.
    async fn open(
        server: &Server,
        stream: &str,
        token: Option<&str>,
        last_id: Option<&str>,
    ) -> Client {
        let mut headers = Vec::new();
        if let Some(token) = token {
            headers.push(("x-sse-session", token));
        }
        if let Some(id) = last_id {
            headers.push(("last-event-id", id));
        }
        let mut sse = connect(&server.url(&format!("/events?stream={stream}")), &headers).await;
        assert_eq!(sse.status, 200);
        let token = sse.token().expect("a session token");
        let connected = next_event(&mut sse).await;
        assert_eq!(connected.event, "connected", "{connected:?}");
        let info: Value = serde_json::from_str(&connected.data).expect("JSON");
        Client {
            session: info["session"].as_str().expect("a session").to_owned(),
            id: connected.last_event_id,
            info,
            token,
            stream: sse,
        }
    }

    async fn event(&mut self) -> ParsedEvent {
        let event = next_event(&mut self.stream).await;
        self.id = event.last_event_id.clone();
        event
    }

    /// The data of the next `n` events, which must be plain messages.
    async fn messages(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let event = self.event().await;
            assert_eq!(event.event, "message", "{event:?}");
            out.push(event.data);
        }
        out
    }
}

async fn next_event(stream: &mut SseStream) -> ParsedEvent {
    match stream.next_event(WAIT).await {
        Some(event) => event,
        None if stream.ended() => panic!("the server ended the response"),
        None => panic!("no event within {WAIT:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

/// Two instances A and B on one Redis: an event published on A reaches B's live clients; a
/// client that leaves A and reconnects to B with its `Last-Event-ID` and token gets exactly
/// the events it missed, in the session A created; a message to that session sent through
/// A reaches it on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_streams_and_sessions() {
    let url = shared_redis();
    let (a, b) = (start(&url), start(&url));
    let _logs = Logs(vec![("A", a.log.clone()), ("B", b.log.clone())]);
    let news = unique("news");

    let mut on_b = Client::open(&b, &news, None, None).await;
    publish_ok(&a, &news, "from A").await;
    assert_eq!(
        on_b.messages(1).await,
        ["from A"],
        "A's event reaches B's client"
    );

    let mut mover = Client::open(&a, &news, None, None).await;
    publish_ok(&a, &news, "seen 1").await;
    publish_ok(&b, &news, "seen 2").await;
    assert_eq!(mover.messages(2).await, ["seen 1", "seen 2"]);
    let (last_id, token, session) = (mover.id.clone(), mover.token.clone(), mover.session.clone());
    drop(mover);
    let missed = ["missed 1", "missed 2", "missed 3"];
    for data in missed {
        publish_ok(&a, &news, data).await;
    }

    let mut moved = Client::open(&b, &news, Some(&token), Some(&last_id)).await;
    assert_eq!(
        moved.session, session,
        "the session created on A is recognised on B"
    );
    assert_eq!(moved.info["resumed"], true, "{}", moved.info);
    assert_eq!(moved.info["reset"], false, "{}", moved.info);
    assert_eq!(moved.info["replay"], 3, "{}", moved.info);
    assert_eq!(moved.messages(3).await, missed, "exactly the missed events");

    publish_ok(&a, &news, "live").await;
    assert_eq!(moved.messages(1).await, ["live"]);
    let (status, answer) = publish(&a, json!({"session": session, "data": "private"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        moved.messages(1).await,
        ["private"],
        "A's message to the session reaches B"
    );
    assert_eq!(
        on_b.messages(5).await,
        ["seen 1", "seen 2", "missed 1", "missed 2", "missed 3"]
    );
}

/// Instance A stops (killed), events are published through B, A starts again on the same
/// port: a client reconnecting to A gets exactly what it missed, without a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_loses_nothing() {
    let url = shared_redis();
    let (a, b) = (start(&url), start(&url));
    let logs = Logs(vec![("A", a.log.clone()), ("B", b.log.clone())]);
    let news = unique("news");
    let mut client = Client::open(&a, &news, None, None).await;
    publish_ok(&a, &news, "before").await;
    assert_eq!(client.messages(1).await, ["before"]);
    let (last_id, token, session) = (
        client.id.clone(),
        client.token.clone(),
        client.session.clone(),
    );
    drop(client);

    let addr = a.addr.clone();
    a.kill();
    let missed: Vec<String> = (1..=5).map(|i| format!("while A was down {i}")).collect();
    for data in &missed {
        publish_ok(&b, &news, data).await;
    }
    let a = start_server(&addr, &url, &[]);
    let _logs = (logs, Logs(vec![("A again", a.log.clone())]));

    let mut back = Client::open(&a, &news, Some(&token), Some(&last_id)).await;
    assert_eq!(back.session, session, "the session survived the restart");
    assert_eq!(back.info["reset"], false, "{}", back.info);
    assert_eq!(back.info["replay"], 5, "{}", back.info);
    assert_eq!(back.messages(5).await, missed);
    publish_ok(&b, &news, "live").await;
    assert_eq!(back.messages(1).await, ["live"]);
}

/// Redis killed and restarted without persistence. While it is down, publishing answers
/// 503 with a JSON error and the connected client stays connected (heartbeats keep coming).
/// Once it is back, the client gets a `reset` with reason `epoch_changed` (never a silent
/// gap), then the new events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_without_persistence_resets_clients() {
    let (mut redis, server, _logs) = over_private_redis(false);
    let news = unique("news");
    let mut client = Client::open(&server, &news, None, None).await;
    publish_ok(&server, &news, "e1").await;
    assert_eq!(client.messages(1).await, ["e1"]);

    redis.kill();
    let started = Instant::now();
    let (status, answer) = publish(&server, json!({"stream": news, "data": "lost"})).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"].as_str().is_some_and(|e| !e.is_empty()),
        "a JSON error: {answer}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the 503 took {:?}",
        started.elapsed()
    );
    let mut heartbeats = 0;
    while heartbeats < 3 {
        match client.stream.next_item(WAIT).await {
            Some(Item::Comment(_)) => heartbeats += 1,
            Some(Item::Retry(_)) => {}
            Some(Item::Event(event)) => panic!("an event while Redis is down: {event:?}"),
            None => panic!(
                "the client was disconnected (ended: {})",
                client.stream.ended()
            ),
        }
    }

    redis.restart();
    publish_when_back(&server, &news, "e2").await;
    let reset = client.event().await;
    assert_eq!(
        reset.event, "reset",
        "the first event after the loss: {reset:?}"
    );
    let reset: Value = serde_json::from_str(&reset.data).expect("JSON");
    assert_eq!(reset["reason"], "epoch_changed", "{reset}");
    assert!(
        reset["streams"]
            .as_array()
            .is_some_and(|s| s.contains(&json!(news))),
        "{reset}"
    );
    assert_eq!(
        client.messages(1).await,
        ["e2"],
        "the new epoch follows the reset"
    );
    publish_ok(&server, &news, "e3").await;
    assert_eq!(client.messages(1).await, ["e3"]);
}

/// Redis killed and restarted with AOF (`appendfsync always`): the connected client carries
/// on without a reset, and a client that was away resumes in its session with exactly what
/// it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_with_aof_resumes_without_reset() {
    let (mut redis, server, _logs) = over_private_redis(true);
    let news = unique("news");
    let mut live = Client::open(&server, &news, None, None).await;
    let mut away = Client::open(&server, &news, None, None).await;
    publish_ok(&server, &news, "e1").await;
    publish_ok(&server, &news, "e2").await;
    assert_eq!(live.messages(2).await, ["e1", "e2"]);
    assert_eq!(away.messages(2).await, ["e1", "e2"]);
    let (last_id, token, session) = (away.id.clone(), away.token.clone(), away.session.clone());
    drop(away);

    redis.kill();
    redis.restart();
    assert_eq!(
        publish_when_back(&server, &news, "e3").await,
        3,
        "positions continue"
    );
    let next = live.event().await;
    assert_eq!(
        (next.event.as_str(), next.data.as_str()),
        ("message", "e3"),
        "no reset for the connected client"
    );
    let mut back = Client::open(&server, &news, Some(&token), Some(&last_id)).await;
    assert_eq!(back.session, session, "the session survived in the AOF");
    assert_eq!(back.info["reset"], false, "{}", back.info);
    assert_eq!(back.info["replay"], 1, "{}", back.info);
    assert_eq!(back.messages(1).await, ["e3"]);
    publish_ok(&server, &news, "e4").await;
    assert_eq!(live.messages(1).await, ["e4"]);
    assert_eq!(back.messages(1).await, ["e4"]);
}

/// 100 000 events published through `/publish` to one stream with `--max-len 1000`: the
/// log never holds more than 1000 entries, and Redis memory stays within a bound derived
/// from the retained events, far below what was published. A client reading the stream
/// the whole time gets every event it can (a `reset` with reason `retention` only if it
/// falls behind) and ends at the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_bounds_the_log_and_redis_memory() {
    const EVENTS: u64 = 100_000;
    const MAX_LEN: u64 = 1000;
    const SIZE: usize = 200;
    const WORKERS: u64 = 32;

    let redis = PrivateRedis::start(false);
    let server = start_server(
        "127.0.0.1:0",
        &redis.url(),
        &["--max-len", &MAX_LEN.to_string()],
    );
    let _logs = Logs(vec![("sse-server", server.log.clone())]);
    let firehose = unique("firehose");
    // One event first, so the baseline includes the stream's fixed costs.
    publish_ok(&server, &firehose, "first").await;
    let baseline = used_memory(redis.port());

    // A sampler watches memory and the log's length while events are published.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, port, key) = (done.clone(), redis.port(), log_key(&firehose));
        std::thread::spawn(move || {
            let (mut peak_memory, mut peak_len, mut samples) = (0u64, 0i64, 0u32);
            while !done.load(Ordering::Relaxed) {
                peak_memory = peak_memory.max(used_memory(port));
                peak_len = peak_len.max(command(port, &["XLEN", &key]).expect("XLEN").int());
                samples += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            (peak_memory, peak_len, samples)
        })
    };

    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(2));
    let url = server.url("/publish");
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (next, url, firehose) = (next.clone(), url.clone(), firehose.clone());
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i > EVENTS {
                    return;
                }
                let data = format!("{i:08}:{}", "x".repeat(SIZE - 9));
                let response = client
                    .post(&url)
                    .json(&json!({"stream": firehose, "data": data}))
                    .send()
                    .await
                    .expect("/publish answers");
                assert_eq!(response.status(), 200, "event {i}");
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a publishing worker");
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let (peak_memory, peak_len, samples) = sampler.join().expect("the sampler");
    let after = used_memory(redis.port());
    let len = command(redis.port(), &["XLEN", &log_key(&firehose)])
        .expect("XLEN")
        .int();

    // The bound: the retained entries (data plus at most 128 bytes of entry, listpack and
    // node overhead each), counted twice for entries a partly trimmed node still holds and
    // for the allocator's size classes, plus 2 MiB for client buffers (32 publishers'
    // requests in flight, notifications not yet read by the server's subscriber).
    let bound = 2 * MAX_LEN * (SIZE as u64 + 128) + (2 << 20);
    let published = EVENTS * SIZE as u64;
    eprintln!(
        "retention: {EVENTS} events of {SIZE} B in {elapsed:?} ({:.0}/s); used_memory \
         baseline {baseline} B, peak {peak_memory} B (+{} B), after {after} B; bound +{bound} B; \
         XLEN peak {peak_len}, {samples} samples; published {published} B",
        EVENTS as f64 / elapsed.as_secs_f64(),
        peak_memory.saturating_sub(baseline),
    );
    assert!(
        samples >= 3,
        "the sampler saw the publishing ({samples} samples)"
    );
    assert_eq!(len, MAX_LEN as i64, "the log holds max_len events");
    assert!(
        peak_len <= MAX_LEN as i64,
        "the log held {peak_len} entries at one point"
    );
    assert!(
        peak_memory.saturating_sub(baseline) <= bound,
        "Redis grew by {} bytes, more than the bound of {bound} ({published} bytes published)",
        peak_memory - baseline
    );
    let page_head = command(
        redis.port(),
        &["HGET", &format!("sse:{{{firehose}}}:meta"), "head"],
    )
    .expect("HGET")
    .text();
    assert_eq!(page_head, EVENTS.to_string(), "every event got a position");
}

/// With `--max-age 1s`, events older than that are gone: a client resuming from before them
/// gets a `reset` with reason `retention` and nothing replayed, Redis dropped the log, and
/// the stream carries on in the same epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_older_than_max_age_are_gone() {
    let url = shared_redis();
    let server = start_server("127.0.0.1:0", &url, &["--max-age", "1s"]);
    let _logs = Logs(vec![("sse-server", server.log.clone())]);
    let news = unique("aging");
    let first = Client::open(&server, &news, None, None).await;
    let (start_id, token) = (first.id.clone(), first.token.clone());
    drop(first);
    // A second client reads everything before it leaves.
    let mut reader = Client::open(&server, &news, None, None).await;
    // Every event is written after this: the log cannot expire less than `--max-age` after it.
    let published = Instant::now();
    for i in 1..=5 {
        publish_ok(&server, &news, &format!("old {i}")).await;
    }
    assert_eq!(reader.messages(5).await.len(), 5);
    let (read_id, read_token) = (reader.id.clone(), reader.token.clone());
    drop(reader);
    let deadline = published + WAIT;
    while command(SHARED_PORT, &["EXISTS", &log_key(&news)])
        .expect("EXISTS")
        .int()
        == 1
    {
        assert!(Instant::now() < deadline, "the log did not expire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        published.elapsed() >= Duration::from_millis(900),
        "expired too early"
    );

    let mut back = Client::open(&server, &news, Some(&token), Some(&start_id)).await;
    assert_eq!(back.info["reset"], true, "{}", back.info);
    assert_eq!(
        back.info["replay"], 0,
        "nothing old is replayed: {}",
        back.info
    );
    let reset = back.event().await;
    assert_eq!(reset.event, "reset");
    let reset: Value = serde_json::from_str(&reset.data).expect("JSON");
    assert_eq!(reset["reason"], "retention", "{reset}");
    // The client that saw everything lost nothing: it resumes without a reset, in a new
    // instance too (whose hot window is empty: the store alone answers).
    let other = start(&url);
    for server in [&server, &other] {
        let quiet = Client::open(server, &news, Some(&read_token), Some(&read_id)).await;
        assert_eq!(quiet.info["reset"], false, "{}", quiet.info);
        assert_eq!(quiet.info["resumed"], true, "{}", quiet.info);
        assert_eq!(quiet.info["replay"], 0, "{}", quiet.info);
    }
    let mut quiet = Client::open(&other, &news, Some(&read_token), Some(&read_id)).await;
    assert_eq!(
        publish_ok(&server, &news, "fresh").await,
        6,
        "the same epoch goes on"
    );
    assert_eq!(back.messages(1).await, ["fresh"]);
    assert_eq!(quiet.messages(1).await, ["fresh"], "no reset before it");
}

/// `?key_prefix=` in the store URL separates deployments sharing one Redis: the same stream
/// name on two prefixes is two streams, each numbered from 1, with its keys under its prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefixes_separate_deployments() {
    let url = shared_redis();
    let tag = resumable_sse_core::SessionId::random();
    let (one, two) = (format!("app1-{tag}:"), format!("app2-{tag}:"));
    let a = start(&format!("{url}/0?key_prefix={one}"));
    let b = start(&format!("{url}/0?key_prefix={two}"));
    let _logs = Logs(vec![("app1", a.log.clone()), ("app2", b.log.clone())]);
    let mut on_b = Client::open(&b, "news", None, None).await;
    assert_eq!(publish_ok(&a, "news", "for app1").await, 1);
    assert_eq!(publish_ok(&b, "news", "for app2").await, 1);
    assert_eq!(
        on_b.messages(1).await,
        ["for app2"],
        "app2 sees only its own events"
    );
    for prefix in [&one, &two] {
        let key = format!("{prefix}{{news}}:log");
        let len = command(SHARED_PORT, &["XLEN", &key]).expect("XLEN").int();
        assert_eq!(len, 1, "{key}");
    }
}

/// `sse-server` on `redis` with a breaker that opens after 3 failures and probes every
/// 200 ms, and 300 ms heartbeats.
fn start_with_breaker(redis: &PrivateRedis) -> Server {
    start_server(
        "127.0.0.1:0",
        &redis.url(),
        &[
            "--heartbeat",
            "300ms",
            "--breaker-failures",
            "3",
            "--breaker-probe",
            "200ms",
        ],
    )
}

/// The store circuit breaker on Redis (killed, then restarted with its AOF): once the breaker
/// is open every publish is a 503 with `Retry-After` within 100 ms, an event stream (new, or
/// a session resuming) gets 200 with a `retry:` and a `refused` event, and a connected client
/// stays connected. Once Redis is back, publishing resumes, the connected client gets every
/// event published since, and a client that was away resumes without a reset: nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_fails_fast_while_redis_is_down_and_nothing_is_lost() {
    use support::breaker;
    let mut redis = PrivateRedis::start(true);
    let server = start_with_breaker(&redis);
    let _logs = Logs(vec![("sse-server", server.log.clone())]);
    let news = unique("news");
    let mut live = Client::open(&server, &news, None, None).await;
    let mut away = Client::open(&server, &news, None, None).await;
    publish_ok(&server, &news, "e1").await;
    assert_eq!(live.messages(1).await, ["e1"]);
    assert_eq!(away.messages(1).await, ["e1"]);
    let (last_id, token, session) = (away.id.clone(), away.token.clone(), away.session.clone());
    drop(away);

    redis.kill();
    let http = reqwest::Client::new();
    let (failed, slowest) = breaker::until_open(&http, &server, &news, WAIT).await;
    assert!(failed >= 3, "opened after {failed} failures, not 3");
    let (p50, max) = breaker::fast_refusals(&http, &server, &news, 200).await;
    eprintln!(
        "redis down: {failed} publishes failed by the store (slowest {slowest:?}); \
         breaker open: 200 publishes, p50 {p50:?}, max {max:?}"
    );
    breaker::stream_is_refused(&server, &news, None).await;
    breaker::stream_is_refused(&server, &news, Some(&token)).await;
    let opened = server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("circuit open"))
        .count();
    assert_eq!(
        opened,
        1,
        "the opening is logged once:\n{}",
        tail(&server.log, 40)
    );
    // The connected client is kept: heartbeats, nothing else.
    let mut heartbeats = 0;
    while heartbeats < 2 {
        match live.stream.next_item(WAIT).await {
            Some(Item::Comment(_) | Item::Retry(_)) => heartbeats += 1,
            Some(Item::Event(event)) => panic!("an event while Redis is down: {event:?}"),
            None => panic!("the client was disconnected"),
        }
    }

    redis.restart();
    publish_when_back(&server, &news, "e2").await;
    publish_ok(&server, &news, "e3").await;
    assert_eq!(
        live.messages(2).await,
        ["e2", "e3"],
        "nothing lost, no reset"
    );
    let mut back = Client::open(&server, &news, Some(&token), Some(&last_id)).await;
    assert_eq!(back.session, session, "the session is back");
    assert_eq!(back.info["reset"], false, "{}", back.info);
    assert_eq!(back.messages(2).await, ["e2", "e3"]);
    publish_ok(&server, &news, "e4").await;
    assert_eq!(live.messages(1).await, ["e4"]);
    assert_eq!(back.messages(1).await, ["e4"]);
}

/// The breaker on a Redis that hangs rather than refuses (`CLIENT PAUSE`: every command waits):
/// without the breaker each request would wait for the store's timeout (3 s by default); the
/// three that open it do, every one after it is answered within 100 ms. Once the pause ends,
/// a probe closes the breaker and the connected client gets what is published next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_fails_fast_while_redis_hangs() {
    use support::breaker;
    let redis = PrivateRedis::start(false);
    let server = start_with_breaker(&redis);
    let _logs = Logs(vec![("sse-server", server.log.clone())]);
    let news = unique("news");
    let mut live = Client::open(&server, &news, None, None).await;
    publish_ok(&server, &news, "e1").await;
    assert_eq!(live.messages(1).await, ["e1"]);

    let pause = Duration::from_secs(8);
    let paused_at = Instant::now();
    command(
        redis.port(),
        &["CLIENT", "PAUSE", &pause.as_millis().to_string(), "ALL"],
    )
    .expect("CLIENT PAUSE");
    let http = reqwest::Client::new();
    // Three at once, to three streams: each waits for the store's timeout.
    let waits: Vec<_> = (0..3)
        .map(|i| {
            let (http, url) = (http.clone(), server.url("/publish"));
            let stream = format!("{news}-{i}");
            tokio::spawn(async move {
                let started = Instant::now();
                let response = http
                    .post(url)
                    .json(&json!({"stream": stream, "data": "hangs"}))
                    .send()
                    .await
                    .expect("/publish answers");
                (response.status().as_u16(), started.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for wait in waits {
        let (status, took) = wait.await.expect("no panic");
        assert_eq!(status, 503, "a publish to a hung Redis");
        slowest = slowest.max(took);
    }
    let (p50, max) = breaker::fast_refusals(&http, &server, &news, 100).await;
    eprintln!(
        "redis hung: 3 publishes waited for the store's timeout (slowest {slowest:?}); \
         breaker open: 100 publishes, p50 {p50:?}, max {max:?}"
    );
    breaker::stream_is_refused(&server, &news, None).await;
    assert!(
        paused_at.elapsed() < pause,
        "the test ran past the pause ({:?}): make the pause longer",
        paused_at.elapsed()
    );

    publish_when_back(&server, &news, "e2").await;
    assert_eq!(live.messages(1).await, ["e2"], "nothing lost, no reset");
}
