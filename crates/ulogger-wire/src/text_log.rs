//! Text logs (PROTOCOL §12): newline-separated JSON, one header line that
//! names the device and the batch's `sequence`, then one line per entry
//! `{"t": <epoch seconds>, "lv": <1..5>, "m": <text>}`.
//!
//! The platform refuses a message over 128 KiB, so entries are split into
//! batches that each fit, numbered with consecutive sequence numbers; the
//! cloud drops a batch whose sequence it has seen for that device, which
//! makes re-sending a stored batch harmless.

use serde_json::{Map, Value};

use super::{validate_serial, DeviceInfo, TopicError, MAX_MESSAGE_SIZE};

/// The level of a text-log entry. Text logs count 1 (debug) to 5
/// (critical), unlike binary logs and log configurations, which count 0
/// to 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TextLevel {
    /// 1.
    Debug = 1,
    /// 2.
    Info = 2,
    /// 3.
    Warning = 3,
    /// 4.
    Error = 4,
    /// 5.
    Critical = 5,
}

impl TextLevel {
    /// The level named `name` (`debug`, `info`, `warning`/`warn`,
    /// `error`/`err`, `critical`/`crit`/`fatal`, any case) or numbered
    /// `1` to `5`.
    pub fn parse(name: &str) -> Option<TextLevel> {
        Some(match name.to_ascii_lowercase().as_str() {
            "debug" | "1" => TextLevel::Debug,
            "info" | "2" => TextLevel::Info,
            "warning" | "warn" | "3" => TextLevel::Warning,
            "error" | "err" | "4" => TextLevel::Error,
            "critical" | "crit" | "fatal" | "5" => TextLevel::Critical,
            _ => return None,
        })
    }
}

/// One line of text and when it was logged.
///
/// ```
/// use ulogger_wire::{TextEntry, TextLevel};
/// let entry = TextEntry::new(1_700_000_000.25, TextLevel::Warning, "disk 91% full");
/// assert_eq!(entry.level, TextLevel::Warning);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TextEntry {
    /// Seconds since the Unix epoch, with a fraction.
    pub time: f64,
    /// Its level.
    pub level: TextLevel,
    /// The text.
    pub message: String,
}

impl TextEntry {
    /// An entry logged at `time` (epoch seconds).
    pub fn new(time: f64, level: TextLevel, message: impl Into<String>) -> TextEntry {
        TextEntry {
            time,
            level,
            message: message.into(),
        }
    }
}

/// Why text logs cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TextLogError {
    /// There are no entries.
    #[error("no text-log entries to send")]
    Empty,
    /// The device serial cannot be used.
    #[error("device serial {serial:?}: {reason}")]
    InvalidSerial {
        /// The serial.
        serial: String,
        /// What is wrong with it.
        #[source]
        reason: TopicError,
    },
    /// An entry's time is not a finite number of seconds at or after the
    /// epoch.
    #[error("text-log entry {index} has time {time}, not seconds since the epoch")]
    InvalidTime {
        /// The entry's position, from 0.
        index: usize,
        /// The time, for the message.
        time: String,
    },
    /// One entry alone does not fit in a message.
    #[error(
        "text-log entry {index} takes {size} bytes with its header; at most {limit} fit in one message (shorten it)"
    )]
    EntryTooLarge {
        /// The entry's position, from 0.
        index: usize,
        /// The bytes it would take with the batch header.
        size: usize,
        /// [`MAX_MESSAGE_SIZE`].
        limit: usize,
    },
}

/// One message of text logs, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TextLogBatch {
    /// Its sequence number.
    pub sequence: u64,
    /// How many entries it holds.
    pub entries: usize,
    /// The NDJSON body.
    pub bytes: Vec<u8>,
}

/// Splits `entries` of `device` into messages of at most
/// [`MAX_MESSAGE_SIZE`] bytes, numbered from `first_sequence` on, in
/// order.
///
/// ```
/// use ulogger_wire::{text_log_batches, DeviceInfo, TextEntry, TextLevel};
/// let device = DeviceInfo::new(7, "GW-1", "gateway", "v1.0.0", "abc1234");
/// let batches = text_log_batches(&device, 41, &[TextEntry::new(1.5, TextLevel::Info, "up")])?;
/// assert_eq!(batches.len(), 1);
/// assert_eq!(
///     String::from_utf8(batches[0].bytes.clone()).unwrap(),
///     "{\"sequence\":41,\"device_type\":\"gateway\",\"version\":\"v1.0.0\",\"git\":\"abc1234\",\"serial\":\"GW-1\"}\n\
///      {\"t\":1.5,\"lv\":2,\"m\":\"up\"}\n"
/// );
/// # Ok::<(), ulogger_wire::TextLogError>(())
/// ```
///
/// # Errors
///
/// [`TextLogError`] naming the serial or the first entry that cannot go.
pub fn text_log_batches(
    device: &DeviceInfo,
    first_sequence: u64,
    entries: &[TextEntry],
) -> Result<Vec<TextLogBatch>, TextLogError> {
    text_log_batches_numbered(device, entries, |_| first_sequence)
}

