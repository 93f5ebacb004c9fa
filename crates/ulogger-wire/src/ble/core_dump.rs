//! The 264-byte header of a core-dump package (PROTOCOL §10), and the
//! check that the identity inside it is the device's that sent it.

use std::fmt;

use crate::DeviceInfo;

/// Length of a core-dump package's header.
pub const CORE_DUMP_HEADER_LEN: usize = 264;

/// The value of the header's format field (@8) every known agent writes.
const FORMAT: u32 = 1;

/// What a CrashCatcher dump starts with.
const CRASH_CATCHER_MAGIC: [u8; 2] = *b"cC";

/// Where each fixed-width, NUL-padded string of the header lives.
const GIT_HASH: (usize, usize) = (16, 44);
const DEVICE_TYPE: (usize, usize) = (60, 68);
const SERIAL: (usize, usize) = (128, 68);
const VERSION: (usize, usize) = (196, 68);

/// The identity and integrity fields of a core-dump package's header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct CoreDumpHeader {
    /// Size of the whole package, header included.
    pub total_size: u32,
    /// Additive byte sum of everything after the header.
    pub checksum: u32,
    /// Application id of the crashed firmware.
    pub app_id: u32,
    /// Git hash of the crashed firmware.
    pub git_hash: String,
    /// Device type.
    pub device_type: String,
    /// Device serial.
    pub serial: String,
    /// Firmware version string.
    pub version: String,
}

/// An identity field of a core-dump header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CoreDumpField {
    /// The application id (@12).
    AppId,
    /// The git hash (@16).
    GitHash,
    /// The device type (@60).
    DeviceType,
    /// The device serial (@128).
    Serial,
    /// The version string (@196).
    Version,
}

impl fmt::Display for CoreDumpField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CoreDumpField::AppId => "application id",
            CoreDumpField::GitHash => "git hash",
            CoreDumpField::DeviceType => "device type",
            CoreDumpField::Serial => "serial",
            CoreDumpField::Version => "version",
        })
    }
}

/// Why a core-dump package is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoreDumpError {
    /// Shorter than the header and the CrashCatcher magic.
    #[error("core dump of {len} bytes is shorter than its {CORE_DUMP_HEADER_LEN}-byte header and dump magic")]
    TooShort {
        /// Length of the package.
        len: usize,
    },
    /// The header's size is more than the package holds, or less than a
    /// header and the dump magic.
    #[error("core dump header says {header} bytes, the package has {actual}")]
    SizeMismatch {
        /// Size in the header.
        header: u32,
        /// Length of the package.
        actual: usize,
    },
    /// The byte sum after the header is not the header's.
    #[error("core dump checksum mismatch: header {expected:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// Sum in the header.
        expected: u32,
        /// Sum of the bytes.
        computed: u32,
    },
    /// The format field (@8) is not 1.
    #[error("core dump format {found}, expected {FORMAT}")]
    UnknownFormat {
        /// Value found.
        found: u32,
    },
    /// The dump after the header does not start with `cC`.
    #[error("core dump body does not start with the CrashCatcher magic \"cC\"")]
    NotCrashCatcher,
    /// A string field is not UTF-8.
    #[error("core dump {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field.
        field: CoreDumpField,
    },
}

/// The identity inside a core dump differs from the device's `config`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("core dump {field} is {in_dump:?}, the device says {in_config:?}")]
pub struct IdentityMismatch {
    /// The first field that differs.
    pub field: CoreDumpField,
    /// Its value in the dump.
    pub in_dump: String,
    /// Its value in the device's `config` characteristic.
    pub in_config: String,
}

