//! sse-load: drives any SSE server over loopback, from its own process.
//!
//! Run with: `cargo run --release -p sse-benches --bin sse-load -- <command> --help`
//!
//! - `fanout`: N subscribers of one stream, M events published as fast as possible (or at a
//!   rate); delivered events/s, end-to-end latency percentiles, publish latency, server CPU
//!   per delivered event, and loss, duplicates and order checked for every subscriber;
//! - `resume`: K events missed while away; time from reconnect to the last replayed event;
//! - `idle`: server RSS before and after N idle connections;
//! - `storm`: N clients reconnecting at once with their `Last-Event-ID`; time until all have
//!   resumed, loss checked;
//! - `compare`: starts `sse-server` on each backend and the baseline, runs the same load on
//!   each several times, and writes medians and ratios to `docs/benchmarks.md`.
//!
//! Servers are addressed through URL templates (`{stream}` is replaced), so any SSE server
//! with a publish endpoint can be measured.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use resumable_sse_core::codec::Item;
use serde::Serialize;
use sse_benches::client::{Poster, SseConnection, Url};
use sse_benches::proc;
use tokio::sync::{Barrier, Mutex};

#[derive(Parser)]
#[command(name = "sse-load", about = "Load tool for SSE servers")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N subscribers, M events: throughput, latency, loss.
    Fanout(FanoutArgs),
    /// Time to replay K missed events after a reconnect.
    Resume(ResumeArgs),
    /// Server memory per idle connection.
    Idle(IdleArgs),
    /// N clients reconnecting at once.
    Storm(StormArgs),
    /// The whole comparison, written to a Markdown file.
    Compare(CompareArgs),
}

#[derive(Args, Clone)]
struct Target {
    /// SSE URL template; `{stream}` is replaced by the stream name.
    #[arg(long, default_value = "http://127.0.0.1:3000/events?stream={stream}")]
    events_url: String,
    /// Publish URL.
    #[arg(long, default_value = "http://127.0.0.1:3000/publish")]
    publish_url: String,
    /// Publish body template; `{stream}` and `{data}` are replaced.
    #[arg(long, default_value = r#"{"stream":"{stream}","data":"{data}"}"#)]
    publish_body: String,
    /// Stream name (default: a fresh random one).
    #[arg(long)]
    stream: Option<String>,
    /// The server's process id, for CPU and memory readings.
    #[arg(long)]
    server_pid: Option<u32>,
}

impl Target {
    fn stream(&self) -> String {
        self.stream
            .clone()
            .unwrap_or_else(|| format!("bench-{:08x}", rand_u32()))
    }
    fn events(&self, stream: &str) -> Url {
        Url::parse(&self.events_url.replace("{stream}", stream)).expect("valid --events-url")
    }
    fn poster(&self) -> Poster {
        Poster::new(Url::parse(&self.publish_url).expect("valid --publish-url"))
    }
    fn body(&self, stream: &str, data: &str) -> String {
        self.publish_body
            .replace("{stream}", stream)
            .replace("{data}", data)
    }
}

fn rand_u32() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[derive(Args, Clone)]
struct FanoutArgs {
    #[command(flatten)]
    target: Target,
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Events to publish.
    #[arg(long, default_value_t = 1000)]
    events: u64,
    /// Events per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Concurrent publishing connections. Order is checked per publisher: each one's events
    /// must arrive in the order it published them.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Bytes of padding added to each event's data (large events: the allocator's paths for
    /// blocks of 128 KiB and more, the memory store's values kept uncopied).
    #[arg(long, default_value_t = 0)]
    pad: usize,
}

#[derive(Serialize, Debug, Clone, Default)]
struct FanoutReport {
    subscribers: usize,
    events: u64,
    delivered: u64,
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
    resets: u64,
    seconds: f64,
    delivered_per_sec: f64,
    publish_per_sec: f64,
    /// Publishes the server refused (their events are counted as lost by every subscriber).
    publish_failed: u64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    latency_ms_max: f64,
    publish_ms_p50: f64,
    publish_ms_p99: f64,
    server_cpu_seconds: Option<f64>,
    server_cpu_us_per_delivery: Option<f64>,
}

#[derive(Default)]
struct SubStats {
    delivered: u64,
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
    resets: u64,
}

