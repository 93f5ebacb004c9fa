//! When to send a telemetry request again: jittered exponential backoff
//! and the server's `Retry-After`.

use std::time::Duration;

/// The ceiling of the first wait; it doubles with each retry up to the
/// configured maximum.
pub(crate) const FIRST_DELAY: Duration = Duration::from_millis(250);

/// No wait is longer than this, whatever was configured or asked:
/// `Duration::MAX` must not overflow a timer.
pub(crate) const LONGEST_WAIT: Duration = Duration::from_secs(24 * 3600);

/// The wait before retry number `retry` (0 for the first), a random time
/// in `[d/2, d]` with `d = min(max, FIRST_DELAY * 2^retry)`, given a
/// uniform `unit` in `[0, 1)`. The jitter keeps many gateways that failed
/// together from retrying together.
pub(crate) fn backoff(retry: u32, max: Duration, unit: f64) -> Duration {
    let ceiling = FIRST_DELAY
        .saturating_mul(1u32 << retry.min(20))
        .min(max)
        .min(LONGEST_WAIT);
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    ceiling.mul_f64(0.5 + 0.5 * unit)
}

/// A `Retry-After` value in delta-seconds (RFC 9110 §10.2.3). The
/// HTTP-date form is not read (the caller falls back to its backoff).
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Digits only: a parse failure can only be an overflow.
    Some(
        value
            .parse::<u64>()
            .map_or(LONGEST_WAIT, Duration::from_secs),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_saturates() {
        assert_eq!(backoff(0, Duration::from_secs(10), 1.0), FIRST_DELAY);
        assert_eq!(backoff(0, Duration::from_secs(10), 0.0), FIRST_DELAY / 2);
        assert_eq!(
            backoff(3, Duration::from_secs(10), 1.0),
            Duration::from_secs(2)
        );
        assert_eq!(
            backoff(30, Duration::from_secs(10), 1.0),
            Duration::from_secs(10)
        );
        for retry in [0, 1, 19, 20, 21, u32::MAX] {
            for max in [Duration::ZERO, Duration::from_millis(1), Duration::MAX] {
                for unit in [0.0, 0.5, 0.999, f64::NAN, -1.0, 2.0] {
                    let d = backoff(retry, max, unit);
                    assert!(d <= max.min(LONGEST_WAIT), "{d:?}");
                }
            }
        }
    }

    #[test]
    fn retry_after_reads_seconds_only() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999"),
            Some(LONGEST_WAIT)
        );
        assert_eq!(
            parse_retry_after(&u64::MAX.to_string()),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in ["", "-1", "1.5", "Wed, 21 Oct 2015 07:28:00 GMT", "+3"] {
            assert_eq!(parse_retry_after(bad), None, "{bad}");
        }
    }
}
