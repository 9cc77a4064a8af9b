//! Sessions: a client identity that outlives its connections, and [`SessionStore`], where
//!
//! The trait's docs show a complete implementation.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::{Result, StreamName};

/// A session id: 128 random bits, shown as 32 lowercase hex digits.
///
/// ```
/// use resumable_sse_core::SessionId;
///
/// let id = SessionId::random();
/// assert_eq!(id.to_string().parse::<SessionId>().ok(), Some(id));
/// assert_eq!(id.stream().as_str(), format!("@session:{id}"));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 16]);

impl SessionId {
    /// A fresh id from the operating system's random source.
    pub fn random() -> Self {
        SessionId(rand::random())
    }

    /// The id with these bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        SessionId(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The session's private stream, `@session:<id>`: every connection of the session reads
    /// it, no other session can.
    pub fn stream(&self) -> StreamName {
        StreamName::new(format!("@session:{self}")).expect("a session stream name is valid")
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// The text is not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a session id is 32 hex digits")]
pub struct ParseSessionIdError;

impl FromStr for SessionId {
    type Err = ParseSessionIdError;
    fn from_str(s: &str) -> Result<Self, ParseSessionIdError> {
        if s.len() != 32 || !s.is_ascii() {
            return Err(ParseSessionIdError);
        }
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| ParseSessionIdError)?;
        }
        Ok(SessionId(bytes))
    }
}

/// What a store keeps about one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// The id.
    pub id: SessionId,
    /// The authenticated principal the session is bound to, if any.
    pub principal: Option<String>,
    /// When it was created.
    pub created_at: SystemTime,
    /// When the store may forget it (extended while it has connections).
    pub expires_at: SystemTime,
    /// The wire cursor of its last connection, used when a new connection brings no
    /// `Last-Event-ID` (a page reload).
    pub cursor: Option<String>,
}

impl SessionRecord {
    /// A new session with a random id, expiring `ttl` from now.
    pub fn new(principal: Option<String>, ttl: Duration) -> Self {
        let now = SystemTime::now();
        SessionRecord {
            id: SessionId::random(),
            principal,
            created_at: now,
            expires_at: now + ttl,
            cursor: None,
        }
    }
}

