//! The vocabulary: streams, positions, epochs and events.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Error, Result, Text};

/// The place of an event in its stream: assigned by the store at append, starting at 1,
/// strictly increasing and gap-free within a stream, in commit order. `0` means "before the
/// first event".
pub type Position = u64;

/// A validated stream name: 1–128 bytes of `[A-Za-z0-9_.:/@-]`.
///
/// Cloning is cheap (a reference count).
///
/// ```
/// use resumable_sse_core::StreamName;
///
/// let news: StreamName = "news".parse()?;
/// assert_eq!(news.as_str(), "news");
/// assert!(StreamName::new("room 42").is_err()); // space is not allowed
/// assert!(StreamName::new("").is_err());
/// # Ok::<(), resumable_sse_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(Arc<str>);

impl StreamName {
    /// Longest accepted stream name, in bytes.
    ///
    /// ```
    /// use resumable_sse_core::StreamName;
    ///
    /// assert!(StreamName::new("x".repeat(StreamName::MAX_LEN)).is_ok());
    /// assert!(StreamName::new("x".repeat(StreamName::MAX_LEN + 1)).is_err());
    /// ```
    pub const MAX_LEN: usize = 128;

    /// Names starting with this byte are reserved for streams the library manages itself
    /// (a session's private stream is `@session:<id>`).
    pub const RESERVED_PREFIX: char = '@';

    /// Validates `name`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStreamName`] when the name is empty, too long or holds a byte outside
    /// `[A-Za-z0-9_.:/@-]`.
    pub fn new(name: impl AsRef<str>) -> Result<Self> {
        let name = name.as_ref();
        if name.is_empty() {
            return Err(Error::InvalidStreamName("the name is empty".into()));
        }
        if name.len() > Self::MAX_LEN {
            return Err(Error::InvalidStreamName(format!(
                "the name is {} bytes long, the limit is {}",
                name.len(),
                Self::MAX_LEN
            )));
        }
        if let Some(bad) = name.chars().find(|c| !is_name_char(*c)) {
            return Err(Error::InvalidStreamName(format!(
                "{bad:?} is not allowed; use 1-{} bytes of [A-Za-z0-9_.:/@-]",
                Self::MAX_LEN
            )));
        }
        Ok(StreamName(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `true` for names starting with `@`, which only the library itself creates
    /// (clients cannot subscribe to them by name).
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with(Self::RESERVED_PREFIX)
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '@' | '-')
}

impl fmt::Debug for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for StreamName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        StreamName::new(s)
    }
}

impl TryFrom<&str> for StreamName {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        StreamName::new(s)
    }
}

impl TryFrom<String> for StreamName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        StreamName::new(s)
    }
}

impl AsRef<str> for StreamName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// One incarnation of a stream's log. It changes when the log is lost (memory store restarted,
/// Redis flushed without persistence); a cursor from another epoch cannot be trusted and leads
/// to a reset.
///
/// ```
/// use resumable_sse_core::Epoch;
///
/// let epoch = Epoch::random();
/// let text = epoch.to_string();
/// assert_eq!(text.len(), 16);
/// assert_eq!(text.parse::<Epoch>().ok(), Some(epoch));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(u64);

impl Epoch {
    /// A fresh random epoch.
    pub fn random() -> Self {
        Epoch(rand::random())
    }

    /// The epoch with this numeric value (stores persist it as a number or its hex form).
    pub const fn from_u64(value: u64) -> Self {
        Epoch(value)
    }

