//! `ulogger demo`: the whole job on a local cloud, in one command.
//!
//! Starts an emulator in-process with mutual TLS, makes a device and a
//! valid version-4 log, registers the device, uploads twice (the second
//! time with the cached token) and shows what the cloud received.

#[cfg(all(feature = "ble", target_os = "linux"))]
mod ble;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use ulogger_cloud::wire::{build_log, DeviceInfo, LogHeader};
use ulogger_cloud::{Client, MqttConfig};
use ulogger_emulator::{Emulator, EmulatorConfig, Record, RecordKind};

use crate::exit::{self, Exit, Failure};
use crate::Global;

/// Arguments of `ulogger demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the emulator's records and certificates in DIR (default: a
    /// temporary directory, removed at exit).
    #[arg(long, value_name = "DIR")]
    pub(crate) data: Option<PathBuf>,
    /// Show the Bluetooth LE path instead: simulated devices on a
    /// simulated BlueZ (a private `dbus-daemon`), pulled by the gateway
    /// into a durable outbox and delivered to the local cloud.
    #[cfg(all(feature = "ble", target_os = "linux"))]
    #[arg(long)]
    ble: bool,
}

pub(crate) const CUSTOMER_ID: u32 = 1001;

/// A device as its BLE config characteristic would describe it.
fn demo_device() -> DeviceInfo {
    DeviceInfo::new(7, "DEMO-0001", "demo-board", "v1.0.0", "1a2b3c4")
}

/// A version-4 log as the device's agent would hand it over: no token yet
/// (0) and no wall-clock time (0), which the gateway fills in.
fn demo_log(sequence: u8) -> Result<Vec<u8>, Exit> {
    let mut header = LogHeader::new(4).map_err(|e| Exit::new(Failure::Internal, e))?;
    header.anchor_tick = Some(1_000 * u32::from(sequence));
    header.tick_rate_hz = Some(32_768);
    header.epoch_time_us = Some(0);
    let data: Vec<u8> = (0..1024u32)
        .map(|i| (i.wrapping_mul(37) ^ u32::from(sequence)) as u8)
        .collect();
    build_log(header, &data).map_err(|e| Exit::new(Failure::Internal, e))
}

pub(crate) fn step(global: Global, text: &str) {
    if !global.json {
        outln!("{text}");
    }
}

pub fn run(global: Global, args: Args) -> Result<(), Exit> {
    #[cfg(all(feature = "ble", target_os = "linux"))]
    if args.ble {
        return ble::run(global, &args);
    }
    let mut config = EmulatorConfig::new(CUSTOMER_ID);
    if let Some(dir) = &args.data {
        config = config.data_dir(dir);
    }
    let emulator = Emulator::start(config)
        .context("cannot start the emulator")
        .map_err(|e| Exit::new(Failure::Internal, e))?;
    let certs = emulator
        .certs()
        .context("the emulator has no certificates")
        .map_err(|e| Exit::new(Failure::Internal, e))?;
    step(
        global,
        &format!(
            "1. Local uLogger cloud listening on {} (mutual TLS, customer {CUSTOMER_ID})",
            emulator.addr()
        ),
    );

    let mqtt = MqttConfig::new(CUSTOMER_ID)
        .broker(emulator.addr().ip().to_string())
        .port(emulator.addr().port())
        .ca_file(&certs.ca_cert)
        .client_cert(&certs.client_cert, &certs.client_key);
    let device = demo_device();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;

    let (token, receipts) = runtime.block_on(async {
        let client = Client::builder(mqtt)
            .stamp_epoch_time(true)
            .build()
            .map_err(exit::from_cloud)?;
        step(
            global,
            &format!(
                "2. Device {} (app {}, firmware {} @ {})",
                device.serial, device.app_id, device.git_version, device.git_hash
            ),
        );
        let started = Instant::now();
        let token = client
            .session_token(&device)
            .await
            .map_err(exit::from_cloud)?;
        step(
            global,
            &format!(
                "3. Registered: session token {token} ({:.1} ms)",
                ms(started.elapsed())
            ),
        );
        let mut receipts = Vec::new();
        for (n, label) in [
            (1u8, "4. Uploaded"),
            (2, "5. Uploaded again (cached token)"),
        ] {
            let log = demo_log(n)?;
            let started = Instant::now();
            let receipt = client
                .upload_log(&device, &log)
                .await
                .map_err(exit::from_cloud)?;
            step(
                global,
                &format!(
                    "{label}: {} bytes to {}, acknowledged in {:.1} ms",
                    receipt.size,
                    receipt.topic,
                    ms(started.elapsed())
                ),
            );
            receipts.push(receipt);
        }
        client.shutdown().await;
        Ok::<_, Exit>((token, receipts))
    })?;

    // Both logs were acknowledged by the broker; the cloud side records
    // each once it has verified it.
    let mut watcher = emulator.watch_records();
    let received = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut received: Vec<Record> = Vec::new();
            while received
                .iter()
                .filter(|r| r.kind == RecordKind::BinaryLog)
                .count()
                < receipts.len()
            {
                received.push(watcher.next().await);
            }
            received
        })
        .await
    });
    let received = received
        .context("the cloud did not record the uploaded logs")
        .map_err(|e| Exit::new(Failure::Internal, e))?;

    let all_ok = received.iter().all(Record::is_ok);
    if global.json {
        outln!(
            "{}",
            json!({
                "broker": emulator.addr().to_string(),
                "customer_id": CUSTOMER_ID,
                "serial": device.serial,
                "token": token,
                "uploads": receipts.iter().map(|r| json!({
                    "topic": r.topic, "size": r.size, "token": r.token,
                    "epoch_time_us": r.header.epoch_time_us,
                })).collect::<Vec<_>>(),
                "cloud_records": received,
                "ok": all_ok,
            })
        );
    } else {
        print_received(&received, args.data.as_deref());
    }
    if !all_ok {
        return Err(Exit::new(
            Failure::Refused,
            anyhow::anyhow!("the cloud rejected part of the demo's data"),
        ));
    }
    Ok(())
}

/// The cloud's records as a table, one line each.
/// The demo's last step in text: what the cloud received, and where its
/// records are kept (if they are).
pub(crate) fn print_received(received: &[Record], data: Option<&std::path::Path>) {
    outln!("6. What the cloud received:");
    print_records(received);
    match data {
        Some(dir) => outln!(
            "   Records: {} (payloads beside it)",
            dir.join(ulogger_emulator::INDEX_FILE).display()
        ),
        None => outln!("   (pass --data DIR to keep the records and certificates)"),
    }
}

pub(crate) fn print_records(records: &[Record]) {
    for record in records {
        outln!(
            "   {:<11} {:<26} serial={:<10} token={:<10} {:>5} bytes  {}",
            kind_name(record.kind),
            record.topic,
            record.serial.as_deref().unwrap_or("-"),
            record
                .token
                .map_or_else(|| "-".to_owned(), |t| t.to_string()),
            record.size,
            match &record.reason {
                None => "ok".to_owned(),
                Some(reason) => format!("REJECTED: {reason}"),
            },
        );
    }
}

fn kind_name(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Boot => "boot",
        RecordKind::BootReply => "boot-reply",
        RecordKind::BinaryLog => "binary-log",
        RecordKind::CoreDump => "core-dump",
        RecordKind::Metrics => "metrics",
        RecordKind::Events => "events",
        RecordKind::TextLogs => "text-logs",
        RecordKind::Unrouted => "unrouted",
        RecordKind::Config => "config",
        RecordKind::Rejected => "rejected",
        _ => "other",
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
