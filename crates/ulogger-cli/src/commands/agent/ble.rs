//! The agent's BLE side (`ulogger agent --ble`): a continuous gateway on
//! the agent's client, and what the agent says about its pulls.

use std::time::Duration;

use serde_json::json;
use ulogger_cloud::ble::{Address, ConfigRelay, Gateway, GatewayEvent, PullOptions};
use ulogger_cloud::Client;

use crate::agent_args::BleArgs;
use crate::connection::ConfigFile;
use crate::exit::{self, Exit, Failure};
use crate::settings;
use crate::Global;

/// The agent's BLE settings, flags over the config file over defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct BleSettings {
    /// Whether the agent pulls over BLE at all.
    pub enabled: bool,
    names: Vec<String>,
    addresses: Vec<String>,
    max_connections: usize,
    min_interval: u64,
    adapter: String,
}

impl BleArgs {
    /// Merges the flags with the config file's keys. A BLE flag without
    /// BLE turned on (by `--ble` or `ble = true`) is refused: it would
    /// silently do nothing. The file's BLE keys without `ble = true` are
    /// kept for when it is turned on.
    pub fn resolve(&self, file: &ConfigFile) -> Result<BleSettings, Exit> {
        let enabled = self.ble.or(file.ble).unwrap_or(false);
        let given = [
            (!self.names.is_empty(), "--ble-name"),
            (!self.addresses.is_empty(), "--ble-address"),
            (self.ble_max_connections.is_some(), "--ble-max-connections"),
            (self.ble_min_interval.is_some(), "--ble-min-interval"),
            (self.adapter.is_some(), "--adapter"),
        ];
        if let Some((_, flag)) = given.iter().find(|(given, _)| *given).filter(|_| !enabled) {
            return Err(Exit::new(
                Failure::BadInput,
                anyhow::anyhow!(
                    "{flag} needs BLE turned on: add --ble (or `ble = true` in the config file)"
                ),
            ));
        }
        let list = |flags: &[String], keys: &Option<Vec<String>>| {
            if flags.is_empty() {
                keys.clone().unwrap_or_default()
            } else {
                flags.to_vec()
            }
        };
        let settings = BleSettings {
            enabled,
            names: list(&self.names, &file.ble_names),
            addresses: list(&self.addresses, &file.ble_addresses),
            max_connections: self
                .ble_max_connections
                .or(file.ble_max_connections)
                .unwrap_or(settings::DEFAULT_BLE_MAX_CONNECTIONS),
            min_interval: self
                .ble_min_interval
                .or(file.ble_min_interval)
                .unwrap_or(settings::DEFAULT_BLE_MIN_INTERVAL_SECS),
            adapter: self
                .adapter
                .clone()
                .or_else(|| file.adapter.clone())
                .unwrap_or_else(|| settings::DEFAULT_ADAPTER.to_owned()),
        };
        // A bound, so that no value means "never": a device's buffer fills
        // while it waits, and then its oldest logs are lost on the device.
        if settings.min_interval > 86_400 {
            return Err(Exit::new(
                Failure::BadInput,
                anyhow::anyhow!(
                    "--ble-min-interval (ble_min_interval) {} s is more than a day: a device's logs would wait on it for longer, where its buffer may overflow",
                    settings.min_interval
                ),
            ));
        }
        if !(1..=Gateway::MAX_CONNECTIONS).contains(&settings.max_connections) {
            return Err(Exit::new(
                Failure::BadInput,
                anyhow::anyhow!(
                    "--ble-max-connections (ble_max_connections) {} must be from 1 to {}: each pull holds a link, and controllers hold a handful",
                    settings.max_connections,
                    Gateway::MAX_CONNECTIONS
                ),
            ));
        }
        Ok(settings)
    }
}

/// What the agent counts of its BLE pulls, for the summary line.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    pulls: u64,
    empty: u64,
    failed: u64,
    stored: u64,
    rejected: u64,
}

