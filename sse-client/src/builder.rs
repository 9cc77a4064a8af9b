//! Configuring a [`Client`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::event::Markers;
use crate::{Backoff, Client, Error, Resume};

/// The header a resumable-sse server returns the session token in, and reads it back from.
pub const DEFAULT_SESSION_HEADER: &str = "x-sse-session";

pub(crate) type StatusFilter = Arc<dyn Fn(StatusCode) -> bool + Send + Sync>;

/// Builds a [`Client`]; from [`Client::builder`].
///
/// ```
/// use std::time::Duration;
/// use resumable_sse_client::{Backoff, Client};
///
/// let client = Client::builder("http://127.0.0.1:3000/events?stream=news")
///     .header("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9")
///     .backoff(Backoff::new(Duration::from_millis(500), Duration::from_secs(10)))
///     .retry_on_status(|status| status.is_server_error())
///     .idle_timeout(Duration::from_secs(45))
///     .build()?;
/// assert_eq!(client.last_event_id(), None);
/// # Ok::<(), resumable_sse_client::Error>(())
/// ```
#[must_use]
pub struct ClientBuilder {
    pub(crate) url: String,
    pub(crate) http: Option<reqwest::Client>,
    pub(crate) headers: HeaderMap,
    pub(crate) session_header: HeaderName,
    pub(crate) keep_session: bool,
    pub(crate) resume: Resume,
    pub(crate) backoff: Backoff,
    pub(crate) retry_status: Option<StatusFilter>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) markers: Markers,
    pub(crate) error: Option<Error>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values and the token may be credentials: names only.
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("session_header", &self.session_header)
            .field("keep_session", &self.keep_session)
            .field("resume", &self.resume)
            .field("backoff", &self.backoff)
            .field("retry_status", &self.retry_status.is_some())
            .field("max_attempts", &self.max_attempts)
            .field("idle_timeout", &self.idle_timeout)
            .field("markers", &self.markers)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    pub(crate) fn new(url: impl Into<String>) -> Self {
        ClientBuilder {
            url: url.into(),
            http: None,
            headers: HeaderMap::new(),
            session_header: HeaderName::from_static(DEFAULT_SESSION_HEADER),
            keep_session: true,
            resume: Resume::default(),
            backoff: Backoff::default(),
            retry_status: None,
            max_attempts: None,
            idle_timeout: None,
            markers: Markers::default(),
            error: None,
        }
    }

    /// The HTTP client to use (its TLS, proxy, timeouts, pool). By default a new
    /// `reqwest::Client` that keeps no idle connections (each reconnection opens a fresh one:
    /// a pooled connection the server has closed in the meantime would fail an attempt). Do
    /// not give it a total request timeout: an event stream is one long response; use
    /// [`idle_timeout`](Self::idle_timeout) instead.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Adds a header to every request, such as `Authorization: Bearer …`. Values of
    /// `Authorization`, `Cookie` and `Proxy-Authorization` are marked sensitive.
    ///
    /// An invalid name or value makes [`build`](Self::build) fail.
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        V: TryInto<HeaderValue>,
        V::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let name = match name.try_into() {
            Ok(name) => name,
            Err(err) => return self.fail(Error::config("invalid header name", err)),
        };
        let mut value = match value.try_into() {
            Ok(value) => value,
            Err(err) => return self.fail(Error::config(format!("invalid value for {name}"), err)),
        };
        if matches!(
            name.as_str(),
            "authorization" | "cookie" | "proxy-authorization"
        ) {
            value.set_sensitive(true);
        }
        self.headers.append(name, value);
        self
    }

    /// The header carrying the session token both ways (default
    /// [`DEFAULT_SESSION_HEADER`], `x-sse-session`).
    pub fn session_header<K>(mut self, name: K) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match name.try_into() {
            Ok(name) => self.session_header = name,
            Err(err) => return self.fail(Error::config("invalid session header name", err)),
        }
        self
    }

    /// `false`: never keep nor send a session token, like a cookie-less browser. Each
    /// connection then gets a new session on a resumable-sse server; its streams still
    /// resume exactly, but messages sent to an earlier session are not received (docs/adr/0016).
    /// Default `true`.
    pub fn keep_session(mut self, keep: bool) -> Self {
        self.keep_session = keep;
        self
    }

    /// Starts from this last event id, as if an earlier connection had ended after it.
    pub fn last_event_id(mut self, id: impl Into<String>) -> Self {
        let id = id.into();
        self.resume.last_event_id = (!id.is_empty()).then_some(id);
        self
    }

    /// Starts with this session token (a resumable-sse server then continues that session,
    /// with its private messages, if it still lives).
    pub fn session_token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.resume.session_token = (!token.is_empty()).then_some(token);
        self
    }

    /// Starts from a saved [`Resume`] (both of the above).
    pub fn resume(mut self, resume: Resume) -> Self {
        self.resume = resume;
        self
    }

    /// The reconnection delays. The default: [`Backoff::default`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Statuses other than 200 to treat like a network error (reconnect with backoff)
    /// instead of stopping, e.g. `|s| s.is_server_error() || s == 429`. By default none:
    /// like `EventSource`, any status other than 200 stops the client. A `Retry-After` in
    /// seconds on such an answer is waited out (at least; the backoff may ask for longer).
    pub fn retry_on_status(
        mut self,
        retry: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.retry_status = Some(Arc::new(retry));
        self
    }

    /// Stops with [`Error::GaveUp`] after this many attempts in a row that got no event
    /// (at least 1; a connection the server [refused](crate::Event::Refused) got none). By
    /// default the client tries for ever, like `EventSource`.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// Reconnects when nothing (not even a heartbeat comment) arrives for this long. A
    /// resumable-sse server sends a heartbeat every 15 s by default, so 45 s suits it. By
    /// default there is no limit: a half-open TCP connection can then go unnoticed.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// The event names of the `connected` and `reset` markers (`None`: do not recognise it;
    /// such events are messages). Defaults: `connected` and `reset`, as the server's. The
    /// `ended` marker (`{"reason": …}`) is always recognised.
    pub fn markers(mut self, connected: Option<&str>, reset: Option<&str>) -> Self {
        self.markers = Markers {
            connected: connected.map(str::to_owned),
            reset: reset.map(str::to_owned),
        };
        self
    }

    /// The client. It connects when first polled.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid URL (or one that is not http or https) or header
    /// given to the builder.
    pub fn build(self) -> Result<Client, Error> {
        Client::from_builder(self)
    }

    fn fail(mut self, error: Error) -> Self {
        self.error.get_or_insert(error);
        self
    }
}
