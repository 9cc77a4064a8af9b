//! What the client yields: messages, the resume markers of a resumable-sse server, and
//! connection state.

use std::time::Duration;

use resumable_sse_core::codec::ParsedEvent;
use serde::Deserialize;

use crate::Error;

/// One item of the client's stream.
///
/// Any SSE server produces [`Message`](Event::Message)s, [`Opened`](Event::Opened) and
/// [`Disconnected`](Event::Disconnected); a resumable-sse server also sends the markers
/// [`Connected`](Event::Connected) and [`Reset`](Event::Reset). An event that is named like a
/// marker but whose data is not a marker's JSON is an ordinary message, so a foreign server
/// loses nothing.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A response opened (status 200, `text/event-stream`): events follow.
    Opened,
    /// An event of the stream, as `EventSource` would dispatch it.
    Message(Message),
    /// A resumable-sse server's first event on every connection.
    Connected(Connected),
    /// Continuity was lost for some streams: refetch the state built from them.
    Reset(Reset),
    /// The server is ending the connection for a reason it names (`authorization_expired`:
    /// the credentials the connection was opened with have expired; come back with fresh
    /// ones). The response ends next; the cursor is unchanged, so the next connection
    /// resumes exactly.
    Ended(Ended),
    /// The server refused the connection for now (a limit, an overload, a store outage) and
    /// said when to come back: the response ends next, and the client waits
    /// [`Refused::retry_in`] before it tries again. Nothing is lost: the cursor is unchanged.
    Refused(Refused),
    /// The connection ended or could not be made; the client reconnects after
    /// [`Disconnected::retry_in`].
    Disconnected(Disconnected),
}

/// An event of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The event type: the `event:` field, `message` when the server sent none.
    pub event: String,
    /// The data, lines joined with LF.
    pub data: String,
    /// The last event id in effect when it arrived (ids carry over to later events), empty
    /// when there is none.
    pub id: String,
}

impl Message {
    /// The data parsed as JSON.
    ///
    /// # Errors
    ///
    /// When the data is not JSON of type `T`.
    ///
    /// ```
    /// # use resumable_sse_client::Message;
    /// let message = Message { event: "price".into(), data: r#"{"eur": 42}"#.into(), id: "7".into() };
    /// let price: serde_json::Value = message.json()?;
    /// assert_eq!(price["eur"], 42);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(&self.data)
    }
}

impl From<ParsedEvent> for Message {
    fn from(event: ParsedEvent) -> Self {
        Message {
            event: event.event,
            data: event.data,
            id: event.last_event_id,
        }
    }
}

/// The `connected` marker: how the server took this connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Connected {
    /// The session id (not its token: the id is what `POST /publish {"session": …}`
    /// addresses). `None` when the server runs without sessions.
    pub session: Option<String>,
    /// `true` when the connection continues from an earlier cursor.
    pub resumed: bool,
    /// How many events the server replays before live delivery.
    pub replay: u64,
    /// `true` when some stream was reset: [`Reset`] events follow.
    pub reset: bool,
    /// The cursor the connection starts from (the marker's `id:`).
    pub id: String,
}

/// The `reset` marker: the server could not keep continuity for these streams.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reset {
    /// Why.
    pub reason: ResetReason,
    /// The streams concerned.
    pub streams: Vec<String>,
    /// The last event id after the marker.
    pub id: String,
}

/// Why a [`Reset`] happened (docs/protocol.md, "Resets").
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResetReason {
    /// The cursor was older than the oldest retained event.
    Retention,
    /// The stream's log was lost and started again.
    EpochChanged,
    /// The session expired after it was sent messages the client can no longer receive.
    SessionExpired,
    /// The client came back without its session token after its session was sent messages.
    SessionChanged,
    /// The `Last-Event-ID` was not a cursor for these streams.
    InvalidId,
    /// A reason this version does not know, as sent.
    Other(String),
}

impl ResetReason {
    fn parse(reason: String) -> Self {
        match reason.as_str() {
            "retention" => ResetReason::Retention,
            "epoch_changed" => ResetReason::EpochChanged,
            "session_expired" => ResetReason::SessionExpired,
            "session_changed" => ResetReason::SessionChanged,
            "invalid_id" => ResetReason::InvalidId,
            _ => ResetReason::Other(reason),
        }
    }

    /// The name on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ResetReason::Retention => "retention",
            ResetReason::EpochChanged => "epoch_changed",
            ResetReason::SessionExpired => "session_expired",
            ResetReason::SessionChanged => "session_changed",
            ResetReason::InvalidId => "invalid_id",
            ResetReason::Other(reason) => reason,
        }
    }
}

/// The server's `ended` marker.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ended {
    /// Why, as sent (`authorization_expired`).
    pub reason: String,
}

/// The server's `refused` marker: `{"reason": …, "retry_ms": …}`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refused {
    /// Why, as sent (`max_connections_per_ip`, `connect_rate`, `store_unavailable`, …).
    pub reason: String,
    /// When to come back, as the server asked (it grows and is jittered per client).
    pub retry_in: Duration,
}

