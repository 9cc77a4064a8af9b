//! [`RequestIdLayer`]: a request id for every request, in its response and in every log line
//! of its connection.
//!
//! The id is the request's `x-request-id` when it is a sensible one (1 to
//! [`MAX_LEN`] visible ASCII characters: a proxy's or a load balancer's id carries through),
//! otherwise 32 random hex digits. It is set on the response, available to handlers as the
//! [`RequestId`] extension, and recorded in a `request` span (fields `request_id` and
//! `session`, the latter filled in when the session layer finds the request's session) that
//! wraps the whole request. An event stream's log lines name that span as their parent on
//! whichever task writes the stream, `axum::serve`'s or [`serve`](crate::serve())'s.
//!
//! ```
//! use axum::{Router, routing::get};
//! use resumable_sse_axum::{RequestId, RequestIdLayer};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let app = Router::new()
//!     .route("/", get(|id: axum::Extension<RequestId>| async move { id.as_str().to_owned() }))
//!     .layer(RequestIdLayer::new());
//!
//! // An id from the client (or a proxy in front) is kept…
//! let request = http::Request::get("/").header("x-request-id", "abc-123").body(axum::body::Body::empty()).unwrap();
//! let response = app.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.headers()["x-request-id"], "abc-123");
//!
//! // …and one that is not sensible is replaced.
//! let request = http::Request::get("/").header("x-request-id", "a b").body(axum::body::Body::empty()).unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.headers()["x-request-id"].len(), 32);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// The longest request id taken from a request; a longer one is replaced.
pub const MAX_LEN: usize = 128;

/// The header that carries the id, both ways.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// A request's id, as a request extension.
///
/// ```
/// use resumable_sse_axum::RequestId;
///
/// let id = RequestId::generate();
/// assert_eq!(id.as_str().len(), 32);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// A new random id: 128 bits as 32 hex digits.
    pub fn generate() -> Self {
        let bits: u128 = rand::random();
        // Hex digits are always a valid header value.
        RequestId(HeaderValue::from_str(&format!("{bits:032x}")).expect("hex is a header value"))
    }

    /// The id a request carries, if it is sensible: 1 to [`MAX_LEN`] visible ASCII characters.
    ///
    /// ```
    /// use http::HeaderValue;
    /// use resumable_sse_axum::RequestId;
    ///
    /// assert!(RequestId::from_header(&HeaderValue::from_static("req-1")).is_some());
    /// assert!(RequestId::from_header(&HeaderValue::from_static("with space")).is_none());
    /// assert!(RequestId::from_header(&HeaderValue::from_static("")).is_none());
    /// ```
    pub fn from_header(value: &HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        let sensible =
            (1..=MAX_LEN).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_graphic);
        sensible.then(|| RequestId(value.clone()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only visible ASCII gets in.
        self.0.to_str().unwrap_or_default()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The span of one request: its id, method and path, and (recorded by the session layer, or
/// given here) its session. The event stream a request opens makes it again for each of its
/// log lines (`ConnectRequest::log_span`) rather than keeping it open (ADR 0030); those are
/// `root` spans, not children of whatever span is current where the line is logged (the
/// request's own while the connection opens).
pub(crate) fn request_span(
    id: &RequestId,
    method: &http::Method,
    path: &str,
    session: Option<&dyn fmt::Display>,
    root: bool,
) -> tracing::Span {
    let parent = if root {
        None
    } else {
        tracing::Span::current().id()
    };
    // The path only: a query may hold a `lastEventId`, and nothing secret belongs in logs.
    tracing::info_span!(
        parent: parent,
        "request",
        request_id = %id,
        session = session.map(tracing::field::display),
        method = %method,
        path = path,
    )
}

/// Gives every request an id and a span (see the [module docs](self)).
///
/// ```
/// use resumable_sse_axum::RequestIdLayer;
///
/// let layer = RequestIdLayer::new();
/// # let _ = layer;
/// ```
#[derive(Clone, Debug, Default)]
pub struct RequestIdLayer {
    _private: (),
}

impl RequestIdLayer {
    /// The layer.
    pub fn new() -> Self {
        RequestIdLayer::default()
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> RequestIdService<S> {
        RequestIdService { inner }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Clone, Debug)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S> RequestIdService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = request
            .headers()
            .get(&HEADER)
            .and_then(RequestId::from_header)
            .unwrap_or_else(RequestId::generate);
        // `session` is filled in by the session layer once it knows the session.
        let span = request_span(&id, request.method(), request.uri().path(), None, false);
        request.extensions_mut().insert(id.clone());
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ResponseFuture {
            inner,
            id: Some(id),
            span,
        }
    }
}

pin_project! {
    /// The response future of [`RequestIdService`]: runs the request in its span, then sets
    /// the id on the response.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<RequestId>,
        span: tracing::Span,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let mut response = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
            Poll::Ready(Ok(response)) => response,
        };
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(HEADER, id.0);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_visible_ascii() {
        let long = "x".repeat(MAX_LEN);
        assert!(RequestId::from_header(&HeaderValue::from_str(&long).unwrap()).is_some());
        let too_long = "x".repeat(MAX_LEN + 1);
        assert!(RequestId::from_header(&HeaderValue::from_str(&too_long).unwrap()).is_none());
        let tab = HeaderValue::from_bytes(b"a\tb").unwrap();
        assert!(RequestId::from_header(&tab).is_none());
        let high = HeaderValue::from_bytes(&[b'a', 0xC3, 0xA9]).unwrap();
        assert!(RequestId::from_header(&high).is_none());
        assert_ne!(RequestId::generate(), RequestId::generate());
    }
}
