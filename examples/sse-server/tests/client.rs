//! The Rust client (`resumable-sse-client`) against the real `sse-server` binary on every
//! backend: the in-memory store, the shared Redis (`127.0.0.1:6379`, random stream names) and
//! the shared PostgreSQL (a schema per test). Without Redis or PostgreSQL the tests fail
//! saying how to start them; they never skip.
//!
//! Per backend, on one server:
//!
//! 1. **Chaos**: 20 clients through a proxy that cuts one connection at random, 150 times,
//!    while 300 events are published: every client gets every event once, in order, and
//!    never a reset. Half the clients keep their session token, half never send it.
//! 2. **A private message while away**: the client's connections are cut and refused while
//!    its session is sent a message; once back, with its token, it receives it (a client
//!    without its token gets a typed `reset`, `session_changed`, instead).
//! 3. **A process restart**: the client's saved state (JSON) goes to a new client, which
//!    gets exactly the events published in between, without a reset.
//!
//! Every wait is on a condition with a deadline; the only sleeps pace the cuts.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use resumable_sse_client::{Backoff, Client, Connected, Event, Message, ResetReason, Resume};
use resumable_sse_store_redis::testing::{HOW_TO_START, answers};
use serde_json::{Value, json};
use support::postgres::Schema;
use support::proxy::Proxy;
use support::{Server, tail};
use tokio::time::Instant;

/// Clients in the chaos part, half of them without their token.
const CLIENTS: usize = 20;
/// Connections cut in the chaos part.
const CUTS: usize = 150;
/// Events published during the chaos part.
const EVENTS: u64 = 300;
/// How long one expected thing may take.
const WAIT: Duration = Duration::from_secs(20);
/// The signing key (one server per test; given so the server does not warn).
const KEY: &str = "client-tests-signing-key-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_on_memory() {
    run("memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_on_redis() {
    assert!(
        answers(6379),
        "these tests need Redis on 127.0.0.1:6379; {HOW_TO_START}"
    );
    run("redis://127.0.0.1:6379").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_on_postgres() {
    let schema = Schema::new();
    run(&schema.store_url()).await;
}

async fn run(store: &str) {
    let started = std::time::Instant::now();
    let server =
        Server::start_with(&["--listen", "127.0.0.1:0", "--store", store, "--secret", KEY])
            .unwrap_or_else(|err| panic!("{err}"));
    let _logs = Logs(&server);
    let chaos = chaos(&server).await;
    let private = private_message_while_away(&server).await;
    let restart = resume_after_restart(&server).await;
    eprintln!(
        "{}: chaos {chaos}; private message {private:?}; restart {restart:?}; total {:?}",
        store.split("://").next().unwrap_or(store),
        started.elapsed()
    );
}

/// Prints the server's output if the test panics.
struct Logs<'a>(&'a Server);

impl Drop for Logs<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- sse-server output ---\n{}", tail(&self.0.log, 40));
        }
    }
}

/// A stream name no other test or run uses.
fn unique(what: &str) -> String {
    format!("{what}-{}", resumable_sse_core::SessionId::random())
}

/// Quick reconnects (the server's `retry: 2000` is capped at 50 ms), so that no wait decides
/// anything and 150 cuts take little time.
fn quick() -> Backoff {
    Backoff::new(Duration::from_millis(5), Duration::from_millis(50))
}

async fn publish(server: &Server, body: Value) {
    let response = reqwest::Client::new()
        .post(server.url("/publish"))
        .timeout(WAIT)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|err| panic!("POST /publish: {err}"));
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "publishing {body}: {answer}");
}

/// The next event within [`WAIT`]; fails on an error or the end.
async fn next(client: &mut Client, what: &str) -> Event {
    match tokio::time::timeout(WAIT, client.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(err))) => panic!("{what}: the client stopped: {err}"),
        Ok(None) => panic!("{what}: the client ended"),
        Err(_) => panic!("{what}: nothing within {WAIT:?} ({client:?})"),
    }
}

