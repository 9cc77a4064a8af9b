//! How long the client waits before reconnecting.

use std::time::Duration;

/// Exponential backoff with jitter and a cap.
///
/// The base delay is the server's last `retry:` value, or [`initial`](Backoff::initial) while
/// the server has sent none. The `n`-th reconnection in a row that does not get an event
/// waits `base × multiplier^(n−1)`, never more than [`max`](Backoff::max), less a random
/// part of up to [`jitter`](Backoff::jitter) of it so that many clients cut at once do not
/// come back at once. A connection that delivers an event starts the count again: the next
/// reconnection waits about `base`.
///
/// The cap holds for the server's `retry:` too: a client never waits longer than `max`.
///
/// ```
/// use std::time::Duration;
/// use resumable_sse_client::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
///     .with_multiplier(2.0)
///     .with_jitter(0.5);
/// // The third failure in a row, before any `retry:` from the server: 400 ms, less up to half.
/// let (low, high) = backoff.bounds(None, 3);
/// assert_eq!((low, high), (Duration::from_millis(200), Duration::from_millis(400)));
/// // Far along, the cap.
/// assert_eq!(backoff.bounds(None, 30).1, Duration::from_secs(1));
/// // The server asked for 300 ms: the first reconnection waits 150–300 ms.
/// let (low, high) = backoff.bounds(Some(Duration::from_millis(300)), 1);
/// assert_eq!((low, high), (Duration::from_millis(150), Duration::from_millis(300)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
}

impl Default for Backoff {
    /// 1 s at first, doubling, at most 30 s, with a jitter of a quarter.
    fn default() -> Self {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Starts at `initial` (until the server sends `retry:`) and never waits longer than
    /// `max` (taken as `initial` when smaller); multiplier 2, jitter 0.25.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            multiplier: 2.0,
            jitter: 0.25,
        }
    }

    /// The growth factor between failed attempts in a row (at least 1; not a number is 1).
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier >= 1.0 { multiplier } else { 1.0 };
        self
    }

    /// The part of each delay that is random, from 0 (none) to 1 (anything from zero to the
    /// delay); values outside are clamped.
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        self
    }

    /// The delay before the first reconnection while the server has sent no `retry:`.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The longest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The growth factor.
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// The random part of each delay.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The range the delay of the `attempt`-th reconnection in a row is drawn from (`attempt`
    /// counts from 1; 0 is taken as 1), given the server's `retry` hint.
    pub fn bounds(&self, retry: Option<Duration>, attempt: u32) -> (Duration, Duration) {
        let base = retry.unwrap_or(self.initial).as_secs_f64();
        let exponent = attempt.saturating_sub(1).min(i32::MAX as u32) as i32;
        let grown = base * self.multiplier.powi(exponent);
        // Only 0 × ∞ is not a number: a zero base stays zero.
        let high = if grown.is_nan() {
            0.0
        } else {
            grown.min(self.max.as_secs_f64())
        };
        let high = Duration::from_secs_f64(high);
        (high.mul_f64(1.0 - self.jitter), high)
    }

    /// The delay for a random `unit` in `[0, 1)`: `unit` 0 gives the upper bound of
    /// [`bounds`](Backoff::bounds), values near 1 its lower bound.
    pub fn delay_with(&self, retry: Option<Duration>, attempt: u32, unit: f64) -> Duration {
        let (low, high) = self.bounds(retry, attempt);
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        high.saturating_sub((high - low).mul_f64(unit))
    }

    /// A delay drawn at random from [`bounds`](Backoff::bounds).
    pub fn delay(&self, retry: Option<Duration>, attempt: u32) -> Duration {
        self.delay_with(retry, attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grows_by_the_multiplier_up_to_the_cap() {
        let b = Backoff::new(100 * MS, 1000 * MS)
            .with_multiplier(3.0)
            .with_jitter(0.0);
        let highs: Vec<_> = (1..=5).map(|n| b.bounds(None, n).1).collect();
        assert_eq!(highs, [100 * MS, 300 * MS, 900 * MS, 1000 * MS, 1000 * MS]);
        assert_eq!(
            b.bounds(None, 0),
            b.bounds(None, 1),
            "0 counts as the first"
        );
        assert_eq!(b.bounds(None, u32::MAX).1, 1000 * MS, "no overflow");
    }

    #[test]
    fn the_server_retry_is_the_base_and_is_capped() {
        let b = Backoff::new(100 * MS, 5000 * MS).with_jitter(0.0);
        assert_eq!(b.bounds(Some(2000 * MS), 1).1, 2000 * MS);
        assert_eq!(b.bounds(Some(2000 * MS), 2).1, 4000 * MS);
        assert_eq!(b.bounds(Some(2000 * MS), 3).1, 5000 * MS);
        assert_eq!(b.bounds(Some(60_000 * MS), 1).1, 5000 * MS);
        assert_eq!(b.bounds(Some(Duration::ZERO), 4).1, Duration::ZERO);
    }

    #[test]
    fn jitter_stays_in_its_range() {
        let b = Backoff::new(400 * MS, 10_000 * MS).with_jitter(0.25);
        assert_eq!(b.bounds(None, 1), (300 * MS, 400 * MS));
        assert_eq!(b.delay_with(None, 1, 0.0), 400 * MS);
        assert_eq!(b.delay_with(None, 1, 1.0), 300 * MS);
        assert_eq!(b.delay_with(None, 1, 0.5), 350 * MS);
        for _ in 0..1000 {
            let d = b.delay(None, 2);
            assert!((600 * MS..=800 * MS).contains(&d), "{d:?}");
        }
        // At the cap the jitter still spreads clients out.
        let (low, high) = b.bounds(None, 20);
        assert_eq!((low, high), (7500 * MS, 10_000 * MS));
    }

    #[test]
    fn settings_are_clamped() {
        let b = Backoff::new(500 * MS, 100 * MS)
            .with_multiplier(0.5)
            .with_jitter(7.0);
        assert_eq!(b.max(), 500 * MS, "max is at least initial");
        assert_eq!(b.multiplier(), 1.0);
        assert_eq!(b.jitter(), 1.0);
        assert_eq!(b.bounds(None, 9), (Duration::ZERO, 500 * MS));
        let b = b.with_multiplier(f64::NAN).with_jitter(f64::NAN);
        assert_eq!((b.multiplier(), b.jitter()), (1.0, 0.0));
        assert_eq!(b.delay_with(None, 1, f64::NAN), 500 * MS);
    }

    #[test]
    fn defaults() {
        let b = Backoff::default();
        assert_eq!(b.initial(), Duration::from_secs(1));
        assert_eq!(b.max(), Duration::from_secs(30));
        assert_eq!((b.multiplier(), b.jitter()), (2.0, 0.25));
    }
}
