//! The continuous gateway (`ulogger_cloud::ble::Gateway`, on bluer) against
//! the simulated BlueZ with the firmware's state machine behind each
//! device: the connection cap, the allow-lists, backoff and recovery, a
//! device linked before the start, the minimum interval between pulls,
//! and the try-once rule for devices that are no uLogger devices.
//!
//! One test, the scenarios in turn on one private bus and one fake BlueZ:
//! libdbus reads `DBUS_SYSTEM_BUS_ADDRESS` once per process, so bluer
//! meets one bus per test binary. Each scenario has its own devices
//! (addresses), and all but the first name theirs in an allow-list, so
//! the devices of earlier scenarios are left alone. Every wait is for an
//! event of the gateway or the fake, bounded by a timeout; none is a
//! sleep.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{bluez_for_bluer, client as bus_client, offline_client, proxy, STEP};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::Notify;
use tokio::time::timeout;
use ulogger_ble_sim::{DeviceHandle, FakeBluez, Firmware, PrivateBus, SimulatedDevice};
use ulogger_cloud::ble::{Address, Gateway, GatewayEvent, PullOptions};
use ulogger_cloud::wire::{self, LogHeader, PullConfig};
use ulogger_cloud::Client;
use ulogger_emulator::ble::SimDevice;

const NAME: &str = "uLogger Example";

fn log(seed: u32) -> Vec<u8> {
    let mut header = LogHeader::new(4).unwrap();
    header.anchor_tick = Some(1000);
    header.tick_rate_hz = Some(32_768);
    header.epoch_time_us = Some(1_700_000_000_000_000);
    let data: Vec<u8> = (0..200u32).map(|i| (i * seed % 251) as u8).collect();
    wire::build_log(header, &data).unwrap()
}

/// `config` of the device at `address`: its serial is the address's hex.
fn config_for(address: &str) -> Vec<u8> {
    let mut v = 7u32.to_le_bytes().to_vec();
    for s in [
        address.replace(':', "").as_str(),
        "demo",
        "1.2.4",
        "no_cache",
    ] {
        v.extend_from_slice(s.as_bytes());
        v.push(0);
    }
    v
}

fn address(i: u8) -> String {
    format!("AA:BB:CC:DD:EE:{i:02X}")
}

/// A private bus with the fake BlueZ on it, bluer pointed at it, and a
/// client whose cloud never answers (what is pulled stays in its outbox).
struct World {
    bus: PrivateBus,
    bluez: FakeBluez,
    client: Client,
    _outbox: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        let (bus, bluez) = bluez_for_bluer().await;
        let outbox = tempfile::tempdir().unwrap();
        let client = offline_client(4242, outbox.path());
        World {
            bus,
            bluez,
            client,
            _outbox: outbox,
        }
    }

    /// A device with the demo firmware holding `logs` (none: empty).
    async fn device(&self, i: u8, name: &str, logs: Option<Vec<u8>>) -> (DeviceHandle, Firmware) {
        let addr = address(i);
        let firmware = Firmware::new(SimDevice::new(
            config_for(&addr),
            logs.unwrap_or_default(),
            None,
        ));
        let handle = self
            .bluez
            .add_device(SimulatedDevice::new(addr, name, Box::new(firmware.clone())))
            .await
            .unwrap();
        (handle, firmware)
    }

    /// Runs `gateway` until the returned stopper is used.
    fn run(&self, gateway: Gateway) -> Running {
        let (events, rx) = unbounded_channel();
        let stop = std::sync::Arc::new(Notify::new());
        let task = tokio::spawn({
            let (client, stop) = (self.client.clone(), stop.clone());
            async move { gateway.run(&client, events, stop.notified()).await }
        });
        Running { rx, stop, task }
    }
}

struct Running {
    rx: UnboundedReceiver<GatewayEvent>,
    stop: std::sync::Arc<Notify>,
    task: tokio::task::JoinHandle<Result<(), ulogger_cloud::Error>>,
}

impl Running {
    async fn next(&mut self) -> GatewayEvent {
        let event = timeout(STEP * 2, self.rx.recv())
            .await
            .expect("a gateway event in time");
        match event {
            Some(event) => event,
            None => panic!(
                "the gateway ended: {:?}",
                timeout(STEP, &mut self.task).await
            ),
        }
    }

