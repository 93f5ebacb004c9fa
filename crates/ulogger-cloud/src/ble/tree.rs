//! A device's GATT table, read from BlueZ's object tree in one call.
//!
//! bluer finds a device's services with a `GetManagedObjects` call and
//! then asks each service for its UUID, and the service's characteristics
//! with another `GetManagedObjects` and a call per characteristic. Each
//! `GetManagedObjects` answers with *every* object bluetoothd has (every
//! device it knows, with all their properties), which bluer turns into
//! nested hash maps: with 20 devices known, resolving one device's service
//! parsed the whole tree three times and cost more CPU than moving its
//! 1,024 chunks (`docs/benchmarks.md`, BLE gateway).
//!
//! Here the reply is read once, in place: objects outside the device are
//! skipped without being decoded, and of the device's GATT objects only
//! the path and the `UUID` property are read. bluer's handles are then
//! built from the ids in the paths, which costs no call.

use std::sync::Arc;
use std::time::Duration;

use bluer::Address;
use dbus::arg::{ArgType, Iter, ReadAll, TypeMismatchError};
use dbus::nonblock::{Proxy, SyncConnection};

use crate::error::{Error, ErrorKind};

/// BlueZ's service name on the bus.
const BLUEZ: &str = "org.bluez";
const SERVICE_IFACE: &str = "org.bluez.GattService1";
const CHARACTERISTIC_IFACE: &str = "org.bluez.GattCharacteristic1";

/// A second connection to the system bus, for the one call bluer does
/// not offer in a cheap form.
#[derive(Clone)]
pub(super) struct ObjectTree {
    connection: Arc<SyncConnection>,
}

impl ObjectTree {
    /// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set), as
    /// bluer does.
    pub(super) async fn connect() -> Result<ObjectTree, Error> {
        let step = "connecting to bluetoothd over D-Bus";
        let connected = tokio::task::spawn_blocking(dbus_tokio::connection::new_system_sync)
            .await
            .map_err(|e| failed(step, e.to_string()))?;
        let (resource, connection) = connected.map_err(|e| dbus_failed(step, e))?;
        // Ends (with an error nobody reads) when the connection is lost;
        // calls then fail, and that is what gets reported.
        tokio::spawn(async move {
            let _lost = resource.await;
        });
        Ok(ObjectTree { connection })
    }

    /// The GATT services and characteristics BlueZ lists for `address`
    /// on `adapter`.
    pub(super) async fn gatt(
        &self,
        adapter: &str,
        address: Address,
        timeout: Duration,
    ) -> Result<GattTable, Error> {
        let proxy = Proxy::new(BLUEZ, "/", timeout, self.connection.clone());
        let objects: Objects = proxy
            .method_call(
                "org.freedesktop.DBus.ObjectManager",
                "GetManagedObjects",
                (),
            )
            .await
            .map_err(|e| dbus_failed("listing the device's GATT services", e))?;
        Ok(objects.table(&device_path(adapter, address)))
    }
}

/// bluetoothd's object path for a device.
fn device_path(adapter: &str, address: Address) -> String {
    format!(
        "/org/bluez/{adapter}/dev_{}",
        address.to_string().replace(':', "_")
    )
}

/// What `GetManagedObjects` said about GATT objects, every device's.
struct Objects(Vec<GattObject>);

/// A GATT service or characteristic: its path and UUID.
struct GattObject {
    path: String,
    uuid: bluer::Uuid,
}

impl ReadAll for Objects {
    fn read(i: &mut Iter) -> Result<Self, TypeMismatchError> {
        // a{oa{sa{sv}}}: anything of another shape is simply not read
        // (a malformed reply finds no service, which is reported as such).
        let mut found = Vec::new();
        if let Some(mut objects) = i.recurse(ArgType::Array) {
            while objects.arg_type() == ArgType::DictEntry {
                if let Some(mut entry) = objects.recurse(ArgType::DictEntry) {
                    read_object(&mut entry, &mut found);
                }
                objects.next();
            }
        }
        Ok(Objects(found))
    }
}

