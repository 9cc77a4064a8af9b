//! [`serve`](crate::serve()): the router answers, event streams are written outside hyper.

mod admission;
mod wire;

use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures_util::StreamExt;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use resumable_sse_core::Connection;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service;

use crate::ApiError;
use crate::body_timeout::BodyTimeout;
use crate::response::Takeover;
use admission::{Admission, Conn, Settings};
use wire::{Framing, Head, Rewind};

/// Serves `router` on `listener`: an HTTP/1.1 server for an axum app whose event streams
/// bypass hyper.
///
/// An idle SSE connection served by hyper keeps hyper's 8 KiB read and write buffers (and
/// axum's per-connection state) for its whole life: about 19 KB per connection through
/// `axum::serve`, measured (docs/benchmarks.md). SSE needs none of it: the request is one
/// small head, the response a byte stream. `serve` reads each new connection's first request
/// head itself. When it is a plain `GET` of the events path, it hands the request to the
/// router like any other — every layer runs, and the router decides the response — and if
/// the answer is an event stream ([`events`](crate::events)), writes the stream straight to
/// the socket instead of through hyper. Any other answer is written as is. Every other request
/// (and connection) is handed to hyper with the bytes already read.
///
/// So the application's middleware (authentication, CORS, tracing, limits) sees event-stream
/// requests exactly as with `axum::serve`, and its answers are the same; what differs is only
/// how an event stream's bytes are written, and that the connection closes when the stream
/// ends. Middleware that rewrites response *bodies* (compression, say) does not apply to an
/// event stream on the fast path. Every request carries the client's address as
/// [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo), on both paths (as `axum::serve`
/// with `into_make_service_with_connect_info::<SocketAddr>()`).
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use resumable_sse_axum::SseLayer;
///
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// let hub = resumable_sse_axum::memory_hub(Default::default());
/// let app = Router::new()
///     .route("/events", get(resumable_sse_axum::events))
///     .layer(SseLayer::new(hub));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// resumable_sse_axum::serve(listener, app).await
/// # }
/// ```
///
/// The events path is `/events` unless set with [`Serve::events_path`].
///
/// Slow and hostile connections are bounded on both paths (docs/limits.md): a request head
/// must arrive within [`Serve::head_timeout`], a kept-alive connection's next request start
/// within [`Serve::keep_alive_timeout`], a request body within [`Serve::body_timeout`] (`408`);
/// heads over 16 KiB are answered `431`; at most [`Serve::max_pending_heads`] connections wait
/// for a head, and near the descriptor limit ([`Serve::descriptor_reserve`]) the ones waiting
/// longest are dropped, so health checks and publishes still get in. An event stream whose
/// client sends anything is closed.
pub fn serve(listener: TcpListener, router: Router) -> Serve<std::future::Pending<()>> {
    Serve {
        listener,
        router,
        path: "/events".into(),
        shutdown: std::future::pending(),
        streams_on: None,
        options: Options::default(),
    }
}

/// The connection timeouts and bounds of a [`Serve`] (docs/limits.md, "Slow and hostile
/// connections").
#[derive(Clone, Copy, Debug)]
struct Options {
    admission: Settings,
    body_timeout: Option<Duration>,
    fast_path: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            admission: Settings {
                head_timeout: Serve::<()>::DEFAULT_HEAD_TIMEOUT,
                keep_alive_timeout: Serve::<()>::DEFAULT_KEEP_ALIVE_TIMEOUT,
                max_pending_heads: Serve::<()>::DEFAULT_MAX_PENDING_HEADS,
                descriptor_reserve: Serve::<()>::DEFAULT_DESCRIPTOR_RESERVE,
            },
            body_timeout: Some(Serve::<()>::DEFAULT_BODY_TIMEOUT),
            fast_path: true,
        }
    }
}

/// The future [`serve`] returns; configure it, then `.await` it.
#[must_use = "a server does nothing until awaited"]
pub struct Serve<F> {
    listener: TcpListener,
    router: Router,
    path: String,
    shutdown: F,
    streams_on: Option<tokio::runtime::Handle>,
    options: Options,
}

