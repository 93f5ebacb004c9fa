//! Devices' GATT tables, as BlueZ's object tree lists them, kept per
//! session.
//!
//! bluer finds a device's services with a `GetManagedObjects` call and
//! then asks each service for its UUID, and the service's characteristics
//! with another `GetManagedObjects` and a call per characteristic. Each
//! `GetManagedObjects` answers with *every* object bluetoothd has (every
//! device it knows, with all their properties): with 20 devices known the
//! reply is about 85 KB, which libdbus reads 2 KB at a time and validates
//! whole, so one such call per pull cost more CPU than the rest of the
//! pull's D-Bus traffic (`docs/benchmarks.md`, BLE gateway).
//!
//! So the session reads the tree once, and from then on keeps it from
//! bluetoothd's `InterfacesAdded` and `InterfacesRemoved` signals, watched
//! before that first read. A pull asks bluetoothd for nothing but a
//! `Ping` on the same connection: its reply comes after every signal
//! bluetoothd sent before it (the bus keeps one sender's messages in
//! order), so the services a device resolved before the pull looked are
//! in the table. A table without what a pull needs is read again from
//! bluetoothd once ([`ObjectTree::gatt_fresh`]), and a device whose pull
//! failed before its transfer is forgotten ([`ObjectTree::forget`]), so
//! a table gone stale costs one failed pull, never every later one.
//!
//! Of the objects, only the path and the `UUID` property of GATT services
//! and characteristics are read, in place; bluer's handles are then built
//! from the ids in the paths, which costs no call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bluer::Address;
use dbus::arg::{ArgType, Iter, ReadAll, TypeMismatchError};
use dbus::message::MatchRule;
use dbus::nonblock::{MsgMatch, Proxy, SyncConnection};
use dbus::Message;

use crate::error::{Error, ErrorKind};

/// BlueZ's service name on the bus.
const BLUEZ: &str = "org.bluez";
const SERVICE_IFACE: &str = "org.bluez.GattService1";
const CHARACTERISTIC_IFACE: &str = "org.bluez.GattCharacteristic1";
const OBJECT_MANAGER_IFACE: &str = "org.freedesktop.DBus.ObjectManager";

/// A second connection to the system bus, for the object tree bluer does
/// not offer in a cheap form; the tree's GATT objects, kept.
#[derive(Clone)]
pub(super) struct ObjectTree {
    connection: Arc<SyncConnection>,
    cache: Arc<Cache>,
    /// Set once the whole tree was read (after the watches began); the
    /// pulls that start together wait for one reading.
    primed: Arc<tokio::sync::OnceCell<()>>,
    /// The signal watches: their callbacks live as long as these.
    _watches: Arc<[MsgMatch; 2]>,
}

/// Every device's GATT services and characteristics: path to UUID.
#[derive(Default)]
struct Cache(Mutex<Kept>);

#[derive(Default)]
struct Kept {
    objects: BTreeMap<String, bluer::Uuid>,
}

impl Cache {
    fn lock(&self) -> MutexGuard<'_, Kept> {
        // Every update leaves the map whole.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `InterfacesAdded(o, a{sa{sv}})`.
    fn added(&self, signal: &Message) {
        let mut found = Vec::new();
        read_object(&mut signal.iter_init(), &mut found);
        let mut kept = self.lock();
        for object in found {
            kept.objects.insert(object.path, object.uuid);
        }
    }

    /// `InterfacesRemoved(o, as)`: a GATT object gone, or a device or an
    /// adapter with everything under it.
    fn removed(&self, signal: &Message) {
        let Ok((path, interfaces)) = signal.read2::<dbus::Path, Vec<String>>() else {
            return;
        };
        let mut kept = self.lock();
        kept.objects.remove(&*path);
        if interfaces
            .iter()
            .any(|i| i == "org.bluez.Device1" || i == "org.bluez.Adapter1")
        {
            kept.forget_under(&path);
        }
    }
}

impl Kept {
    /// Drops every object below `path`.
    fn forget_under(&mut self, path: &str) {
        let prefix = format!("{path}/");
        let below: Vec<String> = self
            .objects
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .map(|(p, _)| p.clone())
            .collect();
        for path in below {
            self.objects.remove(&path);
        }
    }

