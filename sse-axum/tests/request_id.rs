//! Request ids on both servers (`axum::serve` and the fast path of `resumable_sse_axum::serve`):
//! the response carries the id, and every log line of the event stream carries the id and the
//! session id, whichever task writes the stream. Logs are captured as JSON in-process.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use resumable_sse_axum::testing::{TestServer, connect, publish};
use resumable_sse_axum::{RequestIdLayer, SseLayer};
use resumable_sse_core::Config;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// Every log line written so far.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("the log").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// For every event logged, how many `request` spans it is in (its parent, theirs, …).
#[derive(Clone, Default)]
struct Nesting(Arc<Mutex<Vec<(String, usize)>>>);

impl<S> tracing_subscriber::Layer<S> for Nesting
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let requests = ctx
            .event_scope(event)
            .map_or(0, |scope| scope.filter(|s| s.name() == "request").count());
        let mut message = String::new();
        event.record(
            &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                if field.name() == "message" {
                    message = format!("{value:?}");
                }
            },
        );
        self.0
            .lock()
            .expect("the nesting")
            .push((message, requests));
    }
}

fn logs() -> &'static (Captured, Nesting) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    static LOGS: OnceLock<(Captured, Nesting)> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let nesting = Nesting::default();
        let writer = captured.clone();
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(move || writer.clone()),
            )
            .with(nesting.clone())
            .with(tracing_subscriber::EnvFilter::new("info"))
            .init();
        (captured, nesting)
    })
}

async fn check(fast: bool, request_id: &str) {
    let (captured, nesting) = logs();
    let app = resumable_sse_axum::router(SseLayer::new(resumable_sse_axum::memory_hub(
        Config::default(),
    )))
    .layer(RequestIdLayer::new());
    let server = if fast {
        TestServer::start_fast(app).await
    } else {
        TestServer::start(app).await
    };
    let mut stream = connect(
        &server.url("/events?stream=news"),
        &[("x-request-id", request_id)],
    )
    .await;
    assert_eq!(stream.headers["x-request-id"], request_id);
    let connected = stream.next_event(WAIT).await.expect("connected");
    let info: Value = serde_json::from_str(&connected.data).expect("JSON");
    let session = info["session"].as_str().expect("a session").to_owned();
    let (status, _) = publish(&server, serde_json::json!({"stream": "news", "data": "x"})).await;
    assert_eq!(status, 200);
    assert_eq!(stream.next_event(WAIT).await.expect("the event").data, "x");
    drop(stream);

    let deadline = Instant::now() + WAIT;
    let lines = loop {
        let text = String::from_utf8(captured.0.lock().expect("the log").clone()).expect("UTF-8");
        let lines: Vec<Value> = text
            .lines()
            .filter(|l| l.contains(request_id) || l.contains(&session))
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        if lines
            .iter()
            .any(|l| l["fields"]["message"] == "disconnected")
        {
            break lines;
        }
        assert!(Instant::now() < deadline, "no `disconnected` line:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(lines.len() >= 2, "{lines:?}");
    for line in &lines {
        assert_eq!(line["span"]["request_id"], request_id, "{line}");
        assert_eq!(line["span"]["session"], session.as_str(), "{line}");
    }
    // No line is in two `request` spans (the one made for the line inside the request's own).
    let nested: Vec<_> = nesting
        .0
        .lock()
        .expect("the nesting")
        .iter()
        .filter(|(_, requests)| *requests > 1)
        .cloned()
        .collect();
    assert!(nested.is_empty(), "{nested:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_follow_the_connection_on_axum_serve() {
    check(false, "hyper-path-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_follow_the_connection_on_the_fast_path() {
    check(true, "fast-path-1").await;
}
