//! The browser helper (`/resumable-sse.js`, `clients/browser/`) in headless Chromium, on the
//! demo page, which uses it:
//!
//! - its WHATWG parser, on a table of edge cases, in the browser;
//! - in `EventSource` mode and in fetch mode (cookie-less: the session rides in the
//!   `x-sse-session` header), through cuts of the proxy: every event once, in order, no reset,
//!   the state transitions, the replay counts, and one session throughout;
//! - page reloads: a plain page (no saved id) gets what was published while it was away from
//!   its session's recorded cursor; with the saved id, several reloads while events keep
//!   flowing process every event exactly once over all page loads together.
//!
//! Needs Chromium and chromedriver, like `browser.rs`.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Result;
use support::browser::{Env, NO_BFCACHE, Publisher, header, request_line, run, run_with};

/// Reads the demo page's figures (`window.demo`) and its log's classes.
const DEMO: &str = r##"
const d = window.demo;
if (!d) return null;
return {
  mode: d.mode, state: d.state, states: d.states, received: d.received, replayed: d.replayed,
  flagged: d.sse.replayed, resets: d.resets, connections: d.connections, session: d.session,
  load: d.load, history: d.history, marker: window.marker ?? null,
  classes: Array.from(document.querySelectorAll("#log li")).reverse().map(li => li.className),
};
"##;

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn received(page: &Value) -> Vec<String> {
    strings(&page["received"])
}

/// Data published, and the data an `EventSource` gives for it.
const TRICKY: [(&str, &str); 6] = [
    ("a\r\nb\rc\nd", "a\nb\nc\nd"),
    ("  two leading spaces", "  two leading spaces"),
    ("", ""),
    ("\n", "\n"),
    (
        ": not a comment\ndata: not a field\r\n\r\nid: 1",
        ": not a comment\ndata: not a field\n\nid: 1",
    ),
    ("é € 😀 \u{feff}", "é € 😀 \u{feff}"),
];

/// Events published while the browser is cut off, per cut.
const MISSED: usize = 3;
/// Cuts per mode.
const CUTS: usize = 3;

#[test]
fn helper_parses_like_the_standard_and_survives_cuts_in_both_modes() {
    run(
        "sse-helper-cuts",
        &["--heartbeat", "1s"],
        DEMO,
        async |env: &Env| {
            parser_table(env).await?;
            cuts(env, "eventsource", "/?stream=es").await?;
            cuts(env, "fetch", "/?stream=fetch&mode=fetch&cookies=omit").await
        },
    );
}

/// The helper's parser, in the browser, against what the WHATWG standard says of each case.
async fn parser_table(env: &Env) -> Result<()> {
    env.browser.goto(&env.page_url("/htmx")).await?;
    let script = r#"
return import("/resumable-sse.js").then(({ SseParser }) => {
  const cases = [
    ["data: a\r\n\r\ndata: b\rdata:c\r\r", "data: d\n\n"],
    ["data: x\r", "\n", "\r\n"],
    ["id: 1\ndata: a\n\ndata: b\n\nid: 2\u0000x\ndata: c\n\nid\ndata: d\n\n"],
    [": comment\nretry: 1500\nretry: 1x\nretry\nevent: price\ndata\ndata:  two\nfoo: bar\n\n"],
    ["event: e\nid: 7\n\ndata: z\n\ndata: partial"],
    ["data:\u00e9\u20ac\n", "\n", "id:a:b\ndata:x\n\n"],
  ];
  return cases.map(chunks => {
    const out = [], retries = [];
    const p = new SseParser((t, d, id) => out.push([t, d, id]), r => retries.push(r));
    for (const c of chunks) p.push(c);
    return { out, retries, last: p.lastEventId };
  });
});
"#;
    let got = env.browser.execute(script).await?;
    let expected = json!([
        // CRLF, CR and LF end lines; two data lines join with LF.
        {"out": [["message", "a", ""], ["message", "b\nc", ""], ["message", "d", ""]], "retries": [], "last": ""},
        // A CRLF split over chunks is one line end.
        {"out": [["message", "x", ""]], "retries": [], "last": ""},
        // The id persists; an id with NUL is ignored; an empty `id` clears it.
        {"out": [["message", "a", "1"], ["message", "b", "1"], ["message", "c", "1"], ["message", "d", ""]], "retries": [], "last": ""},
        // Comments, retry with digits only, a field without colon, one leading space removed,
        // unknown fields ignored.
        {"out": [["price", "\n two", ""]], "retries": [1500], "last": ""},
        // An event without data dispatches nothing but sets the id; a partial event waits.
        {"out": [["message", "z", "7"]], "retries": [], "last": "7"},
        // Non-ASCII text; a value keeps its colons.
        {"out": [["message", "é€", ""], ["message", "x", "a:b"]], "retries": [], "last": "a:b"},
    ]);
    ensure!(
        got == expected,
        "the parser: expected {expected:#}, got {got:#}"
    );
    eprintln!("parser: {} cases as the standard says", 6);
    Ok(())
}

