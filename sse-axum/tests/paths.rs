//! The two servers answer alike: `axum::serve` and `resumable_sse_axum::serve` run the same
//! router with all its middleware, and differ only in how an event stream's bytes are written.

use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use resumable_sse_axum::testing::{TestServer, connect};
use resumable_sse_axum::{Authorize, CorsOrigins, Identity, Refusal, SameSite, SseLayer, Target};
use resumable_sse_core::StreamName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

/// An application's own middleware: refuses requests without `authorization: Bearer ok`, and
/// marks every response it lets through.
async fn authenticate(request: Request, next: Next) -> Response {
    let allowed = request
        .headers()
        .get("authorization")
        .is_some_and(|v| v == "Bearer ok");
    if !allowed {
        return (StatusCode::UNAUTHORIZED, "who are you?").into_response();
    }
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert("x-checked-by", HeaderValue::from_static("authenticate"));
    response
}

fn app() -> Router {
    let layer = SseLayer::new(resumable_sse_axum::memory_hub(Default::default()));
    resumable_sse_axum::router(layer).layer(middleware::from_fn(authenticate))
}

/// Both servers of the same app: hyper, and the fast path.
async fn servers() -> [(&'static str, TestServer); 2] {
    both(app).await
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

#[tokio::test]
async fn the_applications_middleware_decides_event_streams_on_both_paths() {
    for (name, server) in servers().await {
        let refused = reqwest::get(server.url("/events?stream=news"))
            .await
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(refused.status(), 401, "{name}: no credentials");
        assert!(
            refused.headers().get("set-cookie").is_none(),
            "{name}: a refused request gets no session cookie from the layer inside"
        );
        assert_eq!(refused.text().await.unwrap_or_default(), "who are you?");

        let mut events = connect(
            &server.url("/events?stream=news"),
            &[("authorization", "Bearer ok")],
        )
        .await;
        assert_eq!(events.status, 200, "{name}: with credentials");
        assert_eq!(
            events.headers.get("x-checked-by").map(|v| v.as_bytes()),
            Some(b"authenticate".as_slice()),
            "{name}: the middleware's response header reaches the client"
        );
        assert_eq!(
            events.headers["content-type"], "text/event-stream",
            "{name}"
        );
        let connected = events.next_event(WAIT).await;
        assert_eq!(
            connected.map(|e| e.event).as_deref(),
            Some("connected"),
            "{name}"
        );
    }
}

/// Sends raw bytes and returns the status line of the answer.
async fn status_line(server: &TestServer, request: &[u8]) -> String {
    let mut socket = tokio::net::TcpStream::connect(server.addr)
        .await
        .unwrap_or_else(|err| panic!("connect: {err}"));
    socket
        .write_all(request)
        .await
        .unwrap_or_else(|err| panic!("write: {err}"));
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout(WAIT, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer to {:?}", String::from_utf8_lossy(request)),
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.lines().next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn malformed_and_unusual_heads_get_the_same_status_on_both_paths() {
    let auth = "authorization: Bearer ok\r\n";
    // (A head over 16 KiB is not among them: `serve` refuses it with 431 where `axum::serve`
    // takes up to about 400 KB; tests/slow.rs.)
    let cases: Vec<(&str, String)> = vec![
        (
            "conflicting content-length",
            format!(
                "GET /events HTTP/1.1\r\nhost: x\r\n{auth}content-length: 1\r\ncontent-length: 2\r\n\r\n"
            ),
        ),
        (
            "non-numeric content-length",
            format!("GET /events HTTP/1.1\r\nhost: x\r\n{auth}content-length: abc\r\n\r\n"),
        ),
        (
            "content-length with transfer-encoding",
            format!(
                "GET /events HTTP/1.1\r\nhost: x\r\n{auth}content-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
            ),
        ),
        (
            "a body on GET",
            format!("GET /events HTTP/1.1\r\nhost: x\r\n{auth}content-length: 5\r\n\r\nhello"),
        ),
        (
            "a chunked body on GET",
            format!(
                "GET /events HTTP/1.1\r\nhost: x\r\n{auth}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
        ),
        (
            "unknown method on the events path",
            format!("BREW /events HTTP/1.1\r\nhost: x\r\n{auth}\r\n"),
        ),
        (
            "POST to the events path",
            format!("POST /events HTTP/1.1\r\nhost: x\r\n{auth}content-length: 0\r\n\r\n"),
        ),
        (
            "invalid stream name",
            format!("GET /events?stream=a%20b HTTP/1.1\r\nhost: x\r\n{auth}\r\n"),
        ),
        (
            "no credentials",
            "GET /events HTTP/1.1\r\nhost: x\r\n\r\n".to_owned(),
        ),
        (
            "a good request",
            format!("GET /events HTTP/1.1\r\nhost: x\r\n{auth}\r\n"),
        ),
    ];
    let [(_, hyper), (_, fast)] = servers().await;
    for (what, request) in cases {
        let through_hyper = status_line(&hyper, request.as_bytes()).await;
        let through_fast = status_line(&fast, request.as_bytes()).await;
        let status = |line: &str| line.split(' ').nth(1).unwrap_or("").to_owned();
        assert!(
            !status(&through_hyper).is_empty(),
            "{what}: hyper answered {through_hyper:?}"
        );
        assert_eq!(
            status(&through_hyper),
            status(&through_fast),
            "{what}: axum::serve answered {through_hyper:?}, the fast path {through_fast:?}"
        );
    }
}

/// The reference router behind `SseLayer::cors`: one listed origin (with credentials) and any
/// other origin without.
fn cors_app() -> Router {
    let layer = SseLayer::new(resumable_sse_axum::memory_hub(Default::default()))
        .with_same_site(SameSite::None);
    let origins = CorsOrigins::new()
        .allow("http://app.example")
        .expect("an origin")
        .any_origin();
    let cors = layer.cors(origins);
    resumable_sse_axum::router(layer).layer(cors)
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The answer lets a page on `origin` read it, with credentials or without.
fn assert_cors(headers: &http::HeaderMap, origin: &str, credentials: bool, name: &str) {
    assert_eq!(
        header(headers, "access-control-allow-origin"),
        Some(origin),
        "{name}: {headers:?}"
    );
    assert_eq!(
        header(headers, "access-control-allow-credentials"),
        credentials.then_some("true"),
        "{name}: credentials only for listed origins"
    );
}

/// CORS answers alike on both servers: preflights for publishing and for event streams with
/// the session header, credentials only for the listed origin, the session header exposed, and
/// no session created by a preflight.
#[tokio::test]
async fn cors_answers_alike_on_both_paths() {
    let http = reqwest::Client::new();
    for (name, server) in both(cors_app).await {
        // A preflight for a JSON publish from the listed origin.
        let preflight = http
            .request(http::Method::OPTIONS, server.url("/publish"))
            .header("origin", "http://app.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert!(preflight.status().is_success(), "{name}: {preflight:?}");
        let h = preflight.headers();
        assert_cors(h, "http://app.example", true, name);
        assert!(
            header(h, "access-control-allow-methods").is_some_and(|m| m.contains("POST")),
            "{name}: {h:?}"
        );
        assert!(
            header(h, "access-control-allow-headers").is_some_and(|v| v.contains("content-type")),
            "{name}: {h:?}"
        );
        assert!(
            h.get("set-cookie").is_none(),
            "{name}: a preflight creates no session"
        );

        // A preflight for an event stream that sends the session header, from any origin:
        // allowed, without credentials.
        let preflight = http
            .request(http::Method::OPTIONS, server.url("/events"))
            .header("origin", "http://elsewhere.example")
            .header("access-control-request-method", "GET")
            .header(
                "access-control-request-headers",
                "x-sse-session,last-event-id",
            )
            .send()
            .await
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        let h = preflight.headers();
        assert_cors(h, "http://elsewhere.example", false, name);
        assert!(
            header(h, "access-control-allow-headers")
                .is_some_and(|v| v.contains("x-sse-session") && v.contains("last-event-id")),
            "{name}: {h:?}"
        );

        // The event stream itself, from the listed origin: CORS headers, the session header
        // exposed, and a `SameSite=None; Secure` cookie.
        let mut events = connect(
            &server.url("/events?stream=news"),
            &[("origin", "http://app.example")],
        )
        .await;
        assert_eq!(events.status, 200, "{name}");
        let h = &events.headers;
        assert_cors(h, "http://app.example", true, name);
        assert!(
            header(h, "access-control-expose-headers").is_some_and(|v| v.contains("x-sse-session")),
            "{name}: {h:?}"
        );
        let cookie = header(h, "set-cookie").unwrap_or_default();
        assert!(
            cookie.contains("SameSite=None") && cookie.contains("; Secure"),
            "{name}: {cookie}"
        );
        let connected = events.next_event(WAIT).await;
        assert_eq!(
            connected.map(|e| e.event).as_deref(),
            Some("connected"),
            "{name}"
        );

        // A cross-site form post gets no preflight: it must not publish.
        let form = http
            .post(server.url("/publish"))
            .header("origin", "http://evil.example")
            .header("content-type", "text/plain")
            .body(r#"{"stream": "news", "data": "forged"}"#)
            .send()
            .await
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(form.status(), 415, "{name}");
        let body: serde_json::Value = form.json().await.unwrap_or_default();
        assert_eq!(body["error"], "unsupported_media_type", "{name}: {body}");
        // The next event on the stream is the next JSON publish, not the refused one.
        let published = http
            .post(server.url("/publish"))
            .header("origin", "http://app.example")
            .json(&serde_json::json!({"stream": "news", "data": "genuine"}))
            .send()
            .await
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(published.status(), 200, "{name}");
        assert_eq!(
            header(published.headers(), "access-control-allow-origin"),
            Some("http://app.example"),
            "{name}"
        );
        let next = events.next_event(WAIT).await.map(|e| e.data);
        assert_eq!(
            next.as_deref(),
            Some("genuine"),
            "{name}: the refused post published nothing"
        );
    }
}

/// An application's rules: `authorization: Bearer <user>` or `Bearer <user>@<expiry, unix ms>`
/// (`Bearer forged` is refused as not genuine); anyone reads `public`, only `<user>` reads
/// `private:<user>`; only `alice` publishes, and not to sessions.
struct BearerRules;

#[resumable_sse_core::async_trait]
impl Authorize for BearerRules {
    async fn identify(&self, parts: &http::request::Parts) -> Result<Identity, Refusal> {
        let Some(value) = parts.headers.get("authorization") else {
            return Ok(Identity::anonymous());
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Refusal::invalid_token("a bearer token is expected"))?;
        if token == "forged" {
            return Err(Refusal::invalid_token("the token is not genuine"));
        }
        Ok(match token.split_once('@') {
            Some((user, expiry)) => {
                let ms: u64 = expiry
                    .parse()
                    .map_err(|_| Refusal::invalid_token("bad expiry"))?;
                Identity::principal(user).with_expiry(resumable_sse_core::time::from_unix_ms(ms))
            }
            None => Identity::principal(token),
        })
    }

    async fn may_subscribe(&self, who: &Identity, stream: &StreamName) -> Result<(), Refusal> {
        let allowed = match stream.as_str().strip_prefix("private:") {
            Some(owner) => who.principal_name() == Some(owner),
            None => stream.as_str() == "public",
        };
        if allowed {
            Ok(())
        } else {
            Err(Refusal::insufficient_scope(format!(
                "{stream} is not yours"
            )))
        }
    }

    async fn may_publish(&self, who: &Identity, target: Target<'_>) -> Result<(), Refusal> {
        match (who.principal_name(), target) {
            (Some("alice"), Target::Stream(_)) => Ok(()),
            (None, _) => Err(Refusal::invalid_token("publishing needs a token")),
            _ => Err(Refusal::insufficient_scope("not allowed to publish there")),
        }
    }
}

fn rules_app(config: resumable_sse_core::Config) -> Router {
    let layer =
        SseLayer::new(resumable_sse_axum::memory_hub(config)).with_authorization(BearerRules);
    resumable_sse_axum::router(layer)
}

/// `(status, WWW-Authenticate, JSON error code, Set-Cookie present)` of a request.
async fn refusal_of(response: reqwest::Response) -> (u16, String, String, bool) {
    let status = response.status().as_u16();
    let challenge = header(response.headers(), "www-authenticate")
        .unwrap_or_default()
        .to_owned();
    let cookie = response.headers().contains_key("set-cookie");
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let code = body["error"].as_str().unwrap_or_default().to_owned();
    (status, challenge, code, cookie)
}

/// The authorization hook decides on both servers alike: 401 and 403 in RFC 6750 form before
/// any byte of an event stream, per stream for subscribing and per target for publishing, and
/// sessions bound to the principal.
#[tokio::test]
async fn authorization_answers_alike_on_both_paths() {
    let http = reqwest::Client::new();
    for (name, server) in both(|| rules_app(Default::default())).await {
        let get = |path: &str, token: Option<&str>| {
            let mut request = http
                .get(server.url(path))
                .header("accept", "text/event-stream");
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            request.send()
        };
        // Anonymous: the public stream only.
        let (status, challenge, code, cookie) =
            refusal_of(get("/events?stream=private:alice", None).await.unwrap()).await;
        assert_eq!(
            (status, code.as_str(), cookie),
            (403, "insufficient_scope", false),
            "{name}"
        );
        assert!(
            challenge.starts_with(r#"Bearer error="insufficient_scope""#),
            "{name}: {challenge}"
        );
        let public = connect(&server.url("/events?stream=public"), &[]).await;
        assert_eq!(public.status, 200, "{name}");
        // A forged token: 401, whatever the stream.
        let (status, challenge, code, cookie) =
            refusal_of(get("/events?stream=public", Some("forged")).await.unwrap()).await;
        assert_eq!(
            (status, code.as_str(), cookie),
            (401, "invalid_token", false),
            "{name}"
        );
        assert!(
            challenge.starts_with(r#"Bearer error="invalid_token""#),
            "{name}: {challenge}"
        );
        // Another user's private stream, and one of several streams refused: 403.
        let (status, ..) = refusal_of(
            get("/events?stream=public&stream=private:alice", Some("bob"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 403, "{name}");
        // The owner reads it.
        let mut alice = connect(
            &server.url("/events?stream=private:alice"),
            &[("authorization", "Bearer alice")],
        )
        .await;
        assert_eq!(alice.status, 200, "{name}");
        let connected = alice.next_event(WAIT).await.expect("connected");
        assert_eq!(connected.event, "connected", "{name}");

        // Publishing: per principal and target.
        let publish = |token: Option<&str>, body: serde_json::Value| {
            let mut request = http.post(server.url("/publish")).json(&body);
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            request.send()
        };
        let body = serde_json::json!({"stream": "private:alice", "data": "for alice"});
        let (status, _, code, _) = refusal_of(publish(None, body.clone()).await.unwrap()).await;
        assert_eq!((status, code.as_str()), (401, "invalid_token"), "{name}");
        let (status, _, code, _) =
            refusal_of(publish(Some("bob"), body.clone()).await.unwrap()).await;
        assert_eq!(
            (status, code.as_str()),
            (403, "insufficient_scope"),
            "{name}"
        );
        let session =
            serde_json::json!({"session": "0123456789abcdef0123456789abcdef", "data": "x"});
        let (status, ..) = refusal_of(publish(Some("alice"), session).await.unwrap()).await;
        assert_eq!(
            status, 403,
            "{name}: sending to a session is refused to alice too"
        );
        let sent = publish(Some("alice"), body).await.unwrap();
        assert_eq!(sent.status(), 200, "{name}");
        let event = alice.next_event(WAIT).await.expect("the event");
        assert_eq!(event.data, "for alice", "{name}");

        // The session is bound to alice: bob presenting her token is refused.
        let token = alice.token().expect("a session token");
        let stolen = http
            .get(server.url("/events?stream=public"))
            .header("accept", "text/event-stream")
            .header("authorization", "Bearer bob")
            .header("x-sse-session", token)
            .send()
            .await
            .unwrap();
        assert_eq!(stolen.status(), 403, "{name}");
        drop(public);
    }
}

/// A subscriber whose authorization expires gets an `ended` event and the stream ends; with
/// fresh credentials and its `Last-Event-ID` it resumes exactly where it was.
#[tokio::test]
async fn expired_authorization_ends_the_stream_and_a_fresh_token_resumes() {
    let config = resumable_sse_core::Config::default().with_heartbeat(Duration::from_millis(200));
    for (name, server) in both(|| rules_app(config.clone())).await {
        let http = reqwest::Client::new();
        let publish = async |data: &str| {
            let sent = http
                .post(server.url("/publish"))
                .header("authorization", "Bearer alice")
                .json(&serde_json::json!({"stream": "private:alice", "data": data}))
                .send()
                .await
                .unwrap();
            assert_eq!(sent.status(), 200, "{name}");
        };
        let expiry = resumable_sse_core::time::unix_ms(
            std::time::SystemTime::now() + Duration::from_millis(1500),
        );
        let short = format!("Bearer alice@{expiry}");
        let mut events = connect(
            &server.url("/events?stream=private:alice"),
            &[("authorization", &short)],
        )
        .await;
        assert_eq!(events.status, 200, "{name}");
        publish("before").await;
        let seen = events
            .collect_until(WAIT, |e| e.iter().any(|e| e.event == "ended"))
            .await;
        let kinds: Vec<(&str, &str)> = seen
            .iter()
            .map(|e| (e.event.as_str(), e.data.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("connected", kinds[0].1),
                ("message", "before"),
                ("ended", r#"{"reason":"authorization_expired"}"#)
            ],
            "{name}"
        );
        assert!(
            events.next_item(WAIT).await.is_none() && events.ended(),
            "{name}: the response ends after `ended`"
        );
        let last_id = events.last_event_id().to_owned();
        assert_eq!(
            last_id, seen[1].last_event_id,
            "{name}: `ended` carries no id"
        );

        // Meanwhile more is published; the client comes back with a fresh token.
        publish("while away").await;
        let token = events.token().expect("a session token");
        let mut back = connect(
            &server.url("/events?stream=private:alice"),
            &[
                ("authorization", "Bearer alice"),
                ("x-sse-session", &token),
                ("last-event-id", &last_id),
            ],
        )
        .await;
        let connected = back.next_event(WAIT).await.expect("connected");
        let info: serde_json::Value = serde_json::from_str(&connected.data).unwrap();
        assert_eq!(info["reset"], false, "{name}: {info}");
        assert_eq!(info["resumed"], true, "{name}: {info}");
        let next = back.next_event(WAIT).await.expect("the missed event");
        assert_eq!(next.data, "while away", "{name}");
    }
}

/// A client that sends bytes after its event-stream request (an SSE client never does) is
/// disconnected by the fast path at once, instead of being read a few bytes at a time.
#[tokio::test]
async fn the_fast_path_closes_a_stream_whose_client_sends_bytes() {
    let server = TestServer::start_fast(app()).await;
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    socket
        .write_all(b"GET /events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ok\r\n\r\n")
        .await
        .unwrap();
    // The head and the `connected` event.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("event: connected") {
        let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
            .await
            .expect("the stream starts")
            .unwrap();
        assert!(n > 0, "closed before the stream started");
        seen.extend_from_slice(&buf[..n]);
    }
    // Refused part-way once the server has closed: that is the point.
    let _ = socket.write_all(&[b'x'; 64 * 1024]).await;
    // The server closes: a read ends (0, or a reset when unread bytes were left).
    loop {
        match tokio::time::timeout(WAIT, socket.read(&mut buf))
            .await
            .expect("the server closes the connection")
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}
