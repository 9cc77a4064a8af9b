//! The response to an event-stream request, built in one place for both servers.
//!
//! [`events`](crate::events) answers with [`event_stream`]: the header set every event stream
//! carries, a body that streams the [`Connection`], and the connection itself in the
//! response's extensions, where [`serve`](crate::serve()) can take it and write it to the
//! socket without hyper. Whichever server runs, the router and all of its middleware decide
//! the response; the fast path only changes how the body's bytes reach the socket.

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderName, HeaderValue};
use resumable_sse_core::{Connection, Frame, Hub};

use crate::limits::Refused;

/// How long a client told to back off waits at least before reconnecting.
const BACKOFF: Duration = Duration::from_secs(5);

/// The headers of every event-stream response besides its content type: no caching, and no
/// buffering by nginx (`x-accel-buffering`), so each batch reaches the client when written.
const STREAM_HEADERS: [(HeaderName, HeaderValue); 2] = [
    (
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    ),
    (
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    ),
];

/// A `200` event-stream response over `connection`, with the connection also placed in the
/// response's extensions for [`serve`](crate::serve())'s fast path to take.
pub(crate) fn event_stream(hub: &Hub, connection: Connection) -> Response {
    let slot = Takeover(Arc::new(Mutex::new(Some(connection))));
    let body = Body::from_stream(LazyConnection {
        slot: Some(slot.clone()),
        connection: None,
    });
    let mut response = with_stream_headers(hub, body);
    response.extensions_mut().insert(slot);
    response
}

/// A `200` answer to an event-stream request during a store outage, which asks an
/// `EventSource` to come back later (browsers treat any other status as fatal): a `refused`
/// answer with reason `store_unavailable` and a delay of at least [`BACKOFF`], the configured
/// retry and the breaker's probe interval, jittered up to half as much again so that the
/// clients of a failed store do not all come back at once.
pub(crate) fn backoff(hub: &Hub) -> Response {
    let config = hub.config();
    let base = config.retry.max(BACKOFF).max(config.breaker.probe);
    let half = u64::try_from((base / 2).as_millis()).unwrap_or(u64::MAX);
    let retry = base + Duration::from_millis(rand::random_range(0..=half));
    crate::metrics::count_refusal(STORE_UNAVAILABLE);
    refused(
        hub,
        Refused {
            reason: STORE_UNAVAILABLE,
            retry,
        },
    )
}

/// The `refused` reason of a store outage.
const STORE_UNAVAILABLE: &str = "store_unavailable";

/// A `200` answer refusing an event stream over a limit: `retry:` with the delay, one
/// `refused` event (`{"reason": …, "retry_ms": …}`, no id: the client keeps its cursor),
/// and the end of the response.
pub(crate) fn refused(hub: &Hub, refused: Refused) -> Response {
    let retry_ms = u64::try_from(refused.retry.as_millis()).unwrap_or(u64::MAX);
    let retry = Duration::from_millis(retry_ms);
    let data = serde_json::json!({"reason": refused.reason, "retry_ms": retry_ms}).to_string();
    let mut body = BytesMut::new();
    let transport = hub.transport();
    transport.write_frame(&mut body, &Frame::Retry(retry));
    transport.write_frame(&mut body, &Frame::Refused { data: &data });
    with_stream_headers(hub, Body::from(body.freeze()))
}

fn with_stream_headers(hub: &Hub, body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(hub.transport().content_type()),
    );
    headers.extend(STREAM_HEADERS);
    response
}

/// An event stream's connection, shared between the response body and its extensions until
/// one of them takes it.
#[derive(Clone)]
pub(crate) struct Takeover(Arc<Mutex<Option<Connection>>>);

impl Takeover {
    /// The connection, unless the body has started streaming it.
    pub(crate) fn take(&self) -> Option<Connection> {
        // A panic while holding this lock cannot leave the slot half-written.
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl fmt::Debug for Takeover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Takeover").finish_non_exhaustive()
    }
}

/// The body: takes the connection from the slot on its first poll, then streams it. Empty if
/// the fast path took the connection first (the body is then dropped unpolled anyway).
struct LazyConnection {
    slot: Option<Takeover>,
    connection: Option<Connection>,
}

impl Stream for LazyConnection {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(slot) = this.slot.take() {
            this.connection = slot.take();
        }
        match this.connection.as_mut() {
            Some(connection) => Pin::new(connection).poll_next(cx).map(|c| c.map(Ok)),
            None => Poll::Ready(None),
        }
    }
}
