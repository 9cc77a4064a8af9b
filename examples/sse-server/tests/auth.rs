//! Authentication of the real `sse-server` binary, over real HTTP: JWTs minted here with
//! `jsonwebtoken` (HS256 secrets; RS256 and ES256 key pairs made with the `openssl` CLI at
//! test time), and development mode (no key).
//!
//! - Grants decide subscribing and publishing (200, or 403 `insufficient_scope` with
//!   `WWW-Authenticate` and a JSON body, before any event byte); anonymous requests read the
//!   `--public-streams` only and publish nothing (401).
//! - Forged, expired, wrong-algorithm (the HS256-with-the-public-key confusion among them),
//!   wrong-issuer and wrong-audience tokens are refused with 401 `invalid_token`.
//! - Several keys verify (rotation); a token in the URL is refused; the header wins over the
//!   cookie; `nbf` is honoured with 60 s of skew; `iss`/`aud` are ignored unless configured; a
//!   token without `sse` grants nothing; unusable keys stop the server with exit code 2.
//! - Every refusal (403s included) carries its `WWW-Authenticate` and echoes no token.
//! - A session is bound to its `sub`: another principal presenting it gets 403.
//! - A subscriber whose token expires gets `event: ended` (`authorization_expired`) and the
//!   stream ends; with a fresh token and its `Last-Event-ID` it resumes exactly.
//! - Development mode: loopback publishes, others are refused (whatever `X-Forwarded-For`
//!   says); beyond loopback the server refuses to start without `--insecure`.
//! - No token ever appears in the server's log, at `debug` level.
//!
//! Every wait is on a condition with a deadline.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::HeaderMap;
use resumable_sse_axum::testing::{SseStream, connect};
use serde_json::{Value, json};
use support::{Log, Server, TempDir, tail};

/// The HS256 secret of most tests.
const KEY: &str = "auth-tests-hs256-secret-0123456789abcdef";
/// A second one, for rotation.
const KEY2: &str = "auth-tests-hs256-secret-rotated-9876543210";
/// How long one expected thing may take.
const WAIT: Duration = Duration::from_secs(10);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Claims for `sub`, valid for `ttl` seconds, with these grants.
fn claims(sub: &str, subscribe: &[&str], publish: &[&str], ttl: u64) -> Value {
    json!({
        "sub": sub,
        "exp": now() + ttl,
        "sse": {"subscribe": subscribe, "publish": publish},
    })
}

fn mint(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("mint a token")
}

