//! The one SSE encoder and the one SSE parser, exact to the WHATWG HTML rules for
//! `text/event-stream`.
//!
//! Encoding splits data on CR, LF and CRLF into separate `data:` lines (so a client
//! reassembles it with LF line breaks) and refuses event names and ids holding CR, LF or NUL
//! instead of letting them inject fields. The parser implements the specification's
//! "interpret an event stream" algorithm byte by byte and is what tests, benches and clients use.
//!
//! ```
//! use bytes::BytesMut;
//! use resumable_sse_core::codec::{self, Parser, Item};
//!
//! let mut out = BytesMut::new();
//! codec::write_field(&mut out, "id", "7")?;
//! codec::write_field(&mut out, "event", "tick")?;
//! codec::write_data(&mut out, "line one\r\nline two");
//! codec::write_end(&mut out);
//! assert_eq!(&out[..], b"id: 7\nevent: tick\ndata: line one\ndata: line two\n\n");
//!
//! let mut parser = Parser::new();
//! let items = parser.feed(&out);
//! let Item::Event(event) = &items[0] else { panic!() };
//! assert_eq!(event.event, "tick");
//! assert_eq!(event.data, "line one\nline two");
//! assert_eq!(event.last_event_id, "7");
//! # Ok::<(), resumable_sse_core::Error>(())
//! ```

use std::time::Duration;

use bytes::{BufMut, BytesMut};

use crate::Result;
use crate::types::validate_field;

/// Writes `data` as one `data:` line per line of it, splitting on CRLF, CR and LF.
pub fn write_data(out: &mut BytesMut, data: &str) {
    let bytes = data.as_bytes();
    out.reserve(bytes.len() + 8);
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                put_data_line(out, &bytes[start..i]);
                i += 1;
                start = i;
            }
            b'\r' => {
                put_data_line(out, &bytes[start..i]);
                i += if bytes.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            }
            _ => i += 1,
        }
    }
    put_data_line(out, &bytes[start..]);
}

fn put_data_line(out: &mut BytesMut, line: &[u8]) {
    out.put_slice(b"data: ");
    out.put_slice(line);
    out.put_u8(b'\n');
}

/// Writes `name: value`.
///
/// # Errors
///
/// [`Error::InvalidField`](crate::Error::InvalidField) when `value` is empty, longer than
/// 256 bytes or holds CR, LF or NUL: it would break the framing.
pub fn write_field(out: &mut BytesMut, name: &'static str, value: &str) -> Result<()> {
    let value = validate_field(name, value)?;
    put_field_unchecked(out, name, value);
    Ok(())
}

/// Writes `name: value` for a value the caller has already validated.
pub(crate) fn put_field_unchecked(out: &mut BytesMut, name: &str, value: &str) {
    out.reserve(name.len() + value.len() + 3);
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_u8(b'\n');
}

/// Writes `retry: <milliseconds>`.
pub fn write_retry(out: &mut BytesMut, retry: Duration) {
    let ms = retry.as_millis().to_string();
    put_field_unchecked(out, "retry", &ms);
}

/// Writes a comment line. Line breaks in `text` are replaced by spaces.
pub fn write_comment(out: &mut BytesMut, text: &str) {
    out.put_u8(b':');
    if !text.is_empty() {
        out.put_u8(b' ');
        for b in text.bytes() {
            out.put_u8(if matches!(b, b'\r' | b'\n') { b' ' } else { b });
        }
    }
    out.put_u8(b'\n');
}

/// Ends an event (the blank line that makes the client dispatch it).
pub fn write_end(out: &mut BytesMut) {
    out.put_u8(b'\n');
}

/// One dispatched event, as a browser's `EventSource` would see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedEvent {
    /// The event type (`message` when the stream named none).
    pub event: String,
    /// The data, lines joined with LF.
    pub data: String,
    /// The last event id in effect at dispatch (it carries over from earlier events).
    pub last_event_id: String,
}

/// What the parser found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A dispatched event.
    Event(ParsedEvent),
    /// A valid `retry:` field, in milliseconds.
    Retry(u64),
    /// A comment line (without the colon and one leading space).
    Comment(String),
}