/// Where sessions live. Implementations must treat a record past its `expires_at` as absent
/// (whether or not it has been swept yet).
///
/// sessions live.
///
/// # Writing a store
///
/// A complete store keeping sessions in a mutex-guarded map (the memory backend is the same
/// idea plus a sweeper):
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::SystemTime;
/// use async_trait::async_trait;
/// use resumable_sse_core::{Result, SessionId, SessionRecord, SessionStore};
///
/// #[derive(Debug, Default)]
/// struct MapStore(Mutex<HashMap<SessionId, SessionRecord>>);
///
/// #[async_trait]
/// impl SessionStore for MapStore {
///     async fn create(&self, record: &SessionRecord) -> Result<()> {
///         self.0.lock().unwrap().insert(record.id, record.clone());
///         Ok(())
///     }
///     async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
///         let map = self.0.lock().unwrap();
///         Ok(map.get(id).filter(|r| r.expires_at > SystemTime::now()).cloned())
///     }
///     async fn touch(&self, id: &SessionId, expires_at: SystemTime) -> Result<bool> {
///         let mut map = self.0.lock().unwrap();
///         match map.get_mut(id).filter(|r| r.expires_at > SystemTime::now()) {
///             Some(r) => { r.expires_at = expires_at; Ok(true) }
///             None => Ok(false),
///         }
///     }
///     async fn record_cursor(&self, id: &SessionId, cursor: &str, expires_at: SystemTime) -> Result<bool> {
///         let mut map = self.0.lock().unwrap();
///         match map.get_mut(id).filter(|r| r.expires_at > SystemTime::now()) {
///             Some(r) => { r.cursor = Some(cursor.to_owned()); r.expires_at = expires_at; Ok(true) }
///             None => Ok(false),
///         }
///     }
///     async fn delete(&self, id: &SessionId) -> Result<()> {
///         self.0.lock().unwrap().remove(id);
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
/// let store = MapStore::default();
/// let record = SessionRecord::new(None, std::time::Duration::from_secs(30));
/// store.create(&record).await?;
/// assert_eq!(store.load(&record.id).await?, Some(record));
/// # Ok(()) }
/// ```
#[async_trait]
pub trait SessionStore: fmt::Debug + Send + Sync + 'static {
    /// Stores a new session.
    async fn create(&self, record: &SessionRecord) -> Result<()>;

    /// The session, or `None` if it does not exist or has expired.
    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>>;

    /// Moves the expiry of a live session; `false` if it no longer exists.
    async fn touch(&self, id: &SessionId, expires_at: SystemTime) -> Result<bool>;

    /// Moves the expiry of many live sessions at once; answers how many still existed (those
    /// that did not are skipped, not created). The hub's session keeper calls this for every
    /// session with open connections, every half TTL.
    ///
    /// The default calls [`touch`](Self::touch) for each in turn; a store with a network round
    /// trip per call should override it with one batched request (both the Redis and the
    /// PostgreSQL stores do), or ten thousand live sessions cost ten thousand round trips on
    /// the connection that publishes also use.
    ///
    /// ```
    /// # use std::time::{Duration, SystemTime};
    /// # use resumable_sse_core::{SessionRecord, SessionStore};
    /// # async fn keep(store: &dyn SessionStore, live: &[SessionRecord]) -> resumable_sse_core::Result<()> {
    /// let ids: Vec<_> = live.iter().map(|r| r.id).collect();
    /// let alive = store
    ///     .touch_many(&ids, SystemTime::now() + Duration::from_secs(30))
    ///     .await?;
    /// assert!(alive <= ids.len());
    /// # Ok(()) }
    /// ```
    async fn touch_many(&self, ids: &[SessionId], expires_at: SystemTime) -> Result<usize> {
        let mut alive = 0;
        for id in ids {
            alive += usize::from(self.touch(id, expires_at).await?);
        }
        Ok(alive)
    }

    /// Records the cursor a connection reached and moves the expiry; `false` if the session no
    /// longer exists.
    async fn record_cursor(
        &self,
        id: &SessionId,
        cursor: &str,
        expires_at: SystemTime,
    ) -> Result<bool>;

    /// Records the cursors of many sessions at once and moves their expiry; answers how many
    /// sessions still existed (the others are skipped, not created). The hub calls this with
    /// the cursors of connections that closed meanwhile: when ten thousand clients drop at once
    /// (a deploy, a network blip) that is a few batched writes, not ten thousand.
    ///
    /// The default calls [`record_cursor`](Self::record_cursor) for each in turn; a store
    /// with a network round trip per call should override it (the Redis and PostgreSQL stores
    /// do). A session listed twice gets its last cursor.
    ///
    /// ```
    /// # use std::time::{Duration, SystemTime};
    /// # use resumable_sse_core::{SessionId, SessionStore};
    /// # async fn closed(store: &dyn SessionStore, a: SessionId, b: SessionId) -> resumable_sse_core::Result<()> {
    /// let cursors = [(a, "AQAAAAEAAAAAAAAAAQ".to_owned()), (b, "AQAAAAEAAAAAAAAAAg".to_owned())];
    /// let alive = store
    ///     .record_cursors(&cursors, SystemTime::now() + Duration::from_secs(30))
    ///     .await?;
    /// assert!(alive <= 2);
    /// # Ok(()) }
    /// ```
    async fn record_cursors(
        &self,
        cursors: &[(SessionId, String)],
        expires_at: SystemTime,
    ) -> Result<usize> {
        let mut alive = 0;
        for (id, cursor) in cursors {
            alive += usize::from(self.record_cursor(id, cursor, expires_at).await?);
        }
        Ok(alive)
    }

    /// Forgets a session.
    async fn delete(&self, id: &SessionId) -> Result<()>;

    /// The `store` label of this store's operations in the
    /// [metrics](crate::metrics::STORE_OPERATION_DURATION_SECONDS) the hub records around each
    /// call: a short fixed name (`memory`, `redis`, `postgres`); `custom` by default.
    fn store_label(&self) -> &'static str {
        "custom"
    }
}

#[async_trait]
impl<T: SessionStore + ?Sized> SessionStore for std::sync::Arc<T> {
    async fn create(&self, record: &SessionRecord) -> Result<()> {
        (**self).create(record).await
    }
    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        (**self).load(id).await
    }
    async fn touch(&self, id: &SessionId, expires_at: SystemTime) -> Result<bool> {
        (**self).touch(id, expires_at).await
    }
    async fn touch_many(&self, ids: &[SessionId], expires_at: SystemTime) -> Result<usize> {
        (**self).touch_many(ids, expires_at).await
    }
    async fn record_cursor(
        &self,
        id: &SessionId,
        cursor: &str,
        expires_at: SystemTime,
    ) -> Result<bool> {
        (**self).record_cursor(id, cursor, expires_at).await
    }
    async fn record_cursors(
        &self,
        cursors: &[(SessionId, String)],
        expires_at: SystemTime,
    ) -> Result<usize> {
        (**self).record_cursors(cursors, expires_at).await
    }
    async fn delete(&self, id: &SessionId) -> Result<()> {
        (**self).delete(id).await
    }
    fn store_label(&self) -> &'static str {
        (**self).store_label()
    }
}
