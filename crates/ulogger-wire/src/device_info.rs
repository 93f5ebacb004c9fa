//! Device identification as a device reports it over BLE (PROTOCOL §4).
//!
//! The "config" characteristic holds the application id (u32, little-endian)
//! followed by four NUL-terminated UTF-8 strings: serial, device type, git
//! version, git hash. The last terminator may be missing.

use std::fmt;

/// Shortest valid encoding: the application id and at least one more byte.
const MIN_LEN: usize = 5;

/// A device's identity: which application it runs, its serial and firmware.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct DeviceInfo {
    /// Application id the device's firmware belongs to.
    pub app_id: u32,
    /// Device serial; goes into MQTT topics, see
    /// [`validate_serial`](super::validate_serial).
    pub serial: String,
    /// Hardware or board type.
    pub device_type: String,
    /// Firmware version tag, e.g. `v1.0.0`.
    pub git_version: String,
    /// Firmware git hash; a new hash means a new boot registration.
    pub git_hash: String,
}

/// One of the four strings of a device identification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceInfoField {
    /// The device serial (first string).
    Serial,
    /// The device type (second string).
    DeviceType,
    /// The firmware version (third string).
    GitVersion,
    /// The firmware git hash (fourth string).
    GitHash,
}

impl DeviceInfoField {
    const ALL: [DeviceInfoField; 4] = [
        DeviceInfoField::Serial,
        DeviceInfoField::DeviceType,
        DeviceInfoField::GitVersion,
        DeviceInfoField::GitHash,
    ];
}

impl fmt::Display for DeviceInfoField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceInfoField::Serial => "serial",
            DeviceInfoField::DeviceType => "device type",
            DeviceInfoField::GitVersion => "git version",
            DeviceInfoField::GitHash => "git hash",
        })
    }
}

/// Why a device identification could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceInfoError {
    /// Fewer than 5 bytes: not even the application id and one string byte.
    #[error("device info is {len} bytes; at least {MIN_LEN} are needed (app id + strings)")]
    TooShort {
        /// Length of the input.
        len: usize,
    },
    /// The input ended before this string started.
    #[error("device info ends before the {field} string")]
    MissingField {
        /// The first string that is absent.
        field: DeviceInfoField,
    },
    /// A string is not valid UTF-8.
    #[error(
        "device info {field} is not valid UTF-8 (invalid byte at {valid_up_to} of the string)"
    )]
    InvalidUtf8 {
        /// The string that is not UTF-8.
        field: DeviceInfoField,
        /// Index within that string of the first invalid byte.
        valid_up_to: usize,
    },
}

impl DeviceInfo {
    /// A device identification from its parts.
    pub fn new(
        app_id: u32,
        serial: impl Into<String>,
        device_type: impl Into<String>,
        git_version: impl Into<String>,
        git_hash: impl Into<String>,
    ) -> Self {
        DeviceInfo {
            app_id,
            serial: serial.into(),
            device_type: device_type.into(),
            git_version: git_version.into(),
            git_hash: git_hash.into(),
        }
    }

    /// Decodes the bytes of a device's BLE "config" characteristic.
    ///
    /// Strings may be empty. Bytes after the git hash's terminator (padding
    /// of a fixed-size characteristic) are ignored.
    ///
    /// ```
    /// use ulogger_wire::DeviceInfo;
    /// let bytes = b"\x07\x00\x00\x00SN1\0board\0v1.0\0abc123";
    /// let info = DeviceInfo::decode(bytes)?;
    /// assert_eq!(info, DeviceInfo::new(7, "SN1", "board", "v1.0", "abc123"));
    /// # Ok::<(), ulogger_wire::DeviceInfoError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`DeviceInfoError::TooShort`] below 5 bytes,
    /// [`DeviceInfoError::MissingField`] when fewer than four strings are
    /// present, [`DeviceInfoError::InvalidUtf8`] naming the string that is
    /// not UTF-8.
    pub fn decode(bytes: &[u8]) -> Result<DeviceInfo, DeviceInfoError> {
        let too_short = DeviceInfoError::TooShort { len: bytes.len() };
        if bytes.len() < MIN_LEN {
            return Err(too_short);
        }
        let (app_id, mut rest) = bytes.split_at_checked(4).ok_or(too_short.clone())?;
        let app_id = <[u8; 4]>::try_from(app_id).map_err(|_| too_short)?;
        let mut strings = Vec::with_capacity(4);
        let mut ended = false;
        for field in DeviceInfoField::ALL {
            if ended {
                return Err(DeviceInfoError::MissingField { field });
            }
            let (raw, after) = match rest.iter().position(|&b| b == 0) {
                Some(nul) => (rest.get(..nul), rest.get(nul + 1..)),
                None => {
                    ended = true;
                    (Some(rest), None)
                }
            };
            let raw = raw.unwrap_or_default();
            rest = after.unwrap_or_default();
            let text = std::str::from_utf8(raw).map_err(|e| DeviceInfoError::InvalidUtf8 {
                field,
                valid_up_to: e.valid_up_to(),
            })?;
            strings.push(text.to_owned());
        }
        let mut strings = strings.into_iter();
        let mut next = || strings.next().unwrap_or_default();
        Ok(DeviceInfo {
            app_id: u32::from_le_bytes(app_id),
            serial: next(),
            device_type: next(),
            git_version: next(),
            git_hash: next(),
        })
    }

