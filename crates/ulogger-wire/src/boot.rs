//! Boot registration payloads: the device's request and the cloud's token
//! reply (PROTOCOL §3).
//!
//! The request is a JSON object with exactly the string fields
//! `device_type`, `git`, `serial` and `version`; the reply is a JSON object
//! holding `"token": <u32>`. Messages on the reply topic that are not such
//! an object are someone else's and are skipped, not errors.

use serde::{Deserialize, Serialize};

use super::device_info::DeviceInfo;
use super::topic::{validate_serial, TopicError};

/// Longest excerpt of an offending value quoted in an error message.
const MAX_QUOTE: usize = 64;

/// The JSON object a device publishes to register and obtain a session
/// token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootRequest {
    /// Hardware or board type.
    pub device_type: String,
    /// Firmware git hash.
    pub git: String,
    /// Device serial.
    pub serial: String,
    /// Firmware version tag.
    pub version: String,
}

/// Why a boot registration request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BootRequestError {
    /// Not a JSON object with exactly the four string fields.
    #[error("boot request is not a JSON object with string fields device_type, git, serial, version: {reason}")]
    Malformed {
        /// What the JSON parser found wrong (names the field and position).
        reason: String,
    },
    /// The serial cannot be used in a topic.
    #[error("boot request has an unusable serial")]
    InvalidSerial {
        /// Why the serial was refused.
        #[source]
        source: TopicError,
    },
}

/// Why a boot reply that carries a token could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BootReplyError {
    /// The `token` value is not an integer in `0..=4294967295`.
    #[error("boot reply token {found} is not an integer in 0..=4294967295")]
    InvalidToken {
        /// The token value as JSON text (shortened if long).
        found: String,
    },
}

impl From<&DeviceInfo> for BootRequest {
    fn from(device: &DeviceInfo) -> Self {
        BootRequest {
            device_type: device.device_type.clone(),
            git: device.git_hash.clone(),
            serial: device.serial.clone(),
            version: device.git_version.clone(),
        }
    }
}

impl BootRequest {
    /// Decodes a boot request as the cloud receives it.
    ///
    /// ```
    /// use ulogger_wire::BootRequest;
    /// let req = BootRequest::parse(
    ///     br#"{"device_type": "my_board", "git": "abcdef0", "serial": "ABC123", "version": "v1.0.0"}"#,
    /// )?;
    /// assert_eq!(req.serial, "ABC123");
    /// # Ok::<(), ulogger_wire::BootRequestError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`BootRequestError::Malformed`] if the payload is not a JSON object
    /// with exactly the four string fields, [`BootRequestError::InvalidSerial`]
    /// if the serial fails [`validate_serial`].
    pub fn parse(payload: &[u8]) -> Result<BootRequest, BootRequestError> {
        let request: BootRequest =
            serde_json::from_slice(payload).map_err(|e| BootRequestError::Malformed {
                reason: e.to_string(),
            })?;
        validate_serial(&request.serial)
            .map_err(|source| BootRequestError::InvalidSerial { source })?;
        Ok(request)
    }

    /// The request as JSON bytes, fields in the order the platform's SDK
    /// sends them.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::json!({
            "device_type": self.device_type,
            "git": self.git,
            "serial": self.serial,
            "version": self.version,
        })
        .to_string()
        .into_bytes()
    }
}

/// The boot registration payload for `device`: `git` is its git hash and
/// `version` its git version.
///
/// ```
/// use ulogger_wire::{boot_payload, DeviceInfo};
/// let device = DeviceInfo::new(1, "ABC123", "my_board", "v1.0.0", "abcdef0");
/// assert_eq!(
///     boot_payload(&device),
///     br#"{"device_type":"my_board","git":"abcdef0","serial":"ABC123","version":"v1.0.0"}"#
/// );
/// ```
pub fn boot_payload(device: &DeviceInfo) -> Vec<u8> {
    BootRequest::from(device).to_payload()
}

/// The cloud's reply granting `token`: `{"token":N}`.
pub fn boot_reply_payload(token: u32) -> Vec<u8> {
    format!("{{\"token\":{token}}}").into_bytes()
}

/// Reads a message received on the boot reply topic.
///
/// Returns `Ok(Some(token))` for a JSON object with an integer `token` in
/// u32 range, and `Ok(None)` for anything that is not an answer at all
/// (not JSON, not an object, no `token` key): keep waiting.
///
/// ```
/// use ulogger_wire::parse_boot_reply;
/// assert_eq!(parse_boot_reply(br#"{"token": 5}"#), Ok(Some(5)));
/// assert_eq!(parse_boot_reply(b"hello"), Ok(None));
/// assert!(parse_boot_reply(br#"{"token": -1}"#).is_err());
/// ```
///
/// # Errors
///
/// [`BootReplyError::InvalidToken`] when the object has a `token` that is
/// not an integer in `0..=u32::MAX` (negative, too large, a float, a
/// string, ...): the cloud answered, but unusably.
pub fn parse_boot_reply(payload: &[u8]) -> Result<Option<u32>, BootReplyError> {
    let Ok(serde_json::Value::Object(reply)) = serde_json::from_slice(payload) else {
        return Ok(None);
    };
    let Some(token) = reply.get("token") else {
        return Ok(None);
    };
    token
        .as_u64()
        .and_then(|t| u32::try_from(t).ok())
        .map(Some)
        .ok_or_else(|| BootReplyError::InvalidToken {
            found: quote(&token.to_string()),
        })
}

