//! Cursors: how far a connection has read in each of its streams, and their wire form, the
//! SSE `id:` field.
//!
//! Wire format, version 1: URL-safe base64 (no padding) of
//!
//! ```text
//! 0x01                      version
//! u32 big-endian            fingerprint of the connection's sorted stream set
//! per stream, in that order:
//!   tag                     0 = no epoch yet, 1 = same epoch as the previous stream, 2 = epoch follows
//!   [u64 big-endian]        the epoch, when tag = 2
//!   LEB128 varint           the position
//! optionally, the session's private stream:
//!   0x49 ('I')              marker
//!   16 bytes                the session id
//!   tag [epoch] varint      as above
//! ```
//!
//! Cursors written before the session id was carried whole have, instead of `'I'` and the id,
//! `0x53` ('S') and a 32-bit tag of the id ([`session_tag`]); they are still read.
//!
//! The session part is separate from the fingerprint: a client that comes back without its
//! session (no token, or an expired one) still resumes its other streams exactly. The session
//! id is not a secret (its token is): the engine uses it only to ask whether that session was
//! sent private messages after the cursor, which the client then lost (ADR 0016).
//!
//! One stream takes 23 characters up to position 2^21, 26 up to 2^35; a session part adds 24. Because the fingerprint covers the stream set, a cursor can
//! not be applied to other streams; anything that does not decode exactly (another version,
//! other streams, truncated, trailing bytes, any garbage) is an error the engine answers with
//! a reset, never a failure.
//!
//! ```
//! use resumable_sse_core::cursor::Cursor;
//! use resumable_sse_core::{Epoch, StreamName};
//!
//! let streams = vec![StreamName::new("news")?];
//! let epoch = Epoch::from_u64(7);
//! let cursor = Cursor::new(vec![(Some(epoch), 42)]);
//! let id = cursor.encode(&streams);
//! assert!(id.len() <= 24);
//! assert_eq!(Cursor::decode(&id, &streams)?, cursor);
//! assert!(Cursor::decode(&id, &[StreamName::new("other")?]).is_err());
//! assert!(Cursor::decode("garbage", &streams).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::{Epoch, Position, SessionId, StreamName};

const VERSION: u8 = 1;
const SESSION_MARKER: u8 = b'I';
const LEGACY_SESSION_MARKER: u8 = b'S';
/// The version byte, the fingerprint and a session part.
const FIXED_LEN: usize = 5 + 17;
/// The longest encoding of one entry: tag, epoch, a 10-byte varint.
const ENTRY_LEN: usize = 19;
/// Longer ids are refused before any decoding work (a cursor over 64 streams fits easily).
const MAX_WIRE_LEN: usize = 2048;

/// Why a wire id could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CursorError {
    /// Not a cursor of this version: garbage, truncated, or from another version.
    #[error("the id is not a cursor this server understands")]
    Malformed,
    /// A well-formed cursor for a different set of streams.
    #[error("the id is a cursor for other streams")]
    OtherStreams,
}

/// The session whose private stream a cursor's last entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionRef {
    /// The session id itself.
    Id(SessionId),
    /// A 32-bit tag of the id ([`session_tag`]), as cursors written by earlier versions hold.
    Tag(u32),
}

impl SessionRef {
    /// Whether this names `session`.
    ///
    /// ```
    /// use resumable_sse_core::SessionId;
    /// use resumable_sse_core::cursor::{SessionRef, session_tag};
    ///
    /// let id = SessionId::random();
    /// assert!(SessionRef::Id(id).is(&id));
    /// assert!(SessionRef::Tag(session_tag(&id)).is(&id));
    /// assert!(!SessionRef::Id(SessionId::random()).is(&id));
    /// ```
    pub fn is(&self, session: &SessionId) -> bool {
        match self {
            SessionRef::Id(id) => id == session,
            SessionRef::Tag(tag) => *tag == session_tag(session),
        }
    }
}

/// The (epoch, position) reached in each stream of a connection, in the order of its sorted
/// stream list, and optionally in its session's private stream (the last entry). An epoch of
/// `None` means the stream did not exist yet (its position is 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    entries: Vec<(Option<Epoch>, Position)>,
    session: Option<SessionRef>,
}

