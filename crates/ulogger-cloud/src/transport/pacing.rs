//! Publish pacing: when the next PUBLISH may be written, given the
//! connection's rate limits ([`Pacing`]).
//!
//! Each limit is a token bucket kept as a GCRA ("generic cell rate
//! algorithm") in integer nanoseconds: one number, the *theoretical
//! arrival time* `tat`, at which the bucket would be full again. The
//! bucket holds `capacity` nanoseconds' worth of budget (a tenth of a
//! second's, at least one unit); a packet of cost `k` may go at `now` if
//! the debt `tat - now` plus `k` fits in it, or, for a packet larger than
//! the whole bucket, once the bucket is full; either way `tat` then moves
//! on by `k`. A large packet thus goes at once and delays the ones after
//! it instead of waiting forever.
//!
//! Why a small bucket: what we write in any interval of length `t` is at
//! most `capacity + t` worth, so a broker that counts with a bucket of a
//! whole second (AWS IoT) keeps at least `1 s - capacity` (0.9 s) of its
//! budget as headroom for packets that jitter on the way bunches up.
//!
//! Everything here is pure arithmetic on `u64` nanoseconds, saturating at
//! the ends: no rate, size or time can make it panic or overflow.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::Pacing;

const NANOS_PER_SECOND: u128 = 1_000_000_000;
/// The bucket holds this fraction of a second's budget (1/10).
const BURST_DIVISOR: u64 = 10;

/// One rate limit: `rate` units per second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limit {
    rate: u64,
    /// The bucket's size in nanoseconds of budget.
    capacity: u64,
    /// When the bucket is full again (nanoseconds since the pacer's origin).
    tat: u64,
}

impl Limit {
    /// A limit of `rate` units per second (a rate of 0 is taken as 1; the
    /// configuration refuses it before it gets here).
    pub fn new(rate: u64) -> Limit {
        let rate = rate.max(1);
        let mut limit = Limit {
            rate,
            capacity: 0,
            tat: 0,
        };
        limit.capacity = limit.cost((rate / BURST_DIVISOR).max(1));
        limit
    }

    /// The budget `units` take, in nanoseconds, rounded up (so that we
    /// never go faster than the rate).
    pub fn cost(&self, units: u64) -> u64 {
        let rate = u128::from(self.rate);
        let nanos = (u128::from(units) * NANOS_PER_SECOND).div_ceil(rate);
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }

    /// The earliest time at which `units` may go.
    pub fn earliest(&self, units: u64) -> u64 {
        let slack = self.capacity.saturating_sub(self.cost(units));
        self.tat.saturating_sub(slack)
    }

    /// Spends the budget of `units` sent at `now` (which should be no
    /// earlier than [`Limit::earliest`]).
    pub fn take(&mut self, now: u64, units: u64) {
        self.tat = self.tat.max(now).saturating_add(self.cost(units));
    }
}

/// The limits of one connection, applied together.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    origin: Instant,
    publishes: Option<Limit>,
    bytes: Option<Limit>,
}

impl Pacer {
    /// A pacer for `pacing`, or `None` when pacing is off (so that an
    /// unpaced connection pays nothing for it).
    pub fn new(pacing: Pacing, origin: Instant) -> Option<Pacer> {
        if pacing.is_off() {
            return None;
        }
        Some(Pacer {
            origin,
            publishes: pacing.publishes_per_second.map(Limit::new),
            bytes: pacing.bytes_per_second.map(Limit::new),
        })
    }

    /// Takes the budget of one PUBLISH packet of `size` bytes if it may be
    /// written at `now`; otherwise says when it may.
    pub fn try_take(&mut self, now: Instant, size: usize) -> Result<(), Instant> {
        let now_ns = nanos_since(self.origin, now);
        match self.try_take_at(now_ns, size) {
            Ok(()) => Ok(()),
            Err(at) => Err(self
                .origin
                .checked_add(Duration::from_nanos(at))
                .unwrap_or_else(|| super::far_future(now))),
        }
    }