impl<F> std::fmt::Debug for Serve<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("path", &self.path)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<F> Serve<F> {
    /// The default [`head_timeout`](Self::head_timeout).
    ///
    /// ```
    /// assert_eq!(resumable_sse_axum::Serve::<()>::DEFAULT_HEAD_TIMEOUT.as_secs(), 10);
    /// ```
    pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default [`keep_alive_timeout`](Self::keep_alive_timeout).
    ///
    /// ```
    /// assert_eq!(resumable_sse_axum::Serve::<()>::DEFAULT_KEEP_ALIVE_TIMEOUT.as_secs(), 30);
    /// ```
    pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default [`body_timeout`](Self::body_timeout).
    ///
    /// ```
    /// assert_eq!(resumable_sse_axum::Serve::<()>::DEFAULT_BODY_TIMEOUT.as_secs(), 30);
    /// ```
    pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default [`max_pending_heads`](Self::max_pending_heads).
    ///
    /// ```
    /// assert_eq!(resumable_sse_axum::Serve::<()>::DEFAULT_MAX_PENDING_HEADS, 4096);
    /// ```
    pub const DEFAULT_MAX_PENDING_HEADS: usize = 4096;
    /// The default [`descriptor_reserve`](Self::descriptor_reserve).
    ///
    /// ```
    /// assert_eq!(resumable_sse_axum::Serve::<()>::DEFAULT_DESCRIPTOR_RESERVE, 16);
    /// ```
    pub const DEFAULT_DESCRIPTOR_RESERVE: usize = 16;

    /// The path whose event streams are written directly (default `/events`).
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> std::io::Result<()> {
    /// # let layer = resumable_sse_axum::SseLayer::new(resumable_sse_axum::memory_hub(Default::default()));
    /// let app = axum::Router::new()
    ///     .route("/api/stream", axum::routing::get(resumable_sse_axum::events))
    ///     .layer(layer);
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// resumable_sse_axum::serve(listener, app).events_path("/api/stream").await
    /// # }
    /// ```
    pub fn events_path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Stops accepting connections when `signal` completes. Open SSE responses are not waited
    /// for (they never end on their own): once this returns, call
    /// [`Hub::drain`](resumable_sse_core::Hub::drain) to end them with a retry hint and wait
    /// until they are written, before the runtime stops.
    pub fn with_graceful_shutdown<G: Future<Output = ()> + Send + 'static>(
        self,
        signal: G,
    ) -> Serve<G> {
        Serve {
            listener: self.listener,
            router: self.router,
            path: self.path,
            shutdown: signal,
            streams_on: self.streams_on,
            options: self.options,
        }
    }

    /// Runs the event streams on another runtime (default: the current one). With its own
    /// runtime, the fan-out to many connections never queues the application's requests (a
    /// publish, say) behind thousands of woken connection tasks: the operating system shares
    /// the CPU between the two thread pools instead.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> std::io::Result<()> {
    /// # let layer = resumable_sse_axum::SseLayer::new(resumable_sse_axum::memory_hub(Default::default()));
    /// # let app = resumable_sse_axum::router(layer);
    /// let streams = tokio::runtime::Builder::new_multi_thread()
    ///     .thread_name("sse-streams")
    ///     .enable_all()
    ///     .build()?;
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// resumable_sse_axum::serve(listener, app)
    ///     .streams_on(streams.handle().clone())
    ///     .await?;
    /// streams.shutdown_background();
    /// # Ok(()) }
    /// ```
    pub fn streams_on(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.streams_on = Some(runtime);
        self
    }

    /// How long a new connection may take to send its whole request head (default
    /// [`DEFAULT_HEAD_TIMEOUT`](Self::DEFAULT_HEAD_TIMEOUT)); a kept-alive connection's next
    /// head, from its first byte. A connection that takes longer is closed without an answer.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # #[tokio::main] async fn main() -> std::io::Result<()> {
    /// # let app = resumable_sse_axum::router(resumable_sse_axum::SseLayer::new(resumable_sse_axum::memory_hub(Default::default())));
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// resumable_sse_axum::serve(listener, app)
    ///     .head_timeout(Duration::from_secs(5))
    ///     .keep_alive_timeout(Duration::from_secs(15))
    ///     .body_timeout(Some(Duration::from_secs(10)))
    ///     .await
    /// # }
    /// ```
    pub fn head_timeout(mut self, timeout: Duration) -> Self {
        self.options.admission.head_timeout = timeout;
        self
    }