fn hs256(secret: &str, claims: &Value) -> String {
    mint(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()).expect("an HS256 key"),
        claims,
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn start(args: &[&str]) -> Server {
    let mut all = vec!["--listen", "127.0.0.1:0", "--heartbeat", "1s"];
    all.extend_from_slice(args);
    Server::start_with(&all).unwrap_or_else(|err| panic!("{err}"))
}

/// Opens an event stream (status 200 expected) and reads its `connected` event.
async fn subscribe(server: &Server, query: &str, headers: &[(&str, &str)]) -> (SseStream, Value) {
    let mut stream = connect(&server.url(&format!("/events?{query}")), headers).await;
    assert_eq!(
        stream.status,
        200,
        "GET /events?{query}: expected 200; server log:\n{}",
        tail(&server.log, 20)
    );
    let connected = stream.next_event(WAIT).await.expect("a connected event");
    assert_eq!(connected.event, "connected");
    let data = serde_json::from_str(&connected.data).expect("connected carries JSON");
    (stream, data)
}

/// A refused request: the status, `WWW-Authenticate`, and the JSON body (the whole
/// response, so no event byte came before it).
async fn refused(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
    publish: Option<Value>,
) -> (u16, String, Value) {
    let (status, challenge, body) = refused_raw(&server.url(path), headers, publish).await;
    let body = serde_json::from_str(&body)
        .unwrap_or_else(|_| panic!("{path}: the refusal is not JSON: {body}"));
    (status, challenge, body)
}

/// [`refused`] at any URL, the body as it was sent.
async fn refused_raw(
    url: &str,
    headers: &[(&str, &str)],
    publish: Option<Value>,
) -> (u16, String, String) {
    let client = reqwest::Client::new();
    let mut request = match &publish {
        Some(body) => client.post(url).json(body),
        None => client.get(url).header("accept", "text/event-stream"),
    };
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(WAIT, request.send())
        .await
        .expect("an answer in time")
        .expect("an answer");
    let status = response.status().as_u16();
    assert_ne!(status, 200, "{url}: expected a refusal, got 200");
    let challenge = header(response.headers(), "www-authenticate");
    let body = tokio::time::timeout(WAIT, response.text())
        .await
        .expect("a whole body in time")
        .expect("a body");
    (status, challenge, body)
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// This `Authorization` may read and publish `room:1`: a subscription receives what it
/// publishes.
async fn accepted(server: &Server, authorization: &str) {
    let (mut stream, _) =
        subscribe(server, "stream=room:1", &[("authorization", authorization)]).await;
    let (status, body) = publish(
        server,
        json!({"stream": "room:1", "data": "x"}),
        &[("authorization", authorization)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(next_message(&mut stream).await, "x");
}

/// Refused with these headers both to read and to publish `room:1`: 401 `invalid_token`;
/// the read's error message.
async fn invalid_everywhere(server: &Server, headers: &[(&str, &str)]) -> String {
    let message = assert_refused(
        server,
        "/events?stream=room:1",
        headers,
        None,
        401,
        "invalid_token",
    )
    .await;
    assert_refused(
        server,
        "/publish",
        headers,
        Some(json!({"stream": "room:1", "data": "no"})),
        401,
        "invalid_token",
    )
    .await;
    message
}

/// `GET /events?stream=room:1` with this `Authorization` is refused: 401 `invalid_token`;
/// the error's message.
async fn invalid_token(server: &Server, authorization: &str) -> String {
    assert_refused(
        server,
        "/events?stream=room:1",
        &[("authorization", authorization)],
        None,
        401,
        "invalid_token",
    )
    .await
}

/// Asserts an RFC 6750 refusal: `status`, the `code` in the challenge and in the body.
async fn assert_refused(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
    publish: Option<Value>,
    status: u16,
    code: &str,
) -> String {
    let (got, challenge, body) = refused(server, path, headers, publish).await;
    assert_eq!(got, status, "{path}: {body}");
    assert!(
        challenge.starts_with(&format!("Bearer error=\"{code}\"")),
        "{path}: WWW-Authenticate is {challenge:?}"
    );
    assert_eq!(body["error"], code, "{path}: {body}");
    body["message"].as_str().unwrap_or_default().to_owned()
}

/// `POST /publish` with `body` and `headers`: the status and the JSON answer.
async fn publish(server: &Server, body: Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(server.url("/publish"))
        .json(&body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(WAIT, request.send())
        .await
        .expect("an answer in time")
        .expect("an answer");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// The next event named `message` (skipping heartbeats and other kinds).
async fn next_message(stream: &mut SseStream) -> String {
    let seen = stream
        .collect_until(WAIT, |seen| seen.iter().any(|e| e.event == "message"))
        .await;
    seen.into_iter()
        .find(|e| e.event == "message")
        .map(|e| e.data)
        .expect("a message in time")
}

#[tokio::test]
async fn grants_decide_who_subscribes_and_publishes() {
    let server = start(&[
        "--jwt-key",
        KEY,
        "--public-streams",
        "news",
        "--public-streams",
        "open:*",
    ]);
    let reader = hs256(KEY, &claims("alice", &["room:*"], &[], 600));
    let writer = hs256(KEY, &claims("svc", &[], &["room:1"], 600));
    let reader_auth = bearer(&reader);
    let writer_auth = bearer(&writer);
    let as_reader = [("authorization", reader_auth.as_str())];
    let as_writer = [("authorization", writer_auth.as_str())];

    // Granted by pattern: the stream opens, and what is published arrives.
    let (mut room, _) = subscribe(&server, "stream=room:1", &as_reader).await;
    let (status, body) = publish(
        &server,
        json!({"stream": "room:1", "data": "hi"}),
        &as_writer,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(next_message(&mut room).await, "hi");

    // Not granted: 403 before any event byte, also when one of several streams is not.
    for query in [
        "stream=secret",
        "stream=room:1&stream=secret",
        "stream=rooms",
    ] {
        assert_refused(
            &server,
            &format!("/events?{query}"),
            &as_reader,
            None,
            403,
            "insufficient_scope",
        )
        .await;
    }
    let message = assert_refused(
        &server,
        "/publish",
        &as_writer,
        Some(json!({"stream": "room:2", "data": "no"})),
        403,
        "insufficient_scope",
    )
    .await;
    assert!(message.contains("room:2"), "{message}");
    // A reader's token does not publish.
    assert_refused(
        &server,
        "/publish",
        &as_reader,
        Some(json!({"stream": "room:1", "data": "no"})),
        403,
        "insufficient_scope",
    )
    .await;

    // The cookie works as the header does (browsers).
    let cookie = format!("sse_token={reader}");
    subscribe(&server, "stream=room:7", &[("cookie", cookie.as_str())]).await;

    // Anonymous: public streams only, and no publishing.
    subscribe(&server, "stream=news", &[]).await;
    subscribe(&server, "stream=open:lobby&stream=news", &[]).await;
    // A token's holder reads the public streams too.
    subscribe(&server, "stream=news&stream=room:1", &as_reader).await;
    for query in ["stream=room:1", "stream=news&stream=secret", ""] {
        assert_refused(
            &server,
            &format!("/events?{query}"),
            &[],
            None,
            401,
            "invalid_token",
        )
        .await;
    }
    assert_refused(
        &server,
        "/publish",
        &[],
        Some(json!({"stream": "news", "data": "no"})),
        401,
        "invalid_token",
    )
    .await;

    // Never in the URL, however valid the token.
    for path in [
        format!("/events?stream=room:1&access_token={reader}"),
        format!("/events?stream=news&token={reader}"),
    ] {
        let message = assert_refused(&server, &path, &[], None, 401, "invalid_token").await;
        assert!(message.contains("not accepted in the URL"), "{message}");
    }
    assert_refused(
        &server,
        &format!("/publish?access_token={writer}"),
        &[],
        Some(json!({"stream": "room:1", "data": "no"})),
        401,
        "invalid_token",
    )
    .await;
    // Nothing refused reached the stream.
    let (status, _) = publish(
        &server,
        json!({"stream": "room:1", "data": "last"}),
        &as_writer,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(next_message(&mut room).await, "last");
}

#[tokio::test]
async fn forged_expired_and_misissued_tokens_are_refused() {
    let server = start(&[
        "--jwt-key",
        KEY,
        "--jwt-issuer",
        "https://issuer.example",
        "--jwt-audience",
        "sse",
    ]);
    let good = |extra: Value| {
        let mut claims = claims("alice", &["*"], &["*"], 600);
        claims["iss"] = json!("https://issuer.example");
        claims["aud"] = json!("sse");
        for (name, value) in extra.as_object().into_iter().flatten() {
            if value.is_null() {
                claims.as_object_mut().map(|c| c.remove(name));
            } else {
                claims[name] = value.clone();
            }
        }
        claims
    };
    let valid = hs256(KEY, &good(json!({})));
    subscribe(
        &server,
        "stream=room:1",
        &[("authorization", &bearer(&valid))],
    )
    .await;

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "forged signature",
            hs256("someone-elses-secret-0123456789abcdefgh", &good(json!({}))),
            "signature",
        ),
        (
            "expired",
            hs256(KEY, &good(json!({"exp": now() - 5}))),
            "expired",
        ),
        ("no exp", hs256(KEY, &good(json!({"exp": null}))), "exp"),
        ("no sub", hs256(KEY, &good(json!({"sub": null}))), "sub"),
        (
            "wrong issuer",
            hs256(KEY, &good(json!({"iss": "https://other.example"}))),
            "issuer",
        ),
        ("no issuer", hs256(KEY, &good(json!({"iss": null}))), "iss"),
        (
            "no audience",
            hs256(KEY, &good(json!({"aud": null}))),
            "aud",
        ),
        (
            "wrong audience",
            hs256(KEY, &good(json!({"aud": "other"}))),
            "audience",
        ),
        (
            "another HMAC algorithm",
            mint(
                Algorithm::HS512,
                &EncodingKey::from_secret(KEY.as_bytes()).unwrap(),
                &good(json!({})),
            ),
            "algorithm",
        ),
        ("not a JWT", "not-a-jwt".to_owned(), "JWT"),
        (
            "alg none",
            format!(
                "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
                valid.split('.').nth(1).unwrap()
            ),
            "JWT",
        ),
    ];
    for (what, token, says) in cases {
        let auth = bearer(&token);
        let headers = [("authorization", auth.as_str())];
        let message = invalid_everywhere(&server, &headers).await;
        assert!(message.contains(says), "{what}: {message}");
    }
    // Not a bearer token at all.
    invalid_token(&server, "Basic YWxpY2U6c2VjcmV0").await;
}

/// Makes a key pair with the `openssl` CLI: (private PEM, public PEM file).
fn key_pair(dir: &TempDir, name: &str, genpkey: &[&str]) -> (Vec<u8>, String) {
    let private = dir.0.join(format!("{name}.pem"));
    let public = dir.0.join(format!("{name}.pub.pem"));
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("this test needs the openssl CLI");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let private_path = private.to_str().expect("a UTF-8 temp path");
    let public_path = public.to_str().expect("a UTF-8 temp path");
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genpkey);
    args.extend_from_slice(&["-out", private_path]);
    run(&args);
    run(&["pkey", "-in", private_path, "-pubout", "-out", public_path]);
    (
        std::fs::read(&private).expect("the private key"),
        public_path.to_owned(),
    )
}

#[tokio::test]
async fn public_keys_verify_with_their_own_algorithm_only() {
    let dir = TempDir::new("sse-auth-keys").unwrap();
    let (rsa, rsa_pub) = key_pair(
        &dir,
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let (ec, ec_pub) = key_pair(
        &dir,
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let rsa_key = EncodingKey::from_rsa_pem(&rsa).unwrap();
    let ec_key = EncodingKey::from_ec_pem(&ec).unwrap();
    let claims = claims("alice", &["room:*"], &["room:*"], 600);

    let server = start(&[
        "--jwt-key",
        KEY,
        "--jwt-public-key",
        &rsa_pub,
        "--jwt-public-key",
        &ec_pub,
    ]);
    for token in [
        mint(Algorithm::RS256, &rsa_key, &claims),
        mint(Algorithm::ES256, &ec_key, &claims),
        hs256(KEY, &claims),
    ] {
        let auth = bearer(&token);
        accepted(&server, &auth).await;
    }
    // The confusion attack: HS256 with a public key's PEM as the secret. The public keys
    // only ever verify RS256 and ES256, so this is checked against the HS256 secret, and fails.
    let rsa_pem = std::fs::read(&rsa_pub).unwrap();
    let ec_pem = std::fs::read(&ec_pub).unwrap();
    let confused = [
        hs256_bytes(&rsa_pem, &claims),
        hs256_bytes(&ec_pem, &claims),
        // The right key with another algorithm than the configuration's.
        mint(Algorithm::RS384, &rsa_key, &claims),
        mint(Algorithm::PS256, &rsa_key, &claims),
    ];
    for token in &confused {
        let auth = bearer(token);
        invalid_token(&server, &auth).await;
    }

    // With an RSA key alone, no HS256 token is even tried.
    let rsa_only = start(&["--jwt-public-key", &rsa_pub]);
    for token in [
        &confused[0],
        &hs256(KEY, &claims),
        &mint(Algorithm::ES256, &ec_key, &claims),
    ] {
        let auth = bearer(token);
        let message = invalid_token(&rsa_only, &auth).await;
        assert!(message.contains("algorithm"), "{message}");
    }
    let auth = bearer(&mint(Algorithm::RS256, &rsa_key, &claims));
    subscribe(&rsa_only, "stream=room:1", &[("authorization", &auth)]).await;

    // Keys the server cannot use are refused at start, naming the file.
    let (_, p384_pub) = key_pair(
        &dir,
        "p384",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    );
    let rsa_private = dir.0.join("rsa.pem");
    for (file, says) in [
        (p384_pub.as_str(), "P-256"),
        (rsa_private.to_str().unwrap(), "private key"),
    ] {
        let (code, stderr) = run_to_exit(&["--listen", "127.0.0.1:0", "--jwt-public-key", file]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(says) && stderr.contains(file), "{stderr}");
    }
}

/// A port in use (or any failure once the server's runtimes run) is an error naming the
/// address, not a panic: the event streams' runtime was dropped inside the main one.
#[test]
fn a_port_in_use_is_an_error_not_a_panic() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run_to_exit(&["--listen", &addr]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")) && stderr.contains("in use"),
        "{stderr}"
    );
}

fn hs256_bytes(secret: &[u8], claims: &Value) -> String {
    mint(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret).expect("an HS256 key"),
        claims,
    )
}

#[tokio::test]
async fn several_keys_rotate() {
    let server = start(&["--jwt-key", KEY, "--jwt-key", KEY2]);
    let claims = claims("alice", &["room:*"], &["room:*"], 600);
    for secret in [KEY, KEY2] {
        let auth = bearer(&hs256(secret, &claims));
        accepted(&server, &auth).await;
    }
    let retired = bearer(&hs256("a-retired-secret-no-longer-configured-000", &claims));
    invalid_token(&server, &retired).await;
}

/// Rotation between public keys: a token signed by either configured RSA key is accepted, one
/// signed by a key that is no longer configured is not (docs/authentication.md).
#[tokio::test]
async fn several_public_keys_rotate() {
    let dir = TempDir::new("sse-auth-rotation").unwrap();
    let rsa = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
    let (new, new_pub) = key_pair(&dir, "new", &rsa);
    let (old, old_pub) = key_pair(&dir, "old", &rsa);
    let (retired, _) = key_pair(&dir, "retired", &rsa);
    let server = start(&["--jwt-public-key", &new_pub, "--jwt-public-key", &old_pub]);
    let claims = claims("alice", &["room:*"], &["room:*"], 600);
    for private in [&new, &old] {
        let key = EncodingKey::from_rsa_pem(private).unwrap();
        let auth = bearer(&mint(Algorithm::RS256, &key, &claims));
        accepted(&server, &auth).await;
    }
    let key = EncodingKey::from_rsa_pem(&retired).unwrap();
    let auth = bearer(&mint(Algorithm::RS256, &key, &claims));
    invalid_token(&server, &auth).await;
}

#[tokio::test]
async fn sessions_are_bound_to_the_principal() {
    let server = start(&["--jwt-key", KEY]);
    let alice = bearer(&hs256(KEY, &claims("alice", &["room:*"], &[], 600)));
    let bob = bearer(&hs256(KEY, &claims("bob", &["room:*"], &[], 600)));
    let (mut first, info) = subscribe(&server, "stream=room:1", &[("authorization", &alice)]).await;
    let session_token = first.token().expect("a session token");
    let session_id = info["session"].as_str().expect("a session id").to_owned();

    // Bob presents Alice's session: refused.
    let body = assert_refused_status(
        &server,
        "/events?stream=room:1",
        &[("authorization", &bob), ("x-sse-session", &session_token)],
        403,
    )
    .await;
    // RFC 6750's form: the token is genuine, but the session is not its.
    assert_eq!(body["error"], "insufficient_scope", "{body}");
    // Alice with it: her session.
    let (_again, info) = subscribe(
        &server,
        "stream=room:1",
        &[("authorization", &alice), ("x-sse-session", &session_token)],
    )
    .await;
    assert_eq!(info["session"], session_id.as_str());

    // Publishing to a session needs a pattern matching `@session:<id>`.
    for (grant, status) in [("room:*", 403), ("@session:*", 200), ("*", 200)] {
        let sender = bearer(&hs256(KEY, &claims("svc", &[], &[grant], 600)));
        let (got, body) = publish(
            &server,
            json!({"session": session_id, "data": format!("via {grant}")}),
            &[("authorization", &sender)],
        )
        .await;
        assert_eq!(got, status, "{grant}: {body}");
        if status == 200 {
            assert_eq!(next_message(&mut first).await, format!("via {grant}"));
        }
    }
    let exact = bearer(&hs256(
        KEY,
        &claims("svc", &[], &[&format!("@session:{session_id}")], 600),
    ));
    let (got, body) = publish(
        &server,
        json!({"session": session_id, "data": "exact"}),
        &[("authorization", &exact)],
    )
    .await;
    assert_eq!(got, 200, "{body}");
    assert_eq!(next_message(&mut first).await, "exact");
}

async fn assert_refused_status(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
    status: u16,
) -> Value {
    let (got, _, body) = refused(server, path, headers, None).await;
    assert_eq!(got, status, "{path}: {body}");
    body
}

#[tokio::test]
async fn an_expired_token_ends_the_stream_and_a_fresh_one_resumes_exactly() {
    let server = start(&["--jwt-key", KEY]);
    let publisher = bearer(&hs256(KEY, &claims("svc", &[], &["room:*"], 600)));
    let as_publisher = [("authorization", publisher.as_str())];
    let exp = now() + 3;
    let mut short = claims("alice", &["room:*"], &[], 0);
    short["exp"] = json!(exp);
    let short = bearer(&hs256(KEY, &short));
    let (mut stream, _) = subscribe(&server, "stream=room:exp", &[("authorization", &short)]).await;
    let session = stream.token().expect("a session token");
    let (status, _) = publish(
        &server,
        json!({"stream": "room:exp", "data": "one"}),
        &as_publisher,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(next_message(&mut stream).await, "one");

    // At `exp` (heartbeats every second wake the check): `ended`, then the response ends.
    let seen = stream
        .collect_until(Duration::from_secs(15), |seen| {
            seen.iter().any(|e| e.event == "ended")
        })
        .await;
    let ended = seen
        .iter()
        .find(|e| e.event == "ended")
        .expect("an ended event");
    assert!(now() >= exp, "ended before the token expired");
    let reason: Value = serde_json::from_str(&ended.data).unwrap();
    assert_eq!(reason["reason"], "authorization_expired");
    assert!(
        stream.next_item(WAIT).await.is_none(),
        "the response goes on after ended"
    );
    assert!(stream.ended());
    let last_event_id = stream.last_event_id().to_owned();

    // While away.
    for data in ["two", "three"] {
        let (status, _) = publish(
            &server,
            json!({"stream": "room:exp", "data": data}),
            &as_publisher,
        )
        .await;
        assert_eq!(status, 200);
    }
    // The expired token is refused; a fresh one resumes from the Last-Event-ID.
    assert_refused(
        &server,
        "/events?stream=room:exp",
        &[("authorization", &short)],
        None,
        401,
        "invalid_token",
    )
    .await;
    let fresh = bearer(&hs256(KEY, &claims("alice", &["room:*"], &[], 600)));
    let (mut again, info) = subscribe(
        &server,
        "stream=room:exp",
        &[
            ("authorization", &fresh),
            ("last-event-id", &last_event_id),
            ("x-sse-session", &session),
        ],
    )
    .await;
    assert_eq!(info["resumed"], true, "{info}");
    assert_eq!(info["reset"], false, "{info}");
    let events = again
        .collect_until(WAIT, |seen| {
            seen.iter().filter(|e| e.event == "message").count() == 2
        })
        .await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert!(!kinds.contains(&"reset"), "{kinds:?}");
    let data: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| e.data.as_str())
        .collect();
    assert_eq!(data, ["two", "three"]);
}

/// A non-loopback IPv4 address of this machine (the one its default route leaves from;
/// nothing is sent).
fn own_address() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
    socket
        .connect("192.0.2.1:9")
        .expect("this test needs a non-loopback IPv4 address (a default route)");
    let ip = socket.local_addr().expect("its address").ip();
    assert!(!ip.is_loopback(), "no non-loopback address: {ip}");
    ip
}

/// Runs the binary until it exits (within [`WAIT`]): its exit code and standard error.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    run_to_exit_with_env(args, &[])
}

/// [`run_to_exit`] with these environment variables set.
fn run_to_exit_with_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Server::command()
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sse-server");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child's status") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sse-server {args:?} did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status.code(), stderr)
}

