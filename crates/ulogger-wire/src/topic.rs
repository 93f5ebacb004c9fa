//! MQTT topic names and the checks on ids that go into them
//! (PROTOCOL §1, §2).
//!
//! Every topic is `P` + `{kind}/v0/{C}[/{G}]` + per-kind ids: the prefix is
//! prepended as-is. The platform routes only topics with the group level
//! (its rules are filters such as `binlog/v0/+/+/+`; group `0` means "no
//! groups"); the original layout without it (`group_id: None` here) is
//! acknowledged by the broker and then dropped, so it is only for old
//! brokers and bridges that expect it. A device serial ends up in subscription topics, so it is
//! checked against a strict character set: a serial such as `x/#` would
//! otherwise subscribe to other devices' replies.

use std::fmt::Write as _;

/// Longest topic name accepted, in bytes (AWS IoT Core's limit).
pub const MAX_TOPIC_LEN: usize = 256;

/// Most `/` separators a topic may contain (AWS IoT Core allows 8 levels).
pub const MAX_TOPIC_SLASHES: usize = 7;

/// Longest device serial accepted, in characters.
pub const MAX_SERIAL_LEN: usize = 64;

/// Longest device type accepted, in bytes: what the core-dump header's
/// NUL-terminated `char[68]` field holds (PROTOCOL §10).
pub const MAX_DEVICE_TYPE_LEN: usize = 67;

/// Why an id or topic cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The device serial is empty.
    #[error("device serial is empty")]
    EmptySerial,
    /// The device serial is longer than [`MAX_SERIAL_LEN`] characters.
    #[error("device serial is {len} characters long; at most {MAX_SERIAL_LEN} are allowed")]
    SerialTooLong {
        /// Length of the serial in characters.
        len: usize,
    },
    /// The device serial holds a character outside `A-Z a-z 0-9 _ - . :`.
    #[error(
        "device serial {serial:?} has invalid character {ch:?} at position {index} \
         (allowed: A-Z a-z 0-9 _ - . :)"
    )]
    InvalidSerialChar {
        /// The whole serial.
        serial: String,
        /// The first invalid character.
        ch: char,
        /// Its position in the serial, counted in characters from 0.
        index: usize,
    },
    /// The device serial starts with `$` (reserved for broker topics).
    #[error("device serial starts with '$', which is reserved for broker topics")]
    SerialStartsWithDollar,
    /// The topic prefix holds a character MQTT forbids in topic names.
    #[error("topic prefix contains {ch:?}, which is not allowed in MQTT topic names")]
    InvalidPrefixChar {
        /// The forbidden character (`+`, `#` or NUL).
        ch: char,
    },
    /// The topic is longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("topic {topic:?} is {len} bytes long; at most {MAX_TOPIC_LEN} are allowed")]
    TooLong {
        /// The topic.
        topic: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The topic has more than [`MAX_TOPIC_SLASHES`] `/` separators.
    #[error(
        "topic {topic:?} has {slashes} '/' separators; at most {MAX_TOPIC_SLASHES} are allowed"
    )]
    TooDeep {
        /// The topic.
        topic: String,
        /// Number of `/` in it.
        slashes: usize,
    },
    /// The device type is empty.
    #[error("device type is empty")]
    EmptyDeviceType,
    /// The device type is longer than [`MAX_DEVICE_TYPE_LEN`] bytes.
    #[error("device type is {len} bytes long; at most {MAX_DEVICE_TYPE_LEN} are allowed (the core-dump header's field)")]
    DeviceTypeTooLong {
        /// Length of the device type in bytes.
        len: usize,
    },
    /// The device type holds a character that cannot go into its topic
    /// level (`/`, `+`, `#`, a control character) or a space at either
    /// end (which no device reports).
    #[error(
        "device type {device_type:?} has invalid character {ch:?} at position {index} \
         (not allowed: / + # control characters, or white space at either end)"
    )]
    InvalidDeviceTypeChar {
        /// The whole device type.
        device_type: String,
        /// The first invalid character.
        ch: char,
        /// Its position, counted in characters from 0.
        index: usize,
    },
    /// The topic is empty.
    #[error("topic is empty")]
    EmptyTopic,
    /// The topic holds a wildcard (`+`, `#`) or NUL, which a publish topic
    /// must not contain.
    #[error(
        "topic {topic:?} contains {ch:?} at byte {index}, which is not allowed in a publish topic"
    )]
    InvalidTopicChar {
        /// The topic.
        topic: String,
        /// The forbidden character.
        ch: char,
        /// Its byte offset in the topic.
        index: usize,
    },
}