/// Reads until the `connected` marker.
async fn connected(client: &mut Client, what: &str) -> Connected {
    loop {
        match next(client, what).await {
            Event::Connected(c) => return c,
            Event::Opened | Event::Disconnected(_) => {}
            other => panic!("{what}: {other:?} before `connected`"),
        }
    }
}

/// Reads until a message, checking every marker on the way: a reset fails the test.
async fn message(client: &mut Client, what: &str) -> Message {
    loop {
        match next(client, what).await {
            Event::Message(m) => return m,
            Event::Connected(c) => assert!(!c.reset, "{what}: {c:?}"),
            Event::Reset(r) => panic!("{what}: {r:?}"),
            _ => {}
        }
    }
}

/// A connection over a cap is refused in-band: the client yields a typed `Refused`, waits
/// what the server asked (not its own quick backoff), counts the attempt as one that got no
/// event, and once the cap allows it resumes with exactly what was published meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_wait_as_asked_and_lose_nothing() {
    let server = Server::start_with(&[
        "--listen",
        "127.0.0.1:0",
        "--max-connections-per-ip",
        "1",
        "--refusal-retry",
        "300ms",
        "--refusal-retry-max",
        "3s",
    ])
    .unwrap_or_else(|err| panic!("{err}"));
    let proxy = Proxy::start(server.addr.parse().expect("an address"))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let stream = unique("refused");
    let what = "the refused client";
    // Through the proxy, so that its connection can be cut and kept away while another
    // client (same address: the proxy connects from 127.0.0.1 too) takes the only place.
    let mut client = Client::builder(format!("http://{}/events?stream={stream}", proxy.addr))
        .backoff(quick())
        .build()
        .expect("a client");
    connected(&mut client, what).await;
    publish(&server, json!({"stream": stream, "data": "before"})).await;
    assert_eq!(message(&mut client, what).await.data, "before");

    proxy.refuse(true);
    proxy.cut_all();
    loop {
        if let Event::Disconnected(_) = next(&mut client, what).await {
            break;
        }
    }
    let mut other = Client::builder(server.url(&format!("/events?stream={stream}")))
        .backoff(quick())
        .build()
        .expect("a client");
    // The server may not have seen the cut connection close yet: until it has, the place is
    // still taken and this client is refused too (it waits as asked and tries again).
    let what_other = "the client holding the place";
    loop {
        match next(&mut other, what_other).await {
            Event::Connected(_) => break,
            Event::Opened | Event::Disconnected(_) | Event::Refused(_) => {}
            event => panic!("{what_other}: {event:?} before `connected`"),
        }
    }
    proxy.refuse(false);

    // Refused at least twice in a row: each wait is the one asked for, and grows.
    let mut waits = Vec::new();
    while waits.len() < 2 {
        match next(&mut client, what).await {
            Event::Refused(refused) => {
                assert_eq!(refused.reason, "max_connections_per_ip", "{refused:?}");
                let Event::Disconnected(gone) = next(&mut client, what).await else {
                    panic!("{what}: the response ends after `refused`");
                };
                assert!(gone.error.is_none(), "{gone:?}");
                assert_eq!(gone.retry_in, refused.retry_in, "the wait asked for");
                assert!(gone.failures as usize > waits.len(), "{gone:?}");
                waits.push(refused.retry_in);
            }
            Event::Opened | Event::Disconnected(_) => {}
            other => panic!("{what}: {other:?} while over the cap"),
        }
    }
    assert!(
        waits.iter().all(|w| *w >= Duration::from_millis(150)),
        "far above the client's own 50 ms: {waits:?}"
    );
    publish(&server, json!({"stream": stream, "data": "while refused"})).await;
    drop(other);

    let back = connected(&mut client, what).await;
    assert!(back.resumed && !back.reset, "{back:?}");
    assert_eq!(message(&mut client, what).await.data, "while refused");
    publish(&server, json!({"stream": stream, "data": "after"})).await;
    assert_eq!(message(&mut client, what).await.data, "after");
}

/// What one chaos client saw.
#[derive(Default)]
struct Seen {
    opened: usize,
    disconnected: usize,
    /// Disconnections of a response that had delivered events.
    mid_stream: usize,
}

