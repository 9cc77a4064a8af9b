//! Graceful shutdown of the real binary: on SIGTERM every open event stream is sent its
//! closing `retry:` and the end of its response, and the process exits 0.

mod support;

use std::time::Duration;

use resumable_sse_core::codec::{Item, Parser};
use support::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

/// Longest wait for anything; reaching it fails the test.
const WAIT: Duration = Duration::from_secs(20);

/// An event stream read over a raw socket, so the test sees how the response ends (the
/// chunked body's last chunk), not only that the connection closed.
struct RawStream {
    socket: TcpStream,
    raw: Vec<u8>,
    /// The server closed the connection cleanly (not reset).
    closed: bool,
}

impl RawStream {
    async fn open(addr: &str, path: &str) -> RawStream {
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n");
        socket
            .write_all(request.as_bytes())
            .await
            .expect("send the request");
        RawStream {
            socket,
            raw: Vec::new(),
            closed: false,
        }
    }

    /// Reads until `done` holds for what arrived, or the connection ends.
    async fn read_until(&mut self, deadline: Instant, done: impl Fn(&[u8]) -> bool) -> bool {
        let mut buf = [0u8; 4096];
        while !done(&self.raw) {
            match timeout_at(deadline, self.socket.read(&mut buf)).await {
                Ok(Ok(0)) => {
                    self.closed = true;
                    return done(&self.raw);
                }
                Ok(Err(_)) => return done(&self.raw),
                Ok(Ok(n)) => self.raw.extend_from_slice(&buf[..n]),
                Err(_) => panic!(
                    "nothing more within {WAIT:?}; so far:\n{}",
                    String::from_utf8_lossy(&self.raw)
                ),
            }
        }
        true
    }

    /// The head, and the body with any chunked framing removed; `complete` when the body
    /// ended as its framing says: with its last (empty) chunk, or (`connection: close`
    /// without a length) with the server closing the connection cleanly.
    fn parts(&self) -> (String, Vec<u8>, bool) {
        let text = &self.raw;
        let split = text
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&text[..split]).into_owned();
        let mut rest = &text[split + 4..];
        if !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return (head, rest.to_vec(), self.closed);
        }
        let mut body = Vec::new();
        loop {
            let Some(line) = rest.windows(2).position(|w| w == b"\r\n") else {
                return (head, body, false);
            };
            let size = std::str::from_utf8(&rest[..line])
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .expect("a chunk size");
            rest = &rest[line + 2..];
            if size == 0 {
                return (head, body, rest == b"\r\n");
            }
            if rest.len() < size + 2 {
                return (head, body, false);
            }
            body.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_every_stream_with_retry_and_exits_zero() {
    sigterm_ends_every_stream(true).await;
}

/// The same with every request through hyper (`--fast-path false`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_every_stream_with_retry_and_exits_zero_through_hyper() {
    sigterm_ends_every_stream(false).await;
}

async fn sigterm_ends_every_stream(fast_path: bool) {
    let fast_path = fast_path.to_string();
    let mut server = Server::start_with(&[
        "--listen",
        "127.0.0.1:0",
        "--retry",
        "1500ms",
        "--fast-path",
        &fast_path,
    ])
    .unwrap_or_else(|err| panic!("{err}"));
    let deadline = Instant::now() + WAIT;
    let mut clients = Vec::new();
    for i in 0..6 {
        let path = match i % 3 {
            0 => "/events".to_owned(),
            1 => format!("/events?stream=s{i}"),
            _ => format!("/events?stream=a&stream=b{i}"),
        };
        let mut client = RawStream::open(&server.addr, &path).await;
        let connected = client
            .read_until(deadline, |raw| {
                raw.windows(16).any(|w| w == b"event: connected")
            })
            .await;
        assert!(connected, "client {i} was not connected");
        clients.push(client);
    }

    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate(WAIT);
        (status, server)
    });
    for (i, client) in clients.iter_mut().enumerate() {
        client.read_until(deadline, |_| false).await;
        let (head, body, complete) = client.parts();
        assert!(head.starts_with("HTTP/1.1 200"), "client {i}: {head}");
        assert!(
            complete,
            "client {i}: the response did not end with its last chunk: {:?}",
            String::from_utf8_lossy(&client.raw)
        );
        let items = Parser::new().feed(&body);
        assert!(
            matches!(items.last(), Some(Item::Retry(1500))),
            "client {i}: the last thing sent is not the retry hint: {items:?}"
        );
    }
    let (status, server) = status.await.expect("the waiting thread ends");
    let status = status.unwrap_or_else(|err| panic!("{err}"));
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        support::tail(&server.log, 30)
    );
    assert!(
        support::tail(&server.log, 30).contains("every event stream was ended"),
        "{}",
        support::tail(&server.log, 30)
    );
}

/// A client that stopped reading, its socket full, cannot be written its last bytes: the
/// process waits `--shutdown-grace` for it, says so, and still exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_holds_shutdown_up_only_for_the_grace() {
    let mut server = Server::start_with(&["--listen", "127.0.0.1:0", "--shutdown-grace", "300ms"])
        .unwrap_or_else(|err| panic!("{err}"));
    let deadline = Instant::now() + WAIT;
    let mut stalled = RawStream::open(&server.addr, "/events?stream=flood").await;
    let connected = stalled
        .read_until(deadline, |raw| {
            raw.windows(16).any(|w| w == b"event: connected")
        })
        .await;
    assert!(connected, "the client was not connected");
    // Far more than the socket buffers hold, never read.
    let http = reqwest::Client::new();
    let data = "x".repeat(200_000);
    for _ in 0..100 {
        let answer = http
            .post(server.url("/publish"))
            .json(&serde_json::json!({"stream": "flood", "data": data}))
            .send()
            .await
            .expect("publish");
        assert_eq!(answer.status(), 200);
    }
    let (status, server) = tokio::task::spawn_blocking(move || {
        let status = server.terminate(WAIT);
        (status, server)
    })
    .await
    .expect("the waiting thread ends");
    let status = status.unwrap_or_else(|err| panic!("{err}"));
    let log = support::tail(&server.log, 30);
    assert!(status.success(), "exit status {status}; output:\n{log}");
    assert!(
        log.contains("still open at the end of the shutdown grace"),
        "{log}"
    );
    drop(stalled);
}
