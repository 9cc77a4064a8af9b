//! The demo page in headless Chromium: it shows live events; after the server side drops the
//! connection, the browser's own `EventSource` reconnects and the page shows the missed
//! events, none lost.
//!
//! The real `sse-server` binary runs on a free port; the browser reaches it through a TCP
//! proxy in this test, which plays the network: it cuts the open connections and refuses new
//! ones while events are published straight to the server, then lets the browser back in.
//!
//! Needs Chromium and chromedriver (`apt-get install -y chromium chromium-driver`; other
//! locations through the `CHROMIUM` and `CHROMEDRIVER` variables). Without them the test fails:
//! it never skips.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::proxy::Proxy;
use support::webdriver::Session;
use support::{ChromeDriver, Context, Result, Server, TempDir, Tools, tail};

/// How long any one step may take. The server asks for `retry: 2000`, so the browser tries
/// again about every 2 s.
const DEADLINE: Duration = Duration::from_secs(20);
/// Events published while the browser is cut off.
const MISSED: usize = 5;

/// `ensure!(condition, "format", args…)`: an `Err` with the message when the condition fails.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

#[test]
fn demo_page_shows_missed_events_after_the_server_side_drops_the_connection() {
    let started = Instant::now();
    let tools = Tools::locate();
    let server = Server::start("1s").unwrap_or_else(|err| panic!("{err}"));
    // Declared before the driver, so removed after the browser is gone.
    let profile = TempDir::new("sse-browser-test").unwrap_or_else(|err| panic!("{err}"));
    let driver = ChromeDriver::start(&tools.chromedriver).unwrap_or_else(|err| panic!("{err}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let outcome = runtime.block_on(async {
        let upstream = server.addr.parse().ctx("server address")?;
        let proxy = Proxy::start(upstream).await?;
        let session = Session::start(&driver.url, &tools.chromium, &profile.0).await?;
        let result = scenario(&server, &proxy, &session).await;
        let result = match result {
            Ok(()) => Ok(()),
            Err(err) => Err(format!(
                "{err}\n\npage now: {:?}\nproxy: {} connection(s) refused, {} open, \
                 GET /events requests relayed:\n{:#?}",
                read_page(&session).await,
                proxy.refused(),
                proxy.open(),
                proxy.event_requests(),
            )),
        };
        if let Err(err) = session.close().await {
            eprintln!("warning: could not close the browser session: {err}");
        }
        result
    });
    drop(runtime);

    if let Err(err) = outcome {
        panic!(
            "{err}\n\n--- sse-server output ---\n{}\n--- chromedriver output ---\n{}",
            tail(&server.log, 60),
            tail(&driver.log, 30),
        );
    }
    eprintln!("browser test passed in {:.1?}", started.elapsed());
}

async fn scenario(server: &Server, proxy: &Proxy, session: &Session) -> Result<()> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .ctx("http client")?;
    let step = Instant::now();

    // 127.0.0.1 throughout, so the session cookie always goes back to the same origin.
    session
        .goto(&format!("http://127.0.0.1:{}/", proxy.addr.port()))
        .await?;
    let first = wait_for(session, "the page to connect", |p| {
        p.state == "open" && p.connections == 1
    })
    .await?;
    ensure!(
        first.session.is_some(),
        "no session after connecting: {first:?}"
    );

    // Live events show up.
    publish(&http, server, "live 1").await?;
    let page = wait_for(session, "the live event on the page", |p| {
        p.received.iter().any(|d| d == "live 1") && p.shows("live 1")
    })
    .await?;
    ensure!(page.received == ["live 1"], "received {:?}", page.received);
    eprintln!("connected, live event shown: {:.1?}", step.elapsed());

    // The server side drops the connection, and the browser cannot get back in.
    proxy.refuse(true);
    proxy.cut_all();
    wait_for(session, "the page to show it is reconnecting", |p| {
        p.state == "reconnecting"
    })
    .await?;
    let missed: Vec<String> = (1..=MISSED).map(|i| format!("missed {i}")).collect();
    for data in &missed {
        publish(&http, server, data).await?;
    }
    eprintln!("cut off, {MISSED} events published: {:.1?}", step.elapsed());
    // Let the browser try, and fail, to get back in: a failed attempt must not end the
    // EventSource either.
    let deadline = Instant::now() + DEADLINE;
    while proxy.refused() == 0 {
        ensure!(
            Instant::now() < deadline,
            "the browser made no attempt to reconnect within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for(session, "the page to keep reconnecting", |p| {
        p.state == "reconnecting"
    })
    .await?;

    // The network is back: the browser's own EventSource reconnects, with its Last-Event-ID.
    proxy.refuse(false);
    let page = wait_for(session, "the missed events on the page", |p| {
        missed.iter().all(|m| p.received.contains(m) && p.shows(m))
    })
    .await?;
    eprintln!(
        "reconnected after {} refused attempt(s), missed events shown: {:.1?}",
        proxy.refused(),
        step.elapsed()
    );
    let mut expected = vec!["live 1".to_owned()];
    expected.extend(missed.iter().cloned());
    ensure!(
        page.received == expected,
        "events received, in order, no duplicates: expected {expected:?}, got {:?}",
        page.received
    );
    ensure!(page.resets == 0, "a reset was shown: {page:?}");
    ensure!(page.connections == 2, "connections: {page:?}");
    ensure!(page.replayed == MISSED as u64, "replayed count: {page:?}");
    ensure!(page.state == "open", "state after reconnecting: {page:?}");
    ensure!(
        page.session == first.session,
        "the session changed across the reconnect: {:?} then {:?}",
        first.session,
        page.session
    );
    let shown = ["open", "6", "5", "0", "2"];
    ensure!(
        page.shown == shown,
        "figures on the page (state, received, replayed, resets, connections): \
         expected {shown:?}, got {:?}",
        page.shown
    );
    let mut expected_log = vec![("live 1".to_owned(), String::new())];
    expected_log.extend(missed.iter().map(|m| (m.clone(), "replayed".to_owned())));
    ensure!(
        page.log == expected_log,
        "the page's log (oldest first, with classes): expected {expected_log:?}, got {:?}",
        page.log
    );
    let requests = proxy.event_requests();
    ensure!(
        requests.len() == 2,
        "expected two relayed GET /events requests, got {requests:#?}"
    );
    ensure!(
        last_event_id(&requests[0]).is_none(),
        "the first GET /events already had a Last-Event-ID: {requests:#?}"
    );
    ensure!(
        last_event_id(&requests[1]).is_some_and(|id| !id.is_empty()),
        "the reconnect did not carry a Last-Event-ID: {requests:#?}"
    );

    // And it carries on live.
    publish(&http, server, "live 2").await?;
    let page = wait_for(session, "the next live event on the page", |p| {
        p.received.iter().any(|d| d == "live 2") && p.shows("live 2")
    })
    .await?;
    expected.push("live 2".to_owned());
    expected_log.push(("live 2".to_owned(), String::new()));
    ensure!(
        page.received == expected,
        "events received: expected {expected:?}, got {:?}",
        page.received
    );
    ensure!(page.log == expected_log, "the page's log: {:?}", page.log);
    ensure!(
        page.connections == 2 && page.resets == 0 && page.replayed == MISSED as u64,
        "after the next live event: {page:?}"
    );
    Ok(())
}

