//! The store's errors and their mapping onto [`resumable_sse_core::Error`].

/// Everything that can go wrong in the PostgreSQL store.
///
/// Converts into [`resumable_sse_core::Error`]: connection-level failures (PostgreSQL unreachable or
/// restarting, the pool timed out or closed) become [`resumable_sse_core::Error::Unavailable`], which
/// the HTTP adapter answers with 503; everything else becomes [`resumable_sse_core::Error::Store`]. The
/// original error stays reachable through [`std::error::Error::source`].
///
/// ```
/// use resumable_sse_store_postgres::PostgresStoreError;
///
/// let down = PostgresStoreError::from(sqlx::Error::PoolTimedOut);
/// assert!(down.is_unavailable());
/// assert!(matches!(resumable_sse_core::Error::from(down), resumable_sse_core::Error::Unavailable(_)));
/// ```
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum PostgresStoreError {
    /// An error from sqlx: connecting, a statement, decoding a row.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    /// The configured schema name is not acceptable.
    #[error("invalid schema name {name:?}: {reason}")]
    InvalidSchema {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A migration applied to the database differs from the one embedded in this build: the
    /// schema was changed by hand, or by a build with different migrations.
    #[error(
        "migration {version} ({description}) applied to the database differs from this build's"
    )]
    MigrationChanged {
        /// The migration's version.
        version: i32,
        /// What it does.
        description: String,
    },
    /// PostgreSQL did not answer within
    /// [`PostgresConfig::operation_timeout`](crate::PostgresConfig::operation_timeout).
    #[error("PostgreSQL did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    /// The database holds something this build cannot read (a row that breaks the store's
    /// invariants, a stream name that does not validate).
    #[error("unexpected data in the database: {0}")]
    Corrupt(String),
}

impl PostgresStoreError {
    /// `true` when the error means "PostgreSQL cannot be reached right now; the operation may
    /// succeed later": I/O and TLS errors, pool and operation timeouts, a closed pool, and the
    /// server's
    /// connection-class answers (SQLSTATE class `08`, `57P01` admin shutdown, `57P02` crash
    /// shutdown, `57P03` cannot connect now, `53300` too many connections, `25006` a read-only
    /// standby during a failover).
    pub fn is_unavailable(&self) -> bool {
        let err = match self {
            PostgresStoreError::Sqlx(err) => err,
            PostgresStoreError::TimedOut(_) => return true,
            _ => return false,
        };
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                code.starts_with("08")
                    || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300" | "25006")
            }),
            _ => false,
        }
    }
}

impl PostgresStoreError {
    /// `true` when running the failed operation again cannot do it twice: the server said it
    /// terminated the session (`57P01`, `57P02`: the statement's transaction was not
    /// committed), or the operation is `idempotent` and the failure is a connection-level one
    /// other than a pool timeout or a closed pool.
    pub(crate) fn is_retry_safe(&self, idempotent: bool) -> bool {
        match self {
            PostgresStoreError::Sqlx(sqlx::Error::Database(db))
                if db.code().is_some_and(|c| matches!(&*c, "57P01" | "57P02")) =>
            {
                true
            }
            PostgresStoreError::Sqlx(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
            | PostgresStoreError::TimedOut(_) => false,
            _ => idempotent && self.is_unavailable(),
        }
    }
}

impl From<PostgresStoreError> for resumable_sse_core::Error {
    fn from(err: PostgresStoreError) -> Self {
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
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        for err in [
            sqlx::Error::Io(refused),
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::WorkerCrashed,
        ] {
            let mapped = resumable_sse_core::Error::from(PostgresStoreError::from(err));
            assert!(
                matches!(mapped, resumable_sse_core::Error::Unavailable(_)),
                "{mapped:?}"
            );
            let source = mapped.source().expect("the chain is kept");
            assert!(source.downcast_ref::<PostgresStoreError>().is_some());
        }
        let other =
            resumable_sse_core::Error::from(PostgresStoreError::from(sqlx::Error::RowNotFound));
        assert!(
            matches!(other, resumable_sse_core::Error::Store(_)),
            "{other:?}"
        );
        let schema = resumable_sse_core::Error::from(PostgresStoreError::InvalidSchema {
            name: "X".into(),
            reason: "r",
        });
        assert!(matches!(schema, resumable_sse_core::Error::Store(_)));
    }
}
