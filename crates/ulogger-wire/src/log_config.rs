//! Log configuration pushed from the cloud to a device (PROTOCOL §7).
//!
//! Payload: `[level u8][module_flags u32][timeout_secs u32]` (9 bytes,
//! little-endian), then optionally a UTF-8 JSON array of module names.

use std::fmt;

/// Length of the fixed part of a log configuration.
const FIXED_LEN: usize = 9;

/// Longest excerpt of an offending value quoted in an error message.
const MAX_QUOTE: usize = 64;

/// Minimum severity a device logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LogLevel {
    /// 0
    Debug,
    /// 1
    Info,
    /// 2
    Warning,
    /// 3
    Error,
    /// 4
    Critical,
    /// A level byte outside 0 to 4, kept as received.
    Unknown(u8),
}

impl From<u8> for LogLevel {
    fn from(level: u8) -> Self {
        match level {
            0 => LogLevel::Debug,
            1 => LogLevel::Info,
            2 => LogLevel::Warning,
            3 => LogLevel::Error,
            4 => LogLevel::Critical,
            other => LogLevel::Unknown(other),
        }
    }
}

impl From<LogLevel> for u8 {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Debug => 0,
            LogLevel::Info => 1,
            LogLevel::Warning => 2,
            LogLevel::Error => 3,
            LogLevel::Critical => 4,
            LogLevel::Unknown(other) => other,
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogLevel::Debug => f.write_str("DEBUG"),
            LogLevel::Info => f.write_str("INFO"),
            LogLevel::Warning => f.write_str("WARNING"),
            LogLevel::Error => f.write_str("ERROR"),
            LogLevel::Critical => f.write_str("CRITICAL"),
            LogLevel::Unknown(level) => write!(f, "UNKNOWN({level})"),
        }
    }
}

/// A log configuration for one device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct LogConfig {
    /// Minimum level to log.
    pub level: LogLevel,
    /// Enable mask, one bit per firmware module.
    pub module_flags: u32,
    /// Seconds the device keeps this configuration before reverting.
    pub timeout_secs: u32,
    /// Names of the modules, in bit order, when the cloud sent them.
    pub module_names: Option<Vec<String>>,
}

/// Why a log configuration payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogConfigError {
    /// Shorter than the 9-byte fixed part.
    #[error("log configuration is {len} bytes, shorter than the {min}-byte fixed part")]
    TooShort {
        /// Length of the payload.
        len: usize,
        /// Length of the fixed part.
        min: usize,
    },
    /// The module names are not UTF-8.
    #[error("log configuration module names are not UTF-8 (invalid byte at offset {offset} of the payload)")]
    NamesNotUtf8 {
        /// Offset in the payload of the first invalid byte.
        offset: usize,
    },
    /// The module names are not valid JSON.
    #[error("log configuration module names are not valid JSON: {reason}")]
    NamesNotJson {
        /// What the JSON parser found wrong.
        reason: String,
    },
    /// The module names are JSON but not an array.
    #[error("log configuration module names must be a JSON array of strings, found {found}")]
    NamesNotArray {
        /// The JSON value found (shortened if long).
        found: String,
    },
    /// An element of the module names array is not a string.
    #[error("log configuration module name {index} is not a string: {found}")]
    NameNotString {
        /// Index of the element in the array.
        index: usize,
        /// The JSON value found (shortened if long).
        found: String,
    },
}

impl LogConfig {
    /// A configuration without module names.
    ///
    /// ```
    /// use ulogger_wire::{LogConfig, LogLevel};
    /// let config = LogConfig::new(LogLevel::Warning, 0b1011, 600)
    ///     .with_module_names(vec!["net".into(), "ble".into()]);
    /// assert_eq!(LogConfig::decode(&config.encode()).unwrap(), config);
    /// ```
    pub fn new(level: LogLevel, module_flags: u32, timeout_secs: u32) -> LogConfig {
        LogConfig {
            level,
            module_flags,
            timeout_secs,
            module_names: None,
        }
    }

