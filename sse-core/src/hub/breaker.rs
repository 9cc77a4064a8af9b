//! The store circuit breaker: while the store is failing, requests fail at once instead of
//! each waiting for the store's own timeout.
//!
//! Closed, every store operation of a request (publishing, opening a connection, loading and
//! writing sessions) runs and its outcome is counted: [`BreakerConfig::failures`]
//! consecutive [`Error::Unavailable`] outcomes open the breaker. Open, those operations fail
//! at once with an [`Error::Unavailable`] whose source is [`CircuitOpen`], without touching the
//! store, and a background probe pings the store every [`BreakerConfig::probe`]: the first
//! answer closes the breaker. Only unavailability counts: a validation error, a full store or
//! any other answer of the store shows that it is there, and resets the count.
//!
//! The transitions are logged once each (a warning when the breaker opens, an info line when
//! it closes), never once per refused request.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use crate::{Error, EventBuffer, Result, SessionId, SessionStore};

/// When the store circuit breaker opens and how often it probes the store while open. Set with
/// [`Config::with_breaker`](crate::Config::with_breaker).
///
/// ```
/// use std::time::Duration;
/// use resumable_sse_core::{BreakerConfig, Config};
///
/// let config = Config::default().with_breaker(BreakerConfig::new(3, Duration::from_millis(500)));
/// assert_eq!(config.breaker.failures, 3);
/// assert_eq!(BreakerConfig::default().failures, 5);
/// assert!(BreakerConfig::off().is_off());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Consecutive store failures ([`Error::Unavailable`]) that open the breaker (default 5;
    /// 0 turns the breaker off). A single lost connection or timeout does not open it.
    pub failures: u32,
    /// How often the store is pinged while the breaker is open (default 1 s): the longest a
    /// recovered store waits before requests reach it again.
    pub probe: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            probe: Duration::from_secs(1),
        }
    }
}

impl BreakerConfig {
    /// A breaker that opens after `failures` consecutive store failures and then pings the
    /// store every `probe` (at least 10 ms is used).
    pub fn new(failures: u32, probe: Duration) -> Self {
        BreakerConfig { failures, probe }
    }

    /// No breaker: every request waits for the store, however long it has been failing.
    pub fn off() -> Self {
        BreakerConfig {
            failures: 0,
            ..BreakerConfig::default()
        }
    }

    /// Whether the breaker is off ([`BreakerConfig::failures`] is 0).
    pub fn is_off(&self) -> bool {
        self.failures == 0
    }
}

/// The source of the [`Error::Unavailable`] a request gets while the breaker is open: the
/// store was not asked (see [`Error::is_circuit_open`]).
///
/// ```
/// let err = resumable_sse_core::Error::unavailable(resumable_sse_core::CircuitOpen);
/// assert!(err.is_circuit_open());
/// assert_eq!(resumable_sse_core::CircuitOpen.to_string(), "the store is failing: not asked until a probe succeeds");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CircuitOpen;

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the store is failing: not asked until a probe succeeds")
    }
}

impl std::error::Error for CircuitOpen {}

/// The breaker's state, shared by the hub and its probe task.
#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    /// Consecutive failures since the store last answered.
    failures: AtomicU32,
    open: AtomicBool,
}

impl Breaker {
    pub(crate) fn new(mut config: BreakerConfig) -> Self {
        config.probe = config.probe.max(Duration::from_millis(10));
        Breaker {
            config,
            failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
        }
    }

    pub(crate) fn config(&self) -> BreakerConfig {
        self.config
    }

    #[inline]
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Fails at once while the breaker is open.
    #[inline]
    pub(crate) fn check(&self) -> Result<()> {
        if self.is_open() {
            return Err(Error::unavailable(CircuitOpen));
        }
        Ok(())
    }

    /// Counts the outcome of a store operation: a failure towards opening, anything else
    /// (the store answered) as a reset of the count.
    pub(crate) fn record<T>(&self, outcome: &Result<T>) {
        if self.config.is_off() {
            return;
        }
        match outcome {
            Err(err) if err.is_unavailable() && !err.is_circuit_open() => {
                let failures = self
                    .failures
                    .fetch_add(1, Ordering::AcqRel)
                    .saturating_add(1);
                if failures >= self.config.failures && !self.open.swap(true, Ordering::AcqRel) {
                    metrics::gauge!(crate::metrics::STORE_CIRCUIT_OPEN).set(1.0);
                    tracing::warn!(
                        failures,
                        probe = ?self.config.probe,
                        error = %err,
                        "the store is failing: circuit open, requests that need it are refused \
                         at once until it answers a probe"
                    );
                }
            }
            _ => {
                if self.failures.load(Ordering::Acquire) != 0 {
                    self.failures.store(0, Ordering::Release);
                }
            }
        }
    }

    /// One probe while open: when both stores answer (a ping of the event store, a lookup
    /// of an unknown session), the breaker closes. Asking only the event store would close it
    /// while a separate session store is still down, to open again a few requests later.
    pub(crate) async fn probe(
        &self,
        buffer: &Arc<dyn EventBuffer>,
        sessions: &Arc<dyn SessionStore>,
    ) {
        if !self.is_open() {
            return;
        }
        let answered = match buffer.ping().await {
            Ok(()) => sessions.load(&SessionId::random()).await.map(drop),
            Err(err) => Err(err),
        };
        match answered {
            Ok(()) => {
                self.failures.store(0, Ordering::Release);
                if self.open.swap(false, Ordering::AcqRel) {
                    metrics::gauge!(crate::metrics::STORE_CIRCUIT_OPEN).set(0.0);
                    tracing::info!("the store answers again: circuit closed");
                }
            }
            Err(err) => tracing::debug!(error = %err, "store probe failed; the circuit stays open"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> Result<()> {
        Err(Error::unavailable(std::io::Error::other("down")))
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let breaker = Breaker::new(BreakerConfig::new(3, Duration::from_secs(1)));
        breaker.record(&down());
        breaker.record(&down());
        breaker.record(&Ok(()));
        breaker.record(&down());
        breaker.record(&down());
        assert!(!breaker.is_open(), "an answer in between resets the count");
        // Validation errors and other answers of the store do not count.
        breaker.record::<()>(&Err(Error::InvalidStreamName("x y".into())));
        breaker.record::<()>(&Err(Error::store(std::io::Error::other("full"))));
        assert!(!breaker.is_open());
        for _ in 0..3 {
            breaker.record(&down());
        }
        assert!(breaker.is_open());
        let refused = breaker.check().unwrap_err();
        assert!(refused.is_circuit_open() && refused.is_unavailable());
        // Refusals of the open breaker are not failures of the store.
        breaker.record::<()>(&Err(refused));
    }

    #[test]
    fn off_never_opens() {
        let breaker = Breaker::new(BreakerConfig::off());
        for _ in 0..100 {
            breaker.record(&down());
        }
        assert!(!breaker.is_open());
        assert!(breaker.check().is_ok());
    }
}