/// The chaos part; returns its figures.
async fn chaos(server: &Server) -> String {
    let started = Instant::now();
    let proxy = Proxy::start(server.addr.parse().expect("an address"))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let stream = unique("chaos");
    let url = format!("http://{}/events?stream={stream}", proxy.addr);
    // Every client has its first cursor before anything is published.
    let ready = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        let (url, ready) = (url.clone(), ready.clone());
        clients.push(tokio::spawn(async move {
            let keeps_token = k % 2 == 0;
            let what = format!("chaos client {k} (keeps its token: {keeps_token})");
            let mut client = Client::builder(&url)
                .backoff(quick())
                .keep_session(keeps_token)
                .build()
                .expect("a client");
            let first = connected(&mut client, &what).await;
            assert!(!first.reset, "{what}: {first:?}");
            ready.wait().await;
            let mut seen = Seen::default();
            let mut expected = 1u64;
            loop {
                match next(&mut client, &what).await {
                    Event::Message(m) if m.data == "end" => break,
                    Event::Message(m) => {
                        assert_eq!(
                            m.data,
                            expected.to_string(),
                            "{what}: every event once, in order"
                        );
                        expected += 1;
                    }
                    Event::Connected(c) => {
                        assert!(!c.reset, "{what}: {c:?}");
                        if keeps_token {
                            assert_eq!(c.session, first.session, "{what} keeps its session");
                        } else {
                            assert_ne!(c.session, first.session, "{what} sends no token");
                        }
                    }
                    Event::Reset(r) => panic!("{what}: a reset: {r:?}"),
                    Event::Opened => seen.opened += 1,
                    Event::Disconnected(d) => {
                        seen.disconnected += 1;
                        seen.mid_stream += usize::from(d.failures == 0);
                    }
                    other => panic!("{what}: {other:?}"),
                }
            }
            assert_eq!(expected, EVENTS + 1, "{what}: every event");
            seen
        }));
    }
    ready.wait().await;

    // Event i goes out once (i − 1) × CUTS / EVENTS cuts are made, so publishing spans the
    // cutting whatever the machine's speed.
    let made = Arc::new(AtomicUsize::new(0));
    let (made_tx, mut made_rx) = tokio::sync::watch::channel(0usize);
    let cutter = {
        let made = made.clone();
        async move {
            let mut rng = StdRng::seed_from_u64(0x5EED_C11E);
            while made.load(Ordering::SeqCst) < CUTS {
                // Pacing only: a cut every few milliseconds.
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..=4))).await;
                // Four cuts in five hit a response that has given its client a cursor, the
                // others any connection (one still waiting for its response, too).
                let answered = rng.random_range(0..5) > 0;
                if proxy.cut_one(rng.random_range(0..usize::MAX), answered) {
                    let n = made.fetch_add(1, Ordering::SeqCst) + 1;
                    made_tx.send_replace(n);
                }
            }
            proxy
        }
    };
    let publisher = async {
        for i in 1..=EVENTS {
            let due = |m: &usize| *m >= CUTS || (*m as u64) * EVENTS >= (i - 1) * CUTS as u64;
            made_rx.wait_for(due).await.expect("the cutter lives");
            publish(server, json!({"stream": stream, "data": i.to_string()})).await;
        }
    };
    let (proxy, ()) = tokio::join!(cutter, publisher);
    publish(server, json!({"stream": stream, "data": "end"})).await;

    let mut total = Seen::default();
    for client in clients {
        let seen = client.await.expect("a chaos client");
        total.opened += seen.opened;
        total.disconnected += seen.disconnected;
        total.mid_stream += seen.mid_stream;
    }
    drop(proxy);
    assert!(
        total.disconnected >= CUTS,
        "the clients noticed every cut: {} disconnections",
        total.disconnected
    );
    assert!(
        total.mid_stream >= CUTS / 4,
        "cuts hit responses under way: {} of {CUTS}",
        total.mid_stream
    );
    format!(
        "{CLIENTS} clients, {CUTS} cuts, {EVENTS} events, {} responses, {} disconnections \
         ({} after events), 0 resets, in {:?}",
        total.opened,
        total.disconnected,
        total.mid_stream,
        started.elapsed()
    )
}

