//! Sample devices and valid logs, the same for the same seed: what
//! `make-log` writes and what the emulator's self-test sends.

use ulogger_cloud::wire::{build_log, DeviceInfo, LogHeader};

use crate::exit::{Exit, Failure};

/// The tick rate written into version 3 and 4 headers (a 32 kHz crystal).
pub(crate) const TICK_RATE_HZ: u32 = 32_768;

/// The identity written with `--device-info`.
#[derive(Debug, Clone, clap::Args)]
pub struct SampleDevice {
    /// Application id of the device-info dump.
    #[arg(long, default_value_t = 1, requires = "device_info")]
    app_id: u32,
    /// Device serial of the device-info dump.
    #[arg(long, default_value = "SN-0001", requires = "device_info")]
    serial: String,
    /// Device type of the device-info dump.
    #[arg(long, default_value = "sample-board", requires = "device_info")]
    device_type: String,
    /// Firmware version of the device-info dump.
    #[arg(long, default_value = "v1.0.0", requires = "device_info")]
    git_version: String,
    /// Firmware git hash of the device-info dump.
    #[arg(long, default_value = "0000000", requires = "device_info")]
    git_hash: String,
}

impl SampleDevice {
    /// The application id.
    pub fn app_id(&self) -> u32 {
        self.app_id
    }

    /// The device serial.
    pub fn serial(&self) -> &str {
        &self.serial
    }
}

impl Default for SampleDevice {
    fn default() -> Self {
        SampleDevice {
            app_id: 1,
            serial: "SN-0001".to_owned(),
            device_type: "sample-board".to_owned(),
            git_version: "v1.0.0".to_owned(),
            git_hash: "0000000".to_owned(),
        }
    }
}

impl SampleDevice {
    pub fn info(&self) -> DeviceInfo {
        DeviceInfo::new(
            self.app_id,
            &self.serial,
            &self.device_type,
            &self.git_version,
            &self.git_hash,
        )
    }
}

/// A valid log of header `version` with `size` data bytes, the same for the
/// same `seed` and `index`: sequence number (versions 0-2) or anchor tick
/// (3, 4) `index`, session token 0 and, in version 4, epoch time 0
/// (unknown: the uploader fills it in).
pub fn sample_log(version: u8, size: u16, seed: u64, index: u32) -> Result<Vec<u8>, Exit> {
    let bad = |e| Exit::new(Failure::BadInput, anyhow::Error::new(e));
    let mut header = LogHeader::new(version).map_err(bad)?;
    if version <= 2 {
        header.sequence_number = Some(index);
    } else {
        header.anchor_tick = Some(index.wrapping_mul(TICK_RATE_HZ));
        header.tick_rate_hz = Some(TICK_RATE_HZ);
    }
    let data = pseudo_random(seed ^ u64::from(index).rotate_left(32), usize::from(size));
    build_log(header, &data).map_err(bad)
}

/// `len` bytes of SplitMix64 output: fast, portable and stable across
/// releases (unlike a library generator's stream), so a seed names data.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}
