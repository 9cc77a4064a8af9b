//! The reconnecting client: a `Stream` of events over as many connections as it takes.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use resumable_sse_core::codec::{Item, Parser};
use tokio::time::{Instant, Sleep};

use crate::builder::{ClientBuilder, StatusFilter};
use crate::event::{Disconnected, Markers};
use crate::{Backoff, Error, Event, Resume};

type ResponseFuture = Pin<Box<dyn Future<Output = reqwest::Result<reqwest::Response>> + Send>>;
type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A reconnecting SSE client: a [`Stream`] of [`Event`]s.
///
/// It connects when first polled and reconnects whenever a connection ends or fails,
/// sending the last event id as `Last-Event-ID` and the session token in its header. It
/// yields `Err` only when it stops for good (then the stream ends); see [`Error`].
///
/// Read it with `futures_util::StreamExt::next` or [`Client::next`]. Between two events,
/// [`last_event_id`](Client::last_event_id), [`session_token`](Client::session_token) and
/// [`resume_state`](Client::resume_state) tell where it is: exactly after the last event
/// it yielded, never further (events received but not yet yielded do not count), so saving
/// that state and resuming from it loses nothing.
///
/// `Debug` shows no token.
pub struct Client {
    http: reqwest::Client,
    url: Url,
    headers: HeaderMap,
    session_header: HeaderName,
    keep_session: bool,
    backoff: Backoff,
    retry_status: Option<StatusFilter>,
    max_attempts: Option<u32>,
    idle_timeout: Option<Duration>,
    markers: Markers,

    state: State,
    parser: Parser,
    queue: VecDeque<Event>,
    last_event_id: String,
    token: Option<String>,
    /// The server's last `retry:`, in force until another (it outlives connections).
    retry: Option<Duration>,
    /// Attempts in a row that got no event.
    failures: u32,
    /// Whether the current connection delivered an event (a refusal is not one).
    delivered: bool,
    /// The wait the server asked for before the next attempt.
    asked_wait: Option<Asked>,
}

/// A wait the server asked for.
#[derive(Clone, Copy, Debug)]
enum Asked {
    /// A `refused` event's `retry_ms`: the server grows and jitters it per client already.
    Exactly(Duration),
    /// A retried status's `Retry-After`: no sooner than that, and no sooner than the backoff.
    AtLeast(Duration),
}

/// The longest wait a server may ask for; a longer `Retry-After` is taken as this.
const LONGEST_ASKED_WAIT: Duration = Duration::from_secs(3600);

/// A `Retry-After` in seconds (an HTTP date is not read: the backoff applies).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