impl CoreDumpHeader {
    /// Decodes and checks a whole core-dump package: its size, its byte
    /// sum, its format field, the CrashCatcher magic, and UTF-8 strings.
    /// Bytes past the header's size (the rest of a crash region) are
    /// allowed and not summed.
    ///
    /// # Errors
    ///
    /// A [`CoreDumpError`] naming the first check that failed.
    pub fn decode(package: &[u8]) -> Result<CoreDumpHeader, CoreDumpError> {
        let too_short = CoreDumpError::TooShort { len: package.len() };
        let Some(header) = package.first_chunk::<CORE_DUMP_HEADER_LEN>() else {
            return Err(too_short);
        };
        if package.len() < CORE_DUMP_HEADER_LEN + CRASH_CATCHER_MAGIC.len() {
            return Err(too_short);
        }
        let total_size = u32_at(header, 0);
        // The package may be followed by the rest of the crash region it
        // was read from, as a log buffer by unused ring space: only the
        // header's size counts, and it must be there whole.
        let body = usize::try_from(total_size)
            .ok()
            .filter(|&total| total >= CORE_DUMP_HEADER_LEN + CRASH_CATCHER_MAGIC.len())
            .and_then(|total| package.get(CORE_DUMP_HEADER_LEN..total))
            .ok_or(CoreDumpError::SizeMismatch {
                header: total_size,
                actual: package.len(),
            })?;
        let checksum = u32_at(header, 4);
        let computed = body
            .iter()
            .fold(0u32, |sum, &b| sum.wrapping_add(u32::from(b)));
        if computed != checksum {
            return Err(CoreDumpError::ChecksumMismatch {
                expected: checksum,
                computed,
            });
        }
        let format = u32_at(header, 8);
        if format != FORMAT {
            return Err(CoreDumpError::UnknownFormat { found: format });
        }
        if !body.starts_with(&CRASH_CATCHER_MAGIC) {
            return Err(CoreDumpError::NotCrashCatcher);
        }
        Ok(CoreDumpHeader {
            total_size,
            checksum,
            app_id: u32_at(header, 12),
            git_hash: string_at(header, GIT_HASH, CoreDumpField::GitHash)?,
            device_type: string_at(header, DEVICE_TYPE, CoreDumpField::DeviceType)?,
            serial: string_at(header, SERIAL, CoreDumpField::Serial)?,
            version: string_at(header, VERSION, CoreDumpField::Version)?,
        })
    }

    /// Whether `bytes` look like a core-dump package rather than a binary
    /// log: the CrashCatcher magic `cC` right after the 264-byte header
    /// and the format field (@8) 1. A log's header never has both.
    pub fn looks_like(bytes: &[u8]) -> bool {
        bytes.get(CORE_DUMP_HEADER_LEN..CORE_DUMP_HEADER_LEN + 2) == Some(&CRASH_CATCHER_MAGIC[..])
            && bytes
                .first_chunk::<CORE_DUMP_HEADER_LEN>()
                .is_some_and(|h| u32_at(h, 8) == FORMAT)
    }

    /// Reads the header's fields without checking the package (size, sum,
    /// format, magic): what a report shows of a dump that
    /// [`CoreDumpHeader::decode`] refuses, beside the reason.
    ///
    /// # Errors
    ///
    /// [`CoreDumpError::TooShort`] without a whole header,
    /// [`CoreDumpError::InvalidUtf8`] for a string field that is not UTF-8.
    pub fn read_fields(package: &[u8]) -> Result<CoreDumpHeader, CoreDumpError> {
        let header = package
            .first_chunk::<CORE_DUMP_HEADER_LEN>()
            .ok_or(CoreDumpError::TooShort { len: package.len() })?;
        Ok(CoreDumpHeader {
            total_size: u32_at(header, 0),
            checksum: u32_at(header, 4),
            app_id: u32_at(header, 12),
            git_hash: string_at(header, GIT_HASH, CoreDumpField::GitHash)?,
            device_type: string_at(header, DEVICE_TYPE, CoreDumpField::DeviceType)?,
            serial: string_at(header, SERIAL, CoreDumpField::Serial)?,
            version: string_at(header, VERSION, CoreDumpField::Version)?,
        })
    }

