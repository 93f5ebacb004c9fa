//! When to try connecting again.

use std::time::Duration;

/// No two connection attempts start less than this far apart, whatever
/// happened in between: a flapping link must not hammer the broker.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest wait between attempts unless configured otherwise: a
/// gateway is back within a few seconds of the broker's return.
pub(crate) const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(5);

/// Capped exponential backoff with jitter.
///
/// After `n` consecutive failures the next attempt waits a random time in
/// `[d/2, d]` with `d = min(max, 2^n s)`, and never less than
/// [`MIN_INTERVAL`] after the previous attempt started. The jitter spreads
/// the reconnects of many gateways after a broker outage.
#[derive(Debug)]
pub(crate) struct Backoff {
    failures: u32,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(DEFAULT_MAX_DELAY)
    }
}

impl Backoff {
    /// Backoff capped at `max` (any value: it saturates).
    pub fn new(max: Duration) -> Backoff {
        Backoff { failures: 0, max }
    }

    /// The delay before the next attempt, given a uniform random `unit` in
    /// `[0, 1)` (passed in so that the schedule can be tested).
    pub fn delay(&self, unit: f64) -> Duration {
        if self.failures == 0 {
            return MIN_INTERVAL;
        }
        let ceiling = self
            .max
            .min(Duration::from_secs(1u64 << self.failures.min(16)));
        let jittered = ceiling.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0));
        jittered.max(MIN_INTERVAL)
    }

    /// The delay before the next attempt, with fresh randomness.
    pub fn next_delay(&self) -> Duration {
        self.delay(rand::random::<f64>())
    }

    pub fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_below_one_second_and_capped() {
        for max in [
            DEFAULT_MAX_DELAY,
            Duration::from_secs(60),
            Duration::MAX,
            Duration::ZERO,
        ] {
            let mut b = Backoff::new(max);
            for _ in 0..40 {
                for unit in [0.0, 0.3, 0.999] {
                    let d = b.delay(unit);
                    assert!(d >= MIN_INTERVAL, "{d:?}");
                    assert!(d <= max.max(MIN_INTERVAL), "{d:?}");
                    assert!(d <= Duration::from_secs(1 << 16), "{d:?}");
                }
                b.failed();
            }
        }
    }

    #[test]
    fn by_default_a_long_outage_costs_at_most_five_seconds_after_it() {
        let mut b = Backoff::default();
        for _ in 0..100 {
            b.failed();
        }
        assert_eq!(b.delay(1.0), Duration::from_secs(5));
    }

    #[test]
    fn grows_exponentially_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(60));
        b.failed();
        b.failed();
        b.failed(); // ceiling 8 s
        assert_eq!(b.delay(0.0), Duration::from_secs(4));
        assert_eq!(b.delay(1.0), Duration::from_secs(8));
        b.succeeded();
        assert_eq!(b.delay(0.7), MIN_INTERVAL);
    }
}