/// A message to the session while the client cannot connect: received once it is back. A
/// client without its token, sent a message the same way, cannot receive it: it gets a
/// typed `reset` (`session_changed`), the one case where it must (docs/adr/0016).
async fn private_message_while_away(server: &Server) -> Duration {
    let started = Instant::now();
    let proxy = Proxy::start(server.addr.parse().expect("an address"))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let url = format!("http://{}/events?stream={}", proxy.addr, unique("away"));
    let (what, what_tokenless) = ("the client away", "the token-less client away");
    let mut client = Client::builder(&url)
        .backoff(quick())
        .build()
        .expect("a client");
    let mut tokenless = Client::builder(&url)
        .backoff(quick())
        .keep_session(false)
        .build()
        .expect("a client");
    let first = connected(&mut client, what).await;
    let first_tokenless = connected(&mut tokenless, what_tokenless).await;
    proxy.refuse(true);
    proxy.cut_all();
    for (client, what) in [(&mut client, what), (&mut tokenless, what_tokenless)] {
        loop {
            if let Event::Disconnected(_) = next(client, what).await {
                break;
            }
        }
    }
    for away in [&first, &first_tokenless] {
        let session = away.session.clone().expect("a session");
        publish(server, json!({"session": session, "data": "private"})).await;
    }
    proxy.refuse(false);

    let back = connected(&mut client, what).await;
    assert_eq!(back.session, first.session, "{back:?}");
    assert!(back.resumed && !back.reset, "{back:?}");
    assert_eq!(message(&mut client, what).await.data, "private");

    let back = connected(&mut tokenless, what_tokenless).await;
    assert_ne!(back.session, first_tokenless.session, "{back:?}");
    assert!(back.resumed && back.reset, "{back:?}");
    let Event::Reset(reset) = next(&mut tokenless, what_tokenless).await else {
        panic!("{what_tokenless}: a reset after `connected`")
    };
    assert_eq!(reset.reason, ResetReason::SessionChanged, "{reset:?}");
    assert_eq!(reset.streams.len(), 1, "only the private stream: {reset:?}");
    started.elapsed()
}

/// The client's state saved as JSON, the client dropped, events and a private message
/// published, a new client from the saved state: exactly what was missed, then live.
async fn resume_after_restart(server: &Server) -> Duration {
    let started = Instant::now();
    let stream = unique("restart");
    let url = server.url(&format!("/events?stream={stream}"));
    let what = "the first process";
    let mut client = Client::new(&url).expect("a client");
    let first = connected(&mut client, what).await;
    publish(server, json!({"stream": stream, "data": "seen"})).await;
    assert_eq!(message(&mut client, what).await.data, "seen");
    let saved = serde_json::to_string(&client.resume_state()).expect("JSON");
    assert!(client.session_token().is_some() && client.last_event_id().is_some());
    drop(client);

    let missed = ["missed 1", "missed 2", "missed 3"];
    for data in missed {
        publish(server, json!({"stream": stream, "data": data})).await;
    }
    let session = first.session.clone().expect("a session");
    publish(server, json!({"session": session, "data": "private"})).await;

    let what = "the second process";
    let resume: Resume = serde_json::from_str(&saved).expect("the saved state");
    let mut client = Client::builder(&url)
        .resume(resume)
        .build()
        .expect("a client");
    let back = connected(&mut client, what).await;
    assert_eq!(back.session, first.session, "the same session: {back:?}");
    assert!(back.resumed && !back.reset, "{back:?}");
    assert_eq!(back.replay, 4, "{back:?}");
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(message(&mut client, what).await.data);
    }
    let stream_events: Vec<_> = got.iter().filter(|d| *d != "private").collect();
    assert_eq!(stream_events, missed, "exactly the missed events, in order");
    assert!(got.contains(&"private".to_owned()), "{got:?}");
    publish(server, json!({"stream": stream, "data": "live"})).await;
    assert_eq!(message(&mut client, what).await.data, "live");
    started.elapsed()
}
