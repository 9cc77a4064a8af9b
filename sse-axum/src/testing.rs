//! Test support: serve a router on port 0 and read it with a real SSE client.
//!
//! The client is plain HTTP (reqwest) plus the one SSE parser of `sse-core`, so tests see
//! exactly the bytes a browser would.
//!
//! ```
//! use resumable_sse_axum::testing::{TestServer, connect};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let hub = resumable_sse_axum::memory_hub(Default::default());
//! let server = TestServer::start(resumable_sse_axum::router(resumable_sse_axum::SseLayer::new(hub))).await;
//! let mut events = connect(&server.url("/events?stream=news"), &[]).await;
//! let connected = events.next_event(Duration::from_secs(5)).await.unwrap();
//! assert_eq!(connected.event, "connected");
//! # }
//! ```

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::HeaderMap;
use resumable_sse_core::codec::{Item, ParsedEvent, Parser};
use tokio::task::JoinHandle;

/// A router served on `127.0.0.1:0`; stops when dropped.
#[derive(Debug)]
pub struct TestServer {
    /// The bound address.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Serves `router` on a fresh port with `axum::serve`, with the client's address
    /// (`ConnectInfo<SocketAddr>`) in every request, as [`serve`](crate::serve()) gives it.
    pub async fn start(router: Router) -> Self {
        Self::on_free_port(|listener| async move {
            let app = router.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, app).await
        })
        .await
    }

    /// Serves `router` on a fresh port with [`serve`](crate::serve()), whose fast path writes
    /// the event streams of `GET /events` outside hyper.
    pub async fn start_fast(router: Router) -> Self {
        Self::on_free_port(|listener| crate::serve(listener, router).into_future()).await
    }

    /// Serves `router` on a fresh port with [`serve`](crate::serve()) as `configure` sets it
    /// up (timeouts, bounds, the fast path on or off).
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() {
    /// # let router = axum::Router::new();
    /// use std::time::Duration;
    /// let server = resumable_sse_axum::testing::TestServer::start_configured(router, |serve| {
    ///     serve.head_timeout(Duration::from_millis(500)).fast_path(false)
    /// })
    /// .await;
    /// # }
    /// ```
    pub async fn start_configured(
        router: Router,
        configure: impl FnOnce(
            crate::Serve<std::future::Pending<()>>,
        ) -> crate::Serve<std::future::Pending<()>>,
    ) -> Self {
        Self::on_free_port(|listener| configure(crate::serve(listener, router)).into_future()).await
    }

    async fn on_free_port<F, S>(serve: S) -> Self
    where
        S: FnOnce(tokio::net::TcpListener) -> F,
        F: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve(listener);
        let task = tokio::spawn(async move { server.await.unwrap() });
        TestServer { addr, task }
    }

    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One open SSE response.
pub struct SseStream {
    /// The response status.
    pub status: http::StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    parser: Parser,
    pending: std::collections::VecDeque<Item>,
    ended: bool,
}

impl std::fmt::Debug for SseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseStream")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Opens `url` with `Accept: text/event-stream` and the extra `headers`.
pub async fn connect(url: &str, headers: &[(&str, &str)]) -> SseStream {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut request = client.get(url).header("accept", "text/event-stream");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    SseStream {
        status: response.status(),
        headers: response.headers().clone(),
        body: Box::pin(response.bytes_stream()),
        parser: Parser::new(),
        pending: Default::default(),
        ended: false,
    }
}

impl SseStream {
    /// The session token the server returned (`x-sse-session`).
    pub fn token(&self) -> Option<String> {
        self.headers
            .get("x-sse-session")
            .map(|v| v.to_str().unwrap().to_owned())
    }

    /// The `Set-Cookie` value's `name=value` part, ready for a `Cookie` header.
    pub fn cookie(&self) -> Option<String> {
        self.headers
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
    }

    /// What a browser would send back as `Last-Event-ID`.
    pub fn last_event_id(&self) -> &str {
        self.parser.last_event_id()
    }

    /// `true` once the server ended the response.
    pub fn ended(&self) -> bool {
        self.ended && self.pending.is_empty()
    }

    /// The next parsed item (event, retry, comment), or `None` when the response ended or
    /// nothing came within `timeout`.
    pub async fn next_item(&mut self, timeout: Duration) -> Option<Item> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.pending.extend(self.parser.feed(&chunk)),
                Ok(Some(Err(_)) | None) => self.ended = true,
                Err(_) => return None,
            }
        }
    }

    /// The next dispatched event, skipping comments and retry fields.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<ParsedEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_item(left).await? {
                Item::Event(event) => return Some(event),
                _ => continue,
            }
        }
    }

    /// Events until `n` of them are named `name` (or plain `message` when `name` is
    /// `message`), or the timeout passes. Returns every event read.
    pub async fn collect_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[ParsedEvent]) -> bool,
    ) -> Vec<ParsedEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        while !done(&seen) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(event) => seen.push(event),
                None => break,
            }
        }
        seen
    }
}

/// Publishes through `POST /publish`; returns the status and JSON body.
pub async fn publish(
    server: &TestServer,
    body: serde_json::Value,
) -> (http::StatusCode, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(server.url("/publish"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let json = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}
