//! A deadline on receiving request bodies: a body not fully received within the timeout
//! is cut, and the request answered `408 Request Timeout` with a JSON error.
//!
//! Without it, a client that declares `Content-Length: 10000000` and sends nothing (or a
//! byte a second) holds its connection, a task and a partly read body for as long as it
//! likes. [`serve`](crate::serve()) applies one itself ([`Serve::body_timeout`](crate::Serve::body_timeout));
//! with `axum::serve`, add this layer.
//!
//! The clock starts when the request reaches the layer (its head was read) and covers the
//! whole body. A handler that never reads the body is not affected.
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, body::Body, routing::post};
//! use resumable_sse_axum::BodyTimeoutLayer;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let app = Router::new()
//!     .route("/publish", post(|body: String| async move { body }))
//!     .layer(BodyTimeoutLayer::new(Duration::from_secs(10)));
//!
//! // A body that never comes.
//! let never = futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
//! let request = http::Request::post("/publish").body(Body::from_stream(never)).unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), 408);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::ApiError;

/// Applies [`BodyTimeout`]: request bodies must be fully received within a timeout.
#[derive(Clone, Copy, Debug)]
pub struct BodyTimeoutLayer {
    timeout: Duration,
}

impl BodyTimeoutLayer {
    /// Request bodies must be fully received within `timeout` of the request reaching the
    /// layer.
    ///
    /// ```
    /// let layer = resumable_sse_axum::BodyTimeoutLayer::new(std::time::Duration::from_secs(30));
    /// assert_eq!(layer.timeout(), std::time::Duration::from_secs(30));
    /// ```
    pub fn new(timeout: Duration) -> Self {
        BodyTimeoutLayer { timeout }
    }

    /// The timeout.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let layer = resumable_sse_axum::BodyTimeoutLayer::new(Duration::from_secs(5));
    /// assert_eq!(layer.timeout().as_secs(), 5);
    /// ```
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl<S> Layer<S> for BodyTimeoutLayer {
    type Service = BodyTimeout<S>;

    fn layer(&self, inner: S) -> BodyTimeout<S> {
        BodyTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service of [`BodyTimeoutLayer`].
#[derive(Clone, Debug)]
pub struct BodyTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> BodyTimeout<S> {
    /// Wraps `inner` (what [`BodyTimeoutLayer`] does).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let service = resumable_sse_axum::BodyTimeout::new(axum::Router::<()>::new(), Duration::from_secs(5));
    /// # let _ = service;
    /// ```
    pub fn new(inner: S, timeout: Duration) -> Self {
        BodyTimeout { inner, timeout }
    }

    /// The wrapped service.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let service = resumable_sse_axum::BodyTimeout::new(axum::Router::<()>::new(), Duration::from_secs(5));
    /// let _router: &axum::Router = service.get_ref();
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let mut service = resumable_sse_axum::BodyTimeout::new(axum::Router::<()>::new(), Duration::from_secs(5));
    /// let _router: &mut axum::Router = service.get_mut();
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let service = resumable_sse_axum::BodyTimeout::new(axum::Router::<()>::new(), Duration::from_secs(5));
    /// let _router: axum::Router = service.into_inner();
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for BodyTimeout<S>
where
    S: Service<Request<Body>, Response = Response>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let expired = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + self.timeout;
        let request = request.map(|body| {
            Body::new(TimedBody {
                inner: body,
                sleep: Box::pin(tokio::time::sleep_until(deadline)),
                expired: expired.clone(),
                timeout: self.timeout,
            })
        });
        ResponseFuture {
            inner: self.inner.call(request),
            expired,
            timeout: self.timeout,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`BodyTimeout`]: the inner service's answer, or `408` when the body
    /// timed out.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        expired: Arc<AtomicBool>,
        timeout: Duration,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        if !this.expired.load(Ordering::Acquire) {
            return Poll::Ready(Ok(response));
        }
        crate::metrics::count_dropped("body_timeout");
        // Whatever the handler made of the cut body (a 400, a 413), the truth is a timeout.
        let mut response = ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body was not received within {} s",
                this.timeout.as_secs_f64()
            ),
        )
        .into_response();
        // The rest of the body may still be on its way: the connection cannot carry another
        // request.
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        Poll::Ready(Ok(response))
    }
}

pin_project_lite::pin_project! {
    /// A request body that fails once its deadline passes.
    struct TimedBody<B> {
        #[pin]
        inner: B,
        sleep: Pin<Box<Sleep>>,
        expired: Arc<AtomicBool>,
        timeout: Duration,
    }
}

/// The error a timed-out request body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within {0:?}")]
struct BodyTimedOut(Duration);

impl<B> http_body::Body for TimedBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        ready!(this.sleep.as_mut().poll(cx));
        this.expired.store(true, Ordering::Release);
        Poll::Ready(Some(Err(Box::new(BodyTimedOut(*this.timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tower::ServiceExt;

    fn app() -> axum::Router {
        axum::Router::new()
            .route("/", axum::routing::post(|body: String| async move { body }))
            .layer(BodyTimeoutLayer::new(Duration::from_secs(5)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_in_time_passes_and_a_late_one_is_408_json() {
        let response = app()
            .oneshot(Request::post("/").body(Body::from("hello")).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);

        // One byte, then nothing.
        let slow = futures_util::stream::once(async { Ok::<_, std::io::Error>(Bytes::from("h")) })
            .chain(futures_util::stream::pending());
        let started = Instant::now();
        let response = app()
            .oneshot(
                Request::post("/")
                    .header("content-length", "100")
                    .body(Body::from_stream(slow))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(response.status(), 408);
        assert_eq!(response.headers()["connection"], "close");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], "body_timeout");
    }
}
