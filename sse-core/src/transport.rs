//! [`Transport`]: how protocol frames become bytes on one kind of wire.
//!
//! The trait's docs show a complete implementation.

use std::fmt::Debug;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use crate::Event;
use crate::codec;

/// A protocol frame other than a published event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame<'a> {
    /// The reconnection delay the client should use.
    Retry(Duration),
    /// The first frame of every response: the starting cursor and a JSON description
    /// (session, resumed, replay count, reset).
    Connected {
        /// The cursor the client resumes from if it disconnects right now.
        id: &'a str,
        /// JSON object text.
        data: &'a str,
    },
    /// Continuity could not be kept: JSON naming the streams and the reason.
    Reset {
        /// The cursor after the reset.
        id: &'a str,
        /// JSON object text.
        data: &'a str,
    },
    /// Keeps idle connections (and the proxies on their way) alive.
    Heartbeat,
    /// The server ends the connection for a reason the client should know (JSON with
    /// `reason`: `authorization_expired` when the client's credentials expired). Carries no
    /// id: the client resumes from its last event's. Followed by [`Frame::Close`].
    Ended {
        /// JSON object text.
        data: &'a str,
    },
    /// The server refuses the request (a connection cap, a rate limit, overload): JSON with
    /// `reason` and `retry_ms`, the delay the client should wait. Carries no id, so the
    /// client keeps its cursor and resumes from it when it comes back. Written after a
    /// [`Frame::Retry`] with the same delay, as the only event of the response.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use resumable_sse_core::{Frame, SseTransport, Transport};
    /// use std::time::Duration;
    ///
    /// let mut out = BytesMut::new();
    /// let sse = SseTransport::default();
    /// sse.write_frame(&mut out, &Frame::Retry(Duration::from_millis(5000)));
    /// sse.write_frame(&mut out, &Frame::Refused { data: r#"{"retry_ms":5000}"# });
    /// assert_eq!(&out[..], b"retry: 5000\nevent: refused\ndata: {\"retry_ms\":5000}\n\n");
    /// ```
    Refused {
        /// JSON object text.
        data: &'a str,
    },
    /// The server ends the response; `retry` asks the client to wait that long before
    /// reconnecting (server-driven backoff).
    Close {
        /// The delay to ask for.
        retry: Option<Duration>,
    },
}

/// Turns frames into bytes for one kind of wire.
///
/// The engine speaks in frames (retry hint, `connected`, events, `reset`, heartbeat, close);
/// a transport turns them into bytes. [`SseTransport`] is the `text/event-stream` one that
/// ships. Events are encoded in two parts so the engine encodes each event once per process:
/// the body (everything but the id) is shared by every connection, and only the per-connection
/// cursor is written for each.
///
/// # Writing a transport
///
/// A complete transport writing one JSON object per line (NDJSON), as a long-poll or fetch
/// streaming endpoint might:
///
/// ```
/// use bytes::{BufMut, Bytes, BytesMut};
/// use resumable_sse_core::{Event, Frame, Transport};
///
/// #[derive(Debug)]
/// struct Ndjson;
///
/// impl Transport for Ndjson {
///     fn content_type(&self) -> &'static str { "application/x-ndjson" }
///     fn encode_body(&self, event: &Event) -> Bytes {
///         let value = serde_json::json!({"event": event.event.as_deref(), "data": &*event.data});
///         Bytes::from(value.to_string())
///     }
///     fn write_event(&self, out: &mut BytesMut, id: &str, body: &[u8]) {
///         out.put_slice(format!("{{\"id\":\"{id}\",\"body\":").as_bytes());
///         out.put_slice(body);
///         out.put_slice(b"}\n");
///     }
///     fn write_frame(&self, out: &mut BytesMut, frame: &Frame<'_>) {
///         let line = match frame {
///             Frame::Connected { id, data } => serde_json::json!({"id": id, "connected": data}),
///             Frame::Reset { id, data } => serde_json::json!({"id": id, "reset": data}),
///             Frame::Heartbeat => serde_json::json!({}),
///             _ => return, // retry hints and close have no NDJSON form
///         };
///         out.put_slice(line.to_string().as_bytes());
///         out.put_u8(b'\n');
///     }
/// }
///
/// let mut out = BytesMut::new();
/// Ndjson.write_frame(&mut out, &Frame::Heartbeat);
/// assert_eq!(&out[..], b"{}\n");
/// ```
pub trait Transport: Debug + Send + Sync + 'static {
    /// The media type of the response body.
    fn content_type(&self) -> &'static str;

    /// Encodes everything of `event` except its per-connection id. Called once per event per
    /// process; the bytes are shared by every connection.
    fn encode_body(&self, event: &Event) -> Bytes;

    /// Writes one event for one connection: its id (the connection's cursor after this event)
    /// and the shared body from [`encode_body`](Transport::encode_body).
    fn write_event(&self, out: &mut BytesMut, id: &str, body: &[u8]);

    /// Writes a control frame.
    fn write_frame(&self, out: &mut BytesMut, frame: &Frame<'_>);
}

