//! Slow and hostile connections against the real binary, as a separate process, on both
//! paths (`--fast-path true`: event streams outside hyper; `false`: every request through
//! hyper): heads, second keep-alive heads and publish bodies sent a byte a second; connections
//! up to the descriptor limit; bytes sent after an event-stream head.
//!
//! Timeouts are short (2 s) so the suite stays fast; the figures are printed (`--no-capture`)
//! and recorded in docs/limits.md.

// Helpers panic on what a test would: a broken server.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use resumable_sse_core::codec::{Item, Parser};
use support::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const WAIT: Duration = Duration::from_secs(20);
/// The server's head, keep-alive and body timeouts in these tests.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Slow connections of each kind.
const SLOW: usize = 1000;

/// Raises this process's soft limit on open files to its hard limit (`prlimit` on our own
/// pid), for the thousands of client sockets; the server, started after, inherits it. Many
/// systems start processes with a soft limit of 1 024.
fn raise_nofile() {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let hard = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .expect("the open files limit")
        .to_owned();
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={hard}:{hard}"))
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success(), "prlimit failed");
}

fn start(fast_path: bool, extra: &[&str]) -> Server {
    raise_nofile();
    let fast = format!("--fast-path={fast_path}");
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--head-timeout",
        "2s",
        "--keep-alive-timeout",
        "2s",
        "--body-timeout",
        "2s",
        &fast,
    ];
    args.extend_from_slice(extra);
    Server::start_with(&args).unwrap_or_else(|err| panic!("{err}"))
}

fn addr(server: &Server) -> SocketAddr {
    server.addr.parse().unwrap()
}

/// An open event stream read with the shared parser.
struct Subscriber {
    socket: TcpStream,
    parser: Parser,
    pending: std::collections::VecDeque<String>,
}

impl Subscriber {
    /// `GET /events?stream=slow`, read up to its `connected` event.
    async fn open(server: SocketAddr) -> Self {
        let mut socket = TcpStream::connect(server).await.unwrap();
        socket
            .write_all(b"GET /events?stream=slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut subscriber = Subscriber {
            socket,
            parser: Parser::new(),
            pending: Default::default(),
        };
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        let body = loop {
            let n = tokio::time::timeout(WAIT, subscriber.socket.read(&mut buf))
                .await
                .expect("a response head in time")
                .unwrap();
            assert!(n > 0, "closed before a head");
            head.extend_from_slice(&buf[..n]);
            if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        assert!(head.starts_with(b"HTTP/1.1 200"));
        let mut connected = false;
        for item in subscriber.parser.feed(&head[body..]) {
            subscriber.take(item, &mut connected);
        }
        while !connected {
            let n = tokio::time::timeout(WAIT, subscriber.socket.read(&mut buf))
                .await
                .expect("the connected event in time")
                .unwrap();
            assert!(n > 0, "closed before the connected event");
            for item in subscriber.parser.feed(&buf[..n]) {
                subscriber.take(item, &mut connected);
            }
        }
        subscriber
    }

    fn take(&mut self, item: Item, connected: &mut bool) {
        if let Item::Event(e) = item {
            match e.event.as_str() {
                "connected" => *connected = true,
                "message" => self.pending.push_back(e.data),
                _ => {}
            }
        }
    }

    /// The next event's data, within [`WAIT`].
    async fn next(&mut self) -> String {
        let mut buf = [0u8; 4096];
        let mut connected = true;
        loop {
            if let Some(data) = self.pending.pop_front() {
                return data;
            }
            let n = tokio::time::timeout(WAIT, self.socket.read(&mut buf))
                .await
                .expect("an event in time")
                .unwrap();
            assert!(n > 0, "the subscriber was disconnected");
            for item in self.parser.feed(&buf[..n]) {
                self.take(item, &mut connected);
            }
        }
    }
}

/// Publishes `data` to the stream `slow`: the status and how long it took.
async fn publish(server: SocketAddr, data: &str) -> (u16, Duration) {
    publish_as(server, data, "").await
}

/// [`publish`] with more header lines (each ending in CRLF).
async fn publish_as(server: SocketAddr, data: &str, headers: &str) -> (u16, Duration) {
    let started = Instant::now();
    let mut socket = TcpStream::connect(server).await.unwrap();
    let body = serde_json::json!({"stream": "slow", "data": data}).to_string();
    let request = format!(
        "POST /publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut socket).await;
    (status(&answer), started.elapsed())
}

/// `GET /healthz`: the status and how long it took.
async fn healthz(server: SocketAddr) -> (u16, Duration) {
    let started = Instant::now();
    let mut socket = TcpStream::connect(server).await.unwrap();
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut socket).await;
    (status(&answer), started.elapsed())
}

fn status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Everything read until the server closes (or resets) the connection.
async fn read_to_close(socket: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, socket.read(&mut buf))
            .await
            .expect("the server answers and closes")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// The kinds of slow client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slow {
    /// A new connection's first head, a byte a second.
    FirstHead,
    /// A kept-alive connection's second head, a byte a second, after a first request answered.
    SecondHead,
    /// A publish whose body (declared 1 000 bytes) comes a byte a second.
    Body,
}