    /// The same configuration naming its modules, in bit order.
    pub fn with_module_names(mut self, names: Vec<String>) -> LogConfig {
        self.module_names = Some(names);
        self
    }

    /// Decodes a log configuration payload.
    ///
    /// Nothing after the fixed part, or a JSON `null`, means no module
    /// names (`None`); an empty array is `Some(vec![])`.
    ///
    /// ```
    /// use ulogger_wire::{LogConfig, LogLevel};
    /// let mut payload = vec![1];
    /// payload.extend(0b101u32.to_le_bytes());
    /// payload.extend(60u32.to_le_bytes());
    /// payload.extend(br#"["net","ble"]"#);
    /// let config = LogConfig::decode(&payload)?;
    /// assert_eq!(config.level, LogLevel::Info);
    /// assert_eq!(config.module_names, Some(vec!["net".into(), "ble".into()]));
    /// assert_eq!(config.encode(), payload);
    /// # Ok::<(), ulogger_wire::LogConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`LogConfigError::TooShort`] below 9 bytes; for names that are
    /// present but malformed, [`LogConfigError::NamesNotUtf8`],
    /// [`LogConfigError::NamesNotJson`], [`LogConfigError::NamesNotArray`]
    /// or [`LogConfigError::NameNotString`]. Malformed names are never
    /// decoded as an empty list.
    pub fn decode(payload: &[u8]) -> Result<LogConfig, LogConfigError> {
        let too_short = || LogConfigError::TooShort {
            len: payload.len(),
            min: FIXED_LEN,
        };
        let (fixed, names) = payload.split_at_checked(FIXED_LEN).ok_or_else(too_short)?;
        let word = |at: usize| {
            fixed
                .get(at..at + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_le_bytes)
                .ok_or_else(too_short)
        };
        let level = fixed.first().copied().ok_or_else(too_short)?;
        Ok(LogConfig {
            level: LogLevel::from(level),
            module_flags: word(1)?,
            timeout_secs: word(5)?,
            module_names: decode_names(names)?,
        })
    }

    /// The 9 bytes a device's BLE `log_config` characteristic takes
    /// (PROTOCOL §7): level, module flags, timeout; the module names,
    /// which devices ignore, stripped.
    ///
    /// ```
    /// use ulogger_wire::{LogConfig, LogLevel};
    /// let config = LogConfig::new(LogLevel::Warning, 0b101, 600)
    ///     .with_module_names(vec!["net".into()]);
    /// assert_eq!(config.ble_value(), [2, 5, 0, 0, 0, 0x58, 2, 0, 0]);
    /// ```
    pub fn ble_value(&self) -> [u8; FIXED_LEN] {
        let mut out = [0u8; FIXED_LEN];
        out[0] = u8::from(self.level);
        out[1..5].copy_from_slice(&self.module_flags.to_le_bytes());
        out[5..9].copy_from_slice(&self.timeout_secs.to_le_bytes());
        out
    }

    /// Encodes the configuration as the cloud sends it; module names, when
    /// present, as a compact JSON array.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN);
        out.push(u8::from(self.level));
        out.extend_from_slice(&self.module_flags.to_le_bytes());
        out.extend_from_slice(&self.timeout_secs.to_le_bytes());
        if let Some(names) = &self.module_names {
            let array = serde_json::Value::from(names.clone());
            out.extend_from_slice(array.to_string().as_bytes());
        }
        out
    }
}