    /// How long a connection is kept alive after a response for its next request to start
    /// (default [`DEFAULT_KEEP_ALIVE_TIMEOUT`](Self::DEFAULT_KEEP_ALIVE_TIMEOUT)). Event
    /// streams are not idle: they are never timed out.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # #[tokio::main] async fn main() -> std::io::Result<()> {
    /// # let app = resumable_sse_axum::router(resumable_sse_axum::SseLayer::new(resumable_sse_axum::memory_hub(Default::default())));
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// resumable_sse_axum::serve(listener, app).keep_alive_timeout(Duration::from_secs(60)).await
    /// # }
    /// ```
    pub fn keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.options.admission.keep_alive_timeout = timeout;
        self
    }

    /// How long a request body may take to arrive, from its head (default
    /// [`DEFAULT_BODY_TIMEOUT`](Self::DEFAULT_BODY_TIMEOUT)); `None`: no limit. A late body
    /// is answered `408` with a JSON error ([`BodyTimeoutLayer`](crate::BodyTimeoutLayer),
    /// which `axum::serve` users add themselves).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # #[tokio::main] async fn main() -> std::io::Result<()> {
    /// # let app = resumable_sse_axum::router(resumable_sse_axum::SseLayer::new(resumable_sse_axum::memory_hub(Default::default())));
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// resumable_sse_axum::serve(listener, app).body_timeout(None).await
    /// # }
    /// ```
    pub fn body_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.options.body_timeout = timeout;
        self
    }

    /// How many connections may wait for a request head at once (default
    /// [`DEFAULT_MAX_PENDING_HEADS`](Self::DEFAULT_MAX_PENDING_HEADS)): a new connection's
    /// first head, or a kept-alive connection's next. One more drops the one waiting longest.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> std::io::Result<()> {
    /// # let app = resumable_sse_axum::router(resumable_sse_axum::SseLayer::new(resumable_sse_axum::memory_hub(Default::default())));
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// resumable_sse_axum::serve(listener, app)
    ///     .max_pending_heads(1024)
    ///     .descriptor_reserve(32)
    ///     .await
    /// # }
    /// ```
    pub fn max_pending_heads(mut self, n: usize) -> Self {
        self.options.admission.max_pending_heads = n;
        self
    }

    /// File descriptors kept in reserve (default
    /// [`DEFAULT_DESCRIPTOR_RESERVE`](Self::DEFAULT_DESCRIPTOR_RESERVE)): when a new
    /// connection's descriptor comes within this many of the process's limit
    /// (`RLIMIT_NOFILE`, read on Linux), or an accept fails for want of descriptors, the
    /// connections waiting longest for a request head are dropped, so health checks and
    /// publishes still get in. `0`: act only when accepts fail.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # #[tokio::main] async fn main() -> std::io::Result<()> {
    /// # let app = resumable_sse_axum::router(resumable_sse_axum::SseLayer::new(resumable_sse_axum::memory_hub(Default::default())));
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// resumable_sse_axum::serve(listener, app).descriptor_reserve(64).await
    /// # }
    /// ```
    pub fn descriptor_reserve(mut self, n: usize) -> Self {
        self.options.admission.descriptor_reserve = n;
        self
    }

    /// Whether event streams are written outside hyper (default `true`). `false` serves every
    /// request with hyper, with the same timeouts and bounds: for comparison and tests.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> std::io::Result<()> {
    /// # let app = resumable_sse_axum::router(resumable_sse_axum::SseLayer::new(resumable_sse_axum::memory_hub(Default::default())));
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// resumable_sse_axum::serve(listener, app).fast_path(false).await
    /// # }
    /// ```
    pub fn fast_path(mut self, on: bool) -> Self {
        self.options.fast_path = on;
        self
    }
}