/// One slow client: how long from its first slow byte until the server dropped it, and what
/// the server answered meanwhile.
async fn slow_client(server: SocketAddr, kind: Slow) -> (Duration, String) {
    // Each clock starts no later than the server's: a first head's at the connect, a second
    // head's at its first byte, a body's at the head before it.
    let mut started = Instant::now();
    let mut socket = TcpStream::connect(server).await.unwrap();
    let trickle: &[u8] = match kind {
        Slow::FirstHead | Slow::SecondHead => b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
        Slow::Body => &[b' '; 1000],
    };
    match kind {
        Slow::FirstHead => {}
        Slow::SecondHead => {
            socket
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
                .await
                .expect("the first request answered")
                .unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            started = Instant::now();
        }
        Slow::Body => {
            started = Instant::now();
            socket
                .write_all(
                    b"POST /publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                  content-length: 1000\r\n\r\n",
                )
                .await
                .unwrap();
        }
    }
    let (mut reader, mut writer) = socket.into_split();
    let writing = async {
        for byte in trickle {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Everything sent and still open: the server did not drop it.
        std::future::pending::<()>().await;
    };
    let reading = async {
        let mut all = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    };
    let answer = tokio::select! {
        () = writing => unreachable!(),
        answer = reading => answer,
    };
    (started.elapsed(), answer)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// 1 000 slow clients of each kind on one path: every one is dropped at its timeout (never
/// before; the publishes answered 408), while a subscriber receives every event published
/// meanwhile and a new one connects and receives.
async fn slow_clients_on(fast_path: bool) {
    let server = start(fast_path, &[]);
    let addr = addr(&server);
    let mut early = Subscriber::open(addr).await;

    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(200));
    let mut slow = JoinSet::new();
    for kind in [Slow::FirstHead, Slow::SecondHead, Slow::Body] {
        for _ in 0..SLOW {
            let gate = gate.clone();
            slow.spawn(async move {
                // Only the connects are gated: a burst of 3 000 would overflow the backlog.
                let permit = gate.acquire_owned().await.unwrap();
                let client = slow_client(addr, kind);
                tokio::pin!(client);
                // The connect (and first request) done, let the next one start.
                let outcome = tokio::select! {
                    outcome = &mut client => { drop(permit); outcome }
                    () = tokio::time::sleep(Duration::from_millis(200)) => {
                        drop(permit);
                        client.await
                    }
                };
                (kind, outcome)
            });
        }
    }

    // Meanwhile: events published and received, and a new subscriber served.
    let mut stats = Vec::new();
    let mut published = 0;
    let mut late: Option<Subscriber> = None;
    let mut publish_worst = Duration::ZERO;
    while !slow.is_empty() {
        let data = format!("event {published}");
        let (code, took) = publish(addr, &data).await;
        assert_eq!(code, 200, "a publish among slow clients");
        publish_worst = publish_worst.max(took);
        assert_eq!(early.next().await, data);
        if let Some(late) = &mut late {
            assert_eq!(late.next().await, data);
        } else if published == 5 {
            late = Some(Subscriber::open(addr).await);
        }
        published += 1;
        while let Some(joined) = slow.try_join_next() {
            let (kind, (took, answer)) = joined.unwrap();
            check(kind, took, &answer);
            stats.push((kind, took));
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "slow clients still connected after a minute"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        late.is_some(),
        "a subscriber connected among the slow clients"
    );
    for kind in [Slow::FirstHead, Slow::SecondHead, Slow::Body] {
        let mut times: Vec<f64> = stats
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, t)| secs(*t))
            .collect();
        times.sort_by(f64::total_cmp);
        assert_eq!(times.len(), SLOW, "{kind:?}");
        println!(
            "fast path {fast_path}, {SLOW} × {kind:?}: dropped after {:.2}–{:.2} s (median {:.2})",
            times[0],
            times[times.len() - 1],
            times[times.len() / 2]
        );
    }
    println!(
        "fast path {fast_path}: {published} events published and received meanwhile, the \
         slowest publish {} ms, all slow clients gone after {:.1} s",
        publish_worst.as_millis(),
        secs(started.elapsed())
    );
}