    /// The numeric value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({:016x})", self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The text could not be parsed as an [`Epoch`] (16 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an epoch is 16 hex digits")]
pub struct ParseEpochError;

impl FromStr for Epoch {
    type Err = ParseEpochError;
    fn from_str(s: &str) -> Result<Self, ParseEpochError> {
        if s.len() != 16 {
            return Err(ParseEpochError);
        }
        u64::from_str_radix(s, 16)
            .map(Epoch)
            .map_err(|_| ParseEpochError)
    }
}

/// An event to publish: data, an optional event name and an optional publisher id.
///
/// The event name becomes the SSE `event:` field (without one, browsers dispatch a plain
/// `message` event). The publisher id is an idempotency key: appending an event whose id is
/// already retained in the stream appends nothing and answers the first event's position, so a
/// publisher can safely retry after a timeout. The SSE `id:` field itself always carries the
/// client's cursor, never the publisher id.
///
/// ```
/// use resumable_sse_core::NewEvent;
///
/// let event = NewEvent::new("{\"price\": 42}").with_event("tick")?.with_id("order-17")?;
/// assert_eq!(event.event(), Some("tick"));
/// assert!(NewEvent::new("x").with_event("bad\nname").is_err()); // would inject a field
/// # Ok::<(), resumable_sse_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    event: Option<Text>,
    id: Option<Text>,
    data: Text,
}

impl NewEvent {
    /// Longest accepted event name or publisher id, in bytes.
    ///
    /// ```
    /// use resumable_sse_core::NewEvent;
    ///
    /// let long = "x".repeat(NewEvent::MAX_FIELD_LEN + 1);
    /// assert!(NewEvent::new("data").with_event(&long).is_err());
    /// ```
    pub const MAX_FIELD_LEN: usize = 256;

    /// An unnamed event carrying `data` (any UTF-8; line breaks are encoded as several
    /// `data:` lines and restored by the client).
    pub fn new(data: impl Into<String>) -> Self {
        NewEvent {
            event: None,
            id: None,
            data: Text::from(data.into()),
        }
    }

    /// Sets the SSE event name.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidField`] when the name is empty, longer than 256 bytes or holds CR, LF
    /// or NUL.
    pub fn with_event(mut self, name: impl AsRef<str>) -> Result<Self> {
        self.event = Some(Text::from(validate_field("event", name.as_ref())?));
        Ok(self)
    }

    /// Sets the publisher id (an idempotency key within the stream's retained history).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidField`] when the id is empty, longer than 256 bytes or holds CR, LF
    /// or NUL.
    pub fn with_id(mut self, id: impl AsRef<str>) -> Result<Self> {
        self.id = Some(Text::from(validate_field("id", id.as_ref())?));
        Ok(self)
    }

    /// The event name, if any.
    pub fn event(&self) -> Option<&str> {
        self.event.as_deref()
    }

    /// The publisher id, if any.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The data.
    pub fn data(&self) -> &str {
        &self.data
    }

    /// Turns this into a stored [`Event`] at `position` of `stream`, stamped with `time`.
    /// Stores call this when they assign the position.
    pub fn into_event(self, stream: StreamName, position: Position, time: SystemTime) -> Event {
        Event {
            stream,
            position,
            event: self.event,
            id: self.id,
            data: self.data,
            time_ms: unix_ms(time),
        }
    }
}

/// Checks an SSE field value (event name or id) for characters that would break the framing.
pub(crate) fn validate_field<'a>(field: &'static str, value: &'a str) -> Result<&'a str> {
    if value.is_empty() {
        return Err(Error::InvalidField {
            field,
            reason: "it is empty",
        });
    }
    if value.len() > NewEvent::MAX_FIELD_LEN {
        return Err(Error::InvalidField {
            field,
            reason: "it is longer than 256 bytes",
        });
    }
    if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(Error::InvalidField {
            field,
            reason: "it contains CR, LF or NUL",
        });
    }
    Ok(value)
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `SystemTime` `ms` milliseconds after the Unix epoch.
pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A stored event. Cloning is cheap (reference counts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The stream it belongs to.
    pub stream: StreamName,
    /// Its position in the stream.
    pub position: Position,
    /// The SSE event name, if any.
    pub event: Option<Text>,
    /// The publisher id, if any.
    pub id: Option<Text>,
    /// The data.
    pub data: Text,
    /// When it was appended, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// What an append produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The stream's epoch.
    pub epoch: Epoch,
    /// The event's position.
    pub position: Position,
    /// `true` when the publisher id was already retained: nothing was appended and `position`
    /// is the earlier event's.
    pub duplicate: bool,
}

