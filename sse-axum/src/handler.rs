//! The HTTP endpoints of the reference contract: the SSE endpoint, publishing and health.

use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use http::request::Parts;
use resumable_sse_core::{ConnectRequest, Connection, Error, Hub, NewEvent, SessionId, StreamName};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::auth::{Authorize, Target};
use crate::limits::{Admission, Limiter};
use crate::request_id::RequestId;
use crate::session::{SessionRejection, SessionSlot};
use crate::{ApiError, SseLayer};

/// The SSE endpoint: `GET /events?stream=A&stream=B[&lastEventId=…]`.
///
/// Streams come from repeated `stream` parameters (none: the layer's default stream); the
/// cursor from the `Last-Event-ID` header, or the `lastEventId` parameter for clients that
/// cannot set headers, or else the session's recorded cursor. The session's private stream is
/// always included. Invalid names answer 400 with a JSON error, requests the
/// [`Authorize`] hook refuses 401 or 403 (RFC 6750), before any byte of the stream; a store
/// outage (or the hub's open [circuit breaker](resumable_sse_core::BreakerConfig)) answers 200
/// with a `retry:` hint and one `refused` event with reason `store_unavailable`
/// (server-driven backoff).
///
/// ```
/// use axum::{Router, routing::get};
/// use resumable_sse_axum::SseLayer;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let hub = resumable_sse_axum::memory_hub(Default::default());
/// let app: Router = Router::new()
///     .route("/events", get(resumable_sse_axum::events))
///     .layer(SseLayer::new(hub));
/// # Ok(()) }
/// ```
pub async fn events(parts: Parts) -> Response {
    match open_events(&parts).await {
        Ok((hub, connection, admission)) => {
            // The count of the connection against the caps ends with it, whichever server
            // writes it.
            let connection = match admission {
                Some(admission) => connection.hold(admission),
                None => connection,
            };
            crate::response::event_stream(&hub, connection)
        }
        Err(response) => response,
    }
}

/// The SSE endpoint's logic: the streams and cursor from the request, the authorization hook, then the
/// connection; or the response to answer instead (4xx, or a backoff). The session is written
/// to the store (if new) only once the request is known to be served.
async fn open_events(parts: &Parts) -> Result<(Hub, Connection, Option<Admission>), Response> {
    let Some(slot) = parts.extensions.get::<SessionSlot>() else {
        return Err(SessionRejection::missing_layer().into_response());
    };
    let shared = slot.shared();
    let hub = &shared.hub;
    // The limits on addresses come before anything else: a storm of connects costs no
    // token verification nor store access.
    let limiter = parts.extensions.get::<Arc<Limiter>>();
    let mut admission = match limiter {
        Some(limiter) => Some(
            limiter
                .admit(limiter.client_addr(parts))
                .map_err(|refused| crate::response::refused(hub, refused))?,
        ),
        None => None,
    };
    // Who is asking comes first: a request without valid credentials (where they are
    // required) learns nothing else.
    let identity = slot
        .identify(parts)
        .await
        .map_err(IntoResponse::into_response)?
        .clone();
    let mut streams = Vec::new();
    let mut query_id = None;
    for (key, value) in form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
        match &*key {
            "stream" => match StreamName::new(&*value) {
                Ok(name) => streams.push(name),
                Err(err) => return Err(ApiError::from(err).into_response()),
            },
            "lastEventId" => query_id = Some(value.into_owned()),
            _ => {}
        }
    }
    if streams.is_empty() {
        streams.push(shared.default_stream.clone());
    }
    let session = slot
        .find(parts)
        .await
        .map_err(IntoResponse::into_response)?;
    let own = session.id().stream();
    for stream in &streams {
        if stream == &own {
            continue;
        }
        if stream.is_reserved() {
            return Err(ApiError::from(Error::Forbidden(format!(
                "stream {stream} may not be read"
            )))
            .into_response());
        }
        shared
            .authorize
            .may_subscribe(&identity, stream)
            .await
            .map_err(IntoResponse::into_response)?;
    }
    if let (Some(limiter), Some(admission)) = (limiter, admission.as_mut()) {
        limiter
            .admit_session(admission, session.id(), &identity)
            .map_err(|refused| crate::response::refused(hub, refused))?;
    }
    let session = slot
        .session(parts)
        .await
        .map_err(IntoResponse::into_response)?;
    // A header with bytes that are not text is kept (lossily): it is no cursor, and is
    // answered like any other id that is not one, with a reset, never as if it were absent.
    let last_event_id = parts
        .headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or(query_id);
    let mut request = ConnectRequest::new(streams)
        .last_event_id(last_event_id)
        .session(session.resolved().context());
    if let Some(at) = identity.expires_at() {
        request = request.expires_at(at);
    }
    // With request ids (`RequestIdLayer`), the connection's lines go under the request's
    // span, made again for each line rather than kept open for hours.
    if let Some(id) = parts.extensions.get::<RequestId>() {
        let (id, method, path, session) = (
            id.clone(),
            parts.method.clone(),
            parts.uri.path().to_owned(),
            session.id(),
        );
        request = request.log_span(move || {
            crate::request_id::request_span(&id, &method, &path, Some(&session), true)
        });
    }
    match hub.connect(request).await {
        Ok(connection) => Ok((hub.clone(), connection, admission)),
        Err(err) if err.is_client_error() => Err(ApiError::from(err).into_response()),
        Err(err) => {
            // While the breaker is open this is every request: it logged its opening once.
            if !err.is_circuit_open() {
                tracing::warn!(error = %err, "could not open a connection; asking the client to retry later");
            }
            Err(crate::response::backoff(hub))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    stream: Option<String>,
    session: Option<String>,
    event: Option<String>,
    id: Option<String>,
    /// Kept as written: a number is sent with all of its digits (`12345678901234567890123`,
    /// not `1.2345678901234568e+22`), and `null` is data like any other value.
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
}

/// Whether the request says its body is `application/json` (parameters such as `charset`
/// allowed).
fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// A field that is present, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// A JSON text without the white space outside its strings: the compact form of a value,
/// with every literal exactly as written.
fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// What [`router`]'s publish endpoint is configured with.
#[derive(Clone)]
pub struct PublishState {
    hub: Hub,
    default_stream: StreamName,
    authorize: Arc<dyn Authorize>,
    limits: Option<Arc<Limiter>>,
}

impl fmt::Debug for PublishState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishState")
            .field("default_stream", &self.default_stream)
            .finish_non_exhaustive()
    }
}

