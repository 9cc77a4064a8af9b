//! The client against a plain axum `Sse` server (no resumable-sse protocol): ids, `retry:`,
//! responses that end (cleanly or abruptly) now and then, statuses and content types.
//!
//! Real HTTP on port 0; every wait is on a condition with a deadline.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{StreamExt, stream};
use resumable_sse_client::{Backoff, Client, Error, Event, Message};
use tokio::time::Instant;

/// How long one expected thing may take.
const WAIT: Duration = Duration::from_secs(10);
/// The `retry:` the server sends.
const RETRY: Duration = Duration::from_millis(300);
/// Events in all; each response sends at most `PER_RESPONSE` of them, then ends.
const TOTAL: u64 = 10;
const PER_RESPONSE: u64 = 3;

/// What the server saw of one `GET`.
#[derive(Clone, Debug)]
struct Seen {
    accept: Option<String>,
    last_event_id: Option<String>,
    session: Option<String>,
    authorization: Option<String>,
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    /// Cuts the response that waits for it (once the client has its events: a cut before
    /// anything is written would be a failed request, not a cut stream).
    cut: tokio::sync::Notify,
}

fn header_of(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

impl Shared {
    /// Records a request; returns its number (from 1).
    fn record(&self, headers: &HeaderMap) -> usize {
        let mut seen = self.seen.lock().expect("lock");
        seen.push(Seen {
            accept: header_of(headers, "accept"),
            last_event_id: header_of(headers, "last-event-id"),
            session: header_of(headers, "x-sse-session"),
            authorization: header_of(headers, "authorization"),
        });
        seen.len()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

/// Up to three events after `Last-Event-ID`, each with its number as id, after a `retry:`;
/// then the response ends: cleanly on odd requests; on even ones with an error (the
/// connection is cut mid-body) once the test says so. Answers
/// `x-sse-session: token-<request>`.
async fn numbered(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let request = shared.record(&headers);
    let after: u64 = header_of(&headers, "last-event-id")
        .and_then(|id| id.parse().ok())
        .unwrap_or(0);
    let mut events = vec![Ok(SseEvent::default().retry(RETRY))];
    for n in (after + 1..=TOTAL).take(PER_RESPONSE as usize) {
        events.push(Ok(SseEvent::default()
            .id(n.to_string())
            .data(format!("event {n}"))));
    }
    let cut = (request % 2 == 0).then(|| {
        stream::once(async move {
            shared.cut.notified().await;
            Err(std::io::Error::other("cut"))
        })
    });
    let body = Sse::new(stream::iter(events).chain(stream::iter(cut).flatten()));
    ([("x-sse-session", format!("token-{request}"))], body).into_response()
}

/// One event, then silence for ever.
async fn silent(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    shared.record(&headers);
    let first = stream::iter([Ok::<_, Infallible>(
        SseEvent::default().id("1").data("only"),
    )]);
    Sse::new(first.chain(stream::pending())).into_response()
}

/// The first request gets `status`, later ones an event stream with one event.
async fn flaky(
    State(shared): State<Arc<Shared>>,
    Path(status): Path<u16>,
    headers: HeaderMap,
) -> Response {
    if shared.record(&headers) == 1 {
        return StatusCode::from_u16(status)
            .expect("a status")
            .into_response();
    }
    let events = stream::iter([Ok::<_, Infallible>(SseEvent::default().data("after"))]);
    Sse::new(events.chain(stream::pending())).into_response()
}

/// The first request gets 429 with `Retry-After: 1`, later ones an event stream.
async fn busy(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if shared.record(&headers) == 1 {
        return (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")]).into_response();
    }
    let events = stream::iter([Ok::<_, Infallible>(SseEvent::default().data("after"))]);
    Sse::new(events.chain(stream::pending())).into_response()
}

struct TestServer {
    base: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve() -> TestServer {
    let shared = Arc::new(Shared::default());
    let app = Router::new()
        .route("/numbered", get(numbered))
        .route("/silent", get(silent))
        .route("/flaky/{status}", get(flaky))
        .route("/busy", get(busy))
        .route(
            "/status/{status}",
            get(|Path(status): Path<u16>| async move {
                StatusCode::from_u16(status).expect("a status")
            }),
        )
        .route(
            "/plain",
            get(|| async { ([(header::CONTENT_TYPE, "text/plain")], "data: hi\n\n") }),
        )
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    TestServer { base, shared, task }
}

async fn next(client: &mut Client) -> Option<Result<Event, Error>> {
    tokio::time::timeout(WAIT, client.next())
        .await
        .unwrap_or_else(|_| panic!("nothing within {WAIT:?} from {client:?}"))
}

/// A backoff for tests: quick, so no wait decides anything.
fn quick() -> Backoff {
    Backoff::new(Duration::from_millis(10), Duration::from_millis(50))
}

/// Every event arrives once, in order, over four responses that end cleanly or are cut;
/// each reconnect sends `Last-Event-ID` and the latest session token, and waits the
/// server's `retry:` (the delay drawn lies in the jitter range below it, and the next
/// response comes no sooner).
#[tokio::test]
async fn reconnects_with_last_event_id_and_honours_retry() {
    let server = serve().await;
    let mut client = Client::builder(format!("{}/numbered", server.base))
        .header("authorization", "Bearer test-credential")
        .build()
        .expect("a client");
    let mut messages: Vec<Message> = Vec::new();
    let (mut disconnects, mut waits) = (Vec::new(), Vec::new());
    let mut disconnected_at = None;
    while messages.len() < TOTAL as usize {
        match next(&mut client).await.expect("the client goes on") {
            Ok(Event::Message(message)) => {
                assert_eq!(client.last_event_id(), Some(message.id.as_str()));
                if message.id == "6" {
                    server.shared.cut.notify_one();
                }
                messages.push(message);
            }
            Ok(Event::Disconnected(d)) => {
                assert_eq!(d.failures, 0, "every response delivered events: {d:?}");
                disconnects.push(d);
                disconnected_at = Some(Instant::now());
            }
            Ok(Event::Opened) => {
                if let Some(at) = disconnected_at.take() {
                    waits.push(at.elapsed());
                }
            }
            Ok(other) => panic!("a plain server sends no markers: {other:?}"),
            Err(err) => panic!("the client stopped: {err}"),
        }
    }
    let data: Vec<_> = messages.iter().map(|m| m.data.as_str()).collect();
    let expected: Vec<_> = (1..=TOTAL).map(|n| format!("event {n}")).collect();
    assert_eq!(data, expected, "every event once, in order");
    assert_eq!(client.retry(), Some(RETRY));

    assert_eq!(disconnects.len(), 3, "{disconnects:?}");
    assert!(
        disconnects[0].error.is_none(),
        "the first response ended cleanly"
    );
    assert!(
        matches!(disconnects[1].error, Some(Error::Http(_))),
        "the second was cut: {:?}",
        disconnects[1]
    );
    let jitter = Backoff::default().jitter();
    for d in &disconnects {
        assert!(
            d.retry_in <= RETRY && d.retry_in >= RETRY.mul_f64(1.0 - jitter),
            "the server's retry is the delay: {d:?}"
        );
    }
    for (wait, d) in waits.iter().zip(&disconnects) {
        assert!(
            *wait >= d.retry_in,
            "reconnected after {wait:?}, before {d:?}"
        );
    }

    let seen = server.shared.seen();
    let ids: Vec<_> = seen.iter().map(|s| s.last_event_id.as_deref()).collect();
    assert_eq!(ids, [None, Some("3"), Some("6"), Some("9")]);
    let sessions: Vec<_> = seen.iter().map(|s| s.session.as_deref()).collect();
    assert_eq!(
        sessions,
        [None, Some("token-1"), Some("token-2"), Some("token-3")],
        "the latest token goes back"
    );
    assert_eq!(client.session_token(), Some("token-4"));
    for s in &seen {
        assert_eq!(s.accept.as_deref(), Some("text/event-stream"));
        assert_eq!(s.authorization.as_deref(), Some("Bearer test-credential"));
    }
    let debug = format!("{client:?}");
    assert!(!debug.contains("token-4"), "{debug}");
}

/// A client built from saved state continues after it, and one that keeps no session never
/// sends a token.
#[tokio::test]
async fn starts_from_saved_state_and_can_keep_no_session() {
    let server = serve().await;
    let url = format!("{}/numbered", server.base);
    let mut first = Client::builder(&url).build().expect("a client");
    while first.last_event_id() != Some("2") {
        next(&mut first).await.expect("goes on").expect("no error");
    }
    let saved = first.resume_state();
    assert_eq!(saved.session_token.as_deref(), Some("token-1"));
    drop(first);
    let mut second = Client::builder(&url)
        .resume(saved)
        .keep_session(false)
        .build()
        .expect("a client");
    let message = loop {
        if let Event::Message(m) = next(&mut second).await.expect("goes on").expect("ok") {
            break m;
        }
    };
    assert_eq!(message.data, "event 3");
    let seen = server.shared.seen();
    assert_eq!(seen[1].last_event_id.as_deref(), Some("2"));
    assert_eq!(seen[1].session, None, "keep_session(false) sends no token");
    assert_eq!(second.session_token(), None);
}

/// Like `EventSource`: 204 ends the stream, other statuses and other content types end it
/// with an error; a status the user opts into is retried instead.
#[tokio::test]
async fn statuses_and_content_types() {
    let server = serve().await;
    let build = |path: &str| {
        Client::builder(format!("{}{path}", server.base))
            .backoff(quick())
            .build()
            .expect("a client")
    };

    let mut no_content = build("/status/204");
    assert!(next(&mut no_content).await.is_none(), "204: the end");

    let mut failing = build("/status/500");
    let Some(Err(Error::Status { status })) = next(&mut failing).await else {
        panic!("500 is fatal")
    };
    assert_eq!(status, 500);
    assert!(next(&mut failing).await.is_none(), "then the stream ends");

    let mut plain = build("/plain");
    let Some(Err(Error::ContentType { content_type })) = next(&mut plain).await else {
        panic!("text/plain is fatal")
    };
    assert_eq!(content_type.as_deref(), Some("text/plain"));

    let mut not_opted = build("/flaky/503");
    assert!(matches!(
        next(&mut not_opted).await,
        Some(Err(Error::Status { .. }))
    ));

    let server2 = serve().await;
    let mut opted = Client::builder(format!("{}/flaky/503", server2.base))
        .backoff(quick())
        .retry_on_status(|s| s == StatusCode::SERVICE_UNAVAILABLE)
        .build()
        .expect("a client");
    let Some(Ok(Event::Disconnected(d))) = next(&mut opted).await else {
        panic!("503 retried")
    };
    assert!(
        matches!(d.error, Some(Error::Status { status }) if status == 503),
        "{d:?}"
    );
    assert_eq!(d.failures, 1);
    assert!(matches!(next(&mut opted).await, Some(Ok(Event::Opened))));
    let Some(Ok(Event::Message(m))) = next(&mut opted).await else {
        panic!("the event after the retry")
    };
    assert_eq!(m.data, "after");
}

/// A retried status's `Retry-After` (seconds) is waited out, though the backoff is quicker.
#[tokio::test]
async fn retry_after_is_waited_out() {
    let server = serve().await;
    let mut client = Client::builder(format!("{}/busy", server.base))
        .backoff(quick())
        .retry_on_status(|s| s == StatusCode::TOO_MANY_REQUESTS)
        .build()
        .expect("a client");
    let started = Instant::now();
    let Some(Ok(Event::Disconnected(d))) = next(&mut client).await else {
        panic!("429 retried")
    };
    assert_eq!(d.retry_in, Duration::from_secs(1), "{d:?}");
    assert!(matches!(next(&mut client).await, Some(Ok(Event::Opened))));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "came back after {:?}",
        started.elapsed()
    );
    let Some(Ok(Event::Message(m))) = next(&mut client).await else {
        panic!("the event after the wait")
    };
    assert_eq!(m.data, "after");
}

/// Nothing listening: attempts fail with growing delays until `max_attempts`.
#[tokio::test]
async fn gives_up_after_max_attempts() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let mut client = Client::builder(format!("http://{addr}/"))
        .backoff(quick())
        .max_attempts(3)
        .build()
        .expect("a client");
    for failures in 1..=2 {
        let Some(Ok(Event::Disconnected(d))) = next(&mut client).await else {
            panic!("a retried failure")
        };
        assert_eq!(d.failures, failures);
        assert!(matches!(d.error, Some(Error::Http(_))), "{d:?}");
    }
    let Some(Err(Error::GaveUp { attempts, last })) = next(&mut client).await else {
        panic!("gives up")
    };
    assert_eq!(attempts, 3);
    assert!(matches!(last.as_deref(), Some(Error::Http(_))));
    assert!(next(&mut client).await.is_none());
}

/// A response that goes silent is dropped after the idle timeout and resumed.
#[tokio::test]
async fn idle_timeout_reconnects() {
    let server = serve().await;
    let mut client = Client::builder(format!("{}/silent", server.base))
        .backoff(quick())
        .idle_timeout(Duration::from_millis(200))
        .build()
        .expect("a client");
    let mut idle = 0;
    while idle < 2 {
        if let Event::Disconnected(d) = next(&mut client).await.expect("goes on").expect("ok") {
            assert!(matches!(d.error, Some(Error::Idle(_))), "{d:?}");
            idle += 1;
        }
    }
    let seen = server.shared.seen();
    assert_eq!(seen[1].last_event_id.as_deref(), Some("1"));
}

/// Bad configuration is an error at `build`, not a panic.
#[test]
fn bad_configuration() {
    assert!(matches!(
        Client::new("not a url"),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        Client::new("ftp://example.com/"),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        Client::builder("http://127.0.0.1/")
            .header("bad header", "x")
            .build(),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        Client::builder("http://127.0.0.1/")
            .header("x-ok", "bad\nvalue")
            .build(),
        Err(Error::Config { .. })
    ));
    let client = Client::builder("http://127.0.0.1/")
        .session_token("super-secret")
        .header("authorization", "Bearer hidden")
        .build()
        .expect("a client");
    assert_eq!(client.session_token(), Some("super-secret"));
    let debug = format!("{client:?}");
    assert!(
        !debug.contains("super-secret") && !debug.contains("hidden"),
        "{debug}"
    );
}
