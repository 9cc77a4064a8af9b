//! The [`Session`] handle and extractor.

use std::fmt;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::HeaderName;
use http::StatusCode;
use http::header::ACCEPT;
use http::request::Parts;
use resumable_sse_core::{
    Appended, Error, Hub, NewEvent, ResolvedSession, SessionId, SessionStatus, StreamName,
};
use tokio::sync::OnceCell;

use crate::ApiError;
use crate::auth::{Authorize, Identity, Refusal};

/// The `SameSite` attribute of the session cookie: which cross-site requests carry it.
///
/// ```
/// use resumable_sse_axum::SameSite;
///
/// assert_eq!("lax".parse::<SameSite>(), Ok(SameSite::Lax));
/// assert_eq!(SameSite::None.as_str(), "None");
/// assert!("sometimes".parse::<SameSite>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum SameSite {
    /// Only requests from the server's own site (the default): a page on another site never
    /// sends the cookie, so its connections are token-less (they still resume exactly).
    #[default]
    Strict,
    /// Also top-level navigations from other sites; not an `EventSource` on another site.
    Lax,
    /// Every request, cross-site ones included (an `EventSource` with `withCredentials` on a
    /// page of another site). Always sent with `Secure`.
    None,
}

impl SameSite {
    /// The attribute's value as written in `Set-Cookie`.
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

impl fmt::Display for SameSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SameSite {
    type Err = InvalidSameSite;

    /// `strict`, `lax` or `none`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [SameSite::Strict, SameSite::Lax, SameSite::None]
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
            .ok_or(InvalidSameSite)
    }
}

/// A `SameSite` value that is not `strict`, `lax` or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("SameSite is `strict`, `lax` or `none`")]
pub struct InvalidSameSite;

pub(crate) struct Shared {
    pub(crate) hub: Hub,
    pub(crate) cookie_name: String,
    pub(crate) header: HeaderName,
    pub(crate) secure: bool,
    pub(crate) same_site: SameSite,
    pub(crate) authorize: Arc<dyn Authorize>,
    pub(crate) default_stream: StreamName,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseLayer")
            .field("cookie_name", &self.cookie_name)
            .field("header", &self.header)
            .field("secure", &self.secure)
            .field("same_site", &self.same_site)
            .field("default_stream", &self.default_stream)
            .finish()
    }
}

/// The current request's session, found by [`SseLayer`](crate::SseLayer) when a handler
/// extracts it (a new session is created then, and the response carries its token). Extract it
/// in any handler to publish, or to send to this or another session.
///
/// ```
/// use axum::{Router, routing::post};
/// use resumable_sse_axum::{ApiError, Session, SseLayer};
/// use resumable_sse_core::NewEvent;
///
/// async fn notify_me(session: Session) -> Result<&'static str, ApiError> {
///     // Every connection of this session gets it; if it is away, it gets it on reconnect.
///     session.send(NewEvent::new("your export is ready")).await?;
///     Ok("sent")
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let hub = resumable_sse_axum::memory_hub(Default::default());
/// let app: Router = Router::new().route("/notify-me", post(notify_me)).layer(SseLayer::new(hub));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Session {
    pub(crate) shared: Arc<Shared>,
    pub(crate) resolved: Arc<ResolvedSession>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a credential: never print it.
        f.debug_struct("Session")
            .field("id", &self.resolved.record.id)
            .field("status", &self.resolved.status)
            .field("principal", &self.resolved.record.principal)
            .finish()
    }
}

impl Session {
    pub(crate) fn new(shared: Arc<Shared>, resolved: ResolvedSession) -> Self {
        Session {
            shared,
            resolved: Arc::new(resolved),
        }
    }

    /// The session id.
    pub fn id(&self) -> SessionId {
        self.resolved.record.id
    }

    /// How the session was resolved for this request.
    pub fn status(&self) -> SessionStatus {
        self.resolved.status
    }

    /// The principal the session is bound to, if any.
    pub fn principal(&self) -> Option<&str> {
        self.resolved.record.principal.as_deref()
    }

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.shared.hub
    }

    /// Publishes to a stream.
    ///
    /// # Errors
    ///
    /// As [`Hub::publish`].
    pub async fn publish(
        &self,
        stream: &StreamName,
        event: NewEvent,
    ) -> resumable_sse_core::Result<Appended> {
        self.shared.hub.publish(stream, event).await
    }

    /// Sends to this session's private stream.
    ///
    /// # Errors
    ///
    /// As [`Hub::send_to_session`].
    pub async fn send(&self, event: NewEvent) -> resumable_sse_core::Result<Appended> {
        self.shared.hub.send_to_session(&self.id(), event).await
    }

    /// Sends to another session's private stream.
    ///
    /// # Errors
    ///
    /// As [`Hub::send_to_session`].
    pub async fn send_to(
        &self,
        session: &SessionId,
        event: NewEvent,
    ) -> resumable_sse_core::Result<Appended> {
        self.shared.hub.send_to_session(session, event).await
    }

    pub(crate) fn resolved(&self) -> &ResolvedSession {
        &self.resolved
    }
}

/// What [`SseLayer`](crate::SseLayer) leaves in a request's extensions: the request's token
/// and principal, and the session once something uses it. Nothing is looked up or written
/// until then, so requests that never use their session (refused ones, preflights, routes
/// that do not extract it) leave nothing in the store and get no cookie.
#[derive(Clone)]
pub(crate) struct SessionSlot(Arc<Slot>);