/// Checks that `serial` can be used as a device serial in topics: 1 to 64
/// characters of `A-Z a-z 0-9 _ - . :`, not starting with `$`.
///
/// ```
/// use ulogger_wire::validate_serial;
/// assert!(validate_serial("SN-0001:a.b_c").is_ok());
/// assert!(validate_serial("x/#").is_err());
/// ```
///
/// # Errors
///
/// [`TopicError::EmptySerial`], [`TopicError::SerialStartsWithDollar`],
/// [`TopicError::SerialTooLong`], or [`TopicError::InvalidSerialChar`]
/// naming the first offending character and its position.
pub fn validate_serial(serial: &str) -> Result<(), TopicError> {
    if serial.is_empty() {
        return Err(TopicError::EmptySerial);
    }
    if serial.starts_with('$') {
        return Err(TopicError::SerialStartsWithDollar);
    }
    let len = serial.chars().count();
    if len > MAX_SERIAL_LEN {
        return Err(TopicError::SerialTooLong { len });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
    match serial.chars().enumerate().find(|&(_, c)| !allowed(c)) {
        Some((index, ch)) => Err(TopicError::InvalidSerialChar {
            serial: serial.to_owned(),
            ch,
            index,
        }),
        None => Ok(()),
    }
}

/// Checks that `device_type` can be the level of a topic that names it
/// (the firmware ELF upload, PROTOCOL §11): 1 to [`MAX_DEVICE_TYPE_LEN`]
/// bytes, no `/` (it would add a level, and the request would reach no
/// rule), no `+`, `#` or control characters (NUL included), and no white
/// space at either end (the cloud matches device types exactly, and a
/// device never reports one padded).
///
/// ```
/// use ulogger_wire::validate_device_type;
/// assert!(validate_device_type("nRF52 DK").is_ok());
/// assert!(validate_device_type("board/#").is_err());
/// ```
///
/// # Errors
///
/// [`TopicError::EmptyDeviceType`], [`TopicError::DeviceTypeTooLong`] or
/// [`TopicError::InvalidDeviceTypeChar`] naming the first offending
/// character and its position.
pub fn validate_device_type(device_type: &str) -> Result<(), TopicError> {
    if device_type.is_empty() {
        return Err(TopicError::EmptyDeviceType);
    }
    if device_type.len() > MAX_DEVICE_TYPE_LEN {
        return Err(TopicError::DeviceTypeTooLong {
            len: device_type.len(),
        });
    }
    let last = device_type.chars().count() - 1;
    let bad = |(index, c): &(usize, char)| {
        matches!(c, '/' | '+' | '#')
            || c.is_control()
            || ((*index == 0 || *index == last) && c.is_whitespace())
    };
    match device_type.chars().enumerate().find(bad) {
        Some((index, ch)) => Err(TopicError::InvalidDeviceTypeChar {
            device_type: device_type.to_owned(),
            ch,
            index,
        }),
        None => Ok(()),
    }
}

/// Checks the rules the broker applies to a topic a client publishes to:
/// not empty, no `+`, `#` or NUL, at most [`MAX_TOPIC_LEN`] bytes and
/// [`MAX_TOPIC_SLASHES`] separators.
///
/// # Errors
///
/// [`TopicError::EmptyTopic`], [`TopicError::InvalidTopicChar`],
/// [`TopicError::TooLong`] or [`TopicError::TooDeep`].
pub fn validate_publish_topic(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::EmptyTopic);
    }
    if let Some((index, ch)) = topic
        .char_indices()
        .find(|&(_, c)| matches!(c, '+' | '#' | '\0'))
    {
        return Err(TopicError::InvalidTopicChar {
            topic: topic.to_owned(),
            ch,
            index,
        });
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong {
            topic: topic.to_owned(),
            len: topic.len(),
        });
    }
    let slashes = topic.bytes().filter(|&b| b == b'/').count();
    if slashes > MAX_TOPIC_SLASHES {
        return Err(TopicError::TooDeep {
            topic: topic.to_owned(),
            slashes,
        });
    }
    Ok(())
}