impl Cursor {
    /// A cursor from its entries, one per stream in the connection's sorted stream order.
    pub fn new(entries: Vec<(Option<Epoch>, Position)>) -> Self {
        Cursor {
            entries,
            session: None,
        }
    }

    /// A cursor whose last entry is the private stream of `session`.
    pub fn with_session(entries: Vec<(Option<Epoch>, Position)>, session: SessionId) -> Self {
        Cursor {
            entries,
            session: Some(SessionRef::Id(session)),
        }
    }

    /// The session whose private stream is the last entry, if any.
    pub fn session(&self) -> Option<SessionRef> {
        self.session
    }

    /// The entries.
    pub fn entries(&self) -> &[(Option<Epoch>, Position)] {
        &self.entries
    }

    /// Mutable access to the entries.
    pub(crate) fn entries_mut(&mut self) -> &mut [(Option<Epoch>, Position)] {
        &mut self.entries
    }

    /// Encodes the cursor for the connection reading `streams` (sorted, as the engine keeps
    /// them; the session's private stream not included).
    pub fn encode(&self, streams: &[StreamName]) -> String {
        let mut out = String::with_capacity(24);
        self.encode_into(fingerprint(streams), &mut out);
        out
    }

    /// Encodes with a precomputed [`fingerprint`], appending to `out`: the hot-path form, one
    /// call per delivered event.
    pub(crate) fn encode_into(&self, fingerprint: u32, out: &mut String) {
        let mut raw = [0u8; FIXED_LEN + ENTRY_LEN * 8];
        let mut heap = Vec::new();
        let buf: &mut [u8] = if self.entries.len() <= 8 {
            &mut raw
        } else {
            heap.resize(FIXED_LEN + ENTRY_LEN * self.entries.len(), 0);
            &mut heap
        };
        buf[0] = VERSION;
        buf[1..5].copy_from_slice(&fingerprint.to_be_bytes());
        let mut n = 5;
        let mut previous: Option<Epoch> = None;
        let session_at = self.session.map(|_| self.entries.len().saturating_sub(1));
        for (i, (epoch, position)) in self.entries.iter().enumerate() {
            match (self.session, session_at == Some(i)) {
                (Some(SessionRef::Id(id)), true) => {
                    buf[n] = SESSION_MARKER;
                    buf[n + 1..n + 17].copy_from_slice(id.as_bytes());
                    n += 17;
                }
                (Some(SessionRef::Tag(tag)), true) => {
                    buf[n] = LEGACY_SESSION_MARKER;
                    buf[n + 1..n + 5].copy_from_slice(&tag.to_be_bytes());
                    n += 5;
                }
                _ => {}
            }
            match epoch {
                None => {
                    buf[n] = 0;
                    n += 1;
                }
                Some(e) if i > 0 && previous == Some(*e) => {
                    buf[n] = 1;
                    n += 1;
                }
                Some(e) => {
                    buf[n] = 2;
                    buf[n + 1..n + 9].copy_from_slice(&e.as_u64().to_be_bytes());
                    n += 9;
                }
            }
            previous = *epoch;
            let mut p = *position;
            loop {
                let byte = (p & 0x7f) as u8;
                p >>= 7;
                if p == 0 {
                    buf[n] = byte;
                    n += 1;
                    break;
                }
                buf[n] = byte | 0x80;
                n += 1;
            }
        }
        URL_SAFE_NO_PAD.encode_string(&buf[..n], out);
    }