async fn fanout(args: FanoutArgs) -> FanoutReport {
    raise_nofile();
    let stream = args.target.stream();
    let url = args.target.events(&stream);
    let ready = Arc::new(Barrier::new(args.subscribers + 1));
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new(3).expect("histogram")));
    let last_delivery = Arc::new(AtomicU64::new(0));
    let total = args.events;
    let publishers = args.publishers.max(1);
    let mut tasks = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let url = url.clone();
        let ready = ready.clone();
        let latency = latency.clone();
        let last_delivery = last_delivery.clone();
        tasks.push(tokio::spawn(async move {
            // Spread connects so the accept queue does not overflow.
            if i % 256 == 255 {
                tokio::task::yield_now().await;
            }
            let mut conn = match connect_retry(&url, None, None).await {
                Ok(c) => c,
                Err(e) => {
                    ready.wait().await;
                    eprintln!("subscriber {i}: {e}");
                    return SubStats {
                        lost: total,
                        ..Default::default()
                    };
                }
            };
            ready.wait().await;
            let mut stats = SubStats::default();
            // Per publisher, the last sequence number seen: each publisher publishes in
            // increasing order, so its events must arrive in increasing order.
            let mut last: Vec<Option<u64>> = vec![None; publishers];
            let mut distinct = 0u64;
            let mut local = Histogram::<u64>::new(3).expect("histogram");
            // Heartbeats keep arriving on an idle stream: give up after 20 s without an event
            // (a publish that failed never comes).
            let mut last_event = Instant::now();
            'read: loop {
                let wait = Duration::from_secs(20).saturating_sub(last_event.elapsed());
                let items = match tokio::time::timeout(wait, conn.next_items()).await {
                    Ok(Ok(items)) => items,
                    _ => break,
                };
                if items.iter().any(|i| matches!(i, Item::Event(_))) {
                    last_event = Instant::now();
                }
                let now = now_nanos();
                for item in items {
                    let Item::Event(event) = item else { continue };
                    if event.event == "reset" {
                        stats.resets += 1;
                        continue;
                    }
                    let mut parts = event.data.split(' ');
                    let (Some(Ok(seq)), Some(Ok(sent))) = (
                        parts.next().map(str::parse::<u64>),
                        parts.next().map(str::parse::<u64>),
                    ) else {
                        continue;
                    };
                    let publisher = parts
                        .next()
                        .and_then(|p| p.parse::<usize>().ok())
                        .unwrap_or(0);
                    stats.delivered += 1;
                    let _ = local.record(now.saturating_sub(sent) / 1000);
                    let Some(slot) = last.get_mut(publisher) else {
                        continue;
                    };
                    if slot.is_some_and(|l| seq <= l) {
                        stats.duplicates += 1;
                        stats.out_of_order += 1;
                        continue;
                    }
                    *slot = Some(seq);
                    distinct += 1;
                    if distinct >= total {
                        break 'read;
                    }
                }
            }
            stats.lost += total.saturating_sub(distinct);
            last_delivery.fetch_max(now_nanos(), Ordering::Relaxed);
            latency.lock().await.add(&local).expect("same bounds");
            stats
        }));
    }
    ready.wait().await;
    let cpu_before = args.target.server_pid.and_then(proc::cpu_time);
    let started = now_nanos();
    // The publishers run on a runtime of their own: on the load tool's main runtime they would
    // queue behind thousands of subscriber tasks, and their latency would measure the load
    // tool, not the server.
    let (publish, publish_failed) = {
        let (args, stream) = (args.clone(), stream.clone());
        tokio::task::spawn_blocking(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the publishers")
                .block_on(async move { publish_all(&args, &stream).await })
        })
        .await
        .expect("the publishers finish")
    };
    let published_at = now_nanos();
    let mut report = FanoutReport {
        subscribers: args.subscribers,
        events: args.events,
        ..Default::default()
    };
    for task in tasks {
        let stats = task.await.unwrap_or_default();
        report.delivered += stats.delivered;
        report.lost += stats.lost;
        report.duplicates += stats.duplicates;
        report.out_of_order += stats.out_of_order;
        report.resets += stats.resets;
    }
    let cpu_after = args.target.server_pid.and_then(proc::cpu_time);
    let end = last_delivery.load(Ordering::Relaxed).max(published_at);
    report.seconds = (end - started) as f64 / 1e9;
    report.delivered_per_sec = report.delivered as f64 / report.seconds;
    report.publish_per_sec = args.events as f64 / ((published_at - started) as f64 / 1e9);
    let latency = latency.lock().await;
    report.latency_ms_p50 = latency.value_at_quantile(0.5) as f64 / 1000.0;
    report.latency_ms_p99 = latency.value_at_quantile(0.99) as f64 / 1000.0;
    report.latency_ms_max = latency.max() as f64 / 1000.0;
    report.publish_failed = publish_failed;
    report.publish_ms_p50 = publish.value_at_quantile(0.5) as f64 / 1000.0;
    report.publish_ms_p99 = publish.value_at_quantile(0.99) as f64 / 1000.0;
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        let cpu = (after - before).as_secs_f64();
        report.server_cpu_seconds = Some(cpu);
        if report.delivered > 0 {
            report.server_cpu_us_per_delivery = Some(cpu * 1e6 / report.delivered as f64);
        }
    }
    report
}