/// A connection ended or could not be made.
#[derive(Debug)]
#[non_exhaustive]
pub struct Disconnected {
    /// What went wrong; `None` when the server ended the response.
    pub error: Option<Error>,
    /// How long the client waits before the next attempt.
    pub retry_in: Duration,
    /// How many attempts in a row (this one included) got no event (0 when the connection
    /// delivered events before it ended).
    pub failures: u32,
}

/// The wire form of the `connected` data. Only `resumed` and `reset` are required, so that
/// a foreign `connected` event stays a message.
#[derive(Deserialize)]
struct ConnectedData {
    #[serde(default)]
    session: Option<String>,
    resumed: bool,
    #[serde(default)]
    replay: u64,
    reset: bool,
}

#[derive(Deserialize)]
struct EndedData {
    reason: String,
}

#[derive(Deserialize)]
struct RefusedData {
    reason: String,
    retry_ms: u64,
}

#[derive(Deserialize)]
struct ResetData {
    reason: String,
    streams: Vec<String>,
}

/// The marker event names the client recognises (`None`: that marker is not recognised).
#[derive(Clone, Debug)]
pub(crate) struct Markers {
    pub(crate) connected: Option<String>,
    pub(crate) reset: Option<String>,
}

impl Default for Markers {
    fn default() -> Self {
        Markers {
            connected: Some("connected".to_owned()),
            reset: Some("reset".to_owned()),
        }
    }
}

impl Markers {
    /// Turns a dispatched event into a marker when it is one, else a message.
    pub(crate) fn classify(&self, event: ParsedEvent) -> Event {
        if self.connected.as_deref() == Some(event.event.as_str())
            && let Ok(data) = serde_json::from_str::<ConnectedData>(&event.data)
        {
            return Event::Connected(Connected {
                session: data.session,
                resumed: data.resumed,
                replay: data.replay,
                reset: data.reset,
                id: event.last_event_id,
            });
        }
        if self.reset.as_deref() == Some(event.event.as_str())
            && let Ok(data) = serde_json::from_str::<ResetData>(&event.data)
        {
            return Event::Reset(Reset {
                reason: ResetReason::parse(data.reason),
                streams: data.streams,
                id: event.last_event_id,
            });
        }
        if event.event == "ended"
            && let Ok(data) = serde_json::from_str::<EndedData>(&event.data)
        {
            return Event::Ended(Ended {
                reason: data.reason,
            });
        }
        if event.event == "refused"
            && let Ok(data) = serde_json::from_str::<RefusedData>(&event.data)
        {
            return Event::Refused(Refused {
                reason: data.reason,
                retry_in: Duration::from_millis(data.retry_ms),
            });
        }
        Event::Message(event.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(event: &str, data: &str) -> ParsedEvent {
        ParsedEvent {
            event: event.into(),
            data: data.into(),
            last_event_id: "id1".into(),
        }
    }

    #[test]
    fn markers_and_foreign_lookalikes() {
        let m = Markers::default();
        let Event::Connected(c) = m.classify(parsed(
            "connected",
            r#"{"session":"s1","resumed":true,"replay":3,"reset":false}"#,
        )) else {
            panic!()
        };
        assert_eq!(
            (
                c.session.as_deref(),
                c.resumed,
                c.replay,
                c.reset,
                c.id.as_str()
            ),
            (Some("s1"), true, 3, false, "id1")
        );
        let Event::Reset(r) = m.classify(parsed(
            "reset",
            r#"{"reason":"epoch_changed","streams":["a","b"]}"#,
        )) else {
            panic!()
        };
        assert_eq!(r.reason, ResetReason::EpochChanged);
        assert_eq!(r.streams, ["a", "b"]);
        let Event::Reset(r) = m.classify(parsed("reset", r#"{"reason":"new","streams":[]}"#))
        else {
            panic!()
        };
        assert_eq!(r.reason.as_str(), "new");
        for (name, data) in [
            ("connected", "hello"),
            ("connected", r#"{"user":1}"#),
            ("reset", r#"{"reason":"x"}"#),
            ("message", r#"{"resumed":true,"reset":false}"#),
        ] {
            assert!(
                matches!(m.classify(parsed(name, data)), Event::Message(ref msg) if msg.data == data),
                "{name} {data}"
            );
        }
        let Event::Ended(e) = m.classify(parsed("ended", r#"{"reason":"authorization_expired"}"#))
        else {
            panic!()
        };
        assert_eq!(e.reason, "authorization_expired");
        assert!(matches!(
            m.classify(parsed("ended", "bye")),
            Event::Message(_)
        ));
        let Event::Refused(r) = m.classify(parsed(
            "refused",
            r#"{"reason":"max_connections_per_ip","retry_ms":4500}"#,
        )) else {
            panic!()
        };
        assert_eq!(
            (r.reason.as_str(), r.retry_in),
            ("max_connections_per_ip", Duration::from_millis(4500))
        );
        assert!(matches!(
            m.classify(parsed("refused", r#"{"reason":"busy"}"#)),
            Event::Message(_)
        ));
        let off = Markers {
            connected: None,
            reset: None,
        };
        assert!(matches!(
            off.classify(parsed("reset", r#"{"reason":"x","streams":[]}"#)),
            Event::Message(_)
        ));
    }
}