/// The publish endpoint: `POST /publish` with JSON
/// `{"stream": "A", "event"?: "type", "id"?: "key", "data": …}` or `{"session": "<id>", …}`.
///
/// `data` that is a JSON string is sent as is; any other JSON value as its compact JSON text.
/// Neither `stream` nor `session`: the default stream. Answers
/// `200 {"stream", "position", "epoch", "id", "duplicate"}` once the store has the event, 400
/// with a JSON error for bad input (invalid stream name, CR/LF/NUL in `event` or `id`, bad
/// JSON), 404 for an unknown session, 413 for an oversized body, 415 for a body not sent as
/// `Content-Type: application/json`, 429 with `Retry-After` over the layer's
/// [publish rate](crate::Limits::publish_rate) (nothing stored), 503 with `Retry-After` when
/// the store is down (at once, without asking it, while the hub's
/// [circuit breaker](resumable_sse_core::BreakerConfig) is open).
pub async fn publish(State(state): State<PublishState>, request: Request) -> Response {
    match publish_inner(&state, request).await {
        Ok(response) => response,
        Err(err) if err.status() == StatusCode::SERVICE_UNAVAILABLE => {
            // The store is down: come back once the breaker's next probe may have found it.
            let probe = state.hub.config().breaker.probe;
            let secs = probe.as_secs() + u64::from(probe.subsec_nanos() > 0);
            let mut response = err.into_response();
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(secs.max(1)),
            );
            response
        }
        Err(err) => err.into_response(),
    }
}

