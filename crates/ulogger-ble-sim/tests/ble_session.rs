//! One `BleSession` across a device's comings and goings: the session
//! keeps the devices' GATT tables from BlueZ's `InterfacesAdded` and
//! `InterfacesRemoved` signals instead of listing BlueZ's whole object
//! tree per pull (`ble/tree.rs`). A device that leaves range expires from
//! BlueZ with its GATT objects; back in range it is discovered, connected
//! and resolved again, and the same session pulls it through the objects
//! it learnt of from the signals, without listing BlueZ's tree again (a
//! bus monitor counts the `GetManagedObjects` calls).
//!
//! One test in this binary: it sets `DBUS_SYSTEM_BUS_ADDRESS`, which is
//! process-wide, to point bluer at the private bus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio::time::timeout;
use ulogger_ble_sim::{Firmware, PrivateBus, SimulatedDevice};
use ulogger_cloud::ble::{Address, BleSession, PullOptions};
use ulogger_cloud::wire::{self, BufferKind, LogHeader, PullConfig};
use ulogger_emulator::ble::SimDevice;

fn log(seed: u8) -> Vec<u8> {
    let mut header = LogHeader::new(4).unwrap();
    header.anchor_tick = Some(1000);
    header.tick_rate_hz = Some(32_768);
    header.epoch_time_us = Some(1_700_000_000_000_000);
    let data: Vec<u8> = (0..300u32)
        .map(|i| (i * 7 + u32::from(seed)) as u8)
        .collect();
    wire::build_log(header, &data).unwrap()
}

fn options() -> PullOptions {
    PullOptions::new().pull(PullConfig::new().first_chunk_timeout(Duration::from_millis(1500)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_pulls_a_device_again_after_it_expired_and_came_back() {
    let (bus, bluez) = bluez_for_bluer().await;
    bluez.set_temporary_timeout(Duration::from_millis(300));
    let firmware = Firmware(Arc::new(Mutex::new(SimDevice::new(
        config_value(),
        log(1),
        None,
    ))));
    let device = bluez
        .add_device(
            SimulatedDevice::new(DEVICE, NAME, Box::new(firmware.clone()))
                .advertising_interval(Duration::from_millis(20)),
        )
        .await
        .unwrap();
    let outbox = tempfile::tempdir().unwrap();
    let client = offline_client(4242, outbox.path());
    let address: Address = DEVICE.parse().unwrap();
    let session = BleSession::new().await.unwrap();
    let pull = || {
        let (session, client) = (session.clone(), client.clone());
        async move {
            timeout(STEP * 3, session.pull(&client, "hci0", address, options()))
                .await
                .expect("the pull finished in time")
        }
    };

    // BlueZ knows the device before each pull (a discovery the test
    // keeps running), so the pulls do not discover it: bluer lists the
    // whole tree when a discovery starts, and only the session's own
    // listings are counted here.
    let watcher = common::client(bus.address()).await;
    let objects = object_manager(&watcher).await;
    let mut added = objects.receive_interfaces_added().await.unwrap();
    let mut removed = objects.receive_interfaces_removed().await.unwrap();
    let adapter = proxy(&watcher, "/org/bluez/hci0", "org.bluez.Adapter1").await;
    // A discovery exports what is in range before it replies.
    adapter
        .call::<_, _, ()>("StartDiscovery", &())
        .await
        .unwrap();

    let mut listings = Listings::start(&bus).await;
    let first = pull().await.expect("the first pull succeeded");
    assert_eq!(first.stored.len(), 1, "{first:?}");
    assert_eq!(first.stored[0].len, log(1).len());
    // The session read the tree once, when it first needed it.
    assert_eq!(listings.count().await, 1);

    // Out of range: the device expires from BlueZ, GATT objects and all.
    device.set_in_range(false).await.unwrap();
    let expired = timeout(STEP, async {
        while let Some(signal) = removed.next().await {
            let args = signal.args().unwrap();
            if args.object_path().as_str() == DEVICE_PATH
                && args
                    .interfaces()
                    .iter()
                    .any(|i| i.as_str() == "org.bluez.Device1")
            {
                return;
            }
        }
    })
    .await;
    assert!(expired.is_ok(), "the device did not expire from BlueZ");

    // Back, with a new log: seen again, then the same session connects,
    // resolves and pulls it through objects it knows from the signals.
    firmware.0.lock().unwrap().add_logs(&log(2));
    device.set_in_range(true).await.unwrap();
    let found = timeout(STEP, async {
        while let Some(signal) = added.next().await {
            if signal.args().unwrap().object_path().as_str() == DEVICE_PATH {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "the device was not found again");
    let second = pull().await.expect("the second pull succeeded");
    assert_eq!(second.stored.len(), 1, "{second:?}");
    assert_eq!(
        (second.stored[0].kind, second.stored[0].len),
        (BufferKind::Log, log(2).len())
    );
    assert!(firmware.0.lock().unwrap().logs().is_empty());
    assert_eq!(bluez.connected_count(), 0, "a link was left up");
    // The device's new objects came from the signals, not a listing.
    assert_eq!(listings.count().await, 1);
}

/// A bus monitor counting `GetManagedObjects` calls.
struct Listings {
    seen: Arc<AtomicUsize>,
    markers: tokio::sync::mpsc::UnboundedReceiver<()>,
    marker_sender: zbus::Connection,
}

impl Listings {
    async fn start(bus: &PrivateBus) -> Listings {
        let monitor = common::client(bus.address()).await;
        let rules = [
            "type='method_call',member='GetManagedObjects'",
            // The marker `count` sends: the bus hands a monitor messages
            // in the order it routes them.
            "type='method_call',interface='org.freedesktop.DBus',member='GetId'",
        ]
        .map(|rule| zbus::MatchRule::try_from(rule).unwrap());
        zbus::fdo::MonitoringProxy::new(&monitor)
            .await
            .unwrap()
            .become_monitor(&rules, 0)
            .await
            .unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let (marked, markers) = tokio::sync::mpsc::unbounded_channel();
        let mut stream = zbus::MessageStream::from(monitor);
        let counter = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let header = message.header();
                match header.member().map(|m| m.as_str()) {
                    Some("GetManagedObjects") => {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    Some("GetId") => {
                        let _ = marked.send(());
                    }
                    _ => {}
                }
            }
        });
        Listings {
            seen,
            markers,
            marker_sender: common::client(bus.address()).await,
        }
    }

    /// The calls so far: every call routed before a marker is counted
    /// once the monitor saw the marker.
    async fn count(&mut self) -> usize {
        zbus::fdo::DBusProxy::new(&self.marker_sender)
            .await
            .unwrap()
            .get_id()
            .await
            .unwrap();
        timeout(STEP, self.markers.recv())
            .await
            .expect("the monitor saw the marker")
            .expect("the monitor runs");
        self.seen.load(Ordering::SeqCst)
    }
}
