//! Log configurations the cloud pushed for BLE devices, kept on disk until
//! each is written to its device (PROTOCOL §7: "a configuration that
//! arrives while its device is out of BLE range must be kept by the
//! gateway (the latest one per device) and written when the device next
//! connects").

use std::io;
use std::path::{Path, PathBuf};

use tokio::task::JoinHandle;

use super::seen::file_name;
use crate::wire::{DeviceInfo, LogConfig};
use crate::{Client, Error, ErrorKind};

/// The folder, inside the outbox directory, that keeps pending
/// configurations when no other is given.
pub(crate) const DEFAULT_RELAY_DIR: &str = "ble-config";

/// The latest log configuration the cloud pushed for each device, kept
/// durably until [`pull_device`](super::pull_device) writes it to the
/// device's `log_config` characteristic (its 9-byte head,
/// [`LogConfig::ble_value`]) at the device's next connection.
///
/// One file per device, `<serial>.cfg`, holding the configuration as the
/// cloud sent it; a newer one replaces it (only the latest matters to a
/// device), and it is removed once written to the device, unless a newer
/// one came meanwhile. Configurations reach it through
/// [`ConfigRelay::watch`] (the cloud's pushes for one device) or
/// [`ConfigRelay::keep`].
///
/// ```
/// use ulogger_cloud::ble::ConfigRelay;
/// use ulogger_cloud::wire::{LogConfig, LogLevel};
/// # fn main() -> Result<(), ulogger_cloud::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let relay = ConfigRelay::new(dir.path());
/// relay.keep("AABBCCDDEEFF", &LogConfig::new(LogLevel::Debug, 1, 60))?;
/// relay.keep("AABBCCDDEEFF", &LogConfig::new(LogLevel::Error, 1, 60))?;
/// let pending = relay.pending("AABBCCDDEEFF")?.expect("kept");
/// assert_eq!(pending.level, LogLevel::Error);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRelay {
    dir: PathBuf,
}

impl ConfigRelay {
    /// A relay keeping its files in `dir` (created when first needed).
    pub fn new(dir: impl Into<PathBuf>) -> ConfigRelay {
        ConfigRelay { dir: dir.into() }
    }

    /// The relay [`pull_device`](super::pull_device) uses by default:
    /// `ble-config/` in `client`'s outbox directory.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NoOutbox`] when `client` has no outbox.
    pub fn in_outbox(client: &Client) -> Result<ConfigRelay, Error> {
        Ok(ConfigRelay::new(
            client.outbox()?.dir().join(DEFAULT_RELAY_DIR),
        ))
    }

    /// The folder holding the pending configurations.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps `config` as the one to write to device `serial`, replacing
    /// any kept before; durable when this returns.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Ble`] naming the file that could not be written.
    pub fn keep(&self, serial: &str, config: &LogConfig) -> Result<(), Error> {
        let path = self.path(serial);
        crate::durable::create_dir_all(&self.dir)
            .and_then(|()| crate::durable::replace_file(&path, &config.encode()))
            .map_err(|e| file_error("keeping a pushed log configuration", &path, e))
    }

