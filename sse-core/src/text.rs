//! Shared text: an event's data, name and publisher id, and the chunks a store keeps them in.
//!
//! [`Text`] is immutable UTF-8 shared by reference count, like `Arc<str>`, except that it can
//! be a slice of a larger buffer. [`Chunks`] uses that to copy many small values into a few
//! shared allocations: the memory store keeps each stream's retained events in chunks of
//! their own, and the hub does the same with the encoded bodies of its hot windows. Memory a
//! burst of short-lived allocations used (connections coming and going) is then not pinned
//! by small long-lived values placed in its holes, and the allocator can give it back
//! (ADR 0031).

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

/// Immutable UTF-8 text shared by reference count; cloning is cheap. It reads as a `&str`
/// (`Deref`), hashes and compares as one, and may be a slice of a larger shared buffer (see
/// [`Chunks`]).
///
/// ```
/// use resumable_sse_core::Text;
///
/// let text = Text::from("café");
/// assert_eq!(text, "café");
/// assert_eq!(text.len(), 5);
/// assert!(text.starts_with("ca"));
/// let shared = text.clone(); // no copy
/// assert_eq!(shared.as_bytes(), "café".as_bytes());
///
/// // From bytes, checked.
/// assert!(Text::try_from(bytes::Bytes::from_static(b"ok")).is_ok());
/// assert!(Text::try_from(bytes::Bytes::from_static(b"\xff")).is_err());
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Text(ByteString);

impl Text {
    /// Text of a static string, without allocating.
    ///
    /// ```
    /// use resumable_sse_core::Text;
    ///
    /// assert_eq!(Text::from_static("hello"), "hello");
    /// ```
    pub const fn from_static(value: &'static str) -> Self {
        Text(ByteString::from_static(value))
    }

    /// The text as a `&str`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared bytes underneath (no copy).
    ///
    /// ```
    /// use resumable_sse_core::Text;
    ///
    /// let bytes = Text::from("abc").into_bytes();
    /// assert_eq!(&bytes[..], b"abc");
    /// ```
    pub fn into_bytes(self) -> Bytes {
        self.0.into_bytes()
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        &self.0
    }
}

// By hand, as `str` hashes, so that maps keyed by `Text` can be looked up with a `&str`.
impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, other: &Text) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == other.as_str()
    }
}

impl From<&str> for Text {
    fn from(value: &str) -> Self {
        Text(ByteString::from(value))
    }
}

/// Takes the string's buffer, without copying.
impl From<String> for Text {
    fn from(value: String) -> Self {
        Text(ByteString::from(value))
    }
}

impl From<&String> for Text {
    fn from(value: &String) -> Self {
        Text::from(value.as_str())
    }
}

impl From<Box<str>> for Text {
    fn from(value: Box<str>) -> Self {
        Text::from(String::from(value))
    }
}

impl From<Cow<'_, str>> for Text {
    fn from(value: Cow<'_, str>) -> Self {
        Text::from(value.into_owned())
    }
}

/// Copies the text.
impl From<Arc<str>> for Text {
    fn from(value: Arc<str>) -> Self {
        Text::from(&*value)
    }
}

impl From<Text> for String {
    fn from(value: Text) -> Self {
        value.as_str().to_owned()
    }
}

/// Checks that the bytes are UTF-8, without copying them.
impl TryFrom<Bytes> for Text {
    type Error = std::str::Utf8Error;

    fn try_from(value: Bytes) -> Result<Self, Self::Error> {
        ByteString::try_from(value).map(Text)
    }
}

impl serde::Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Text::from)
    }
}

/// Copies small values into shared chunks, so that values kept together (one stream's
/// retained events) sit together in memory rather than one allocation each.
///
/// Each copy is a slice of the current chunk; a chunk is freed when the last value in it is
/// dropped. A new chunk is sized for what its owner retains (`retained`, in bytes): a quarter
/// of it, between the value's own length and [`Chunks::MAX_CHUNK`]. So a stream holding a few
/// short events pays a few bytes, a busy one 64 KiB chunks, and the room chunks hold beyond
/// the values still alive in them (the unused end of the current one, the dropped start of
/// the oldest) stays under about half of what is retained. Values of more than half a chunk
/// get an allocation of their own.
///
/// ```
/// use resumable_sse_core::text::Chunks;
///
/// let mut chunks = Chunks::new();
/// let a = chunks.text("first", 4096);
/// let b = chunks.text("second", 4096);
/// assert_eq!((a.as_str(), b.as_str()), ("first", "second"));
/// // Both are in one chunk, side by side.
/// assert_eq!(a.as_ptr() as usize + a.len(), b.as_ptr() as usize);
/// ```
#[derive(Debug, Default)]
pub struct Chunks {
    current: BytesMut,
}

impl Chunks {
    /// The largest chunk: 64 KiB.
    pub const MAX_CHUNK: usize = 64 << 10;

    /// No chunk yet: the first copy makes one.
    pub fn new() -> Self {
        Chunks::default()
    }