fn quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTE) {
        Some((cut, _)) => format!("{}...", text.get(..cut).unwrap_or_default()),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceInfo {
        DeviceInfo::new(1, "ABC123", "my_board", "v1.0.0", "abcdef0")
    }

    #[test]
    fn boot_payload_has_exactly_the_four_fields() {
        let payload = boot_payload(&device());
        let value: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        let obj = value.as_object().unwrap();
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys, ["device_type", "git", "serial", "version"]);
        assert_eq!(obj["git"], "abcdef0");
        assert_eq!(obj["version"], "v1.0.0");
        assert_eq!(
            BootRequest::parse(&payload).unwrap(),
            BootRequest {
                device_type: "my_board".into(),
                git: "abcdef0".into(),
                serial: "ABC123".into(),
                version: "v1.0.0".into(),
            }
        );
    }

    #[test]
    fn boot_payload_escapes_strings() {
        let d = DeviceInfo::new(1, "S", "quote\"back\\slash", "v", "g\n");
        let req = BootRequest::parse(&boot_payload(&d)).unwrap();
        assert_eq!(req.device_type, "quote\"back\\slash");
        assert_eq!(req.git, "g\n");
    }

    #[test]
    fn boot_request_refusals() {
        let missing = BootRequest::parse(br#"{"device_type":"b","git":"g","serial":"S"}"#);
        assert!(
            matches!(&missing, Err(BootRequestError::Malformed { reason }) if reason.contains("version")),
            "{missing:?}"
        );
        let extra = BootRequest::parse(
            br#"{"device_type":"b","git":"g","serial":"S","version":"v","x":1}"#,
        );
        assert!(
            matches!(&extra, Err(BootRequestError::Malformed { reason }) if reason.contains('x'))
        );
        let wrong_type =
            BootRequest::parse(br#"{"device_type":"b","git":1,"serial":"S","version":"v"}"#);
        assert!(matches!(
            wrong_type,
            Err(BootRequestError::Malformed { .. })
        ));
        assert!(matches!(
            BootRequest::parse(b"[1]"),
            Err(BootRequestError::Malformed { .. })
        ));
        assert_eq!(
            BootRequest::parse(br#"{"device_type":"b","git":"g","serial":"x/#","version":"v"}"#),
            Err(BootRequestError::InvalidSerial {
                source: TopicError::InvalidSerialChar {
                    serial: "x/#".into(),
                    ch: '/',
                    index: 1
                }
            })
        );
    }

    #[test]
    fn reply_payload_round_trips() {
        for token in [0, 5, u32::MAX] {
            assert_eq!(
                parse_boot_reply(&boot_reply_payload(token)),
                Ok(Some(token))
            );
        }
        assert_eq!(boot_reply_payload(5), br#"{"token":5}"#);
    }

    #[test]
    fn reply_cases() {
        assert_eq!(parse_boot_reply(br#"{"token": 5}"#), Ok(Some(5)));
        assert_eq!(
            parse_boot_reply(br#"{"token": 4294967295, "x": []}"#),
            Ok(Some(u32::MAX))
        );
        for not_an_answer in [
            &br#"{"other":1}"#[..],
            b"[1]",
            b"garbage",
            b"",
            b"5",
            b"null",
            b"\xff",
        ] {
            assert_eq!(parse_boot_reply(not_an_answer), Ok(None));
        }
        for (bad, found) in [
            (&br#"{"token": -1}"#[..], "-1"),
            (br#"{"token": 4294967296}"#, "4294967296"),
            (br#"{"token": "5"}"#, "\"5\""),
            (br#"{"token": 5.5}"#, "5.5"),
            (br#"{"token": null}"#, "null"),
        ] {
            let err = parse_boot_reply(bad).unwrap_err();
            assert_eq!(
                err,
                BootReplyError::InvalidToken {
                    found: found.into()
                }
            );
            assert!(err.to_string().contains(found));
        }
    }

    #[test]
    fn long_bad_tokens_are_shortened_in_errors() {
        let payload = format!(r#"{{"token": "{}"}}"#, "é".repeat(500));
        let Err(BootReplyError::InvalidToken { found }) = parse_boot_reply(payload.as_bytes())
        else {
            panic!("expected an error");
        };
        assert_eq!(found.chars().count(), MAX_QUOTE + 3);
        assert!(found.ends_with("..."));
    }
}
