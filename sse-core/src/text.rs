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
    ///
    /// ```
    /// use resumable_sse_core::Text;
    ///
    /// assert_eq!(Text::from("abc").as_str(), "abc");
    /// ```
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

impl PartialEq<Text> for String {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
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

/// Takes the string's buffer, without copying when it has no spare capacity (the spare
/// capacity is given back first: a `Text` keeps its whole buffer for as long as it lives).
impl From<String> for Text {
    fn from(value: String) -> Self {
        Text(ByteString::from(value.into_boxed_str()))
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

/// Checks that the bytes are UTF-8, without copying them. The `Text` keeps the buffer the
/// bytes are a slice of, all of it, for as long as it lives.
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
/// A value under [`Chunks::MAX_VALUE`] (1 KiB) is copied into the current chunk; a chunk is
/// freed when the last value in it is dropped. A new chunk is sized for what its owner
/// retains (`retained`, in bytes): a quarter of it, between the value's own length and
/// [`Chunks::MAX_CHUNK`] (16 KiB). Larger values keep an allocation of their own, exactly
/// their size: they fill whole pages anyway. So a stream holding a few short events pays a
/// few bytes and a busy one 16 KiB chunks; a full chunk leaves less than 1 KiB unused; and a
/// chunk sized for more than its owner still retains (the owner shrank) is found by
/// [`Chunks::oversized`], so that the owner can copy what it keeps into new chunks.
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
    /// The size the current chunk was made with.
    size: usize,
}

impl Chunks {
    /// The largest chunk: 16 KiB.
    pub const MAX_CHUNK: usize = 16 << 10;

    /// Values this long or longer are not copied into chunks: 1 KiB.
    pub const MAX_VALUE: usize = 1 << 10;

    /// No chunk yet: the first copy makes one.
    ///
    /// ```
    /// use resumable_sse_core::text::Chunks;
    ///
    /// let chunks = Chunks::new();
    /// assert!(!chunks.oversized(0));
    /// ```
    pub fn new() -> Self {
        Chunks::default()
    }

    /// Keeps `value` with the others: a copy in the current chunk (or a new one sized for
    /// `retained` bytes), or `value` itself, uncopied, from [`Chunks::MAX_VALUE`] on.
    ///
    /// ```
    /// use resumable_sse_core::{text::Chunks, Text};
    ///
    /// let mut chunks = Chunks::new();
    /// let large = Text::from("x".repeat(Chunks::MAX_VALUE));
    /// let kept = chunks.keep(large.clone(), 0);
    /// assert_eq!(kept.as_ptr(), large.as_ptr()); // not copied
    /// let small = Text::from("y");
    /// assert_ne!(chunks.keep(small.clone(), 0).as_ptr(), small.as_ptr()); // copied
    /// ```
    pub fn keep(&mut self, value: Text, retained: usize) -> Text {
        if value.len() >= Self::MAX_VALUE {
            value
        } else {
            self.text(&value, retained)
        }
    }

    /// [`Chunks::keep`] for bytes.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use resumable_sse_core::text::Chunks;
    ///
    /// let mut chunks = Chunks::new();
    /// let body = Bytes::from(vec![b'x'; 4096]);
    /// assert_eq!(chunks.keep_bytes(body.clone(), 0).as_ptr(), body.as_ptr());
    /// ```
    pub fn keep_bytes(&mut self, value: Bytes, retained: usize) -> Bytes {
        if value.len() >= Self::MAX_VALUE {
            value
        } else {
            self.bytes(&value, retained)
        }
    }

    /// Copies `value` into the current chunk (or a new one sized for `retained` bytes), or,
    /// from [`Chunks::MAX_VALUE`] on, into an allocation of its own.
    ///
    /// ```
    /// use resumable_sse_core::text::Chunks;
    ///
    /// let mut chunks = Chunks::new();
    /// let text = chunks.text("née", 64);
    /// assert_eq!(text, "née");
    /// ```
    pub fn text(&mut self, value: &str, retained: usize) -> Text {
        if value.is_empty() {
            return Text::default();
        }
        let bytes = self.bytes(value.as_bytes(), retained);
        // The bytes were copied from a `str`: the check passes (and costs a read of them).
        Text::try_from(bytes).unwrap_or_else(|_| Text::from(value))
    }

    /// Copies `value` into the current chunk (or a new one sized for `retained` bytes), or,
    /// from [`Chunks::MAX_VALUE`] on, into an allocation of its own.
    ///
    /// ```
    /// use resumable_sse_core::text::Chunks;
    ///
    /// let mut chunks = Chunks::new();
    /// let body = chunks.bytes(b"data: x\n\n", 0);
    /// assert_eq!(&body[..], b"data: x\n\n");
    /// ```
    pub fn bytes(&mut self, value: &[u8], retained: usize) -> Bytes {
        if value.len() >= Self::MAX_VALUE {
            return Bytes::copy_from_slice(value);
        }
        if self.current.capacity() - self.current.len() < value.len() {
            self.size = (retained / 4).clamp(value.len(), Self::MAX_CHUNK);
            self.current = BytesMut::with_capacity(self.size);
        }
        self.current.extend_from_slice(value);
        self.current.split().freeze()
    }

    /// Whether the current chunk is larger than all its owner still retains (`retained`
    /// bytes, counted as at least [`Chunks::MAX_VALUE`]): the owner shrank since, and copying
    /// what it keeps into new chunks would let the old ones go.
    ///
    /// ```
    /// use resumable_sse_core::text::Chunks;
    ///
    /// let mut chunks = Chunks::new();
    /// let _kept = chunks.text("x", 64 << 10); // a 16 KiB chunk
    /// assert!(!chunks.oversized(64 << 10));
    /// assert!(chunks.oversized(1)); // all but one byte of it went
    /// ```
    pub fn oversized(&self, retained: usize) -> bool {
        self.size > retained.max(Self::MAX_VALUE)
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
        let big = vec![7u8; Chunks::MAX_VALUE];
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
    fn a_string_gives_back_its_spare_capacity() {
        let mut spare = String::with_capacity(4096);
        spare.push_str("short");
        let held = Text::from(spare)
            .into_bytes()
            .try_into_mut()
            .expect("the only handle");
        // The buffer is exactly as long as the text, not the string's 4 KiB.
        assert_eq!(held.capacity(), 5);
    }

    #[test]
    fn try_from_reports_invalid_utf8() {
        assert!(Text::try_from(Bytes::from_static(b"ok \xe2\x82\xac")).is_ok());
        assert!(Text::try_from(Bytes::from_static(b"\xe2\x82")).is_err());
    }
}