/// The demo page in `mode` through [`CUTS`] cuts: the first held until the browser has been
/// refused once, the others let it straight back in after the missed events are published.
async fn cuts(env: &Env, mode: &str, path: &str) -> Result<()> {
    let step = Instant::now();
    let stream = path
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("stream="))
        .unwrap_or("broadcast");
    let requests_before = env.proxy.event_requests().len();
    env.browser.goto(&env.page_url(path)).await?;
    let first = env
        .wait("the page to connect", DEMO, |p| {
            p["state"] == "open" && p["connections"] == 1
        })
        .await?;
    ensure!(first["mode"] == mode, "the page runs in {}", first["mode"]);
    let session = first["session"].clone();
    ensure!(session.is_string(), "no session: {first}");

    // Live events first, with data that tests the server's encoder and the page's parser
    // together: every line end arrives as LF, everything else exactly.
    let mut expected = Vec::new();
    for (data, arrives) in TRICKY {
        env.publish_data(stream, data).await?;
        expected.push(arrives.to_owned());
    }
    env.publish_data(stream, "live 0").await?;
    expected.push("live 0".to_owned());
    let page = env
        .wait("the live events", DEMO, |p| {
            received(p).len() >= expected.len()
        })
        .await?;
    ensure!(
        received(&page) == expected,
        "{mode}: live events: expected {expected:?}, got {:?}",
        received(&page)
    );
    for cut in 1..=CUTS {
        let refused_before = env.proxy.refused();
        env.proxy.refuse(true);
        env.proxy.cut_all();
        env.wait("the page to show it is reconnecting", DEMO, |p| {
            p["state"] == "reconnecting"
        })
        .await?;
        for i in 1..=MISSED {
            let data = format!("cut {cut} missed {i}");
            env.publish_data(stream, &data).await?;
            expected.push(data);
        }
        if cut == 1 {
            // A failed attempt must not end the stream, nor show another state.
            env.wait_proxy("a refused attempt", |p| p.refused() > refused_before)
                .await?;
        }
        env.proxy.refuse(false);
        let page = env
            .wait("the missed events", DEMO, |p| {
                received(p).len() >= expected.len() && p["connections"] == cut + 1
            })
            .await?;
        ensure!(
            received(&page) == expected,
            "{mode}, cut {cut}: every event once, in order: expected {expected:?}, got {:?}",
            received(&page)
        );
        ensure!(
            page["session"] == session,
            "{mode}, cut {cut}: the session changed: {session} then {}",
            page["session"]
        );
        let live = format!("live {cut}");
        env.publish_data(stream, &live).await?;
        expected.push(live);
        env.wait("the next live event", DEMO, |p| {
            received(p).len() >= expected.len()
        })
        .await?;
    }
    let page = env
        .wait("the last figures", DEMO, |p| received(p) == expected)
        .await?;
    let missed = (CUTS * MISSED) as u64;
    ensure!(page["resets"] == 0, "{mode}: a reset: {page}");
    ensure!(
        page["replayed"] == missed && page["flagged"] == missed,
        "{mode}: replay counts (announced, flagged) should both be {missed}: {page}"
    );
    let mut classes = vec![String::new(); TRICKY.len()];
    for _ in 0..CUTS {
        classes.push(String::new());
        classes.extend(std::iter::repeat_n("replayed".to_owned(), MISSED));
    }
    classes.push(String::new());
    ensure!(
        strings(&page["classes"]) == classes,
        "{mode}: the log's classes (replayed events marked): expected {classes:?}, got {}",
        page["classes"]
    );
    let mut states = vec!["connecting", "open"];
    for _ in 0..CUTS {
        states.extend(["reconnecting", "open"]);
    }
    ensure!(
        strings(&page["states"]) == states,
        "{mode}: state transitions: expected {states:?}, got {}",
        page["states"]
    );

    // What the browser sent: a fresh start, then every reconnect with its Last-Event-ID.
    let requests = env.proxy.event_requests();
    let requests = &requests[requests_before..];
    ensure!(
        requests.len() == CUTS + 1,
        "{mode}: expected {} GET /events, got {requests:#?}",
        CUTS + 1
    );
    ensure!(
        header(&requests[0], "last-event-id").is_none()
            && !request_line(&requests[0]).contains("lastEventId"),
        "{mode}: the first request already had a cursor: {requests:#?}"
    );
    for request in &requests[1..] {
        ensure!(
            header(request, "last-event-id").is_some_and(|id| !id.is_empty()),
            "{mode}: a reconnect without Last-Event-ID: {request}"
        );
    }
    if mode == "fetch" {
        // Cookie-less: the session travels in the header the server answered, every time.
        ensure!(
            requests.iter().all(|r| header(r, "cookie").is_none()),
            "fetch mode with cookies=omit sent a cookie: {requests:#?}"
        );
        ensure!(
            header(&requests[0], "x-sse-session").is_none()
                && requests[1..]
                    .iter()
                    .all(|r| header(r, "x-sse-session").is_some()),
            "fetch mode: the reconnects must carry x-sse-session: {requests:#?}"
        );
    }
    eprintln!(
        "{mode}: {} events through {CUTS} cuts ({} refused attempts), {missed} replayed, \
         no reset, one session: {:.1?}",
        expected.len(),
        env.proxy.refused(),
        step.elapsed()
    );

    // An answer that EventSource treats as fatal ends the helper for good, in both modes.
    let (answer, what) = if mode == "fetch" {
        (NOT_AN_EVENT_STREAM, "200 text/plain")
    } else {
        (GATEWAY_DOWN, "503")
    };
    let answered = env.proxy.answered();
    env.proxy.answer_with(Some(answer));
    env.proxy.cut_all();
    let page = env
        .wait(
            &format!("a {what} answer to close the page's stream"),
            DEMO,
            |p| p["state"] == "closed",
        )
        .await?;
    env.proxy.answer_with(None);
    let states = strings(&page["states"]);
    ensure!(
        env.proxy.answered() == answered + 1
            && states[states.len() - 3..] == ["open", "reconnecting", "closed"],
        "{mode}: one {what} answer, then closed: {} answered, states {states:?}",
        env.proxy.answered() - answered
    );
    eprintln!("{mode}: a {what} answer closed it for good, as EventSource does");
    Ok(())
}

