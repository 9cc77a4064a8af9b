//! [`SseLayer`], the session layer, and its service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::Response;
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use resumable_sse_core::{Hub, StreamName};
use tower_layer::Layer;
use tower_service::Service;

use crate::auth::{AllowAll, Authorize};
use crate::limits::{Limiter, Limits};
use crate::session::{SameSite, Session, SessionSlot, Shared};

impl Shared {
    pub(crate) fn token<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        // An empty header is no token: it does not hide a valid cookie.
        let header = headers.get(&self.header).and_then(|v| v.to_str().ok());
        if let Some(value) = header.map(str::trim).filter(|v| !v.is_empty()) {
            return Some(value);
        }
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == self.cookie_name)
            .map(|(_, value)| value.trim_matches('"'))
    }

    fn set_cookie(&self, token: &str) -> Option<HeaderValue> {
        let max_age = self.hub.config().token_ttl.as_secs();
        // Browsers drop a `SameSite=None` cookie that is not `Secure`.
        let secure = if self.secure || self.same_site == SameSite::None {
            "; Secure"
        } else {
            ""
        };
        HeaderValue::from_str(&format!(
            "{}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite={}{secure}",
            self.cookie_name,
            self.same_site.as_str(),
        ))
        .ok()
    }
}

/// The session layer: gives every request a [`Session`] to extract, found (or created) when a
/// handler first uses it.
///
/// The session token is read from the `x-sse-session` header (non-browser clients) or the
/// `sse_session` cookie (browsers). A request whose handler uses its session (extracts
/// [`Session`], or opens an event stream) is answered with a freshly signed token in both
/// places: `Set-Cookie` (HttpOnly, SameSite=Strict, Secure by default) and the header. A
/// request that never uses it (another route, a refused event stream, a preflight) costs no
/// store access and gets no cookie.
///
/// ```
/// use axum::{Router, routing::get};
/// use resumable_sse_axum::{Session, SseLayer};
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let hub = resumable_sse_axum::memory_hub(Default::default());
/// let app = Router::new()
///     .route("/me", get(|session: Session| async move { session.id().to_string() }))
///     .layer(SseLayer::new(hub));
///
/// let response = app
///     .oneshot(http::Request::get("/me").body(axum::body::Body::empty()).unwrap())
///     .await
///     .unwrap();
/// let cookie = response.headers()["set-cookie"].to_str().unwrap();
/// assert!(cookie.starts_with("sse_session="));
/// assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
/// assert!(response.headers().contains_key("x-sse-session"));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SseLayer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) limits: Option<Arc<Limiter>>,
}

