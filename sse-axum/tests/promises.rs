//! Documented promises of the HTTP contract, over both servers (`axum::serve`, where hyper
//! writes the event stream, and `resumable_sse_axum::serve`'s fast path):
//!
//! - while the store is down, `GET /healthz` answers 503 with a JSON error and an event stream
//!   opens as `200`, a `retry:` of at least 5 s and the end of the response (browsers give up
//!   on any other status); once the store is back, both work again (docs/protocol.md,
//!   "Status codes");
//! - an event stream's response headers, and the session cookie's attributes (docs/protocol.md,
//!   "The response", "Sessions");
//! - the `x-sse-session` header wins over the cookie;
//! - principal binding over HTTP: a session bound to a principal answers 403 to any other
//!   principal and to an anonymous request, and an anonymous session presented after a login
//!   gets a new session bound to that principal;
//! - a plain reload (the token, no `Last-Event-ID`) that arrives while its session's old
//!   stream is still open resumes where that stream got (`Config::reload_wait`);
//! - the rows of the status table no other test covers, and the publish answer's fields.

use std::time::Duration;

use axum::Router;
use resumable_sse_axum::testing::{SseStream, TestServer, connect};
use resumable_sse_axum::{Authorize, Identity, Refusal, SseLayer, Stores, Target};
use resumable_sse_core::codec::Item;
use resumable_sse_core::{Config, Hub, StreamName};
use resumable_sse_store_redis::testing::{PrivateRedis, answers};
use resumable_sse_store_redis::{RedisConfig, RedisStore};
use serde_json::Value;

/// Longest wait for anything a test expects; reaching it fails the test.
const WAIT: Duration = Duration::from_secs(20);

/// Both servers of the same app.
async fn both(make: impl Fn() -> Router) -> [(&'static str, TestServer); 2] {
    [
        ("axum::serve", TestServer::start(make()).await),
        (
            "resumable_sse_axum::serve",
            TestServer::start_fast(make()).await,
        ),
    ]
}

async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every item of a response until it ends (fails after [`WAIT`]).
async fn read_to_end(stream: &mut SseStream) -> Vec<Item> {
    let mut items = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !stream.ended() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "the response did not end: {items:?}");
        if let Some(item) = stream.next_item(left).await {
            items.push(item);
        }
    }
    items
}

/// Polls `condition` until it holds, for at most [`WAIT`].
async fn until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_store_is_down_streams_back_off_and_healthz_answers_503() {
    let mut redis = PrivateRedis::start(false);
    let url = format!("redis://127.0.0.1:{}", redis.port());
    let store = RedisStore::connect(&url, RedisConfig::default())
        .await
        .expect("the private Redis answers");
    let store = std::sync::Arc::new(store);
    let stores = Stores {
        buffer: store.clone(),
        sessions: store,
    };
    let hub = Hub::builder(stores.buffer, stores.sessions).build();
    let app = || resumable_sse_axum::router(SseLayer::new(hub.clone()));
    let servers = both(app).await;
    for (name, server) in &servers {
        let (status, body) = get_json(&server.url("/healthz")).await;
        assert_eq!(status, 200, "{name}, store up: {body}");
    }

    redis.kill();
    assert!(!answers(redis.port()), "Redis is down");
    for (name, server) in &servers {
        let (status, body) = get_json(&server.url("/healthz")).await;
        assert_eq!(status, 503, "{name}, store down: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty())
                && body["message"].as_str().is_some(),
            "{name}: a JSON error: {body}"
        );
        let mut stream = connect(&server.url("/events?stream=news"), &[]).await;
        assert_eq!(
            stream.status, 200,
            "{name}: never a status browsers give up on"
        );
        assert_eq!(
            stream.headers["content-type"], "text/event-stream",
            "{name}"
        );
        let items = read_to_end(&mut stream).await;
        assert!(
            matches!(
                items.as_slice(),
                [Item::Retry(ms), Item::Event(refused)]
                    if *ms >= 5000
                        && refused.event == "refused"
                        && refused.last_event_id.is_empty()
                        && refused.data.contains("\"store_unavailable\"")
            ),
            "{name}: a retry of at least 5 s, one `refused` event (store_unavailable), then \
             the end: {items:?}"
        );
    }

    redis.restart();
    for (name, server) in &servers {
        until(&format!("{name}: /healthz to answer 200 again"), || async {
            get_json(&server.url("/healthz")).await.0 == 200
        })
        .await;
        let mut stream = connect(&server.url("/events?stream=news"), &[]).await;
        assert_eq!(stream.status, 200, "{name}");
        let connected = stream.next_event(WAIT).await.expect("an event");
        assert_eq!(connected.event, "connected", "{name}: streams open again");
    }
}

fn memory_app(config: Config) -> Router {
    resumable_sse_axum::router(SseLayer::new(resumable_sse_axum::memory_hub(config)))
}