    /// Stops the gateway and checks it ended cleanly.
    async fn stop(self) {
        self.stop.notify_one();
        timeout(STEP * 2, self.task)
            .await
            .expect("the gateway stopped in time")
            .unwrap()
            .expect("the gateway ended cleanly");
    }
}

/// Pulls that find nothing end after this much silence.
fn options() -> PullOptions {
    PullOptions::new().pull(PullConfig::new().first_chunk_timeout(Duration::from_millis(800)))
}

fn gateway() -> Gateway {
    Gateway::new("hci0")
        .pull_options(options())
        .rescan_interval(Duration::from_millis(100))
        .min_interval(Duration::from_secs(600))
        .backoff(Duration::from_millis(100), Duration::from_millis(400))
}

fn addr(i: u8) -> Address {
    address(i).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_scenarios() {
    let world = World::start().await;
    // First: the only scenario without an allow-list.
    a_device_that_is_no_ulogger_device_is_tried_once(&world).await;
    several_devices_are_pulled_at_once_within_the_cap(&world).await;
    only_devices_on_the_allow_lists_are_connected(&world).await;
    a_failing_device_is_backed_off_and_pulled_once_it_recovers(&world).await;
    a_device_linked_before_the_start_is_pulled_over_that_link(&world).await;
    an_empty_device_is_not_reconnected_within_the_minimum_interval(&world).await;
    assert_eq!(world.bluez.connected_count(), 0, "a link was left up");
}

async fn several_devices_are_pulled_at_once_within_the_cap(world: &World) {
    let mut devices = Vec::new();
    let mut gateway = gateway().max_connections(2);
    for i in 0x10..=0x14u8 {
        devices.push(world.device(i, NAME, Some(log(u32::from(i) + 3))).await);
        gateway = gateway.address(addr(i));
    }
    let mut running = world.run(gateway);
    let mut pulled = std::collections::BTreeSet::new();
    while pulled.len() < 5 {
        let event = running.next().await;
        let report = event.outcome.as_ref().expect("the pull succeeded");
        assert_eq!(report.stored.len(), 1, "{report:?}");
        assert_eq!(
            report.device.serial,
            event.address.to_string().replace(':', "")
        );
        assert!(pulled.insert(event.address), "pulled twice: {event:?}");
    }
    running.stop().await;
    let most = world.bluez.max_concurrent_connections();
    assert!(most <= 2, "{most} links at once, over the cap of 2");
    assert_eq!(most, 2, "the pulls never overlapped");
    for (handle, firmware) in &devices {
        assert_eq!(firmware.device().erasures().count(), 1);
        assert!(!handle.is_connected(), "a link was left up");
    }
    assert_eq!(world.bluez.connected_count(), 0);
}

async fn only_devices_on_the_allow_lists_are_connected(world: &World) {
    let (by_name, _) = world.device(0x20, "uLogger Gate", Some(log(5))).await;
    let (stranger, _) = world.device(0x21, "Someone's phone", Some(log(6))).await;
    let (by_address, _) = world.device(0x22, "Renamed logger", Some(log(7))).await;
    let (near_name, _) = world.device(0x23, "uLogger Gate 2", Some(log(8))).await;
    let mut running = world.run(gateway().name("uLogger Gate").address(addr(0x22)));
    let mut pulled = Vec::new();
    for _ in 0..2 {
        let event = running.next().await;
        assert!(event.outcome.is_ok(), "{event:?}");
        pulled.push(event.address);
    }
    pulled.sort();
    assert_eq!(pulled, [addr(0x20), addr(0x22)]);
    running.stop().await;
    assert_eq!((by_name.connects(), by_address.connects()), (1, 1));
    assert_eq!(
        stranger.connect_attempts(),
        0,
        "a device off the lists was connected"
    );
    assert_eq!(near_name.connect_attempts(), 0, "names must match exactly");
}

async fn a_failing_device_is_backed_off_and_pulled_once_it_recovers(world: &World) {
    let (handle, firmware) = world.device(0x30, NAME, Some(log(9))).await;
    handle.set_fail_connects(true);
    let mut running = world.run(gateway().address(addr(0x30)));
    for failures in 1..=3u32 {
        let event = running.next().await;
        assert!(event.outcome.is_err(), "{event:?}");
        assert_eq!(event.failures, failures);
        // Drawn in the upper half of 100 ms doubled per failure, at most 400 ms.
        let full =
            Duration::from_millis(100 * (1 << (failures - 1))).min(Duration::from_millis(400));
        assert!(
            event.next_try_in >= full / 2 && event.next_try_in <= full,
            "failure {failures}: next try in {:?}",
            event.next_try_in
        );
    }
    assert_eq!(
        handle.connect_attempts(),
        3,
        "tried again before its backoff"
    );
    handle.set_fail_connects(false);
    let event = loop {
        let event = running.next().await;
        if event.outcome.is_ok() {
            break event;
        }
    };
    assert_eq!(event.failures, 0);
    assert_eq!(event.outcome.unwrap().stored.len(), 1);
    running.stop().await;
    assert_eq!(firmware.device().erasures().count(), 1);
}

async fn a_device_linked_before_the_start_is_pulled_over_that_link(world: &World) {
    let (handle, firmware) = world.device(0x40, NAME, Some(log(11))).await;
    // A gateway that was killed mid-pull: its link outlives it, and the
    // device no longer advertises.
    {
        let conn = bus_client(world.bus.address()).await;
        let adapter = proxy(&conn, "/org/bluez/hci0", "org.bluez.Adapter1").await;
        adapter
            .call::<_, _, ()>("StartDiscovery", &())
            .await
            .unwrap();
        let device = proxy(&conn, handle.path(), "org.bluez.Device1").await;
        timeout(STEP, device.call::<_, _, ()>("Connect", &()))
            .await
            .unwrap()
            .unwrap();
    }
    assert!(handle.is_connected());
    let mut running = world.run(gateway().address(addr(0x40)));
    let event = running.next().await;
    assert_eq!(event.address, addr(0x40));
    assert_eq!(event.outcome.as_ref().unwrap().stored.len(), 1, "{event:?}");
    running.stop().await;
    assert_eq!(handle.connects(), 1, "pulled over the link it had");
    assert!(!handle.is_connected());
    assert_eq!(firmware.device().erasures().count(), 1);
}

async fn an_empty_device_is_not_reconnected_within_the_minimum_interval(world: &World) {
    let (handle, _) = world.device(0x50, NAME, None).await;
    let interval = Duration::from_secs(2);
    let mut running = world.run(gateway().address(addr(0x50)).min_interval(interval));
    let first = running.next().await;
    let first_at = Instant::now();
    assert!(
        first.outcome.as_ref().unwrap().stored.is_empty(),
        "{first:?}"
    );
    assert_eq!(first.next_try_in, interval);
    let second = running.next().await;
    assert!(second.outcome.is_ok(), "{second:?}");
    assert!(
        first_at.elapsed() >= interval,
        "pulled again {:?} after an empty pull",
        first_at.elapsed()
    );
    running.stop().await;
    assert_eq!(handle.connects(), 2);
}

async fn a_device_that_is_no_ulogger_device_is_tried_once(world: &World) {
    let phone = world
        .bluez
        .add_device(
            SimulatedDevice::new(
                address(0x90),
                "Someone's phone",
                Box::new(Firmware::new(SimDevice::new(Vec::new(), Vec::new(), None))),
            )
            .without_ulogger_service(),
        )
        .await
        .unwrap();
    let (logger, _) = world.device(0x91, NAME, None).await;
    let mut running = world.run(gateway().min_interval(Duration::from_millis(200)));
    let mut refused = 0;
    let mut pulls = 0;
    // The logger is pulled again and again meanwhile: the gateway rescans.
    while pulls < 4 {
        let event = running.next().await;
        if event.address == addr(0x90) {
            assert!(event.is_not_ulogger(), "{event:?}");
            assert!(event.next_try_in >= Duration::from_secs(3600));
            refused += 1;
        } else {
            assert!(event.outcome.is_ok(), "{event:?}");
            pulls += 1;
        }
    }
    running.stop().await;
    assert_eq!(refused, 1);
    assert_eq!(phone.connect_attempts(), 1, "tried again");
    assert!(!phone.is_connected(), "its link was left up");
    assert!(logger.connects() >= 4);
}
