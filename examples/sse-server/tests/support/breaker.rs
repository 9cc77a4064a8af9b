//! The store circuit breaker seen from outside: what `sse-server` answers while its store is
//! down, the same on every backend (`redis.rs` and `postgres.rs` stop a private store).

use std::time::{Duration, Instant};

use resumable_sse_axum::testing::connect;
use resumable_sse_core::codec::Item;
use serde_json::{Value, json};

use super::Server;

/// The must-hold: once the breaker is open, a publish is answered within this.
pub(crate) const FAST: Duration = Duration::from_millis(100);

/// One `POST /publish` through `client`: status, `Retry-After`, JSON answer, and how long it
/// took.
pub(crate) async fn timed_publish(
    client: &reqwest::Client,
    server: &Server,
    stream: &str,
    data: &str,
) -> (u16, Option<String>, Value, Duration) {
    let started = Instant::now();
    let response = client
        .post(server.url("/publish"))
        .json(&json!({"stream": stream, "data": data}))
        .send()
        .await
        .expect("/publish answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ASCII").to_owned());
    let answer = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, answer, started.elapsed())
}

/// Whether a 503 answer says the breaker refused it (the store was not asked).
fn refused_by_breaker(answer: &Value) -> bool {
    answer["message"]
        .as_str()
        .is_some_and(|m| m.contains("not asked"))
}

/// Publishes (with the store down) until the breaker answers, failing after `wait`; every
/// answer must be a 503 `store_unavailable` with `Retry-After`. Returns how many publishes
/// the store failed before the breaker opened, and the slowest of them.
pub(crate) async fn until_open(
    client: &reqwest::Client,
    server: &Server,
    stream: &str,
    wait: Duration,
) -> (usize, Duration) {
    let deadline = Instant::now() + wait;
    let mut failed = 0;
    let mut slowest = Duration::ZERO;
    loop {
        let (status, retry_after, answer, took) =
            timed_publish(client, server, stream, "refused").await;
        assert_eq!(status, 503, "publishing with the store down: {answer}");
        assert_eq!(answer["error"], "store_unavailable", "{answer}");
        assert!(retry_after.is_some(), "a 503 has Retry-After: {answer}");
        if refused_by_breaker(&answer) {
            return (failed, slowest);
        }
        failed += 1;
        slowest = slowest.max(took);
        assert!(
            Instant::now() < deadline,
            "the breaker did not open after {failed} failed publishes"
        );
    }
}

/// `n` publishes with the breaker open: each a 503 within [`FAST`]. Returns the p50 and the
/// maximum latency.
pub(crate) async fn fast_refusals(
    client: &reqwest::Client,
    server: &Server,
    stream: &str,
    n: usize,
) -> (Duration, Duration) {
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let (status, retry_after, answer, took) =
            timed_publish(client, server, stream, &format!("refused {i}")).await;
        assert_eq!(status, 503, "{answer}");
        assert!(refused_by_breaker(&answer), "the breaker answers: {answer}");
        assert_eq!(
            retry_after.as_deref(),
            Some("1"),
            "the probe interval, rounded up"
        );
        assert!(
            took < FAST,
            "publish {i} took {took:?} with the breaker open"
        );
        latencies.push(took);
    }
    latencies.sort();
    (latencies[n / 2], latencies[n - 1])
}

/// An event stream opened while the store is down: 200, a `retry:` of at least 5 s, one
/// `refused` event with reason `store_unavailable`, and the end of the response.
pub(crate) async fn stream_is_refused(server: &Server, stream: &str, token: Option<&str>) {
    let mut headers = Vec::new();
    if let Some(token) = token {
        headers.push(("x-sse-session", token));
    }
    let mut sse = connect(&server.url(&format!("/events?stream={stream}")), &headers).await;
    assert_eq!(sse.status, 200, "never a status EventSource gives up on");
    let wait = Duration::from_secs(5);
    let mut retry = None;
    let mut refused = None;
    while let Some(item) = sse.next_item(wait).await {
        match item {
            Item::Retry(ms) => retry = Some(ms),
            Item::Event(event) => {
                assert_eq!(event.event, "refused", "{event:?}");
                assert!(refused.is_none(), "one refused event");
                refused = Some(event);
            }
            Item::Comment(_) => {}
        }
    }
    assert!(sse.ended(), "the refusal ends the response");
    let retry = retry.expect("a retry: field");
    assert!(retry >= 5000, "retry: {retry}");
    let refused = refused.expect("a refused event");
    assert!(
        refused.last_event_id.is_empty(),
        "no id: the client keeps its cursor"
    );
    let data: Value = serde_json::from_str(&refused.data).expect("JSON");
    assert_eq!(data["reason"], "store_unavailable", "{data}");
    assert_eq!(data["retry_ms"], json!(retry), "{data}");
}