fn decode_names(bytes: &[u8]) -> Result<Option<Vec<String>>, LogConfigError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| LogConfigError::NamesNotUtf8 {
        offset: FIXED_LEN + e.valid_up_to(),
    })?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| LogConfigError::NamesNotJson {
            reason: e.to_string(),
        })?;
    let items = match value {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Array(items) => items,
        other => {
            return Err(LogConfigError::NamesNotArray {
                found: quote(&other),
            })
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            serde_json::Value::String(name) => Ok(name),
            other => Err(LogConfigError::NameNotString {
                index,
                found: quote(&other),
            }),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn quote(value: &serde_json::Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(MAX_QUOTE) {
        Some((cut, _)) => format!("{}...", text.get(..cut).unwrap_or_default()),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(level: u8, names: &[u8]) -> Vec<u8> {
        let mut p = vec![level];
        p.extend(0xdead_beefu32.to_le_bytes());
        p.extend(300u32.to_le_bytes());
        p.extend(names);
        p
    }

    #[test]
    fn fixed_part_only_means_no_names() {
        let c = LogConfig::decode(&payload(3, b"")).unwrap();
        assert_eq!(
            c,
            LogConfig {
                level: LogLevel::Error,
                module_flags: 0xdead_beef,
                timeout_secs: 300,
                module_names: None,
            }
        );
        assert_eq!(c.encode(), payload(3, b""));
        assert_eq!(
            LogConfig::decode(&payload(3, b"null"))
                .unwrap()
                .module_names,
            None
        );
    }

    #[test]
    fn names_decode_and_round_trip() {
        let c = LogConfig::decode(&payload(0, br#" ["a", "b\u00e9"] "#)).unwrap();
        assert_eq!(c.module_names, Some(vec!["a".to_owned(), "bé".to_owned()]));
        assert_eq!(LogConfig::decode(&c.encode()).unwrap(), c);
        let empty = LogConfig::decode(&payload(0, b"[]")).unwrap();
        assert_eq!(empty.module_names, Some(vec![]));
        assert_eq!(LogConfig::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn levels_map_both_ways() {
        let levels = [
            LogLevel::Debug,
            LogLevel::Info,
            LogLevel::Warning,
            LogLevel::Error,
            LogLevel::Critical,
        ];
        for (byte, level) in (0u8..).zip(levels) {
            assert_eq!(LogLevel::from(byte), level);
            assert_eq!(u8::from(level), byte);
        }
        assert_eq!(LogLevel::Warning.to_string(), "WARNING");
    }

    #[test]
    fn unknown_level_is_kept_visible() {
        let c = LogConfig::decode(&payload(9, b"")).unwrap();
        assert_eq!(c.level, LogLevel::Unknown(9));
        assert_eq!(c.level.to_string(), "UNKNOWN(9)");
        assert_eq!(c.encode()[0], 9);
    }

    #[test]
    fn short_payloads_are_refused() {
        for len in 0..FIXED_LEN {
            assert_eq!(
                LogConfig::decode(&payload(1, b"")[..len]),
                Err(LogConfigError::TooShort { len, min: 9 })
            );
        }
    }

    #[test]
    fn malformed_names_are_errors_not_empty_lists() {
        assert_eq!(
            LogConfig::decode(&payload(1, b"[\"a\xff\"]")),
            Err(LogConfigError::NamesNotUtf8 { offset: 12 })
        );
        assert!(matches!(
            LogConfig::decode(&payload(1, b"[\"a\",")),
            Err(LogConfigError::NamesNotJson { .. })
        ));
        assert!(matches!(
            LogConfig::decode(&payload(1, b" ")),
            Err(LogConfigError::NamesNotJson { .. })
        ));
        assert_eq!(
            LogConfig::decode(&payload(1, br#"{"a":1}"#)),
            Err(LogConfigError::NamesNotArray {
                found: r#"{"a":1}"#.into()
            })
        );
        assert_eq!(
            LogConfig::decode(&payload(1, br#""a""#)),
            Err(LogConfigError::NamesNotArray {
                found: r#""a""#.into()
            })
        );
        let err = LogConfig::decode(&payload(1, br#"["a", 2]"#)).unwrap_err();
        assert_eq!(
            err,
            LogConfigError::NameNotString {
                index: 1,
                found: "2".into()
            }
        );
        assert!(err.to_string().contains("module name 1"), "{err}");
    }
}
