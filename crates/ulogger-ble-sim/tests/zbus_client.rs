//! A D-Bus client (zbus proxies, as a BlueZ client sees the bus) drives the
//! fake BlueZ through a whole pull: discover, connect, resolve, read the
//! config, subscribe, ack, receive, disconnect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio::time::timeout;
use ulogger_ble_sim::{Characteristic, FakeBluez, PrivateBus, SimulatedDevice, SERVICE_UUID};
use zbus::Variant;

const ADAPTER: &str = "org.bluez.Adapter1";
const DEVICE_IFACE: &str = "org.bluez.Device1";
const CHAR: &str = "org.bluez.GattCharacteristic1";

fn data() -> Vec<u8> {
    (0..100u8).collect()
}

fn command() -> Options {
    HashMap::from([("type", Variant::from("command"))])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pulls_a_log_through_the_fake_bluez() {
    let bus = PrivateBus::start().unwrap();
    let bluez = timeout(STEP, FakeBluez::start(bus.address()))
        .await
        .unwrap()
        .unwrap();
    let (behaviour, record) = ChunkSender::new(data(), config_value());
    let device = bluez
        .add_device(SimulatedDevice::new(DEVICE, NAME, Box::new(behaviour)))
        .await
        .unwrap();
    assert_eq!(device.path(), DEVICE_PATH);

    let conn = client(bus.address()).await;
    let om = object_manager(&conn).await;

    // Before discovery: the adapter, powered, and no device.
    let objects = om.get_managed_objects().await.unwrap();
    let hci0 = objects
        .iter()
        .find(|(p, _)| p.as_str() == "/org/bluez/hci0")
        .expect("adapter exported");
    assert!(hci0.1.keys().any(|i| i.as_str() == ADAPTER));
    assert!(!objects.keys().any(|p| p.as_str() == DEVICE_PATH));
    assert!(bool::try_from(get(&conn, "/org/bluez/hci0", ADAPTER, "Powered").await).unwrap());

    // Discovery finds the device by name; it advertises no service UUID.
    let mut added = om.receive_interfaces_added().await.unwrap();
    let adapter = proxy(&conn, "/org/bluez/hci0", ADAPTER).await;
    let filter: HashMap<&str, Variant<'_>> = HashMap::from([("Transport", Variant::from("le"))]);
    adapter
        .call::<_, _, ()>("SetDiscoveryFilter", &(filter,))
        .await
        .unwrap();
    adapter
        .call::<_, _, ()>("StartDiscovery", &())
        .await
        .unwrap();
    let found = timeout(STEP, async {
        while let Some(signal) = added.next().await {
            let args = signal.args().unwrap();
            if let Some(props) = args.interfaces_and_properties().get(DEVICE_IFACE) {
                let name = String::try_from(props["Name"].try_clone().unwrap()).unwrap();
                if name == NAME {
                    let uuids =
                        Vec::<String>::try_from(props["UUIDs"].try_clone().unwrap()).unwrap();
                    assert!(uuids.is_empty(), "advertised UUIDs: {uuids:?}");
                    return args.object_path().to_string();
                }
            }
        }
        panic!("InterfacesAdded stream ended");
    })
    .await
    .expect("device not discovered");
    assert_eq!(found, DEVICE_PATH);
    assert!(bool::try_from(get(&conn, "/org/bluez/hci0", ADAPTER, "Discovering").await).unwrap());
    adapter
        .call::<_, _, ()>("StopDiscovery", &())
        .await
        .unwrap();

    // Connect: the reply comes once services are resolved, and the GATT
    // objects are there with the uLogger UUIDs and properties.
    let dev = proxy(&conn, DEVICE_PATH, DEVICE_IFACE).await;
    timeout(STEP, dev.call::<_, _, ()>("Connect", &()))
        .await
        .unwrap()
        .unwrap();
    assert!(bool::try_from(get(&conn, DEVICE_PATH, DEVICE_IFACE, "Connected").await).unwrap());
    assert!(
        bool::try_from(get(&conn, DEVICE_PATH, DEVICE_IFACE, "ServicesResolved").await).unwrap()
    );
    let objects = om.get_managed_objects().await.unwrap();
    let service = objects
        .iter()
        .find(|(_, ifaces)| {
            ifaces.get("org.bluez.GattService1").is_some_and(|p| {
                String::try_from(p["UUID"].try_clone().unwrap()).unwrap() == SERVICE_UUID
            })
        })
        .expect("uLogger service exported");
    assert!(service.0.as_str().starts_with(DEVICE_PATH));
    for ch in Characteristic::ALL {
        let path = device.characteristic_path(ch);
        let props = objects
            .iter()
            .find(|(p, _)| p.as_str() == path)
            .and_then(|(_, i)| i.get(CHAR))
            .unwrap_or_else(|| panic!("{ch:?} not at {path}"));
        assert_eq!(
            String::try_from(props["UUID"].try_clone().unwrap()).unwrap(),
            ch.uuid()
        );
        let flags = Vec::<String>::try_from(props["Flags"].try_clone().unwrap()).unwrap();
        assert_eq!(flags, ch.flags());
        let svc = zbus::OwnedObjectPath::try_from(props["Service"].try_clone().unwrap()).unwrap();
        assert_eq!(&svc, service.0);
        // Notifying characteristics carry their CCC descriptor, as in BlueZ.
        let descriptors: Vec<_> = objects
            .iter()
            .filter_map(|(p, i)| Some((p, i.get("org.bluez.GattDescriptor1")?)))
            .filter(|(_, d)| {
                zbus::OwnedObjectPath::try_from(d["Characteristic"].try_clone().unwrap())
                    .unwrap()
                    .as_str()
                    == path
            })
            .collect();
        assert_eq!(
            descriptors.len(),
            usize::from(ch.flags().contains(&"notify"))
        );
        for (_, d) in descriptors {
            assert_eq!(
                String::try_from(d["UUID"].try_clone().unwrap()).unwrap(),
                "00002902-0000-1000-8000-00805f9b34fb"
            );
        }
    }

    // Read config.
    let config = proxy(
        &conn,
        &device.characteristic_path(Characteristic::Config),
        CHAR,
    )
    .await;
    let value: Vec<u8> = config.call("ReadValue", &(Options::new(),)).await.unwrap();
    assert_eq!(value, config_value());

    // Subscribe to log_data (the match rule is in place before StartNotify).
    let log_data_path = device.characteristic_path(Characteristic::LogData);
    let log_data_props = properties(&conn, &log_data_path).await;
    let mut changes = log_data_props.receive_properties_changed().await.unwrap();
    let log_data = proxy(&conn, &log_data_path, CHAR).await;
    log_data.call::<_, _, ()>("StartNotify", &()).await.unwrap();

    // Ack 0 without response: every chunk arrives as a PropertiesChanged
    // on Value, in order.
    let log_ack = proxy(
        &conn,
        &device.characteristic_path(Characteristic::LogAck),
        CHAR,
    )
    .await;
    log_ack
        .call::<_, _, ()>("WriteValue", &(vec![0u8, 0], command()))
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut offsets = Vec::new();
    timeout(STEP, async {
        while received.len() < data().len() {
            let signal = changes.next().await.expect("signal stream ended");
            let args = signal.args().unwrap();
            if args.interface_name().as_str() != CHAR {
                continue;
            }
            let Some(value) = args.changed_properties().get("Value") else {
                continue;
            };
            let chunk = Vec::<u8>::try_from(value.try_clone().unwrap()).unwrap();
            let offset = u16::from_le_bytes([chunk[0], chunk[1]]);
            let total = u16::from_le_bytes([chunk[2], chunk[3]]);
            assert_eq!(usize::from(total), data().len());
            assert!(chunk.len() <= 20);
            offsets.push(offset);
            received.extend_from_slice(&chunk[4..]);
        }
    })
    .await
    .expect("chunks did not all arrive");
    assert_eq!(received, data());
    assert_eq!(offsets, (0..100).step_by(16).collect::<Vec<u16>>());

    // A re-ack retransmits that one chunk; the final ack erases.
    log_ack
        .call::<_, _, ()>("WriteValue", &(vec![32u8, 0], command()))
        .await
        .unwrap();
    let again = timeout(STEP, async {
        loop {
            let signal = changes.next().await.unwrap();
            if let Some(v) = signal.args().unwrap().changed_properties().get("Value") {
                return Vec::<u8>::try_from(v.try_clone().unwrap()).unwrap();
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&again[..4], &[32, 0, 100, 0]);
    // A write with response (the default type) is accepted too.
    log_ack
        .call::<_, _, ()>("WriteValue", &(vec![100u8, 0], Options::new()))
        .await
        .unwrap();
    {
        let record = record.lock().unwrap();
        assert_eq!(record.acks, vec![0, 32, 100]);
        assert!(record.erased);
    }

    // BlueZ's refusals: no read on a notify-only characteristic, no
    // notifications on a write-only one.
    let err = log_data
        .call::<_, _, Vec<u8>>("ReadValue", &(Options::new(),))
        .await
        .unwrap_err();
    assert_eq!(method_error(&err).0, "org.bluez.Error.NotPermitted");
    let err = log_ack
        .call::<_, _, ()>("StartNotify", &())
        .await
        .unwrap_err();
    assert_eq!(method_error(&err).0, "org.bluez.Error.NotSupported");

    // Disconnect: ServicesResolved then Connected go false, the GATT
    // objects stay cached, and calls on them fail with "Not connected".
    let dev_props = properties(&conn, DEVICE_PATH).await;
    let mut dev_changes = dev_props.receive_properties_changed().await.unwrap();
    dev.call::<_, _, ()>("Disconnect", &()).await.unwrap();
    let order = timeout(STEP, async {
        let mut order = Vec::new();
        while order.len() < 2 {
            let signal = dev_changes.next().await.unwrap();
            for (name, value) in signal.args().unwrap().changed_properties() {
                if ["Connected", "ServicesResolved"].contains(name) {
                    assert!(!bool::try_from(value.try_clone().unwrap()).unwrap());
                    order.push(name.to_string());
                }
            }
        }
        order
    })
    .await
    .unwrap();
    assert_eq!(order, ["ServicesResolved", "Connected"]);
    assert!(!device.is_connected());
    let objects = om.get_managed_objects().await.unwrap();
    assert!(objects.keys().any(|p| p.as_str() == log_data_path));
    let err = config
        .call::<_, _, Vec<u8>>("ReadValue", &(Options::new(),))
        .await
        .unwrap_err();
    assert_eq!(
        method_error(&err),
        (
            "org.bluez.Error.Failed".to_owned(),
            "Not connected".to_owned()
        )
    );
    let err = log_ack
        .call::<_, _, ()>("WriteValue", &(vec![0u8, 0], command()))
        .await
        .unwrap_err();
    assert_eq!(method_error(&err).1, "Not connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_starts_by_itself_and_faults_apply() {
    let bus = PrivateBus::start().unwrap();
    let bluez = FakeBluez::start(bus.address()).await.unwrap();
    let (mut behaviour, _record) = ChunkSender::new(data(), config_value());
    behaviour.auto_start = Some(Duration::from_millis(200));
    let device = bluez
        .add_device(SimulatedDevice::new(DEVICE, NAME, Box::new(behaviour)))
        .await
        .unwrap();
    let conn = client(bus.address()).await;

    // Not discovered yet: the device object does not exist.
    let dev = proxy(&conn, DEVICE_PATH, DEVICE_IFACE).await;
    let err = dev.call::<_, _, ()>("Connect", &()).await.unwrap_err();
    assert_eq!(
        method_error(&err).0,
        "org.freedesktop.DBus.Error.UnknownObject"
    );

    // A UUID filter hides it (it advertises none), as with real BlueZ.
    let adapter = proxy(&conn, "/org/bluez/hci0", ADAPTER).await;
    let filter = HashMap::from([("UUIDs", Variant::from(vec![SERVICE_UUID]))]);
    adapter
        .call::<_, _, ()>("SetDiscoveryFilter", &(filter,))
        .await
        .unwrap();
    adapter
        .call::<_, _, ()>("StartDiscovery", &())
        .await
        .unwrap();
    let om = object_manager(&conn).await;
    let objects = om.get_managed_objects().await.unwrap();
    assert!(!objects.keys().any(|p| p.as_str() == DEVICE_PATH));
    adapter
        .call::<_, _, ()>("StopDiscovery", &())
        .await
        .unwrap();
    let err = adapter
        .call::<_, _, ()>("StopDiscovery", &())
        .await
        .unwrap_err();
    assert_eq!(
        method_error(&err),
        (
            "org.bluez.Error.Failed".to_owned(),
            "No discovery started".to_owned()
        )
    );
    adapter
        .call::<_, _, ()>(
            "SetDiscoveryFilter",
            &(HashMap::<&str, Variant<'_>>::new(),),
        )
        .await
        .unwrap();
    adapter
        .call::<_, _, ()>("StartDiscovery", &())
        .await
        .unwrap();
    let objects = om.get_managed_objects().await.unwrap();
    assert!(objects.keys().any(|p| p.as_str() == DEVICE_PATH));

    // A failing connect is BlueZ's Failed; then it works.
    device.set_fail_connects(true);
    let err = dev.call::<_, _, ()>("Connect", &()).await.unwrap_err();
    assert_eq!(method_error(&err).0, "org.bluez.Error.Failed");
    device.set_fail_connects(false);

    let log_data_path = device.characteristic_path(Characteristic::LogData);
    let props = properties(&conn, &log_data_path).await;
    let mut changes = props.receive_properties_changed().await.unwrap();
    dev.call::<_, _, ()>("Connect", &()).await.unwrap();
    let log_data = proxy(&conn, &log_data_path, CHAR).await;
    log_data.call::<_, _, ()>("StartNotify", &()).await.unwrap();
    let err = log_data
        .call::<_, _, ()>("StartNotify", &())
        .await
        .unwrap_err();
    assert_eq!(method_error(&err).0, "org.bluez.Error.InProgress");

    // The device's own timer sends chunk 0 (tick at next_deadline).
    let first = timeout(STEP, async {
        loop {
            let signal = changes.next().await.unwrap();
            if let Some(v) = signal.args().unwrap().changed_properties().get("Value") {
                return Vec::<u8>::try_from(v.try_clone().unwrap()).unwrap();
            }
        }
    })
    .await
    .expect("no chunk from the device's timer");
    assert_eq!(&first[..4], &[0, 0, 100, 0]);

    // A dropped notification never arrives; the next one does.
    device.drop_notifications(1);
    let log_ack = proxy(
        &conn,
        &device.characteristic_path(Characteristic::LogAck),
        CHAR,
    )
    .await;
    log_ack
        .call::<_, _, ()>("WriteValue", &(vec![16u8, 0], command()))
        .await
        .unwrap();
    log_ack
        .call::<_, _, ()>("WriteValue", &(vec![48u8, 0], command()))
        .await
        .unwrap();
    let next = timeout(STEP, async {
        loop {
            let signal = changes.next().await.unwrap();
            if let Some(v) = signal.args().unwrap().changed_properties().get("Value") {
                return Vec::<u8>::try_from(v.try_clone().unwrap()).unwrap();
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&next[..2], &[48, 0]);

    // The link drops from the device's side: the client sees it.
    let dev_props = properties(&conn, DEVICE_PATH).await;
    let mut dev_changes = dev_props.receive_properties_changed().await.unwrap();
    device.drop_link().await.unwrap();
    timeout(STEP, async {
        loop {
            let signal = dev_changes.next().await.unwrap();
            if let Some(v) = signal.args().unwrap().changed_properties().get("Connected") {
                assert!(!bool::try_from(v.try_clone().unwrap()).unwrap());
                return;
            }
        }
    })
    .await
    .unwrap();
    let err = log_ack
        .call::<_, _, ()>("WriteValue", &(vec![0u8, 0], command()))
        .await
        .unwrap_err();
    assert_eq!(
        method_error(&err),
        (
            "org.bluez.Error.Failed".to_owned(),
            "Not connected".to_owned()
        )
    );

    // RemoveDevice takes it off the bus (a running discovery finds it again).
    adapter
        .call::<_, _, ()>("StopDiscovery", &())
        .await
        .unwrap();
    let path = zbus::ObjectPath::try_from(DEVICE_PATH).unwrap();
    adapter
        .call::<_, _, ()>("RemoveDevice", &(path.clone(),))
        .await
        .unwrap();
    let objects = om.get_managed_objects().await.unwrap();
    assert!(!objects.keys().any(|p| p.as_str().starts_with(DEVICE_PATH)));
    let err = adapter
        .call::<_, _, ()>("RemoveDevice", &(path,))
        .await
        .unwrap_err();
    assert_eq!(method_error(&err).0, "org.bluez.Error.DoesNotExist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_clients_sessions_end_but_its_link_stays() {
    let bus = PrivateBus::start().unwrap();
    let bluez = FakeBluez::start(bus.address()).await.unwrap();
    let (behaviour, _record) = ChunkSender::new(data(), config_value());
    let device = bluez
        .add_device(SimulatedDevice::new(DEVICE, NAME, Box::new(behaviour)))
        .await
        .unwrap();
    let log_data_path = device.characteristic_path(Characteristic::LogData);

    // A gateway discovers, connects and subscribes, then dies.
    let gateway = client(bus.address()).await;
    let adapter = proxy(&gateway, "/org/bluez/hci0", ADAPTER).await;
    adapter
        .call::<_, _, ()>("StartDiscovery", &())
        .await
        .unwrap();
    let dev = proxy(&gateway, DEVICE_PATH, DEVICE_IFACE).await;
    dev.call::<_, _, ()>("Connect", &()).await.unwrap();
    let log_data = proxy(&gateway, &log_data_path, CHAR).await;
    log_data.call::<_, _, ()>("StartNotify", &()).await.unwrap();

    let observer = client(bus.address()).await;
    let adapter_props = properties(&observer, "/org/bluez/hci0").await;
    let mut adapter_changes = adapter_props.receive_properties_changed().await.unwrap();
    let char_props = properties(&observer, &log_data_path).await;
    let mut char_changes = char_props.receive_properties_changed().await.unwrap();
    drop((adapter, dev, log_data));
    gateway.graceful_shutdown().await;

    let changed_to_false = |name: &'static str| {
        move |signal: zbus::fdo::PropertiesChanged| {
            let args = signal.args().unwrap();
            args.changed_properties()
                .get(name)
                .map(|v| !bool::try_from(v.try_clone().unwrap()).unwrap())
                .unwrap_or(false)
        }
    };
    timeout(STEP, async {
        while let Some(s) = adapter_changes.next().await {
            if changed_to_false("Discovering")(s) {
                return;
            }
        }
    })
    .await
    .expect("Discovering did not end with its client");
    timeout(STEP, async {
        while let Some(s) = char_changes.next().await {
            if changed_to_false("Notifying")(s) {
                return;
            }
        }
    })
    .await
    .expect("Notifying did not end with its client");
    // The link outlives the client, as with bluetoothd: a restarted gateway
    // finds the device connected.
    assert!(device.is_connected());
    assert!(bool::try_from(get(&observer, DEVICE_PATH, DEVICE_IFACE, "Connected").await).unwrap());
}

/// bluer's `notify_io`/`write_io`: notifications and writes through
/// sockets from AcquireNotify/AcquireWrite, closed with the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquired_sockets_carry_notifications_and_writes() {
    let bus = PrivateBus::start().unwrap();
    let bluez = FakeBluez::start(bus.address()).await.unwrap();
    let (behaviour, record) = ChunkSender::new(data(), config_value());
    let device = bluez
        .add_device(SimulatedDevice::new(DEVICE, NAME, Box::new(behaviour)))
        .await
        .unwrap();
    let conn = client(bus.address()).await;
    let adapter = proxy(&conn, "/org/bluez/hci0", ADAPTER).await;
    adapter
        .call::<_, _, ()>("StartDiscovery", &())
        .await
        .unwrap();
    let dev = proxy(&conn, DEVICE_PATH, DEVICE_IFACE).await;
    dev.call::<_, _, ()>("Connect", &()).await.unwrap();

    let log_data_path = device.characteristic_path(Characteristic::LogData);
    let log_ack_path = device.characteristic_path(Characteristic::LogAck);
    let log_data = proxy(&conn, &log_data_path, CHAR).await;
    let log_ack = proxy(&conn, &log_ack_path, CHAR).await;

    let (notify_fd, mtu): (zbus::OwnedFd, u16) = log_data
        .call("AcquireNotify", &(Options::new(),))
        .await
        .unwrap();
    assert_eq!(mtu, 23);
    assert!(bool::try_from(get(&conn, &log_data_path, CHAR, "NotifyAcquired").await).unwrap());
    let err = log_data
        .call::<_, _, ()>("StartNotify", &())
        .await
        .unwrap_err();
    assert_eq!(method_error(&err).0, "org.bluez.Error.NotPermitted");
    let (write_fd, _): (zbus::OwnedFd, u16) = log_ack
        .call("AcquireWrite", &(Options::new(),))
        .await
        .unwrap();
    let err = log_ack
        .call::<_, _, ()>("WriteValue", &(vec![0u8, 0], command()))
        .await
        .unwrap_err();
    assert_eq!(
        method_error(&err),
        (
            "org.bluez.Error.NotPermitted".to_owned(),
            "Write acquired".to_owned()
        )
    );
    let err = log_data
        .call::<_, _, (zbus::OwnedFd, u16)>("AcquireWrite", &(Options::new(),))
        .await
        .unwrap_err();
    assert_eq!(method_error(&err).0, "org.bluez.Error.NotSupported");

    let socket = |fd: zbus::OwnedFd| {
        let std = std::os::unix::net::UnixDatagram::from(std::os::fd::OwnedFd::from(fd));
        std.set_nonblocking(true).unwrap();
        tokio::net::UnixDatagram::from_std(std).unwrap()
    };
    let notify = socket(notify_fd);
    let write = socket(write_fd);

    // Ack 0 as one datagram; the chunks come back one datagram each.
    write.send(&[0, 0]).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 64];
    while received.len() < data().len() {
        let n = timeout(STEP, notify.recv(&mut buf)).await.unwrap().unwrap();
        assert!((5..=20).contains(&n), "datagram of {n} bytes");
        assert_eq!(
            usize::from(u16::from_le_bytes([buf[0], buf[1]])),
            received.len()
        );
        received.extend_from_slice(&buf[4..n]);
    }
    assert_eq!(received, data());

    // Closing the write socket releases it; WriteValue works again.
    let props = properties(&conn, &log_ack_path).await;
    let mut changes = props.receive_properties_changed().await.unwrap();
    drop(write);
    timeout(STEP, async {
        while let Some(signal) = changes.next().await {
            if let Some(v) = signal
                .args()
                .unwrap()
                .changed_properties()
                .get("WriteAcquired")
            {
                if !bool::try_from(v.try_clone().unwrap()).unwrap() {
                    return;
                }
            }
        }
    })
    .await
    .expect("WriteAcquired did not go false");
    log_ack
        .call::<_, _, ()>("WriteValue", &(vec![100u8, 0], command()))
        .await
        .unwrap();
    assert_eq!(record.lock().unwrap().acks, vec![0, 100]);

    // The link goes: the notify socket reads end-of-file.
    dev.call::<_, _, ()>("Disconnect", &()).await.unwrap();
    let n = timeout(STEP, notify.recv(&mut buf)).await.unwrap().unwrap();
    assert_eq!(n, 0, "expected end-of-file on the acquired socket");
    assert!(!bool::try_from(get(&conn, &log_data_path, CHAR, "NotifyAcquired").await).unwrap());
}

/// Out of range: the link drops, connects fail, and the device expires
/// from the bus once it has not been seen for the temporary timeout;
/// back in range, a discovery finds it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_out_of_range_expire() {
    let bus = PrivateBus::start().unwrap();
    let bluez = FakeBluez::start(bus.address()).await.unwrap();
    bluez.set_temporary_timeout(Duration::from_millis(300));
    let (behaviour, _record) = ChunkSender::new(data(), config_value());
    let device = bluez
        .add_device(
            SimulatedDevice::new(DEVICE, NAME, Box::new(behaviour))
                .advertising_interval(Duration::from_millis(20)),
        )
        .await
        .unwrap();
    let conn = client(bus.address()).await;
    let om = object_manager(&conn).await;
    let mut removed = om.receive_interfaces_removed().await.unwrap();
    let adapter = proxy(&conn, "/org/bluez/hci0", ADAPTER).await;
    adapter
        .call::<_, _, ()>("StartDiscovery", &())
        .await
        .unwrap();
    let dev = proxy(&conn, DEVICE_PATH, DEVICE_IFACE).await;
    dev.call::<_, _, ()>("Connect", &()).await.unwrap();

    // Out of range while connected: the link drops, and with discovery
    // stopped nothing sees the device any more.
    adapter
        .call::<_, _, ()>("StopDiscovery", &())
        .await
        .unwrap();
    device.set_in_range(false).await.unwrap();
    assert!(!device.is_connected());
    let err = dev.call::<_, _, ()>("Connect", &()).await.unwrap_err();
    assert_eq!(method_error(&err).0, "org.bluez.Error.Failed");

    let gone = timeout(STEP, async {
        while let Some(signal) = removed.next().await {
            let args = signal.args().unwrap();
            if args.object_path().as_str() == DEVICE_PATH
                && args.interfaces().iter().any(|i| i.as_str() == DEVICE_IFACE)
            {
                return;
            }
        }
    })
    .await;
    assert!(gone.is_ok(), "the device did not expire");
    let objects = om.get_managed_objects().await.unwrap();
    assert!(!objects.keys().any(|p| p.as_str().starts_with(DEVICE_PATH)));

    device.set_in_range(true).await.unwrap();
    adapter
        .call::<_, _, ()>("StartDiscovery", &())
        .await
        .unwrap();
    // A discovery exports what is in range before it replies.
    let objects = om.get_managed_objects().await.unwrap();
    assert!(objects.keys().any(|p| p.as_str() == DEVICE_PATH));
}

/// Powering the adapter off drops links and discovery; nothing starts
/// again until it is powered on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn powering_off_drops_links_and_discovery() {
    let bus = PrivateBus::start().unwrap();
    let bluez = FakeBluez::start(bus.address()).await.unwrap();
    let (behaviour, _record) = ChunkSender::new(data(), config_value());
    let device = bluez
        .add_device(SimulatedDevice::new(DEVICE, NAME, Box::new(behaviour)))
        .await
        .unwrap();
    let conn = client(bus.address()).await;
    let adapter = proxy(&conn, "/org/bluez/hci0", ADAPTER).await;
    adapter
        .call::<_, _, ()>("StartDiscovery", &())
        .await
        .unwrap();
    let dev = proxy(&conn, DEVICE_PATH, DEVICE_IFACE).await;
    dev.call::<_, _, ()>("Connect", &()).await.unwrap();

    let adapter_props = properties(&conn, "/org/bluez/hci0").await;
    let mut changes = adapter_props.receive_properties_changed().await.unwrap();
    let powered = |on: bool| {
        let props = &adapter_props;
        async move {
            props
                .set(
                    zbus::names::InterfaceName::from_static_str_unchecked(ADAPTER),
                    "Powered",
                    &Variant::from(on),
                )
                .await
                .unwrap()
        }
    };
    powered(false).await;
    timeout(STEP, async {
        while let Some(signal) = changes.next().await {
            if let Some(v) = signal
                .args()
                .unwrap()
                .changed_properties()
                .get("Discovering")
            {
                assert!(!bool::try_from(v.try_clone().unwrap()).unwrap());
                return;
            }
        }
    })
    .await
    .expect("Discovering did not go false");
    assert!(!device.is_connected());
    assert!(!bool::try_from(get(&conn, "/org/bluez/hci0", ADAPTER, "Powered").await).unwrap());
    let err = dev.call::<_, _, ()>("Connect", &()).await.unwrap_err();
    assert_eq!(method_error(&err).0, "org.bluez.Error.NotReady");
    let err = adapter
        .call::<_, _, ()>("StartDiscovery", &())
        .await
        .unwrap_err();
    assert_eq!(method_error(&err).0, "org.bluez.Error.NotReady");

    powered(true).await;
    adapter
        .call::<_, _, ()>("StartDiscovery", &())
        .await
        .unwrap();
    dev.call::<_, _, ()>("Connect", &()).await.unwrap();
    assert!(device.is_connected());
}
