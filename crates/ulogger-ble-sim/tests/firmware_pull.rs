//! The whole device end over D-Bus: the firmware's own state machine
//! (`ulogger_emulator::ble::SimDevice`) behind the simulated BlueZ, and
//! the gateway's pull (`ulogger_cloud::wire::BlePull`) driven through
//! BlueZ's D-Bus API as a gateway process sees it. The device erases its
//! logs and core dump only after the gateway declared them durable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::*;
use futures_util::StreamExt;
use tokio::time::timeout;
use ulogger_ble_sim::{Characteristic, FakeBluez, Firmware, PrivateBus, SimulatedDevice};
use ulogger_cloud::wire::{self, BlePull, BufferKind, PullAction, PullConfig};
use ulogger_emulator::ble::{Erased, SimDevice};
use zbus::Variant;

const CHAR: &str = "org.bluez.GattCharacteristic1";
const DEVICE_IFACE: &str = "org.bluez.Device1";

fn command() -> Options {
    HashMap::from([("type", Variant::from("command"))])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_pull_over_dbus_gets_logs_and_core_dump_erased_only_after_durable() {
    let logs: Vec<u8> = (0..1_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let core_dump: Vec<u8> = (0..300u32).map(|i| (i % 13) as u8).collect();
    let firmware = Firmware(Arc::new(Mutex::new(SimDevice::new(
        config_value(),
        logs.clone(),
        Some(core_dump.clone()),
    ))));

    let bus = PrivateBus::start().unwrap();
    let bluez = timeout(STEP, FakeBluez::start(bus.address()))
        .await
        .unwrap()
        .unwrap();
    let device = bluez
        .add_device(SimulatedDevice::new(
            DEVICE,
            NAME,
            Box::new(firmware.clone()),
        ))
        .await
        .unwrap();

    // As a gateway: discover, connect, read config, subscribe to both
    // data characteristics, then let the pull drive the acks.
    let conn = client(bus.address()).await;
    let adapter = proxy(&conn, "/org/bluez/hci0", "org.bluez.Adapter1").await;
    adapter
        .call::<_, _, ()>("StartDiscovery", &())
        .await
        .unwrap();
    let dev = proxy(&conn, DEVICE_PATH, DEVICE_IFACE).await;
    timeout(STEP, async {
        loop {
            if dev.call::<_, _, ()>("Connect", &()).await.is_ok() {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("connected");
    let config = proxy(
        &conn,
        &device.characteristic_path(Characteristic::Config),
        CHAR,
    )
    .await;
    let options: Options = HashMap::new();
    let value: Vec<u8> = config.call("ReadValue", &(options,)).await.unwrap();
    let identity = wire::decode_ble_config(&value).unwrap();
    assert_eq!(identity.serial, "AABBCCDDEEFF");

    let mut streams = Vec::new();
    for (ch, wire_ch) in [
        (Characteristic::LogData, wire::Characteristic::LogData),
        (
            Characteristic::CoreDumpData,
            wire::Characteristic::CoreDumpData,
        ),
    ] {
        let path = device.characteristic_path(ch);
        let changes = properties(&conn, &path)
            .await
            .receive_properties_changed()
            .await
            .unwrap();
        proxy(&conn, &path, CHAR)
            .await
            .call::<_, _, ()>("StartNotify", &())
            .await
            .unwrap();
        streams.push(changes.map(move |signal| (wire_ch, signal)));
    }
    let mut notified = futures_util::stream::select_all(streams);
    let log_ack = proxy(
        &conn,
        &device.characteristic_path(Characteristic::LogAck),
        CHAR,
    )
    .await;

    let mut pull = BlePull::new(PullConfig::new(), Instant::now());
    let mut delivered = Vec::new();
    let mut durable_at = Vec::new();
    let mut action = pull.poll(Instant::now());
    let summary = timeout(STEP * 3, async {
        loop {
            match action {
                PullAction::WriteAck(ack) => {
                    log_ack
                        .call::<_, _, ()>("WriteValue", &(ack.to_vec(), command()))
                        .await
                        .unwrap();
                }
                PullAction::Deliver(delivery) => {
                    // The device still holds everything: nothing may be
                    // erased before the gateway says the buffer is durable.
                    assert_eq!(firmware.0.lock().unwrap().erasures().count(), 0);
                    delivered.push((delivery.kind, delivery.data.clone()));
                    durable_at.push(Instant::now());
                    action = pull.durable(delivery.id, Instant::now()).unwrap();
                    continue;
                }
                PullAction::Finished(summary) => return summary,
                PullAction::GiveUp(reason) => panic!("gave up: {reason}"),
                _ => {}
            }
            if pull.is_over() {
                // The final ack was the last word; poll says how it ended.
                action = pull.poll(Instant::now());
                continue;
            }
            let deadline = pull.deadline();
            action = tokio::select! {
                Some((ch, signal)) = notified.next() => {
                    let args = signal.args().unwrap();
                    match args.changed_properties().get("Value") {
                        Some(value) => {
                            let bytes = Vec::<u8>::try_from(value.try_clone().unwrap()).unwrap();
                            pull.on_notification(ch, &bytes, Instant::now())
                        }
                        None => PullAction::Nothing,
                    }
                }
                () = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                } => pull.poll(Instant::now()),
            };
        }
    })
    .await
    .expect("the pull finished");

    assert_eq!(
        delivered,
        [
            (BufferKind::Log, logs.clone()),
            (BufferKind::CoreDump, core_dump.clone())
        ]
    );
    assert_eq!((summary.logs, summary.core_dumps), (1, 1));
    // Erased once, logs and crash region together, after both were durable.
    let device_state = firmware.0.lock().unwrap();
    let erasures: Vec<_> = device_state.erasures().collect();
    assert_eq!(erasures.len(), 1, "{erasures:?}");
    let (erased, at) = &erasures[0];
    assert_eq!(**erased, Erased::LogsAndCoreDump { logs, core_dump });
    assert!(
        *at >= durable_at[1],
        "erased before the core dump was durable"
    );
}
