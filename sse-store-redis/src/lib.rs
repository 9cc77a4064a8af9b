//! The Redis store for `sse-core`: shared, durable state for many server instances, so a
//! client can hop between instances mid-stream and lose nothing.
//!
//! - **events**: one Redis Stream per stream, entry id `<position>-0`. An append is one Lua
//!   script: it assigns the next position from the stream's meta hash (creating the epoch if
//!   there is none), de-duplicates by publisher id, `XADD`s, trims by count and by age, and
//!   `PUBLISH`es a notification. [`append_many`](EventBuffer::append_many) is the same script
//!   for the whole batch: one round trip (batches over [`MAX_BATCH`] events are split).
//! - **epochs**: drawn when a stream's meta is created. If Redis loses the meta (restarted
//!   without persistence, flushed, or the stream sat idle past
//!   [`RedisConfig::stream_ttl`]) the next append starts a new epoch, and clients holding a
//!   cursor of the old one get a `reset`: never a silent gap, never a reused position.
//! - **reads**: one Lua script too, so the events, the oldest retained position and the
//!   head come from one snapshot; events older than `max_age` are never returned, trimmed
//!   or not.
//! - **live feed**: one dedicated pub/sub connection per store, on one channel for all
//!   streams. Notifications carry small events (8 KiB by default), so hubs deliver them
//!   without a read. After any disconnect the connection is re-established with backoff and
//!   the feed yields a resync, so hubs repair what was published meanwhile from the streams.
//! - **sessions**: one hash per session with a native TTL (`PEXPIREAT`).
//! - **Redis Cluster**: every key of a stream carries the stream name as its hash tag, so
//!   each script touches one slot. A key prefix lets several applications share one Redis.
//! - **outages**: connection and response timeouts are bounded (3 s in all by default), so
//!   with Redis down publishers get [`resumable_sse_core::Error::Unavailable`] (503 over HTTP) quickly;
//!   connected clients stay connected and get events again once Redis is back.
//!
//! Needs Redis 6.2 or later (`XADD … MINID`).
//!
//! # Keys
//!
//! With the default prefix `sse:`, for a stream `news` and a session `<id>`:
//!
//! | key | type | holds | expires |
//! |---|---|---|---|
//! | `sse:{news}:meta` | hash | `epoch` (16 hex digits), `head` (last position), `bytes` (data retained) | [`RedisConfig::stream_ttl`] after the last append (default 1 day) |
//! | `sse:{news}:log` | stream | entries `<position>-0` with fields `t` (append time, ms), `d` (data), `e` (event name), `i` (publisher id) | `max_age` after the last append |
//! | `sse:{news}:ids` | sorted set | retained publisher ids, scored by position | with the log |
//! | `sse:{news}:sizes` | list | the data length of each retained event, oldest first (retention by bytes; the meta's `bytes` is their sum) | with the log |
//! | `sse:{@session:<id>}:session` | hash | `c` created, `x` expires (ms), `p` principal, `k` last cursor | at `x` + [`RedisConfig::session_grace`] |
//! | `sse:feed` | channel | one message per append call, for all streams | — |
//!
//! [`KeyLayout`] builds these names. `docs/redis.md` in the repository covers memory sizing
//! and deployment.
//!
//! # Example
//!
//! Two stores on one Redis play two server instances: an append on one is announced on the
//! other's live feed, and either reads it.
//!
//! ```
//! use futures_util::StreamExt;
//! use resumable_sse_core::{EventBuffer, FeedItem, NewEvent, SessionRecord, SessionStore, StreamName};
//! use resumable_sse_store_redis::{RedisConfig, RedisStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let prefix = format!("doc:{}:", resumable_sse_core::SessionId::random());
//! let config = RedisConfig::default()
//!     .with_retention(resumable_sse_core::Retention::new(100, std::time::Duration::from_secs(3600)))
//!     .with_key_prefix(prefix);
//! let a = RedisStore::connect("redis://127.0.0.1:6379", config.clone()).await?;
//! let b = RedisStore::connect("redis://127.0.0.1:6379", config).await?;
//!
//! let news = StreamName::new("news")?;
//! let mut feed = b.live_feed();
//! let appended = a.append(&news, NewEvent::new("hello").with_id("greeting-1")?).await?;
//! assert_eq!(appended.position, 1);
//! // A retry with the same publisher id appends nothing.
//! assert!(a.append(&news, NewEvent::new("hello").with_id("greeting-1")?).await?.duplicate);
//!
//! let Some(FeedItem::Appended(n)) = feed.next().await else { panic!("a notification") };
//! assert_eq!((n.epoch, n.position), (appended.epoch, 1));
//! assert_eq!(n.event.map(|e| e.data), Some("hello".into()));
//!
//! let page = b.read(&news, 0, 10).await?;
//! assert_eq!((page.epoch, page.head, page.events.len()), (Some(appended.epoch), 1, 1));
//!
//! // Sessions are shared too.
//! let session = SessionRecord::new(None, std::time::Duration::from_secs(30));
//! a.create(&session).await?;
//! assert_eq!(b.load(&session.id).await?.map(|s| s.id), Some(session.id));
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use resumable_sse_core::time::{from_unix_ms, unix_ms};
use resumable_sse_core::{
    Appended, Epoch, Event, EventBuffer, LiveFeed, NewEvent, Position, ReadPage, Result, SessionId,
    SessionRecord, SessionStore, StreamName, Text,
};