/// Server-Sent Events (`text/event-stream`), with configurable marker event names.
///
/// ```
/// use bytes::BytesMut;
/// use resumable_sse_core::{Frame, SseTransport, Transport};
///
/// let sse = SseTransport::default();
/// let mut out = BytesMut::new();
/// sse.write_frame(&mut out, &Frame::Connected { id: "AQ", data: "{}" });
/// assert_eq!(&out[..], b"id: AQ\nevent: connected\ndata: {}\n\n");
///
/// // Markers switched off: the id still reaches the client, without an event to dispatch.
/// let quiet = SseTransport::default().with_connected_event(None)?;
/// let mut out = BytesMut::new();
/// quiet.write_frame(&mut out, &Frame::Connected { id: "AQ", data: "{}" });
/// assert_eq!(&out[..], b"id: AQ\n\n");
/// # Ok::<(), resumable_sse_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SseTransport {
    connected: Option<String>,
    reset: Option<String>,
}

impl Default for SseTransport {
    fn default() -> Self {
        SseTransport {
            connected: Some("connected".into()),
            reset: Some("reset".into()),
        }
    }
}

impl SseTransport {
    /// Names the `connected` marker event, or switches it off with `None`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidField`](crate::Error::InvalidField) for a name holding CR, LF or NUL.
    pub fn with_connected_event(mut self, name: Option<&str>) -> crate::Result<Self> {
        self.connected = name
            .map(|n| crate::types::validate_field("event", n).map(str::to_owned))
            .transpose()?;
        Ok(self)
    }

    /// Names the `reset` marker event, or switches it off with `None`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidField`](crate::Error::InvalidField) for a name holding CR, LF or NUL.
    pub fn with_reset_event(mut self, name: Option<&str>) -> crate::Result<Self> {
        self.reset = name
            .map(|n| crate::types::validate_field("event", n).map(str::to_owned))
            .transpose()?;
        Ok(self)
    }

    fn marker(out: &mut BytesMut, id: &str, name: Option<&str>, data: &str) {
        codec::put_field_unchecked(out, "id", id);
        if let Some(name) = name {
            codec::put_field_unchecked(out, "event", name);
            codec::write_data(out, data);
        }
        codec::write_end(out);
    }
}

impl Transport for SseTransport {
    fn content_type(&self) -> &'static str {
        "text/event-stream"
    }

    fn encode_body(&self, event: &Event) -> Bytes {
        let mut out = BytesMut::with_capacity(event.data.len() + 16);
        if let Some(name) = &event.event {
            // Validated when the event was created.
            codec::put_field_unchecked(&mut out, "event", name);
        }
        codec::write_data(&mut out, &event.data);
        codec::write_end(&mut out);
        out.freeze()
    }

    fn write_event(&self, out: &mut BytesMut, id: &str, body: &[u8]) {
        out.reserve(id.len() + body.len() + 5);
        codec::put_field_unchecked(out, "id", id);
        out.put_slice(body);
    }

    fn write_frame(&self, out: &mut BytesMut, frame: &Frame<'_>) {
        match frame {
            Frame::Retry(retry) => codec::write_retry(out, *retry),
            Frame::Connected { id, data } => Self::marker(out, id, self.connected.as_deref(), data),
            Frame::Reset { id, data } => Self::marker(out, id, self.reset.as_deref(), data),
            Frame::Heartbeat => {
                codec::write_comment(out, "");
                codec::write_end(out);
            }
            Frame::Ended { data } => {
                let _ = codec::write_field(out, "event", "ended");
                codec::write_data(out, data);
                codec::write_end(out);
            }
            Frame::Refused { data } => {
                let _ = codec::write_field(out, "event", "refused");
                codec::write_data(out, data);
                codec::write_end(out);
            }
            Frame::Close { retry } => {
                if let Some(retry) = retry {
                    codec::write_retry(out, *retry);
                    codec::write_end(out);
                }
            }
        }
    }
}