/// Publishes `args.events` events (`"<seq> <unix nanos> <publisher>"`, then `args.pad` bytes
/// of padding); returns publish latencies in µs.
async fn publish_all(args: &FanoutArgs, stream: &str) -> (Histogram<u64>, u64) {
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for publisher in 0..args.publishers.max(1) {
        let next = next.clone();
        let failed = failed.clone();
        let target = args.target.clone();
        let stream = stream.to_owned();
        let (events, rate) = (args.events, args.rate);
        let pad = if args.pad == 0 {
            String::new()
        } else {
            format!(" {}", "x".repeat(args.pad))
        };
        handles.push(tokio::spawn(async move {
            let mut poster = target.poster();
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= events {
                    break;
                }
                if rate > 0 {
                    let due = start + Duration::from_secs_f64(seq as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let body = target.body(&stream, &format!("{seq} {} {publisher}{pad}", now_nanos()));
                let t = Instant::now();
                match poster.post(&body).await {
                    Ok((200, _)) => {}
                    Ok((status, text)) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("publish {seq}: {status} {text}");
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("publish {seq}: {e}");
                    }
                }
                let _ = hist.record(t.elapsed().as_micros() as u64);
            }
            hist
        }));
    }
    let mut all = Histogram::<u64>::new(3).expect("histogram");
    for h in handles {
        if let Ok(h) = h.await {
            all.add(&h).expect("same bounds");
        }
    }
    (all, failed.load(Ordering::Relaxed))
}

