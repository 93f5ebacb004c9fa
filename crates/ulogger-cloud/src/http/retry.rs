//! When to send a telemetry request again: jittered exponential backoff
//! and the server's `Retry-After`.

use std::time::{Duration, SystemTime};

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

/// A `Retry-After` value (RFC 9110 §10.2.3): delta-seconds, or an
/// HTTP-date, which is read as the time from `now` until then (zero for a
/// date already past). `None` for anything else (the caller falls back to
/// its backoff).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only: a parse failure can only be an overflow.
        return Some(
            value
                .parse::<u64>()
                .map_or(LONGEST_WAIT, Duration::from_secs),
        );
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
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
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21 07:28:00 UTC
        let parse = |v: &str| parse_retry_after(v, now);
        assert_eq!(parse("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse("99999999999999999999999"), Some(LONGEST_WAIT));
        assert_eq!(
            parse(&u64::MAX.to_string()),
            Some(Duration::from_secs(u64::MAX))
        );
        // The three date formats RFC 9110 asks a recipient to accept.
        for date in [
            "Wed, 21 Oct 2015 07:28:30 GMT",
            "Wednesday, 21-Oct-15 07:28:30 GMT",
            "Wed Oct 21 07:28:30 2015",
        ] {
            assert_eq!(parse(date), Some(Duration::from_secs(30)), "{date}");
        }
        assert_eq!(
            parse("Wed, 21 Oct 2015 07:27:00 GMT"),
            Some(Duration::ZERO),
            "a date already past: now"
        );
        assert_eq!(
            parse("Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(Duration::from_secs(253_402_300_799 - 1_445_412_480))
        );
        for bad in [
            "",
            "-1",
            "1.5",
            "+3",
            "Wed, 21 Oct 2015 25:28:00 GMT",
            "tomorrow",
            "Wed, 21 Oct 2015",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