/// Which row of the topic table a topic is, with the ids it carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TopicKind {
    /// `boot/v0/...`: a device's boot registration.
    Boot {
        /// Application id.
        app_id: u32,
    },
    /// `boot/v0/.../{S}`: the cloud's token reply to one device.
    BootReply {
        /// Application id.
        app_id: u32,
        /// Device serial.
        serial: String,
    },
    /// `binlog/v0/...`: a binary log upload.
    BinaryLog {
        /// Application id.
        app_id: u32,
    },
    /// `core-dump/v0/...`: a core dump upload.
    CoreDump,
    /// `config/v0/.../{S}`: a log configuration pushed to one device.
    Config {
        /// Application id.
        app_id: u32,
        /// Device serial.
        serial: String,
    },
    /// `metrics/v0/...`: metrics samples.
    Metrics {
        /// Application id.
        app_id: u32,
    },
    /// `events/v0/...`: events.
    Events {
        /// Application id.
        app_id: u32,
    },
    /// `logs/v0/...`: text logs.
    TextLogs {
        /// Application id.
        app_id: u32,
    },
    /// `upload/v0/firmware/{C}/{device_type}`: a firmware ELF upload
    /// request (PROTOCOL §11).
    FirmwareUpload {
        /// The device type the ELF is for.
        device_type: String,
    },
    /// `upload/v0/{C}/{upload_id}`: the cloud's answer to one upload
    /// request.
    UploadReply {
        /// The request's id.
        upload_id: u64,
    },
}

/// Builds (and recognises) the platform's topics for one customer, with or
/// without a group level.
///
/// ```
/// use ulogger_wire::Topics;
/// let with_group = Topics::new("ulogger/", 10, Some(20))?;
/// assert_eq!(with_group.binlog(30)?, "ulogger/binlog/v0/10/20/30");
/// let original = Topics::new("", 10, None)?;
/// assert_eq!(original.boot_reply(30, "SN1")?, "boot/v0/10/30/SN1");
/// # Ok::<(), ulogger_wire::TopicError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topics {
    prefix: String,
    customer_id: u32,
    group_id: Option<u32>,
}

const BOOT: &str = "boot";
const BINLOG: &str = "binlog";
const CORE_DUMP: &str = "core-dump";
const CONFIG: &str = "config";
const METRICS: &str = "metrics";
const EVENTS: &str = "events";
const LOGS: &str = "logs";
const UPLOAD: &str = "upload";
const FIRMWARE: &str = "firmware";
const VERSION: &str = "v0";

impl Topics {
    /// Topics for `customer_id`, under `prefix` (prepended as-is, so include
    /// any trailing `/`), with a group level when `group_id` is set.
    ///
    /// # Errors
    ///
    /// [`TopicError::InvalidPrefixChar`] if the prefix contains `+`, `#` or
    /// NUL.
    pub fn new(
        prefix: impl Into<String>,
        customer_id: u32,
        group_id: Option<u32>,
    ) -> Result<Topics, TopicError> {
        let prefix = prefix.into();
        if let Some(ch) = prefix.chars().find(|c| matches!(c, '+' | '#' | '\0')) {
            return Err(TopicError::InvalidPrefixChar { ch });
        }
        Ok(Topics {
            prefix,
            customer_id,
            group_id,
        })
    }

    /// The customer id.
    pub fn customer_id(&self) -> u32 {
        self.customer_id
    }

    /// The group id, if topics carry a group level.
    pub fn group_id(&self) -> Option<u32> {
        self.group_id
    }

    /// The prefix prepended to every topic.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Topic to publish a boot registration to.
    ///
    /// # Errors
    ///
    /// [`TopicError::TooLong`] or [`TopicError::TooDeep`] (long prefixes).
    pub fn boot(&self, app_id: u32) -> Result<String, TopicError> {
        self.build(BOOT, Some(app_id), None)
    }