/// The agent's BLE side: a [`Gateway`] running in its own task on the
/// agent's client, and what the agent says about its outcomes.
pub struct AgentBle {
    global: Global,
    events: tokio::sync::mpsc::UnboundedReceiver<GatewayEvent>,
    stop: std::sync::Arc<tokio::sync::Notify>,
    task: Option<tokio::task::JoinHandle<Result<(), ulogger_cloud::Error>>>,
    /// Devices whose failure was said, so it is said once until it clears.
    failing: std::collections::HashSet<Address>,
    counts: Counts,
    /// The agent's client, for the devices' config subscriptions.
    client: Client,
    /// Where the cloud's pushed log configurations wait for their device.
    relay: Option<ConfigRelay>,
    /// Devices whose configurations are being watched, by serial.
    watched: std::collections::HashMap<String, tokio::task::JoinHandle<()>>,
}

/// Devices whose pushed configurations one agent relays: a subscription
/// each, within the platform's 50 per connection.
const MAX_WATCHED: usize = 40;

impl Drop for AgentBle {
    fn drop(&mut self) {
        for (_, watch) in self.watched.drain() {
            watch.abort();
        }
    }
}

impl AgentBle {
    /// Starts the gateway; `rejected` keeps buffers that fail validation.
    pub fn start(
        global: Global,
        args: &BleSettings,
        client: &Client,
        rejected: &std::path::Path,
    ) -> Result<AgentBle, Exit> {
        let mut gateway = Gateway::new(&args.adapter)
            .max_connections(args.max_connections)
            .min_interval(Duration::from_secs(args.min_interval))
            .pull_options(PullOptions::new().rejected_dir(rejected));
        for name in &args.names {
            gateway = gateway.name(name);
        }
        for address in &args.addresses {
            let parsed: Address = address.parse().map_err(|_| {
                Exit::new(
                    Failure::BadInput,
                    anyhow::anyhow!(
                        "--ble-address {address:?} is not a Bluetooth address (AA:BB:CC:DD:EE:FF)"
                    ),
                )
            })?;
            gateway = gateway.address(parsed);
        }
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn({
            let (client, stop) = (client.clone(), stop.clone());
            async move { gateway.run(&client, tx, stop.notified()).await }
        });
        let mut agent = AgentBle {
            global,
            events,
            stop,
            task: Some(task),
            failing: std::collections::HashSet::new(),
            counts: Counts::default(),
            client: client.clone(),
            relay: ConfigRelay::in_outbox(client).ok(),
            watched: std::collections::HashMap::new(),
        };
        // The devices an earlier run watched, watched again at once: a
        // configuration pushed before one next comes by is kept for it.
        if let Some(relay) = &agent.relay {
            match relay.remembered() {
                Ok(devices) => {
                    for device in devices.iter().take(MAX_WATCHED) {
                        agent.watch(device);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %exit::message(&e), "the devices an earlier run watched cannot be listed; each is watched again when it comes by")
                }
            }
        }
        Ok(agent)
    }

    /// The next outcome, said as one line: the records it stored (to
    /// watch for delivery, with a label), or the gateway's fatal error.
    pub async fn next(&mut self) -> Result<Vec<super::Taken>, Exit> {
        match self.events.recv().await {
            Some(event) => Ok(self.said(event)),
            None => {
                // The gateway ended by itself: only an error at its start
                // (bluetoothd, the adapter) does that.
                let ended = match self.task.take() {
                    Some(task) => task.await,
                    None => return std::future::pending().await,
                };
                match ended {
                    Ok(Ok(())) => std::future::pending().await,
                    Ok(Err(e)) => Err(exit::from_cloud(e)),
                    Err(e) => Err(Exit::new(
                        Failure::Internal,
                        anyhow::anyhow!("the BLE gateway's task failed: {e}"),
                    )),
                }
            }
        }
    }

