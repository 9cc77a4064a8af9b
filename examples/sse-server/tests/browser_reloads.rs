//! Rapid page reloads in headless Chromium while events are published every 20 ms, on each
//! backend (memory, Redis, PostgreSQL), through the demo page:
//!
//! - with the browser helper's saved id (`?save=session`): over every page load together,
//!   every event exactly once, in order, and no reset;
//! - as a plain `EventSource` (no saved id; the session cookie brings the session's cursor):
//!   never an event twice, never out of order, never a reset, and every reload resumes (a
//!   reload never starts at the head: the server waits for the closing connection's cursor,
//!   `--reload-wait`). What was in flight when a page went is lost, as docs/protocol.md
//!   ("Page reloads") says; the count is printed.
//!
//! Needs Chromium and chromedriver, like `browser.rs`, and the Redis and PostgreSQL servers
//! the other tests use.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::Result;
use support::browser::{Env, NO_BFCACHE, Publisher, run_with};
use support::postgres::{Schema, random_u64};

/// Reads the demo page's figures (`window.demo`).
const DEMO: &str = r##"
const d = window.demo;
if (!d) return null;
return {
  state: d.state, received: d.received, resets: d.resets, resumed: d.resumed,
  load: d.load, history: d.history, marker: window.marker ?? null,
};
"##;

/// Each page, as it goes, keeps what it processed in sessionStorage (the plain pages save
/// nothing of their own).
const KEEP: &str = r#"
window.addEventListener("pagehide", () => {
  const loads = JSON.parse(sessionStorage.getItem("test-loads") ?? "[]");
  const d = window.demo;
  loads.push({ received: d.received, resets: d.resets, resumed: d.resumed });
  sessionStorage.setItem("test-loads", JSON.stringify(loads));
});
window.marker = "kept";
return null;
"#;

/// Reloads per scenario.
const RELOADS: usize = 10;
/// Events each page processes before it is reloaded.
const BEFORE_RELOAD: usize = 3;
/// The publishing interval.
const EVERY: Duration = Duration::from_millis(20);

#[test]
fn rapid_reloads_on_memory() {
    reloads("memory", "memory");
}

#[test]
fn rapid_reloads_on_redis() {
    reloads("redis", "redis://127.0.0.1:6379");
}

#[test]
fn rapid_reloads_on_postgres() {
    let schema = Schema::new();
    reloads("postgres", &schema.store_url());
}

fn reloads(backend: &str, store: &str) {
    // Streams of their own: the Redis and PostgreSQL servers outlive the test.
    let tag = format!("{:08x}", random_u64() as u32);
    run_with(
        &format!("sse-reloads-{backend}"),
        &["--store", store, "--heartbeat", "1s"],
        // Without the back/forward cache: a reloaded page is unloaded, as most are.
        &[NO_BFCACHE],
        DEMO,
        async |env: &Env| {
            helper(env, backend, &format!("helper-{tag}")).await?;
            plain(env, backend, &format!("plain-{tag}")).await
        },
    );
}

/// One page load's record, kept at `pagehide` (and read from the last page at the end).
#[derive(Debug)]
struct Load {
    received: Vec<u64>,
    resets: u64,
    resumed: Vec<bool>,
}

impl Load {
    fn of(value: &Value) -> Load {
        Load {
            received: numbers(&value["received"]),
            resets: value["resets"].as_u64().unwrap_or(u64::MAX),
            resumed: value["resumed"]
                .as_array()
                .map(|a| a.iter().map(|v| v == true).collect())
                .unwrap_or_default(),
        }
    }
}