/// One `{o: a{sa{sv}}}` entry: kept if it is a GATT service or
/// characteristic with a UUID.
fn read_object(entry: &mut Iter, found: &mut Vec<GattObject>) {
    let Some(path) = entry.get::<dbus::Path>() else {
        return;
    };
    // Only GATT objects have such a path; a device's, an adapter's, a
    // descriptor's (…/charNNNN/descNNNN) are not decoded further.
    let last = path.rsplit('/').next().unwrap_or_default();
    if !(last.starts_with("service") || last.starts_with("char")) {
        return;
    }
    entry.next();
    let Some(mut interfaces) = entry.recurse(ArgType::Array) else {
        return;
    };
    while interfaces.arg_type() == ArgType::DictEntry {
        if let Some(mut interface) = interfaces.recurse(ArgType::DictEntry) {
            let name = interface.get::<&str>();
            if matches!(name, Some(SERVICE_IFACE | CHARACTERISTIC_IFACE)) {
                interface.next();
                if let Some(uuid) = uuid_property(&mut interface) {
                    found.push(GattObject {
                        path: path.to_string(),
                        uuid,
                    });
                }
            }
        }
        interfaces.next();
    }
}

/// The `UUID` entry of an `a{sv}` property map.
fn uuid_property(interface: &mut Iter) -> Option<bluer::Uuid> {
    let mut properties = interface.recurse(ArgType::Array)?;
    while properties.arg_type() == ArgType::DictEntry {
        if let Some(mut property) = properties.recurse(ArgType::DictEntry) {
            if property.get::<&str>() == Some("UUID") {
                property.next();
                let mut value = property.recurse(ArgType::Variant)?;
                return value.get::<&str>()?.parse().ok();
            }
        }
        properties.next();
    }
    None
}

impl Objects {
    /// The device's share of the tree.
    fn table(self, device: &str) -> GattTable {
        let mut table = GattTable::default();
        for object in self.0 {
            let Some(rest) = object.path.strip_prefix(device) else {
                continue;
            };
            let mut parts = rest.split('/');
            // "", "serviceNNNN", then "charNNNN" for a characteristic.
            let (Some(""), Some(service), char, None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Some(service) = hex_id(service, "service") else {
                continue;
            };
            match char.map(|c| hex_id(c, "char")) {
                None => table.services.push((service, object.uuid)),
                Some(Some(char)) => table.characteristics.push((service, char, object.uuid)),
                Some(None) => {}
            }
        }
        table
    }
}

/// `serviceNNNN`'s NNNN (hexadecimal, as BlueZ names them).
fn hex_id(part: &str, prefix: &str) -> Option<u16> {
    u16::from_str_radix(part.strip_prefix(prefix)?, 16).ok()
}

/// One device's services and characteristics, by BlueZ's ids.
#[derive(Debug, Default, PartialEq)]
pub(super) struct GattTable {
    /// (service id, UUID)
    pub(super) services: Vec<(u16, bluer::Uuid)>,
    /// (service id, characteristic id, UUID)
    pub(super) characteristics: Vec<(u16, u16, bluer::Uuid)>,
}

impl GattTable {
    /// The id of the first service with this UUID.
    pub(super) fn service(&self, uuid: bluer::Uuid) -> Option<u16> {
        self.services
            .iter()
            .find(|(_, u)| *u == uuid)
            .map(|(id, _)| *id)
    }

    /// The service's characteristics: (id, UUID).
    pub(super) fn characteristics_of(
        &self,
        service: u16,
    ) -> impl Iterator<Item = (u16, bluer::Uuid)> + '_ {
        self.characteristics
            .iter()
            .filter(move |(s, _, _)| *s == service)
            .map(|(_, id, uuid)| (*id, *uuid))
    }
}

fn failed(step: &'static str, reason: String) -> Error {
    ErrorKind::Ble { step, reason }.into()
}