/// [`text_log_batches`], numbered from `first_sequence(count)` once the
/// number of messages is known (a caller reserving numbers needs the count
/// first; where the entries split does not depend on the numbers).
///
/// # Errors
///
/// As [`text_log_batches`]; `first_sequence` is not called then.
pub fn text_log_batches_numbered(
    device: &DeviceInfo,
    entries: &[TextEntry],
    first_sequence: impl FnOnce(usize) -> u64,
) -> Result<Vec<TextLogBatch>, TextLogError> {
    validate_serial(&device.serial).map_err(|reason| TextLogError::InvalidSerial {
        serial: device.serial.clone(),
        reason,
    })?;
    if entries.is_empty() {
        return Err(TextLogError::Empty);
    }
    let header = |sequence: u64| {
        let mut h = Map::new();
        h.insert("sequence".into(), Value::from(sequence));
        h.insert(
            "device_type".into(),
            Value::from(device.device_type.as_str()),
        );
        h.insert("version".into(), Value::from(device.git_version.as_str()));
        h.insert("git".into(), Value::from(device.git_hash.as_str()));
        h.insert("serial".into(), Value::from(device.serial.as_str()));
        let mut line = Value::Object(h).to_string().into_bytes();
        line.push(b'\n');
        line
    };
    // The longest header any batch of this call can have, so that a
    // batch never overflows when its sequence gains a digit.
    let header_room = header(u64::MAX).len();
    // Bodies first (each entry's lines and count), headers once the
    // number of messages, and so the first sequence number, is known.
    let mut bodies: Vec<(Vec<u8>, usize)> = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    let mut count = 0;
    for (index, entry) in entries.iter().enumerate() {
        if !entry.time.is_finite() || entry.time < 0.0 {
            return Err(TextLogError::InvalidTime {
                index,
                time: entry.time.to_string(),
            });
        }
        let mut line = serde_json::json!({
            "t": entry.time,
            "lv": entry.level as u8,
            "m": entry.message,
        })
        .to_string()
        .into_bytes();
        line.push(b'\n');
        if header_room + line.len() > MAX_MESSAGE_SIZE {
            return Err(TextLogError::EntryTooLarge {
                index,
                size: header_room + line.len(),
                limit: MAX_MESSAGE_SIZE,
            });
        }
        if header_room + body.len() + line.len() > MAX_MESSAGE_SIZE {
            bodies.push((std::mem::take(&mut body), count));
            count = 0;
        }
        body.extend_from_slice(&line);
        count += 1;
    }
    bodies.push((body, count));
    let first = first_sequence(bodies.len());
    Ok(bodies
        .into_iter()
        .enumerate()
        .map(|(n, (body, count))| {
            let sequence = first.wrapping_add(n as u64);
            seal(header(sequence), &body, count, sequence)
        })
        .collect())
}

fn seal(mut header: Vec<u8>, body: &[u8], entries: usize, sequence: u64) -> TextLogBatch {
    header.extend_from_slice(body);
    TextLogBatch {
        sequence,
        entries,
        bytes: header,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceInfo {
        DeviceInfo::new(7, "GW-1", "gateway", "v1.0.0", "abc1234")
    }

    #[test]
    fn many_entries_split_into_messages_that_fit_with_consecutive_sequences() {
        let entries: Vec<TextEntry> = (0..5_000)
            .map(|i| {
                TextEntry::new(
                    1_700_000_000.0 + f64::from(i),
                    TextLevel::Info,
                    "x".repeat(100),
                )
            })
            .collect();
        let batches = text_log_batches(&device(), 10, &entries).unwrap();
        assert!(batches.len() > 1);
        let mut seen = 0;
        for (n, batch) in batches.iter().enumerate() {
            assert!(batch.bytes.len() <= MAX_MESSAGE_SIZE);
            assert_eq!(batch.sequence, 10 + n as u64);
            let text = std::str::from_utf8(&batch.bytes).unwrap();
            let mut lines = text.lines();
            let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
            assert_eq!(header["sequence"], batch.sequence);
            assert_eq!(header["serial"], "GW-1");
            for line in lines {
                let entry: Value = serde_json::from_str(line).unwrap();
                assert_eq!(entry["t"], 1_700_000_000.0 + seen as f64);
                seen += 1;
            }
            assert_eq!(seen, entries[..seen].len());
        }
        assert_eq!(seen, entries.len(), "every entry once, in order");
    }

    #[test]
    fn what_cannot_go_is_named() {
        assert_eq!(
            text_log_batches(&device(), 0, &[]),
            Err(TextLogError::Empty)
        );
        let bad_time = [TextEntry::new(f64::NAN, TextLevel::Info, "x")];
        assert!(matches!(
            text_log_batches(&device(), 0, &bad_time),
            Err(TextLogError::InvalidTime { index: 0, .. })
        ));
        let huge = [
            TextEntry::new(1.0, TextLevel::Info, "ok"),
            TextEntry::new(1.0, TextLevel::Info, "y".repeat(MAX_MESSAGE_SIZE)),
        ];
        assert!(matches!(
            text_log_batches(&device(), 0, &huge),
            Err(TextLogError::EntryTooLarge { index: 1, .. })
        ));
        let mut bad_serial = device();
        bad_serial.serial = "a/#".into();
        assert!(matches!(
            text_log_batches(&bad_serial, 0, &huge[..1]),
            Err(TextLogError::InvalidSerial { .. })
        ));
    }

    #[test]
    fn levels_parse_by_name_and_number() {
        assert_eq!(TextLevel::parse("WARN"), Some(TextLevel::Warning));
        assert_eq!(TextLevel::parse("5"), Some(TextLevel::Critical));
        assert_eq!(TextLevel::parse("0"), None);
        assert_eq!(TextLevel::parse("notice"), None);
    }
}