/// An incremental `text/event-stream` parser. Feed it bytes as they arrive, in chunks of any
/// size; it keeps partial lines between calls.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    after_cr: bool,
    started: bool,
    data: String,
    event: String,
    last_event_id: String,
    id_buffer: String,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Parser::default()
    }

    /// A parser for a reconnection of a client whose last event id is `last_event_id`.
    ///
    /// The specification keeps the last event id across connections of one `EventSource`:
    /// events of the new stream that carry no `id:` field report this one, until the stream
    /// sets another (an empty `id:` clears it).
    ///
    /// ```
    /// use resumable_sse_core::codec::{Item, Parser};
    ///
    /// let mut parser = Parser::with_last_event_id("41");
    /// let items = parser.feed(b"data: no id here\n\n");
    /// let Item::Event(event) = &items[0] else { panic!() };
    /// assert_eq!(event.last_event_id, "41");
    /// ```
    pub fn with_last_event_id(last_event_id: impl Into<String>) -> Self {
        let last_event_id = last_event_id.into();
        Parser {
            id_buffer: last_event_id.clone(),
            last_event_id,
            ..Parser::default()
        }
    }

    /// The last event id as of the last dispatched event: what a browser sends back as
    /// `Last-Event-ID` if the connection drops now.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Feeds bytes; returns what became complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Item> {
        let mut items = Vec::new();
        self.push_bytes(bytes, &mut items);
        items
    }

    fn push_bytes(&mut self, bytes: &[u8], items: &mut Vec<Item>) {
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' => self.end_line(items),
                b'\r' => {
                    self.end_line(items);
                    self.after_cr = true;
                }
                _ => self.line.push(b),
            }
        }
    }

    fn end_line(&mut self, items: &mut Vec<Item>) {
        let raw = std::mem::take(&mut self.line);
        let mut raw = &raw[..];
        if !self.started {
            // A UTF-8 BOM is dropped once, at the very start of the stream.
            self.started = true;
            raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
        }
        let line = String::from_utf8_lossy(raw);
        if line.is_empty() {
            self.dispatch(items);
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            items.push(Item::Comment(
                comment.strip_prefix(' ').unwrap_or(comment).to_owned(),
            ));
            return;
        }
        let (name, value) = match line.find(':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (&line[..], ""),
        };
        match name {
            "event" => self.event = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            // An id holding NUL is ignored as a whole.
            "id" if !value.contains('\0') => self.id_buffer = value.to_owned(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    items.push(Item::Retry(ms));
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, items: &mut Vec<Item>) {
        self.last_event_id.clone_from(&self.id_buffer);
        if self.data.is_empty() {
            self.event.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let event = std::mem::take(&mut self.event);
        items.push(Item::Event(ParsedEvent {
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
            last_event_id: self.last_event_id.clone(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn events(bytes: &[u8]) -> Vec<ParsedEvent> {
        Parser::new()
            .feed(bytes)
            .into_iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn spec_examples() {
        // From the WHATWG examples: two data lines, a trailing-colon field, a lone "data".
        let e = events(b"data: YHOO\ndata: +2\ndata: 10\n\n");
        assert_eq!(e[0].data, "YHOO\n+2\n10");
        let e = events(b"data\n\ndata\ndata\n\ndata:\n");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].data, "");
        assert_eq!(e[1].data, "\n");
        let e = events(b"data:test\n\ndata: test\n\n");
        assert_eq!(e[0].data, "test");
        assert_eq!(e[1].data, "test");
    }

    #[test]
    fn line_endings_and_bom() {
        let e = events(b"\xEF\xBB\xBFid: 1\r\nevent: a\rdata: x\r\n\r\n");
        assert_eq!(e[0].event, "a");
        assert_eq!(e[0].data, "x");
        assert_eq!(e[0].last_event_id, "1");
    }

    #[test]
    fn id_with_nul_is_ignored_and_ids_carry_over() {
        let e = events(b"id: 5\ndata: a\n\nid: x\0y\ndata: b\n\n");
        assert_eq!(e[1].last_event_id, "5");
    }

    #[test]
    fn seeded_id_carries_over_until_cleared() {
        let mut p = Parser::with_last_event_id("9");
        assert_eq!(p.last_event_id(), "9");
        let got = p.feed(b"data: a\n\nid\ndata: b\n\n");
        let ids: Vec<_> = got
            .iter()
            .map(|i| match i {
                Item::Event(e) => e.last_event_id.as_str(),
                _ => panic!("{i:?}"),
            })
            .collect();
        assert_eq!(ids, ["9", ""]);
    }

    #[test]
    fn retry_and_comments() {
        let items = Parser::new().feed(b"retry: 1500\nretry: x\n: hi\n\n");
        assert_eq!(items, vec![Item::Retry(1500), Item::Comment("hi".into())]);
    }

    #[test]
    fn split_crlf_across_chunks() {
        let mut p = Parser::new();
        let mut got = p.feed(b"data: a\r");
        got.extend(p.feed(b"\n\r"));
        got.extend(p.feed(b"\n"));
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn encoder_refuses_injection() {
        let mut out = BytesMut::new();
        assert!(write_field(&mut out, "event", "a\nid: 1").is_err());
        assert!(write_field(&mut out, "id", "a\0").is_err());
        assert!(out.is_empty());
    }

    proptest! {
        #[test]
        fn encode_then_parse_is_identity(data in any::<String>(), event in "[a-z:_]{1,10}", chunk in 1usize..17) {
            let mut out = BytesMut::new();
            write_field(&mut out, "event", &event).unwrap();
            write_data(&mut out, &data);
            write_end(&mut out);
            let mut parser = Parser::new();
            let mut got = Vec::new();
            for piece in out.chunks(chunk) {
                got.extend(parser.feed(piece));
            }
            let expected = data.replace("\r\n", "\n").replace('\r', "\n");
            prop_assert_eq!(got, vec![Item::Event(ParsedEvent { event, data: expected, last_event_id: String::new() })]);
        }

        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Parser::new().feed(&bytes);
        }
    }
}