    fn said(&mut self, event: GatewayEvent) -> Vec<super::Taken> {
        let global = self.global;
        let address = event.address.to_string();
        let name = event.name.clone();
        match &event.outcome {
            Ok(report) => {
                self.watch(&report.device);
                if let Some(config) = &report.config_written {
                    super::event(
                        global,
                        "ble-config-written",
                        json!({"address": address, "serial": report.device.serial, "level": config.level.to_string(), "module_flags": config.module_flags, "timeout_secs": config.timeout_secs}),
                        &format!(
                            "BLE {address} ({}): log configuration written (level {})",
                            report.device.serial, config.level
                        ),
                    );
                }
                self.counts.pulls += 1;
                self.counts.stored += report.stored.len() as u64;
                self.counts.rejected += report.rejected.len() as u64;
                let recovered = self.failing.remove(&event.address);
                if report.stored.is_empty() && report.rejected.is_empty() {
                    self.counts.empty += 1;
                    if recovered {
                        super::event(
                            global,
                            "ble-recovered",
                            json!({"address": address, "name": name, "serial": report.device.serial}),
                            &format!(
                                "BLE {address} ({}): pulled again, nothing to send",
                                report.device.serial
                            ),
                        );
                    } else {
                        tracing::debug!(%address, serial = %report.device.serial, "pulled: nothing to send");
                    }
                    return Vec::new();
                }
                for rejected in &report.rejected {
                    tracing::warn!(%address, kind = ?rejected.kind, reason = %rejected.reason, file = ?rejected.file, "a buffer from the device was refused: kept apart, not sent");
                }
                super::event(
                    global,
                    "ble-pulled",
                    json!({
                        "address": address,
                        "name": name,
                        "serial": report.device.serial,
                        "app_id": report.device.app_id,
                        "stored": report.stored.len(),
                        "rejected": report.rejected.len(),
                        "rejected_files": report.rejected.iter().filter_map(|r| r.file.as_ref()).collect::<Vec<_>>(),
                        "bytes": report.summary.bytes,
                        "records": report.stored.iter().map(|b| b.record.0).collect::<Vec<_>>(),
                    }),
                    &format!("BLE {address}: {report}"),
                );
                report
                    .stored
                    .iter()
                    .enumerate()
                    .map(|(n, b)| {
                        let kind = match b.kind {
                            ulogger_cloud::wire::BufferKind::Log => "log",
                            _ => "core dump",
                        };
                        super::Taken {
                            id: b.record,
                            label: format!("BLE {} {kind} {}", report.device.serial, n + 1),
                            serial: report.device.serial.clone(),
                        }
                    })
                    .collect()
            }
            Err(e) => {
                self.counts.failed += 1;
                if !self.failing.insert(event.address) {
                    tracing::debug!(%address, error = %e, failures = event.failures, "pull failed again");
                    return Vec::new();
                }
                let error = exit::message(e);
                let next = event.next_try_in.as_secs();
                let hint = if event.is_not_ulogger() {
                    format!("not a uLogger device: left alone for {} h; pick devices with --ble-name or --ble-address", next / 3600)
                } else {
                    format!("the device keeps its data; retried with backoff (next in {next} s); said again only once it recovers. Check that it is powered and in range")
                };
                super::event(
                    global,
                    "ble-failed",
                    json!({"address": address, "name": name, "error": error, "not_ulogger": event.is_not_ulogger(), "retry_in_secs": next, "hint": hint}),
                    &format!("BLE {address}: FAILED: {error}: {hint}"),
                );
                Vec::new()
            }
        }
    }

    /// Keeps the log configurations the cloud pushes for `device` from now
    /// on, for its next connection (once per device, at most
    /// [`MAX_WATCHED`] devices).
    fn watch(&mut self, device: &ulogger_cloud::wire::DeviceInfo) {
        let Some(relay) = self.relay.clone() else {
            return;
        };
        if self.watched.contains_key(&device.serial) {
            return;
        }
        if self.watched.len() == MAX_WATCHED {
            tracing::warn!(serial = %device.serial, "log configurations are relayed for the first {MAX_WATCHED} devices only; this one's pushes are not kept");
            return;
        }
        let (client, device, global) = (self.client.clone(), device.clone(), self.global);
        let serial = device.serial.clone();
        let task = tokio::spawn(async move {
            match relay.watch(&client, &device).await {
                Ok(kept) => {
                    super::event(
                        global,
                        "ble-relaying",
                        json!({"serial": device.serial}),
                        &format!(
                            "BLE {}: log configurations the cloud pushes are kept for its next connection",
                            device.serial
                        ),
                    );
                    let _ = kept.await;
                }
                Err(e) => {
                    tracing::warn!(serial = %device.serial, error = %exit::message(&e), "the device's pushed log configurations cannot be watched; they are not relayed");
                }
            }
        });
        self.watched.insert(serial, task);
    }

