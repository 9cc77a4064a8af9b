//! [`serve`](crate::serve()): the router answers, event streams are written outside hyper.

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
use axum::response::Response;
use bytes::BytesMut;
use futures_util::StreamExt;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use resumable_sse_core::Connection;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service;
use tracing::Instrument;

use crate::request_id::RequestSpan;
use crate::response::Takeover;
use wire::{Framing, Rewind};

/// How long a new connection may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

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
pub fn serve(listener: TcpListener, router: Router) -> Serve<std::future::Pending<()>> {
    Serve {
        listener,
        router,
        path: "/events".into(),
        shutdown: std::future::pending(),
        streams_on: None,
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
}

impl<F> std::fmt::Debug for Serve<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<F> Serve<F> {
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
    /// for (they never end on their own): call [`Hub::close_connections`](resumable_sse_core::Hub::close_connections)
    /// to end them with a retry hint.
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
            } = self;
            let path: Arc<str> = Arc::from(path);
            let mut shutdown = std::pin::pin!(shutdown);
            loop {
                let (stream, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(err) => {
                            // Out of file descriptors and the like: keep serving the others.
                            tracing::warn!(error = %err, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    () = &mut shutdown => return Ok(()),
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(
                    stream,
                    peer,
                    router.clone(),
                    path.clone(),
                    streams_on.clone(),
                ));
            }
        })
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    mut router: Router,
    path: Arc<str>,
    streams_on: Option<tokio::runtime::Handle>,
) {
    let mut head = BytesMut::with_capacity(1024);
    let request =
        match tokio::time::timeout(HEAD_TIMEOUT, wire::read_head(&mut stream, &mut head, &path))
            .await
        {
            Ok(Ok(Some(mut request))) => {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            }
            Ok(Ok(None)) => {
                let io = TokioIo::new(Rewind {
                    prefix: head.freeze(),
                    inner: stream,
                });
                // As `axum::serve(…, router.into_make_service_with_connect_info::<SocketAddr>())`:
                // handlers can extract the client's address on both paths.
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let mut request = request.map(Body::new);
                    request.extensions_mut().insert(ConnectInfo(peer));
                    let mut router = router.clone();
                    async move { router.call(request).await }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .with_upgrades()
                    .await;
                if let Err(err) = served {
                    tracing::debug!(error = %err, "connection ended");
                }
                return;
            }
            Ok(Err(_)) | Err(_) => return,
        };
    drop(head);
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
    // The request's span (its id and session, from `RequestIdLayer`) follows the stream to
    // whichever task writes it.
    let span = response
        .extensions()
        .get::<RequestSpan>()
        .map_or_else(tracing::Span::none, |s| s.0.clone());
    let mut head = Vec::with_capacity(256);
    wire::write_head(&mut head, &response.into_parts().0, Framing::Close);
    let Some(runtime) = streams_on else {
        if let Err(err) = write_events(stream, head, connection)
            .instrument(span.clone())
            .await
        {
            tracing::debug!(parent: &span, error = %err, "SSE connection ended");
        }
        return;
    };
    // Re-registered with the other runtime's I/O driver, so that runtime alone drives the
    // connection.
    let Ok(socket) = stream.into_std() else {
        return;
    };
    runtime.spawn(
        async move {
            let result = match TcpStream::from_std(socket) {
                Ok(stream) => write_events(stream, head, connection).await,
                Err(err) => Err(err),
            };
            if let Err(err) = result {
                tracing::debug!(error = %err, "SSE connection ended");
            }
        }
        .instrument(span),
    );
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
/// closes connections) or the client goes away.
async fn write_events(
    mut stream: TcpStream,
    head: Vec<u8>,
    mut connection: Connection,
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
                        tracing::debug!("bytes after an event-stream request: closing");
                        return Ok(());
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => return Err(err),
                }
            }
        }
    }
}