impl<F: Future<Output = ()> + Send + 'static> IntoFuture for Serve<F> {
    type Output = io::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let Serve {
                listener,
                router,
                path,
                shutdown,
                streams_on,
                options,
            } = self;
            let admission = Arc::new(Admission::new(options.admission));
            let shared = Arc::new(Shared {
                path: Arc::from(path),
                streams_on,
                fast_path: options.fast_path,
                body_timeout: options.body_timeout,
            });
            let mut shutdown = std::pin::pin!(shutdown);
            loop {
                let (stream, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(err) => {
                            // Out of file descriptors and the like: make room, keep serving
                            // the others, and say so without flooding the log.
                            let pause = admission.accept_failed(&err);
                            tokio::time::sleep(pause).await;
                            continue;
                        }
                    },
                    () = &mut shutdown => return Ok(()),
                };
                let _ = stream.set_nodelay(true);
                let conn = admission.admit(descriptor(&stream));
                tokio::spawn(connection(
                    stream,
                    peer,
                    router.clone(),
                    shared.clone(),
                    conn,
                ));
            }
        })
    }
}

/// What every connection of one server shares.
struct Shared {
    path: Arc<str>,
    streams_on: Option<tokio::runtime::Handle>,
    fast_path: bool,
    body_timeout: Option<Duration>,
}

/// The socket's descriptor number, where there is one: how [`Admission`] sees how many are
/// open.
fn descriptor(stream: &TcpStream) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        u64::try_from(stream.as_raw_fd()).ok()
    }
    #[cfg(not(unix))]
    {
        let _ = stream;
        None
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    shared: Arc<Shared>,
    conn: Conn,
) {
    let mut head = BytesMut::with_capacity(1024);
    let read = if shared.fast_path {
        tokio::select! {
            read = wire::read_head(&mut stream, &mut head, &shared.path) => read,
            dropped = conn.dropped() => {
                tracing::debug!(?dropped, %peer, "connection dropped before its request head");
                return;
            }
        }
    } else {
        Ok(Head::Other)
    };
    let mut request = match read {
        Ok(Head::Take(request)) => *request,
        Ok(Head::Other) => {
            let io = Rewind {
                prefix: head.freeze(),
                inner: stream,
            };
            serve_with_hyper(io, peer, router, &shared, conn).await;
            return;
        }
        Ok(Head::TooLarge) => {
            conn.done();
            let response = ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "head_too_large",
                format!("the request head is larger than {} bytes", wire::MAX_HEAD),
            )
            .into_response();
            let _ = wire::write_response(&mut stream, response).await;
            return;
        }
        Err(_) => return,
    };
    drop(head);
    conn.done();
    drop(conn);
    request.extensions_mut().insert(ConnectInfo(peer));
    let mut router = router;
    // Boxed: the router's future lives only until the response, and the task that then
    // streams for hours should not keep room for it.
    let mut response = match Box::pin(router.call(request)).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let Some(connection) = take_event_stream(&mut response) else {
        if let Err(err) = wire::write_response(&mut stream, response).await {
            tracing::debug!(error = %err, "connection ended");
        }
        return;
    };
    let mut head = Vec::with_capacity(256);
    wire::write_head(&mut head, &response.into_parts().0, Framing::Close);
    let Some(runtime) = shared.streams_on.clone() else {
        write_events(stream, head, connection).await;
        return;
    };
    // Re-registered with the other runtime's I/O driver, so that runtime alone drives the
    // connection.
    let Ok(socket) = stream.into_std() else {
        return;
    };
    runtime.spawn(async move {
        match TcpStream::from_std(socket) {
            Ok(stream) => write_events(stream, head, connection).await,
            Err(err) => tracing::debug!(parent: &connection.log_span(), error = %err, "SSE connection ended"),
        }
    });
}