fn dbus_failed(step: &'static str, e: dbus::Error) -> Error {
    let reason = e.message().unwrap_or("D-Bus call failed").to_owned();
    Error::with_source(ErrorKind::Ble { step, reason }, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(path: &str, uuid: &str) -> GattObject {
        GattObject {
            path: path.into(),
            uuid: uuid.parse().expect("test UUID"),
        }
    }

    const A: &str = "0000aaaa-0000-1000-8000-00805f9b34fb";
    const B: &str = "0000bbbb-0000-1000-8000-00805f9b34fb";

    #[test]
    fn a_device_s_objects_are_sorted_into_services_and_characteristics() {
        let dev = "/org/bluez/hci0/dev_C0_DE_00_00_00_01";
        let objects = Objects(vec![
            object(&format!("{dev}/service000a"), A),
            object(&format!("{dev}/service000a/char000b"), B),
            object(&format!("{dev}/service0010"), B),
            // Another device whose address starts the same way.
            object("/org/bluez/hci0/dev_C0_DE_00_00_00_012/service000a", A),
            object("/org/bluez/hci0/dev_C0_DE_00_00_00_02/service000a", A),
            // Not hexadecimal, or too deep: not a service nor a characteristic.
            object(&format!("{dev}/servicezz"), A),
            object(&format!("{dev}/service000a/char000b/desc000c"), A),
        ]);
        let table = objects.table(dev);
        let (a, b) = (A.parse().expect("A"), B.parse().expect("B"));
        assert_eq!(table.services, vec![(0x0a, a), (0x10, b)]);
        assert_eq!(table.characteristics, vec![(0x0a, 0x0b, b)]);
        assert_eq!(table.service(b), Some(0x10));
        assert_eq!(
            table.characteristics_of(0x0a).collect::<Vec<_>>(),
            vec![(0x0b, b)]
        );
        assert!(table.characteristics_of(0x10).next().is_none());
    }

    /// The reply as bluetoothd sends it, read by [`Objects::read`].
    #[test]
    fn a_get_managed_objects_reply_is_read_in_place() {
        use std::collections::HashMap;

        use dbus::arg::{PropMap, RefArg, Variant};

        let prop = |value: Box<dyn RefArg>| Variant(value);
        let gatt = |iface: &str, uuid: &str| {
            let mut props = PropMap::new();
            props.insert("Primary".into(), prop(Box::new(true)));
            props.insert("UUID".into(), prop(Box::new(uuid.to_owned())));
            props.insert("Handle".into(), prop(Box::new(10u16)));
            HashMap::from([(iface.to_owned(), props)])
        };
        let dev = "/org/bluez/hci0/dev_C0_DE_00_00_00_01";
        let mut device = PropMap::new();
        device.insert(
            "Address".into(),
            prop(Box::new("C0:DE:00:00:00:01".to_owned())),
        );
        device.insert("UUIDs".into(), prop(Box::new(vec![A.to_owned()])));
        let tree: HashMap<dbus::Path<'static>, HashMap<String, PropMap>> = HashMap::from([
            (dbus::Path::from("/org/bluez/hci0"), HashMap::new()),
            (
                dbus::Path::from(dev),
                HashMap::from([("org.bluez.Device1".to_owned(), device)]),
            ),
            (
                dbus::Path::from(format!("{dev}/service000a")),
                gatt(SERVICE_IFACE, A),
            ),
            (
                dbus::Path::from(format!("{dev}/service000a/char000b")),
                gatt(CHARACTERISTIC_IFACE, B),
            ),
            // A descriptor, and a characteristic without a UUID: neither kept.
            (
                dbus::Path::from(format!("{dev}/service000a/char000b/desc000d")),
                gatt("org.bluez.GattDescriptor1", A),
            ),
            (
                dbus::Path::from(format!("{dev}/service000a/char000e")),
                HashMap::from([(CHARACTERISTIC_IFACE.to_owned(), PropMap::new())]),
            ),
        ]);
        let reply = dbus::Message::new_signal("/", "org.example", "Reply")
            .expect("message")
            .append1(tree);
        let objects = Objects::read(&mut reply.iter_init()).expect("read");
        let table = objects.table(dev);
        let (a, b) = (A.parse().expect("A"), B.parse().expect("B"));
        assert_eq!(table.services, vec![(0x0a, a)]);
        assert_eq!(table.characteristics, vec![(0x0a, 0x0b, b)]);

        // Another shape altogether: nothing found, no error.
        let odd = dbus::Message::new_signal("/", "org.example", "Reply")
            .expect("message")
            .append1(7u32);
        assert!(Objects::read(&mut odd.iter_init())
            .expect("read")
            .0
            .is_empty());
    }

    #[test]
    fn the_device_path_is_bluez_s() {
        let address: Address = "C0:DE:00:00:00:0A".parse().expect("address");
        assert_eq!(
            device_path("hci1", address),
            "/org/bluez/hci1/dev_C0_DE_00_00_00_0A"
        );
    }
}
