//! Who may subscribe to and publish on which stream: the [`Authorize`] hook.

use std::fmt;
use std::time::SystemTime;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::header::WWW_AUTHENTICATE;
use http::request::Parts;
use http::{HeaderValue, StatusCode};
use resumable_sse_core::{SessionId, StreamName, async_trait};

/// Who made a request, as an [`Authorize`] implementation found out: the principal (sessions
/// are bound to it), when the authorization ends, and whatever the implementation wants to
/// keep for its later decisions (its grants, for example).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use resumable_sse_axum::Identity;
///
/// #[derive(Clone)]
/// struct Grants(Vec<String>);
///
/// let expiry = SystemTime::now() + Duration::from_secs(60);
/// let alice = Identity::principal("alice")
///     .with_expiry(expiry)
///     .with(Grants(vec!["room:*".into()]));
/// assert_eq!(alice.principal_name(), Some("alice"));
/// assert_eq!(alice.expires_at(), Some(expiry));
/// assert_eq!(alice.get::<Grants>().map(|g| g.0.len()), Some(1));
/// assert!(Identity::anonymous().principal_name().is_none());
/// ```
#[derive(Clone, Default)]
pub struct Identity {
    principal: Option<String>,
    expires_at: Option<SystemTime>,
    extensions: http::Extensions,
}

impl Identity {
    /// No principal, no expiry.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// An authenticated principal (a user id, a service name).
    pub fn principal(name: impl Into<String>) -> Self {
        Identity {
            principal: Some(name.into()),
            ..Self::default()
        }
    }

    /// Sets when the authorization ends: event streams opened with it end then, with an
    /// `ended` event (`{"reason": "authorization_expired"}`), so that the client comes back
    /// with fresh credentials and resumes where it was.
    #[must_use]
    pub fn with_expiry(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Keeps a value for the implementation's later decisions (one per type).
    #[must_use]
    pub fn with<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.extensions.insert(value);
        self
    }

    /// The principal, if the request was authenticated.
    pub fn principal_name(&self) -> Option<&str> {
        self.principal.as_deref()
    }

    /// When the authorization ends, if it does.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// A value kept with [`with`](Self::with).
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.extensions.get::<T>()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // What the implementation keeps may hold credentials: never print it.
        f.debug_struct("Identity")
            .field("principal", &self.principal)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Where a publish goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target<'a> {
    /// A stream.
    Stream(&'a StreamName),
    /// A session's private stream.
    Session(&'a SessionId),
}

/// A request refused by an [`Authorize`] implementation, answered before any byte of an
/// event stream, in the form of RFC 6750 (bearer tokens): `401` with
/// `WWW-Authenticate: Bearer error="invalid_token"` for missing, malformed or expired
/// credentials (when they are required), `403` with `error="insufficient_scope"` for
/// credentials that do not allow the request. The body is JSON:
/// `{"error": "invalid_token", "message": "…"}`.
///
/// ```
/// use axum::response::IntoResponse;
/// use resumable_sse_axum::Refusal;
///
/// let response = Refusal::invalid_token("the token expired").into_response();
/// assert_eq!(response.status(), 401);
/// assert_eq!(
///     response.headers()["www-authenticate"],
///     r#"Bearer error="invalid_token", error_description="the token expired""#
/// );
/// assert_eq!(Refusal::insufficient_scope("not yours").into_response().status(), 403);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    kind: RefusalKind,
    message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RefusalKind {
    InvalidToken,
    InsufficientScope,
}

impl Refusal {
    /// 401: the credentials are missing (where required), malformed, forged or expired.
    pub fn invalid_token(message: impl Into<String>) -> Self {
        Refusal {
            kind: RefusalKind::InvalidToken,
            message: message.into(),
        }
    }

    /// 403: the credentials do not allow this.
    pub fn insufficient_scope(message: impl Into<String>) -> Self {
        Refusal {
            kind: RefusalKind::InsufficientScope,
            message: message.into(),
        }
    }

    /// The status it is answered with.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            RefusalKind::InvalidToken => StatusCode::UNAUTHORIZED,
            RefusalKind::InsufficientScope => StatusCode::FORBIDDEN,
        }
    }

