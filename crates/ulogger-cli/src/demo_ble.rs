//! `ulogger demo --ble`: the Bluetooth LE path end to end, without
//! hardware.
//!
//! Starts a private `dbus-daemon`, the simulated BlueZ on it with a few
//! simulated devices (the demo firmware's state machine, each with a
//! generated log, one with a core dump too) and the local cloud; points
//! this process's BlueZ client at the private bus; pulls every device with
//! `ble::BleSession::pull` into a durable outbox (each buffer is stored before
//! the device is told to erase it); and shows what reached the cloud.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use ulogger_ble_sim::{FakeBluez, Firmware, PrivateBus, SimulatedDevice};
use ulogger_cloud::ble::{Address, BleSession, PullOptions, PullReport};
use ulogger_cloud::wire::{
    build_log, BufferKind, CoreDumpHeader, DeviceInfo, LogHeader, PullConfig,
};
use ulogger_cloud::{Client, MqttConfig, OutboxConfig};
use ulogger_emulator::ble::SimDevice;
use ulogger_emulator::{Emulator, EmulatorConfig, Record, RecordKind};

use crate::demo::{ms, print_received, step, Args, CUSTOMER_ID};
use crate::exit::{self, Exit, Failure};
use crate::Global;

/// The simulated BlueZ's only adapter.
const ADAPTER: &str = "hci0";
/// Silence after the logs that means "no core dump": a simulated device
/// sends its core dump 100 ms after its logs' final ack.
const FIRST_CHUNK_TIMEOUT: Duration = Duration::from_secs(1);
/// Bounds every phase that waits on something else: a hang is an error.
const PHASE_TIMEOUT: Duration = Duration::from_secs(30);

/// A simulated device: its address, identity and firmware state.
struct DemoDevice {
    address: &'static str,
    info: DeviceInfo,
    firmware: Firmware,
}

/// The `config` characteristic's value (PROTOCOL §4): the application id,
/// then serial, device type, version and hash, each NUL-terminated.
fn config_value(info: &DeviceInfo) -> Vec<u8> {
    let mut value = info.app_id.to_le_bytes().to_vec();
    for s in [
        &info.serial,
        &info.device_type,
        &info.git_version,
        &info.git_hash,
    ] {
        value.extend_from_slice(s.as_bytes());
        value.push(0);
    }
    value
}

/// A version-4 log as the device's agent hands it over: no token (0) and
/// no wall-clock time (0), both filled in by the gateway.
fn device_log(n: u8) -> Result<Vec<u8>, Exit> {
    let mut header = LogHeader::new(4).map_err(internal)?;
    header.anchor_tick = Some(5_000 * u32::from(n));
    header.tick_rate_hz = Some(32_768);
    header.epoch_time_us = Some(0);
    let data: Vec<u8> = (0..400 + 200 * u32::from(n))
        .map(|i| (i.wrapping_mul(31) ^ u32::from(n)) as u8)
        .collect();
    build_log(header, &data).map_err(internal)
}

/// A core-dump package (PROTOCOL §10): the 264-byte header naming the
/// device, then a CrashCatcher dump, which starts with `cC`.
fn core_dump(info: &DeviceInfo) -> Vec<u8> {
    let mut body = b"cC".to_vec();
    body.extend((0..600u32).map(|i| (i.wrapping_mul(7) % 251) as u8));
    CoreDumpHeader::encode_package(info, &body)
}

fn demo_devices() -> Result<Vec<DemoDevice>, Exit> {
    let mut devices = Vec::new();
    for (n, address) in (1u8..).zip([
        "C0:FF:EE:00:00:01",
        "C0:FF:EE:00:00:02",
        "C0:FF:EE:00:00:03",
    ]) {
        let info = DeviceInfo::new(
            7,
            format!("DEMO-BLE-{n:02}"),
            "demo-board",
            "v1.2.4",
            "1a2b3c4",
        );
        // The first device crashed once: its core dump follows its logs.
        let dump = (n == 1).then(|| core_dump(&info));
        let firmware = Firmware::new(SimDevice::new(config_value(&info), device_log(n)?, dump));
        devices.push(DemoDevice {
            address,
            info,
            firmware,
        });
    }
    Ok(devices)
}

