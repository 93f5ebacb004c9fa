//! The time on each line of a long-running command (`agent`,
//! `emulator`, `config watch`): RFC 3339 in UTC with microseconds, as the
//! log lines on standard error have it (the tracing subscriber's own
//! timer writes both), so the two streams sort together.

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

/// Now, e.g. `2026-12-05T09:05:26.123456Z`.
pub fn now() -> String {
    let mut text = String::with_capacity(27);
    if SystemTime.format_time(&mut Writer::new(&mut text)).is_err() {
        // Only a clock before 1970 fails; a line without its time is
        // better than none.
        text.clear();
        text.push('-');
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn the_time_is_rfc_3339_utc() {
        let text = super::now();
        let parsed =
            time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                .unwrap();
        assert_eq!(parsed.offset(), time::UtcOffset::UTC);
        assert!(text.ends_with('Z'), "{text}");
        let age = time::OffsetDateTime::now_utc() - parsed;
        assert!(age.whole_seconds().abs() < 60, "{text}");
    }
}