    /// Topic on which the cloud answers `serial`'s boot registration.
    ///
    /// # Errors
    ///
    /// The errors of [`validate_serial`], [`TopicError::TooLong`] or
    /// [`TopicError::TooDeep`].
    pub fn boot_reply(&self, app_id: u32, serial: &str) -> Result<String, TopicError> {
        self.build(BOOT, Some(app_id), Some(serial))
    }

    /// Topic to publish binary logs to.
    ///
    /// # Errors
    ///
    /// [`TopicError::TooLong`] or [`TopicError::TooDeep`] (long prefixes).
    pub fn binlog(&self, app_id: u32) -> Result<String, TopicError> {
        self.build(BINLOG, Some(app_id), None)
    }

    /// Topic to publish core dumps to (no application level).
    ///
    /// # Errors
    ///
    /// [`TopicError::TooLong`] or [`TopicError::TooDeep`] (long prefixes).
    pub fn core_dump(&self) -> Result<String, TopicError> {
        self.build(CORE_DUMP, None, None)
    }

    /// Topic on which the cloud pushes log configurations to `serial`.
    ///
    /// # Errors
    ///
    /// The errors of [`validate_serial`], [`TopicError::TooLong`] or
    /// [`TopicError::TooDeep`].
    pub fn config(&self, app_id: u32, serial: &str) -> Result<String, TopicError> {
        self.build(CONFIG, Some(app_id), Some(serial))
    }

    /// Topic to publish metrics to.
    ///
    /// # Errors
    ///
    /// [`TopicError::TooLong`] or [`TopicError::TooDeep`] (long prefixes).
    pub fn metrics(&self, app_id: u32) -> Result<String, TopicError> {
        self.build(METRICS, Some(app_id), None)
    }

    /// Topic to publish events to.
    ///
    /// # Errors
    ///
    /// [`TopicError::TooLong`] or [`TopicError::TooDeep`] (long prefixes).
    pub fn events(&self, app_id: u32) -> Result<String, TopicError> {
        self.build(EVENTS, Some(app_id), None)
    }

    /// Topic to publish text logs to.
    ///
    /// # Errors
    ///
    /// [`TopicError::TooLong`] or [`TopicError::TooDeep`] (long prefixes).
    pub fn logs(&self, app_id: u32) -> Result<String, TopicError> {
        self.build(LOGS, Some(app_id), None)
    }

    /// Topic to publish a firmware ELF upload request to (PROTOCOL §11):
    /// `P` + `upload/v0/firmware/{C}/{device_type}`. It has no group level.
    ///
    /// # Errors
    ///
    /// The errors of [`validate_device_type`], [`TopicError::TooLong`] or
    /// [`TopicError::TooDeep`].
    pub fn firmware_upload(&self, device_type: &str) -> Result<String, TopicError> {
        validate_device_type(device_type)?;
        let topic = format!(
            "{}{UPLOAD}/{VERSION}/{FIRMWARE}/{}/{device_type}",
            self.prefix, self.customer_id
        );
        validate_publish_topic(&topic)?;
        Ok(topic)
    }

    /// Topic on which the cloud answers the firmware ELF upload request
    /// `upload_id` (PROTOCOL §11): `P` + `upload/v0/{C}/{upload_id}`.
    ///
    /// # Errors
    ///
    /// [`TopicError::TooLong`] or [`TopicError::TooDeep`] (long prefixes).
    pub fn upload_reply(&self, upload_id: u64) -> Result<String, TopicError> {
        let topic = format!(
            "{}{UPLOAD}/{VERSION}/{}/{upload_id}",
            self.prefix, self.customer_id
        );
        validate_publish_topic(&topic)?;
        Ok(topic)
    }