/// Whether the device erased everything it had: it was told to, after
/// each buffer was durable.
fn emptied(device: &DemoDevice) -> bool {
    let state = device.firmware.device();
    state.logs().is_empty() && state.core_dump().is_none()
}

/// `dbus-daemon` missing is the one failure a user can fix: say how.
fn bus_error(e: ulogger_ble_sim::Error) -> Exit {
    let missing =
        matches!(&e, ulogger_ble_sim::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound);
    if missing {
        Exit::new(
            Failure::Internal,
            anyhow::anyhow!(
                "`dbus-daemon` was not found: `ulogger demo --ble` runs a private D-Bus bus for its simulated BlueZ"
            ),
        )
        .with_hint(Some(
            "install the package that has `dbus-daemon`: `dbus-daemon` on Debian 11+, Ubuntu 22.04+ and Fedora, `dbus` on older Debian and Ubuntu, Arch and Alpine (e.g. `sudo apt install dbus-daemon`); no system bus, bluetoothd or radio is needed".into(),
        ))
    } else {
        Exit::new(
            Failure::Internal,
            anyhow::Error::new(e).context("cannot start a private D-Bus bus (dbus-daemon)"),
        )
    }
}

fn internal(e: impl Into<anyhow::Error>) -> Exit {
    Exit::new(Failure::Internal, e)
}

/// One device's pull: what it stored, and how long it took.
struct Pulled {
    report: PullReport,
    took: Duration,
}