    /// Keeps `value` with the others: a copy in the current chunk (or a new one sized for
    /// `retained` bytes), or `value` itself, without a copy, when it is larger than half a
    /// chunk (an allocation of its own already).
    ///
    /// ```
    /// use resumable_sse_core::{text::Chunks, Text};
    ///
    /// let mut chunks = Chunks::new();
    /// let large = Text::from("x".repeat(Chunks::MAX_CHUNK));
    /// let kept = chunks.keep(large.clone(), 0);
    /// assert_eq!(kept.as_ptr(), large.as_ptr()); // not copied
    /// let small = Text::from("y");
    /// assert_ne!(chunks.keep(small.clone(), 0).as_ptr(), small.as_ptr()); // copied
    /// ```
    pub fn keep(&mut self, value: Text, retained: usize) -> Text {
        if value.len() > Self::MAX_CHUNK / 2 {
            value
        } else {
            self.text(&value, retained)
        }
    }

    /// [`Chunks::keep`] for bytes.
    pub fn keep_bytes(&mut self, value: Bytes, retained: usize) -> Bytes {
        if value.len() > Self::MAX_CHUNK / 2 {
            value
        } else {
            self.bytes(&value, retained)
        }
    }

    /// Copies `value` into the current chunk (or a new one sized for `retained` bytes).
    pub fn text(&mut self, value: &str, retained: usize) -> Text {
        if value.is_empty() {
            return Text::default();
        }
        let bytes = self.bytes(value.as_bytes(), retained);
        // The bytes were copied from a `str`: the check passes (and costs a read of them).
        Text::try_from(bytes).unwrap_or_else(|_| Text::from(value))
    }

    /// Copies `value` into the current chunk (or a new one sized for `retained` bytes).
    ///
    /// ```
    /// use resumable_sse_core::text::Chunks;
    ///
    /// let mut chunks = Chunks::new();
    /// let body = chunks.bytes(b"data: x\n\n", 0);
    /// assert_eq!(&body[..], b"data: x\n\n");
    /// ```
    pub fn bytes(&mut self, value: &[u8], retained: usize) -> Bytes {
        if value.len() > Self::MAX_CHUNK / 2 {
            return Bytes::copy_from_slice(value);
        }
        if self.current.capacity() - self.current.len() < value.len() {
            let size = (retained / 4).clamp(value.len(), Self::MAX_CHUNK);
            self.current = BytesMut::with_capacity(size);
        }
        self.current.extend_from_slice(value);
        self.current.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_share_a_chunk_sized_for_what_is_retained() {
        let mut chunks = Chunks::new();
        let first = chunks.bytes(b"abc", 400);
        // A chunk of 100 bytes (a quarter of 400): the next values follow the first.
        let rest: Vec<Bytes> = (0..32).map(|_| chunks.bytes(b"abc", 400)).collect();
        let start = first.as_ptr() as usize;
        assert_eq!(rest[0].as_ptr() as usize, start + 3);
        assert_eq!(rest[31].as_ptr() as usize, start + 96);
        // The 34th does not fit in 100 bytes: a new chunk.
        let next = chunks.bytes(b"abc", 400);
        assert_ne!(next.as_ptr() as usize, start + 99);
    }

    #[test]
    fn a_stream_with_little_retained_gets_small_chunks() {
        let mut chunks = Chunks::new();
        let one = chunks.bytes(b"abcd", 0);
        assert_eq!(&one[..], b"abcd");
        // A chunk of exactly the value: the next copy needs another.
        let two = chunks.bytes(b"efgh", 0);
        assert_ne!(two.as_ptr() as usize, one.as_ptr() as usize + 4);
    }

    #[test]
    fn large_values_get_their_own_allocation() {
        let mut chunks = Chunks::new();
        let small = chunks.bytes(b"x", 1 << 30);
        let big = vec![7u8; Chunks::MAX_CHUNK / 2 + 1];
        let copy = chunks.bytes(&big, 1 << 30);
        assert_eq!(copy, big);
        // The current chunk was not used: the next small value follows the first.
        let after = chunks.bytes(b"y", 1 << 30);
        assert_eq!(after.as_ptr() as usize, small.as_ptr() as usize + 1);
    }

    #[test]
    fn text_round_trips_any_utf8_and_hashes_as_str() {
        use std::collections::HashMap;
        let mut chunks = Chunks::new();
        let values = ["", "a", "é\r\n\0", "日本語", "🦀"];
        let mut map = HashMap::new();
        for (i, value) in values.iter().enumerate() {
            let text = chunks.text(value, 1024);
            assert_eq!(text, *value);
            map.insert(text, i);
        }
        for (i, value) in values.iter().enumerate() {
            assert_eq!(map.get(*value), Some(&i));
        }
    }

    #[test]
    fn try_from_reports_invalid_utf8() {
        assert!(Text::try_from(Bytes::from_static(b"ok \xe2\x82\xac")).is_ok());
        assert!(Text::try_from(Bytes::from_static(b"\xe2\x82")).is_err());
    }
}