    /// Which of this customer's topics `topic` is, or `None` if it is not
    /// one (other prefix, customer or group, unknown kind, ids that are not
    /// canonical decimal numbers, or an invalid serial).
    ///
    /// The inverse of the builders: `classify(&boot(a)?)` is
    /// `Some(TopicKind::Boot { app_id: a })`.
    pub fn classify(&self, topic: &str) -> Option<TopicKind> {
        let rest = topic.strip_prefix(self.prefix.as_str())?;
        if let Some(upload) = self.classify_upload(rest) {
            return upload;
        }
        let mut levels = rest.split('/');
        let kind = levels.next()?;
        if levels.next()? != VERSION || parse_id(levels.next()?)? != self.customer_id {
            return None;
        }
        if let Some(group) = self.group_id {
            if parse_id(levels.next()?)? != group {
                return None;
            }
        }
        let ids: Vec<&str> = levels.by_ref().take(3).collect();
        let app = || ids.first().and_then(|a| parse_id(a));
        let serial = || {
            ids.get(1)
                .filter(|s| validate_serial(s).is_ok())
                .map(|s| (*s).to_owned())
        };
        match (kind, ids.len()) {
            (BOOT, 1) => Some(TopicKind::Boot { app_id: app()? }),
            (BOOT, 2) => Some(TopicKind::BootReply {
                app_id: app()?,
                serial: serial()?,
            }),
            (BINLOG, 1) => Some(TopicKind::BinaryLog { app_id: app()? }),
            (CORE_DUMP, 0) => Some(TopicKind::CoreDump),
            (CONFIG, 2) => Some(TopicKind::Config {
                app_id: app()?,
                serial: serial()?,
            }),
            (METRICS, 1) => Some(TopicKind::Metrics { app_id: app()? }),
            (EVENTS, 1) => Some(TopicKind::Events { app_id: app()? }),
            (LOGS, 1) => Some(TopicKind::TextLogs { app_id: app()? }),
            _ => None,
        }
    }

    /// The upload topics (no group level): `Some(answer)` when `rest`
    /// is under `upload/v0/`, `None` for every other family.
    fn classify_upload(&self, rest: &str) -> Option<Option<TopicKind>> {
        let levels = rest.strip_prefix("upload/v0/")?;
        let customer = self.customer_id.to_string();
        let kind = match levels.split('/').collect::<Vec<_>>().as_slice() {
            [FIRMWARE, c, device_type] if *c == customer => validate_device_type(device_type)
                .ok()
                .map(|()| TopicKind::FirmwareUpload {
                    device_type: (*device_type).to_owned(),
                }),
            [c, id] if *c == customer => {
                parse_u64(id).map(|upload_id| TopicKind::UploadReply { upload_id })
            }
            _ => None,
        };
        Some(kind)
    }

    fn build(
        &self,
        kind: &str,
        app_id: Option<u32>,
        serial: Option<&str>,
    ) -> Result<String, TopicError> {
        if let Some(serial) = serial {
            validate_serial(serial)?;
        }
        // Sized exactly: a topic is built for every upload, and growing
        // the string as it is written reallocated it two or three times.
        let id_len = |id: Option<u32>| id.map_or(0, |id| 1 + decimal_len(id));
        let len = self.prefix.len()
            + kind.len()
            + 1
            + VERSION.len()
            + 1
            + decimal_len(self.customer_id)
            + id_len(self.group_id)
            + id_len(app_id)
            + serial.map_or(0, |serial| 1 + serial.len());
        let mut topic = String::with_capacity(len);
        topic.push_str(&self.prefix);
        topic.push_str(kind);
        topic.push('/');
        topic.push_str(VERSION);
        // Writing to a String cannot fail.
        let _ = write!(topic, "/{}", self.customer_id);
        if let Some(group) = self.group_id {
            let _ = write!(topic, "/{group}");
        }
        if let Some(app) = app_id {
            let _ = write!(topic, "/{app}");
        }
        if let Some(serial) = serial {
            topic.push('/');
            topic.push_str(serial);
        }
        debug_assert_eq!(topic.len(), len, "topic length computed wrong");
        validate_publish_topic(&topic)?;
        Ok(topic)
    }
}

/// How many digits `n` has in decimal.
fn decimal_len(n: u32) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// A u64 written the way the builders write it (see [`parse_id`]).
fn parse_u64(level: &str) -> Option<u64> {
    let canonical =
        level.bytes().all(|b| b.is_ascii_digit()) && (level == "0" || !level.starts_with('0'));
    if canonical {
        level.parse().ok()
    } else {
        None
    }
}

