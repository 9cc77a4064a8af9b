//! A page on another origin than the server, in headless Chromium: two `EventSource`s, one
//! with `withCredentials` (it keeps its session through the cookie) and one without
//! (token-less: a new session on every connection), and the browser helper
//! (`/resumable-sse.js`, imported cross-origin) in fetch mode without cookies (it keeps its
//! session through the `x-sse-session` header), through connection cuts with events published
//! while they are away. All receive every event exactly once, in order, and none is ever sent
//! a `reset`.
//!
//! The page comes from a small server in this test; the events from `http://127.0.0.1:Q`,
//! the real `sse-server` behind the cut proxy, started with `--cors-origin` for the page's
//! origin. Two cases: the page on `http://localhost:P`, another *site* (the server also gets
//! `--cookie-same-site none`), and on `http://127.0.0.1:P`, another origin of the same site
//! (the default `SameSite=Strict` cookie). The browser runs with third-party cookies allowed,
//! a browser's default outside private windows; where they are blocked, a credentialed page on
//! another site is token-less like the other one (still exact, no reset).
//!
//! Needs Chromium and chromedriver, like the other browser test; it never skips.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::browser::{self, DEADLINE, Env};
use support::webdriver::Session;
use support::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Times the network is cut.
const CUTS: usize = 4;
/// Events published while connected, and while cut off, per round.
const PER_ROUND: usize = 3;
const STREAM: &str = "cross-site";

#[test]
fn a_page_on_another_site_resumes_exactly_with_and_without_credentials() {
    // Another site: the cookie must be `SameSite=None` to come back with credentials.
    cross_origin("localhost", &["--cookie-same-site", "none"]);
}

#[test]
fn a_page_on_another_origin_of_the_same_site_resumes_exactly_with_the_default_cookie() {
    // Another port of the same host: same site, so the default `SameSite=Strict` cookie is
    // sent on credentialed requests.
    cross_origin("127.0.0.1", &[]);
}

/// The scenario with the page served from `http://{page_host}:P` and the server started with
/// `--cors-origin` for that origin and `server_args`.
fn cross_origin(page_host: &str, server_args: &[&str]) {
    // Bound first: the server is told the page's origin.
    let page_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the page server");
    page_listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let page_port = page_listener.local_addr().expect("page address").port();
    let origin = format!("http://{page_host}:{page_port}");
    let mut args = vec!["--heartbeat", "1s", "--cors-origin", &origin];
    args.extend_from_slice(server_args);
    browser::run(
        "sse-cross-origin-test",
        &args,
        "return window.clients || null;",
        async |env: &Env| {
            let listener = TcpListener::from_std(page_listener).ctx("the page server")?;
            tokio::spawn(serve_page(listener, env.proxy.addr));
            scenario(env, &origin).await
        },
    );
}

async fn scenario(env: &Env, origin: &str) -> Result<()> {
    let (server, proxy, session, http) = (&env.server, &env.proxy, &env.browser, &env.http);
    session.goto(&format!("{origin}/")).await?;
    let clients = wait_for(session, "the three clients to connect", |c| {
        c.iter().all(|c| c.sessions.len() == 1)
    })
    .await?;
    ensure!(clients.iter().all(|c| c.errors.is_empty()), "{clients:#?}");

    let mut expected = Vec::new();
    let mut next = 0;
    let mut publish_round = async |expected: &mut Vec<String>| -> Result<()> {
        for _ in 0..PER_ROUND {
            next += 1;
            let data = format!("event {next}");
            let response = http
                .post(server.url("/publish"))
                .json(&json!({"stream": STREAM, "data": data}))
                .send()
                .await
                .ctx("POST /publish")?;
            ensure!(response.status() == 200, "publish: {}", response.status());
            expected.push(data);
        }
        Ok(())
    };
    for cut in 1..=CUTS {
        // Live.
        publish_round(&mut expected).await?;
        wait_for(session, "the live events", |c| {
            c.iter().all(|c| c.received.len() >= expected.len())
        })
        .await?;
        // Cut off while more are published, then back.
        proxy.refuse(true);
        proxy.cut_all();
        wait_for(session, "the three clients to notice the cut", |c| {
            c.iter().all(|c| c.errors.len() >= cut)
        })
        .await?;
        publish_round(&mut expected).await?;
        proxy.refuse(false);
        wait_for(session, "the missed events after reconnecting", |c| {
            c.iter()
                .all(|c| c.received.len() >= expected.len() && c.sessions.len() > cut)
        })
        .await?;
    }
    let clients = read(session).await?;
    for client in &clients {
        ensure!(
            client.received == expected,
            "{}: every event once, in order: expected {expected:?}, got {:?}",
            client.name,
            client.received
        );
        ensure!(
            client.resets.is_empty(),
            "{}: a reset although nothing was lost: {:?}",
            client.name,
            client.resets
        );
        ensure!(
            client.sessions.len() == CUTS + 1,
            "{}: connections: {:?}",
            client.name,
            client.sessions
        );
    }
    let [credentialed, anonymous, fetch] = &clients[..] else {
        return Err(format!("three clients expected: {clients:#?}"));
    };
    ensure!(
        credentialed
            .sessions
            .iter()
            .all(|s| *s == credentialed.sessions[0]),
        "withCredentials keeps its session through the cross-site cookie: {:?}",
        credentialed.sessions
    );
    ensure!(
        fetch.sessions.iter().all(|s| *s == fetch.sessions[0]),
        "fetch mode keeps its session through the session header: {:?}",
        fetch.sessions
    );
    let mut distinct = anonymous.sessions.clone();
    distinct.sort();
    distinct.dedup();
    ensure!(
        distinct.len() == anonymous.sessions.len(),
        "without credentials no cookie is sent: a new session each time: {:?}",
        anonymous.sessions
    );
    // What went over the wire: the cookie only ever from the credentialed client, and every
    // reconnect with its Last-Event-ID.
    let requests = proxy.event_requests();
    for (client, wants_cookie) in [("with", true), ("without", false), ("fetch", false)] {
        let heads: Vec<&String> = requests
            .iter()
            .filter(|h| h.contains(&format!("credentials={client} ")))
            .collect();
        ensure!(heads.len() == CUTS + 1, "{client}: {heads:#?}");
        for (i, head) in heads.iter().enumerate() {
            let lower = head.to_ascii_lowercase();
            ensure!(
                lower.contains(&format!("\norigin: {origin}")),
                "{client}: no Origin: {head}"
            );
            ensure!(
                lower.contains("\ncookie: sse_session=") == (wants_cookie && i > 0),
                "{client} credentials, request {i}: cookie sent? {head}"
            );
            ensure!(
                lower.contains("\nlast-event-id: ") == (i > 0),
                "{client} credentials, request {i}: Last-Event-ID? {head}"
            );
            ensure!(
                lower.contains("\nx-sse-session: ") == (client == "fetch" && i > 0),
                "{client} credentials, request {i}: session header? {head}"
            );
        }
    }
    eprintln!(
        "{} events, {CUTS} cuts: every client exact, no reset; sessions with credentials {:?}",
        expected.len(),
        credentialed.sessions.len()
    );
    Ok(())
}