const GATEWAY_DOWN: &str = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
     content-length: 12\r\nconnection: close\r\n\r\ngateway down";
const NOT_AN_EVENT_STREAM: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
     content-length: 5\r\nconnection: close\r\n\r\nhello";

/// Events published while a plain page is away.
const AWAY: usize = 4;
/// Reloads while events keep flowing.
const RELOADS: usize = 5;

#[test]
fn reloads_resume_from_the_recorded_cursor_and_from_the_saved_id() {
    // Without the back/forward cache: a page navigated away from is unloaded (see
    // `frozen_pages_let_go_and_resume` for the cache).
    run_with(
        "sse-helper-reloads",
        &["--heartbeat", "1s"],
        &[NO_BFCACHE],
        DEMO,
        async |env: &Env| {
            plain_reload(env).await?;
            plain_reloads_while_events_flow(env).await?;
            saved_id_reloads(env, "eventsource", "reload-es").await?;
            saved_id_reloads(env, "fetch", "reload-fetch").await
        },
    );
}

/// No saved id and no `Last-Event-ID` (the helper without `storage` is a plain `EventSource`): the session cookie brings the session's recorded
/// cursor. Events are published only once the server has closed the old stream (a quiet
/// period): the cursor is recorded when the server sees the connection go.
async fn plain_reload(env: &Env) -> Result<()> {
    let step = Instant::now();
    let url = env.page_url("/?stream=plain");
    env.browser.goto(&url).await?;
    let first = env
        .wait("the page to connect", DEMO, |p| p["state"] == "open")
        .await?;
    env.publish_data("plain", "before 1").await?;
    env.publish_data("plain", "before 2").await?;
    env.wait("the first events", DEMO, |p| {
        received(p) == ["before 1", "before 2"]
    })
    .await?;

    env.browser.goto("about:blank").await?;
    env.wait_proxy("the old event stream to close", |p| {
        p.open_event_streams() == 0
    })
    .await?;
    let away: Vec<String> = (1..=AWAY).map(|i| format!("away {i}")).collect();
    for data in &away {
        env.publish_data("plain", data).await?;
    }
    let requests_before = env.proxy.event_requests().len();
    env.browser.goto(&url).await?;
    let page = env
        .wait("the events published while away", DEMO, |p| {
            received(p).len() >= AWAY
        })
        .await?;
    ensure!(
        received(&page) == away,
        "after the reload: expected exactly {away:?}, got {:?}",
        received(&page)
    );
    ensure!(
        page["session"] == first["session"] && page["resets"] == 0,
        "same session, no reset: before {first}, after {page}"
    );
    ensure!(
        page["replayed"] == AWAY as u64,
        "the reload's replay: {page}"
    );
    let requests = env.proxy.event_requests();
    let request = &requests[requests_before];
    ensure!(
        header(request, "last-event-id").is_none()
            && !request_line(request).contains("lastEventId")
            && header(request, "cookie").is_some_and(|c| c.contains("sse_session=")),
        "the reload's request should carry the cookie and no cursor: {request}"
    );
    eprintln!(
        "plain reload: {AWAY} events published while away delivered after it, \
         same session, no reset: {:.1?}",
        step.elapsed()
    );
    Ok(())
}