/// A u32 written the way the builders write it: decimal, no sign, no
/// leading zeros.
fn parse_id(level: &str) -> Option<u32> {
    let canonical =
        level.bytes().all(|b| b.is_ascii_digit()) && (level == "0" || !level.starts_with('0'));
    if canonical {
        level.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_with_group_and_prefix() {
        let t = Topics::new("ulogger/", 1, Some(2)).unwrap();
        assert_eq!(t.boot(3).unwrap(), "ulogger/boot/v0/1/2/3");
        assert_eq!(t.boot_reply(3, "SN").unwrap(), "ulogger/boot/v0/1/2/3/SN");
        assert_eq!(t.binlog(3).unwrap(), "ulogger/binlog/v0/1/2/3");
        assert_eq!(t.core_dump().unwrap(), "ulogger/core-dump/v0/1/2");
        assert_eq!(t.config(3, "SN").unwrap(), "ulogger/config/v0/1/2/3/SN");
        assert_eq!(t.metrics(3).unwrap(), "ulogger/metrics/v0/1/2/3");
        assert_eq!(t.events(3).unwrap(), "ulogger/events/v0/1/2/3");
        assert_eq!(t.logs(3).unwrap(), "ulogger/logs/v0/1/2/3");
        assert_eq!(t.prefix(), "ulogger/");
        assert_eq!(t.customer_id(), 1);
        assert_eq!(t.group_id(), Some(2));
    }

    #[test]
    fn topics_without_group_or_prefix() {
        let t = Topics::new("", 1, None).unwrap();
        assert_eq!(t.boot(3).unwrap(), "boot/v0/1/3");
        assert_eq!(t.boot_reply(3, "SN").unwrap(), "boot/v0/1/3/SN");
        assert_eq!(t.binlog(3).unwrap(), "binlog/v0/1/3");
        assert_eq!(t.core_dump().unwrap(), "core-dump/v0/1");
        assert_eq!(t.config(3, "SN").unwrap(), "config/v0/1/3/SN");
        assert_eq!(t.metrics(3).unwrap(), "metrics/v0/1/3");
        assert_eq!(t.events(3).unwrap(), "events/v0/1/3");
        assert_eq!(t.group_id(), None);
    }

    #[test]
    fn classify_inverts_every_builder() {
        for t in [
            Topics::new("ulogger/", 7, Some(8)).unwrap(),
            Topics::new("", u32::MAX, None).unwrap(),
            Topics::new("x", 0, Some(0)).unwrap(),
        ] {
            let app = 4_000_000_000;
            let cases = [
                (t.boot(app), TopicKind::Boot { app_id: app }),
                (
                    t.boot_reply(app, "S-1"),
                    TopicKind::BootReply {
                        app_id: app,
                        serial: "S-1".into(),
                    },
                ),
                (t.binlog(app), TopicKind::BinaryLog { app_id: app }),
                (t.core_dump(), TopicKind::CoreDump),
                (
                    t.config(app, "S-1"),
                    TopicKind::Config {
                        app_id: app,
                        serial: "S-1".into(),
                    },
                ),
                (t.metrics(app), TopicKind::Metrics { app_id: app }),
                (t.events(app), TopicKind::Events { app_id: app }),
                (t.logs(app), TopicKind::TextLogs { app_id: app }),
                (
                    t.firmware_upload("nRF52 DK"),
                    TopicKind::FirmwareUpload {
                        device_type: "nRF52 DK".into(),
                    },
                ),
                (
                    t.upload_reply(u64::MAX),
                    TopicKind::UploadReply {
                        upload_id: u64::MAX,
                    },
                ),
            ];
            for (topic, kind) in cases {
                assert_eq!(t.classify(&topic.unwrap()), Some(kind));
            }
        }
    }

    #[test]
    fn upload_topics_have_no_group_level() {
        let t = Topics::new("ulogger/", 42, Some(3)).unwrap();
        assert_eq!(
            t.firmware_upload("my_board").unwrap(),
            "ulogger/upload/v0/firmware/42/my_board"
        );
        assert_eq!(t.upload_reply(17).unwrap(), "ulogger/upload/v0/42/17");
        assert_eq!(t.classify("ulogger/upload/v0/43/17"), None);
        assert_eq!(t.classify("ulogger/upload/v0/42/017"), None);
        assert_eq!(t.classify("ulogger/upload/v0/firmware/42/a/b"), None);
    }

    #[test]
    fn device_types_that_cannot_be_a_topic_level_are_refused() {
        for good in [
            "my_board",
            "nRF52 DK",
            "STM32F4-Disco v2",
            "b",
            "\u{e9}t\u{e9}",
        ] {
            assert_eq!(validate_device_type(good), Ok(()), "{good:?}");
        }
        assert_eq!(validate_device_type(""), Err(TopicError::EmptyDeviceType));
        assert_eq!(
            validate_device_type(&"x".repeat(68)),
            Err(TopicError::DeviceTypeTooLong { len: 68 })
        );
        assert!(validate_device_type(&"x".repeat(67)).is_ok());
        for (bad, ch, index) in [
            ("a/b", '/', 1),
            ("board+", '+', 5),
            ("#", '#', 0),
            ("a\0b", '\0', 1),
            ("a\nb", '\n', 1),
            (" board", ' ', 0),
            ("board ", ' ', 5),
        ] {
            assert_eq!(
                validate_device_type(bad),
                Err(TopicError::InvalidDeviceTypeChar {
                    device_type: bad.into(),
                    ch,
                    index
                }),
                "{bad:?}"
            );
            let t = Topics::new("", 1, Some(0)).unwrap();
            assert!(t.firmware_upload(bad).is_err());
        }
        let deep = Topics::new("a/b/c/d/e/", 1, Some(0)).unwrap();
        assert!(matches!(
            deep.firmware_upload("b"),
            Err(TopicError::TooDeep { .. })
        ));
    }

    #[test]
    fn classify_rejects_foreign_topics() {
        let t = Topics::new("ulogger/", 1, Some(2)).unwrap();
        for topic in [
            "",
            "boot/v0/1/2/3",          // missing prefix
            "ulogger/boot/v0/9/2/3",  // other customer
            "ulogger/boot/v0/1/9/3",  // other group
            "ulogger/boot/v1/1/2/3",  // other version
            "ulogger/boot/v0/1/2",    // no app
            "ulogger/boot/v0/1/2/03", // non-canonical id
            "ulogger/boot/v0/1/2/+3", // sign
            "ulogger/boot/v0/1/2/x",  // not a number
            "ulogger/boot/v0/1/2/4294967296",
            "ulogger/boot/v0/1/2/3/$SYS", // bad serial
            "ulogger/boot/v0/1/2/3/S/x",  // too many levels
            "ulogger/core-dump/v0/1/2/3",
            "ulogger/binlog/v0/1/2/3/S",
            "ulogger/config/v0/1/2/3",
            "ulogger/other/v0/1/2/3",
        ] {
            assert_eq!(t.classify(topic), None, "{topic}");
        }
        let no_group = Topics::new("", 1, None).unwrap();
        // With a group level the ids shift: read without groups, "2" is the
        // app and "3" a serial.
        assert_eq!(
            no_group.classify("boot/v0/1/2/3"),
            Some(TopicKind::BootReply {
                app_id: 2,
                serial: "3".into()
            })
        );
    }

    #[test]
    fn serial_validation() {
        assert_eq!(validate_serial("AZaz09_-.:"), Ok(()));
        assert_eq!(validate_serial(&"a".repeat(64)), Ok(()));
        assert_eq!(
            validate_serial(&"a".repeat(65)),
            Err(TopicError::SerialTooLong { len: 65 })
        );
        assert_eq!(validate_serial(""), Err(TopicError::EmptySerial));
        assert_eq!(
            validate_serial("$SYS"),
            Err(TopicError::SerialStartsWithDollar)
        );
        let cases = [
            ("x/#", '/', 1),
            ("a+b", '+', 1),
            ("ab#", '#', 2),
            ("a b", ' ', 1),
            ("a\0", '\0', 1),
            ("é", 'é', 0),
            ("ab✓c", '✓', 2),
        ];
        for (serial, ch, index) in cases {
            assert_eq!(
                validate_serial(serial),
                Err(TopicError::InvalidSerialChar {
                    serial: serial.into(),
                    ch,
                    index
                })
            );
        }
        let msg = validate_serial("x/#").unwrap_err().to_string();
        assert!(msg.contains("'/'") && msg.contains("position 1"), "{msg}");
        // Length counts characters, not bytes.
        assert!(matches!(
            validate_serial(&"é".repeat(40)),
            Err(TopicError::InvalidSerialChar { index: 0, .. })
        ));
    }

    #[test]
    fn built_topics_are_sized_exactly_at_every_digit_count() {
        let ids = [0, 9, 10, 99, 100, 65_535, 1_000_000_000, u32::MAX];
        for prefix in ["", "ulogger/"] {
            for customer in ids {
                for group in [None, Some(0), Some(u32::MAX), Some(12_345)] {
                    let t = Topics::new(prefix, customer, group).unwrap();
                    let group_level = group.map(|g| format!("/{g}")).unwrap_or_default();
                    for app in ids {
                        let topic = t.binlog(app).unwrap();
                        assert_eq!(
                            topic,
                            format!("{prefix}binlog/v0/{customer}{group_level}/{app}")
                        );
                        assert_eq!(topic.capacity(), topic.len(), "{topic}");
                        let reply = t.boot_reply(app, "SN-1").unwrap();
                        assert_eq!(
                            reply,
                            format!("{prefix}boot/v0/{customer}{group_level}/{app}/SN-1")
                        );
                        assert_eq!(reply.capacity(), reply.len(), "{reply}");
                    }
                    let dump = t.core_dump().unwrap();
                    assert_eq!(
                        dump,
                        format!("{prefix}core-dump/v0/{customer}{group_level}")
                    );
                }
            }
        }
    }

    #[test]
    fn builders_refuse_bad_serials() {
        let t = Topics::new("", 1, None).unwrap();
        assert!(matches!(
            t.boot_reply(1, "x/#"),
            Err(TopicError::InvalidSerialChar { ch: '/', .. })
        ));
        assert_eq!(t.config(1, ""), Err(TopicError::EmptySerial));
    }

    #[test]
    fn prefix_must_not_hold_wildcards() {
        for (prefix, ch) in [("a/+/", '+'), ("#", '#'), ("a\0", '\0')] {
            assert_eq!(
                Topics::new(prefix, 1, None),
                Err(TopicError::InvalidPrefixChar { ch })
            );
        }
    }

    #[test]
    fn long_or_deep_prefixes_fail_at_build() {
        let t = Topics::new("a/b/c/", 1, Some(2)).unwrap();
        // a/b/c/config/v0/1/2/3/S has 8 slashes.
        assert!(t.binlog(3).is_ok());
        assert!(matches!(
            t.config(3, "S"),
            Err(TopicError::TooDeep { slashes: 8, .. })
        ));
        let t = Topics::new("p".repeat(250), 1, None).unwrap();
        assert!(matches!(
            t.binlog(3),
            Err(TopicError::TooLong { len: 263, .. })
        ));
    }

    #[test]
    fn publish_topic_rules() {
        assert_eq!(validate_publish_topic("a/b"), Ok(()));
        assert_eq!(validate_publish_topic(""), Err(TopicError::EmptyTopic));
        for (topic, ch, index) in [("a/+", '+', 2), ("#", '#', 0), ("a\0b", '\0', 1)] {
            assert_eq!(
                validate_publish_topic(topic),
                Err(TopicError::InvalidTopicChar {
                    topic: topic.into(),
                    ch,
                    index
                })
            );
        }
        assert_eq!(validate_publish_topic(&"t".repeat(256)), Ok(()));
        assert!(matches!(
            validate_publish_topic(&"t".repeat(257)),
            Err(TopicError::TooLong { len: 257, .. })
        ));
        assert_eq!(validate_publish_topic("a/b/c/d/e/f/g/h"), Ok(()));
        assert!(matches!(
            validate_publish_topic("a/b/c/d/e/f/g/h/i"),
            Err(TopicError::TooDeep { slashes: 8, .. })
        ));
    }
}