    /// Checks that the dump came from the device whose `config` is `info`:
    /// application id, serial, device type, git hash and version.
    ///
    /// # Errors
    ///
    /// [`IdentityMismatch`] naming the first field that differs.
    pub fn check_identity(&self, info: &DeviceInfo) -> Result<(), IdentityMismatch> {
        let pairs = [
            (
                CoreDumpField::AppId,
                self.app_id.to_string(),
                info.app_id.to_string(),
            ),
            (
                CoreDumpField::Serial,
                self.serial.clone(),
                info.serial.clone(),
            ),
            (
                CoreDumpField::DeviceType,
                self.device_type.clone(),
                info.device_type.clone(),
            ),
            (
                CoreDumpField::GitHash,
                self.git_hash.clone(),
                info.git_hash.clone(),
            ),
            (
                CoreDumpField::Version,
                self.version.clone(),
                info.git_version.clone(),
            ),
        ];
        match pairs.into_iter().find(|(_, dump, config)| dump != config) {
            Some((field, in_dump, in_config)) => Err(IdentityMismatch {
                field,
                in_dump,
                in_config,
            }),
            None => Ok(()),
        }
    }

    /// Encodes a header for `body` (a CrashCatcher dump) as a device does;
    /// for tests and simulated devices. Strings longer than their field are
    /// cut (no NUL is left then).
    pub fn encode_package(info: &DeviceInfo, body: &[u8]) -> Vec<u8> {
        let mut package = vec![0u8; CORE_DUMP_HEADER_LEN];
        let total = u32::try_from(CORE_DUMP_HEADER_LEN + body.len()).unwrap_or(u32::MAX);
        let sum = body
            .iter()
            .fold(0u32, |sum, &b| sum.wrapping_add(u32::from(b)));
        let fields = [
            (0, &total.to_le_bytes()[..]),
            (4, &sum.to_le_bytes()[..]),
            (8, &FORMAT.to_le_bytes()[..]),
            (12, &info.app_id.to_le_bytes()[..]),
        ];
        for (at, bytes) in fields {
            if let Some(slot) = package.get_mut(at..at + bytes.len()) {
                slot.copy_from_slice(bytes);
            }
        }
        let strings = [
            (GIT_HASH, &info.git_hash),
            (DEVICE_TYPE, &info.device_type),
            (SERIAL, &info.serial),
            (VERSION, &info.git_version),
        ];
        for ((at, width), text) in strings {
            let bytes = text.as_bytes();
            let bytes = bytes.get(..width).unwrap_or(bytes);
            if let Some(slot) = package.get_mut(at..at + bytes.len()) {
                slot.copy_from_slice(bytes);
            }
        }
        package.extend_from_slice(body);
        package
    }
}

fn u32_at(header: &[u8; CORE_DUMP_HEADER_LEN], at: usize) -> u32 {
    let bytes = header
        .get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .unwrap_or_default();
    u32::from_le_bytes(bytes)
}

