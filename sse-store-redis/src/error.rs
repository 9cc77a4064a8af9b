//! [`RedisStoreError`] and its mapping onto [`resumable_sse_core::Error`].

use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

/// What can go wrong in the Redis store.
///
/// Converts into [`resumable_sse_core::Error`]: failures that mean "Redis cannot be reached right now"
/// (I/O errors, refused or dropped connections, timeouts, a server still loading its data,
/// a cluster or master that is down, a read-only replica after a failover, out of memory)
/// become [`resumable_sse_core::Error::Unavailable`], which the HTTP layer answers with 503; the rest
/// become [`resumable_sse_core::Error::Store`]. The original error stays reachable through
/// [`std::error::Error::source`].
///
/// ```
/// use std::time::Duration;
/// use resumable_sse_store_redis::RedisStoreError;
///
/// let err = RedisStoreError::Timeout(Duration::from_secs(3));
/// assert!(err.is_unavailable());
/// assert!(matches!(resumable_sse_core::Error::from(err), resumable_sse_core::Error::Unavailable(_)));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// Redis or the client library reported an error.
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// Redis did not answer in time (see [`RedisConfig::response_timeout`](crate::RedisConfig::response_timeout)).
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The configuration cannot work (a key prefix with braces).
    #[error("invalid Redis store configuration: {0}")]
    Config(String),
    /// Redis answered something the store did not write (a key edited by hand, or another
    /// application using the same key prefix).
    #[error("unexpected data in Redis: {0}")]
    Unexpected(String),
}

impl RedisStoreError {
    /// `true` when the operation may succeed later, once Redis is reachable again.
    ///
    /// ```
    /// use resumable_sse_store_redis::RedisStoreError;
    ///
    /// assert!(!RedisStoreError::Config("bad prefix".into()).is_unavailable());
    /// ```
    pub fn is_unavailable(&self) -> bool {
        match self {
            RedisStoreError::Redis(err) => redis_unavailable(err),
            RedisStoreError::Timeout(_) => true,
            RedisStoreError::Config(_) | RedisStoreError::Unexpected(_) => false,
        }
    }

    pub(crate) fn unexpected(what: impl Into<String>) -> Self {
        RedisStoreError::Unexpected(what.into())
    }
}

fn redis_unavailable(err: &RedisError) -> bool {
    if err.is_io_error()
        || err.is_timeout()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
    {
        return true;
    }
    match err.kind() {
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
        ),
        ErrorKind::ClusterConnectionNotFound => true,
        // Codes the client library does not name: a script still running (BUSY), memory
        // full with `noeviction` (OOM), writes refused after a failed save (MISCONF), too
        // few replicas (NOREPLICAS).
        _ => matches!(
            err.code(),
            Some("BUSY" | "OOM" | "MISCONF" | "NOREPLICAS" | "LOADING" | "MASTERDOWN")
        ),
    }
}

impl From<RedisStoreError> for resumable_sse_core::Error {
    fn from(err: RedisStoreError) -> Self {
        if err.is_unavailable() {
            resumable_sse_core::Error::unavailable(err)
        } else {
            resumable_sse_core::Error::store(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::io;

    use super::*;

    #[test]
    fn connection_failures_are_unavailable() {
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::TimedOut,
            io::ErrorKind::UnexpectedEof,
        ] {
            let err = RedisStoreError::from(RedisError::from(io::Error::from(kind)));
            assert!(err.is_unavailable(), "{kind:?}");
            let core = resumable_sse_core::Error::from(err);
            assert!(
                matches!(core, resumable_sse_core::Error::Unavailable(_)),
                "{kind:?}"
            );
            let source = core.source().expect("the Redis error is kept");
            assert!(source.to_string().contains("I/O") || !source.to_string().is_empty());
        }
    }

    #[test]
    fn other_errors_are_store_errors() {
        let err = RedisStoreError::from(RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "not a stream",
        )));
        assert!(!err.is_unavailable());
        assert!(matches!(
            resumable_sse_core::Error::from(err),
            resumable_sse_core::Error::Store(_)
        ));
        let err = RedisStoreError::unexpected("an entry without data");
        assert!(matches!(
            resumable_sse_core::Error::from(err),
            resumable_sse_core::Error::Store(_)
        ));
    }
}
