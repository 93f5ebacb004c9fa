//! `ulogger ble`: the gateway's device end over Bluetooth LE (BlueZ).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use ulogger_cloud::ble::{
    identify, pull_device, scan as scan_devices, Address, ConfigRelay, Gateway, GatewayEvent,
    PullOptions,
};
use ulogger_cloud::wire::PullConfig;
use ulogger_cloud::{Client, ErrorKind, OutboxConfig, RecordId, RecordState};

use crate::connection::{missing, ConnectionArgs};
use crate::exit::{self, Exit, Failure};
use crate::Global;

/// `ulogger ble ...`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pull one device's logs and core dump once, into a durable outbox, then deliver them.
    Pull(Box<PullArgs>),
    /// List the devices the adapter sees; with --identify, connect to each and read its uLogger identity.
    Scan(ScanArgs),
}

/// `ulogger ble scan`.
#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    /// Seconds to discover for. uLogger devices do not advertise their
    /// service, so every device seen is listed.
    #[arg(long, default_value_t = 5, value_name = "SECS", value_parser = crate::duration::secs)]
    timeout: u64,
    /// Connect to each device seen and read its `config` characteristic
    /// (serial, app id, firmware): tells uLogger devices from the rest.
    /// Nothing is pulled or erased.
    #[arg(long)]
    identify: bool,
    /// The BlueZ adapter.
    #[arg(long, default_value = "hci0", value_name = "NAME")]
    adapter: String,
}

/// `ulogger ble pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// The device's Bluetooth address, e.g. AA:BB:CC:DD:EE:FF.
    #[arg(long, value_name = "ADDR")]
    address: String,
    /// The durable outbox directory: a buffer is stored here before the
    /// device is told to erase it (required).
    #[arg(long, env = "ULOGGER_OUTBOX", value_name = "DIR")]
    outbox: Option<PathBuf>,
    /// Where a buffer that fails validation is kept (with a `.reason`
    /// file) before it is acknowledged [default: a `rejected` folder
    /// beside the outbox].
    #[arg(long, env = "ULOGGER_REJECTED", value_name = "DIR")]
    rejected: Option<PathBuf>,
    /// The BlueZ adapter.
    #[arg(long, default_value = "hci0", value_name = "NAME")]
    adapter: String,
    /// Seconds to wait for the cloud to acknowledge what was pulled;
    /// what is not delivered by then stays in the outbox, for the agent
    /// or the next command on this outbox to send.
    #[arg(long, default_value_t = 30, value_name = "SECS", value_parser = crate::duration::secs)]
    deliver_timeout: u64,
    /// Milliseconds of silence after asking for data (and after the logs,
    /// before a core dump) that mean the device has nothing (more) to send.
    /// The device's own core dump follows its logs after about 100 ms.
    #[arg(long, default_value_t = 3000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(100..))]
    first_chunk_timeout: u64,
}

/// Runs `ulogger ble ...`.
pub fn run(global: Global, command: Command) -> Result<(), Exit> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match command {
        Command::Pull(args) => runtime.block_on(pull(global, *args)),
        Command::Scan(args) => runtime.block_on(scan(global, args)),
    }
}

/// What to do about a BLE failure at the BlueZ end, by its step.
pub fn hint(step: &str) -> Option<String> {
    match step {
        "connecting to bluetoothd over D-Bus" => Some(
            "is bluetoothd running (systemctl status bluetooth)? The user needs access to org.bluez on the system bus: the `bluetooth` group on most distributions, or a D-Bus policy allowing org.bluez".to_owned(),
        ),
        "opening the adapter" => Some(
            "no such adapter: check --adapter against `bluetoothctl list` (hci0 is the first)".to_owned(),
        ),
        "starting discovery" => Some(
            "the adapter may be powered off or blocked: `bluetoothctl power on`, `rfkill unblock bluetooth`".to_owned(),
        ),
        _ => None,
    }
}