/// Opens `path` with these headers and reads the `connected` event: the stream, and the
/// session id it names.
async fn open(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> (SseStream, String) {
    let mut stream = connect(&server.url(path), headers).await;
    assert_eq!(stream.status, 200, "GET {path}");
    let connected = stream.next_event(WAIT).await.expect("the connected event");
    assert_eq!(connected.event, "connected");
    let info: Value = serde_json::from_str(&connected.data).expect("JSON");
    let session = info["session"].as_str().expect("a session").to_owned();
    (stream, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_headers_and_the_session_cookie() {
    for (name, server) in both(|| memory_app(Config::default())).await {
        let (stream, _) = open(&server, "/events?stream=news", &[]).await;
        let header = |h: &str| {
            stream
                .headers
                .get(h)
                .map(|v| v.to_str().expect("ASCII").to_owned())
                .unwrap_or_default()
        };
        assert_eq!(header("content-type"), "text/event-stream", "{name}");
        assert_eq!(header("cache-control"), "no-cache, no-store", "{name}");
        assert_eq!(header("x-accel-buffering"), "no", "{name}");
        let cookie = header("set-cookie");
        let mut attributes: Vec<&str> = cookie.split("; ").collect();
        let pair = attributes.remove(0);
        let token = pair
            .strip_prefix("sse_session=")
            .expect("the session cookie");
        attributes.sort_unstable();
        assert_eq!(
            attributes,
            [
                "HttpOnly",
                "Max-Age=86400",
                "Path=/",
                "SameSite=Strict",
                "Secure"
            ],
            "{name}: {cookie}"
        );
        assert_eq!(header("x-sse-session"), token, "{name}: the same token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_header_wins_over_the_cookie() {
    for (name, server) in both(|| memory_app(Config::default())).await {
        let (first, by_cookie) = open(&server, "/events?stream=news", &[]).await;
        let (second, by_header) = open(&server, "/events?stream=news", &[]).await;
        assert_ne!(by_cookie, by_header);
        let cookie = first.cookie().expect("a cookie");
        let token = second.token().expect("a token");
        let (_, session) = open(
            &server,
            "/events?stream=news",
            &[("cookie", &cookie), ("x-sse-session", &token)],
        )
        .await;
        assert_eq!(session, by_header, "{name}: the header's session");
    }
}

/// `Authorization: Bearer <name>` is the principal `<name>`; no header is anonymous.
#[derive(Clone, Debug)]
struct Names;

#[resumable_sse_core::async_trait]
impl Authorize for Names {
    async fn identify(&self, parts: &http::request::Parts) -> Result<Identity, Refusal> {
        Ok(
            match parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
            {
                Some(name) => Identity::principal(name),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_bound_to_their_principal_and_a_login_gets_its_own() {
    let app = || {
        let layer = SseLayer::new(resumable_sse_axum::memory_hub(Config::default()))
            .with_authorization(Names);
        resumable_sse_axum::router(layer)
    };
    let http = reqwest::Client::new();
    for (name, server) in both(app).await {
        let status = |token: String, principal: Option<&'static str>| {
            let mut request = http
                .get(server.url("/events?stream=news"))
                .header("accept", "text/event-stream")
                .header("x-sse-session", token);
            if let Some(p) = principal {
                request = request.header("authorization", format!("Bearer {p}"));
            }
            async move { request.send().await.expect("GET").status().as_u16() }
        };
        // Anonymous first, then a login presenting the anonymous session.
        let (anonymous, anonymous_session) = open(&server, "/events?stream=news", &[]).await;
        let anonymous_token = anonymous.token().expect("a token");
        let (alice, alice_session) = open(
            &server,
            "/events?stream=news",
            &[
                ("authorization", "Bearer alice"),
                ("x-sse-session", &anonymous_token),
            ],
        )
        .await;
        assert_ne!(
            alice_session, anonymous_session,
            "{name}: after a login, a session of her own"
        );
        let alice_token = alice.token().expect("a token");
        let (_, again) = open(
            &server,
            "/events?stream=news",
            &[
                ("authorization", "Bearer alice"),
                ("x-sse-session", &alice_token),
            ],
        )
        .await;
        assert_eq!(again, alice_session, "{name}: alice keeps her session");
        assert_eq!(
            status(alice_token.clone(), Some("bob")).await,
            403,
            "{name}: bob with alice's session"
        );
        assert_eq!(
            status(alice_token, None).await,
            403,
            "{name}: no principal with alice's session"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_while_the_old_stream_closes_resumes_where_it_got() {
    // A bound far above what the close takes: the wait ends when the old stream does.
    let config = Config::default()
        .with_reload_wait(WAIT)
        .with_heartbeat(Duration::from_millis(100));
    let hub = resumable_sse_axum::memory_hub(config);
    let app = || resumable_sse_axum::router(SseLayer::new(hub.clone()));
    let news = StreamName::new("news").expect("a name");
    for (name, server) in both(app).await {
        let (mut old, _) = open(&server, "/events?stream=news", &[]).await;
        let token = old.token().expect("a token");
        for n in 1..=3 {
            hub.publish(
                &news,
                resumable_sse_core::NewEvent::new(format!("{name} {n}")),
            )
            .await
            .expect("publish");
        }
        for n in 1..=3 {
            let event = old.next_event(WAIT).await.expect("an event");
            assert_eq!(event.data, format!("{name} {n}"));
        }
        // The reload arrives while the old stream is open; the old page goes.
        let reload = tokio::spawn({
            let url = server.url("/events?stream=news");
            async move { connect(&url, &[("x-sse-session", &token)]).await }
        });
        drop(old);
        let mut new = reload.await.expect("the reload task");
        assert_eq!(new.status, 200);
        let connected = new.next_event(WAIT).await.expect("connected");
        let info: Value = serde_json::from_str(&connected.data).expect("JSON");
        assert_eq!(
            (&info["resumed"], &info["reset"]),
            (&Value::Bool(true), &Value::Bool(false)),
            "{name}: resumed from the old stream's cursor, not started at the head: {info}"
        );
        hub.publish(
            &news,
            resumable_sse_core::NewEvent::new(format!("{name} 4")),
        )
        .await
        .expect("publish");
        let event = new.next_event(WAIT).await.expect("an event");
        assert_eq!(
            event.data,
            format!("{name} 4"),
            "{name}: nothing the old stream got is sent again, nothing is missed"
        );
    }
}

/// `POST /publish` with a raw body and content type: the status and JSON answer.
async fn post(server: &TestServer, content_type: &str, body: String) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url("/publish"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The rows of docs/protocol.md's status table and the publish answer that no other test
/// covers: stream count, `event` and `id` bounds, bad JSON, missing `data`, a content type
/// other than JSON, and the answer's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_table_and_the_publish_answer() {
    for (name, server) in both(|| memory_app(Config::default())).await {
        let json_error = |what: &str, (status, body): &(u16, Value), expected: u16| {
            assert_eq!(*status, expected, "{name}, {what}: {body}");
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty())
                    && body["message"].as_str().is_some(),
                "{name}, {what}: a JSON error: {body}"
            );
        };
        let streams = |n: usize| {
            let query: Vec<String> = (0..n).map(|i| format!("stream=s{i}")).collect();
            format!("/events?{}", query.join("&"))
        };
        let (status, body) = get_json(&server.url(&streams(33))).await;
        json_error("33 streams", &(status, body), 400);
        let (stream, _) = open(&server, &streams(32), &[]).await;
        drop(stream);

        let publish = |body: Value| post(&server, "application/json", body.to_string());
        for field in ["event", "id"] {
            for (bad, what) in [(String::new(), "empty"), ("e".repeat(257), "257 bytes")] {
                let mut body = serde_json::json!({"stream": "news", "data": "x"});
                body[field] = Value::String(bad);
                json_error(&format!("{field} {what}"), &publish(body).await, 400);
            }
            let mut body = serde_json::json!({"stream": "news", "data": "x"});
            body[field] = Value::String("e".repeat(256));
            assert_eq!(publish(body).await.0, 200, "{name}: {field} of 256 bytes");
        }
        let bad_json = post(&server, "application/json", "{\"stream\": ".into()).await;
        json_error("bad JSON", &bad_json, 400);
        let no_data = publish(serde_json::json!({"stream": "news"})).await;
        json_error("no data", &no_data, 400);
        let text = post(&server, "text/plain", r#"{"data": "x"}"#.into()).await;
        json_error("text/plain", &text, 415);

        let (status, first) = publish(serde_json::json!(
            {"stream": "answers", "id": "order-17", "data": "x"}
        ))
        .await;
        assert_eq!(status, 200, "{name}: {first}");
        let epoch = first["epoch"].as_str().expect("an epoch");
        let position = first["position"].as_u64().expect("a position");
        assert_eq!(first["stream"], "answers", "{name}: {first}");
        assert_eq!(first["duplicate"], false, "{name}: {first}");
        assert!(
            epoch.len() == 16 && epoch.chars().all(|c| c.is_ascii_hexdigit()),
            "{name}: {first}"
        );
        assert_eq!(
            first["id"],
            format!("{epoch}-{position}"),
            "{name}: {first}"
        );
        let (status, again) = publish(serde_json::json!(
            {"stream": "answers", "id": "order-17", "data": "y"}
        ))
        .await;
        assert_eq!(status, 200, "{name}: {again}");
        assert_eq!(
            (&again["position"], &again["duplicate"]),
            (&first["position"], &Value::Bool(true)),
            "{name}: a retained publisher id appends nothing: {again}"
        );
    }
}
