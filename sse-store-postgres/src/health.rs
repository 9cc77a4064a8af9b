//! Which pooled connections to test before use.
//!
//! Testing every connection before every use (sqlx's `test_before_acquire`) costs a round
//! trip per operation: about 40% of a single append's time on a local server with
//! asynchronous commit. Instead a
//! connection is tested only when it may have died unnoticed: it has been idle for a while,
//! or it is older than the last connection-level failure the store saw (a restarted server
//! leaves every pooled connection dead). Either way a dead connection is dropped and another
//! one used, so after an outage at most the operations already under way fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sqlx::Connection;
use sqlx::pool::PoolConnectionMetadata;
use sqlx::postgres::PgConnection;

/// A connection idle for this long is tested before use.
const IDLE_TEST_AFTER: Duration = Duration::from_secs(1);

/// When the store last saw a connection-level failure.
#[derive(Debug)]
pub(crate) struct Health {
    start: Instant,
    /// Milliseconds since `start`, plus one; 0 for never.
    last_outage: AtomicU64,
}

impl Health {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Health {
            start: Instant::now(),
            last_outage: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Marks every connection opened until now as suspect.
    pub(crate) fn outage(&self) {
        self.last_outage.store(self.now_ms() + 1, Ordering::Relaxed);
    }

    /// `true` when a connection with this history should be tested before use.
    fn suspect(&self, age: Duration, idle_for: Duration) -> bool {
        if idle_for >= IDLE_TEST_AFTER {
            return true;
        }
        let outage = self.last_outage.load(Ordering::Relaxed);
        let opened = self.now_ms().saturating_sub(age.as_millis() as u64);
        // Opened before (or in the millisecond of) the last failure.
        outage != 0 && opened < outage
    }

    /// The pool's `before_acquire` hook: pings suspect connections; a failed ping makes the
    /// pool close the connection and use (or open) another.
    pub(crate) fn before_acquire(
        self: &Arc<Self>,
    ) -> impl for<'c> Fn(
        &'c mut PgConnection,
        PoolConnectionMetadata,
    ) -> BoxFuture<'c, Result<bool, sqlx::Error>>
    + Send
    + Sync
    + 'static {
        let health = self.clone();
        move |connection, meta| {
            let suspect = health.suspect(meta.age, meta.idle_for);
            async move {
                if suspect {
                    connection.ping().await?;
                }
                Ok(true)
            }
            .boxed()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_and_pre_outage_connections_are_suspect() {
        let health = Health::new();
        assert!(!health.suspect(Duration::ZERO, Duration::ZERO));
        assert!(health.suspect(Duration::ZERO, IDLE_TEST_AFTER));
        std::thread::sleep(Duration::from_millis(5));
        health.outage();
        assert!(
            health.suspect(Duration::from_millis(5), Duration::ZERO),
            "opened before the outage"
        );
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            !health.suspect(Duration::from_millis(1), Duration::ZERO),
            "opened after the outage"
        );
    }
}