    /// The device's share of the tree.
    fn table(&self, device: &str) -> GattTable {
        let prefix = format!("{device}/");
        GattTable::of(
            device,
            self.objects
                .range(prefix.clone()..)
                .take_while(|(p, _)| p.starts_with(&prefix))
                .map(|(path, uuid)| (path.as_str(), *uuid)),
        )
    }
}

impl ObjectTree {
    /// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set), as
    /// bluer does, and starts watching bluetoothd's objects come and go.
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
        let cache = Arc::new(Cache::default());
        let added = watch(&connection, &cache, "InterfacesAdded", Cache::added).await?;
        let removed = watch(&connection, &cache, "InterfacesRemoved", Cache::removed).await?;
        Ok(ObjectTree {
            connection,
            cache,
            primed: Arc::default(),
            _watches: Arc::new([added, removed]),
        })
    }

    /// The GATT services and characteristics BlueZ lists for `address`
    /// on `adapter`, from the kept tree (read whole the first time).
    pub(super) async fn gatt(
        &self,
        adapter: &str,
        address: Address,
        timeout: Duration,
    ) -> Result<GattTable, Error> {
        self.primed
            .get_or_try_init(|| self.read_whole(timeout))
            .await?;
        // Even after reading it: signals sent before the reading may
        // have been handled only after it.
        self.barrier(timeout).await?;
        Ok(self.cache.lock().table(&device_path(adapter, address)))
    }

    /// [`gatt`](Self::gatt), read from bluetoothd now: for a table that
    /// lacks what the kept one should have had.
    pub(super) async fn gatt_fresh(
        &self,
        adapter: &str,
        address: Address,
        timeout: Duration,
    ) -> Result<GattTable, Error> {
        self.read_whole(timeout).await?;
        Ok(self.cache.lock().table(&device_path(adapter, address)))
    }

    /// Forgets what is kept of the device, read again at its next pull.
    pub(super) fn forget(&self, adapter: &str, address: Address) {
        self.cache
            .lock()
            .forget_under(&device_path(adapter, address));
    }

    /// Reads the whole tree (`GetManagedObjects`) into the kept one.
    async fn read_whole(&self, timeout: Duration) -> Result<(), Error> {
        let proxy = Proxy::new(BLUEZ, "/", timeout, self.connection.clone());
        let objects: Objects = proxy
            .method_call(OBJECT_MANAGER_IFACE, "GetManagedObjects", ())
            .await
            .map_err(|e| dbus_failed("listing the device's GATT services", e))?;
        let mut kept = self.cache.lock();
        // Added, never removed: a signal handled after the reply came
        // (and so newer than it) stays. An object the listing lacks but
        // a removal raced past is read again once a pull fails on it.
        for object in objects.0 {
            kept.objects.insert(object.path, object.uuid);
        }
        Ok(())
    }

    /// Returns once every signal bluetoothd sent before now was handled:
    /// the reply to a call comes after them on this connection, and the
    /// connection dispatches in order. Any reply will do, an error too.
    async fn barrier(&self, timeout: Duration) -> Result<(), Error> {
        let proxy = Proxy::new(BLUEZ, "/", timeout, self.connection.clone());
        match proxy
            .method_call::<(), _, _, _>("org.freedesktop.DBus.Peer", "Ping", ())
            .await
        {
            Err(e) if no_reply(&e) => Err(dbus_failed("asking bluetoothd for its objects", e)),
            _ => Ok(()),
        }
    }
}

/// Hands bluetoothd's ObjectManager signal `member` to `handle` on the
/// cache, for as long as the returned watch lives.
async fn watch(
    connection: &SyncConnection,
    cache: &Arc<Cache>,
    member: &'static str,
    handle: fn(&Cache, &Message),
) -> Result<MsgMatch, Error> {
    let rule = MatchRule::new_signal(OBJECT_MANAGER_IFACE, member)
        .with_sender(BLUEZ)
        .with_path("/");
    let cache = Arc::clone(cache);
    let watch = connection
        .add_match(rule)
        .await
        .map_err(|e| dbus_failed("watching bluetoothd's objects", e))?;
    Ok(watch.msg_cb(move |signal| {
        handle(&cache, &signal);
        true
    }))
}