/// Runs `ulogger demo --ble`.
pub fn run(global: Global, args: &Args) -> Result<(), Exit> {
    let bus = PrivateBus::start().map_err(bus_error)?;
    // bluer's libdbus finds BlueZ through this variable. Set before the
    // emulator and the runtime start any thread of ours that could read
    // the environment meanwhile.
    std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", bus.address());
    step(
        global,
        &format!(
            "1. Private D-Bus bus at {} with a simulated BlueZ (adapter {ADAPTER})",
            bus.address()
        ),
    );

    let mut config = EmulatorConfig::new(CUSTOMER_ID);
    if let Some(dir) = &args.data {
        config = config.data_dir(dir);
    }
    let emulator = Emulator::start(config)
        .context("cannot start the emulator")
        .map_err(internal)?;
    let certs = emulator
        .certs()
        .context("the emulator has no certificates")
        .map_err(internal)?;
    step(
        global,
        &format!(
            "2. Local uLogger cloud listening on {} (mutual TLS, customer {CUSTOMER_ID})",
            emulator.addr()
        ),
    );
    let mqtt = MqttConfig::new(CUSTOMER_ID)
        .broker(emulator.addr().ip().to_string())
        .port(emulator.addr().port())
        .ca_file(&certs.ca_cert)
        .client_cert(&certs.client_cert, &certs.client_key);
    let outbox = tempfile::Builder::new()
        .prefix("ulogger-demo-outbox-")
        .tempdir()
        .context("cannot make the gateway's outbox directory")
        .map_err(internal)?;
    let devices = demo_devices()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;

    let pulled = runtime.block_on(async {
        let bluez = tokio::time::timeout(PHASE_TIMEOUT, FakeBluez::start(bus.address()))
            .await
            .map_err(|_| internal(anyhow::anyhow!("the simulated BlueZ did not start in time")))?
            .context("cannot start the simulated BlueZ")
            .map_err(internal)?;
        for device in &devices {
            bluez
                .add_device(SimulatedDevice::new(
                    device.address,
                    "uLogger Example",
                    Box::new(device.firmware.clone()),
                ))
                .await
                .context("cannot add a simulated device")
                .map_err(internal)?;
            let state = device.firmware.device();
            step(
                global,
                &format!(
                    "3. Simulated device {} {} (app {}): a {}-byte log{}",
                    device.address,
                    device.info.serial,
                    device.info.app_id,
                    state.logs().len(),
                    state.core_dump().map_or_else(String::new, |d| format!(
                        " and a {}-byte core dump",
                        d.len()
                    ))
                ),
            );
        }
        let client = Client::builder(mqtt)
            .outbox(OutboxConfig::new(outbox.path()))
            .build()
            .map_err(exit::from_cloud)?;
        // All devices at once, as a gateway in range of several does, over
        // one connection to bluetoothd.
        let bluetooth = BleSession::new().await.map_err(exit::from_cloud)?;
        let mut pulls = tokio::task::JoinSet::new();
        for (n, device) in devices.iter().enumerate() {
            let address: Address = device.address.parse().map_err(internal)?;
            let client = client.clone();
            let bluetooth = bluetooth.clone();
            pulls.spawn(async move {
                let started = Instant::now();
                let options = PullOptions::new()
                    .pull(PullConfig::new().first_chunk_timeout(FIRST_CHUNK_TIMEOUT));
                let report = bluetooth.pull(&client, ADAPTER, address, options).await;
                (n, report, started.elapsed())
            });
        }
        let mut pulled: Vec<Option<Pulled>> = devices.iter().map(|_| None).collect();
        while let Some(joined) = pulls.join_next().await {
            let (n, report, took) = joined.map_err(internal)?;
            let report = report.map_err(exit::from_cloud)?;
            pulled[n] = Some(Pulled { report, took });
        }
        let pulled: Vec<Pulled> = pulled.into_iter().flatten().collect();
        for (device, pull) in devices.iter().zip(&pulled) {
            step(
                global,
                &format!(
                    "4. Pulled {} in {:.0} ms: {}; each buffer was in the outbox before its final ack, {}",
                    device.address,
                    ms(pull.took),
                    pull.report,
                    if emptied(device) {
                        "and the device erased them"
                    } else {
                        "but the device still holds data"
                    }
                ),
            );
        }
        let records: Vec<_> = pulled
            .iter()
            .flat_map(|p| p.report.stored.iter().map(|s| s.record))
            .collect();
        let delivered = tokio::time::timeout(PHASE_TIMEOUT, async {
            for record in &records {
                client.delivered(*record).await?;
            }
            Ok::<_, ulogger_cloud::Error>(())
        })
        .await;
        client.shutdown().await;
        match delivered {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(exit::from_cloud(e)),
            Err(_) => {
                return Err(internal(anyhow::anyhow!(
                    "the outbox did not deliver the pulled buffers within {PHASE_TIMEOUT:?}"
                )))
            }
        }
        step(
            global,
            &format!(
                "5. Delivered from the outbox: the {} pulled buffer(s), each acknowledged by the cloud",
                records.len()
            ),
        );
        Ok::<_, Exit>(pulled)
    })?;

    let count = |kind: BufferKind| {
        pulled
            .iter()
            .flat_map(|p| &p.report.stored)
            .filter(|s| s.kind == kind)
            .count()
    };
    let (logs, dumps) = (count(BufferKind::Log), count(BufferKind::CoreDump));
    // The broker acknowledged every record; the cloud side records each
    // once it has verified it.
    let mut watcher = emulator.watch_records();
    let received = runtime.block_on(async {
        tokio::time::timeout(PHASE_TIMEOUT, async {
            let mut received: Vec<Record> = Vec::new();
            let seen =
                |received: &[Record], kind| received.iter().filter(|r| r.kind == kind).count();
            while seen(&received, RecordKind::BinaryLog) < logs
                || seen(&received, RecordKind::CoreDump) < dumps
            {
                received.push(watcher.next().await);
            }
            received
        })
        .await
    });
    let received = received
        .context("the cloud did not record the pulled logs")
        .map_err(internal)?;
    let all_ok = received.iter().all(Record::is_ok);
    let erased = devices.iter().all(emptied);
    if global.json {
        outln!(
            "{}",
            json!({
                "ble": true,
                "bus": bus.address(),
                "broker": emulator.addr().to_string(),
                "customer_id": CUSTOMER_ID,
                "devices": devices.iter().zip(&pulled).map(|(d, p)| json!({
                    "address": d.address,
                    "serial": p.report.device.serial,
                    "app_id": p.report.device.app_id,
                    "logs": p.report.summary.logs,
                    "core_dumps": p.report.summary.core_dumps,
                    "rejected": p.report.rejected.len(),
                    "already_stored": p.report.duplicates,
                    "bytes": p.report.summary.bytes,
                    "erased": emptied(d),
                })).collect::<Vec<_>>(),
                "logs_delivered": logs,
                "core_dumps_delivered": dumps,
                "cloud_records": received,
                "ok": all_ok && erased,
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
    if !erased {
        return Err(internal(anyhow::anyhow!(
            "a simulated device still holds data after its pull"
        )));
    }
    Ok(())
}
