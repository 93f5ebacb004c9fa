//! `ulogger_cloud::ble::pull_device` when the outbox cannot take a buffer
//! (the device must keep it: no final ack), with a core dump after the
//! logs (both stored before the device erases anything), and with a log
//! that fails validation (kept in the rejected folder, then acknowledged);
//! and a device never seen ends the pull at the connect deadline.
//!
//! One test in this binary: it sets `DBUS_SYSTEM_BUS_ADDRESS`, which is
//! process-wide, to point bluer at the private bus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::time::timeout;
use ulogger_ble_sim::{Firmware, SimulatedDevice};
use ulogger_cloud::ble::{pull_device, Address, PullOptions};
use ulogger_cloud::wire::{self, BufferKind, LogHeader};
use ulogger_cloud::{Client, ErrorKind, MqttConfig, OutboxConfig, Security, WhenFull};
use ulogger_emulator::ble::{Erased, SimDevice};

fn device_log() -> Vec<u8> {
    let mut header = LogHeader::new(4).unwrap();
    header.epoch_time_us = Some(1_700_000_000_000_000);
    let data: Vec<u8> = (0..300u32).map(|i| (i * 13 % 251) as u8).collect();
    wire::build_log(header, &data).unwrap()
}

/// A client whose cloud never answers: what it stores stays in its outbox.
fn client(outbox: OutboxConfig) -> Client {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = MqttConfig::new(4242)
        .broker("127.0.0.1")
        .port(port)
        .security(Security::Plaintext)
        .connect_timeout(Duration::from_secs(60));
    Client::builder(config).outbox(outbox).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffer_the_outbox_refuses_stays_on_the_device_and_a_core_dump_follows_the_logs() {
    let log = device_log();
    let mut body = b"cC".to_vec();
    body.extend((0..200u32).map(|i| (i % 7) as u8));
    let identity = wire::decode_ble_config(&config_value()).unwrap();
    let core_dump = wire::CoreDumpHeader::encode_package(&identity, &body);
    let firmware = Firmware::new(SimDevice::new(
        config_value(),
        log.clone(),
        Some(core_dump.clone()),
    ));
    let (_bus, bluez) = bluez_for_bluer().await;
    bluez
        .add_device(SimulatedDevice::new(
            DEVICE,
            NAME,
            Box::new(firmware.clone()),
        ))
        .await
        .unwrap();
    let address: Address = DEVICE.parse().unwrap();

    // A device nobody sees: the connect phase ends at its deadline, with
    // a retryable error, rather than waiting for ever.
    let nowhere_dir = tempfile::tempdir().unwrap();
    let nowhere = client(OutboxConfig::new(nowhere_dir.path()));
    let err = timeout(
        STEP,
        pull_device(
            &nowhere,
            "hci0",
            "00:11:22:33:44:55".parse().unwrap(),
            PullOptions::new().connect_timeout(Duration::from_millis(500)),
        ),
    )
    .await
    .expect("the connect deadline ended the pull")
    .expect_err("no such device");
    assert!(
        matches!(err.kind(), ErrorKind::Ble { step, .. } if step.contains("connecting")),
        "{err:?}"
    );
    assert!(err.is_retryable());
    nowhere.shutdown().await;

    // An outbox too small for the log, refusing rather than evicting: the
    // pull fails and the device was never told to erase anything.
    let full_dir = tempfile::tempdir().unwrap();
    let full = client(
        OutboxConfig::new(full_dir.path())
            .max_bytes(16)
            .when_full(WhenFull::Reject),
    );
    let err = timeout(
        STEP * 3,
        pull_device(&full, "hci0", address, PullOptions::new()),
    )
    .await
    .expect("the pull ended in time")
    .expect_err("the outbox refused the log");
    assert!(
        matches!(err.kind(), ErrorKind::OutboxFull { .. }),
        "{err:?}"
    );
    assert_eq!(firmware.device().erasures().count(), 0);
    assert_eq!(firmware.device().logs(), &log[..]);
    full.shutdown().await;

    // A roomy outbox: the log, then the core dump, each stored before its
    // final ack; the device erases both at once, after the second.
    let dir = tempfile::tempdir().unwrap();
    let roomy = client(OutboxConfig::new(dir.path()));
    let report = timeout(
        STEP * 3,
        pull_device(&roomy, "hci0", address, PullOptions::new()),
    )
    .await
    .expect("the pull ended in time")
    .unwrap();
    let kinds: Vec<_> = report.stored.iter().map(|s| (s.kind, s.len)).collect();
    assert_eq!(
        kinds,
        [
            (BufferKind::Log, log.len()),
            (BufferKind::CoreDump, core_dump.len())
        ]
    );
    {
        let device = firmware.device();
        let erasures: Vec<_> = device.erasures().collect();
        assert_eq!(erasures.len(), 1, "{erasures:?}");
        let (erased, at) = &erasures[0];
        assert_eq!(
            **erased,
            Erased::LogsAndCoreDump {
                logs: log,
                core_dump
            }
        );
        assert!(
            *at >= report.stored[1].durable_at,
            "erased before the core dump was durable"
        );
    }

    // A second device whose log is garbage: kept apart, fsynced, then
    // acknowledged, so the device is not stuck re-sending it.
    let garbage = vec![0xA5u8; 100];
    let broken = Firmware::new(SimDevice::new(config_value(), garbage.clone(), None));
    let broken_address = "11:22:33:44:55:66";
    bluez
        .add_device(SimulatedDevice::new(
            broken_address,
            NAME,
            Box::new(broken.clone()),
        ))
        .await
        .unwrap();
    let rejected_dir = dir.path().join("rejected");
    let report = timeout(
        STEP * 3,
        pull_device(
            &roomy,
            "hci0",
            broken_address.parse().unwrap(),
            PullOptions::new().rejected_dir(&rejected_dir),
        ),
    )
    .await
    .expect("the pull ended in time")
    .unwrap();
    assert!(report.stored.is_empty(), "{report:?}");
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    let kept = report.rejected[0].file.clone().expect("kept in a file");
    assert_eq!(std::fs::read(&kept).unwrap(), garbage);
    assert!(!std::fs::read_to_string(kept.with_extension("reason"))
        .unwrap()
        .is_empty());
    assert_eq!(
        broken
            .device()
            .erasures()
            .map(|(e, _)| e.clone())
            .collect::<Vec<_>>(),
        [Erased::Logs(garbage.clone())]
    );

    // Without a folder of its own, a rejected buffer is still on disk
    // before the device erases it: in the outbox directory's ble-rejected/.
    // (Other garbage: the same again would be taken for a re-offer.)
    let garbage = vec![0x5Au8; 100];
    broken.device().add_logs(&garbage);
    let report = timeout(
        STEP * 3,
        pull_device(
            &roomy,
            "hci0",
            broken_address.parse().unwrap(),
            PullOptions::new(),
        ),
    )
    .await
    .expect("the pull ended in time")
    .unwrap();
    let kept = report.rejected[0].file.clone().expect("kept in a file");
    assert!(
        kept.starts_with(dir.path().join("ble-rejected")),
        "{kept:?}"
    );
    assert_eq!(std::fs::read(&kept).unwrap(), garbage);
    roomy.shutdown().await;
}