mod config;
mod error;
mod feed;
mod keys;
mod scripts;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::RedisConfig;
pub use error::RedisStoreError;
pub use keys::KeyLayout;

use feed::Feed;
use scripts::{APPEND_SCRIPT, READ_SCRIPT, SESSION_CREATE_SCRIPT, SESSION_TOUCH_SCRIPT};

/// Most events one append script takes; a larger `append_many` is split into several
/// calls so that no single script holds Redis up for long.
pub const MAX_BATCH: usize = 1000;

/// Most argument bytes one append script takes (the same reason as [`MAX_BATCH`]).
const MAX_BATCH_BYTES: usize = 8 << 20;

/// Most events one read returns, whatever the limit asked for.
pub const MAX_READ: usize = 10_000;

/// The Redis [`EventBuffer`] and [`SessionStore`]. Cheap to clone: clones share the
/// connections and the live feed.
///
/// See the [crate docs](crate) for what it does and an example.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

struct Shared {
    config: RedisConfig,
    keys: KeyLayout,
    channel: String,
    conn: ConnectionManager,
    feed: Feed,
    /// The URL without credentials, for `Debug`.
    target: String,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.shared;
        f.debug_struct("RedisStore")
            .field("target", &shared.target)
            .field("key_prefix", &shared.config.key_prefix)
            .field("retention", &shared.config.retention)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to Redis at `url` (`redis://[user:password@]host[:port][/db]`; `rediss://`
    /// for TLS once a TLS feature of the `redis` crate is enabled in the application, e.g.
    /// `tokio-rustls-comp`; `redis+unix:///path`), subscribes the live feed, and returns the
    /// store.
    ///
    /// # Errors
    ///
    /// [`RedisStoreError::Config`] for a key prefix holding `{` or `}`, and
    /// [`RedisStoreError::Redis`] or [`RedisStoreError::Timeout`] when the URL is invalid or
    /// Redis cannot be reached within `connect_timeout + response_timeout`.
    pub async fn connect(url: &str, config: RedisConfig) -> Result<RedisStore, RedisStoreError> {
        if config.key_prefix.contains(['{', '}']) {
            return Err(RedisStoreError::Config(format!(
                "the key prefix {:?} contains a brace; braces delimit the hash tag",
                config.key_prefix
            )));
        }
        let client = redis::Client::open(url)?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            // One quick retry rides over a blip; beyond that, fail fast and let the next
            // operation try again rather than queue callers behind a long backoff.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(250));
        let limit = config.operation_timeout();
        let conn = tokio::time::timeout(
            limit,
            ConnectionManager::new_with_config(client.clone(), manager),
        )
        .await
        .map_err(|_| RedisStoreError::Timeout(limit))??;
        let feed = Feed::start(client, &config).await?;
        let keys = config.key_layout();
        Ok(RedisStore {
            shared: Arc::new(Shared {
                channel: keys.channel(),
                keys,
                conn,
                feed,
                target: redact(url),
                config,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.shared.config
    }

    /// The names of the keys this store uses.
    pub fn key_layout(&self) -> &KeyLayout {
        &self.shared.keys
    }

    /// Runs one Redis operation within the operation timeout.
    async fn run<T>(
        &self,
        operation: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisStoreError> {
        let limit = self.shared.config.operation_timeout();
        match tokio::time::timeout(limit, operation).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(RedisStoreError::Timeout(limit)),
        }
    }

    /// One append script call for a batch that fits [`MAX_BATCH`].
    async fn append_batch(
        &self,
        stream: &StreamName,
        events: &[NewEvent],
    ) -> Result<Vec<Appended>, RedisStoreError> {
        let shared = &self.shared;
        let config = &shared.config;
        let mut call = APPEND_SCRIPT.prepare_invoke();
        call.key(shared.keys.meta(stream))
            .key(shared.keys.log(stream))
            .key(shared.keys.ids(stream))
            .key(shared.keys.sizes(stream))
            .arg(Epoch::random().to_string())
            .arg(config.retention.max_len())
            .arg(millis(config.retention.max_age()))
            .arg(millis(config.stream_ttl()))
            .arg(&shared.channel)
            .arg(stream.as_str())
            .arg(config.feed_inline_max)
            .arg(config.feed_inline_budget)
            .arg(config.retention.max_bytes());
        for event in events {
            call.arg(event.event().unwrap_or(""))
                .arg(event.id().unwrap_or(""))
                .arg(event.data());
        }
        let mut conn = shared.conn.clone();
        let reply: Value = self.run(call.invoke_async(&mut conn)).await?;
        let bad =
            || RedisStoreError::unexpected(format!("the append script answered for {stream}"));
        let mut reply = array(reply).ok_or_else(bad)?.into_iter();
        let epoch: Epoch = reply
            .next()
            .and_then(text)
            .and_then(|e| e.parse().ok())
            .ok_or_else(bad)?;
        let appended: Vec<Appended> = reply
            .map(|v| {
                let p = int(&v).filter(|p| *p != 0).ok_or_else(bad)?;
                Ok(Appended {
                    epoch,
                    position: p.unsigned_abs(),
                    duplicate: p < 0,
                })
            })
            .collect::<Result<_, RedisStoreError>>()?;
        if appended.len() != events.len() {
            return Err(bad());
        }
        Ok(appended)
    }

    async fn read_page(
        &self,
        stream: &StreamName,
        after: Position,
        limit: usize,
    ) -> Result<ReadPage, RedisStoreError> {
        let shared = &self.shared;
        let config = &shared.config;
        let mut call = READ_SCRIPT.prepare_invoke();
        call.key(shared.keys.meta(stream))
            .key(shared.keys.log(stream))
            .arg(after)
            .arg(limit.min(MAX_READ))
            .arg(config.retention.max_len())
            .arg(millis(config.retention.max_age()));
        let mut conn = shared.conn.clone();
        let reply: Value = self.run(call.invoke_async(&mut conn)).await?;
        let bad = || RedisStoreError::unexpected(format!("the read script answered for {stream}"));
        let reply = array(reply).ok_or_else(bad)?;
        if reply.is_empty() {
            return Ok(ReadPage::missing());
        }
        let [epoch, head, oldest, entries] = <[Value; 4]>::try_from(reply).map_err(|_| bad())?;
        let epoch: Epoch = text(epoch).and_then(|e| e.parse().ok()).ok_or_else(bad)?;
        let head = int(&head)
            .and_then(|h| u64::try_from(h).ok())
            .ok_or_else(bad)?;
        let oldest = int(&oldest)
            .and_then(|o| u64::try_from(o).ok())
            .ok_or_else(bad)?;
        let events = array(entries)
            .ok_or_else(bad)?
            .into_iter()
            .map(|entry| parse_entry(stream, entry))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ReadPage {
            epoch: Some(epoch),
            oldest,
            head,
            events,
        })
    }

    async fn touch_session(
        &self,
        id: &SessionId,
        expires_at: SystemTime,
        cursor: Option<&str>,
    ) -> Result<bool, RedisStoreError> {
        let expires = unix_ms(expires_at);
        let mut call = SESSION_TOUCH_SCRIPT.prepare_invoke();
        call.key(self.shared.keys.session(id))
            .arg(unix_ms(SystemTime::now()))
            .arg(expires)
            .arg(deadline_ms(expires, self.shared.config.session_grace));
        if let Some(cursor) = cursor {
            call.arg(cursor);
        }
        let mut conn = self.shared.conn.clone();
        let touched: i64 = self.run(call.invoke_async(&mut conn)).await?;
        Ok(touched == 1)
    }
}

impl RedisStore {
    /// The touch script for many sessions (with a cursor to record, or none) in one pipeline,
    /// the script loaded first in the same pipeline; how many sessions were live.
    async fn touch_sessions(
        &self,
        sessions: &[(&SessionId, Option<&str>)],
        expires_at: SystemTime,
    ) -> Result<usize, RedisStoreError> {
        if sessions.is_empty() {
            return Ok(0);
        }
        let expires = unix_ms(expires_at);
        let now = unix_ms(SystemTime::now());
        let deadline = deadline_ms(expires, self.shared.config.session_grace);
        let calls: Vec<_> = sessions
            .iter()
            .map(|(id, cursor)| {
                let mut call = SESSION_TOUCH_SCRIPT.prepare_invoke();
                call.key(self.shared.keys.session(id))
                    .arg(now)
                    .arg(expires)
                    .arg(deadline);
                if let Some(cursor) = cursor {
                    call.arg(*cursor);
                }
                call
            })
            .collect();
        let mut pipe = redis::pipe();
        pipe.load_script(&SESSION_TOUCH_SCRIPT).ignore();
        for call in &calls {
            pipe.invoke_script(call);
        }
        let mut conn = self.shared.conn.clone();
        let touched: Vec<i64> = self.run(pipe.query_async(&mut conn)).await?;
        Ok(touched.iter().filter(|t| **t == 1).count())
    }
}

#[async_trait]
impl EventBuffer for RedisStore {
    fn store_label(&self) -> &'static str {
        "redis"
    }

    async fn append(&self, stream: &StreamName, event: NewEvent) -> Result<Appended> {
        let mut out = self
            .append_batch(stream, std::slice::from_ref(&event))
            .await?;
        out.pop()
            .ok_or_else(|| RedisStoreError::unexpected("the append script answered nothing").into())
    }

    async fn append_many(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Appended>> {
        let mut out = Vec::with_capacity(events.len());
        let mut rest = events.as_slice();
        while !rest.is_empty() {
            // Split only batches too large for one script (see MAX_BATCH).
            let mut bytes = 0;
            let mut n = 0;
            while n < rest.len().min(MAX_BATCH) {
                let e = &rest[n];
                bytes +=
                    e.data().len() + e.event().map_or(0, str::len) + e.id().map_or(0, str::len);
                if n > 0 && bytes > MAX_BATCH_BYTES {
                    break;
                }
                n += 1;
            }
            let (batch, after) = rest.split_at(n);
            out.extend(self.append_batch(stream, batch).await?);
            rest = after;
        }
        Ok(out)
    }

    async fn read(&self, stream: &StreamName, after: Position, limit: usize) -> Result<ReadPage> {
        Ok(self.read_page(stream, after, limit).await?)
    }

    fn live_feed(&self) -> LiveFeed {
        feed::subscribe_local(&self.shared.feed.tx)
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.shared.conn.clone();
        let _: Value = self.run(redis::cmd("PING").query_async(&mut conn)).await?;
        Ok(())
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    fn store_label(&self) -> &'static str {
        "redis"
    }

    async fn create(&self, record: &SessionRecord) -> Result<()> {
        let expires = unix_ms(record.expires_at);
        let mut call = SESSION_CREATE_SCRIPT.prepare_invoke();
        call.key(self.shared.keys.session(&record.id))
            .arg(deadline_ms(expires, self.shared.config.session_grace))
            .arg("c")
            .arg(unix_ms(record.created_at))
            .arg("x")
            .arg(expires);
        if let Some(principal) = &record.principal {
            call.arg("p").arg(principal);
        }
        if let Some(cursor) = &record.cursor {
            call.arg("k").arg(cursor);
        }
        let mut conn = self.shared.conn.clone();
        let _: Value = self.run(call.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        let mut conn = self.shared.conn.clone();
        let reply: Value = self
            .run(
                redis::cmd("HGETALL")
                    .arg(self.shared.keys.session(id))
                    .query_async(&mut conn),
            )
            .await?;
        let record = parse_session(*id, reply)?;
        let now = SystemTime::now();
        Ok(record.filter(|r| r.expires_at > now))
    }

    async fn touch(&self, id: &SessionId, expires_at: SystemTime) -> Result<bool> {
        Ok(self.touch_session(id, expires_at, None).await?)
    }

    /// One pipeline: the touch script once per session.
    async fn touch_many(&self, ids: &[SessionId], expires_at: SystemTime) -> Result<usize> {
        let sessions: Vec<_> = ids.iter().map(|id| (id, None)).collect();
        Ok(self.touch_sessions(&sessions, expires_at).await?)
    }

    async fn record_cursor(
        &self,
        id: &SessionId,
        cursor: &str,
        expires_at: SystemTime,
    ) -> Result<bool> {
        Ok(self.touch_session(id, expires_at, Some(cursor)).await?)
    }

    /// One pipeline: the touch script once per session, with its cursor.
    async fn record_cursors(
        &self,
        cursors: &[(SessionId, String)],
        expires_at: SystemTime,
    ) -> Result<usize> {
        let sessions: Vec<_> = cursors
            .iter()
            .map(|(id, cursor)| (id, Some(cursor.as_str())))
            .collect();
        Ok(self.touch_sessions(&sessions, expires_at).await?)
    }

    async fn delete(&self, id: &SessionId) -> Result<()> {
        let mut conn = self.shared.conn.clone();
        let _: Value = self
            .run(
                redis::cmd("DEL")
                    .arg(self.shared.keys.session(id))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(())
    }
}

/// Longest duration passed to Redis, in milliseconds (about 300 years): Lua turns larger
/// numbers into text badly, and Redis refuses expiry times past `i64::MAX` ms.
const MAX_MS: u64 = 10_000_000_000_000;

/// A duration in milliseconds, between 1 and [`MAX_MS`].
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(MAX_MS)
        .clamp(1, MAX_MS)
}

/// A point in time for `PEXPIREAT`, in milliseconds since the Unix epoch, at most
/// [`MAX_MS`].
fn deadline_ms(ms: u64, grace: Duration) -> u64 {
    ms.saturating_add(millis(grace)).min(MAX_MS)
}

fn array(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => Some(s),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => std::str::from_utf8(bytes(other)?).ok()?.parse().ok(),
    }
}

/// One log entry, `[<position>-0, [field, value, …]]`, as an event.
fn parse_entry(stream: &StreamName, entry: Value) -> Result<Event, RedisStoreError> {
    let bad = || RedisStoreError::unexpected(format!("a malformed entry in the log of {stream}"));
    let [id, fields] = <[Value; 2]>::try_from(array(entry).ok_or_else(bad)?).map_err(|_| bad())?;
    let position: Position = bytes(&id)
        .and_then(|id| std::str::from_utf8(id).ok())
        .and_then(|id| id.split('-').next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(bad)?;
    let (mut time_ms, mut data, mut name, mut publisher_id) = (None, None, None, None);
    let mut fields = array(fields).ok_or_else(bad)?.into_iter();
    while let (Some(field), Some(value)) = (fields.next(), fields.next()) {
        match bytes(&field) {
            Some(b"t") => time_ms = int(&value),
            Some(b"d") => data = text(value),
            Some(b"e") => name = text(value),
            Some(b"i") => publisher_id = text(value),
            _ => {}
        }
    }
    let (Some(time_ms), Some(data)) = (time_ms, data) else {
        return Err(bad());
    };
    Ok(Event {
        stream: stream.clone(),
        position,
        event: name.map(Text::from),
        id: publisher_id.map(Text::from),
        data: Text::from(data),
        time_ms: u64::try_from(time_ms).map_err(|_| bad())?,
    })
}

/// A session hash (`HGETALL`, a flat array in RESP2 or a map in RESP3); `None` when empty.
fn parse_session(id: SessionId, reply: Value) -> Result<Option<SessionRecord>, RedisStoreError> {
    let bad = || RedisStoreError::unexpected(format!("a malformed record of session {id}"));
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Map(pairs) => pairs,
        other => {
            let mut items = array(other).ok_or_else(bad)?.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                pairs.push((k, v));
            }
            pairs
        }
    };
    if pairs.is_empty() {
        return Ok(None);
    }
    let (mut created, mut expires, mut principal, mut cursor) = (None, None, None, None);
    for (field, value) in pairs {
        match bytes(&field) {
            Some(b"c") => created = int(&value),
            Some(b"x") => expires = int(&value),
            Some(b"p") => principal = text(value),
            Some(b"k") => cursor = text(value),
            _ => {}
        }
    }
    let ms = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok()).map(from_unix_ms);
    let (Some(created_at), Some(expires_at)) = (ms(created), ms(expires)) else {
        return Err(bad());
    };
    Ok(Some(SessionRecord {
        id,
        principal,
        created_at,
        expires_at,
        cursor,
    }))
}

/// The URL without user, password and query, for logs and `Debug`.
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if path.is_empty() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_drops_credentials() {
        for (url, expected) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://:hunter2@cache:6380/2", "redis://cache:6380/2"),
            (
                "rediss://user:p%40ss@cache/0?password=x",
                "rediss://cache/0",
            ),
            (
                "redis+unix:///run/redis.sock?db=1&pass=x",
                "redis+unix:///run/redis.sock",
            ),
        ] {
            assert_eq!(redact(url), expected);
        }
    }

    #[test]
    fn sessions_parse_from_resp2_and_resp3() {
        let id = SessionId::random();
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let flat = Value::Array(vec![
            bulk("c"),
            bulk("1000"),
            bulk("x"),
            bulk("2000"),
            bulk("p"),
            bulk("alice"),
        ]);
        let record = parse_session(id, flat).unwrap().unwrap();
        assert_eq!(record.principal.as_deref(), Some("alice"));
        assert_eq!(record.expires_at, from_unix_ms(2000));
        let map = Value::Map(vec![(bulk("c"), bulk("1")), (bulk("x"), bulk("2"))]);
        assert_eq!(parse_session(id, map).unwrap().unwrap().cursor, None);
        assert_eq!(parse_session(id, Value::Array(vec![])).unwrap(), None);
        assert!(parse_session(id, Value::Array(vec![bulk("p"), bulk("x")])).is_err());
    }
}
