//! Reading a device's BLE `config` characteristic (PROTOCOL §4), whose
//! firmware drops a string that does not fit instead of cutting it.

use crate::{DeviceInfo, DeviceInfoError};

/// Most bytes a device puts in its `config` value.
pub const MAX_BLE_CONFIG_LEN: usize = 128;

/// Why a `config` value does not identify a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BleConfigError {
    /// Not a device identification at all.
    #[error(transparent)]
    Decode(#[from] DeviceInfoError),
    /// Longer than the 128 bytes a device sends.
    #[error("config value of {len} bytes is longer than {MAX_BLE_CONFIG_LEN}")]
    TooLong {
        /// Length of the value.
        len: usize,
    },
    /// Fewer than four terminated strings and nothing after the last: the
    /// firmware dropped a string that did not fit, and the later ones
    /// moved up, so no field can be trusted to be what its position says.
    #[error(
        "config value holds {strings} of the 4 strings: a string was dropped, fields moved up"
    )]
    StringsDropped {
        /// Terminated strings present.
        strings: usize,
    },
}

/// Decodes a `config` value as a gateway must: as
/// [`DeviceInfo::decode`], but refusing a value in which the firmware
/// dropped a string (the device terminates every string, so four NULs or
/// an unterminated last string mean all four are there).
///
/// ```
/// use ulogger_wire::{decode_ble_config, BleConfigError};
/// let info = decode_ble_config(b"\x07\0\0\0AABBCCDDEEFF\0board\0v1.0\0no_cache\0")?;
/// assert_eq!(info.serial, "AABBCCDDEEFF");
/// // The git hash did not fit and was dropped: which string is which?
/// assert_eq!(
///     decode_ble_config(b"\x07\0\0\0AABBCCDDEEFF\0board\0v1.0\0"),
///     Err(BleConfigError::StringsDropped { strings: 3 })
/// );
/// # Ok::<(), BleConfigError>(())
/// ```
///
/// # Errors
///
/// [`BleConfigError::Decode`] as [`DeviceInfo::decode`] (e.g. a 3-byte
/// value), [`BleConfigError::TooLong`], [`BleConfigError::StringsDropped`].
pub fn decode_ble_config(value: &[u8]) -> Result<DeviceInfo, BleConfigError> {
    if value.len() > MAX_BLE_CONFIG_LEN {
        return Err(BleConfigError::TooLong { len: value.len() });
    }
    let info = DeviceInfo::decode(value)?;
    let strings = value.get(4..).unwrap_or_default();
    let terminated = strings.iter().filter(|&&b| b == 0).count();
    let unterminated_tail = strings.last().is_some_and(|&b| b != 0);
    if terminated < 4 && !unterminated_tail {
        return Err(BleConfigError::StringsDropped {
            strings: terminated,
        });
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_value_decodes() {
        let info = DeviceInfo::new(7, "AABBCCDDEEFF", "nrf", "v1", "no_cache");
        assert_eq!(decode_ble_config(&info.encode()), Ok(info.clone()));
        // The last NUL may be missing.
        let bytes = info.encode();
        assert_eq!(decode_ble_config(&bytes[..bytes.len() - 1]), Ok(info));
        // An empty git hash is a string too.
        assert!(decode_ble_config(b"\x07\0\0\0S\0T\0V\0\0").is_ok());
    }

    #[test]
    fn broken_values_are_refused_with_a_reason() {
        assert!(matches!(
            decode_ble_config(b"\x07\0\0"),
            Err(BleConfigError::Decode(DeviceInfoError::TooShort { len: 3 }))
        ));
        assert_eq!(
            decode_ble_config(&[b'a'; 129]),
            Err(BleConfigError::TooLong { len: 129 })
        );
        let long_type = "t".repeat(120);
        let mut full = b"\x07\0\0\0S\0".to_vec();
        // The device type did not fit: version and hash moved up.
        full.extend(b"v1\0abc\0");
        assert!(full.len() + long_type.len() > MAX_BLE_CONFIG_LEN);
        assert_eq!(
            decode_ble_config(&full),
            Err(BleConfigError::StringsDropped { strings: 3 })
        );
    }
}
