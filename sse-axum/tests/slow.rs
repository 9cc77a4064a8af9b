//! Slow and hostile connections against `resumable_sse_axum::serve`, with the fast path on
//! and off (every request through hyper): heads over 16 KiB, heads and bodies that never
//! finish, idle keep-alive connections, the bound on connections waiting for a head.
//! Short timeouts, real sockets; each wait has a deadline.

use std::time::{Duration, Instant};

use axum::Router;
use resumable_sse_axum::SseLayer;
use resumable_sse_axum::testing::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);
const TIMEOUT: Duration = Duration::from_millis(400);

fn app() -> Router {
    resumable_sse_axum::router(SseLayer::new(resumable_sse_axum::memory_hub(
        Default::default(),
    )))
}

/// Both of `serve`'s paths, with short timeouts and at most `pending` connections waiting
/// for a head.
async fn servers(pending: usize) -> [(&'static str, TestServer); 2] {
    servers_with(pending, TIMEOUT).await
}

/// [`servers`] with these timeouts.
async fn servers_with(pending: usize, timeout: Duration) -> [(&'static str, TestServer); 2] {
    let configure = move |fast: bool| {
        move |serve: resumable_sse_axum::Serve<std::future::Pending<()>>| {
            serve
                .fast_path(fast)
                .head_timeout(timeout)
                .keep_alive_timeout(timeout)
                .body_timeout(Some(timeout))
                .max_pending_heads(pending)
        }
    };
    [
        (
            "fast path",
            TestServer::start_configured(app(), configure(true)).await,
        ),
        (
            "hyper only",
            TestServer::start_configured(app(), configure(false)).await,
        ),
    ]
}

/// Everything the server sends until it closes the connection (or resets it).
async fn read_to_close(socket: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, socket.read(&mut buf))
            .await
            .expect("the server closes the connection")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test]
async fn heads_over_16_kib_are_refused_431() {
    for (name, server) in servers(4096).await {
        let mut socket = TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "GET /events HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(20_000)
        );
        // The server may close before taking it all.
        let _ = socket.write_all(head.as_bytes()).await;
        let answer = read_to_close(&mut socket).await;
        assert!(
            answer.starts_with("HTTP/1.1 431"),
            "{name}: {:?}",
            answer.lines().next()
        );
        if name == "fast path" {
            assert!(answer.contains("\"error\":\"head_too_large\""), "{answer}");
        }
    }
}

#[tokio::test]
async fn a_head_that_never_ends_is_dropped_at_the_head_timeout() {
    for (name, server) in servers(4096).await {
        let mut socket = TcpStream::connect(server.addr).await.unwrap();
        let started = Instant::now();
        socket
            .write_all(b"GET /events HTTP/1.1\r\nho")
            .await
            .unwrap();
        let answer = read_to_close(&mut socket).await;
        assert!(answer.is_empty(), "{name}: {answer:?}");
        assert!(
            started.elapsed() >= TIMEOUT,
            "{name}: not before the timeout"
        );
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_and_a_slow_second_head_are_dropped() {
    for (name, server) in servers(4096).await {
        for second in ["", "GET /healthz HTTP/1.1\r\nho"] {
            let mut socket = TcpStream::connect(server.addr).await.unwrap();
            socket
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{name}");
            socket.write_all(second.as_bytes()).await.unwrap();
            let started = Instant::now();
            let rest = read_to_close(&mut socket).await;
            assert!(rest.is_empty(), "{name}: {rest:?}");
            assert!(started.elapsed() >= TIMEOUT / 2, "{name}: {second:?}");
        }
    }
}

#[tokio::test]
async fn a_publish_body_that_does_not_come_is_answered_408() {
    for (name, server) in servers(4096).await {
        let mut socket = TcpStream::connect(server.addr).await.unwrap();
        socket
            .write_all(
                b"POST /publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                  content-length: 10000000\r\n\r\n{\"data\":",
            )
            .await
            .unwrap();
        let answer = read_to_close(&mut socket).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{name}: {answer:?}");
        assert!(
            answer.contains("\"error\":\"body_timeout\""),
            "{name}: {answer}"
        );
    }
}

#[tokio::test]
async fn over_the_bound_the_connection_waiting_longest_is_dropped() {
    // Timeouts far longer than the test's deadlines: what ends the first is the bound.
    for (name, server) in servers_with(3, Duration::from_secs(600)).await {
        let mut waiting = Vec::new();
        for _ in 0..3 {
            let mut socket = TcpStream::connect(server.addr).await.unwrap();
            socket.write_all(b"GET /").await.unwrap();
            waiting.push(socket);
        }
        // A fourth: the first goes, long before its timeout would end it.
        let mut fourth = TcpStream::connect(server.addr).await.unwrap();
        fourth
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        assert!(read_to_close(&mut waiting[0]).await.is_empty(), "{name}");
        let answer = read_to_close(&mut fourth).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{name}: {answer:?}");
    }
}

#[tokio::test]
async fn bytes_after_an_event_stream_request_close_it() {
    for (name, server) in servers(4096).await {
        let mut socket = TcpStream::connect(server.addr).await.unwrap();
        socket
            .write_all(b"GET /events HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("event: connected") {
            let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
                .await
                .expect("the stream starts")
                .unwrap();
            assert!(n > 0, "{name}: closed before the stream started");
            seen.extend_from_slice(&buf[..n]);
        }
        // No deadline for an event stream: it is not waiting for anything. Past the
        // timeouts, it still delivers.
        tokio::time::sleep(TIMEOUT * 2).await;
        let (status, _) =
            resumable_sse_axum::testing::publish(&server, serde_json::json!({"data": "still"}))
                .await;
        assert_eq!(status, 200, "{name}");
        while !String::from_utf8_lossy(&seen).contains("data: still") {
            let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
                .await
                .expect("the event")
                .unwrap();
            assert!(n > 0, "{name}: closed while streaming");
            seen.extend_from_slice(&buf[..n]);
        }
        socket.write_all(b"x").await.unwrap();
        read_to_close(&mut socket).await;
    }
}

/// With `axum::serve`, `BodyTimeoutLayer` gives the same `408`.
#[tokio::test]
async fn axum_serve_with_the_body_timeout_layer_answers_408() {
    let app = app().layer(resumable_sse_axum::BodyTimeoutLayer::new(TIMEOUT));
    let server = TestServer::start(app).await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket
        .write_all(
            b"POST /publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let answer = read_to_close(&mut socket).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("\"error\":\"body_timeout\""), "{answer}");
}
