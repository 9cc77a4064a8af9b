//! The client's errors.

use reqwest::StatusCode;

/// What went wrong.
///
/// The stream yields an `Err` only when it stops for good: [`Status`](Error::Status),
/// [`ContentType`](Error::ContentType) and [`GaveUp`](Error::GaveUp). Errors it recovers
/// from by reconnecting arrive inside [`Event::Disconnected`](crate::Event::Disconnected).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder was given something unusable (a URL or a header).
    #[error("invalid client configuration: {what}")]
    Config {
        /// What was wrong.
        what: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The server answered a status other than 200 that the client was not told to retry.
    #[error("the server answered {status}")]
    Status {
        /// The status.
        status: StatusCode,
    },
    /// The server answered 200 with a content type other than `text/event-stream`.
    #[error("the server answered {content_type:?} instead of text/event-stream")]
    ContentType {
        /// The `Content-Type` header, if any (lossy UTF-8).
        content_type: Option<String>,
    },
    /// The request or the response body failed (connection refused or cut, a timeout).
    #[error("HTTP request failed")]
    Http(#[from] reqwest::Error),
    /// No event came for longer than the idle timeout.
    #[error("no data for {0:?}")]
    Idle(std::time::Duration),
    /// [`ClientBuilder::max_attempts`](crate::ClientBuilder::max_attempts) attempts in a row
    /// got no event.
    #[error("gave up after {attempts} attempts in a row without an event")]
    GaveUp {
        /// How many.
        attempts: u32,
        /// Why the last one failed.
        #[source]
        last: Option<Box<Error>>,
    },
}

impl Error {
    pub(crate) fn config(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Config {
            what: what.into(),
            source: Some(source.into()),
        }
    }
}
