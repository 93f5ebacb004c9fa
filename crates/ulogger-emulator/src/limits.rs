//! AWS IoT Core's per-connection limits (PROTOCOL §1): the configuration
//! ([`PlatformLimits`]), what enforcing them did so far ([`LimitStats`]),
//! and the token bucket behind both rates.
//!
//! The bucket is pure arithmetic on the instants it is given, so it can be
//! tested without a clock; every operation saturates, so no rate or
//! elapsed time can make it overflow or panic.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::EmulatorError;

/// AWS IoT Core: publish requests per second per connection.
const AWS_PUBLISHES_PER_SECOND: u64 = 100;
/// AWS IoT Core: inbound bytes per second per connection.
const AWS_BYTES_PER_SECOND: u64 = 512 * 1024;
/// AWS IoT Core: subscriptions per connection.
const AWS_MAX_SUBSCRIPTIONS: usize = 50;
/// AWS IoT Core: topic filters in one SUBSCRIBE.
const AWS_MAX_FILTERS_PER_SUBSCRIBE: usize = 8;
/// AWS IoT Core: the longest keep-alive it grants, and the one it uses for
/// a CONNECT asking for 0 (none) or more.
pub(crate) const AWS_MAX_KEEP_ALIVE: Duration = Duration::from_secs(1200);

/// The per-connection limits the emulator's broker enforces on client
/// connections, AWS IoT Core's by default ([`PlatformLimits::aws`]):
///
/// - **publish rate**: a publish (QoS 0 or 1) beyond the rate is discarded:
///   not routed, no PUBACK, the connection stays open; a
///   [`crate::RecordKind::Rejected`] record says so and
///   [`LimitStats::discarded_publishes`] counts it.
/// - **byte rate**: beyond it the broker reads the connection's further
///   bytes later, as AWS IoT delays (not drops) such data. Keep-alive does
///   not count the time the broker itself held reading back.
/// - **subscriptions per connection**: a filter that would take the
///   connection over the limit gets SUBACK failure (0x80); the others in
///   the same SUBSCRIBE are granted. Re-subscribing to a filter held
///   already replaces it and does not count twice; UNSUBSCRIBE frees a
///   slot.
/// - **filters per SUBSCRIBE**: a SUBSCRIBE with more filters closes the
///   connection without a SUBACK, as AWS IoT does.
/// - **longest keep-alive** ([`PlatformLimits::max_keep_alive`]): a CONNECT
///   asking for keep-alive 0 (MQTT: none) or for more gets this one, so a
///   silent connection is always closed, after 1.5 times it. Unlike the
///   others it is never lifted: it is what keeps a vanished client from
///   holding its connection forever.
///
/// Both rates are token buckets holding one second's worth, full at
/// connect: a burst of up to one second's allowance passes at once.
/// `None` lifts a limit; zero is refused by [`crate::Emulator::start`].
/// The emulator's own cloud and attach mode are never limited.
///
/// ```
/// use ulogger_emulator::{EmulatorConfig, PlatformLimits};
/// // A benchmark: no limits at all.
/// let bench = EmulatorConfig::new(42).limits(PlatformLimits::unlimited());
/// // AWS IoT's limits, but a stricter publish rate.
/// let strict = EmulatorConfig::new(42).limits(PlatformLimits::aws().publishes_per_second(Some(10)));
/// # let _ = (bench, strict);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlatformLimits {
    publishes_per_second: Option<u64>,
    bytes_per_second: Option<u64>,
    max_subscriptions: Option<usize>,
    max_filters_per_subscribe: Option<usize>,
    max_keep_alive: Duration,
}

impl Default for PlatformLimits {
    /// [`PlatformLimits::aws`].
    fn default() -> Self {
        PlatformLimits::aws()
    }
}

impl PlatformLimits {
    /// AWS IoT Core's limits: 100 publishes/s, 512 KiB/s inbound, 50
    /// subscriptions, 8 filters per SUBSCRIBE, keep-alive at most 1,200 s.
    pub const fn aws() -> Self {
        PlatformLimits {
            publishes_per_second: Some(AWS_PUBLISHES_PER_SECOND),
            bytes_per_second: Some(AWS_BYTES_PER_SECOND),
            max_subscriptions: Some(AWS_MAX_SUBSCRIPTIONS),
            max_filters_per_subscribe: Some(AWS_MAX_FILTERS_PER_SUBSCRIBE),
            max_keep_alive: AWS_MAX_KEEP_ALIVE,
        }
    }