struct Slot {
    shared: Arc<Shared>,
    /// Accepts `text/event-stream`: a store failure is answered with a retry hint.
    event_stream: bool,
    identity: OnceCell<Identity>,
    found: OnceCell<Session>,
    stored: OnceCell<()>,
}

impl SessionSlot {
    pub(crate) fn new(shared: Arc<Shared>, parts: &Parts) -> Self {
        let event_stream = parts
            .headers
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
        SessionSlot(Arc::new(Slot {
            shared,
            event_stream,
            identity: OnceCell::new(),
            found: OnceCell::new(),
            stored: OnceCell::new(),
        }))
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.0.shared
    }

    /// Who made the request ([`Authorize::identify`]).
    pub(crate) async fn identify(&self, parts: &Parts) -> Result<&Identity, Refusal> {
        let slot = &*self.0;
        slot.identity
            .get_or_try_init(|| slot.shared.authorize.identify(parts))
            .await
    }

    /// The request's session, found but not yet written if it is new
    /// ([`Hub::find_session`]), bound to the request's principal.
    pub(crate) async fn find(&self, parts: &Parts) -> Result<&Session, SessionRejection> {
        let slot = &*self.0;
        let identity = self.identify(parts).await?;
        slot.found
            .get_or_try_init(|| async {
                let token = slot.shared.token(&parts.headers);
                let resolved = slot
                    .shared
                    .hub
                    .find_session(token, identity.principal_name())
                    .await?;
                // The request's span (`RequestIdLayer`) names the session from now on.
                tracing::Span::current()
                    .record("session", tracing::field::display(resolved.record.id));
                Ok(Session::new(slot.shared.clone(), resolved))
            })
            .await
            .map_err(|err| self.rejection(err))
    }

    /// The request's session, written to the store if new: from now on it is used, and the
    /// response carries its token.
    pub(crate) async fn session(&self, parts: &Parts) -> Result<Session, SessionRejection> {
        let session = self.find(parts).await?;
        self.0
            .stored
            .get_or_try_init(|| self.0.shared.hub.store_session(session.resolved()))
            .await
            .map_err(|err| self.rejection(err))?;
        Ok(session.clone())
    }

    /// The session, if the request used it.
    pub(crate) fn used(&self) -> Option<&Session> {
        self.0.stored.get().and(self.0.found.get())
    }

    fn rejection(&self, err: Error) -> SessionRejection {
        // A genuine token of another principal's session: answered like the hook's refusals.
        if let Error::Forbidden(message) = err {
            return Refusal::insufficient_scope(message).into();
        }
        let backoff =
            (self.0.event_stream && !err.is_client_error()).then(|| self.0.shared.hub.clone());
        SessionRejection {
            error: ApiError::from(err),
            backoff,
            refusal: None,
        }
    }
}

/// Why the [`Session`] extractor could not give a session: the route is not behind
/// [`SseLayer`](crate::SseLayer) (500), the layer's [`Authorize`] refused the request (401,
/// 403), the token belongs to another principal (403), or the session store failed (503; a
/// request that accepts `text/event-stream` is answered 200 with a retry hint instead,
/// because `EventSource` gives up for good on any other status).
///
/// ```
/// use axum::response::IntoResponse;
/// use axum::{Router, routing::get};
/// use resumable_sse_axum::Session;
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // No `SseLayer`: the extractor says so.
/// let app = Router::new().route("/me", get(|session: Session| async move { session.id().to_string() }));
/// let response = app
///     .oneshot(http::Request::get("/me").body(axum::body::Body::empty()).unwrap())
///     .await
///     .unwrap();
/// assert_eq!(response.status(), 500);
/// # }
/// ```
#[derive(Debug)]
pub struct SessionRejection {
    error: ApiError,
    /// Set when the answer is a retry hint for an event-stream request.
    backoff: Option<Hub>,
    /// Set when the layer's `Authorize` refused: answered in RFC 6750 form.
    refusal: Option<Refusal>,
}

impl From<Refusal> for SessionRejection {
    fn from(refusal: Refusal) -> Self {
        SessionRejection {
            error: ApiError::new(refusal.status(), refusal.code(), refusal.message()),
            backoff: None,
            refusal: Some(refusal),
        }
    }
}

impl SessionRejection {
    pub(crate) fn missing_layer() -> Self {
        SessionRejection {
            error: ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "missing_layer",
                "no session: the route is not behind resumable_sse_axum::SseLayer; add \
                 `.layer(SseLayer::new(hub))` to the router",
            ),
            backoff: None,
            refusal: None,
        }
    }

    /// The error, as it is answered to any request but an event-stream one during a store
    /// failure.
    pub fn error(&self) -> &ApiError {
        &self.error
    }
}

impl fmt::Display for SessionRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for SessionRejection {}

impl IntoResponse for SessionRejection {
    fn into_response(self) -> Response {
        match (self.refusal, self.backoff) {
            (Some(refusal), _) => refusal.into_response(),
            (None, Some(hub)) => crate::response::backoff(&hub),
            (None, None) => self.error.into_response(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let slot = parts
            .extensions
            .get::<SessionSlot>()
            .cloned()
            .ok_or_else(SessionRejection::missing_layer)?;
        slot.session(parts).await
    }
}