    /// The configuration waiting for device `serial`, if any.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Ble`] when the file cannot be read or does not hold a
    /// configuration (it is left for a person to look at).
    pub fn pending(&self, serial: &str) -> Result<Option<LogConfig>, Error> {
        let path = self.path(serial);
        let step = "reading a pending log configuration";
        match std::fs::read(&path) {
            Ok(bytes) => LogConfig::decode(&bytes).map(Some).map_err(|e| {
                ErrorKind::Ble {
                    step,
                    reason: format!(
                        "{} does not hold a log configuration: {e}; remove it",
                        path.display()
                    ),
                }
                .into()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(file_error(step, &path, e)),
        }
    }

    /// Records that `config` was written to device `serial`: its file is
    /// removed durably, unless it now holds a newer configuration.
    /// Returns whether it was removed.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Ble`] when the file cannot be removed (the
    /// configuration is then written again at the next connection, which
    /// is harmless).
    pub fn delivered(&self, serial: &str, config: &LogConfig) -> Result<bool, Error> {
        if self.pending(serial)?.as_ref() != Some(config) {
            return Ok(false);
        }
        let path = self.path(serial);
        crate::durable::remove_file(&path)
            .map(|()| true)
            .map_err(|e| file_error("forgetting a delivered log configuration", &path, e))
    }

    /// Remembers `device` as one whose pushes are watched (`<serial>.device`,
    /// its identity as `config` gave it; durable when this returns), so
    /// that a gateway that restarts can watch it again at once
    /// ([`ConfigRelay::remembered`]) rather than only once the device next
    /// comes by: a configuration pushed in between would be missed.
    /// [`ConfigRelay::watch`] calls it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Ble`] naming the file that could not be written.
    pub fn remember(&self, device: &DeviceInfo) -> Result<(), Error> {
        let path = self.device_path(&device.serial);
        crate::durable::create_dir_all(&self.dir)
            .and_then(|()| crate::durable::replace_file(&path, &device.encode()))
            .map_err(|e| file_error("remembering a watched device", &path, e))
    }

    /// The devices [remembered](ConfigRelay::remember), in no particular
    /// order. A file that does not hold a device's identity is logged and
    /// skipped (it is left for a person to look at).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Ble`] when the folder cannot be read (none yet is no
    /// error).
    pub fn remembered(&self) -> Result<Vec<DeviceInfo>, Error> {
        let step = "listing the watched devices";
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(file_error(step, &self.dir, e)),
        };
        let mut devices = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| file_error(step, &self.dir, e))?.path();
            if path.extension().is_none_or(|x| x != "device") {
                continue;
            }
            match std::fs::read(&path).map(|bytes| DeviceInfo::decode(&bytes)) {
                Ok(Ok(device)) => devices.push(device),
                Ok(Err(e)) => {
                    tracing::warn!(file = %path.display(), error = %e, "not a watched device's identity: skipped");
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "a watched device's identity cannot be read: skipped");
                }
            }
        }
        Ok(devices)
    }

    /// Subscribes to the configurations the cloud pushes for `device` and
    /// keeps each as it arrives, until the returned handle is aborted or
    /// the client shuts down. A retained configuration (the device's
    /// current one) arrives first and is kept too: writing it again is
    /// harmless, though it restarts the device's `timeout_secs`.
    ///
    /// # Errors
    ///
    /// The subscription's errors ([`Client::log_configs`]). A configuration
    /// that does not decode, or cannot be kept, is logged and skipped.
    pub async fn watch(
        &self,
        client: &Client,
        device: &DeviceInfo,
    ) -> Result<JoinHandle<()>, Error> {
        let (relay, remembered) = (self.clone(), device.clone());
        match tokio::task::spawn_blocking(move || relay.remember(&remembered)).await {
            Ok(Ok(())) => {}
            // Watching still works; only a restart would forget it.
            Ok(Err(e)) => {
                tracing::warn!(serial = %device.serial, error = %e, "a watched device could not be remembered: after a restart it is watched again only once it comes by")
            }
            Err(e) => {
                tracing::warn!(serial = %device.serial, error = %e, "remembering a watched device stopped")
            }
        }
        let mut configs = client.log_configs(device).await?;
        let relay = self.clone();
        let serial = device.serial.clone();
        Ok(tokio::spawn(async move {
            while let Some(config) = configs.next().await {
                let config = match config {
                    Ok(config) => config,
                    Err(e) => {
                        tracing::warn!(%serial, error = %e, "a pushed log configuration was skipped");
                        continue;
                    }
                };
                let (keeper, who) = (relay.clone(), serial.clone());
                let kept = tokio::task::spawn_blocking(move || keeper.keep(&who, &config)).await;
                match kept {
                    Ok(Ok(())) => {
                        tracing::info!(%serial, "log configuration kept for the device's next connection");
                    }
                    Ok(Err(e)) => {
                        tracing::error!(%serial, error = %e, "a pushed log configuration could not be kept")
                    }
                    Err(e) => {
                        tracing::error!(%serial, error = %e, "keeping a log configuration stopped")
                    }
                }
            }
        }))
    }

    fn path(&self, serial: &str) -> PathBuf {
        self.dir.join(format!("{}.cfg", file_name(serial)))
    }

    fn device_path(&self, serial: &str) -> PathBuf {
        self.dir.join(format!("{}.device", file_name(serial)))
    }
}

fn file_error(step: &'static str, path: &Path, e: io::Error) -> Error {
    Error::with_source(
        ErrorKind::Ble {
            step,
            reason: format!("{}: {e}", path.display()),
        },
        e,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::wire::LogLevel;

    #[test]
    fn the_latest_configuration_is_kept_and_forgotten_once_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let relay = ConfigRelay::new(dir.path().join("nested/relay"));
        assert_eq!(relay.pending("SN").unwrap(), None);
        let old = LogConfig::new(LogLevel::Debug, 1, 60);
        let new = LogConfig::new(LogLevel::Error, 3, 600).with_module_names(vec!["net".into()]);
        relay.keep("SN", &old).unwrap();
        relay.keep("SN", &new).unwrap();
        assert_eq!(relay.pending("SN").unwrap(), Some(new.clone()));
        // Written to the device while a newer one was kept: stays.
        assert!(!relay.delivered("SN", &old).unwrap());
        assert!(relay.delivered("SN", &new).unwrap());
        assert_eq!(relay.pending("SN").unwrap(), None);
        // Another device's is its own.
        relay.keep("SN/2", &old).unwrap();
        assert_eq!(relay.pending("SN").unwrap(), None);
        assert_eq!(relay.pending("SN/2").unwrap(), Some(old));
    }

    #[test]
    fn watched_devices_are_remembered_across_instances() {
        let dir = tempfile::tempdir().unwrap();
        let relay = ConfigRelay::new(dir.path().join("relay"));
        assert!(relay.remembered().unwrap().is_empty(), "no folder yet");
        let a = DeviceInfo::new(7, "AABBCC000001", "sensor", "1.2.4", "abc1234");
        let b = DeviceInfo::new(8, "SN/2", "sensor", "1.2.4", "abc1234");
        relay.remember(&a).unwrap();
        relay.remember(&b).unwrap();
        relay.remember(&a).unwrap();
        // A pending configuration and a stray file are not devices.
        relay
            .keep("AABBCC000001", &LogConfig::new(LogLevel::Debug, 1, 60))
            .unwrap();
        std::fs::write(dir.path().join("relay/junk.device"), b"\x01").unwrap();
        let mut found = ConfigRelay::new(dir.path().join("relay"))
            .remembered()
            .unwrap();
        found.sort_by(|x, y| x.serial.cmp(&y.serial));
        assert_eq!(found, vec![a, b]);
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it_not_a_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let relay = ConfigRelay::new(dir.path());
        std::fs::write(dir.path().join("SN.cfg"), b"\x01").unwrap();
        let error = relay.pending("SN").unwrap_err().to_string();
        assert!(error.contains("SN.cfg"), "{error}");
    }
}