    /// The summary line's BLE part.
    pub fn summary(&self) -> (serde_json::Value, String) {
        let c = self.counts;
        (
            json!({"pulls": c.pulls, "empty": c.empty, "failed": c.failed, "stored": c.stored, "rejected": c.rejected, "failing_devices": self.failing.len()}),
            format!(
                "; BLE: {} pull(s) ({} empty), {} failed, {} buffer(s) stored, {} rejected, {} device(s) failing",
                c.pulls, c.empty, c.failed, c.stored, c.rejected, self.failing.len()
            ),
        )
    }

    /// Stops the gateway: pulls under way get its grace to end.
    pub async fn stop(&mut self) {
        self.stop.notify_one();
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %exit::message(&e), "the BLE gateway ended with an error")
                }
                Err(e) => tracing::warn!(error = %e, "the BLE gateway's task failed"),
            }
        }
        // Outcomes of the pulls that ended during the grace.
        while let Ok(event) = self.events.try_recv() {
            let _ = self.said(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        ble: BleArgs,
    }

    fn resolve(args: &[&str], file: &str) -> Result<BleSettings, Exit> {
        let cli = Cli::try_parse_from(std::iter::once("agent").chain(args.iter().copied()))
            .expect("flags parse");
        let file: ConfigFile = toml::from_str(file).expect("config file parses");
        cli.ble.resolve(&file)
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let file = r#"
            ble = true
            ble_names = ["from file"]
            ble_min_interval = "2m"
            adapter = "hci1"
        "#;
        let from_file = resolve(&[], file).expect("resolves");
        assert!(from_file.enabled);
        assert_eq!(from_file.names, ["from file"]);
        assert_eq!(from_file.min_interval, 120);
        assert_eq!(from_file.adapter, "hci1");
        assert_eq!(from_file.max_connections, 4, "the default");

        let flags = resolve(
            &[
                "--ble-name",
                "a",
                "--ble-name",
                "b",
                "--ble-max-connections",
                "2",
            ],
            file,
        )
        .expect("resolves");
        assert_eq!(flags.names, ["a", "b"], "the flags replace the file's list");
        assert_eq!(flags.max_connections, 2);
        assert_eq!(flags.min_interval, 120, "still the file's");

        let defaults = resolve(&["--ble"], "").expect("resolves");
        assert_eq!((defaults.max_connections, defaults.min_interval), (4, 30));
        assert_eq!(defaults.adapter, "hci0");
    }

    #[test]
    fn a_ble_flag_without_ble_is_refused_and_the_file_s_keys_wait() {
        let refused = resolve(&["--ble-address", "AA:BB:CC:DD:EE:FF"], "").unwrap_err();
        assert!(
            format!("{refused:?}").contains("--ble-address needs BLE turned on"),
            "{refused:?}"
        );
        // Keys in the file for a BLE that is off are kept for later, not refused.
        let off = resolve(&[], "ble_names = [\"x\"]").expect("resolves");
        assert!(!off.enabled);
        let long = resolve(&["--ble", "--ble-min-interval", "2d"], "").unwrap_err();
        assert!(format!("{long:?}").contains("more than a day"), "{long:?}");
        assert!(resolve(&["--ble", "--ble-min-interval", "1d"], "").is_ok());
        let zero = resolve(&["--ble", "--ble-max-connections", "0"], "").unwrap_err();
        assert!(
            format!("{zero:?}").contains("0 must be from 1 to 64"),
            "{zero:?}"
        );
        let many = resolve(&["--ble", "--ble-max-connections", "65"], "").unwrap_err();
        assert!(
            format!("{many:?}").contains("65 must be from 1 to 64"),
            "{many:?}"
        );
        assert!(resolve(&["--ble", "--ble-max-connections", "64"], "").is_ok());
    }
}