/// One page of a stream's history, with what the caller needs to detect a gap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadPage {
    /// The stream's epoch; `None` when the stream does not exist (nothing was ever appended, or
    /// its log was lost and nothing has been appended since).
    pub epoch: Option<Epoch>,
    /// Position of the oldest retained event, or `head + 1` when none is retained.
    pub oldest: Position,
    /// Position of the newest event ever appended in this epoch (`0` for none).
    pub head: Position,
    /// Events after the requested position, oldest first, at most the requested limit.
    pub events: Vec<Event>,
}

impl ReadPage {
    /// The page of a stream that does not exist.
    pub fn missing() -> Self {
        ReadPage {
            epoch: None,
            oldest: 1,
            head: 0,
            events: Vec::new(),
        }
    }
}

/// How much history a store keeps per stream: at most `max_len` events, none older than
/// `max_age`, and no more than `max_bytes` of event data (the newest event is kept whatever
/// its size).
///
/// ```
/// use std::time::Duration;
/// use resumable_sse_core::Retention;
///
/// let retention = Retention::default();
/// assert_eq!(retention.max_len(), 1000);
/// assert_eq!(retention.max_age(), Duration::from_secs(3600));
/// assert_eq!(retention.max_bytes(), 16 << 20);
///
/// let small = Retention::new(1000, Duration::from_secs(60)).with_max_bytes(1 << 20);
/// assert_eq!(small.max_bytes(), 1 << 20);
///
/// // A store always keeps at least the newest event.
/// assert_eq!(Retention::new(0, Duration::from_secs(60)).max_len(), 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    max_len: usize,
    max_age: Duration,
    max_bytes: usize,
}

impl Retention {
    /// Keeps at most `max_len` events per stream (at least 1 is used), none older than
    /// `max_age`, at most [`Retention::DEFAULT_MAX_BYTES`] of data.
    pub const fn new(max_len: usize, max_age: Duration) -> Self {
        Retention {
            max_len: if max_len == 0 { 1 } else { max_len },
            max_age,
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }

    /// The default of [`Retention::max_bytes`]: 16 MiB per stream.
    pub const DEFAULT_MAX_BYTES: usize = 16 << 20;

    /// Keeps at most `max_bytes` of event data per stream (the sum of the events' `data`
    /// lengths; at least 1 is used). The newest event is always kept, even when it alone is
    /// larger.
    #[must_use]
    pub const fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = if max_bytes == 0 { 1 } else { max_bytes };
        self
    }

    /// Events kept per stream (default 1000; never 0).
    pub const fn max_len(&self) -> usize {
        self.max_len
    }

    /// Age after which an event is dropped (default one hour).
    pub const fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Bytes of event data kept per stream (default 16 MiB; never 0).
    pub const fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

impl Default for Retention {
    fn default() -> Self {
        Retention::new(1000, Duration::from_secs(3600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names() {
        for ok in ["a", "room:42", "a/b.c@d-e_f", &"x".repeat(128)] {
            assert!(StreamName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "é", "a\n", &"x".repeat(129), "a\0"] {
            assert!(
                matches!(StreamName::new(bad), Err(Error::InvalidStreamName(_))),
                "{bad:?}"
            );
        }
        assert!(StreamName::new("@session:1").unwrap().is_reserved());
    }

    #[test]
    fn fields_reject_framing_bytes() {
        for bad in ["a\rb", "a\nb", "a\0b", "", &"x".repeat(257)] {
            assert!(NewEvent::new("d").with_event(bad).is_err(), "{bad:?}");
            assert!(NewEvent::new("d").with_id(bad).is_err(), "{bad:?}");
        }
        assert!(NewEvent::new("d").with_event("ok:type").is_ok());
    }
}
