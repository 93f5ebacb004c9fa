//! Durations as a person writes them: `500ms`, `2s`, `10m`, `1h`, `1d`,
//! or a bare number in the unit the flag documents (`--scan-interval
//! 500` is 500 ms, `--timeout 10` is 10 s), in flags, environment
//! variables and the config file alike.

/// Milliseconds in each unit a duration may carry.
const UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// The longest duration a setting takes (a week), unless it says
/// otherwise: every interval and wait is meant to come round, and a
/// typo such as `--scan-interval 18446744073709551615` must not mean
/// "never again".
const LONGEST_MS: u64 = 7 * 86_400_000;

/// `text` in milliseconds, at most [`LONGEST_MS`]; a bare number is
/// `bare_ms` milliseconds each.
fn parse_ms(text: &str, bare_ms: u64, bare_unit: &str) -> Result<u64, String> {
    bounded(text, parse_unbounded_ms(text, bare_ms, bare_unit)?)
}

/// `ms`, read from `text`, if it is at most [`LONGEST_MS`].
fn bounded(text: &str, ms: u64) -> Result<u64, String> {
    if ms > LONGEST_MS {
        return Err(format!(
            "'{}' is too long a duration: at most 7d (a week)",
            text.trim()
        ));
    }
    Ok(ms)
}

/// `text` in milliseconds, bounded only by `u64`.
fn parse_unbounded_ms(text: &str, bare_ms: u64, bare_unit: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let unit = unit.trim();
    let usage = || {
        format!("'{text}' is not a duration: write a whole number with a unit (500ms, 2s, 10m, 1h, 1d), or a bare number of {bare_unit}")
    };
    if number.is_empty() {
        return Err(usage());
    }
    let scale = if unit.is_empty() {
        bare_ms
    } else {
        UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, ms)| *ms)
            .ok_or_else(usage)?
    };
    // Only digits: a number that does not parse is beyond `u64`, as is a
    // product that overflows; both are longer than any bound.
    Ok(number
        .parse::<u64>()
        .map_or(u64::MAX, |n| n.saturating_mul(scale)))
}

/// A flag whose bare numbers are seconds and may have a fraction (`0.5`);
/// with a unit as everywhere else (`500ms`).
pub fn fractional_secs(text: &str) -> Result<std::time::Duration, String> {
    if let Ok(ms) = parse_unbounded_ms(text, 1_000, "seconds") {
        return bounded(text, ms).map(std::time::Duration::from_millis);
    }
    let text = text.trim();
    let secs = text
        .parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        .ok_or_else(|| {
            format!("'{text}' is not a duration: write a number of seconds (0.5), or one with a unit (500ms, 2s, 10m)")
        })?;
    std::time::Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| d.as_millis() <= u128::from(LONGEST_MS))
        .ok_or_else(|| format!("'{text}' is too long a duration: at most 7d (a week)"))
}

/// A flag whose bare numbers are milliseconds.
pub fn millis(text: &str) -> Result<u64, String> {
    parse_ms(text, 1, "milliseconds")
}

/// A flag whose bare numbers are seconds; a duration that is not whole
/// seconds is refused (the setting has no finer grain).
pub fn secs(text: &str) -> Result<u64, String> {
    whole_secs(text, parse_ms(text, 1_000, "seconds")?)
}

/// `ms`, read from `text`, in seconds; refused when not whole.
fn whole_secs(text: &str, ms: u64) -> Result<u64, String> {
    if !ms.is_multiple_of(1_000) {
        return Err(format!(
            "'{}' is not a whole number of seconds, the finest this setting takes",
            text.trim()
        ));
    }
    Ok(ms / 1_000)
}

/// [`secs`] for a setting held in 32 bits (a log configuration's
/// lifetime), which may be longer than a week: up to `u32::MAX` seconds.
pub fn secs_u32(text: &str) -> Result<u32, String> {
    let secs = whole_secs(text, parse_unbounded_ms(text, 1_000, "seconds")?)?;
    u32::try_from(secs)
        .map_err(|_| format!("'{}' is too long: at most {} s", text.trim(), u32::MAX))
}

/// Reads a config-file value: a number (in the key's documented unit)
/// or a string with a unit, as [`millis`] or [`secs`] (`parse`) take it.
struct FileValue(fn(&str) -> Result<u64, String>);

