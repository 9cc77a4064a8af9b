//! Connection caps, rate limits and their refusals, over real sockets on both servers
//! (`axum::serve` and `resumable_sse_axum::serve`): an event stream over a limit is answered
//! 200 with a growing, jittered `retry:`, one `refused` event and the end of the response; a
//! publish over its rate 429 with `Retry-After`, storing nothing.

// Helpers panic on what a test would: a broken server.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;
use resumable_sse_axum::testing::TestServer;
use resumable_sse_axum::{Authorize, Identity, Limits, Refusal, SseLayer, Target};
use resumable_sse_core::codec::{Item, ParsedEvent, Parser};
use resumable_sse_core::{Config, StreamName};

const WAIT: Duration = Duration::from_secs(10);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Both servers, each over its own app from `make`.
async fn both(make: impl Fn() -> Router) -> [(&'static str, TestServer); 2] {
    [
        ("axum::serve", TestServer::start(make()).await),
        (
            "resumable_sse_axum::serve",
            TestServer::start_fast(make()).await,
        ),
    ]
}

/// `x-user: <name>` is the principal; everyone may do everything.
struct Users;

#[resumable_sse_core::async_trait]
impl Authorize for Users {
    async fn identify(&self, parts: &http::request::Parts) -> Result<Identity, Refusal> {
        Ok(
            match parts.headers.get("x-user").and_then(|v| v.to_str().ok()) {
                Some(user) => Identity::principal(user),
                None => Identity::anonymous(),
            },
        )
    }
    async fn may_subscribe(&self, _: &Identity, _: &StreamName) -> Result<(), Refusal> {
        Ok(())
    }
    async fn may_publish(&self, _: &Identity, _: Target<'_>) -> Result<(), Refusal> {
        Ok(())
    }
}

fn app(limits: Limits) -> Router {
    // Short heartbeats: hyper notices a client gone when it next writes to it.
    let hub = resumable_sse_axum::memory_hub(
        Config::default().with_heartbeat(Duration::from_millis(200)),
    );
    resumable_sse_axum::router(
        SseLayer::new(hub)
            .with_authorization(Users)
            .with_limits(limits),
    )
}

/// One event-stream response read with a real HTTP client from a chosen source address.
struct Client {
    status: u16,
    headers: http::HeaderMap,
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>,
    parser: Parser,
    pending: std::collections::VecDeque<Item>,
    ended: bool,
}

impl Client {
    async fn open(server: &TestServer, from: &str, headers: &[(&str, &str)]) -> Client {
        let client = reqwest::Client::builder()
            .local_address(ip(from))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let mut request = client
            .get(server.url("/events?stream=news"))
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        Client {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: Box::pin(response.bytes_stream()),
            parser: Parser::new(),
            pending: Default::default(),
            ended: false,
        }
    }

    /// The next item, or `None` at the end of the response (panics after [`WAIT`]).
    async fn next_item(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout(WAIT, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.pending.extend(self.parser.feed(&chunk)),
                Ok(Some(Err(_)) | None) => self.ended = true,
                Err(_) => panic!("nothing within {WAIT:?}"),
            }
        }
    }

    async fn next_event(&mut self) -> ParsedEvent {
        loop {
            match self.next_item().await {
                Some(Item::Event(event)) => return event,
                Some(_) => continue,
                None => panic!("the response ended"),
            }
        }
    }

    /// Reads the first event: `Ok` when it is `connected`, else the refusal
    /// `(retry hint, reason, retry_ms)`, having checked its form and that the response ended.
    async fn outcome(&mut self) -> Result<(), (u64, String, u64)> {
        assert_eq!(self.status, 200, "refusals of event streams are 200");
        assert_eq!(self.headers["content-type"], "text/event-stream");
        let mut retry = None;
        loop {
            match self.next_item().await {
                Some(Item::Retry(ms)) => retry = Some(ms),
                Some(Item::Comment(_)) => {}
                Some(Item::Event(event)) if event.event == "connected" => return Ok(()),
                Some(Item::Event(event)) => {
                    assert_eq!(event.event, "refused", "{event:?}");
                    assert_eq!(event.last_event_id, "", "a refusal carries no id");
                    let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
                    let retry_ms = data["retry_ms"].as_u64().unwrap();
                    let retry = retry.expect("a retry hint before the refused event");
                    assert_eq!(retry, retry_ms, "the hint and the event agree");
                    assert!(
                        self.next_item().await.is_none(),
                        "the response ends after it"
                    );
                    assert!(self.ended);
                    return Err((retry, data["reason"].as_str().unwrap().to_owned(), retry_ms));
                }
                None => panic!("the response ended without an event"),
            }
        }
    }

    async fn admitted(server: &TestServer, from: &str, headers: &[(&str, &str)]) -> Client {
        let mut client = Client::open(server, from, headers).await;
        client
            .outcome()
            .await
            .unwrap_or_else(|refusal| panic!("refused from {from}: {refusal:?}"));
        client
    }

    async fn refused(server: &TestServer, from: &str, headers: &[(&str, &str)]) -> (u64, String) {
        let mut client = Client::open(server, from, headers).await;
        match client.outcome().await {
            Ok(()) => panic!("admitted from {from}"),
            Err((retry, reason, _)) => (retry, reason),
        }
    }
}