async fn scan(global: Global, args: ScanArgs) -> Result<(), Exit> {
    let seen = scan_devices(&args.adapter, Duration::from_secs(args.timeout))
        .await
        .map_err(exit::from_cloud)?;
    if seen.is_empty() && !global.json {
        outln!(
            "no device seen on {} in {} s: is a device advertising in range?",
            args.adapter,
            args.timeout
        );
    }
    let connect_timeout = PullOptions::new().get_connect_timeout();
    for device in seen {
        let identity = if args.identify {
            Some(identify(&args.adapter, device.address, connect_timeout).await)
        } else {
            None
        };
        if global.json {
            let mut line = json!({
                "address": device.address.to_string(),
                "name": device.name,
                "rssi": device.rssi,
                "connected": device.connected,
            });
            if let (Some(identity), Some(line)) = (&identity, line.as_object_mut()) {
                let (ulogger, fields) = match identity {
                    Ok(info) => (
                        json!(true),
                        json!({
                            "serial": info.serial,
                            "app_id": info.app_id,
                            "device_type": info.device_type,
                            "git_version": info.git_version,
                            "git_hash": info.git_hash,
                        }),
                    ),
                    Err(e) if e.is_invalid_input() => {
                        (json!(false), json!({"error": exit::message(e)}))
                    }
                    Err(e) => (serde_json::Value::Null, json!({"error": exit::message(e)})),
                };
                line.insert("ulogger".into(), ulogger);
                line.insert("identity".into(), fields);
            }
            outln!("{line}");
        } else {
            let rssi = device
                .rssi
                .map_or_else(|| "   ? dBm".to_owned(), |r| format!("{r:4} dBm"));
            let name = device
                .name
                .as_deref()
                .map_or_else(|| "(no name)".to_owned(), |n| format!("{:?}", n));
            let linked = if device.connected {
                "  [connected]"
            } else {
                ""
            };
            let identity = match &identity {
                None => String::new(),
                Some(Ok(info)) => format!(
                    "  uLogger: serial {}, app {}, {} {}",
                    info.serial, info.app_id, info.device_type, info.git_version
                ),
                Some(Err(e)) if e.is_invalid_input() => format!("  not a uLogger device ({e})"),
                Some(Err(e)) => format!("  not identified: {}", exit::message(e)),
            };
            outln!("{}  {rssi}  {name}{linked}{identity}", device.address);
        }
    }
    Ok(())
}

/// `ulogger agent`'s BLE flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Also pull devices over Bluetooth LE (BlueZ), continuously, beside
    /// the inbox (which becomes optional). Without --ble-name or
    /// --ble-address every device seen is tried once; one that is no
    /// uLogger device is then left alone for hours.
    #[arg(long, env = "ULOGGER_BLE", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = crate::connection::boolish)]
    ble: Option<bool>,
    /// Pull only devices advertising exactly this name (repeatable; with
    /// --ble-address, a device matching either is pulled).
    #[arg(long = "ble-name", value_name = "NAME", requires = "ble")]
    names: Vec<String>,
    /// Pull only the device with this address, e.g. AA:BB:CC:DD:EE:FF
    /// (repeatable).
    #[arg(long = "ble-address", value_name = "ADDR", requires = "ble")]
    addresses: Vec<String>,
    /// How many devices to pull at once.
    #[arg(long, default_value_t = 4, value_name = "N", requires = "ble")]
    ble_max_connections: usize,
    /// The least seconds between two pulls of one device.
    #[arg(long, default_value_t = 30, value_name = "SECS", value_parser = crate::duration::secs, requires = "ble")]
    ble_min_interval: u64,
    /// The BlueZ adapter.
    #[arg(long, default_value = "hci0", value_name = "NAME", requires = "ble")]
    adapter: String,
}

impl AgentArgs {
    /// Whether `--ble` was given (or ULOGGER_BLE set true).
    pub fn enabled(&self) -> bool {
        self.ble.unwrap_or(false)
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
        args: &AgentArgs,
        client: &Client,
        rejected: &std::path::Path,
    ) -> Result<AgentBle, Exit> {
        let mut gateway = Gateway::new(&args.adapter)
            .max_connections(args.ble_max_connections)
            .min_interval(Duration::from_secs(args.ble_min_interval))
            .pull_options(PullOptions::new().rejected_dir(rejected));
        if args.ble_max_connections == 0 {
            return Err(Exit::new(
                Failure::BadInput,
                anyhow::anyhow!("--ble-max-connections must be at least 1"),
            ));
        }
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
        Ok(AgentBle {
            global,
            events,
            stop,
            task: Some(task),
            failing: std::collections::HashSet::new(),
            counts: Counts::default(),
            client: client.clone(),
            relay: ConfigRelay::in_outbox(client).ok(),
            watched: std::collections::HashMap::new(),
        })
    }