    /// Encodes the identification as a device would: app id, then each
    /// string followed by a NUL.
    ///
    /// Strings must not contain NUL themselves, or decoding will split them.
    pub fn encode(&self) -> Vec<u8> {
        let strings = [
            &self.serial,
            &self.device_type,
            &self.git_version,
            &self.git_hash,
        ];
        let len = 4 + strings.iter().map(|s| s.len() + 1).sum::<usize>();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&self.app_id.to_le_bytes());
        for s in strings {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> DeviceInfo {
        DeviceInfo::new(0x0102_0304, "SN-0001", "nrf52", "v1.2.3", "abcdef0")
    }

    #[test]
    fn encode_layout_and_round_trip() {
        let bytes = info().encode();
        assert_eq!(bytes[..4], [4, 3, 2, 1]);
        assert_eq!(&bytes[4..], b"SN-0001\0nrf52\0v1.2.3\0abcdef0\0");
        assert_eq!(DeviceInfo::decode(&bytes).unwrap(), info());
    }

    #[test]
    fn last_terminator_may_be_missing() {
        let mut bytes = info().encode();
        bytes.pop();
        assert_eq!(DeviceInfo::decode(&bytes).unwrap(), info());
    }

    #[test]
    fn trailing_padding_is_ignored() {
        let mut bytes = info().encode();
        bytes.extend([0u8; 16]);
        assert_eq!(DeviceInfo::decode(&bytes).unwrap(), info());
    }

    #[test]
    fn empty_last_string_is_allowed() {
        let bytes = b"\x01\0\0\0S\0T\0V\0";
        let d = DeviceInfo::decode(bytes).unwrap();
        assert_eq!(d, DeviceInfo::new(1, "S", "T", "V", ""));
    }

    #[test]
    fn fewer_than_five_bytes_is_too_short() {
        for len in 0..5 {
            assert_eq!(
                DeviceInfo::decode(&[1u8; 5][..len]),
                Err(DeviceInfoError::TooShort { len })
            );
        }
        assert!(DeviceInfo::decode(&[1, 0, 0, 0, b'S'])
            .unwrap_err()
            .to_string()
            .contains("device type"));
    }

    #[test]
    fn missing_strings_are_named() {
        let cases: [(&[u8], DeviceInfoField); 3] = [
            (b"\0\0\0\0S", DeviceInfoField::DeviceType),
            (b"\0\0\0\0S\0T", DeviceInfoField::GitVersion),
            (b"\0\0\0\0S\0T\0V", DeviceInfoField::GitHash),
        ];
        for (bytes, field) in cases {
            assert_eq!(
                DeviceInfo::decode(bytes),
                Err(DeviceInfoError::MissingField { field })
            );
        }
    }

    #[test]
    fn invalid_utf8_names_the_field() {
        let bytes = b"\0\0\0\0S\0T\0v\xff1\0H";
        let err = DeviceInfo::decode(bytes).unwrap_err();
        assert_eq!(
            err,
            DeviceInfoError::InvalidUtf8 {
                field: DeviceInfoField::GitVersion,
                valid_up_to: 1
            }
        );
        assert!(err.to_string().contains("git version"), "{err}");
        let bytes = b"\0\0\0\0\xc3\0T\0V\0H";
        assert_eq!(
            DeviceInfo::decode(bytes),
            Err(DeviceInfoError::InvalidUtf8 {
                field: DeviceInfoField::Serial,
                valid_up_to: 0
            })
        );
    }

    #[test]
    fn unicode_strings_round_trip() {
        let d = DeviceInfo::new(u32::MAX, "Ü", "board ✓", "", "");
        assert_eq!(DeviceInfo::decode(&d.encode()).unwrap(), d);
    }
}
