//! Which device a command acts for: flags (or their `ULOGGER_*`
//! variables), the config file's keys of the same names, or a dump of the
//! device's BLE "config" characteristic (PROTOCOL §4) that flags and keys
//! may override.

use std::path::PathBuf;

use anyhow::Context;
use ulogger_cloud::wire::DeviceInfo;

use crate::connection::ConfigFile;
use crate::exit::{Exit, Failure};
use crate::files;

/// The device's identity.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DeviceArgs {
    /// A raw dump of the device's BLE config characteristic.
    #[arg(long, env = "ULOGGER_DEVICE_INFO", value_name = "FILE")]
    pub device_info: Option<PathBuf>,
    /// Application id.
    #[arg(long, env = "ULOGGER_APP_ID")]
    pub app_id: Option<u32>,
    /// Device serial.
    #[arg(long, env = "ULOGGER_SERIAL")]
    pub serial: Option<String>,
    /// Device type (board name).
    #[arg(long, env = "ULOGGER_DEVICE_TYPE")]
    pub device_type: Option<String>,
    /// Firmware version tag.
    #[arg(long, env = "ULOGGER_GIT_VERSION")]
    pub git_version: Option<String>,
    /// Firmware git hash (a new hash means a new registration).
    #[arg(long, env = "ULOGGER_GIT_HASH")]
    pub git_hash: Option<String>,
}

impl DeviceArgs {
    /// The device these arguments and the config file describe; every
    /// field is required from one source or another.
    pub fn device(&self, file: &ConfigFile) -> Result<DeviceInfo, Exit> {
        self.resolve(file, true)
    }

    /// The device as far as a topic needs it: the application id and the
    /// serial are required, the firmware fields are taken when given and
    /// left empty otherwise.
    pub fn addressed(&self, file: &ConfigFile) -> Result<DeviceInfo, Exit> {
        self.resolve(file, false)
    }

    fn resolve(&self, file: &ConfigFile, need_firmware: bool) -> Result<DeviceInfo, Exit> {
        let bad = |e: anyhow::Error| Exit::new(Failure::BadInput, e);
        let base = match self.device_info.as_ref().or(file.device_info.as_ref()) {
            Some(path) => {
                let bytes =
                    files::read_limited(path, files::DEVICE_INFO_LIMIT, "a device-info file")
                        .with_context(|| path.display().to_string())
                        .map_err(bad)?;
                Some(
                    DeviceInfo::decode(&bytes)
                        .with_context(|| format!("invalid device info in {}", path.display()))
                        .map_err(bad)?,
                )
            }
            None => None,
        };
        let missing = |flag: &str| {
            bad(anyhow::anyhow!(
                "the device's {flag} is missing: pass --{flag} (or set ULOGGER_{}, or {} in the config file) or --device-info FILE",
                flag.replace('-', "_").to_uppercase(),
                flag.replace('-', "_"),
            ))
        };
        let pick = |flag: Option<&String>,
                    key: Option<&String>,
                    from_dump: Option<&String>,
                    name: &str| {
            match flag.or(key).or(from_dump).cloned() {
                Some(value) => Ok(value),
                None if need_firmware || matches!(name, "serial") => Err(missing(name)),
                None => Ok(String::new()),
            }
        };
        let device = DeviceInfo::new(
            self.app_id
                .or(file.app_id)
                .or(base.as_ref().map(|d| d.app_id))
                .ok_or_else(|| missing("app-id"))?,
            pick(
                self.serial.as_ref(),
                file.serial.as_ref(),
                base.as_ref().map(|d| &d.serial),
                "serial",
            )?,
            pick(
                self.device_type.as_ref(),
                file.device_type.as_ref(),
                base.as_ref().map(|d| &d.device_type),
                "device-type",
            )?,
            pick(
                self.git_version.as_ref(),
                file.git_version.as_ref(),
                base.as_ref().map(|d| &d.git_version),
                "git-version",
            )?,
            pick(
                self.git_hash.as_ref(),
                file.git_hash.as_ref(),
                base.as_ref().map(|d| &d.git_hash),
                "git-hash",
            )?,
        );
        crate::exit::remember_device(device.app_id, &device.serial);
        Ok(device)
    }
}