/// The page: two `EventSource`s on the server's events, recording what they see.
fn page(events: SocketAddr) -> String {
    format!(
        r#"<!doctype html>
<meta charset="utf-8">
<title>cross-site</title>
<script type="module">
import {{ ResumableEventSource }} from "http://{events}/resumable-sse.js";
window.clients = [];
for (const [name, withCredentials] of [["with", true], ["without", false]]) {{
  const c = {{ name, received: [], resets: [], sessions: [], errors: [] }};
  window.clients.push(c);
  const url = "http://{events}/events?stream={STREAM}&credentials=" + name;
  const source = new EventSource(url, {{ withCredentials }});
  source.addEventListener("connected", e => c.sessions.push(JSON.parse(e.data).session));
  source.addEventListener("reset", e => c.resets.push(e.data));
  source.onmessage = e => c.received.push(e.data);
  source.onerror = () => c.errors.push(source.readyState);
}}
// The browser helper in fetch mode, without cookies: the session travels in its header.
const c = {{ name: "fetch", received: [], resets: [], sessions: [], errors: [] }};
window.clients.push(c);
new ResumableEventSource("http://{events}/events?stream={STREAM}&credentials=fetch", {{
  mode: "fetch",
  credentials: "omit",
  backoff: {{ initial: 500, max: 2000 }},
  on: {{ message: e => c.received.push(e.data) }},
  onConnected: info => c.sessions.push(info.session),
  onReset: info => c.resets.push(JSON.stringify(info)),
  onStateChange: state => {{ if (state === "reconnecting") c.errors.push(state); }},
}});
</script>
"#
    )
}

/// Answers every request on `listener` with the page.
async fn serve_page(listener: TcpListener, events: SocketAddr) {
    let body = page(events);
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let body = body.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}

#[derive(Debug, Clone)]
struct Client {
    name: String,
    received: Vec<String>,
    resets: Vec<String>,
    sessions: Vec<String>,
    errors: Vec<Value>,
}

async fn read(session: &Session) -> Result<Vec<Client>> {
    let value = session.execute("return window.clients || null;").await?;
    let Some(clients) = value.as_array() else {
        return Ok(Vec::new());
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(clients
        .iter()
        .map(|c| Client {
            name: c["name"].as_str().unwrap_or_default().to_owned(),
            received: strings(&c["received"]),
            resets: strings(&c["resets"]),
            sessions: strings(&c["sessions"]),
            errors: c["errors"].as_array().cloned().unwrap_or_default(),
        })
        .collect())
}

/// Polls the page until `done` holds for its clients, for at most [`DEADLINE`].
async fn wait_for(
    session: &Session,
    what: &str,
    done: impl Fn(&[Client]) -> bool,
) -> Result<Vec<Client>> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let clients = read(session).await?;
        if clients.len() == 3 && done(&clients) {
            return Ok(clients);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out after {DEADLINE:?} waiting for {what}; the page's clients: {clients:#?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