    /// No limits (benchmarks, tests about something else), except the
    /// longest keep-alive, AWS IoT's 1,200 s as in [`PlatformLimits::aws`].
    pub const fn unlimited() -> Self {
        PlatformLimits {
            publishes_per_second: None,
            bytes_per_second: None,
            max_subscriptions: None,
            max_filters_per_subscribe: None,
            max_keep_alive: AWS_MAX_KEEP_ALIVE,
        }
    }

    /// Publish requests per second per connection (`None`: no limit).
    #[must_use]
    pub const fn publishes_per_second(mut self, rate: Option<u64>) -> Self {
        self.publishes_per_second = rate;
        self
    }

    /// Inbound bytes per second per connection (`None`: no limit). Counts
    /// the MQTT bytes a client sends (inside TLS, when TLS is on).
    #[must_use]
    pub const fn bytes_per_second(mut self, rate: Option<u64>) -> Self {
        self.bytes_per_second = rate;
        self
    }

    /// Subscriptions one connection may hold (`None`: no limit).
    #[must_use]
    pub const fn max_subscriptions(mut self, count: Option<usize>) -> Self {
        self.max_subscriptions = count;
        self
    }

    /// Topic filters one SUBSCRIBE may carry (`None`: no limit).
    #[must_use]
    pub const fn max_filters_per_subscribe(mut self, count: Option<usize>) -> Self {
        self.max_filters_per_subscribe = count;
        self
    }

    /// The longest keep-alive granted (default: AWS IoT's 1,200 s). A
    /// client asking for 0 (MQTT: no keep-alive) or for more gets this, so
    /// a connection silent for 1.5 times it is closed. Shorten it in tests
    /// that check this without waiting half an hour; zero is refused by
    /// [`crate::Emulator::start`].
    #[must_use]
    pub const fn max_keep_alive(mut self, longest: Duration) -> Self {
        self.max_keep_alive = longest;
        self
    }

    /// True when no limit is set that [`PlatformLimits::unlimited`] lifts
    /// (the longest keep-alive is not looked at).
    pub fn is_unlimited(&self) -> bool {
        self.max_keep_alive(AWS_MAX_KEEP_ALIVE) == PlatformLimits::unlimited()
    }

    /// The keep-alive a connection gets when its CONNECT asks for
    /// `requested` seconds.
    pub(crate) fn granted_keep_alive(&self, requested: u16) -> Duration {
        match requested {
            0 => self.max_keep_alive,
            secs => Duration::from_secs(u64::from(secs)).min(self.max_keep_alive),
        }
    }

    pub(crate) fn publish_rate(&self) -> Option<u64> {
        self.publishes_per_second
    }

    pub(crate) fn byte_rate(&self) -> Option<u64> {
        self.bytes_per_second
    }

    pub(crate) fn subscriptions(&self) -> Option<usize> {
        self.max_subscriptions
    }

    pub(crate) fn filters_per_subscribe(&self) -> Option<usize> {
        self.max_filters_per_subscribe
    }

