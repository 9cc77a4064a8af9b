//! The htmx example page (`/htmx`: htmx 2 and its SSE extension, vendored) in headless
//! Chromium: HTML fragments the server publishes are appended (`hx-swap="beforeend"`), none
//! lost and none twice, through
//!
//! 1. a cut the browser's own `EventSource` reconnects from (with `Last-Event-ID`);
//! 2. a cut followed by a failing gateway (503): `EventSource` gives up, and the extension opens
//!    a new `EventSource` of its own, which sends no `Last-Event-ID`: the session cookie brings
//!    the session's recorded cursor;
//! 3. a reload (away, then back): the same, for a new page.
//!
//! Needs Chromium and chromedriver, like `browser.rs`.

mod support;

use std::time::Instant;

use serde_json::{Value, json};
use support::Result;
use support::browser::{Env, NO_BFCACHE, header, request_line, run_with};

const PAGE: &str = r##"
const d = window.htmxDemo;
if (!d) return null;
return {
  state: d.state, connections: d.connections, resets: d.resets, session: d.session,
  errors: d.errors,
  fragments: Array.from(document.querySelectorAll("#fragments li.f")).map(li => li.textContent),
  others: Array.from(document.querySelectorAll("#fragments li:not(.f)")).map(li => li.outerHTML),
};
"##;

const GATEWAY_DOWN: &str = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
     content-length: 12\r\nconnection: close\r\n\r\ngateway down";

fn fragments(page: &Value) -> Vec<String> {
    page["fragments"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn fragment(env: &Env, text: &str) -> Result<()> {
    env.publish(json!({
        "stream": "htmx",
        "event": "fragment",
        "data": format!("<li class=\"f\">{text}</li>"),
    }))
    .await
    .map(drop)
}

#[test]
fn htmx_page_loses_no_fragment_through_cuts_and_a_reload() {
    // Without the back/forward cache: the page navigated away from is unloaded, as a reload
    // does (a page kept in the cache keeps its EventSource open; see the module docs).
    run_with(
        "sse-htmx",
        &["--heartbeat", "1s"],
        &[NO_BFCACHE],
        PAGE,
        async |env: &Env| scenario(env).await,
    );
}

async fn scenario(env: &Env) -> Result<()> {
    let step = Instant::now();
    let url = env.page_url("/htmx");
    env.browser.goto(&url).await?;
    let first = env
        .wait("the page to connect", PAGE, |p| {
            p["state"] == "open" && p["connections"] == 1
        })
        .await?;
    let session = first["session"].clone();
    ensure!(session.is_string(), "no session: {first}");
    let mut expected = vec!["one".to_owned()];
    fragment(env, "one").await?;
    env.wait("the first fragment", PAGE, |p| fragments(p) == expected)
        .await?;

    // 1. A cut: the browser's EventSource reconnects by itself.
    env.proxy.refuse(true);
    env.proxy.cut_all();
    env.wait("the extension to report the error", PAGE, |p| {
        p["state"] == "reconnecting"
    })
    .await?;
    for text in ["cut a", "cut b", "cut c"] {
        fragment(env, text).await?;
        expected.push(text.to_owned());
    }
    env.proxy.refuse(false);
    let page = env
        .wait("the fragments published during the cut", PAGE, |p| {
            fragments(p).len() >= expected.len() && p["connections"] == 2
        })
        .await?;
    ensure!(
        fragments(&page) == expected,
        "after the cut: expected {expected:?}, got {:?}",
        fragments(&page)
    );
    let requests = env.proxy.event_requests();
    ensure!(
        requests.len() == 2 && header(&requests[1], "last-event-id").is_some(),
        "the browser's reconnect should carry Last-Event-ID: {requests:#?}"
    );
    eprintln!(
        "cut: the EventSource reconnected with Last-Event-ID: {:.1?}",
        step.elapsed()
    );

    // 2. A cut, then a 503: EventSource closes for good, and the extension opens another one.
    env.proxy.answer_with(Some(GATEWAY_DOWN));
    env.proxy.cut_all();
    env.wait_proxy("the old event stream to close", |p| {
        p.open_event_streams() == 0
    })
    .await?;
    for text in ["gateway a", "gateway b"] {
        fragment(env, text).await?;
        expected.push(text.to_owned());
    }
    env.wait_proxy("the browser to meet the failing gateway", |p| {
        p.answered() > 0
    })
    .await?;
    env.proxy.answer_with(None);
    let page = env
        .wait(
            "the fragments published while the gateway failed",
            PAGE,
            |p| fragments(p).len() >= expected.len() && p["connections"] == 3,
        )
        .await?;
    ensure!(
        fragments(&page) == expected,
        "after the gateway failure: expected {expected:?}, got {:?}",
        fragments(&page)
    );
    let requests = env.proxy.event_requests();
    ensure!(
        requests.len() == 3,
        "expected a third GET /events: {requests:#?}"
    );
    let fresh = &requests[2];
    ensure!(
        header(fresh, "last-event-id").is_none() && !request_line(fresh).contains("lastEventId"),
        "htmx's own new EventSource carried a cursor after all (update the docs): {fresh}"
    );
    eprintln!(
        "503: the extension opened a new EventSource without Last-Event-ID ({} gateway \
         answer(s)); the recorded cursor covered it: {:.1?}",
        env.proxy.answered(),
        step.elapsed()
    );

    // 3. Away and back: a new page, whose EventSource starts from the recorded cursor.
    env.browser.goto("about:blank").await?;
    env.wait_proxy("the old event stream to close", |p| {
        p.open_event_streams() == 0
    })
    .await?;
    let away = ["away a", "away b", "away c"];
    for text in away {
        fragment(env, text).await?;
    }
    env.browser.goto(&url).await?;
    let page = env
        .wait("the fragments published while away", PAGE, |p| {
            fragments(p).len() >= away.len()
        })
        .await?;
    ensure!(
        fragments(&page) == away,
        "after the reload: expected exactly {away:?}, got {:?}",
        fragments(&page)
    );
    ensure!(
        page["session"] == session && page["resets"] == 0 && page["others"] == json!([]),
        "one session throughout, no reset: first {first}, now {page}"
    );
    fragment(env, "live").await?;
    env.wait("a live fragment after the reload", PAGE, |p| {
        fragments(p).last().is_some_and(|f| f == "live")
    })
    .await?;
    eprintln!(
        "reload: {} fragments published while away shown on the new page: {:.1?}",
        away.len(),
        step.elapsed()
    );
    Ok(())
}