async fn wait_for_log(log: &Log, needle: &str) {
    let deadline = Instant::now() + WAIT;
    while !log
        .lock()
        .expect("the log")
        .iter()
        .any(|l| l.contains(needle))
    {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            tail(log, 30)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn development_mode_publishes_from_loopback_only() {
    // No key, loopback: as before, every stream public and publishing open to this machine.
    let server = start(&[]);
    wait_for_log(&server.log, "development mode").await;
    let (mut stream, _) = subscribe(&server, "stream=anything", &[]).await;
    let (status, body) =
        publish(&server, json!({"stream": "anything", "data": "local"}), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(next_message(&mut stream).await, "local");
    assert_refused(
        &server,
        "/events?stream=anything&token=x",
        &[],
        None,
        401,
        "invalid_token",
    )
    .await;

    // Beyond loopback without a key: refused at start, with the reason.
    let (code, stderr) = run_to_exit(&["--listen", "0.0.0.0:0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0") && stderr.contains("--insecure"),
        "{stderr}"
    );

    // With --insecure it starts; another machine reads but may not publish, whatever
    // X-Forwarded-For claims.
    let open = Server::start_with(&["--listen", "0.0.0.0:0", "--insecure"])
        .unwrap_or_else(|err| panic!("{err}"));
    wait_for_log(&open.log, "--insecure").await;
    let port = open.addr.rsplit(':').next().unwrap().to_owned();
    let remote = format!("http://{}:{port}", own_address());
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{remote}/publish"))
        .header("x-forwarded-for", "127.0.0.1")
        .json(&json!({"stream": "anything", "data": "remote"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_scope");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("development mode"),
        "{body}"
    );
    let mut remote_stream = connect(&format!("{remote}/events?stream=anything"), &[]).await;
    assert_eq!(remote_stream.status, 200);
    assert_eq!(
        remote_stream.next_event(WAIT).await.unwrap().event,
        "connected"
    );
    let local = format!("http://127.0.0.1:{port}/publish");
    let response = client
        .post(local)
        .json(&json!({"stream": "anything", "data": "from here"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(next_message(&mut remote_stream).await, "from here");
}

#[tokio::test]
async fn tokens_never_reach_the_log() {
    let server = Server::start_with_env(
        &[
            "--listen",
            "127.0.0.1:0",
            "--heartbeat",
            "1s",
            "--jwt-key",
            KEY,
        ],
        &[("RUST_LOG", "debug")],
    )
    .unwrap_or_else(|err| panic!("{err}"));
    let log = server.log.clone();
    let valid = hs256(KEY, &claims("alice", &["room:*"], &["room:*"], 600));
    let forged = hs256(
        "someone-elses-secret-0123456789abcdefgh",
        &claims("mallory", &["*"], &["*"], 600),
    );
    let expired = {
        let mut c = claims("alice", &["*"], &["*"], 0);
        c["exp"] = json!(now() - 5);
        hs256(KEY, &c)
    };
    let auth = bearer(&valid);
    let cookie = format!("sse_token={valid}");
    let (mut stream, _) = subscribe(&server, "stream=room:1", &[("authorization", &auth)]).await;
    subscribe(&server, "stream=room:2", &[("cookie", &cookie)]).await;
    let (status, _) = publish(
        &server,
        json!({"stream": "room:1", "data": "x"}),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(next_message(&mut stream).await, "x");
    for token in [&forged, &expired] {
        let auth = bearer(token);
        assert_refused_status(
            &server,
            "/events?stream=room:1",
            &[("authorization", &auth)],
            401,
        )
        .await;
    }
    assert_refused_status(
        &server,
        &format!("/events?stream=room:1&access_token={valid}"),
        &[],
        401,
    )
    .await;
    drop(stream);
    // The server has finished with every request; stop it and read all it wrote (`kill`
    // returns once its output has ended).
    server.kill();
    let lines = log.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.contains("DEBUG")),
        "not at debug level:\n{}",
        lines.join("\n")
    );
    for token in [&valid, &forged, &expired] {
        let signature = token.rsplit('.').next().unwrap();
        let payload = token.split('.').nth(1).unwrap();
        for line in &lines {
            assert!(
                !line.contains(signature) && !line.contains(payload),
                "a token in the log: {line}"
            );
        }
    }
    assert!(
        lines.iter().all(|l| !l.contains(KEY)),
        "the secret in the log"
    );
}

#[tokio::test]
async fn the_header_wins_over_the_cookie() {
    let server = start(&["--jwt-key", KEY]);
    let alice = hs256(KEY, &claims("alice", &["room:*"], &["room:*"], 600));
    let bob = hs256(KEY, &claims("bob", &["hall:*"], &["hall:*"], 600));
    let forged = hs256(
        "someone-elses-secret-0123456789abcdefgh",
        &claims("mallory", &["*"], &["*"], 600),
    );
    let (alice_auth, bob_auth, forged_auth) = (bearer(&alice), bearer(&bob), bearer(&forged));
    let alice_cookie = format!("sse_token={alice}");
    let bob_cookie = format!("sse_token={bob}");

    // A valid header and another principal's cookie: the header's grants and principal.
    let header_alice = [
        ("authorization", alice_auth.as_str()),
        ("cookie", &bob_cookie),
    ];
    let (mut room, info) = subscribe(&server, "stream=room:1", &header_alice).await;
    assert_refused(
        &server,
        "/events?stream=hall:1",
        &header_alice,
        None,
        403,
        "insufficient_scope",
    )
    .await;
    let (status, body) = publish(
        &server,
        json!({"stream": "room:1", "data": "a"}),
        &header_alice,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(next_message(&mut room).await, "a");
    assert_refused(
        &server,
        "/publish",
        &header_alice,
        Some(json!({"stream": "hall:1", "data": "no"})),
        403,
        "insufficient_scope",
    )
    .await;
    // The session it opened is Alice's: refused to Bob, resumed by Alice.
    let session = room.token().expect("a session token");
    assert_refused(
        &server,
        "/events?stream=hall:1",
        &[("authorization", &bob_auth), ("x-sse-session", &session)],
        None,
        403,
        "insufficient_scope",
    )
    .await;
    let (_again, again) = subscribe(
        &server,
        "stream=room:1",
        &[("authorization", &alice_auth), ("x-sse-session", &session)],
    )
    .await;
    assert_eq!(again["session"], info["session"], "{again}");

    // A valid header and a forged or malformed cookie: the cookie is not even looked at.
    for cookie in [
        format!("sse_token={forged}"),
        "sse_token=not-a-jwt".to_owned(),
    ] {
        let headers = [("authorization", alice_auth.as_str()), ("cookie", &cookie)];
        subscribe(&server, "stream=room:1", &headers).await;
        let (status, body) =
            publish(&server, json!({"stream": "room:1", "data": "b"}), &headers).await;
        assert_eq!(status, 200, "{cookie}: {body}");
        assert_eq!(next_message(&mut room).await, "b");
    }

    // The converse: a bad header is refused although the cookie is valid (no fallback)...
    for auth in [
        forged_auth.as_str(),
        "Bearer not-a-jwt",
        "Basic YWxpY2U6c2VjcmV0",
    ] {
        let headers = [("authorization", auth), ("cookie", &alice_cookie)];
        invalid_everywhere(&server, &headers).await;
    }
    // ... and another principal's valid header brings its own grants, not the cookie's.
    let header_bob = [
        ("authorization", bob_auth.as_str()),
        ("cookie", &alice_cookie),
    ];
    assert_refused(
        &server,
        "/events?stream=room:1",
        &header_bob,
        None,
        403,
        "insufficient_scope",
    )
    .await;
    assert_refused(
        &server,
        "/publish",
        &header_bob,
        Some(json!({"stream": "room:1", "data": "no"})),
        403,
        "insufficient_scope",
    )
    .await;
    subscribe(&server, "stream=hall:1", &header_bob).await;
    // The cookie alone is accepted: the refusals above are the header's doing.
    subscribe(&server, "stream=room:1", &[("cookie", &alice_cookie)]).await;
    // Nothing refused reached the stream.
    let (status, _) = publish(
        &server,
        json!({"stream": "room:1", "data": "last"}),
        &[("authorization", &alice_auth)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(next_message(&mut room).await, "last");
}

#[tokio::test]
async fn nbf_is_honoured_with_a_minute_for_the_issuers_clock() {
    let server = start(&["--jwt-key", KEY]);
    let starting_at = |nbf: u64| {
        let mut claims = claims("alice", &["room:*"], &["room:*"], 600);
        claims["nbf"] = json!(nbf);
        bearer(&hs256(KEY, &claims))
    };
    // Up to 60 s ahead is the issuer's clock running fast. The server reads its clock after
    // `now()` here, so `now() + 60` is within its 60 s whenever it checks.
    for nbf in [now() - 3600, now(), now() + 30, now() + 60] {
        let auth = starting_at(nbf);
        subscribe(&server, "stream=room:1", &[("authorization", &auth)]).await;
        let (status, body) = publish(
            &server,
            json!({"stream": "room:1", "data": "x"}),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(
            status,
            200,
            "nbf = now + {}: {body}",
            nbf as i64 - now() as i64
        );
    }
    // Beyond: not valid yet, for reading and publishing alike.
    for ahead in [90, 120] {
        let auth = starting_at(now() + ahead);
        let headers = [("authorization", auth.as_str())];
        let message = invalid_everywhere(&server, &headers).await;
        assert!(message.contains("nbf"), "nbf = now + {ahead}: {message}");
    }
}

#[tokio::test]
async fn iss_and_aud_are_ignored_unless_configured() {
    let server = start(&["--jwt-key", KEY]);
    for (iss, aud) in [
        (json!("https://anyone.example"), Value::Null),
        (Value::Null, json!("some-other-api")),
        (Value::Null, json!(["sse", "another-api"])),
        (json!("https://anyone.example"), json!("some-other-api")),
    ] {
        let mut claims = claims("alice", &["room:*"], &["room:*"], 600);
        if !iss.is_null() {
            claims["iss"] = iss;
        }
        if !aud.is_null() {
            claims["aud"] = aud;
        }
        let auth = bearer(&hs256(KEY, &claims));
        accepted(&server, &auth).await;
    }
}

#[tokio::test]
async fn a_token_without_sse_grants_nothing() {
    let server = start(&["--jwt-key", KEY, "--public-streams", "news"]);
    for sse in [None, Some(Value::Null), Some(json!({}))] {
        let mut claims = json!({"sub": "alice", "exp": now() + 600});
        if let Some(sse) = &sse {
            claims["sse"] = sse.clone();
        }
        let auth = bearer(&hs256(KEY, &claims));
        let headers = [("authorization", auth.as_str())];
        // A genuine token: it reads what anyone may read, with a session of its own.
        let (_news, info) = subscribe(&server, "stream=news", &headers).await;
        let session = info["session"].as_str().expect("a session id");
        // And nothing more: 403, not 401.
        for query in ["stream=room:1", "stream=alice", "stream=news&stream=room:1"] {
            assert_refused(
                &server,
                &format!("/events?{query}"),
                &headers,
                None,
                403,
                "insufficient_scope",
            )
            .await;
        }
        for target in [
            json!({"stream": "room:1", "data": "no"}),
            json!({"stream": "news", "data": "no"}),
            json!({"session": session, "data": "no"}),
        ] {
            let message = assert_refused(
                &server,
                "/publish",
                &headers,
                Some(target.clone()),
                403,
                "insufficient_scope",
            )
            .await;
            assert!(
                message.contains("sse.publish"),
                "sse = {sse:?}, {target}: {message}"
            );
        }
    }
}

#[test]
fn unusable_keys_stop_the_server_with_exit_code_2() {
    let short = "thirty-one-bytes-is-one-too-few";
    assert_eq!(short.len(), 31);
    for (args, says) in [
        (vec!["--jwt-key", short], "--jwt-key #1"),
        (vec!["--jwt-key", KEY, "--jwt-key", short], "--jwt-key #2"),
    ] {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend(args);
        let (code, stderr) = run_to_exit(&all);
        assert_eq!(code, Some(2), "{all:?}: {stderr}");
        assert!(
            stderr.contains(says) && stderr.contains("at least 32 bytes"),
            "{stderr}"
        );
        assert!(!stderr.contains(short), "the secret is printed: {stderr}");
    }
    let keys = format!("{KEY},{short}");
    let (code, stderr) =
        run_to_exit_with_env(&["--listen", "127.0.0.1:0"], &[("SSE_JWT_KEYS", &keys)]);
    assert_eq!(code, Some(2), "SSE_JWT_KEYS: {stderr}");
    assert!(
        stderr.contains("--jwt-key #2") && !stderr.contains(short),
        "{stderr}"
    );
    // 32 bytes are enough.
    Server::start_with(&["--listen", "127.0.0.1:0", "--jwt-key", &"k".repeat(32)])
        .unwrap_or_else(|err| panic!("a 32-byte secret: {err}"));

    // Public key files that cannot be read, or hold no public key.
    let dir = TempDir::new("sse-auth-unreadable").unwrap();
    let garbage = dir.0.join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let missing = dir.0.join("missing.pem");
    for file in [&missing, &dir.0, &garbage] {
        let file = file.to_str().expect("a UTF-8 temp path");
        let (code, stderr) = run_to_exit(&["--listen", "127.0.0.1:0", "--jwt-public-key", file]);
        assert_eq!(code, Some(2), "{file}: {stderr}");
        assert!(
            stderr.contains(&format!("--jwt-public-key {file}")),
            "{stderr}"
        );
    }
}

/// One request to refuse: what it shows, where it goes, how, the credentials it presents
/// (none may come back), and the status expected.
struct Refused {
    what: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    publish: Option<Value>,
    presents: Vec<String>,
    status: u16,
}

impl Refused {
    /// `token` presented as `Authorization: Bearer` to `path` (a publish when it is `/publish`).
    fn bearer(what: &'static str, path: &str, token: &str, status: u16) -> Self {
        Refused {
            what,
            path: path.to_owned(),
            headers: vec![("authorization", bearer(token))],
            publish: path
                .starts_with("/publish")
                .then(|| json!({"stream": "room:1", "data": "no"})),
            presents: vec![token.to_owned()],
            status,
        }
    }

    /// Sends it to `base`; asserts the RFC 6750 answer and that it echoes no credential.
    /// Returns the body's message.
    async fn check(&self, base: &str) -> String {
        let Refused { what, status, .. } = self;
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let url = format!("{base}{}", self.path);
        let (got, challenge, text) = refused_raw(&url, &headers, self.publish.clone()).await;
        let code = match status {
            403 => "insufficient_scope",
            _ => "invalid_token",
        };
        assert_eq!(got, *status, "{what}: {text}");
        assert!(
            challenge.starts_with(&format!("Bearer error=\"{code}\", error_description=\"")),
            "{what}: WWW-Authenticate is {challenge:?}"
        );
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
        assert_eq!(body["error"], code, "{what}: {text}");
        for token in &self.presents {
            // The whole token, and the parts of a JWT that are its own.
            let parts: Vec<&str> = token.split('.').collect();
            let own = match parts.as_slice() {
                [_, payload, signature] => vec![*payload, *signature],
                _ => vec![],
            };
            for part in std::iter::once(token.as_str()).chain(own) {
                assert!(
                    !text.contains(part) && !challenge.contains(part),
                    "{what}: the token is echoed: {challenge} {text}"
                );
            }
        }
        body["message"].as_str().unwrap_or_default().to_owned()
    }
}

#[tokio::test]
async fn refusals_carry_their_challenge_and_never_echo_the_token() {
    let server = start(&["--jwt-key", KEY]);
    let base = server.url("");
    let alice = hs256(KEY, &claims("alice", &["room:*"], &["room:*"], 600));
    let bob = hs256(KEY, &claims("bob", &["room:*"], &[], 600));
    let (first, _) = subscribe(
        &server,
        "stream=room:1",
        &[("authorization", &bearer(&alice))],
    )
    .await;
    let session = first.token().expect("a session token");
    let tweaked = |change: Value| {
        let mut claims = claims("alice", &["room:*"], &["room:*"], 600);
        for (name, value) in change.as_object().into_iter().flatten() {
            claims[name] = value.clone();
        }
        hs256(KEY, &claims)
    };
    let refused_tokens = [
        (
            "forged",
            hs256(
                "someone-elses-secret-0123456789abcdefgh",
                &claims("alice", &["*"], &["*"], 600),
            ),
        ),
        ("expired", tweaked(json!({"exp": now() - 5}))),
        ("not valid yet", tweaked(json!({"nbf": now() + 600}))),
        (
            "malformed claims",
            tweaked(json!({"sse": {"subscribe": "room:1"}})),
        ),
        (
            "another algorithm",
            mint(
                Algorithm::HS512,
                &EncodingKey::from_secret(KEY.as_bytes()).expect("an HS512 key"),
                &claims("alice", &["*"], &["*"], 600),
            ),
        ),
        ("not a JWT", "opaque-credential-4f9c2e7a1b3d5f60".to_owned()),
    ];

    let mut cases = vec![
        // The 403s, among them a genuine session token presented by another principal.
        Refused {
            headers: vec![
                ("authorization", bearer(&bob)),
                ("x-sse-session", session.clone()),
            ],
            presents: vec![bob.clone(), session.clone()],
            ..Refused::bearer(
                "another principal's session",
                "/events?stream=room:1",
                &bob,
                403,
            )
        },
        Refused::bearer("no subscribe grant", "/events?stream=hall:1", &alice, 403),
        Refused::bearer("no publish grant", "/publish", &bob, 403),
        // In the URL.
        Refused {
            headers: vec![],
            ..Refused::bearer(
                "in the URL",
                &format!("/events?stream=room:1&access_token={alice}"),
                &alice,
                401,
            )
        },
        Refused {
            headers: vec![],
            ..Refused::bearer(
                "in the URL",
                &format!("/publish?token={alice}"),
                &alice,
                401,
            )
        },
    ];
    for (what, token) in &refused_tokens {
        cases.push(Refused::bearer(what, "/events?stream=room:1", token, 401));
        cases.push(Refused::bearer(what, "/publish", token, 401));
        cases.push(Refused {
            headers: vec![("cookie", format!("sse_token={token}"))],
            ..Refused::bearer(what, "/events?stream=room:1", token, 401)
        });
    }
    for case in &cases {
        case.check(&base).await;
    }

    // Development mode: a publish from another machine gets the same form of 403.
    let open = Server::start_with(&["--listen", "0.0.0.0:0", "--insecure"])
        .unwrap_or_else(|err| panic!("{err}"));
    let port = open.addr.rsplit(':').next().expect("a port");
    let remote = format!("http://{}:{port}", own_address());
    let cookie = ("cookie", format!("sse_token={alice}"));
    let message = Refused {
        headers: vec![("authorization", bearer(&alice)), cookie],
        ..Refused::bearer("development mode, remote", "/publish", &alice, 403)
    }
    .check(&remote)
    .await;
    assert!(message.contains("development mode"), "{message}");
}