    pub(crate) fn validate(&self) -> Result<(), EmulatorError> {
        let zero = |field| EmulatorError::InvalidConfig {
            field,
            reason: "0 would refuse everything; None lifts the limit".into(),
        };
        if self.publishes_per_second == Some(0) {
            return Err(zero("limits.publishes_per_second"));
        }
        if self.bytes_per_second == Some(0) {
            return Err(zero("limits.bytes_per_second"));
        }
        if self.max_subscriptions == Some(0) {
            return Err(zero("limits.max_subscriptions"));
        }
        if self.max_filters_per_subscribe == Some(0) {
            return Err(zero("limits.max_filters_per_subscribe"));
        }
        if self.max_keep_alive.is_zero() {
            return Err(EmulatorError::InvalidConfig {
                field: "limits.max_keep_alive",
                reason: "0 would close every connection at once".into(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for PlatformLimits {
    /// `100 publishes/s, 512 KiB/s, 50 subscriptions, 8 filters per
    /// SUBSCRIBE`, with `no ... limit` for a lifted one; `none` when all are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unlimited() {
            return f.write_str("none");
        }
        let publishes = match self.publishes_per_second {
            Some(n) => format!("{n} publishes/s"),
            None => "no publish-rate limit".into(),
        };
        let bytes = match self.bytes_per_second {
            Some(n) if n % 1024 == 0 => format!("{} KiB/s", n / 1024),
            Some(n) => format!("{n} bytes/s"),
            None => "no byte-rate limit".into(),
        };
        let subscriptions = match self.max_subscriptions {
            Some(n) => format!("{n} subscriptions"),
            None => "no subscription limit".into(),
        };
        let filters = match self.max_filters_per_subscribe {
            Some(n) => format!("{n} filters per SUBSCRIBE"),
            None => "no filters-per-SUBSCRIBE limit".into(),
        };
        write!(f, "{publishes}, {bytes}, {subscriptions}, {filters}")
    }
}

/// What enforcing [`PlatformLimits`] has done since the emulator started,
/// over all connections ([`crate::Emulator::limit_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LimitStats {
    /// Publishes discarded for exceeding the publish rate.
    pub discarded_publishes: u64,
    /// Topic filters refused: over the subscriptions per connection, or
    /// in a SUBSCRIBE with too many filters.
    pub refused_filters: u64,
    /// How long, summed over connections, the broker held reading back to
    /// keep to the byte rate.
    pub read_delay: Duration,
}

/// The broker's live counters behind [`LimitStats`].
#[derive(Debug, Default)]
pub(crate) struct LimitCounters {
    discarded_publishes: AtomicU64,
    refused_filters: AtomicU64,
    read_delay_nanos: AtomicU64,
}

impl LimitCounters {
    pub(crate) fn discarded_publish(&self) {
        self.discarded_publishes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused_filters(&self, count: usize) {
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        self.refused_filters.fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn read_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        // Saturates instead of wrapping (after 584 years of delay).
        let _ = self
            .read_delay_nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
                Some(total.saturating_add(nanos))
            });
    }

    pub(crate) fn snapshot(&self) -> LimitStats {
        LimitStats {
            discarded_publishes: self.discarded_publishes.load(Ordering::Relaxed),
            refused_filters: self.refused_filters.load(Ordering::Relaxed),
            read_delay: Duration::from_nanos(self.read_delay_nanos.load(Ordering::Relaxed)),
        }
    }
}

/// Nano-tokens per token: the bucket counts in billionths so that a rate
/// of r tokens/s adds exactly r nano-tokens per elapsed nanosecond, with
/// integers only.
const NANO: u128 = 1_000_000_000;

/// A token bucket holding one second's worth of tokens (`rate`), refilled
/// continuously at `rate` tokens per second, full when created.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    /// Tokens per second, at least 1.
    rate: u64,
    /// Nano-tokens in the bucket, at most `rate * NANO`.
    level: u128,
    /// The instant `level` was last brought up to date.
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` tokens per second (0 is taken
    /// as 1: configurations are validated before they get here).
    pub(crate) fn full(rate: u64, now: Instant) -> TokenBucket {
        let rate = rate.max(1);
        TokenBucket {
            rate,
            level: Self::capacity_of(rate),
            updated: now,
        }
    }

    fn capacity_of(rate: u64) -> u128 {
        // u64::MAX * 10^9 < 2^94: no overflow.
        u128::from(rate) * NANO
    }

    fn refill(&mut self, now: Instant) {
        // An instant before the last one (never, with a monotonic clock)
        // adds nothing and does not move `updated` back.
        let elapsed = now.saturating_duration_since(self.updated).as_nanos();
        self.level = self
            .level
            .saturating_add(elapsed.saturating_mul(u128::from(self.rate)))
            .min(Self::capacity_of(self.rate));
        self.updated = self.updated.max(now);
    }

    /// Whole tokens available at `now`; never more than `rate`.
    pub(crate) fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        // level <= rate * NANO, so the quotient fits in a u64.
        u64::try_from(self.level / NANO).unwrap_or(u64::MAX)
    }

    /// Takes `n` tokens if there are that many at `now`; otherwise takes
    /// none and returns false.
    pub(crate) fn try_take(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        let want = u128::from(n).saturating_mul(NANO);
        match self.level.checked_sub(want) {
            Some(left) => {
                self.level = left;
                true
            }
            None => false,
        }
    }

    /// Takes up to `n` tokens at `now` (the bucket never goes below
    /// empty).
    pub(crate) fn take(&mut self, n: u64, now: Instant) {
        self.refill(now);
        self.level = self
            .level
            .saturating_sub(u128::from(n).saturating_mul(NANO));
    }

    /// How long from `now` until `n` tokens (at most the bucket's
    /// capacity) are available: zero if they are now, never more than one
    /// second.
    pub(crate) fn wait_for(&mut self, n: u64, now: Instant) -> Duration {
        self.refill(now);
        let want = u128::from(n.min(self.rate)).saturating_mul(NANO);
        let missing = want.saturating_sub(self.level);
        // Rounded up, so that after the wait the tokens are there.
        let nanos = missing.div_ceil(u128::from(self.rate));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_gives_one_seconds_worth_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(100, t0);
        for i in 0..100 {
            assert!(bucket.try_take(1, t0), "token {i}");
        }
        assert!(!bucket.try_take(1, t0));
        // 100/s: one token every 10 ms.
        assert!(!bucket.try_take(1, t0 + ms(9)));
        assert!(bucket.try_take(1, t0 + ms(10)));
        assert!(!bucket.try_take(1, t0 + ms(10)));
        assert_eq!(bucket.available(t0 + ms(510)), 50);
        // It never holds more than one second's worth.
        assert_eq!(bucket.available(t0 + Duration::from_secs(3600)), 100);
    }

    #[test]
    fn a_refused_take_takes_nothing() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(10, t0);
        assert!(!bucket.try_take(11, t0));
        assert_eq!(bucket.available(t0), 10);
        bucket.take(25, t0);
        assert_eq!(bucket.available(t0), 0);
    }

    #[test]
    fn wait_for_says_when_the_tokens_are_there() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(512 * 1024, t0);
        assert_eq!(bucket.wait_for(8192, t0), Duration::ZERO);
        bucket.take(512 * 1024, t0);
        let wait = bucket.wait_for(8192, t0);
        // 8192 / 524288 s = 15.625 ms.
        assert_eq!(wait, Duration::from_micros(15_625));
        assert_eq!(bucket.available(t0 + wait), 8192);
        // More than the capacity is waited for as the capacity.
        bucket.take(u64::MAX, t0 + wait);
        assert_eq!(bucket.wait_for(u64::MAX, t0 + wait), Duration::from_secs(1));
    }

    #[test]
    fn a_clock_going_back_adds_nothing() {
        let t0 = Instant::now();
        let later = t0 + ms(500);
        let mut bucket = TokenBucket::full(100, later);
        bucket.take(100, later);
        assert_eq!(bucket.available(t0), 0);
        assert_eq!(bucket.available(later + ms(10)), 1);
    }

    #[test]
    fn zero_rates_and_sizes_are_refused_by_validation() {
        assert!(PlatformLimits::aws().validate().is_ok());
        assert!(PlatformLimits::unlimited().validate().is_ok());
        let extreme = PlatformLimits::aws()
            .publishes_per_second(Some(u64::MAX))
            .bytes_per_second(Some(u64::MAX))
            .max_subscriptions(Some(usize::MAX))
            .max_filters_per_subscribe(Some(usize::MAX));
        assert!(extreme.validate().is_ok());
        for (limits, field) in [
            (
                PlatformLimits::aws().publishes_per_second(Some(0)),
                "limits.publishes_per_second",
            ),
            (
                PlatformLimits::aws().bytes_per_second(Some(0)),
                "limits.bytes_per_second",
            ),
            (
                PlatformLimits::aws().max_subscriptions(Some(0)),
                "limits.max_subscriptions",
            ),
            (
                PlatformLimits::aws().max_filters_per_subscribe(Some(0)),
                "limits.max_filters_per_subscribe",
            ),
            (
                PlatformLimits::aws().max_keep_alive(Duration::ZERO),
                "limits.max_keep_alive",
            ),
        ] {
            match limits.validate() {
                Err(EmulatorError::InvalidConfig { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn keep_alive_0_or_over_the_maximum_gets_the_maximum() {
        let aws = PlatformLimits::aws();
        assert_eq!(aws.granted_keep_alive(0), Duration::from_secs(1200));
        assert_eq!(aws.granted_keep_alive(30), Duration::from_secs(30));
        assert_eq!(aws.granted_keep_alive(1200), Duration::from_secs(1200));
        assert_eq!(aws.granted_keep_alive(u16::MAX), Duration::from_secs(1200));
        assert_eq!(
            PlatformLimits::unlimited().granted_keep_alive(0),
            Duration::from_secs(1200)
        );
        let short = aws.max_keep_alive(Duration::from_secs(2));
        assert_eq!(short.granted_keep_alive(0), Duration::from_secs(2));
        assert_eq!(short.granted_keep_alive(1), Duration::from_secs(1));
        let unlimited = PlatformLimits::unlimited().max_keep_alive(Duration::from_secs(2));
        assert!(unlimited.is_unlimited());
    }

    #[test]
    fn limits_describe_themselves() {
        assert_eq!(
            PlatformLimits::aws().to_string(),
            "100 publishes/s, 512 KiB/s, 50 subscriptions, 8 filters per SUBSCRIBE"
        );
        assert_eq!(PlatformLimits::unlimited().to_string(), "none");
        assert_eq!(
            PlatformLimits::unlimited()
                .bytes_per_second(Some(1000))
                .max_subscriptions(Some(3))
                .to_string(),
            "no publish-rate limit, 1000 bytes/s, 3 subscriptions, no filters-per-SUBSCRIBE limit"
        );
        assert!(PlatformLimits::unlimited().is_unlimited());
        assert!(!PlatformLimits::aws().is_unlimited());
    }

    #[test]
    fn counters_saturate() {
        let counters = LimitCounters::default();
        counters.read_delay(Duration::MAX);
        counters.read_delay(Duration::MAX);
        counters.refused_filters(usize::MAX);
        counters.discarded_publish();
        let stats = counters.snapshot();
        assert_eq!(stats.read_delay, Duration::from_nanos(u64::MAX));
        assert_eq!(stats.discarded_publishes, 1);
    }

    /// One step of a bucket's life: time passes, then tokens are asked for.
    #[derive(Debug, Clone)]
    enum Step {
        TryTake { after: Duration, n: u64 },
        Take { after: Duration, n: u64 },
        WaitFor { after: Duration, n: u64 },
    }

    fn rate() -> impl Strategy<Value = u64> {
        prop_oneof![
            1u64..=1_000,
            Just(512 * 1024),
            any::<u64>().prop_map(|r| r.max(1)),
            Just(u64::MAX),
            Just(1),
        ]
    }

    fn amount() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..=200, any::<u64>(), Just(u64::MAX)]
    }

    fn after() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (0u64..=2_000_000_000).prop_map(Duration::from_nanos),
            Just(Duration::ZERO),
            // Far past any capacity, yet still addable to an Instant.
            (0u64..=(1u64 << 40)).prop_map(Duration::from_secs),
        ]
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (after(), amount()).prop_map(|(after, n)| Step::TryTake { after, n }),
            (after(), amount()).prop_map(|(after, n)| Step::Take { after, n }),
            (after(), amount()).prop_map(|(after, n)| Step::WaitFor { after, n }),
        ]
    }

    proptest! {
        /// Whatever the rate, amounts and time steps: no panic, never more
        /// than the capacity, a refused take changes nothing, a wait is at
        /// most a second and is enough, and over any run the tokens taken
        /// are at most the capacity plus what the elapsed time refilled.
        #[test]
        fn the_bucket_keeps_its_promises(rate in rate(), steps in proptest::collection::vec(step(), 0..40)) {
            let start = Instant::now();
            let mut now = start;
            let mut bucket = TokenBucket::full(rate, now);
            let mut granted: u128 = 0;
            for step in steps {
                let after = match &step {
                    Step::TryTake { after, .. } | Step::Take { after, .. } | Step::WaitFor { after, .. } => *after,
                };
                let Some(next) = now.checked_add(after) else { continue };
                now = next;
                let before = bucket.available(now);
                prop_assert!(before <= rate);
                match step {
                    Step::TryTake { n, .. } => {
                        let taken = bucket.try_take(n, now);
                        prop_assert_eq!(taken, n <= before);
                        let left = bucket.available(now);
                        if taken {
                            prop_assert_eq!(left, before - n);
                            granted = granted.saturating_add(u128::from(n));
                        } else {
                            prop_assert_eq!(left, before);
                        }
                    }
                    Step::Take { n, .. } => {
                        bucket.take(n, now);
                        prop_assert_eq!(bucket.available(now), before.saturating_sub(n));
                        granted = granted.saturating_add(u128::from(n.min(before)));
                    }
                    Step::WaitFor { n, .. } => {
                        let wait = bucket.wait_for(n, now);
                        prop_assert!(wait <= Duration::from_secs(1));
                        prop_assert_eq!(wait.is_zero(), before >= n.min(rate));
                        let mut probe = bucket.clone();
                        prop_assert!(probe.available(now + wait) >= n.min(rate));
                    }
                }
                let elapsed = now.duration_since(start).as_nanos();
                let refilled = elapsed.saturating_mul(u128::from(rate)) / NANO;
                let bound = u128::from(rate).saturating_add(refilled);
                prop_assert!(granted <= bound, "granted {} > bound {}", granted, bound);
            }
        }
    }
}