/// No saved id, reloads while events keep flowing: what the recorded cursor gives. It is the
/// cursor the server *wrote* to the old page, not the one the page processed, so events in
/// flight at a reload are lost to the next page (the helper's saved id closes that gap). This
/// measures the loss and checks it is only that: in order, never twice, no reset, and every
/// event missed falls between two page loads.
async fn plain_reloads_while_events_flow(env: &Env) -> Result<()> {
    let step = Instant::now();
    env.browser
        .goto(&env.page_url("/?stream=plain-flow"))
        .await?;
    env.wait("the page to connect", DEMO, |p| p["state"] == "open")
        .await?;
    // Each page, as it goes, keeps what it processed in sessionStorage.
    let keep = r#"
window.addEventListener("pagehide", () => {
  const loads = JSON.parse(sessionStorage.getItem("loads") ?? "[]");
  loads.push(window.demo.received);
  sessionStorage.setItem("loads", JSON.stringify(loads));
});
window.marker = "kept";
return null;
"#;
    env.browser.execute(keep).await?;
    let publisher = Publisher::start(env, "plain-flow", Duration::from_millis(25));
    for _ in 0..RELOADS {
        env.wait("the page to process a few events", DEMO, |p| {
            p["marker"] == "kept" && received(p).len() >= 5
        })
        .await?;
        env.browser.refresh().await?;
        env.wait("the new page", DEMO, |p| p["marker"].is_null())
            .await?;
        env.browser.execute(keep).await?;
    }
    env.wait("the last page to process a few events", DEMO, |p| {
        received(p).len() >= 5
    })
    .await?;
    let total = publisher.stop().await?;
    let last = format!("r{total}");
    let page = env
        .wait("the last event published", DEMO, |p| {
            received(p).last().is_some_and(|d| *d == last)
        })
        .await?;
    let earlier = env
        .browser
        .execute(r#"return JSON.parse(sessionStorage.getItem("loads") ?? "[]");"#)
        .await?;
    let mut loads: Vec<Vec<u64>> = earlier
        .as_array()
        .map(|l| l.iter().map(numbers).collect())
        .unwrap_or_default();
    loads.push(numbers(&page["received"]));
    let processed: Vec<u64> = loads.concat();
    ensure!(
        processed.windows(2).all(|w| w[0] < w[1]) && processed.last() == Some(&(total as u64)),
        "in order, never twice, up to r{total}: {loads:?}"
    );
    ensure!(page["resets"] == 0, "a reset: {page}");
    let mut lost = 0;
    for (k, load) in loads.iter().enumerate() {
        ensure!(
            !load.is_empty() && load.windows(2).all(|w| w[1] == w[0] + 1),
            "page load {} missed an event while it was open, or processed none: {load:?}",
            k + 1
        );
        if let (Some(previous), Some(first)) = (k.checked_sub(1).map(|p| &loads[p]), load.first()) {
            lost += first - previous.last().copied().unwrap_or(0) - 1;
        }
    }
    eprintln!(
        "plain reloads while events flow: {total} events over {} page loads, {lost} lost at \
         the reloads (in flight when the page went), none twice, no reset: {:.1?}",
        loads.len(),
        step.elapsed()
    );
    Ok(())
}

/// `r17` → 17, for each string of an array.
fn numbers(value: &Value) -> Vec<u64> {
    strings(value)
        .iter()
        .filter_map(|d| d.strip_prefix('r')?.parse().ok())
        .collect()
}

/// `?save=session`: the helper keeps the last processed id, the page its log (with the page
/// load that processed each event), both in sessionStorage. Events are published every 25 ms
/// while the page is reloaded [`RELOADS`] times, each after it processed a few.
async fn saved_id_reloads(env: &Env, mode: &str, stream: &str) -> Result<()> {
    let step = Instant::now();
    let url = env.page_url(&format!("/?stream={stream}&save=session&mode={mode}"));
    let requests_before = env.proxy.event_requests().len();
    env.browser.goto(&url).await?;
    env.wait("the page to connect", DEMO, |p| {
        p["state"] == "open" && p["load"] == 1
    })
    .await?;

    let publisher = Publisher::start(env, stream, Duration::from_millis(25));
    for load in 1..=RELOADS as u64 {
        env.wait(
            &format!("page load {load} to process a few events"),
            DEMO,
            |p| p["load"] == load && received(p).len() >= 5,
        )
        .await?;
        env.browser.refresh().await?;
    }
    let loads = RELOADS as u64 + 1;
    env.wait("the last page load to process a few events", DEMO, |p| {
        p["load"] == loads && received(p).len() >= 5
    })
    .await?;
    let total = publisher.stop().await?;
    let last = format!("r{total}");
    let page = env
        .wait("the last event published", DEMO, |p| {
            received(p).last().is_some_and(|d| *d == last)
        })
        .await?;

    let history: Vec<(String, u64)> = page["history"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| Some((e[0].as_str()?.to_owned(), e[1].as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let all: Vec<String> = (1..=total).map(|n| format!("r{n}")).collect();
    let processed: Vec<String> = history.iter().map(|(d, _)| d.clone()).collect();
    ensure!(
        processed == all,
        "over {loads} page loads, every event once and in order: expected r1..r{total}, \
         got {processed:?}"
    );
    let per_load: Vec<usize> = (1..=loads)
        .map(|l| history.iter().filter(|(_, load)| *load == l).count())
        .collect();
    ensure!(
        per_load.iter().all(|&n| n > 0),
        "a page load processed nothing: {per_load:?}"
    );
    ensure!(page["resets"] == 0, "a reset on the last page load: {page}");
    // Every page load after the first started from the saved id, in the query.
    let requests = env.proxy.event_requests();
    let requests = &requests[requests_before..];
    let with_saved_id = requests
        .iter()
        .filter(|r| request_line(r).contains("lastEventId="))
        .count();
    ensure!(
        requests.len() == loads as usize && with_saved_id == RELOADS,
        "expected {loads} GET /events, the last {RELOADS} with lastEventId: {requests:#?}"
    );
    eprintln!(
        "saved id, {mode}: {total} events published every 25 ms over {loads} page loads \
         ({per_load:?} per load), each once and in order: {:.1?}",
        step.elapsed()
    );
    Ok(())
}

#[test]
fn frozen_pages_let_go_and_resume() {
    run(
        "sse-helper-bfcache",
        &["--heartbeat", "1s"],
        DEMO,
        async |env: &Env| frozen(env).await,
    );
}

/// Chromium keeps a page navigated away from frozen in its back/forward cache, connections
/// open: the server would keep writing to it. The helper lets go on `pagehide` and resumes
/// from the page's own last id on `pageshow`; a new page of the tab starts from the saved id.
async fn frozen(env: &Env) -> Result<()> {
    let step = Instant::now();
    let url = env.page_url("/?stream=frozen&save=session");
    env.browser.goto(&url).await?;
    env.wait("the page to connect", DEMO, |p| p["state"] == "open")
        .await?;
    env.browser
        .execute("window.marker = 'the first document'; return null;")
        .await?;
    env.publish_data("frozen", "before").await?;
    env.wait("the first event", DEMO, |p| received(p) == ["before"])
        .await?;

    // Away, and back: the same document, restored from the cache.
    env.browser.goto("about:blank").await?;
    env.wait_proxy("the frozen page to let go of its stream", |p| {
        p.open_event_streams() == 0
    })
    .await?;
    for data in ["away 1", "away 2", "away 3"] {
        env.publish_data("frozen", data).await?;
    }
    env.browser.back().await?;
    let page = env
        .wait("the events published while frozen", DEMO, |p| {
            received(p).len() >= 4
        })
        .await?;
    ensure!(
        page["marker"] == "the first document",
        "the page was not restored from the back/forward cache (a new document): {page}"
    );
    ensure!(
        received(&page) == ["before", "away 1", "away 2", "away 3"],
        "after coming back: {:?}",
        received(&page)
    );
    ensure!(
        strings(&page["states"]) == ["connecting", "open", "reconnecting", "open"]
            && page["resets"] == 0
            && page["connections"] == 2,
        "after coming back: {page}"
    );
    let requests = env.proxy.event_requests();
    ensure!(
        requests.len() == 2 && request_line(&requests[1]).contains("lastEventId="),
        "the restored page should resume from its last id: {requests:#?}"
    );
    eprintln!(
        "frozen: let go of its stream; 3 events published while away delivered on return, \
         once: {:.1?}",
        step.elapsed()
    );

    // Away again, then a new document (not the cached one): it starts from the saved id.
    env.browser.goto("about:blank").await?;
    env.wait_proxy("the frozen page to let go of its stream", |p| {
        p.open_event_streams() == 0
    })
    .await?;
    for data in ["new 1", "new 2"] {
        env.publish_data("frozen", data).await?;
    }
    env.browser.goto(&url).await?;
    let page = env
        .wait(
            "the events published while away, on a new page",
            DEMO,
            |p| p["load"] == 2 && received(p).len() >= 2,
        )
        .await?;
    let history: Vec<&str> = page["history"]
        .as_array()
        .map(|h| h.iter().filter_map(|e| e[0].as_str()).collect())
        .unwrap_or_default();
    ensure!(
        received(&page) == ["new 1", "new 2"]
            && history == ["before", "away 1", "away 2", "away 3", "new 1", "new 2"]
            && page["resets"] == 0,
        "a new page after a frozen one: {page}"
    );
    eprintln!(
        "frozen, then a new page: it started from the saved id: {:.1?}",
        step.elapsed()
    );
    Ok(())
}
