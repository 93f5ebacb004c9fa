//! Which device a command acts for: flags (or their `ULOGGER_*`
//! variables), the config file's keys of the same names, or a dump of the
//! device's BLE "config" characteristic (PROTOCOL §4) whose firmware
//! fields flags and keys may override; its app id and serial they may
//! only repeat.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ulogger_cloud::wire::{self, DeviceInfo};

use crate::connection::ConfigFile;
use crate::exit::{Exit, Failure};
use crate::files;

/// The device's identity.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DeviceArgs {
    /// A raw dump of the device's BLE config characteristic: the device's
    /// identity. Flags may override its firmware fields; --app-id and
    /// --serial, when given, must match it.
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
        let dump_flag = if self.device_info.is_some() {
            "--device-info"
        } else {
            "device_info in the config file"
        };
        let base = match self.device_info.as_ref().or(file.device_info.as_ref()) {
            Some(path) => {
                let bytes =
                    files::read_limited(path, files::DEVICE_INFO_LIMIT, "a device-info file")
                        .with_context(|| path.display().to_string())
                        .map_err(bad)?;
                refuse_other_formats(&bytes, path, dump_flag)?;
                let info = DeviceInfo::decode(&bytes)
                    .with_context(|| format!("invalid device info in {}", path.display()))
                    .map_err(bad)?;
                Some((info, path))
            }
            None => None,
        };
        if let Some((info, path)) = &base {
            same_device(self, file, info, path, dump_flag)?;
        }
        let base = base.map(|(info, _)| info);
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
        // Checked once here, before connecting: the topics would refuse
        // it later, once per file.
        wire::validate_serial(&device.serial).map_err(|e| {
            let source = if self.serial.is_some() {
                "--serial"
            } else if file.serial.is_some() {
                "serial in the config file"
            } else {
                "the serial in the device-info dump"
            };
            bad(anyhow::anyhow!("{source}: {e}"))
        })?;
        crate::exit::remember_device(device.app_id, &device.serial);
        Ok(device)
    }
}

/// A binary log or a core dump given where a device-info dump belongs
/// decodes as nonsense identity (any bytes with four NULs do), so it is
/// refused by what it is.
fn refuse_other_formats(bytes: &[u8], path: &Path, flag: &str) -> Result<(), Exit> {
    let what = if wire::CoreDumpHeader::looks_like(bytes) {
        "a core dump"
    } else if wire::validate_checksum(bytes).is_ok() {
        "a binary log"
    } else {
        return Ok(());
    };
    Err(Exit::new(
        Failure::BadInput,
        anyhow::anyhow!(
            "{} ({flag}) is {what}, not a device-info dump",
            path.display()
        ),
    )
    .with_hint(Some(
        "--device-info takes the raw bytes of the device's BLE config characteristic (PROTOCOL §4; `ulogger make-log --device-info FILE` writes one); logs and core dumps are the command's FILE arguments".to_owned(),
    )))
}

/// A dump names its device: an app id or serial given besides it that
/// differs would register and file the logs under another device.
fn same_device(
    args: &DeviceArgs,
    file: &ConfigFile,
    dump: &DeviceInfo,
    path: &Path,
    dump_flag: &str,
) -> Result<(), Exit> {
    let conflict = |given: String, flag: &str, key: &str, from_flag: bool, in_dump: String| {
        let (shown, drop) = if from_flag {
            (
                format!("--{flag} {given}"),
                format!("--{flag} (and ULOGGER_{})", key.to_uppercase()),
            )
        } else {
            (
                format!("{key} = {given} in the config file"),
                format!("{key} from the config file"),
            )
        };
        Exit::new(
            Failure::BadInput,
            anyhow::anyhow!(
                "{shown} contradicts the device-info dump {} ({dump_flag}), whose {flag} is {in_dump}",
                path.display()
            ),
        )
        .with_hint(Some(format!(
            "a dump names its device: drop {drop}, or give that device's dump"
        )))
    };
    if let Some(app_id) = args.app_id.or(file.app_id) {
        if app_id != dump.app_id {
            return Err(conflict(
                app_id.to_string(),
                "app-id",
                "app_id",
                args.app_id.is_some(),
                dump.app_id.to_string(),
            ));
        }
    }
    if let Some(serial) = args.serial.as_ref().or(file.serial.as_ref()) {
        if *serial != dump.serial {
            return Err(conflict(
                format!("{serial:?}"),
                "serial",
                "serial",
                args.serial.is_some(),
                format!("{:?}", dump.serial),
            ));
        }
    }
    Ok(())
}
