//! Observability of the reference server, as a process over real HTTP (docs/operations.md).
//!
//! - `/metrics` parsed by an independent Prometheus text-format parser (`prometheus-parse`):
//!   known actions move each counter by exactly their number, and the gauges come back to
//!   their baseline once the clients leave.
//! - `/readyz` answers 503 while a private Redis, then a private PostgreSQL, is stopped, and
//!   200 once it is back; `/livez` answers 200 throughout.
//! - With `--log-format json`, every log line of one connection carries its request id and
//!   its session id, and the response carries the request id.
//!
//! Needs `redis-server` and PostgreSQL's `initdb`/`pg_ctl` for the readiness test: without
//! them it fails, saying how to get them.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use resumable_sse_axum::testing::{SseStream, connect};
use resumable_sse_core::metrics as names;
use resumable_sse_store_redis::testing::PrivateRedis;
use serde_json::{Value, json};
use support::postgres::Cluster;
use support::{Server, tail};

/// The HS256 secret of the server with authentication.
const KEY: &str = "metrics-tests-hs256-secret-0123456789abcdef";
/// How long one expected thing may take.
const WAIT: Duration = Duration::from_secs(20);

/// One scrape: every sample's value by its name and sorted labels.
#[derive(Debug)]
struct Scrape(HashMap<String, f64>);

impl Scrape {
    async fn take(server: &Server) -> Scrape {
        Self::take_from(&server.url("/metrics"), server).await
    }

    async fn take_from(url: &str, server: &Server) -> Scrape {
        let response = reqwest::get(url)
            .await
            .unwrap_or_else(|err| panic!("GET /metrics: {err}\n{}", tail(&server.log, 30)));
        assert_eq!(response.status(), 200);
        let text = response.text().await.expect("a body");
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let parsed = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
        let mut samples = HashMap::new();
        for sample in parsed.samples {
            let value = match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                // Histograms: their count, under `name_count`.
                prometheus_parse::Value::Histogram(buckets) => {
                    let count = buckets.last().map_or(0.0, |b| b.count);
                    samples.insert(
                        key(&format!("{}_count", sample.metric), &sample.labels),
                        count,
                    );
                    continue;
                }
                prometheus_parse::Value::Summary(_) => panic!("{}: a summary", sample.metric),
            };
            samples.insert(key(&sample.metric, &sample.labels), value);
        }
        Scrape(samples)
    }

    /// A sample's value (0 when absent: a counter not yet incremented).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut labels: Vec<_> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let key = format!("{name}{{{}}}", labels.join(","));
        self.0.get(&key).copied().unwrap_or(0.0)
    }
}

fn key(name: &str, labels: &prometheus_parse::Labels) -> String {
    let mut pairs: Vec<_> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    format!("{name}{{{}}}", pairs.join(","))
}

/// `after - before` of one sample.
fn moved(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.get(name, labels) - before.get(name, labels)
}

fn token(claims: &Value) -> String {
    let key = EncodingKey::from_secret(KEY.as_bytes()).expect("an HS256 key");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).expect("a token")
}

fn exp() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 600
}

async fn publish(server: &Server, bearer: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(server.url("/publish"))
        .timeout(WAIT)
        .json(&body);
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|err| panic!("POST /publish: {err}\n{}", tail(&server.log, 30)));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Opens an event stream and reads its first event, which must be `connected`; the stream
/// and the `connected` data.
async fn open(server: &Server, path: &str, headers: &[(&str, &str)]) -> (SseStream, Value) {
    let mut stream = connect(&server.url(path), headers).await;
    assert_eq!(stream.status, 200, "GET {path}");
    let first = stream
        .next_event(WAIT)
        .await
        .unwrap_or_else(|| panic!("no first event\n{}", tail(&server.log, 30)));
    assert_eq!(first.event, "connected", "{first:?}");
    (stream, serde_json::from_str(&first.data).expect("JSON"))
}

/// Reads events until `n` plain messages have come; returns every event's name and id.
async fn read_messages(stream: &mut SseStream, n: usize) -> Vec<(String, String)> {
    let events = stream
        .collect_until(WAIT, |seen| {
            seen.iter().filter(|e| e.event == "message").count() >= n
        })
        .await;
    assert_eq!(
        events.iter().filter(|e| e.event == "message").count(),
        n,
        "{events:?}"
    );
    events
        .into_iter()
        .map(|e| (e.event, e.last_event_id))
        .collect()
}