async fn publish(server: &TestServer, headers: &[(&str, &str)], data: &str) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(server.url("/publish"))
        .json(&serde_json::json!({"stream": "news", "data": data}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_capped_address_is_refused_with_a_growing_retry_while_others_connect() {
    let limits = Limits::new()
        .max_connections_per_ip(2)
        .refusal_retry(Duration::from_millis(200), Duration::from_secs(5));
    for (name, server) in both(|| app(limits.clone())).await {
        let first = Client::admitted(&server, "127.0.0.1", &[]).await;
        let _second = Client::admitted(&server, "127.0.0.1", &[]).await;
        let mut delays = Vec::new();
        for _ in 0..3 {
            let (retry, reason) = Client::refused(&server, "127.0.0.1", &[]).await;
            assert_eq!(reason, "max_connections_per_ip", "{name}");
            delays.push(retry);
        }
        // Steps of 200, 400, 800 ms, each jittered into its upper half.
        assert!((100..=200).contains(&delays[0]), "{name}: {delays:?}");
        assert!(
            delays[0] <= delays[1] && delays[1] <= delays[2],
            "{name}: {delays:?}"
        );
        assert!(delays[2] >= 400, "{name}: {delays:?}");

        // Another address is not concerned, and receives events.
        let mut other = Client::admitted(&server, "127.0.0.2", &[]).await;
        assert_eq!(publish(&server, &[], "for everyone").await.status(), 200);
        assert_eq!(other.next_event().await.data, "for everyone", "{name}");

        // A connection that ends gives its place back.
        drop(first);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut client = Client::open(&server, "127.0.0.1", &[]).await;
            if client.outcome().await.is_ok() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: the ended connection still counts"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn caps_in_total_per_session_and_per_principal() {
    let limits = Limits::new()
        .max_connections(3)
        .max_connections_per_session(1)
        .max_connections_per_principal(1)
        .refusal_retry(Duration::from_millis(100), Duration::from_secs(1));
    for (name, server) in both(|| app(limits.clone())).await {
        let anonymous = Client::admitted(&server, "127.0.0.1", &[]).await;
        let token = anonymous.headers["x-sse-session"]
            .to_str()
            .unwrap()
            .to_owned();
        let (_, reason) = Client::refused(&server, "127.0.0.1", &[("x-sse-session", &token)]).await;
        assert_eq!(reason, "max_connections_per_session", "{name}");

        let _alice = Client::admitted(&server, "127.0.0.1", &[("x-user", "alice")]).await;
        let (_, reason) = Client::refused(&server, "127.0.0.2", &[("x-user", "alice")]).await;
        assert_eq!(reason, "max_connections_per_principal", "{name}");

        let _bob = Client::admitted(&server, "127.0.0.2", &[("x-user", "bob")]).await;
        let (_, reason) = Client::refused(&server, "127.0.0.3", &[]).await;
        assert_eq!(reason, "max_connections", "{name}");
    }
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let capped = Limits::new()
        .max_connections_per_ip(1)
        .refusal_retry(Duration::from_millis(100), Duration::from_secs(1));
    let behind_proxy = capped
        .clone()
        .trusted_proxy("127.0.0.1/32".parse().unwrap());
    for (name, server) in both(|| app(behind_proxy.clone())).await {
        let _a = Client::admitted(&server, "127.0.0.1", &[("x-forwarded-for", "1.1.1.1")]).await;
        let _b = Client::admitted(
            &server,
            "127.0.0.1",
            &[("x-forwarded-for", "6.6.6.6, 2.2.2.2")],
        )
        .await;
        let (_, reason) = Client::refused(
            &server,
            "127.0.0.1",
            &[("x-forwarded-for", "9.9.9.9, 1.1.1.1")],
        )
        .await;
        assert_eq!(reason, "max_connections_per_ip", "{name}");
        let _c = Client::admitted(
            &server,
            "127.0.0.1",
            &[("forwarded", "for=\"[2001:db8::1]:80\"")],
        )
        .await;
        // A header from a peer that is no trusted proxy says nothing.
        let _d = Client::admitted(&server, "127.0.0.2", &[("x-forwarded-for", "3.3.3.3")]).await;
        let (_, reason) =
            Client::refused(&server, "127.0.0.2", &[("x-forwarded-for", "4.4.4.4")]).await;
        assert_eq!(reason, "max_connections_per_ip", "{name}");
        // Garbage from a trusted proxy: the proxy itself is the client (one place, taken).
        let _e = Client::admitted(&server, "127.0.0.1", &[("x-forwarded-for", "nonsense")]).await;
        let (_, reason) =
            Client::refused(&server, "127.0.0.1", &[("x-forwarded-for", "unknown")]).await;
        assert_eq!(reason, "max_connections_per_ip", "{name}");
    }
    for (name, server) in both(|| app(capped.clone())).await {
        let _a = Client::admitted(&server, "127.0.0.1", &[("x-forwarded-for", "1.1.1.1")]).await;
        let (_, reason) =
            Client::refused(&server, "127.0.0.1", &[("x-forwarded-for", "2.2.2.2")]).await;
        assert_eq!(reason, "max_connections_per_ip", "{name}: no trusted proxy");
    }
}

#[tokio::test]
async fn connect_rates_per_address_and_per_session() {
    let one = NonZeroU32::new(1).unwrap();
    let limits = Limits::new()
        .connect_rate_per_ip(one)
        .connect_rate_per_session(one)
        .refusal_retry(Duration::from_millis(100), Duration::from_secs(1));
    for (name, server) in both(|| app(limits.clone())).await {
        let first = Client::admitted(&server, "127.0.0.1", &[]).await;
        let token = first.headers["x-sse-session"].to_str().unwrap().to_owned();
        drop(first);
        // The session again, from another address: its own allowance is spent.
        let (retry, reason) =
            Client::refused(&server, "127.0.0.2", &[("x-sse-session", &token)]).await;
        assert_eq!(reason, "connect_rate_per_session", "{name}");
        assert!(retry >= 50, "{name}: {retry}");
        // The first address again: its allowance is spent too.
        let (_, reason) = Client::refused(&server, "127.0.0.1", &[]).await;
        assert_eq!(reason, "connect_rate_per_ip", "{name}");
        drop(Client::admitted(&server, "127.0.0.3", &[]).await);
    }
}

#[tokio::test]
async fn publishes_over_the_rate_get_429_and_store_nothing() {
    let limits = Limits::new().publish_rate(NonZeroU32::new(2).unwrap());
    for (name, server) in both(|| app(limits.clone())).await {
        let mut reader = Client::admitted(&server, "127.0.0.2", &[]).await;
        let alice = [("x-user", "alice")];
        assert_eq!(
            publish(&server, &alice, "one").await.status(),
            200,
            "{name}"
        );
        assert_eq!(
            publish(&server, &alice, "two").await.status(),
            200,
            "{name}"
        );
        let refused = publish(&server, &alice, "refused").await;
        assert_eq!(refused.status(), 429, "{name}");
        let retry_after: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(retry_after, 1, "{name}: whole seconds, rounded up");
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "rate_limited", "{name}");
        assert!(body["message"].is_string());
        // Another principal has its own allowance.
        assert_eq!(
            publish(&server, &[("x-user", "bob")], "bob's")
                .await
                .status(),
            200
        );
        // Alice again once her allowance is back.
        let deadline = tokio::time::Instant::now() + WAIT;
        while publish(&server, &alice, "three").await.status() == 429 {
            assert!(tokio::time::Instant::now() < deadline, "{name}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut seen = Vec::new();
        while seen.last().map(String::as_str) != Some("three") {
            seen.push(reader.next_event().await.data);
        }
        assert_eq!(
            seen,
            ["one", "two", "bob's", "three"],
            "{name}: nothing of the 429 stored"
        );
    }
}

/// A publisher over its rate is answered before its body is read: a request that declares
/// 10 MB and sends none of it gets its 429 at once (no body read, nothing stored).
#[tokio::test]
async fn an_over_rate_publish_is_answered_before_its_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let limits = Limits::new().publish_rate(NonZeroU32::new(1).unwrap());
    for (name, server) in both(|| app(limits.clone())).await {
        let alice = [("x-user", "alice")];
        assert_eq!(
            publish(&server, &alice, "one").await.status(),
            200,
            "{name}"
        );
        let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        socket
            .write_all(
                format!(
                    "POST /publish HTTP/1.1\r\nhost: {}\r\nx-user: alice\r\n\
                     content-type: application/json\r\ncontent-length: 10000000\r\n\r\n",
                    server.addr
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{name}: no answer without the body"))
                .unwrap();
            assert!(n > 0, "{name}: closed without an answer");
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 429"), "{name}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("retry-after:"),
            "{name}: {head}"
        );
    }
}