/// `r17` → 17, for each string of an array.
fn numbers(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str()?.strip_prefix('r')?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Reloads the page [`RELOADS`] times, each once it processed [`BEFORE_RELOAD`] events,
/// while events are published every [`EVERY`]; every page load's record, in order, and how
/// many events were published.
async fn reload_rapidly(env: &Env, url: &str, stream: &str) -> Result<(Vec<Load>, usize)> {
    env.browser.goto(url).await?;
    env.wait("the page to connect", DEMO, |p| p["state"] == "open")
        .await?;
    // The tab's earlier scenario kept its loads in the same sessionStorage.
    env.browser
        .execute(r#"sessionStorage.removeItem("test-loads"); return null;"#)
        .await?;
    env.browser.execute(KEEP).await?;
    let publisher = Publisher::start(env, stream, EVERY);
    for load in 1..=RELOADS {
        env.wait(
            &format!("page load {load} to process a few events"),
            DEMO,
            |p| {
                p["marker"] == "kept"
                    && p["received"]
                        .as_array()
                        .is_some_and(|r| r.len() >= BEFORE_RELOAD)
            },
        )
        .await?;
        env.browser.refresh().await?;
        env.wait("the new page", DEMO, |p| p["marker"].is_null())
            .await?;
        env.browser.execute(KEEP).await?;
    }
    env.wait("the last page to process a few events", DEMO, |p| {
        p["received"]
            .as_array()
            .is_some_and(|r| r.len() >= BEFORE_RELOAD)
    })
    .await?;
    let total = publisher.stop().await?;
    let last = format!("r{total}");
    let page = env
        .wait("the last event published", DEMO, |p| {
            p["received"]
                .as_array()
                .and_then(|r| r.last())
                .is_some_and(|d| *d == *last)
        })
        .await?;
    let earlier = env
        .browser
        .execute(r#"return JSON.parse(sessionStorage.getItem("test-loads") ?? "[]");"#)
        .await?;
    let mut loads: Vec<Load> = earlier
        .as_array()
        .map(|l| l.iter().map(Load::of).collect())
        .unwrap_or_default();
    loads.push(Load::of(&page));
    ensure!(
        loads.len() == RELOADS + 1,
        "expected {} page loads, recorded {}: {loads:?}",
        RELOADS + 1,
        loads.len()
    );
    Ok((loads, total))
}

/// With the helper's saved id: every event once, in order, over every page load together.
async fn helper(env: &Env, backend: &str, stream: &str) -> Result<()> {
    let step = Instant::now();
    let url = env.page_url(&format!("/?stream={stream}&save=session"));
    let (loads, total) = reload_rapidly(env, &url, stream).await?;
    let processed: Vec<u64> = loads.iter().flat_map(|l| l.received.clone()).collect();
    let all: Vec<u64> = (1..=total as u64).collect();
    let resets: u64 = loads.iter().map(|l| l.resets).sum();
    ensure!(
        processed == all,
        "{backend}, helper: over {} page loads, every event once and in order: expected \
         r1..r{total}, got {processed:?}",
        loads.len()
    );
    ensure!(resets == 0, "{backend}, helper: {resets} resets: {loads:?}");
    eprintln!(
        "{backend}, helper: {RELOADS} rapid reloads, {total} events published every \
         {EVERY:?}: 0 lost, 0 duplicated, 0 reordered, 0 resets ({:.1?})",
        step.elapsed()
    );
    Ok(())
}

/// A plain `EventSource`: never twice, never out of order, never a reset, every reload
/// resumes from the session's cursor; the events in flight at each reload are counted.
async fn plain(env: &Env, backend: &str, stream: &str) -> Result<()> {
    let step = Instant::now();
    let url = env.page_url(&format!("/?stream={stream}"));
    let (loads, total) = reload_rapidly(env, &url, stream).await?;
    let processed: Vec<u64> = loads.iter().flat_map(|l| l.received.clone()).collect();
    ensure!(
        processed.windows(2).all(|w| w[0] < w[1]) && processed.last() == Some(&(total as u64)),
        "{backend}, plain: in order, never twice, up to r{total}: {loads:?}"
    );
    let resets: u64 = loads.iter().map(|l| l.resets).sum();
    ensure!(resets == 0, "{backend}, plain: {resets} resets: {loads:?}");
    let mut lost = 0;
    for (k, load) in loads.iter().enumerate() {
        ensure!(
            !load.received.is_empty() && load.received.windows(2).all(|w| w[1] == w[0] + 1),
            "{backend}, plain: page load {} missed an event while it was open, or processed \
             none: {load:?}",
            k + 1
        );
        if k > 0 {
            ensure!(
                load.resumed.first() == Some(&true),
                "{backend}, plain: page load {} started at the head instead of resuming the \
                 session's cursor: {load:?}",
                k + 1
            );
            let previous = loads[k - 1].received.last().copied().unwrap_or(0);
            lost += load.received[0] - previous - 1;
        }
    }
    eprintln!(
        "{backend}, plain EventSource: {RELOADS} rapid reloads, {total} events published \
         every {EVERY:?}: {lost} lost at the reloads (in flight when the page went), none \
         twice, none out of order, no reset, every reload resumed ({:.1?})",
        step.elapsed()
    );
    Ok(())
}