    /// Decodes a wire id for a connection reading `streams` (sorted; the session's private
    /// stream not included). The session part, if any, is returned as found: compare
    /// [`Cursor::session`] with the current session.
    ///
    /// # Errors
    ///
    /// [`CursorError::OtherStreams`] for a valid cursor of another stream set,
    /// [`CursorError::Malformed`] for anything else that is not an exact cursor.
    pub fn decode(id: &str, streams: &[StreamName]) -> Result<Cursor, CursorError> {
        if id.is_empty() || id.len() > MAX_WIRE_LEN {
            return Err(CursorError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(id.as_bytes())
            .map_err(|_| CursorError::Malformed)?;
        if raw.len() < 5 || raw[0] != VERSION {
            return Err(CursorError::Malformed);
        }
        let fp = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]);
        let mut rest = &raw[5..];
        let mut entries = Vec::new();
        let mut previous: Option<Epoch> = None;
        let mut session = None;
        while !rest.is_empty() {
            if session.is_some() {
                // The session entry is the last one.
                return Err(CursorError::Malformed);
            }
            if rest[0] == SESSION_MARKER {
                let (id, tail) = rest[1..]
                    .split_first_chunk::<16>()
                    .ok_or(CursorError::Malformed)?;
                session = Some(SessionRef::Id(SessionId::from_bytes(*id)));
                rest = tail;
            } else if rest[0] == LEGACY_SESSION_MARKER {
                let (tag, tail) = rest[1..]
                    .split_first_chunk::<4>()
                    .ok_or(CursorError::Malformed)?;
                session = Some(SessionRef::Tag(u32::from_be_bytes(*tag)));
                rest = tail;
            }
            let (tag, tail) = rest.split_first().ok_or(CursorError::Malformed)?;
            rest = tail;
            let epoch = match tag {
                0 => None,
                1 if !entries.is_empty() && previous.is_some() => previous,
                2 => {
                    let (bytes, tail) = rest
                        .split_first_chunk::<8>()
                        .ok_or(CursorError::Malformed)?;
                    rest = tail;
                    Some(Epoch::from_u64(u64::from_be_bytes(*bytes)))
                }
                _ => return Err(CursorError::Malformed),
            };
            let mut position: u64 = 0;
            let mut shift = 0u32;
            loop {
                let (byte, tail) = rest.split_first().ok_or(CursorError::Malformed)?;
                rest = tail;
                if shift > 63 || (shift == 63 && byte & 0x7e != 0) {
                    return Err(CursorError::Malformed);
                }
                position |= u64::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            if epoch.is_none() && position != 0 {
                return Err(CursorError::Malformed);
            }
            previous = epoch;
            entries.push((epoch, position));
        }
        let public = entries.len() - usize::from(session.is_some());
        if public == 0 && session.is_none() {
            return Err(CursorError::Malformed);
        }
        if fp != fingerprint(streams) || public != streams.len() {
            return Err(CursorError::OtherStreams);
        }
        let cursor = Cursor { entries, session };
        // Only the canonical encoding is a cursor: one value, one id (no repeated epoch where
        // tag 1 says it, no padded varint), so ids can be compared as text.
        let mut canonical = String::with_capacity(id.len());
        cursor.encode_into(fp, &mut canonical);
        if canonical != id {
            return Err(CursorError::Malformed);
        }
        Ok(cursor)
    }
}

/// A 32-bit tag of a session id, which cursors of earlier versions hold instead of the id
/// ([`SessionRef::Tag`]). It is not secret and proves nothing: a cursor only ever positions a
/// connection, the session itself is proven by its signed token.
pub fn session_tag(session: &SessionId) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in session.as_bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// FNV-1a over the stream names, each followed by a 0xFF separator (a byte no name holds).
pub(crate) fn fingerprint(streams: &[StreamName]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for name in streams {
        for &b in name.as_str().as_bytes().iter().chain(&[0xff]) {
            hash ^= u32::from(b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<StreamName> {
        (0..n)
            .map(|i| StreamName::new(format!("s{i}")).unwrap())
            .collect()
    }

    #[test]
    fn one_stream_fits_in_24_bytes() {
        // Positions below 2^21 (two million events in one epoch) take 23 characters;
        // up to 2^35, 26.
        let c = Cursor::new(vec![(Some(Epoch::from_u64(u64::MAX)), (1 << 21) - 1)]);
        assert!(c.encode(&names(1)).len() <= 24);
        let c = Cursor::new(vec![(Some(Epoch::from_u64(u64::MAX)), (1 << 35) - 1)]);
        assert!(c.encode(&names(1)).len() <= 26);
    }

    #[test]
    fn rejects_garbage() {
        let streams = names(1);
        let big = "A".repeat(4096);
        for bad in ["", "AQ", "!!!!", big.as_str(), "AgAAAAAAAA"] {
            assert!(Cursor::decode(bad, &streams).is_err(), "{bad}");
        }
        // Version 2 of an otherwise valid cursor.
        let mut raw = URL_SAFE_NO_PAD
            .decode(Cursor::new(vec![(None, 0)]).encode(&streams))
            .unwrap();
        raw[0] = 2;
        assert_eq!(
            Cursor::decode(&URL_SAFE_NO_PAD.encode(raw), &streams),
            Err(CursorError::Malformed)
        );
    }

    #[test]
    fn session_part_roundtrips_and_is_outside_the_fingerprint() {
        let streams = names(1);
        let id = SessionId::random();
        let e = Some(Epoch::from_u64(9));
        let c = Cursor::with_session(vec![(e, 5), (e, 2)], id);
        let wire = c.encode(&streams);
        let back = Cursor::decode(&wire, &streams).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.session(), Some(SessionRef::Id(id)));
        // A session part alone (a connection reading only its private stream).
        let only = Cursor::with_session(vec![(None, 0)], id);
        assert_eq!(Cursor::decode(&only.encode(&[]), &[]).unwrap(), only);
        // Many streams and a session: longer than the stack buffer's eight entries.
        let many = Cursor::with_session(vec![(e, u64::MAX); 12], id);
        assert_eq!(
            Cursor::decode(&many.encode(&names(11)), &names(11)),
            Ok(many)
        );
    }

    #[test]
    fn only_the_canonical_encoding_decodes() {
        let streams = names(2);
        let e = Epoch::from_u64(5);
        let c = Cursor::new(vec![(Some(e), 3), (Some(e), 4)]);
        let wire = c.encode(&streams);
        let raw = URL_SAFE_NO_PAD.decode(&wire).unwrap();
        // The second entry's epoch written out (tag 2) instead of "same as before" (tag 1).
        let mut spelled = raw[..15].to_vec();
        spelled.push(2);
        spelled.extend_from_slice(&5u64.to_be_bytes());
        spelled.push(4);
        assert_eq!(raw[15], 1, "the canonical form uses tag 1");
        // A varint padded with a continuation byte: 3 as 0x83 0x00.
        let mut padded = raw[..14].to_vec();
        padded.extend_from_slice(&[0x83, 0x00]);
        padded.extend_from_slice(&raw[15..]);
        for bad in [spelled, padded] {
            assert_eq!(
                Cursor::decode(&URL_SAFE_NO_PAD.encode(&bad), &streams),
                Err(CursorError::Malformed)
            );
        }
        assert_eq!(Cursor::decode(&wire, &streams), Ok(c));
    }

    #[test]
    fn cursors_with_a_session_tag_are_still_read() {
        let streams = names(1);
        let id = SessionId::random();
        let legacy = Cursor {
            entries: vec![(None, 0), (Some(Epoch::from_u64(3)), 4)],
            session: Some(SessionRef::Tag(session_tag(&id))),
        };
        let back = Cursor::decode(&legacy.encode(&streams), &streams).unwrap();
        assert_eq!(back, legacy);
        assert!(back.session().is_some_and(|s| s.is(&id)));
    }

    proptest! {
        #[test]
        fn roundtrip(entries in proptest::collection::vec((proptest::option::of(0u64..4), any::<u64>()), 1..12)) {
            let entries: Vec<_> = entries.into_iter().map(|(e, p)| match e {
                Some(e) => (Some(Epoch::from_u64(e)), p),
                None => (None, 0),
            }).collect();
            let streams = names(entries.len());
            let c = Cursor::new(entries);
            prop_assert_eq!(Cursor::decode(&c.encode(&streams), &streams), Ok(c));
        }

        #[test]
        fn any_text_decodes_or_errs(id in ".{0,300}") {
            let _ = Cursor::decode(&id, &names(2));
        }
    }
}