/// A NUL-padded string field; a field filled to its width has no NUL.
fn string_at(
    header: &[u8; CORE_DUMP_HEADER_LEN],
    (at, width): (usize, usize),
    field: CoreDumpField,
) -> Result<String, CoreDumpError> {
    let raw = header.get(at..at + width).unwrap_or_default();
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let raw = raw.get(..end).unwrap_or_default();
    std::str::from_utf8(raw)
        .map(str::to_owned)
        .map_err(|_| CoreDumpError::InvalidUtf8 { field })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> DeviceInfo {
        DeviceInfo::new(7, "AABBCCDDEEFF", "nrf52840", "v1.2.5", "abc123")
    }

    fn package() -> Vec<u8> {
        CoreDumpHeader::encode_package(&info(), b"cC\x01\x02\xff")
    }

    #[test]
    fn a_package_decodes_and_matches_its_device() {
        let header = CoreDumpHeader::decode(&package()).unwrap();
        assert_eq!(header.total_size, 269);
        assert_eq!(
            header.checksum,
            u32::from(b'c') + u32::from(b'C') + 1 + 2 + 255
        );
        assert_eq!(header.app_id, 7);
        assert_eq!(header.serial, "AABBCCDDEEFF");
        assert_eq!(header.version, "v1.2.5");
        header.check_identity(&info()).unwrap();
    }

    #[test]
    fn identity_mismatch_names_the_field() {
        let header = CoreDumpHeader::decode(&package()).unwrap();
        let other = DeviceInfo::new(7, "AABBCCDDEEFF", "nrf52840", "v1.2.5", "def456");
        let err = header.check_identity(&other).unwrap_err();
        assert_eq!(err.field, CoreDumpField::GitHash);
        assert_eq!(
            (err.in_dump.as_str(), err.in_config.as_str()),
            ("abc123", "def456")
        );
        let other = DeviceInfo::new(8, "AABBCCDDEEFF", "nrf52840", "v1.2.5", "abc123");
        assert_eq!(
            header.check_identity(&other).unwrap_err().field,
            CoreDumpField::AppId
        );
    }

    #[test]
    fn broken_packages_are_refused_with_a_reason() {
        for len in [0, 10, 264, 265] {
            assert_eq!(
                CoreDumpHeader::decode(&package()[..len]),
                Err(CoreDumpError::TooShort { len })
            );
        }
        let mut region = package();
        region.extend([0xff; 100]);
        assert_eq!(CoreDumpHeader::decode(&region).unwrap().total_size, 269);
        for size in [270u32, 265, 0] {
            let mut wrong = package();
            wrong[..4].copy_from_slice(&size.to_le_bytes());
            assert_eq!(
                CoreDumpHeader::decode(&wrong),
                Err(CoreDumpError::SizeMismatch {
                    header: size,
                    actual: 269
                })
            );
        }
        let mut flipped = package();
        flipped[266] ^= 1;
        assert!(matches!(
            CoreDumpHeader::decode(&flipped),
            Err(CoreDumpError::ChecksumMismatch { .. })
        ));
        let mut format = package();
        format[8] = 2;
        assert_eq!(
            CoreDumpHeader::decode(&format),
            Err(CoreDumpError::UnknownFormat { found: 2 })
        );
        let not_cc = CoreDumpHeader::encode_package(&info(), b"xC");
        assert_eq!(
            CoreDumpHeader::decode(&not_cc),
            Err(CoreDumpError::NotCrashCatcher)
        );
        let mut utf8 = package();
        utf8[128] = 0xff;
        assert_eq!(
            CoreDumpHeader::decode(&utf8),
            Err(CoreDumpError::InvalidUtf8 {
                field: CoreDumpField::Serial
            })
        );
    }

    #[test]
    fn a_damaged_dump_still_shows_its_identity() {
        let mut flipped = package();
        flipped[266] ^= 1;
        assert!(CoreDumpHeader::looks_like(&flipped));
        assert!(CoreDumpHeader::decode(&flipped).is_err());
        let fields = CoreDumpHeader::read_fields(&flipped).unwrap();
        assert_eq!((fields.serial.as_str(), fields.app_id), ("AABBCCDDEEFF", 7));
        assert!(!CoreDumpHeader::looks_like(&package()[..265]));
        let log = crate::build_log(crate::LogHeader::new(4).unwrap(), &[0; 300]).unwrap();
        assert!(!CoreDumpHeader::looks_like(&log));
    }

    #[test]
    fn a_full_width_string_has_no_terminator() {
        let long = "h".repeat(50);
        let info = DeviceInfo::new(1, "S", "T", "V", long.as_str());
        let header = CoreDumpHeader::decode(&CoreDumpHeader::encode_package(&info, b"cC")).unwrap();
        assert_eq!(header.git_hash, "h".repeat(44));
    }
}
