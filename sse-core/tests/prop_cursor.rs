//! Property tests of cursor ids (`resumable_sse_core::cursor`), which come back from clients
//! in `Last-Event-ID` and the `lastEventId` parameter: anything a client sends.
//!
//! - decoding any text, or any bytes in the cursor alphabet, never panics;
//! - encode then decode is the identity, for any entries, epochs, positions and session;
//! - only the canonical text decodes (one cursor, one id), and a cursor never decodes for
//!   another stream set.
//!
//! Cases: 512 per property by default, `PROPTEST_CASES` for a longer campaign
//! (docs/testing.md).

// A property that fails panics with the case, as a test should.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use resumable_sse_core::cursor::{Cursor, CursorError};
use resumable_sse_core::{Epoch, SessionId, StreamName};

/// `cases` per property, or `PROPTEST_CASES` when set (a long campaign).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(cases),
    )
}

fn names(n: usize) -> Vec<StreamName> {
    let mut names: Vec<StreamName> = (0..n)
        .map(|i| StreamName::new(format!("s{i}")).unwrap())
        .collect();
    names.sort();
    names
}

/// One entry: a stream that did not exist yet (position 0), or an epoch from a few (so that
/// repeated epochs, written once, are common) or any, and any position.
fn entry() -> impl Strategy<Value = (Option<Epoch>, u64)> {
    let epoch = prop_oneof![(0u64..3), any::<u64>()].prop_map(Epoch::from_u64);
    let position = prop_oneof![0u64..300, any::<u64>()];
    prop_oneof![
        1 => Just((None, 0)),
        4 => (epoch, position).prop_map(|(e, p)| (Some(e), p)),
    ]
}

/// A cursor as the engine makes them, and its stream set.
fn cursor() -> impl Strategy<Value = (Cursor, Vec<StreamName>)> {
    (
        proptest::collection::vec(entry(), 1..20),
        proptest::option::of(any::<[u8; 16]>()),
    )
        .prop_map(|(entries, session)| match session {
            Some(id) => {
                let streams = names(entries.len() - 1);
                (
                    Cursor::with_session(entries, SessionId::from_bytes(id)),
                    streams,
                )
            }
            None => {
                let streams = names(entries.len());
                (Cursor::new(entries), streams)
            }
        })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn any_text_decodes_or_errs(id in "\\PC{0,64}|.{0,3000}", n in 0usize..4) {
        let _ = Cursor::decode(&id, &names(n));
    }

    #[test]
    fn any_bytes_decode_or_err(raw in proptest::collection::vec(any::<u8>(), 0..300), n in 0usize..4) {
        let _ = Cursor::decode(&URL_SAFE_NO_PAD.encode(&raw), &names(n));
        // Valid headers with garbage after them reach the entry decoder.
        let mut framed = vec![1u8];
        framed.extend_from_slice(&raw);
        let _ = Cursor::decode(&URL_SAFE_NO_PAD.encode(&framed), &names(n));
    }

    #[test]
    fn encode_then_decode_is_the_identity((cursor, streams) in cursor()) {
        let id = cursor.encode(&streams);
        prop_assert_eq!(Cursor::decode(&id, &streams), Ok(cursor));
    }

    #[test]
    fn a_changed_id_is_another_cursor_or_none(
        (cursor, streams) in cursor(),
        at in any::<usize>(),
        byte in any::<u8>(),
    ) {
        let id = cursor.encode(&streams);
        let mut raw = URL_SAFE_NO_PAD.decode(&id).unwrap();
        let at = at % raw.len();
        prop_assume!(raw[at] != byte);
        raw[at] = byte;
        match Cursor::decode(&URL_SAFE_NO_PAD.encode(&raw), &streams) {
            // A cursor it decodes to re-encodes to the changed id, never to the original.
            Ok(other) => prop_assert_ne!(other, cursor),
            Err(CursorError::Malformed | CursorError::OtherStreams) => {}
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    #[test]
    fn a_cursor_does_not_decode_for_other_streams(
        (cursor, streams) in cursor(),
        other in "[a-z]{1,8}",
    ) {
        let id = cursor.encode(&streams);
        let mut others = streams.clone();
        others.push(StreamName::new(format!("x-{other}")).unwrap());
        others.sort();
        prop_assert!(Cursor::decode(&id, &others).is_err());
    }
}