impl SseLayer {
    /// A layer over `hub` with the defaults: cookie `sse_session` (Secure, SameSite=Strict),
    /// header `x-sse-session`, everyone anonymous and allowed everything, default stream
    /// `broadcast`.
    pub fn new(hub: Hub) -> Self {
        SseLayer {
            shared: Arc::new(Shared {
                hub,
                cookie_name: "sse_session".into(),
                header: HeaderName::from_static("x-sse-session"),
                secure: true,
                same_site: SameSite::Strict,
                authorize: Arc::new(AllowAll),
                default_stream: StreamName::new("broadcast").expect("valid name"),
            }),
            limits: None,
        }
    }

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.shared.hub
    }

    /// The stream read when a request names none.
    pub fn default_stream(&self) -> &StreamName {
        &self.shared.default_stream
    }

    fn map(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        // The layer is only shared once it is built into a service; until then this is the
        // sole owner, and cloning the configuration otherwise is cheap.
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => f(shared),
            None => {
                let s = &self.shared;
                let mut copy = Shared {
                    hub: s.hub.clone(),
                    cookie_name: s.cookie_name.clone(),
                    header: s.header.clone(),
                    secure: s.secure,
                    same_site: s.same_site,
                    authorize: s.authorize.clone(),
                    default_stream: s.default_stream.clone(),
                };
                f(&mut copy);
                self.shared = Arc::new(copy);
            }
        }
        self
    }

    /// Sets the `Secure` attribute of the cookie (default `true`; browsers accept Secure
    /// cookies from `http://localhost`, so only plain-HTTP deployments on other hosts need
    /// `false`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let hub = resumable_sse_axum::memory_hub(Default::default());
    /// let layer = resumable_sse_axum::SseLayer::new(hub).with_secure_cookie(false);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_secure_cookie(self, secure: bool) -> Self {
        self.map(|s| s.secure = secure)
    }

    /// Sets the `SameSite` attribute of the cookie (default [`SameSite::Strict`]).
    ///
    /// A page on another *site* than the server (not only another port or subdomain) that
    /// opens its `EventSource` with `withCredentials` gets the cookie back only with
    /// [`SameSite::None`], which also makes the cookie `Secure` whatever
    /// [`with_secure_cookie`](Self::with_secure_cookie) says (browsers require it). Allow
    /// such pages through CORS as well ([`SseLayer::cors`], feature `cors`).
    ///
    /// ```
    /// use resumable_sse_axum::{SameSite, SseLayer};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let hub = resumable_sse_axum::memory_hub(Default::default());
    /// let layer = SseLayer::new(hub).with_same_site(SameSite::None);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_same_site(self, same_site: SameSite) -> Self {
        self.map(|s| s.same_site = same_site)
    }

    /// Sets the cookie name (default `sse_session`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let hub = resumable_sse_axum::memory_hub(Default::default());
    /// let layer = resumable_sse_axum::SseLayer::new(hub).with_cookie_name("app_sse");
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_cookie_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.map(|s| s.cookie_name = name)
    }

    /// Sets the request and response header carrying the token (default `x-sse-session`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let hub = resumable_sse_axum::memory_hub(Default::default());
    /// let layer = resumable_sse_axum::SseLayer::new(hub)
    ///     .with_header(http::HeaderName::from_static("x-app-session"));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_header(self, header: HeaderName) -> Self {
        self.map(|s| s.header = header)
    }

    /// Sets who may subscribe to and publish on which stream (default: everyone,
    /// anonymously). Sessions are bound to the principal [`Authorize::identify`] finds:
    /// another principal presenting the token is refused with 403. See [`Authorize`] for an
    /// implementation.
    ///
    /// ```
    /// # use resumable_sse_axum::{Authorize, Identity, Refusal, Target};
    /// # use resumable_sse_core::{StreamName, async_trait};
    /// # struct MyRules;
    /// # #[async_trait] impl Authorize for MyRules {
    /// #     async fn identify(&self, _: &http::request::Parts) -> Result<Identity, Refusal> { Ok(Identity::anonymous()) }
    /// #     async fn may_subscribe(&self, _: &Identity, _: &StreamName) -> Result<(), Refusal> { Ok(()) }
    /// #     async fn may_publish(&self, _: &Identity, _: Target<'_>) -> Result<(), Refusal> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let hub = resumable_sse_axum::memory_hub(Default::default());
    /// let layer = resumable_sse_axum::SseLayer::new(hub).with_authorization(MyRules);
    /// # }
    /// ```
    #[must_use]
    pub fn with_authorization(self, authorize: impl Authorize) -> Self {
        let authorize: Arc<dyn Authorize> = Arc::new(authorize);
        self.map(|s| s.authorize = authorize)
    }

    /// Sets the stream read when a request names none (default `broadcast`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let hub = resumable_sse_axum::memory_hub(Default::default());
    /// let layer = resumable_sse_axum::SseLayer::new(hub).with_default_stream("news".parse()?);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_default_stream(self, stream: StreamName) -> Self {
        self.map(|s| s.default_stream = stream)
    }

    /// Sets connection caps and rate limits (default: none). Event streams over a limit are
    /// answered `200` with a growing, jittered `retry:` and a `refused` event, publishes of
    /// [`router`](crate::router) over their rate `429` with `Retry-After`; see [`Limits`].
    ///
    /// ```
    /// use resumable_sse_axum::{Limits, SseLayer};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let hub = resumable_sse_axum::memory_hub(Default::default());
    /// let layer = SseLayer::new(hub).with_limits(Limits::new().max_connections_per_ip(100));
    /// assert_eq!(layer.limits().and_then(Limits::get_max_connections_per_ip), Some(100));
    /// # }
    /// ```
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = Some(Limiter::new(limits));
        self
    }

    /// The limits, if set.
    pub fn limits(&self) -> Option<&Limits> {
        self.limits.as_deref().map(Limiter::limits)
    }
}

impl<S> Layer<S> for SseLayer {
    type Service = SseService<S>;
    fn layer(&self, inner: S) -> SseService<S> {
        SseService {
            inner,
            shared: self.shared.clone(),
            limits: self.limits.clone(),
        }
    }
}

/// The service [`SseLayer`] produces.
#[derive(Clone, Debug)]
pub struct SseService<S> {
    inner: S,
    shared: Arc<Shared>,
    limits: Option<Arc<Limiter>>,
}

impl<S> SseService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for SseService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = future::ResponseFuture<S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone is fresh (not ready); the ready one goes into the future.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        let limits = self.limits.clone();
        future::ResponseFuture::new(async move {
            let (mut parts, body) = request.into_parts();
            let slot = SessionSlot::new(shared.clone(), &parts);
            parts.extensions.insert(slot.clone());
            if let Some(limits) = limits {
                // Checked by the events endpoint, so only event streams are counted.
                parts.extensions.insert(limits);
            }
            let mut response = inner.call(Request::from_parts(parts, body)).await?;
            if let Some(session) = slot.used() {
                for (name, value) in shared.session_headers(session) {
                    response.headers_mut().append(name, value);
                }
            }
            Ok(response)
        })
    }
}

impl Shared {
    /// The response headers carrying the session's fresh token: the cookie and the header.
    pub(crate) fn session_headers(&self, session: &Session) -> Vec<(HeaderName, HeaderValue)> {
        let token = &session.resolved().token;
        let mut headers = Vec::with_capacity(2);
        if let Some(cookie) = self.set_cookie(token) {
            headers.push((SET_COOKIE, cookie));
        }
        if let Ok(value) = HeaderValue::from_str(token) {
            headers.push((self.header.clone(), value));
        }
        headers
    }
}

/// The response future of [`SseService`].
pub mod future {
    use super::*;

    /// Resolves the session, then runs the wrapped service.
    pub struct ResponseFuture<E> {
        inner: Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>,
    }

    impl<E> ResponseFuture<E> {
        pub(super) fn new(f: impl Future<Output = Result<Response, E>> + Send + 'static) -> Self {
            ResponseFuture { inner: Box::pin(f) }
        }
    }

    impl<E> fmt::Debug for ResponseFuture<E> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ResponseFuture").finish_non_exhaustive()
        }
    }

    impl<E> Future for ResponseFuture<E> {
        type Output = Result<Response, E>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            self.inner.as_mut().poll(cx)
        }
    }
}
