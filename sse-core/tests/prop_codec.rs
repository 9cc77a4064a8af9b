//! Property tests of the SSE encoder and parser (`resumable_sse_core::codec`), the parser
//! every client of the workspace uses on bytes from the network.
//!
//! - whatever bytes arrive, in whatever pieces, the parser never panics, and the pieces do not
//!   change what it finds;
//! - encode then parse gives back every event: its name, its id, and its data (any text: CR,
//!   LF, CRLF, NUL, non-ASCII), with line breaks as SSE defines them (each of CR, LF and CRLF
//!   becomes LF, the one line break an `EventSource` can deliver);
//! - names and ids that would break the framing are refused by the encoder.
//!
//! Cases: 2 048 in all by default, `PROPTEST_CASES` (per property) for a longer campaign
//! (docs/testing.md).

// A property that fails panics with the case, as a test should.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::BytesMut;
use proptest::prelude::*;
use resumable_sse_core::codec::{self, Item, ParsedEvent, Parser};

/// `cases` per property, or `PROPTEST_CASES` when set (a long campaign).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(cases),
    )
}

/// Text with many line breaks, NULs, BOMs and multi-byte characters.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\r".to_owned()),
        Just("\n".to_owned()),
        Just("\r\n".to_owned()),
        Just("\n\r".to_owned()),
        Just("\0".to_owned()),
        Just("\u{feff}".to_owned()),
        Just(":".to_owned()),
        Just(" ".to_owned()),
        Just("data: x".to_owned()),
        "[a-z]{1,4}",
        any::<char>().prop_map(String::from),
        ".{0,8}",
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

/// A value the encoder accepts as an event name or id: 1–256 bytes without CR, LF or NUL.
fn field() -> impl Strategy<Value = String> {
    "[^\r\n\0]{1,64}".prop_filter("at most 256 bytes", |s| s.len() <= 256)
}

/// What a client must see for `data`: line breaks as LF.
fn normalised(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

/// Feeds `bytes` in pieces cut at `cuts` (positions, any order, any number).
fn parse_in_pieces(bytes: &[u8], cuts: &[usize]) -> (Vec<Item>, String) {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|c| c % (bytes.len() + 1))
        .chain([0, bytes.len()])
        .collect();
    at.sort_unstable();
    at.dedup();
    let mut parser = Parser::new();
    let mut items = Vec::new();
    for w in at.windows(2) {
        items.extend(parser.feed(&bytes[w[0]..w[1]]));
    }
    (items, parser.last_event_id().to_owned())
}

#[derive(Clone, Debug)]
struct Event {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

fn event() -> impl Strategy<Value = Event> {
    (
        proptest::option::of(field()),
        proptest::option::of(field()),
        text(),
    )
        .prop_map(|(id, event, data)| Event { id, event, data })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn any_bytes_in_any_pieces_never_panic_and_pieces_do_not_matter(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let whole = parse_in_pieces(&bytes, &[]);
        let pieces = parse_in_pieces(&bytes, &cuts);
        prop_assert_eq!(whole, pieces);
    }

    #[test]
    fn sse_like_bytes_in_any_pieces_never_panic_and_pieces_do_not_matter(
        text in text(),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let bytes = text.as_bytes();
        prop_assert_eq!(parse_in_pieces(bytes, &[]), parse_in_pieces(bytes, &cuts));
    }

    #[test]
    fn encode_then_parse_gives_back_every_event(
        events in proptest::collection::vec(event(), 1..5),
        retry in proptest::option::of(0u64..10_000_000),
        comment in proptest::option::of(text()),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let mut out = BytesMut::new();
        if let Some(ms) = retry {
            codec::write_retry(&mut out, Duration::from_millis(ms));
        }
        if let Some(comment) = &comment {
            codec::write_comment(&mut out, comment);
        }
        let mut expected = Vec::new();
        if let Some(ms) = retry {
            expected.push(Item::Retry(ms));
        }
        if let Some(comment) = &comment {
            expected.push(Item::Comment(comment.replace(['\r', '\n'], " ")));
        }
        let mut last_id = String::new();
        for e in &events {
            if let Some(id) = &e.id {
                codec::write_field(&mut out, "id", id).unwrap();
                last_id.clone_from(id);
            }
            if let Some(name) = &e.event {
                codec::write_field(&mut out, "event", name).unwrap();
            }
            codec::write_data(&mut out, &e.data);
            codec::write_end(&mut out);
            expected.push(Item::Event(ParsedEvent {
                event: e.event.clone().unwrap_or_else(|| "message".to_owned()),
                data: normalised(&e.data),
                last_event_id: last_id.clone(),
            }));
        }
        let (items, id) = parse_in_pieces(&out, &cuts);
        prop_assert_eq!(items, expected);
        prop_assert_eq!(id, last_id);
    }

    #[test]
    fn fields_that_would_break_the_framing_are_refused(
        before in "[^\r\n\0]{0,8}",
        bad in prop_oneof![Just('\r'), Just('\n'), Just('\0')],
        after in "[^\r\n\0]{0,8}",
    ) {
        let value = format!("{before}{bad}{after}");
        for name in ["id", "event"] {
            let mut out = BytesMut::new();
            prop_assert!(codec::write_field(&mut out, name, &value).is_err());
            prop_assert!(out.is_empty(), "nothing written");
        }
    }
}
