//! [`serve`]: an HTTP/1.1 server for an axum app whose SSE connections bypass hyper.
//!
//! An idle SSE connection served by hyper keeps hyper's 8 KiB read and write buffers (and
//! axum's per-connection state) for its whole life: about 19 KB per connection through
//! `axum::serve`, measured (docs/benchmarks.md). SSE needs none of it: the request is one
//! small head, the response a byte stream. `serve` reads each new connection's first request
//! head itself; when it is `GET` on the events path, it answers it directly — the same
//! session resolution, authorizer, and connection as [`events`](crate::events) behind
//! [`SseLayer`](crate::SseLayer) — and writes the stream straight to the socket. Every other
//! request (and connection) is handed to hyper with the bytes already read, and goes through
//! the router as usual.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use resumable_sse_axum::SseLayer;
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let hub = resumable_sse_axum::memory_hub(Default::default());
//! let layer = SseLayer::new(hub);
//! let app = Router::new()
//!     .route("/events", get(resumable_sse_axum::events))
//!     .layer(layer.clone());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! resumable_sse_axum::serve(listener, app, layer).await
//! # }
//! ```

use std::future::{Future, IntoFuture};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::response::Response;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use http::request::Parts;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::SseLayer;
use crate::layer::Shared;

/// Largest request head read by the fast path (longer ones go to hyper, which answers 431).
const MAX_HEAD: usize = 16 * 1024;
/// How long a new connection may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener`, answering `GET /events` (the path is configurable with
/// [`Serve::events_path`]) directly with the session layer's logic. See the
/// [module docs](self).
pub fn serve(
    listener: TcpListener,
    router: Router,
    layer: SseLayer,
) -> Serve<std::future::Pending<()>> {
    Serve {
        listener,
        router,
        shared: layer.shared().clone(),
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
    shared: Arc<Shared>,
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
    /// The path answered directly (default `/events`).
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
            shared: self.shared,
            path: self.path,
            shutdown: signal,
            streams_on: self.streams_on,
        }
    }
}

impl<F> Serve<F> {
    /// Runs the SSE responses on another runtime (default: the current one). With its own
    /// runtime, the fan-out to many connections never queues the application's requests (a
    /// publish, say) behind thousands of woken connection tasks: the operating system shares
    /// the CPU between the two thread pools instead.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> std::io::Result<()> {
    /// # let layer = resumable_sse_axum::SseLayer::new(resumable_sse_axum::memory_hub(Default::default()));
    /// # let app = resumable_sse_axum::router(layer.clone());
    /// let streams = tokio::runtime::Builder::new_multi_thread()
    ///     .thread_name("sse-streams")
    ///     .enable_all()
    ///     .build()?;
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// resumable_sse_axum::serve(listener, app, layer)
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
                shared,
                path,
                shutdown,
                streams_on,
            } = self;
            let path: Arc<str> = Arc::from(path);
            let mut shutdown = std::pin::pin!(shutdown);
            loop {
                let (stream, _) = tokio::select! {
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
                    router.clone(),
                    shared.clone(),
                    path.clone(),
                    streams_on.clone(),
                ));
            }
        })
    }
}

async fn connection(
    mut stream: TcpStream,
    router: Router,
    shared: Arc<Shared>,
    path: Arc<str>,
    streams_on: Option<tokio::runtime::Handle>,
) {
    let mut head = BytesMut::with_capacity(1024);
    let fast = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream, &mut head)).await {
        Ok(Ok(Some(parts))) if parts.method == http::Method::GET && parts.uri.path() == &*path => {
            Some(parts)
        }
        Ok(Ok(_)) => None,
        Ok(Err(_)) | Err(_) => return,
    };
    match fast {
        Some(parts) => {
            drop(head);
            let Some(runtime) = streams_on else {
                if let Err(err) = serve_events(stream, &shared, parts).await {
                    tracing::debug!(error = %err, "SSE connection ended");
                }
                return;
            };
            // Re-registered with the other runtime's I/O driver, so that runtime alone drives
            // the connection.
            let Ok(socket) = stream.into_std() else {
                return;
            };
            runtime.spawn(async move {
                let result = match TcpStream::from_std(socket) {
                    Ok(stream) => serve_events(stream, &shared, parts).await,
                    Err(err) => Err(err),
                };
                if let Err(err) = result {
                    tracing::debug!(error = %err, "SSE connection ended");
                }
            });
        }
        None => {
            let io = TokioIo::new(Rewind {
                prefix: head.freeze(),
                inner: stream,
            });
            let service = TowerToHyperService::new(router);
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .with_upgrades()
                .await;
            if let Err(err) = served {
                tracing::debug!(error = %err, "connection ended");
            }
        }
    }
}

/// Reads until a complete request head: its parts if it is a plain HTTP/1.1 request the fast
/// path may take, `None` otherwise (hyper gets it, with the bytes read).
async fn read_head(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<Option<Parts>> {
    use tokio::io::AsyncReadExt;
    loop {
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut headers = [httparse::EMPTY_HEADER; 48];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                // A body or a pipelined request after the head: let hyper handle it all.
                if len != buf.len() || request.version != Some(1) {
                    return Ok(None);
                }
                let mut builder = http::Request::builder()
                    .method(request.method.unwrap_or("GET"))
                    .uri(request.path.unwrap_or("/"))
                    .version(http::Version::HTTP_11);
                for header in request.headers.iter() {
                    builder = builder.header(header.name, header.value);
                }
                return Ok(builder.body(()).ok().map(|r| r.into_parts().0));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            _ => return Ok(None),
        }
    }
}

/// Answers one SSE request on its own connection, then closes it.
async fn serve_events(mut stream: TcpStream, shared: &Arc<Shared>, parts: Parts) -> io::Result<()> {
    let session = match shared.resolve(&parts).await {
        Ok(session) => session,
        Err(response) => return write_response(&mut stream, response).await,
    };
    let headers = shared.session_headers(&session);
    let mut connection = match crate::handler::open_events(&session, &parts).await {
        Ok(connection) => connection,
        Err(mut response) => {
            response.headers_mut().extend(headers);
            return write_response(&mut stream, response).await;
        }
    };
    drop((session, parts));
    let mut head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {}\r\ncache-control: no-cache, no-store\r\nx-accel-buffering: no\r\nconnection: close\r\n",
        shared.hub.transport().content_type()
    );
    for (name, value) in &headers {
        if let Ok(value) = value.to_str() {
            head.push_str(name.as_str());
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
    }
    head.push_str("\r\n");
    drop(headers);
    stream.write_all(head.as_bytes()).await?;
    drop(head);
    // The body is delimited by the connection's end (HTTP/1.1 allows it for a response without
    // a length): each batch is written as is, without chunk framing.
    let mut probe = [0u8; 16];
    loop {
        tokio::select! {
            chunk = connection.next() => match chunk {
                Some(bytes) => stream.write_all(&bytes).await?,
                None => return stream.shutdown().await,
            },
            // The client went away (or sent something, which an SSE client never does).
            readable = stream.readable() => {
                readable?;
                match stream.try_read(&mut probe) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => return Err(err),
                }
            }
        }
    }
}

/// Writes an axum response (an error or a backoff) and closes the connection.
async fn write_response(stream: &mut TcpStream, response: Response) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or(""),
        body.len()
    );
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            out.push_str(name.as_str());
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await
}

/// A stream that first yields bytes already read.
struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
