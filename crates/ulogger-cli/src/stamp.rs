//! The time on each line of a long-running command (`agent`,
//! `emulator`, `config watch`): RFC 3339 in UTC with microseconds, the
//! form the tracing subscriber's timer gives the log lines on standard
//! error, so the two streams read (and sort) alike.

use std::time::SystemTime;

/// Now, e.g. `2026-12-05T09:05:26.123456Z`.
pub fn now() -> String {
    at(SystemTime::now())
}

/// `time` as [`now`] writes it.
pub fn at(time: SystemTime) -> String {
    let t = time::OffsetDateTime::from(time);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::FormatTime;

    #[test]
    fn the_time_is_rfc_3339_utc_as_the_log_lines_have_it() {
        let text = super::now();
        let parsed =
            time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                .unwrap();
        assert_eq!(parsed.offset(), time::UtcOffset::UTC);
        let age = time::OffsetDateTime::now_utc() - parsed;
        assert!(age.whole_seconds().abs() < 60, "{text}");
        // The same shape as the subscriber's own timer.
        let mut logged = String::new();
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut Writer::new(&mut logged))
            .unwrap();
        assert_eq!(logged.len(), text.len(), "{logged} vs {text}");
        assert_eq!(logged.as_bytes()[10], b'T');
        assert!(logged.ends_with('Z') && text.ends_with('Z'));
        // A time before the epoch's first second is written too.
        assert_eq!(
            super::at(std::time::UNIX_EPOCH + std::time::Duration::from_micros(1)),
            "1970-01-01T00:00:00.000001Z"
        );
    }
}
