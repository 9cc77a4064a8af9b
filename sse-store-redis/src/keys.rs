//! [`KeyLayout`]: the names of the keys and the channel, in one place.

use resumable_sse_core::{SessionId, StreamName};

/// The names of the Redis keys and the pub/sub channel a store uses, from its key prefix.
///
/// Every key of one stream carries the stream name in braces, `{<stream>}`: the hash tag
/// that puts them all in one Redis Cluster slot, as the append script needs. Stream names
/// cannot contain braces (`[A-Za-z0-9_.:/@-]` only), so no name can break out of its tag.
/// A session's key shares the tag of its private stream `@session:<id>`.
///
/// ```
/// use resumable_sse_core::{SessionId, StreamName};
/// use resumable_sse_store_redis::KeyLayout;
///
/// let keys = KeyLayout::new("sse:");
/// let news = StreamName::new("news")?;
/// assert_eq!(keys.meta(&news), "sse:{news}:meta");
/// assert_eq!(keys.log(&news), "sse:{news}:log");
/// assert_eq!(keys.ids(&news), "sse:{news}:ids");
/// assert_eq!(keys.sizes(&news), "sse:{news}:sizes");
/// assert_eq!(keys.channel(), "sse:feed");
/// let id: SessionId = "0123456789abcdef0123456789abcdef".parse().unwrap();
/// assert_eq!(keys.session(&id), "sse:{@session:0123456789abcdef0123456789abcdef}:session");
/// # Ok::<(), resumable_sse_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLayout {
    prefix: String,
}

impl KeyLayout {
    /// The layout for a key prefix.
    pub fn new(prefix: &str) -> Self {
        KeyLayout {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hash holding a stream's `epoch` and `head`.
    pub fn meta(&self, stream: &StreamName) -> String {
        self.stream_key(stream, "meta")
    }

    /// The Redis Stream holding a stream's retained events, entry id `<position>-0`.
    pub fn log(&self, stream: &StreamName) -> String {
        self.stream_key(stream, "log")
    }

    /// The sorted set of a stream's retained publisher ids, scored by position.
    pub fn ids(&self, stream: &StreamName) -> String {
        self.stream_key(stream, "ids")
    }

    /// The list of the data lengths of a stream's retained events, oldest first (retention
    /// by bytes).
    pub fn sizes(&self, stream: &StreamName) -> String {
        self.stream_key(stream, "sizes")
    }

    /// The hash holding one session.
    pub fn session(&self, id: &SessionId) -> String {
        format!("{}{{@session:{id}}}:session", self.prefix)
    }

    /// The channel every append is announced on.
    pub fn channel(&self) -> String {
        format!("{}feed", self.prefix)
    }

    fn stream_key(&self, stream: &StreamName, suffix: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + stream.as_str().len() + 8);
        key.push_str(&self.prefix);
        key.push('{');
        key.push_str(stream.as_str());
        key.push_str("}:");
        key.push_str(suffix);
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag Redis Cluster computes the slot from: the text between the first `{` and
    /// the next `}`, when it is not empty; else the whole key.
    fn hash_tag(key: &str) -> &str {
        if let Some(open) = key.find('{')
            && let Some(len) = key[open + 1..].find('}')
            && len > 0
        {
            return &key[open + 1..open + 1 + len];
        }
        key
    }

    #[test]
    fn all_keys_of_a_stream_share_its_hash_tag() {
        let keys = KeyLayout::new("app:");
        for name in ["news", "a", "room:42/x.y@z-w_v", &"x".repeat(128)] {
            let stream = StreamName::new(name).unwrap();
            for key in [
                keys.meta(&stream),
                keys.log(&stream),
                keys.ids(&stream),
                keys.sizes(&stream),
            ] {
                assert_eq!(hash_tag(&key), name, "{key}");
                assert!(key.starts_with("app:"), "{key}");
            }
        }
        let id = SessionId::random();
        assert_eq!(
            hash_tag(&keys.session(&id)),
            hash_tag(&keys.log(&id.stream())),
            "a session shares the slot of its private stream"
        );
    }
}