/// Checks one slow client's end: at its timeout, never before; a late publish body answered
/// `408`, slow heads closed without an answer.
fn check(kind: Slow, took: Duration, answer: &str) {
    assert!(
        took >= TIMEOUT,
        "{kind:?} dropped after {took:?}, before the timeout"
    );
    match kind {
        Slow::Body => {
            assert!(answer.starts_with("HTTP/1.1 408"), "{kind:?}: {answer:?}");
            assert!(answer.contains("body_timeout"), "{answer}");
        }
        Slow::FirstHead | Slow::SecondHead => {
            assert!(answer.is_empty(), "{kind:?}: {answer:?}");
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn slow_heads_and_bodies_on_the_fast_path() {
    slow_clients_on(true).await;
}

#[tokio::test(flavor = "current_thread")]
async fn slow_heads_and_bodies_through_hyper() {
    slow_clients_on(false).await;
}

/// The number of open descriptors of a process.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// An HS256 key for the server, and a JWT it accepts for publishing to `slow`.
const KEY: &str = "slow-clients-hs256-secret-0123456789abcdef";

fn publisher_token() -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    let claims = serde_json::json!({
        "sub": "publisher",
        "exp": exp,
        "sse": {"subscribe": [], "publish": ["slow"]},
    });
    let key = jsonwebtoken::EncodingKey::from_secret(KEY.as_bytes()).expect("an HS256 key");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &key,
    )
    .expect("mint a token")
}

/// A server limited to 1 024 open files, and one host opening 1 200 connections that never
/// send a request (half of them after one request, kept alive): `/healthz` and a publish
/// authorised by a JWT still answer within 100 ms, an event stream opened before keeps
/// receiving, and the log says so in a few lines, not one per failure. On
/// both paths, with the default reserve and with none (then only failed accepts make room).
#[tokio::test(flavor = "current_thread")]
async fn connections_up_to_the_descriptor_limit() {
    for (fast_path, reserve) in [(true, "16"), (false, "16"), (true, "0")] {
        up_to_the_descriptor_limit(fast_path, reserve).await;
    }
}

async fn up_to_the_descriptor_limit(fast_path: bool, reserve: &str) {
    raise_nofile();
    let fast = format!("--fast-path={fast_path}");
    let server = Server::start_with_nofile(
        &[
            "--listen",
            "127.0.0.1:0",
            "--head-timeout",
            "600s",
            "--keep-alive-timeout",
            "600s",
            "--descriptor-reserve",
            reserve,
            "--jwt-key",
            KEY,
            "--public-streams",
            "slow",
            &fast,
        ],
        1024,
    )
    .unwrap_or_else(|err| panic!("{err}"));
    let addr = addr(&server);
    // An event stream open before the flood: never dropped to make room.
    let mut subscriber = Subscriber::open(addr).await;
    let baseline = open_descriptors(server.pid());
    let gate = Arc::new(Semaphore::new(100));
    let mut tasks = JoinSet::new();
    for i in 0..1200 {
        let gate = gate.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let mut socket = TcpStream::connect(addr).await.ok()?;
            if i % 2 == 1 {
                socket
                    .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                    .await
                    .ok()?;
                let mut buf = [0u8; 1024];
                // Shed before the answer, when the server is short of descriptors: fine.
                let _ = tokio::time::timeout(WAIT, socket.read(&mut buf)).await;
            }
            Some(socket)
        });
    }
    let mut held = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        held.extend(joined.unwrap());
    }
    let peak = open_descriptors(server.pid());
    let authorization = format!("authorization: Bearer {}\r\n", publisher_token());
    let (mut health, mut publishes) = (Vec::new(), Vec::new());
    for i in 0..20 {
        let (code, took) = healthz(addr).await;
        assert_eq!(code, 200);
        health.push(took);
        let (code, took) = publish_as(addr, &format!("under pressure {i}"), &authorization).await;
        assert_eq!(code, 200, "an authorised publish");
        publishes.push(took);
    }
    health.sort();
    publishes.sort();
    let log = server.log.lock().unwrap().clone();
    let lines = log
        .iter()
        .filter(|l| l.contains("accept failed") || l.contains("within the reserve"))
        .count();
    println!(
        "fast path {fast_path}, reserve {reserve}: descriptors {baseline} at rest, {peak} with \
         1 200 connections held (limit 1 024); /healthz {:.1}–{:.1} ms (median {:.1}), publish \
         {:.1}–{:.1} ms (median {:.1}); {lines} log lines",
        ms(health[0]),
        ms(health[19]),
        ms(health[10]),
        ms(publishes[0]),
        ms(publishes[19]),
        ms(publishes[10]),
    );
    // The must-hold is 100 ms; on a shared machine a scheduling hiccup may delay one or two
    // of the 20 tries, so those may take up to a second, never more.
    for (what, times) in [("/healthz", &health), ("an authorised publish", &publishes)] {
        let within = times
            .iter()
            .filter(|t| **t < Duration::from_millis(100))
            .count();
        assert!(
            within >= 18,
            "{what}: only {within} of 20 within 100 ms: {times:?}"
        );
        assert!(times[19] < Duration::from_secs(1), "{what}: {times:?}");
    }
    assert!(lines <= 4, "the log floods: {lines} lines");
    for i in 0..20 {
        assert_eq!(subscriber.next().await, format!("under pressure {i}"));
    }
    drop(held);
}