impl<'de> serde::de::Visitor<'de> for FileValue {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a duration: a whole number, or a string with a unit such as \"500ms\", \"2s\", \"10m\"")
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Option<u64>, E> {
        // A bare number, with the flag's unit and bounds.
        (self.0)(&n.to_string()).map(Some).map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Option<u64>, E> {
        let n = u64::try_from(n)
            .map_err(|_| E::custom(format!("{n} is not a duration: it cannot be negative")))?;
        self.visit_u64(n)
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Option<u64>, E> {
        (self.0)(text).map(Some).map_err(E::custom)
    }
}

fn from_file<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
    parse: fn(&str) -> Result<u64, String>,
) -> Result<Option<u64>, D::Error> {
    deserializer.deserialize_any(FileValue(parse))
}

/// `#[serde(deserialize_with)]` for a config-file key in milliseconds.
pub fn millis_in_file<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    from_file(deserializer, millis)
}

/// `#[serde(deserialize_with)]` for a config-file key in seconds.
pub fn secs_in_file<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    from_file(deserializer, secs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn units_and_bare_numbers() {
        assert_eq!(millis("500"), Ok(500));
        assert_eq!(millis("500ms"), Ok(500));
        assert_eq!(millis("2s"), Ok(2_000));
        assert_eq!(millis(" 10m "), Ok(600_000));
        assert_eq!(secs("10"), Ok(10));
        assert_eq!(secs("10m"), Ok(600));
        assert_eq!(secs("1h"), Ok(3_600));
        assert_eq!(secs("1d"), Ok(86_400));
        assert_eq!(secs("2000ms"), Ok(2));
        assert_eq!(secs_u32("1h"), Ok(3_600));
        assert!(secs_u32("200y").is_err());
        assert!(secs_u32("5000000000").unwrap_err().contains("too long"));
    }

    #[test]
    fn what_is_not_a_duration_is_said_in_words() {
        let err = millis("5x").unwrap_err();
        assert!(err.contains("'5x' is not a duration"), "{err}");
        assert!(err.contains("bare number of milliseconds"), "{err}");
        assert!(secs("ms").unwrap_err().contains("not a duration"));
        assert!(secs("-1").unwrap_err().contains("not a duration"));
        assert!(secs("1.5s").unwrap_err().contains("not a duration"));
        assert!(secs("500ms")
            .unwrap_err()
            .contains("not a whole number of seconds"));
        assert!(millis("18446744073709551615s")
            .unwrap_err()
            .contains("too long"));
    }

    #[test]
    fn a_week_is_the_longest_but_for_a_lifetime() {
        assert_eq!(secs("7d"), Ok(7 * 86_400));
        assert_eq!(millis("604800000"), Ok(604_800_000));
        for too_long in ["8d", "604801", "18446744073709551615"] {
            let err = secs(too_long).unwrap_err();
            assert!(err.contains("at most 7d (a week)"), "{too_long}: {err}");
        }
        assert!(millis("604800001").unwrap_err().contains("at most 7d"));
        assert!(fractional_secs("604800.5")
            .unwrap_err()
            .contains("at most 7d"));
        assert!(fractional_secs("8d").unwrap_err().contains("at most 7d"));
        assert_eq!(
            fractional_secs("0.5"),
            Ok(std::time::Duration::from_millis(500))
        );
        assert_eq!(secs_u32("30d"), Ok(30 * 86_400));
    }

    #[test]
    fn the_config_file_takes_numbers_and_strings() {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default, deserialize_with = "millis_in_file")]
            interval: Option<u64>,
            #[serde(default, deserialize_with = "secs_in_file")]
            timeout: Option<u64>,
        }
        let file: File = toml::from_str("interval = \"2s\"\ntimeout = 30\n").unwrap();
        assert_eq!((file.interval, file.timeout), (Some(2_000), Some(30)));
        let file: File = toml::from_str("timeout = \"2m\"\n").unwrap();
        assert_eq!((file.interval, file.timeout), (None, Some(120)));
        let err = toml::from_str::<File>("interval = 604800001\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("at most 7d (a week)"), "{err}");
        let err = toml::from_str::<File>("timeout = \"soon\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("'soon' is not a duration"), "{err}");
        let err = toml::from_str::<File>("timeout = 1.5\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("a whole number, or a string with a unit"),
            "{err}"
        );
    }
}