    /// The RFC 6750 error code: `invalid_token` or `insufficient_scope`.
    pub fn code(&self) -> &'static str {
        match self.kind {
            RefusalKind::InvalidToken => "invalid_token",
            RefusalKind::InsufficientScope => "insufficient_scope",
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message)
    }
}

impl std::error::Error for Refusal {}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        // Every authorization refusal is answered through here, on both endpoints.
        crate::metrics::count_refusal(self.code());
        // RFC 6750 §3: the description is a quoted string of visible ASCII without `"` or `\`.
        let description: String = self
            .message
            .chars()
            .map(|c| match c {
                '"' | '\\' => '\'',
                c if c.is_ascii_graphic() || c == ' ' => c,
                _ => '?',
            })
            .collect();
        let challenge = format!(
            "Bearer error=\"{}\", error_description=\"{description}\"",
            self.code()
        );
        let mut response = (
            self.status(),
            Json(serde_json::json!({"error": self.code(), "message": self.message})),
        )
            .into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// Decides who a request is and what it may do: subscribing per stream, publishing per
/// stream and per session. Asynchronous, so a decision may look things up (a token
/// introspection endpoint, a database of memberships).
///
/// [`SseLayer::with_authorization`](crate::SseLayer::with_authorization) installs one; the
/// events endpoint calls [`identify`](Self::identify), then
/// [`may_subscribe`](Self::may_subscribe) for every stream the request names (a session's own
/// private stream is always its own to read, and never anyone else's, whatever this says)
/// before any byte of the stream is written; the publish endpoint calls `identify`, then
/// [`may_publish`](Self::may_publish). The default allows everything, anonymously.
///
/// ```
/// use http::request::Parts;
/// use resumable_sse_axum::{Authorize, Identity, Refusal, SseLayer, Target};
/// use resumable_sse_core::{StreamName, async_trait};
///
/// /// Users say who they are in `x-user` (set by a trusted proxy); each reads and writes
/// /// only the streams named after them.
/// struct OwnStreams;
///
/// #[async_trait]
/// impl Authorize for OwnStreams {
///     async fn identify(&self, parts: &Parts) -> Result<Identity, Refusal> {
///         match parts.headers.get("x-user").and_then(|v| v.to_str().ok()) {
///             Some(user) => Ok(Identity::principal(user)),
///             None => Err(Refusal::invalid_token("who are you?")),
///         }
///     }
///     async fn may_subscribe(&self, who: &Identity, stream: &StreamName) -> Result<(), Refusal> {
///         let mine = who.principal_name().is_some_and(|p| stream.as_str() == format!("user:{p}"));
///         if mine { Ok(()) } else { Err(Refusal::insufficient_scope("not your stream")) }
///     }
///     async fn may_publish(&self, who: &Identity, target: Target<'_>) -> Result<(), Refusal> {
///         match target {
///             Target::Stream(stream) => self.may_subscribe(who, stream).await,
///             _ => Err(Refusal::insufficient_scope("no sending to sessions")),
///         }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let hub = resumable_sse_axum::memory_hub(Default::default());
/// let layer = SseLayer::new(hub).with_authorization(OwnStreams);
/// # }
/// ```
#[async_trait]
pub trait Authorize: Send + Sync + 'static {
    /// Who made the request: [`Identity::anonymous`] for anyone, or a refusal (401) when
    /// credentials are required or the ones given are not genuine.
    async fn identify(&self, parts: &Parts) -> Result<Identity, Refusal>;

    /// Whether `identity` may read `stream`.
    async fn may_subscribe(&self, identity: &Identity, stream: &StreamName) -> Result<(), Refusal>;

    /// Whether `identity` may publish to `target`.
    async fn may_publish(&self, identity: &Identity, target: Target<'_>) -> Result<(), Refusal>;
}

/// The default: everyone is anonymous and may do everything.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AllowAll;

#[async_trait]
impl Authorize for AllowAll {
    async fn identify(&self, _: &Parts) -> Result<Identity, Refusal> {
        Ok(Identity::anonymous())
    }
    async fn may_subscribe(&self, _: &Identity, _: &StreamName) -> Result<(), Refusal> {
        Ok(())
    }
    async fn may_publish(&self, _: &Identity, _: Target<'_>) -> Result<(), Refusal> {
        Ok(())
    }
}