/// The CPU time of a process so far (user + system), from `/proc/PID/stat`.
fn cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name (in parentheses, which may hold spaces): fields 3 onwards.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Linux reports in USER_HZ, 100 a second on every architecture it runs on.
    Duration::from_millis(ticks * 10)
}

/// 30 MB sent after an event-stream head, on each path: the server closes the connection and
/// spends no more CPU than the client (both from `/proc`, 10 ms resolution), and keeps
/// serving.
#[tokio::test(flavor = "current_thread")]
async fn bytes_after_an_event_stream_head_cost_the_server_no_more_than_the_client() {
    for fast_path in [true, false] {
        let server = start(fast_path, &[]);
        let addr = addr(&server);
        let pid = server.pid().to_string();
        let mut subscriber = Subscriber::open(addr).await;
        let (client_before, server_before) = (cpu("self"), cpu(&pid));
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0usize;
        while sent < 30_000_000 {
            // A write blocked for a second: the server stopped reading (back-pressure).
            match tokio::time::timeout(Duration::from_secs(1), subscriber.socket.write(&chunk))
                .await
            {
                Ok(Ok(n)) if n > 0 => sent += n,
                _ => break,
            }
        }
        let (client, server_cpu) = (cpu("self") - client_before, cpu(&pid) - server_before);
        // Closed by the server, not merely held by back-pressure.
        read_to_close(&mut subscriber.socket).await;
        println!(
            "fast path {fast_path}: {:.1} MB taken of 30 MB sent after the head; CPU: client \
             {} ms, server {} ms",
            sent as f64 / 1e6,
            client.as_millis(),
            server_cpu.as_millis()
        );
        assert!(
            server_cpu <= client + Duration::from_millis(10),
            "server {server_cpu:?}, client {client:?}"
        );
        // Still serving.
        let (code, _) = publish(addr, "after").await;
        assert_eq!(code, 200);
        let mut other = Subscriber::open(addr).await;
        let (code, _) = publish(addr, "again").await;
        assert_eq!(code, 200);
        assert_eq!(other.next().await, "again");
    }
}
