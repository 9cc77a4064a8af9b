//! A TCP proxy between the browser and the server that plays the network: it can cut every
//! open connection at once, or one of them, refuse new ones (accept, then drop at once) until
//! told to accept again, or answer them itself with a canned response (a failing gateway). It also keeps what
//! clients sent, to show the requests the browser made.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::{Context, Result};

/// Client bytes kept per connection (request heads are all the browser sends).
const TRANSCRIPT_CAP: usize = 64 * 1024;

/// One relayed connection, for `cut_one`.
#[derive(Debug)]
struct Relayed {
    index: usize,
    cut: Arc<Notify>,
    /// Whether the response has carried an event id (the `connected` frame's, at first).
    answered: Arc<AtomicBool>,
}

#[derive(Debug)]
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    refusing: AtomicBool,
    refused: AtomicUsize,
    open: AtomicUsize,
    /// Relayed connections whose client started with `GET /events`, open now.
    open_event_streams: AtomicUsize,
    /// When set, new connections get this response instead of being relayed.
    answer: Mutex<Option<&'static str>>,
    answered: AtomicUsize,
    /// Bumped to cut every relayed connection.
    cut: watch::Sender<u64>,
    /// What each relayed connection's client sent, in accept order.
    transcripts: Mutex<Vec<Vec<u8>>>,
    /// The relayed connections not cut yet, by transcript index, each with its own cut.
    relayed: Mutex<Vec<Relayed>>,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and relays to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.ctx("proxy: bind")?;
        let addr = listener.local_addr().ctx("proxy: local addr")?;
        let shared = Arc::new(Shared {
            upstream,
            refusing: AtomicBool::new(false),
            refused: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            open_event_streams: AtomicUsize::new(0),
            answer: Mutex::new(None),
            answered: AtomicUsize::new(0),
            cut: watch::channel(0).0,
            transcripts: Mutex::default(),
            relayed: Mutex::default(),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Proxy { addr, shared, task })
    }

    /// From now on, new connections are accepted and dropped at once (`true`), or relayed.
    pub(crate) fn refuse(&self, refusing: bool) {
        self.shared.refusing.store(refusing, SeqCst);
    }

    /// Closes every relayed connection, on both sides.
    pub(crate) fn cut_all(&self) {
        self.shared.cut.send_modify(|generation| *generation += 1);
    }

    /// Cuts one relayed connection, the `pick`-th (modulo their number) in accept order,
    /// among those whose response has carried an event id when `answered` (the client has a
    /// cursor from it), else among all; `false` when there is none.
    pub(crate) fn cut_one(&self, pick: usize, answered: bool) -> bool {
        let Ok(mut relayed) = self.shared.relayed.lock() else {
            return false;
        };
        let candidates: Vec<usize> = (0..relayed.len())
            .filter(|&i| !answered || relayed[i].answered.load(SeqCst))
            .collect();
        if candidates.is_empty() {
            return false;
        }
        let chosen = relayed.remove(candidates[pick % candidates.len()]);
        // A stored permit: the relay sees it even if it is not waiting yet.
        chosen.cut.notify_one();
        true
    }

    /// From now on, new connections get `response` (a whole HTTP response, sent once the
    /// request head has arrived, then the connection is closed), or are relayed (`None`).
    pub(crate) fn answer_with(&self, response: Option<&'static str>) {
        if let Ok(mut answer) = self.shared.answer.lock() {
            *answer = response;
        }
    }

    /// Connections answered with the canned response so far.
    pub(crate) fn answered(&self) -> usize {
        self.shared.answered.load(SeqCst)
    }

    /// Relayed event streams (`GET /events`) open now: both sides of a stream are closed
    /// before it stops counting.
    pub(crate) fn open_event_streams(&self) -> usize {
        self.shared.open_event_streams.load(SeqCst)
    }

    /// Connections refused so far.
    pub(crate) fn refused(&self) -> usize {
        self.shared.refused.load(SeqCst)
    }

    /// Connections being relayed now.
    pub(crate) fn open(&self) -> usize {
        self.shared.open.load(SeqCst)
    }

    /// The head of every `GET /events` request relayed, in order.
    pub(crate) fn event_requests(&self) -> Vec<String> {
        let transcripts = self
            .shared
            .transcripts
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default();
        transcripts
            .iter()
            .flat_map(|bytes| {
                String::from_utf8_lossy(bytes)
                    .split("\r\n\r\n")
                    .filter(|head| head.starts_with("GET /events"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_all();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        // Subscribe before looking at `refusing`: `cut_all` callers set `refusing` first, so a
        // connection is either refused or sees the cut.
        let cut = shared.cut.subscribe();
        if shared.refusing.load(SeqCst) {
            shared.refused.fetch_add(1, SeqCst);
            drop(client);
            continue;
        }
        if let Some(response) = shared.answer.lock().ok().and_then(|a| *a) {
            shared.answered.fetch_add(1, SeqCst);
            tokio::spawn(answer(client, response));
            continue;
        }
        let index = match shared.transcripts.lock() {
            Ok(mut transcripts) => {
                transcripts.push(Vec::new());
                transcripts.len() - 1
            }
            Err(_) => continue,
        };
        shared.open.fetch_add(1, SeqCst);
        let one = Arc::new(Notify::new());
        let answered = Arc::new(AtomicBool::new(false));
        if let Ok(mut relayed) = shared.relayed.lock() {
            relayed.push(Relayed {
                index,
                cut: one.clone(),
                answered: answered.clone(),
            });
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            relay(client, &shared, index, cut, &one, &answered).await;
            if let Ok(mut relayed) = shared.relayed.lock() {
                relayed.retain(|r| r.index != index);
            }
            shared.open.fetch_sub(1, SeqCst);
        });
    }
}

/// Reads the request head, writes `response`, closes.
async fn answer(mut client: TcpStream, response: &'static str) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
}

/// Copies both ways until the server ends the connection or the proxy cuts it, then closes
/// both sides.
async fn relay(
    client: TcpStream,
    shared: &Shared,
    index: usize,
    cut: watch::Receiver<u64>,
    one: &Notify,
    answered: &AtomicBool,
) {
    // Set once this connection carries an event stream (a kept-alive connection may carry
    // other requests first).
    let event_stream = AtomicBool::new(false);
    copy_both_ways(client, shared, index, cut, &event_stream, one, answered).await;
    // Both sockets are closed now.
    if event_stream.load(SeqCst) {
        shared.open_event_streams.fetch_sub(1, SeqCst);
    }
}

async fn copy_both_ways(
    client: TcpStream,
    shared: &Shared,
    index: usize,
    mut cut: watch::Receiver<u64>,
    event_stream: &AtomicBool,
    one: &Notify,
    answered: &AtomicBool,
) {
    let Ok(server) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = client_read.read(&mut buf).await?;
            if n == 0 {
                return server_write.shutdown().await;
            }
            if let Ok(mut transcripts) = shared.transcripts.lock() {
                let transcript = &mut transcripts[index];
                if buf[..n].starts_with(b"GET /events") && !event_stream.swap(true, SeqCst) {
                    shared.open_event_streams.fetch_add(1, SeqCst);
                }
                let room = TRANSCRIPT_CAP.saturating_sub(transcript.len());
                transcript.extend_from_slice(&buf[..n.min(room)]);
            }
            server_write.write_all(&buf[..n]).await?;
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        // The response so far, until it carries an event id.
        let mut head = Vec::new();
        loop {
            let n = server_read.read(&mut buf).await?;
            if n == 0 {
                return client_write.shutdown().await;
            }
            if !answered.load(SeqCst) && head.len() < TRANSCRIPT_CAP {
                head.extend_from_slice(&buf[..n]);
                let body = head
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|end| &head[end + 4..]);
                let has_id = body.is_some_and(|body| body.windows(4).any(|w| w == b"\nid:"));
                answered.store(has_id, SeqCst);
            }
            client_write.write_all(&buf[..n]).await?;
        }
    };
    tokio::pin!(up, down);
    let mut up_done = false;
    loop {
        tokio::select! {
            _ = cut.changed() => break,
            () = one.notified() => break,
            _ = &mut down => break,
            _ = &mut up, if !up_done => up_done = true,
        }
    }
}