/// Polls `/metrics` until `done` holds, failing after [`WAIT`].
async fn scrape_until(server: &Server, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let scrape = Scrape::take(server).await;
        if done(&scrape) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {WAIT:?}: {scrape:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_what_was_done() {
    // Authentication on (`news` public), at most three event streams at once.
    let server = Server::start_with(&[
        "--listen",
        "127.0.0.1:0",
        "--jwt-key",
        KEY,
        "--public-streams",
        "news",
        "--max-connections",
        "3",
        // Five events published, three retained.
        "--max-len",
        "3",
    ])
    .unwrap_or_else(|err| panic!("{err}"));
    let publisher = token(&json!({"sub": "ops", "exp": exp(), "sse": {"publish": ["*"]}}));
    // A second server, whose `news` log is another epoch: its cursors are foreign here.
    let other = Server::start_with(&["--listen", "127.0.0.1:0"]).unwrap_or_else(|e| panic!("{e}"));
    let (status, _) = publish(&other, None, json!({"stream": "news", "data": "elsewhere"})).await;
    assert_eq!(status, 200);
    let (_, info) = open(&other, "/events?stream=news", &[]).await;
    assert_eq!(info["resumed"], false);
    let (mut foreign, _) = open(&other, "/events?stream=news", &[]).await;
    let foreign_id = foreign.last_event_id().to_owned();
    drop(foreign.next_item(Duration::from_millis(1)).await);
    drop(foreign);

    let before = Scrape::take(&server).await;
    let baseline_connections = before.get(names::CONNECTIONS_ACTIVE, &[]);
    let baseline_sessions = before.get(names::SESSIONS_ACTIVE, &[]);
    let baseline_window = before.get(names::WINDOW_EVENTS, &[]);

    // A private stream without a token: refused by authorization (before the caps are
    // full: limits are checked first).
    let private = connect(&server.url("/events?stream=secret"), &[]).await;
    let auth_reason = match private.status.as_u16() {
        401 => "invalid_token",
        403 => "insufficient_scope",
        other => panic!("a private stream without a token answered {other}"),
    };
    drop(private);
    // Three clients connect.
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(open(&server, "/events?stream=news", &[]).await.0);
    }
    // A fourth is over --max-connections: refused in band.
    let mut refused = connect(&server.url("/events?stream=news"), &[]).await;
    let answer = refused.next_event(WAIT).await.expect("an answer");
    assert_eq!(answer.event, "refused", "{answer:?}");
    let reason: Value = serde_json::from_str(&answer.data).expect("JSON");
    assert_eq!(reason["reason"], "max_connections");

    // Five events, each read by all three.
    for i in 0..5 {
        let (status, answer) = publish(
            &server,
            Some(&publisher),
            json!({"stream": "news", "data": format!("event {i}")}),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    let mut first_ids = Vec::new();
    for client in &mut clients {
        first_ids.push(read_messages(client, 5).await[0].1.clone());
    }
    // One publish the hub refuses: data over `max_event_bytes` (256 KiB).
    let big = "x".repeat(300 * 1024);
    let (status, _) = publish(
        &server,
        Some(&publisher),
        json!({"stream": "news", "data": big}),
    )
    .await;
    assert_eq!(status, 413);
    let during = Scrape::take(&server).await;
    assert_eq!(
        during.get(names::CONNECTIONS_ACTIVE, &[]) - baseline_connections,
        3.0
    );
    assert_eq!(
        during.get(names::SESSIONS_ACTIVE, &[]) - baseline_sessions,
        3.0
    );
    drop(clients);
    drop(refused);
    // The gauges come back once the clients are gone (the hot window with them).
    scrape_until(&server, "the gauges back to their baseline", |s| {
        s.get(names::CONNECTIONS_ACTIVE, &[]) == baseline_connections
            && s.get(names::SESSIONS_ACTIVE, &[]) == baseline_sessions
            && s.get(names::WINDOW_EVENTS, &[]) == baseline_window
    })
    .await;

    // One reset of each reason a client can cause. A cursor behind retention (the first
    // event's, now trimmed; no hot window holds it once its readers are gone): the three
    // retained events are replayed.
    let (mut behind, info) = open(
        &server,
        "/events?stream=news",
        &[("last-event-id", &first_ids[0])],
    )
    .await;
    assert_eq!(info["reset"], true, "{info}");
    let events = read_messages(&mut behind, 3).await;
    assert_eq!(events[0].0, "reset", "{events:?}");
    drop(behind);
    // An id that is no cursor, and a cursor from another epoch: each replays the three events
    // still retained.
    let (mut garbage, info) = open(
        &server,
        "/events?stream=news",
        &[("last-event-id", "not-a-cursor")],
    )
    .await;
    assert_eq!(info["reset"], true, "{info}");
    let events = read_messages(&mut garbage, 3).await;
    assert_eq!(events[0].0, "reset", "{events:?}");
    let (mut stale, info) = open(
        &server,
        "/events?stream=news",
        &[("last-event-id", &foreign_id)],
    )
    .await;
    assert_eq!(info["reset"], true, "{info}");
    let events = read_messages(&mut stale, 3).await;
    assert_eq!(events[0].0, "reset", "{events:?}");
    drop((garbage, stale));
    // And a client that comes back without its session token after its session was sent a
    // private message it did not read: `session_changed`.
    let (mut owner, info) = open(&server, "/events?stream=news", &[]).await;
    let before_private = owner.last_event_id().to_owned();
    let session = info["session"].as_str().expect("a session").to_owned();
    let (status, answer) = publish(
        &server,
        Some(&publisher),
        json!({"session": session, "data": "private"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    read_messages(&mut owner, 1).await;
    drop(owner);
    let (_, info) = open(
        &server,
        "/events?stream=news",
        &[("last-event-id", &before_private)],
    )
    .await;
    assert_eq!(info["reset"], true, "{info}");

    let after = scrape_until(&server, "the gauges back to their baseline", |s| {
        s.get(names::CONNECTIONS_ACTIVE, &[]) == baseline_connections
            && s.get(names::SESSIONS_ACTIVE, &[]) == baseline_sessions
    })
    .await;
    let expect = [
        (names::CONNECTIONS_TOTAL, vec![("outcome", "fresh")], 4.0),
        (names::CONNECTIONS_TOTAL, vec![("outcome", "reset")], 4.0),
        (names::CONNECTIONS_TOTAL, vec![("outcome", "resumed")], 0.0),
        (names::RESETS_TOTAL, vec![("reason", "invalid_id")], 1.0),
        (names::RESETS_TOTAL, vec![("reason", "epoch_changed")], 1.0),
        // The foreign cursor names a session unknown here (its private messages cannot be
        // shown complete: ADR 0016), and the client back without its token.
        (
            names::RESETS_TOTAL,
            vec![("reason", "session_changed")],
            2.0,
        ),
        (names::RESETS_TOTAL, vec![("reason", "retention")], 1.0),
        (names::EVENTS_PUBLISHED_TOTAL, vec![], 6.0),
        (names::PUBLISH_ERRORS_TOTAL, vec![], 1.0),
        // 3 × 5 live, 3 × 3 replayed after the resets, 1 private message.
        (names::DELIVERIES_TOTAL, vec![], 25.0),
        (
            names::REFUSALS_TOTAL,
            vec![("reason", "max_connections")],
            1.0,
        ),
        (names::REFUSALS_TOTAL, vec![("reason", auth_reason)], 1.0),
    ];
    let mut wrong = Vec::new();
    for (name, labels, n) in &expect {
        let got = moved(&before, &after, name, labels);
        if got != *n {
            wrong.push(format!("{name}{labels:?}: moved by {got}, expected {n}"));
        }
    }
    let replays = format!("{}_count", names::REPLAYED_EVENTS);
    if moved(&before, &after, &replays, &[]) != 4.0 {
        wrong.push(format!(
            "{replays}: {}",
            moved(&before, &after, &replays, &[])
        ));
    }
    assert!(moved(&before, &after, names::DELIVERED_BYTES_TOTAL, &[]) > 0.0);
    let reads = format!("{}_count", names::STORE_OPERATION_DURATION_SECONDS);
    assert!(
        moved(
            &before,
            &after,
            &reads,
            &[("store", "memory"), ("op", "append")]
        ) >= 1.0
    );
    assert!(
        wrong.is_empty(),
        "{}\n{}",
        wrong.join("\n"),
        tail(&server.log, 20)
    );
}

/// A publish over its rate counts as `sse_refusals_total{reason="publish_rate"}`, and a
/// client that never finishes its request head, dropped at the head timeout, as
/// `sse_connections_dropped_total{reason="head_timeout"}`: each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_refusals_and_dropped_connections_are_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = Server::start_with(&[
        "--listen",
        "127.0.0.1:0",
        "--publish-rate",
        "1",
        "--head-timeout",
        "500ms",
    ])
    .unwrap_or_else(|err| panic!("{err}"));
    let before = Scrape::take(&server).await;
    let body = json!({"stream": "news", "data": "x"});
    let mut statuses = Vec::new();
    while !statuses.contains(&429) {
        let (status, _) = publish(&server, None, body.clone()).await;
        statuses.push(status);
        assert!(statuses.len() < 50, "never over the rate: {statuses:?}");
    }
    let refused = statuses.iter().filter(|s| **s == 429).count() as f64;

    let mut slow = tokio::net::TcpStream::connect(&server.addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /events?stream=news HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("half a head");
    // The server closes it at its head timeout (the read ends or fails).
    let mut buf = [0u8; 256];
    let _ = tokio::time::timeout(WAIT, slow.read(&mut buf))
        .await
        .expect("dropped within the head timeout");

    let after = scrape_until(&server, "the dropped connection counted", |scrape| {
        moved(
            &before,
            scrape,
            names::CONNECTIONS_DROPPED_TOTAL,
            &[("reason", "head_timeout")],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        moved(
            &before,
            &after,
            names::REFUSALS_TOTAL,
            &[("reason", "publish_rate")]
        ),
        refused
    );
    assert_eq!(
        moved(
            &before,
            &after,
            names::CONNECTIONS_DROPPED_TOTAL,
            &[("reason", "head_timeout")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_an_admin_listener_or_off() {
    let server =
        Server::start_with(&["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .unwrap_or_else(|err| panic!("{err}"));
    let deadline = Instant::now() + WAIT;
    let admin = loop {
        let found = server.log.lock().ok().and_then(|log| {
            log.iter().find_map(|l| {
                l.trim()
                    .strip_prefix("metrics on http://")
                    .map(str::to_owned)
            })
        });
        if let Some(addr) = found {
            break addr;
        }
        assert!(
            Instant::now() < deadline,
            "no admin listener\n{}",
            tail(&server.log, 20)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let scrape = Scrape::take_from(&format!("http://{admin}/metrics"), &server).await;
    assert_eq!(scrape.get(names::FEED_CONNECTED, &[]), 1.0, "{scrape:?}");
    let main = reqwest::get(server.url("/metrics")).await.expect("GET");
    assert_eq!(main.status(), 404, "/metrics is on the admin listener only");

    let off = Server::start_with(&["--listen", "127.0.0.1:0", "--metrics", "false"])
        .unwrap_or_else(|err| panic!("{err}"));
    let response = reqwest::get(off.url("/metrics")).await.expect("GET");
    assert_eq!(response.status(), 404);
    let live = reqwest::get(off.url("/livez")).await.expect("GET");
    assert_eq!(live.status(), 200);
}

async fn status(server: &Server, path: &str) -> u16 {
    reqwest::Client::new()
        .get(server.url(path))
        .timeout(WAIT)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Polls `path` until it answers `expected`, checking `/livez` stays 200 meanwhile.
/// The body of `/readyz`.
async fn readyz(server: &Server) -> Value {
    reqwest::get(server.url("/readyz"))
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON")
}

async fn until_status(server: &Server, path: &str, expected: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert_eq!(status(server, "/livez").await, 200, "/livez");
        let got = status(server, path).await;
        if got == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} answered {got}, not {expected}\n{}",
            tail(&server.log, 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_store() {
    let mut redis = PrivateRedis::start(false);
    let server = Server::start_with(&["--listen", "127.0.0.1:0", "--store", &redis.url()])
        .unwrap_or_else(|err| panic!("{err}"));
    until_status(&server, "/readyz", 200).await;
    redis.kill();
    until_status(&server, "/readyz", 503).await;
    let body = readyz(&server).await;
    assert_eq!(body["status"], "not_ready", "{body}");
    redis.restart();
    until_status(&server, "/readyz", 200).await;
    drop(server);

    let cluster = Cluster::init();
    cluster.start();
    let server = Server::start_with(&["--listen", "127.0.0.1:0", "--store", &cluster.url()])
        .unwrap_or_else(|err| panic!("{err}"));
    until_status(&server, "/readyz", 200).await;
    cluster.stop();
    until_status(&server, "/readyz", 503).await;
    cluster.start();
    until_status(&server, "/readyz", 200).await;
}

/// `/readyz` says not ready when the hub's live feed is down though the store answers: the
/// instance would deliver nothing live. The feed's connection is killed and its role may
/// open no new one, while the pool's connections still work; once it may, ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_live_feed() {
    let cluster = Cluster::init();
    cluster.start();
    // A role of its own: connection limits do not hold for superusers.
    let role = "sse_app";
    cluster.psql(&format!(
        "CREATE ROLE {role} LOGIN; GRANT CREATE ON DATABASE postgres TO {role}"
    ));
    let url = cluster
        .url()
        .replace("postgres://postgres@", &format!("postgres://{role}@"));
    let server = Server::start_with(&["--listen", "127.0.0.1:0", "--store", &url])
        .unwrap_or_else(|err| panic!("{err}"));
    until_status(&server, "/readyz", 200).await;

    // No new connection for the role from now on; then the feed loses its own.
    let open = cluster.psql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}'"
    ));
    let open: u32 = open.parse().expect("a count");
    cluster.psql(&format!("ALTER ROLE {role} CONNECTION LIMIT {}", open - 1));
    let killed = cluster.psql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE usename = '{role}' AND application_name LIKE 'sse-feed:%'"
    ));
    assert_eq!(killed, "1", "the live feed's connection");
    until_status(&server, "/readyz", 503).await;
    // The store answers throughout; one probe may still time out on a loaded machine (the
    // pool's connections are at the role's limit), so the answer is waited for.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = readyz(&server).await;
        if body["store"] == json!("ok") {
            assert_eq!(body["live_feed"], json!("disconnected"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, answer) = publish(&server, None, json!({"stream": "news", "data": "x"})).await;
    assert_eq!(status, 200, "the store still answers: {answer}");

    cluster.psql(&format!("ALTER ROLE {role} CONNECTION LIMIT -1"));
    until_status(&server, "/readyz", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_of_a_connection_names_its_request_and_session() {
    let server = Server::start_with(&["--listen", "127.0.0.1:0", "--log-format", "json"])
        .unwrap_or_else(|err| panic!("{err}"));
    let request_id = "corr-7f3a";
    let (mut stream, info) = open(
        &server,
        "/events?stream=news",
        &[("x-request-id", request_id)],
    )
    .await;
    assert_eq!(stream.headers["x-request-id"], request_id);
    let session = info["session"].as_str().expect("a session").to_owned();
    let (status, _) = publish(&server, None, json!({"stream": "news", "data": "x"})).await;
    assert_eq!(status, 200);
    read_messages(&mut stream, 1).await;
    drop(stream);
    // A generated id when the request has none (or an unusable one).
    let (other, _) = open(
        &server,
        "/events?stream=news",
        &[("x-request-id", "bad id")],
    )
    .await;
    let generated = other.headers["x-request-id"]
        .to_str()
        .expect("text")
        .to_owned();
    assert_eq!(generated.len(), 32, "{generated}");
    drop(other);

    // Every line about this connection: found by its request id or its session id.
    let deadline = Instant::now() + WAIT;
    let lines = loop {
        let lines: Vec<Value> = server
            .log
            .lock()
            .map(|log| log.clone())
            .unwrap_or_default()
            .iter()
            .filter(|l| l.contains(request_id) || l.contains(&session))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        let done = lines
            .iter()
            .any(|l| l["fields"]["message"] == "disconnected");
        if done {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "no `disconnected` line\n{}",
            tail(&server.log, 30)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(lines.len() >= 2, "{lines:?}");
    for line in &lines {
        let span = &line["span"];
        assert_eq!(span["request_id"], request_id, "{line}");
        assert_eq!(span["session"], session.as_str(), "{line}");
    }
    // The token never shows up in a log.
    let log = server.log.lock().map(|l| l.join("\n")).unwrap_or_default();
    assert!(!log.contains("sse_session="), "a cookie in the log");
}