enum State {
    /// Connect at the next poll.
    Connect,
    Requesting(ResponseFuture),
    Reading {
        body: Body,
        idle: Option<Pin<Box<Sleep>>>,
    },
    Waiting(Pin<Box<Sleep>>),
    Done,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Connect => "connecting",
            State::Requesting(_) => "requesting",
            State::Reading { .. } => "open",
            State::Waiting(_) => "waiting to reconnect",
            State::Done => "closed",
        }
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url.as_str())
            .field("state", &self.state.name())
            .field("last_event_id", &self.last_event_id)
            .field("session_token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("retry", &self.retry)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder for a client of the event stream at `url`.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// A client of the event stream at `url` with the default settings.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `url` is not an http or https URL.
    pub fn new(url: impl Into<String>) -> Result<Client, Error> {
        Client::builder(url).build()
    }

    pub(crate) fn from_builder(builder: ClientBuilder) -> Result<Client, Error> {
        if let Some(error) = builder.error {
            return Err(error);
        }
        let url = Url::parse(&builder.url).map_err(|err| Error::config("invalid URL", err))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::Config {
                what: format!("{} URLs are not supported", url.scheme()),
                source: None,
            });
        }
        let http = match builder.http {
            Some(http) => http,
            // No idle connections: an event stream ends when its connection does, and a
            // pooled connection the server has closed would fail the next attempt.
            None => reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .map_err(|err| Error::config("cannot build the HTTP client", err))?,
        };
        let resume = builder.resume;
        Ok(Client {
            http,
            url,
            headers: builder.headers,
            session_header: builder.session_header,
            keep_session: builder.keep_session,
            backoff: builder.backoff,
            retry_status: builder.retry_status,
            max_attempts: builder.max_attempts,
            idle_timeout: builder.idle_timeout,
            markers: builder.markers,
            state: State::Connect,
            parser: Parser::new(),
            queue: VecDeque::new(),
            last_event_id: resume.last_event_id.unwrap_or_default(),
            token: resume
                .session_token
                .filter(|_| builder.keep_session)
                .filter(|t| !t.is_empty()),
            retry: None,
            failures: 0,
            delivered: false,
            asked_wait: None,
        })
    }

    /// The next event; `None` once the client has stopped.
    ///
    /// Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Option<Result<Event, Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The last event id: what the client sends as `Last-Event-ID` when it reconnects
    /// (`None` while there is none). It is the id in force after the last event yielded:
    /// it carries over events without an `id:` field and across connections, and an empty
    /// `id:` field clears it, as in the specification.
    pub fn last_event_id(&self) -> Option<&str> {
        (!self.last_event_id.is_empty()).then_some(self.last_event_id.as_str())
    }

    /// The session token the server last returned (or the one the client started with).
    /// A credential: keep it out of logs.
    pub fn session_token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The server's last `retry:` hint.
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    /// The URL.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Both of the above in one value to save; see [`Resume`].
    pub fn resume_state(&self) -> Resume {
        Resume {
            last_event_id: self.last_event_id().map(str::to_owned),
            session_token: self.token.clone(),
        }
    }

    fn request(&self) -> ResponseFuture {
        let mut request = self
            .http
            .get(self.url.clone())
            .headers(self.headers.clone())
            .header(header::ACCEPT, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache");
        // An id or token that is not a valid header value (control characters) is not sent,
        // as a browser would not: the server then starts the client afresh.
        if !self.last_event_id.is_empty()
            && let Ok(id) = HeaderValue::from_bytes(self.last_event_id.as_bytes())
        {
            request = request.header("last-event-id", id);
        }
        if self.keep_session
            && let Some(token) = &self.token
            && let Ok(mut value) = HeaderValue::from_bytes(token.as_bytes())
        {
            value.set_sensitive(true);
            request = request.header(self.session_header.clone(), value);
        }
        Box::pin(request.send())
    }

    /// Takes a response: `Ok(true)` when it is an event stream to read, `Ok(false)` when it
    /// is a status to retry; `Err` when the client must stop (`None`: stop without an error).
    fn accept(&mut self, response: &reqwest::Response) -> Result<bool, Option<Error>> {
        let status = response.status();
        if status != StatusCode::OK {
            if status == StatusCode::NO_CONTENT {
                // The specification's way for a server to say "stop reconnecting".
                return Err(None);
            }
            if self
                .retry_status
                .as_ref()
                .is_some_and(|retry| retry(status))
            {
                self.asked_wait = retry_after(response.headers()).map(Asked::AtLeast);
                return Ok(false);
            }
            return Err(Some(Error::Status { status }));
        }
        let content_type = response.headers().get(header::CONTENT_TYPE);
        let essence = content_type
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim);
        if !essence.is_some_and(|e| e.eq_ignore_ascii_case("text/event-stream")) {
            return Err(Some(Error::ContentType {
                content_type: content_type.map(|v| String::from_utf8_lossy(v.as_bytes()).into()),
            }));
        }
        if self.keep_session
            && let Some(token) = response
                .headers()
                .get(&self.session_header)
                .and_then(|v| v.to_str().ok())
                .filter(|t| !t.is_empty())
        {
            self.token = Some(token.to_owned());
        }
        Ok(true)
    }

    /// Ends the current attempt: queues [`Event::Disconnected`] and waits, or stops when
    /// `max_attempts` is reached.
    fn disconnect(&mut self, error: Option<Error>) -> Option<Error> {
        if matches!(self.state, State::Reading { .. }) {
            // Everything this connection delivered has been yielded (events are yielded
            // before the body is read again), so the parser's id is the one in force.
            self.last_event_id = self.parser.last_event_id().to_owned();
        }
        if self.delivered {
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
        }
        self.delivered = false;
        if let Some(max) = self.max_attempts
            && self.failures >= max
        {
            self.state = State::Done;
            return Some(Error::GaveUp {
                attempts: self.failures,
                last: error.map(Box::new),
            });
        }
        let backoff = self.backoff.delay(self.retry, self.failures);
        let retry_in = match self.asked_wait.take() {
            Some(Asked::Exactly(asked)) => asked.min(LONGEST_ASKED_WAIT),
            Some(Asked::AtLeast(asked)) => asked.min(LONGEST_ASKED_WAIT).max(backoff),
            None => backoff,
        };
        self.state = State::Waiting(Box::pin(tokio::time::sleep(retry_in)));
        self.queue.push_back(Event::Disconnected(Disconnected {
            error,
            retry_in,
            failures: self.failures,
        }));
        None
    }

    fn feed(&mut self, chunk: &[u8]) {
        for item in self.parser.feed(chunk) {
            match item {
                Item::Event(event) => {
                    let event = self.markers.classify(event);
                    if let Event::Refused(refused) = &event {
                        self.asked_wait = Some(Asked::Exactly(refused.retry_in));
                    } else {
                        self.delivered = true;
                    }
                    self.queue.push_back(event);
                }
                Item::Retry(ms) => self.retry = Some(Duration::from_millis(ms)),
                Item::Comment(_) => {}
            }
        }
        if self.queue.is_empty() {
            // A block with an `id:` but no data dispatches nothing and still sets the id.
            self.last_event_id = self.parser.last_event_id().to_owned();
        }
    }

    /// Yields a queued event, moving the last event id along with it.
    fn pop(&mut self) -> Option<Event> {
        let event = self.queue.pop_front()?;
        match &event {
            Event::Message(m) => self.last_event_id.clone_from(&m.id),
            Event::Connected(c) => self.last_event_id.clone_from(&c.id),
            Event::Reset(r) => self.last_event_id.clone_from(&r.id),
            _ => {}
        }
        if self.queue.is_empty() && matches!(self.state, State::Reading { .. }) {
            // Everything fed has been yielded: the parser's id is ours (it also saw `id:`
            // fields of blocks without data, which dispatch nothing but set the id).
            self.last_event_id = self.parser.last_event_id().to_owned();
        }
        Some(event)
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Event, Error>>> {
        loop {
            if let Some(event) = self.pop() {
                return Poll::Ready(Some(Ok(event)));
            }
            match &mut self.state {
                State::Done => return Poll::Ready(None),
                State::Connect => {
                    self.state = State::Requesting(self.request());
                }
                State::Waiting(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    self.state = State::Connect;
                }
                State::Requesting(future) => {
                    let result = ready!(future.as_mut().poll(cx));
                    let response = match result {
                        Ok(response) => response,
                        Err(err) => {
                            if let Some(error) = self.disconnect(Some(Error::Http(err))) {
                                return Poll::Ready(Some(Err(error)));
                            }
                            continue;
                        }
                    };
                    match self.accept(&response) {
                        Ok(true) => {
                            self.parser = Parser::with_last_event_id(self.last_event_id.clone());
                            self.state = State::Reading {
                                body: Box::pin(response.bytes_stream()),
                                idle: self.idle_timeout.map(|t| Box::pin(tokio::time::sleep(t))),
                            };
                            self.queue.push_back(Event::Opened);
                        }
                        Ok(false) => {
                            let status = response.status();
                            if let Some(error) = self.disconnect(Some(Error::Status { status })) {
                                return Poll::Ready(Some(Err(error)));
                            }
                        }
                        Err(error) => {
                            self.state = State::Done;
                            return Poll::Ready(error.map(Err));
                        }
                    }
                }
                State::Reading { body, idle } => {
                    let error = match body.as_mut().poll_next(cx) {
                        Poll::Ready(Some(Ok(chunk))) => {
                            if let (Some(idle), Some(timeout)) = (idle, self.idle_timeout) {
                                idle.as_mut().reset(Instant::now() + timeout);
                            }
                            self.feed(&chunk);
                            continue;
                        }
                        Poll::Ready(Some(Err(err))) => Some(Error::Http(err)),
                        Poll::Ready(None) => None,
                        Poll::Pending => {
                            let idle_out = match idle {
                                Some(sleep) => sleep.as_mut().poll(cx).is_ready(),
                                None => false,
                            };
                            if !idle_out {
                                return Poll::Pending;
                            }
                            Some(Error::Idle(self.idle_timeout.unwrap_or_default()))
                        }
                    };
                    if let Some(error) = self.disconnect(error) {
                        return Poll::Ready(Some(Err(error)));
                    }
                }
            }
        }
    }
}

impl Stream for Client {
    type Item = Result<Event, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_step(cx)
    }
}