/// Serves a connection with hyper (every request the fast path does not take), under the
/// head, keep-alive and body timeouts.
async fn serve_with_hyper(
    io: Rewind,
    peer: SocketAddr,
    router: Router,
    shared: &Shared,
    conn: Conn,
) {
    let conn = Arc::new(conn);
    let io = TokioIo::new(Watched {
        inner: io,
        conn: conn.clone(),
    });
    let body_timeout = shared.body_timeout;
    let on_request = conn.clone();
    // As `axum::serve(…, router.into_make_service_with_connect_info::<SocketAddr>())`:
    // handlers can extract the client's address on both paths.
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        on_request.busy();
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        let idle_after = IdleAfter(on_request.clone());
        async move {
            let response = match body_timeout {
                Some(timeout) => BodyTimeout::new(router, timeout).call(request).await,
                None => {
                    let mut router = router;
                    router.call(request).await
                }
            };
            if let Ok(response) = &response
                && response.status() == StatusCode::OK
                && response.extensions().get::<Takeover>().is_some()
            {
                idle_after.0.streaming();
            }
            // The connection waits for its next request once this response is written (its
            // body dropped by hyper).
            response.map(|response| response.map(|body| Body::new(Tracked { body, idle_after })))
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .max_buf_size(wire::MAX_HEAD)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::select! {
        served = served => {
            if let Err(err) = served {
                tracing::debug!(error = %err, "connection ended");
            }
        }
        dropped = conn.dropped() => {
            tracing::debug!(?dropped, %peer, "connection dropped while waiting for a request head");
        }
    }
    conn.done();
}

/// Marks its connection idle (waiting for the next request) when dropped.
struct IdleAfter(Arc<Conn>);

impl Drop for IdleAfter {
    fn drop(&mut self) {
        self.0.idle();
    }
}

pin_project_lite::pin_project! {
    /// A response body that marks its connection idle once hyper is done with it.
    struct Tracked {
        #[pin]
        body: Body,
        idle_after: IdleAfter,
    }
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection's socket as hyper reads it: bytes arriving on a kept-alive connection start
/// its next head's deadline.
struct Watched {
    inner: Rewind,
    conn: Arc<Conn>,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            // As on the fast path (`write_events`): an event stream's client never sends
            // anything more, and hyper would keep what it sent in its buffer for as long as
            // the stream lasts. The error ends the connection.
            if self.conn.is_streaming() {
                tracing::debug!("bytes after an event-stream request: closing");
                return std::task::Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bytes after an event-stream request",
                )));
            }
            self.conn.bytes_arrived();
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The connection of an event stream the router answered with, for the fast path to write
/// itself; `None` for any other response.
fn take_event_stream(response: &mut Response) -> Option<Connection> {
    if response.status() != StatusCode::OK {
        return None;
    }
    response
        .extensions_mut()
        .remove::<Takeover>()
        .and_then(|takeover| takeover.take())
}

/// Writes an event stream's head, then its batches as they come, until it ends (the hub
/// closes connections) or the client goes away. Its lines go under the connection's span
/// (the request's id and session, with `RequestIdLayer`).
async fn write_events(stream: TcpStream, head: Vec<u8>, mut connection: Connection) {
    if let Err(err) = stream_events(stream, head, &mut connection).await {
        tracing::debug!(parent: &connection.log_span(), error = %err, "SSE connection ended");
    }
}

async fn stream_events(
    mut stream: TcpStream,
    head: Vec<u8>,
    connection: &mut Connection,
) -> io::Result<()> {
    stream.write_all(&head).await?;
    drop(head);
    // The body is delimited by the connection's end (HTTP/1.1 allows it for a response without
    // a length): each batch is written as is, without chunk framing.
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            chunk = connection.next() => match chunk {
                Some(bytes) => stream.write_all(&bytes).await?,
                None => return stream.shutdown().await,
            },
            // The client went away, or sent something. An SSE client never does: the request
            // had no body, and this connection will never answer another request. Reading
            // what it sends would cost the server more than the client (bytes read a few at
            // a time), so the connection is closed instead.
            readable = stream.readable() => {
                readable?;
                match stream.try_read(&mut probe) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {
                        tracing::debug!(parent: &connection.log_span(), "bytes after an event-stream request: closing");
                        return Ok(());
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => return Err(err),
                }
            }
        }
    }
}