    /// [`Pacer::try_take`] on nanoseconds since the origin.
    pub fn try_take_at(&mut self, now: u64, size: usize) -> Result<(), u64> {
        let bytes = u64::try_from(size).unwrap_or(u64::MAX);
        let earliest = self
            .publishes
            .as_ref()
            .map_or(0, |l| l.earliest(1))
            .max(self.bytes.as_ref().map_or(0, |l| l.earliest(bytes)));
        if now < earliest {
            return Err(earliest);
        }
        if let Some(limit) = &mut self.publishes {
            limit.take(now, 1);
        }
        if let Some(limit) = &mut self.bytes {
            limit.take(now, bytes);
        }
        Ok(())
    }
}

fn nanos_since(origin: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: u64 = 1_000_000_000;

    fn publishes_only(rate: u64) -> Pacer {
        Pacer {
            origin: Instant::now(),
            publishes: Some(Limit::new(rate)),
            bytes: None,
        }
    }

    fn bytes_only(rate: u64) -> Pacer {
        Pacer {
            origin: Instant::now(),
            publishes: None,
            bytes: Some(Limit::new(rate)),
        }
    }

    /// Sends `count` publishes of `size` bytes as early as the pacer
    /// allows, starting at 0; returns their send times.
    fn send_greedily(pacer: &mut Pacer, count: usize, size: usize) -> Vec<u64> {
        let mut now = 0;
        let mut times = Vec::with_capacity(count);
        while times.len() < count {
            match pacer.try_take_at(now, size) {
                Ok(()) => times.push(now),
                Err(at) => {
                    assert!(at > now, "a refusal names a later time");
                    now = at;
                }
            }
        }
        times
    }

    #[test]
    fn off_is_no_pacer_and_platform_is_the_default() {
        assert!(Pacer::new(Pacing::off(), Instant::now()).is_none());
        assert!(Pacer::new(Pacing::platform(), Instant::now()).is_some());
        assert_eq!(Pacing::default(), Pacing::platform());
        assert!(Pacing::off().publish_rate(5).bytes_per_second.is_none());
    }

    #[test]
    fn burst_is_a_tenth_of_a_second_then_the_rate() {
        let mut pacer = publishes_only(100);
        let times = send_greedily(&mut pacer, 110, 10);
        // Ten at once, then one every 10 ms.
        assert!(times[..10].iter().all(|t| *t == 0), "{times:?}");
        for pair in times[10..].windows(2) {
            assert_eq!(pair[1] - pair[0], 10_000_000);
        }
        // The 110th goes at 1 s: the burst of 10, then 100/s.
        assert_eq!(times[109], SECOND);
    }

    #[test]
    fn a_slow_rate_still_allows_one_at_a_time() {
        let mut pacer = publishes_only(3);
        let times = send_greedily(&mut pacer, 3, 1);
        assert_eq!(times, [0, 333_333_334, 666_666_668]);
    }

    #[test]
    fn a_payload_larger_than_a_second_of_budget_goes_and_delays_the_next() {
        let mut pacer = bytes_only(1000);
        assert_eq!(pacer.try_take_at(0, 5000), Ok(()), "never a deadlock");
        // Five seconds of debt: the next waits until it is paid off (less
        // the slack its own size leaves in the bucket).
        let next = pacer.try_take_at(1, 10).unwrap_err();
        assert_eq!(next, 5 * SECOND - (100_000_000 - 10_000_000));
        assert_eq!(pacer.try_take_at(next, 10), Ok(()));
    }

    #[test]
    fn both_limits_apply_and_the_stricter_one_wins() {
        let mut pacer = Pacer::new(Pacing::new(100, 1000), Instant::now()).unwrap();
        // 1000 B/s with 100-byte publishes is 10/s, stricter than 100/s.
        let times = send_greedily(&mut pacer, 12, 100);
        assert_eq!(times[11] - times[10], SECOND / 10);
        let mut pacer = Pacer::new(Pacing::new(10, u64::MAX), Instant::now()).unwrap();
        let times = send_greedily(&mut pacer, 3, 100_000);
        assert_eq!(times, [0, SECOND / 10, 2 * SECOND / 10]);
    }

    #[test]
    fn extreme_values_saturate() {
        let mut pacer = Pacer::new(Pacing::new(1, 1), Instant::now()).unwrap();
        assert_eq!(pacer.try_take_at(0, usize::MAX), Ok(()));
        assert_eq!(pacer.try_take_at(1, 1), Err(u64::MAX));
        assert_eq!(pacer.try_take_at(u64::MAX, usize::MAX), Ok(()));
        let mut pacer = Pacer::new(Pacing::new(u64::MAX, u64::MAX), Instant::now()).unwrap();
        for _ in 0..1000 {
            assert_eq!(pacer.try_take_at(0, 128 * 1024), Ok(()));
        }
        // A far-future refusal maps to an instant, not a panic.
        let mut pacer = Pacer::new(Pacing::new(1, 1), Instant::now()).unwrap();
        let now = Instant::now();
        pacer.try_take(now, usize::MAX).unwrap();
        assert!(pacer.try_take(now, 1).unwrap_err() > now);
    }

    proptest! {
        #[test]
        fn no_rate_size_or_time_panics(
            rate in any::<u64>(),
            byte_rate in any::<u64>(),
            steps in prop::collection::vec((any::<u64>(), any::<usize>()), 1..20),
        ) {
            let mut pacer = Pacer::new(Pacing::new(rate, byte_rate), Instant::now()).unwrap();
            let mut now = 0u64;
            for (advance, size) in steps {
                now = now.saturating_add(advance);
                match pacer.try_take_at(now, size) {
                    Ok(()) => {}
                    Err(at) => {
                        prop_assert!(at > now);
                        // At the time it names, it is allowed.
                        prop_assert_eq!(pacer.try_take_at(at, size), Ok(()));
                        now = at;
                    }
                }
            }
        }

        /// A broker that counts publishes with a bucket of one second's
        /// capacity (AWS IoT) never runs dry, whatever the pattern of
        /// attempts, and whatever packet sizes up to 0.9 s of byte budget.
        #[test]
        fn a_one_second_broker_bucket_never_runs_dry(
            rate in 1u64..5_000,
            byte_rate in 1_000u64..10_000_000,
            attempts in prop::collection::vec((0u64..50_000_000, 0.0f64..0.9), 1..400),
        ) {
            let mut pacer = Pacer::new(Pacing::new(rate, byte_rate), Instant::now()).unwrap();
            // Broker buckets in exact rational arithmetic: tokens scaled by
            // 1e9 so that refills at `rate` per second are whole numbers.
            let mut count_bucket = u128::from(rate) * u128::from(SECOND);
            let mut byte_bucket = u128::from(byte_rate) * u128::from(SECOND);
            let count_cap = count_bucket;
            let byte_cap = byte_bucket;
            let mut now = 0u64;
            let mut last = 0u64;
            for (gap, share) in attempts {
                now += gap;
                let size = ((byte_rate as f64) * share) as usize;
                let at = match pacer.try_take_at(now, size) {
                    Ok(()) => now,
                    Err(at) => {
                        prop_assert_eq!(pacer.try_take_at(at, size), Ok(()));
                        at
                    }
                };
                let elapsed = u128::from(at - last);
                last = at;
                now = at;
                count_bucket = (count_bucket + elapsed * u128::from(rate)).min(count_cap);
                byte_bucket = (byte_bucket + elapsed * u128::from(byte_rate)).min(byte_cap);
                let count_cost = u128::from(SECOND);
                let byte_cost = size as u128 * u128::from(SECOND);
                prop_assert!(count_bucket >= count_cost, "publish bucket ran dry at {at}");
                prop_assert!(byte_bucket >= byte_cost, "byte bucket ran dry at {at}");
                count_bucket -= count_cost;
                byte_bucket -= byte_cost;
            }
        }
    }
}
