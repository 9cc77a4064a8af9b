//! Errors as HTTP responses.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

/// An error answered with a status code and a JSON body `{"error": "<code>", "message": "…"}`:
/// a machine-readable code (as in OAuth and RFC 6750 answers) and a sentence for people.
///
/// ```
/// use axum::response::IntoResponse;
/// use resumable_sse_axum::ApiError;
///
/// let response = ApiError::from(resumable_sse_core::StreamName::new("no spaces").unwrap_err()).into_response();
/// assert_eq!(response.status(), 400);
///
/// // A store over its budget: 507, `{"error": "store_full", …}`.
/// let full = resumable_sse_core::Error::Full("the memory budget is used up".into());
/// assert_eq!(ApiError::from(full).into_response().status(), 507);
/// ```
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An error with this status, machine-readable code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code (`"forbidden"`, `"invalid_stream_name"`, …).
    ///
    /// ```
    /// let err = resumable_sse_axum::ApiError::new(http::StatusCode::IM_A_TEAPOT, "teapot", "short and stout");
    /// assert_eq!(err.code(), "teapot");
    /// assert_eq!(err.to_string(), "short and stout");
    /// ```
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<resumable_sse_core::Error> for ApiError {
    fn from(err: resumable_sse_core::Error) -> Self {
        use resumable_sse_core::Error as E;
        if let E::Full(_) = &err {
            // An expected state under load, answered clearly: not logged per request, or a
            // publisher retrying in a loop would flood the log.
            return ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "store_full",
                err.to_string(),
            );
        }
        let (status, code) = match &err {
            E::InvalidStreamName(_) => (StatusCode::BAD_REQUEST, "invalid_stream_name"),
            E::InvalidField { .. } => (StatusCode::BAD_REQUEST, "invalid_field"),
            E::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            E::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            E::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            E::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
        };
        if err.is_circuit_open() {
            // The breaker logged its opening once; a line per refused request would flood.
            tracing::debug!("request refused: the store circuit breaker is open");
        } else if !err.is_client_error() {
            // Server-side errors keep their source chain in the log, not in the response.
            tracing::error!(error = ?err, "request failed");
        }
        let message = if err.is_circuit_open() {
            // Say why the answer came at once: the store was not asked.
            format!("{err}: {}", resumable_sse_core::CircuitOpen)
        } else {
            err.to_string()
        };
        ApiError::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(Body {
                error: self.code,
                message: &self.message,
            }),
        )
            .into_response()
    }
}