/// Whether a call failed for want of an answer (rather than with one).
fn no_reply(e: &dbus::Error) -> bool {
    matches!(
        e.name(),
        Some(
            "org.freedesktop.DBus.Error.NoReply"
                | "org.freedesktop.DBus.Error.Timeout"
                | "org.freedesktop.DBus.Error.Disconnected"
                | "org.freedesktop.DBus.Error.ServiceUnknown"
        ) | None
    )
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

impl GattTable {
    /// The table of `device` from GATT objects (path, UUID), any device's.
    fn of<'p>(
        device: &str,
        objects: impl IntoIterator<Item = (&'p str, bluer::Uuid)>,
    ) -> GattTable {
        let mut table = GattTable::default();
        for (path, uuid) in objects {
            let Some(rest) = path.strip_prefix(device) else {
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
                None => table.services.push((service, uuid)),
                Some(Some(char)) => table.characteristics.push((service, char, uuid)),
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

    fn table_of(objects: &Objects, device: &str) -> GattTable {
        GattTable::of(device, objects.0.iter().map(|o| (o.path.as_str(), o.uuid)))
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
        let table = table_of(&objects, dev);
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
        let table = table_of(&objects, dev);
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

    /// The kept tree follows bluetoothd's signals: GATT objects added,
    /// one removed, then a whole device removed with what is under it.
    #[test]
    fn the_kept_tree_follows_interfaces_added_and_removed() {
        use std::collections::HashMap;

        use dbus::arg::{PropMap, Variant};

        let dev = "/org/bluez/hci0/dev_C0_DE_00_00_00_01";
        let other = "/org/bluez/hci0/dev_C0_DE_00_00_00_02";
        let added = |path: String, iface: &str, uuid: &str| {
            let mut props = PropMap::new();
            props.insert("UUID".into(), Variant(Box::new(uuid.to_owned())));
            Message::new_signal("/", OBJECT_MANAGER_IFACE, "InterfacesAdded")
                .expect("signal")
                .append2(
                    dbus::Path::from(path),
                    HashMap::from([(iface.to_owned(), props)]),
                )
        };
        let removed = |path: &str, ifaces: &[&str]| {
            Message::new_signal("/", OBJECT_MANAGER_IFACE, "InterfacesRemoved")
                .expect("signal")
                .append2(
                    dbus::Path::from(path),
                    ifaces.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                )
        };
        let cache = Cache::default();
        for device in [dev, other] {
            cache.added(&added(format!("{device}/service000a"), SERVICE_IFACE, A));
            cache.added(&added(
                format!("{device}/service000a/char000b"),
                CHARACTERISTIC_IFACE,
                B,
            ));
            cache.added(&added(
                format!("{device}/service000a/char000e"),
                CHARACTERISTIC_IFACE,
                B,
            ));
        }
        // Not GATT: not kept.
        cache.added(&added(dev.to_owned(), "org.bluez.Device1", A));
        let (a, b) = (A.parse().expect("A"), B.parse().expect("B"));
        let table = cache.lock().table(dev);
        assert_eq!(table.services, vec![(0x0a, a)]);
        assert_eq!(
            table.characteristics,
            vec![(0x0a, 0x0b, b), (0x0a, 0x0e, b)]
        );

        cache.removed(&removed(
            &format!("{dev}/service000a/char000e"),
            &[CHARACTERISTIC_IFACE],
        ));
        assert_eq!(
            cache.lock().table(dev).characteristics,
            vec![(0x0a, 0x0b, b)]
        );

        cache.removed(&removed(dev, &["org.bluez.Device1"]));
        assert_eq!(cache.lock().table(dev), GattTable::default());
        // The other device keeps its objects.
        assert_eq!(cache.lock().table(other).characteristics.len(), 2);

        // Forgetting one device (a pull failed) drops only its objects.
        cache.lock().forget_under(other);
        assert_eq!(cache.lock().table(other), GattTable::default());
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
