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
//! ```
//!
//! One stream takes 23 characters up to position 2^21, 26 up to 2^35. Because the fingerprint covers the stream set, a cursor can
//! not be applied to other streams; anything that does not decode exactly (another version,
//! other streams, truncated, trailing bytes, any garbage) is an error the engine answers with
//! a reset, never a failure.
//!
//! ```
//! use sse_core::{Cursor, Epoch, StreamName};
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

use crate::{Epoch, Position, StreamName};

const VERSION: u8 = 1;
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

/// The (epoch, position) reached in each stream of a connection, in the order of its sorted
/// stream list. An epoch of `None` means the stream did not exist yet (its position is 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    entries: Vec<(Option<Epoch>, Position)>,
}

impl Cursor {
    /// A cursor from its entries, one per stream in the connection's sorted stream order.
    pub fn new(entries: Vec<(Option<Epoch>, Position)>) -> Self {
        Cursor { entries }
    }

    /// The entries.
    pub fn entries(&self) -> &[(Option<Epoch>, Position)] {
        &self.entries
    }

    /// Mutable access to the entries.
    pub fn entries_mut(&mut self) -> &mut [(Option<Epoch>, Position)] {
        &mut self.entries
    }

    /// Encodes the cursor for the connection reading `streams` (sorted, as the engine keeps
    /// them).
    pub fn encode(&self, streams: &[StreamName]) -> String {
        let mut out = String::with_capacity(24);
        self.encode_into(fingerprint(streams), &mut out);
        out
    }

    /// Encodes with a precomputed [`fingerprint`], appending to `out`: the hot-path form, one
    /// call per delivered event.
    pub fn encode_into(&self, fingerprint: u32, out: &mut String) {
        let mut raw = [0u8; 5 + 19 * 8];
        let mut heap = Vec::new();
        let buf: &mut [u8] = if self.entries.len() <= 8 {
            &mut raw
        } else {
            heap.resize(5 + 19 * self.entries.len(), 0);
            &mut heap
        };
        buf[0] = VERSION;
        buf[1..5].copy_from_slice(&fingerprint.to_be_bytes());
        let mut n = 5;
        let mut previous: Option<Epoch> = None;
        for (i, (epoch, position)) in self.entries.iter().enumerate() {
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

    /// Decodes a wire id for a connection reading `streams` (sorted).
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
        while !rest.is_empty() {
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
        if entries.is_empty() {
            return Err(CursorError::Malformed);
        }
        if fp != fingerprint(streams) || entries.len() != streams.len() {
            return Err(CursorError::OtherStreams);
        }
        Ok(Cursor { entries })
    }
}

/// FNV-1a over the stream names, each followed by a 0xFF separator (a byte no name holds).
pub fn fingerprint(streams: &[StreamName]) -> u32 {
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