async fn connect_retry(
    url: &Url,
    last_event_id: Option<&str>,
    session: Option<&str>,
) -> std::io::Result<SseConnection> {
    let mut delay = Duration::from_millis(10);
    for attempt in 0..8 {
        match SseConnection::open(url, last_event_id, session).await {
            Ok(c) if c.status == 200 => return Ok(c),
            Ok(c) => {
                return Err(std::io::Error::other(format!("status {}", c.status)));
            }
            Err(e) if attempt == 7 => return Err(e),
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    Err(std::io::Error::other("could not connect"))
}

/// Reads until an event whose data parses as a sequence number (or a marker) arrives.
async fn until_event(
    conn: &mut SseConnection,
    pred: impl Fn(&resumable_sse_core::codec::ParsedEvent) -> bool,
) -> std::io::Result<()> {
    loop {
        let items = tokio::time::timeout(Duration::from_secs(30), conn.next_items())
            .await
            .map_err(|_| std::io::Error::other("timed out"))??;
        if items.iter().any(|i| matches!(i, Item::Event(e) if pred(e))) {
            return Ok(());
        }
    }
}

#[derive(Args, Clone)]
struct ResumeArgs {
    #[command(flatten)]
    target: Target,
    /// Events missed while away.
    #[arg(long, default_value_t = 1000)]
    missed: u64,
    /// Repetitions (the median is reported).
    #[arg(long, default_value_t = 21)]
    runs: usize,
}

#[derive(Serialize, Debug, Clone, Default)]
struct ResumeReport {
    missed: u64,
    runs: usize,
    ms_median: f64,
    ms_p90: f64,
    ms_min: f64,
    lost: u64,
}

async fn resume(args: ResumeArgs) -> std::io::Result<ResumeReport> {
    let stream = args.target.stream();
    let url = args.target.events(&stream);
    let mut poster = args.target.poster();
    let mut times = Vec::new();
    let mut lost = 0;
    let mut seq = 0u64;
    for _ in 0..args.runs {
        let mut conn = connect_retry(&url, None, None).await?;
        until_event(&mut conn, |e| e.event == "connected").await?;
        let id = conn.last_event_id().to_owned();
        let token = conn.session.clone();
        drop(conn);
        let first = seq;
        for _ in 0..args.missed {
            poster
                .post(&args.target.body(&stream, &format!("{seq} 0")))
                .await?;
            seq += 1;
        }
        let last = seq - 1;
        let t = Instant::now();
        let mut conn = connect_retry(&url, Some(&id), token.as_deref()).await?;
        let mut got = 0u64;
        'read: loop {
            let items = tokio::time::timeout(Duration::from_secs(30), conn.next_items())
                .await
                .map_err(|_| std::io::Error::other("timed out"))??;
            for item in items {
                if let Item::Event(e) = item
                    && let Some(Ok(s)) = e.data.split(' ').next().map(str::parse::<u64>)
                {
                    {
                        if s >= first {
                            got += 1;
                        }
                        if s == last {
                            break 'read;
                        }
                    }
                }
            }
        }
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        lost += args.missed - got;
    }
    times.sort_by(f64::total_cmp);
    Ok(ResumeReport {
        missed: args.missed,
        runs: args.runs,
        ms_median: times[times.len() / 2],
        ms_p90: times[times.len() * 9 / 10],
        ms_min: times[0],
        lost,
    })
}

#[derive(Args, Clone)]
struct IdleArgs {
    #[command(flatten)]
    target: Target,
    /// Connections.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Whether the server sends a first frame (sse-server does; the baseline does not).
    #[arg(long, default_value_t = true)]
    first_frame: bool,
}

#[derive(Serialize, Debug, Clone, Default)]
struct IdleReport {
    connections: usize,
    rss_before_mb: f64,
    rss_after_mb: f64,
    bytes_per_connection: f64,
}

/// Spawns `task()` `n` times, at most 500 at once (the next 500 start once those finished),
/// and answers their results in order, or the first error.
async fn spawn_in_waves<T, F>(n: usize, mut task: impl FnMut() -> F) -> std::io::Result<Vec<T>>
where
    T: Send + 'static,
    F: Future<Output = std::io::Result<T>> + Send + 'static,
{
    let mut done = Vec::with_capacity(n);
    let mut pending = Vec::new();
    for _ in 0..n {
        pending.push(tokio::spawn(task()));
        if pending.len() >= 500 {
            for p in pending.drain(..) {
                done.push(p.await.map_err(std::io::Error::other)??);
            }
        }
    }
    for p in pending {
        done.push(p.await.map_err(std::io::Error::other)??);
    }
    Ok(done)
}

async fn idle(args: IdleArgs) -> std::io::Result<IdleReport> {
    raise_nofile();
    let pid = args
        .target
        .server_pid
        .ok_or_else(|| std::io::Error::other("idle needs --server-pid"))?;
    let stream = args.target.stream();
    let url = args.target.events(&stream);
    let before = proc::rss_bytes(pid).unwrap_or(0);
    let first = args.first_frame;
    let conns = spawn_in_waves(args.connections, || {
        let url = url.clone();
        async move {
            let mut c = connect_retry(&url, None, None).await?;
            if first {
                until_event(&mut c, |_| true).await?;
            }
            c.shrink();
            Ok(c)
        }
    })
    .await?;
    // Let the server settle (allocator, lazy buffers) before reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = proc::rss_bytes(pid).unwrap_or(0);
    drop(conns);
    Ok(IdleReport {
        connections: args.connections,
        rss_before_mb: before as f64 / 1e6,
        rss_after_mb: after as f64 / 1e6,
        bytes_per_connection: after.saturating_sub(before) as f64 / args.connections as f64,
    })
}

#[derive(Args, Clone)]
struct StormArgs {
    #[command(flatten)]
    target: Target,
    /// Clients.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Events published while they are away.
    #[arg(long, default_value_t = 10)]
    missed: u64,
}

#[derive(Serialize, Debug, Clone, Default)]
struct StormReport {
    clients: usize,
    missed: u64,
    seconds_to_all_resumed: f64,
    resumed: usize,
    lost: u64,
    duplicates: u64,
    resets: u64,
}

async fn storm(args: StormArgs) -> std::io::Result<StormReport> {
    raise_nofile();
    let stream = args.target.stream();
    let url = args.target.events(&stream);
    let mut poster = args.target.poster();
    // Everyone connects and reads one event, so each has a real Last-Event-ID.
    let mut ids = Vec::with_capacity(args.clients);
    let conns = spawn_in_waves(args.clients, || {
        let url = url.clone();
        async move {
            let mut c = connect_retry(&url, None, None).await?;
            until_event(&mut c, |e| e.event == "connected").await?;
            Ok(c)
        }
    })
    .await?;
    poster.post(&args.target.body(&stream, "0 0")).await?;
    let mut reading = Vec::new();
    for mut c in conns {
        reading.push(tokio::spawn(async move {
            until_event(&mut c, |e| e.data.starts_with("0 ")).await?;
            Ok::<_, std::io::Error>((c.last_event_id().to_owned(), c.session.clone()))
        }));
    }
    for r in reading {
        ids.push(r.await.map_err(std::io::Error::other)??);
    }
    // All connections are closed now (dropped with their tasks).
    for seq in 1..=args.missed {
        poster
            .post(&args.target.body(&stream, &format!("{seq} 0")))
            .await?;
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (id, token) in ids {
        let url = url.clone();
        let missed = args.missed;
        tasks.push(tokio::spawn(async move {
            let mut c = connect_retry(&url, Some(&id), token.as_deref()).await?;
            let (mut next, mut dup, mut resets) = (1u64, 0u64, 0u64);
            while next <= missed {
                let items = tokio::time::timeout(Duration::from_secs(60), c.next_items())
                    .await
                    .map_err(|_| std::io::Error::other("timed out"))??;
                for item in items {
                    let Item::Event(e) = item else { continue };
                    if e.event == "reset" {
                        resets += 1;
                    }
                    if let Some(Ok(s)) = e.data.split(' ').next().map(str::parse::<u64>) {
                        if s == next {
                            next += 1;
                        } else if s < next {
                            dup += 1;
                        } else {
                            return Ok::<_, std::io::Error>((
                                next - 1,
                                dup,
                                resets,
                                start.elapsed(),
                            ));
                        }
                    }
                }
            }
            Ok((next - 1, dup, resets, start.elapsed()))
        }));
    }
    let mut report = StormReport {
        clients: args.clients,
        missed: args.missed,
        ..Default::default()
    };
    let mut slowest = Duration::ZERO;
    for t in tasks {
        match t.await.map_err(std::io::Error::other)? {
            Ok((got, dup, resets, took)) => {
                report.lost += args.missed - got;
                report.duplicates += dup;
                report.resets += resets;
                if got == args.missed {
                    report.resumed += 1;
                }
                slowest = slowest.max(took);
            }
            Err(e) => {
                eprintln!("storm client: {e}");
                report.lost += args.missed;
            }
        }
    }
    report.seconds_to_all_resumed = slowest.as_secs_f64();
    Ok(report)
}

fn raise_nofile() {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
}

// ---------------------------------------------------------------------------------------------
// compare

#[derive(Args, Clone)]
struct CompareArgs {
    /// Where to write the report.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: String,
    /// Runs per measurement (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Fan-out subscribers.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Fan-out events.
    #[arg(long, default_value_t = 1000)]
    events: u64,
    /// Concurrent publishers in the fan-out (publish latency is measured with one).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Idle connections.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Reconnect storm clients.
    #[arg(long, default_value_t = 10_000)]
    storm: usize,
    /// Backends to run sse-server on, comma-separated (memory, redis://…, postgres://…).
    #[arg(
        long,
        default_value = "memory,redis://127.0.0.1:6379/,postgres://postgres@127.0.0.1:5432/test"
    )]
    stores: String,
    /// Directory of the release binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: String,
}

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(program: &str, args: &[&str]) -> std::io::Result<Server> {
        use std::io::BufRead;
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.trim().strip_prefix("listening on http://") {
                        break addr.to_owned();
                    }
                }
                _ => return Err(std::io::Error::other(format!("{program} did not start"))),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Server { child, addr })
    }

    fn target(&self) -> Target {
        Target {
            events_url: format!("http://{}/events?stream={{stream}}", self.addr),
            publish_url: format!("http://{}/publish", self.addr),
            publish_body: r#"{"stream":"{stream}","data":"{data}"}"#.into(),
            stream: None,
            server_pid: Some(self.child.id()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

struct Subject {
    name: String,
    program: String,
    args: Vec<String>,
    replay: bool,
}

impl Subject {
    /// A fresh server process for one measurement.
    fn start(&self) -> std::io::Result<Server> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Server::start(&self.program, &args)
    }
}

async fn compare(args: CompareArgs) -> Result<(), Box<dyn std::error::Error>> {
    let server = format!("{}/sse-server", args.bin_dir);
    let baseline = format!("{}/sse-baseline", args.bin_dir);
    let mut subjects = Vec::new();
    for store in args.stores.split(',').filter(|s| !s.is_empty()) {
        let name = store.split("://").next().unwrap_or(store).to_owned();
        subjects.push(Subject {
            name: format!("sse-server ({name})"),
            program: server.clone(),
            args: vec![
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--store".into(),
                store.into(),
                "--max-len".into(),
                "20000".into(),
            ],
            replay: true,
        });
    }
    subjects.push(Subject {
        name: "baseline (axum Sse + broadcast)".into(),
        program: baseline,
        args: vec!["--listen".into(), "127.0.0.1:0".into()],
        replay: false,
    });

    let mut out = String::new();
    let machine = machine_description();
    out.push_str(&format!(
        "# Benchmarks\n\nWritten by `sse-load compare` ({}). Machine: {machine}.\n\
         Load tool and server share the machine and talk over loopback; each figure is the \
         median of {} runs on a fresh server process.\n\n",
        iso_now(),
        args.runs
    ));

    // Fan-out, in rounds (each server once per round), so that the machine drifting during
    // the comparison weighs on every server alike and the ratios stay comparable.
    let mut rows: Vec<(String, Vec<FanoutReport>)> = subjects
        .iter()
        .map(|s| (s.name.clone(), Vec::new()))
        .collect();
    for _ in 0..args.runs {
        for (s, (_, reports)) in subjects.iter().zip(rows.iter_mut()) {
            let server = s.start()?;
            let report = fanout(FanoutArgs {
                target: server.target(),
                subscribers: args.subscribers,
                events: args.events,
                rate: 0,
                publishers: args.publishers,
                pad: 0,
            })
            .await;
            eprintln!("{}: {report:?}", s.name);
            reports.push(report);
        }
    }
    let base = rows
        .last()
        .map(|(_, r)| median(r.iter().map(|x| x.delivered_per_sec).collect()))
        .unwrap_or(f64::NAN);
    let base_cpu = rows
        .last()
        .map(|(_, r)| {
            median(
                r.iter()
                    .filter_map(|x| x.server_cpu_us_per_delivery)
                    .collect(),
            )
        })
        .unwrap_or(f64::NAN);
    // The first backend (memory, by default) is what the others are compared with.
    let first = rows
        .first()
        .map(|(_, r)| median(r.iter().map(|x| x.delivered_per_sec).collect()))
        .unwrap_or(f64::NAN);
    let first_name = rows.first().map(|(n, _)| n.as_str()).unwrap_or("");
    out.push_str(&format!(
        "## Fan-out: {} subscribers of one stream, {} events published as fast as possible by {} concurrent publishers\n\n\
         Runs go in rounds, each server once per round.\n\n\
         | server | delivered events/s | vs baseline | vs {first_name} | server CPU µs / delivery | vs baseline | latency p50 / p99 ms | publish p50 / p99 ms | publish errors | lost | duplicates | resets |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        args.subscribers, args.events, args.publishers
    ));
    for (name, r) in &rows {
        let d = median(r.iter().map(|x| x.delivered_per_sec).collect());
        let cpu = median(
            r.iter()
                .filter_map(|x| x.server_cpu_us_per_delivery)
                .collect(),
        );
        out.push_str(&format!(
            "| {name} | {:.0} | {:.2}× | {:.2}× | {:.3} | {:.2}× | {:.1} / {:.1} | {:.2} / {:.2} | {} | {} | {} | {} |\n",
            d, d / base, d / first, cpu, cpu / base_cpu,
            median(r.iter().map(|x| x.latency_ms_p50).collect()),
            median(r.iter().map(|x| x.latency_ms_p99).collect()),
            median(r.iter().map(|x| x.publish_ms_p50).collect()),
            median(r.iter().map(|x| x.publish_ms_p99).collect()),
            r.iter().map(|x| x.publish_failed).sum::<u64>(),
            r.iter().map(|x| x.lost).sum::<u64>(),
            r.iter().map(|x| x.duplicates).sum::<u64>(),
            r.iter().map(|x| x.resets).sum::<u64>(),
        ));
    }
    out.push_str("\nPublish errors, lost, duplicates and resets are summed over all runs (lost: over all \
                   subscribers; an event whose publish was refused counts as lost by every subscriber).\n\n");

    // Publish latency with and without subscribers.
    out.push_str("## Publish latency: acknowledged at append, not after fan-out (200 events at 20/s, one publisher)\n\n| server | subscribers | publish p50 ms | publish p99 ms |\n|---|---|---|---|\n");
    for s in subjects.iter().filter(|s| s.replay) {
        for subs in [0usize, args.subscribers] {
            let server = s.start()?;
            // At a fixed, moderate rate: what is measured is whether the acknowledgement waits
            // for the fan-out, not how a saturated CPU delays every request.
            let r = fanout(FanoutArgs {
                target: server.target(),
                subscribers: subs,
                events: 200,
                rate: 20,
                publishers: 1,
                pad: 0,
            })
            .await;
            out.push_str(&format!(
                "| {} | {subs} | {:.2} | {:.2} |\n",
                s.name, r.publish_ms_p50, r.publish_ms_p99
            ));
        }
    }

    // Idle memory.
    out.push_str(&format!("\n## Idle connections: server RSS growth over {} connections\n\n| server | bytes per connection |\n|---|---|\n", args.idle));
    for s in &subjects {
        let mut per = Vec::new();
        for _ in 0..args.runs {
            let server = s.start()?;
            let r = idle(IdleArgs {
                target: server.target(),
                connections: args.idle,
                first_frame: s.replay,
            })
            .await?;
            eprintln!("{}: {r:?}", s.name);
            per.push(r.bytes_per_connection);
        }
        out.push_str(&format!("| {} | {:.0} |\n", s.name, median(per)));
    }

    // Resume.
    out.push_str("\n## Resume: reconnect to the last of 1000 missed events replayed\n\n| server | median ms | p90 ms | lost |\n|---|---|---|---|\n");
    for s in subjects.iter().filter(|s| s.replay) {
        let server = s.start()?;
        let r = resume(ResumeArgs {
            target: server.target(),
            missed: 1000,
            runs: 21,
        })
        .await?;
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} | {} |\n",
            s.name, r.ms_median, r.ms_p90, r.lost
        ));
    }

    // Storm.
    out.push_str(&format!("\n## Reconnect storm: {} clients reconnect at once with their Last-Event-ID, 10 events missed\n\n| server | seconds until all resumed | resumed | lost | duplicates | resets |\n|---|---|---|---|---|---|\n", args.storm));
    for s in subjects.iter().filter(|s| s.replay) {
        let server = s.start()?;
        let r = storm(StormArgs {
            target: server.target(),
            clients: args.storm,
            missed: 10,
        })
        .await?;
        out.push_str(&format!(
            "| {} | {:.2} | {} | {} | {} | {} |\n",
            s.name, r.seconds_to_all_resumed, r.resumed, r.lost, r.duplicates, r.resets
        ));
    }

    out.push_str("\n## How to reproduce\n\n```sh\nbenches/compare.sh            # builds release binaries, then runs sse-load compare\n```\n");
    // Sections written by hand (profiles, backends' append throughput) follow the marker.
    let previous = std::fs::read_to_string(&args.out).unwrap_or_default();
    if let Some(i) = previous.find(MANUAL_MARKER) {
        out.push('\n');
        out.push_str(&previous[i..]);
    } else {
        out.push_str(&format!("\n{MANUAL_MARKER}\n"));
    }
    std::fs::write(&args.out, out)?;
    eprintln!("wrote {}", args.out);
    Ok(())
}

/// Everything after this line in docs/benchmarks.md is kept by `compare`.
const MANUAL_MARKER: &str =
    "<!-- sections below are written by hand and kept by `sse-load compare` -->";

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{} GiB", kb / 1024 / 1024))
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem}")
}

fn iso_now() -> String {
    let out = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output();
    out.ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Cmd::Fanout(a) => println!("{}", serde_json::to_string_pretty(&fanout(a).await)?),
        Cmd::Resume(a) => println!("{}", serde_json::to_string_pretty(&resume(a).await?)?),
        Cmd::Idle(a) => println!("{}", serde_json::to_string_pretty(&idle(a).await?)?),
        Cmd::Storm(a) => println!("{}", serde_json::to_string_pretty(&storm(a).await?)?),
        Cmd::Compare(a) => compare(a).await?,
    }
    Ok(())
}