/// Publishes `data` on the default stream, straight to the server (not through the proxy).
async fn publish(http: &reqwest::Client, server: &Server, data: &str) -> Result<()> {
    let response = http
        .post(server.url("/publish"))
        .json(&json!({ "data": data }))
        .send()
        .await
        .ctx("POST /publish")?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    ensure!(status == 200, "POST /publish {data:?}: {status} {body}");
    Ok(())
}

/// The `Last-Event-ID` header of a request head, if any.
fn last_event_id(head: &str) -> Option<&str> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("last-event-id")
            .then_some(value.trim())
    })
}

/// What the page knows (`window.demo`) and what it shows.
#[derive(Debug, Clone, PartialEq)]
struct Page {
    state: String,
    received: Vec<String>,
    replayed: u64,
    resets: u64,
    connections: u64,
    session: Option<String>,
    /// The `#log` entries, oldest first: text and class.
    log: Vec<(String, String)>,
    /// The figures displayed: state, received, replayed, resets, connections.
    shown: Vec<String>,
}

impl Page {
    /// `true` when `text` is an entry of the page's log.
    fn shows(&self, text: &str) -> bool {
        self.log.iter().any(|(t, _)| t == text)
    }

    fn from_json(value: &Value) -> Option<Page> {
        let string = |v: &Value| v.as_str().map(str::to_owned);
        let strings =
            |v: &Value| -> Option<Vec<String>> { v.as_array()?.iter().map(string).collect() };
        Some(Page {
            state: string(&value["state"])?,
            received: strings(&value["received"])?,
            replayed: value["replayed"].as_u64()?,
            resets: value["resets"].as_u64()?,
            connections: value["connections"].as_u64()?,
            session: string(&value["session"]),
            log: value["log"]
                .as_array()?
                .iter()
                .map(|entry| Some((string(&entry[0])?, string(&entry[1])?)))
                .collect::<Option<_>>()?,
            shown: strings(&value["shown"])?,
        })
    }
}

const READ_PAGE: &str = r##"
const d = window.demo;
if (!d) return null;
const text = id => document.getElementById(id).textContent;
return {
  state: d.state,
  received: d.received,
  replayed: d.replayed,
  resets: d.resets,
  connections: d.connections,
  session: d.session,
  log: Array.from(document.querySelectorAll("#log li")).reverse().map(li => [li.textContent, li.className]),
  shown: ["state", "received", "replayed", "resets", "connections"].map(text),
};
"##;

/// The page now; `None` before the page's script has run.
async fn read_page(session: &Session) -> Result<Option<Page>> {
    let value = session.execute(READ_PAGE).await?;
    if value.is_null() {
        return Ok(None);
    }
    Page::from_json(&value)
        .map(Some)
        .ok_or_else(|| format!("unexpected window.demo: {value}"))
}

/// Polls the page until `done`, for at most [`DEADLINE`].
async fn wait_for(session: &Session, what: &str, done: impl Fn(&Page) -> bool) -> Result<Page> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let page = read_page(session).await?;
        if let Some(page) = page.as_ref().filter(|p| done(p)) {
            return Ok(page.clone());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out after {DEADLINE:?} waiting for {what}; the page: {page:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
