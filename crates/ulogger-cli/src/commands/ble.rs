//! `ulogger ble`: the gateway's device end over Bluetooth LE (BlueZ).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use ulogger_cloud::ble::{identify, pull_device, scan as scan_devices, Address, PullOptions};
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
