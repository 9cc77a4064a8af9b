//! Headless Chromium's own `EventSource` over a connection cap: refused with `200`, a `retry:`
//! hint and a `refused` event, it keeps coming back, each time no sooner than it was asked
//! to, and once the cap allows it resumes with its `Last-Event-ID` and receives every event
//! published meanwhile, once.
//!
//! The browser reaches the server through the test proxy, and the test holds the other
//! connection of the address (127.0.0.1, cap 2) directly. Needs Chromium and chromedriver,
//! like `browser.rs`.

mod support;

use std::time::{Duration, Instant};

use resumable_sse_axum::testing::{SseStream, connect};
use serde_json::Value;
use support::Result;
use support::browser::{DEADLINE, Env, run};

/// A plain `EventSource` in a page that has none of its own (`/healthz`), recording what
/// it sees with the page's clock.
const START: &str = r#"
const log = window.limits = { messages: [], refused: [], opens: [], errors: [] };
const es = new EventSource("/events?stream=news");
es.onmessage = e => log.messages.push(e.data);
es.addEventListener("refused", e => log.refused.push({ at: performance.now(), ...JSON.parse(e.data) }));
es.addEventListener("connected", () => log.opens.push(performance.now()));
es.onerror = () => log.errors.push({ at: performance.now(), state: es.readyState });
return true;
"#;

const PAGE: &str = "return window.limits || null;";

fn messages(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Opens an event stream from the test (127.0.0.1, like the proxy); `Some` if admitted.
async fn hold(env: &Env) -> Option<SseStream> {
    let mut stream = connect(&env.server.url("/events?stream=news"), &[]).await;
    let first = stream.next_event(Duration::from_secs(10)).await?;
    (first.event == "connected").then_some(stream)
}

#[test]
fn event_source_over_a_cap_comes_back_as_hinted_and_loses_nothing() {
    run(
        "sse-browser-limits",
        &[
            "--max-connections-per-ip",
            "2",
            "--refusal-retry",
            "400ms",
            "--refusal-retry-max",
            "2s",
        ],
        PAGE,
        async |env: &Env| scenario(env).await,
    );
}

async fn scenario(env: &Env) -> Result<()> {
    let started = Instant::now();
    env.browser.goto(&env.page_url("/healthz")).await?;
    env.browser.execute(START).await?;
    env.wait("the page to connect", PAGE, |p| {
        p["opens"].as_array().is_some_and(|o| o.len() == 1)
    })
    .await?;
    // The address's second place.
    let Some(_a) = hold(env).await else {
        return Err("the second connection was refused".into());
    };
    env.publish_data("news", "e1").await?;
    env.wait("e1", PAGE, |p| messages(p) == ["e1"]).await?;

    // The page's connection is cut; the test takes its place before the browser comes back.
    env.proxy.cut_all();
    let deadline = Instant::now() + DEADLINE;
    let b = loop {
        if let Some(b) = hold(env).await {
            break b;
        }
        ensure!(
            Instant::now() < deadline,
            "the cut connection's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut expected = vec!["e1".to_owned()];
    for data in ["e2", "e3", "e4"] {
        env.publish_data("news", data).await?;
        expected.push(data.to_owned());
    }
    let page = env
        .wait("three refusals", PAGE, |p| {
            p["refused"].as_array().is_some_and(|r| r.len() >= 3)
        })
        .await?;
    let refused = page["refused"].as_array().cloned().unwrap_or_default();
    for r in &refused {
        ensure!(r["reason"] == "max_connections_per_ip", "refusal: {r}");
    }
    // Each attempt comes no sooner than the previous refusal asked (the browser's timer,
    // the page's clock; a few ms for the timer's granularity).
    for pair in refused.windows(2) {
        let asked = pair[0]["retry_ms"].as_i64().unwrap_or(0);
        let at = |r: &Value| r["at"].as_f64().unwrap_or(0.0).round() as i64;
        let waited = at(&pair[1]) - at(&pair[0]);
        ensure!(
            waited >= asked - 5,
            "came back after {waited:.0} ms when asked to wait {asked} ms: {refused:?}"
        );
    }
    let asked: Vec<u64> = refused
        .iter()
        .filter_map(|r| r["retry_ms"].as_u64())
        .collect();
    // They grow from the base (400 ms, jittered into [200, 400]) towards the 2 s cap. The
    // first one the page sees need not be the base: the test's own attempts to take the cut
    // connection's place, before the server saw it go, were refusals of this address too.
    ensure!(
        asked[2] >= 800 && (asked[2] > asked[0] || asked[0] >= 1000),
        "the delays grow: {asked:?}"
    );
    // Never a state that gives up: every error leaves it connecting (0), not closed (2).
    ensure!(
        page["errors"]
            .as_array()
            .is_some_and(|e| e.iter().all(|e| e["state"] == 0)),
        "the EventSource closed for good: {page}"
    );
    eprintln!(
        "browser refused {} times, asked to wait {asked:?} ms",
        refused.len()
    );

    // The cap allows it again: it resumes from its Last-Event-ID.
    drop(b);
    let page = env
        .wait("the events published while refused", PAGE, |p| {
            messages(p).len() >= expected.len()
        })
        .await?;
    ensure!(
        messages(&page) == expected,
        "expected {expected:?}, got {page}"
    );
    env.publish_data("news", "e5").await?;
    expected.push("e5".to_owned());
    env.wait("e5, live", PAGE, |p| messages(p) == expected)
        .await?;
    let requests = env.proxy.event_requests();
    ensure!(
        requests
            .last()
            .is_some_and(|r| support::browser::header(r, "last-event-id").is_some()),
        "the resuming request carries Last-Event-ID: {requests:#?}"
    );
    eprintln!(
        "browser over a cap: all {} events, once, in {:.1?}",
        expected.len(),
        started.elapsed()
    );
    Ok(())
}