    /// The next outcome, said as one line: the records it stored (to
    /// watch for delivery, with a label), or the gateway's fatal error.
    pub async fn next(&mut self) -> Result<Vec<crate::agent::Taken>, Exit> {
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

    fn said(&mut self, event: GatewayEvent) -> Vec<crate::agent::Taken> {
        let global = self.global;
        let address = event.address.to_string();
        let name = event.name.clone();
        match &event.outcome {
            Ok(report) => {
                self.watch(&report.device);
                if let Some(config) = &report.config_written {
                    crate::agent::event(
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
                        crate::agent::event(
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
                crate::agent::event(
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
                        crate::agent::Taken {
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
                crate::agent::event(
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
                    crate::agent::event(
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

async fn pull(global: Global, args: PullArgs) -> Result<(), Exit> {
    let address: Address = args.address.parse().map_err(|_| {
        Exit::new(
            Failure::BadInput,
            anyhow::anyhow!(
                "--address {:?} is not a Bluetooth address (AA:BB:CC:DD:EE:FF)",
                args.address
            ),
        )
    })?;
    let file = args.connection.file()?;
    let outbox = args
        .outbox
        .clone()
        .or_else(|| file.outbox.clone())
        .ok_or_else(|| missing("outbox"))?;
    let rejected = match args.rejected.clone().or_else(|| file.rejected.clone()) {
        Some(dir) => dir,
        None => std::path::absolute(&outbox)
            .context("cannot resolve the outbox path")?
            .with_file_name("rejected"),
    };
    let (config, store) = args.connection.resolve()?;
    let client = Client::builder(config)
        .session_store(store)
        .outbox(OutboxConfig::new(&outbox))
        .build()
        .map_err(|e| match e.kind() {
            ErrorKind::OutboxLocked { .. } => Exit::new(Failure::BadInput, e),
            _ => exit::from_cloud(e),
        })?;
    // What an earlier run stored and did not deliver (it was killed, or
    // the cloud was away), listed before this run adds to it.
    let earlier: Vec<RecordId> = match client.outbox() {
        Ok(outbox) => outbox
            .records()
            .into_iter()
            .filter(|r| !matches!(r.state, RecordState::Dead { .. }))
            .map(|r| r.id)
            .collect(),
        Err(_) => Vec::new(),
    };
    let options = PullOptions::new().rejected_dir(&rejected).pull(
        PullConfig::new().first_chunk_timeout(Duration::from_millis(args.first_chunk_timeout)),
    );
    let outcome = pull_device(&client, &args.adapter, address, options).await;
    let report = match outcome {
        Ok(report) => report,
        Err(e) => {
            // What was stored before the failure is delivered later from
            // the outbox; the device keeps everything else.
            client.shutdown().await;
            return Err(exit::from_cloud(e));
        }
    };
    for rejected in &report.rejected {
        tracing::warn!(kind = ?rejected.kind, reason = %rejected.reason, file = ?rejected.file, "a buffer from the device was refused: kept apart, not sent");
    }
    // Delivery is the outbox's business; waiting here only makes the
    // summary say whether it happened already. What an earlier run left
    // is waited for too: this run owns the outbox now, and a gateway
    // restarted after a crash must finish what it made durable.
    let ours: Vec<RecordId> = report.stored.iter().map(|s| s.record).collect();
    let limit = Duration::from_secs(args.deliver_timeout);
    let (mut delivered, mut delivered_earlier) = (0usize, 0usize);
    let waited = tokio::time::timeout(limit, async {
        // Oldest first, the order of delivery, so each wait starts before
        // its outcome could leave the outbox's memory of recent ones.
        for (record, left_earlier) in earlier
            .iter()
            .map(|id| (*id, true))
            .chain(ours.iter().map(|id| (*id, false)))
        {
            match client.delivered(record).await {
                Ok(()) if left_earlier => delivered_earlier += 1,
                Ok(()) => delivered += 1,
                Err(e) => tracing::warn!(%record, error = %exit::message(&e), "not delivered"),
            }
        }
    })
    .await;
    if waited.is_err() {
        tracing::info!("delivery still under way after {limit:?}; the rest stays in the outbox");
    }
    client.shutdown().await;
    let pending = report.stored.len() - delivered + earlier.len() - delivered_earlier;
    if global.json {
        outln!(
            "{}",
            json!({
                "serial": report.device.serial,
                "app_id": report.device.app_id,
                "stored": report.stored.len(),
                "delivered": delivered,
                "earlier_delivered": delivered_earlier,
                "pending": pending,
                "rejected": report.rejected.len(),
                "rejected_files": report.rejected.iter().filter_map(|r| r.file.as_ref()).collect::<Vec<_>>(),
                "bytes": report.summary.bytes,
                "reacks": report.summary.reacks,
                "dropped": report.summary.dropped,
                "outbox": outbox,
            })
        );
    } else {
        let earlier = match delivered_earlier {
            0 => String::new(),
            n => format!(" ({n} stored by an earlier run delivered too)"),
        };
        outln!("{report}; {delivered} delivered, {pending} left in the outbox{earlier}");
    }
    Ok(())
}