async fn publish_inner(state: &PublishState, request: Request) -> Result<Response, ApiError> {
    let hub = &state.hub;
    let (parts, body) = request.into_parts();
    let identity = match state.authorize.identify(&parts).await {
        Ok(identity) => identity,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    // Before the body is read: a publisher over its rate costs nothing more, and nothing of
    // its request is stored.
    if let Some(limiter) = &state.limits
        && let Err(wait) = limiter.check_publish(&identity, limiter.client_addr(&parts))
    {
        return Ok(rate_limited(wait));
    }
    if !is_json(&parts.headers) {
        // A cross-site form or `text/plain` post needs no CORS preflight: refusing every
        // other content type keeps pages on other origins from publishing unasked.
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON, sent with `Content-Type: application/json`",
        ));
    }
    // Room for JSON escaping of the largest accepted event.
    let limit = hub
        .config()
        .max_event_bytes
        .saturating_mul(2)
        .saturating_add(64 * 1024);
    let bytes: Bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    })?;
    let body: PublishBody = serde_json::from_slice(&bytes).map_err(|err| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("invalid JSON body: {err}"),
        )
    })?;
    let data = match body.data {
        Some(raw) if raw.get().starts_with('"') => serde_json::from_str::<String>(raw.get())
            .map_err(|err| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("invalid JSON body: {err}"),
                )
            })?,
        Some(raw) => compact(raw.get()),
        None => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_data",
                "`data` is required",
            ));
        }
    };
    let mut event = NewEvent::new(data);
    if let Some(name) = &body.event {
        event = event.with_event(name)?;
    }
    if let Some(id) = &body.id {
        event = event.with_id(id)?;
    }
    let (stream, appended) = match (body.stream, body.session) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "give `stream` or `session`, not both",
            ));
        }
        (_, Some(session)) => {
            let id: SessionId = session.parse().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_session",
                    "`session` is 32 hex digits",
                )
            })?;
            if let Err(refusal) = state
                .authorize
                .may_publish(&identity, Target::Session(&id))
                .await
            {
                return Ok(refusal.into_response());
            }
            (id.stream(), hub.send_to_session(&id, event).await?)
        }
        (stream, None) => {
            let stream = match stream {
                Some(name) => StreamName::new(name)?,
                None => state.default_stream.clone(),
            };
            if let Err(refusal) = state
                .authorize
                .may_publish(&identity, Target::Stream(&stream))
                .await
            {
                return Ok(refusal.into_response());
            }
            let appended = hub.publish(&stream, event).await?;
            (stream, appended)
        }
    };
    Ok(Json(serde_json::json!({
        "stream": stream.as_str(),
        "position": appended.position,
        "epoch": appended.epoch.to_string(),
        "id": format!("{}-{}", appended.epoch, appended.position),
        "duplicate": appended.duplicate,
    }))
    .into_response())
}

/// `429 Too Many Requests` with `Retry-After` (whole seconds, rounded up) and a JSON error.
fn rate_limited(wait: std::time::Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let secs = secs.max(1);
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many publishes: retry in {secs} s"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
    response
}

/// `GET /healthz`: 200 when the store answers, 503 with a JSON error otherwise.
pub async fn healthz(State(state): State<PublishState>) -> Response {
    match state.hub.buffer().ping().await {
        Ok(()) => Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(err) => ApiError::from(match err {
            Error::Unavailable(e) => Error::Unavailable(e),
            other => Error::unavailable(other),
        })
        .into_response(),
    }
}

/// The reference HTTP contract as a router: `GET /events` (behind `layer`), `POST /publish`
/// and `GET /healthz`. Merge your own routes into it, or build your own from [`events`],
/// [`publish`] and [`healthz`].
///
/// ```
/// use resumable_sse_axum::SseLayer;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let hub = resumable_sse_axum::memory_hub(Default::default());
/// let app: axum::Router = resumable_sse_axum::router(SseLayer::new(hub));
/// # Ok(()) }
/// ```
pub fn router(layer: SseLayer) -> Router {
    let state = PublishState {
        hub: layer.hub().clone(),
        default_stream: layer.default_stream().clone(),
        authorize: layer.shared.authorize.clone(),
        limits: layer.limits.clone(),
    };
    Router::new()
        .route("/events", get(events).layer(layer))
        .route("/publish", post(publish))
        .route("/healthz", get(healthz))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::compact;

    #[test]
    fn compact_keeps_literals_and_strings_exactly() {
        assert_eq!(
            compact("{ \"a b\" : [ 1 , 12345678901234567890123 , 1e400 ] ,\n \"q\\\" \": null }"),
            "{\"a b\":[1,12345678901234567890123,1e400],\"q\\\" \":null}"
        );
    }
}
