//! The private bus fixture starts, answers, stops, and never hangs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ulogger_ble_sim::{Error, PrivateBus};

#[tokio::test]
async fn private_bus_serves_and_stops_on_drop() {
    let bus = PrivateBus::start().unwrap();
    assert!(bus.address().starts_with("unix:path="), "{}", bus.address());
    let conn = zbus::connection::Builder::address(bus.address())
        .build()
        .await
        .unwrap();
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
    assert!(dbus.get_id().await.is_ok());
    let address = bus.address().to_owned();
    drop(bus);
    // The daemon is gone: a new connection is refused, not left waiting.
    let again = tokio::time::timeout(
        Duration::from_secs(10),
        zbus::connection::Builder::address(address.as_str()).build(),
    )
    .await
    .expect("connecting to a stopped bus must fail quickly");
    assert!(again.is_err());
}

#[test]
fn a_daemon_that_prints_nothing_times_out() {
    // A script that ignores the daemon's arguments and never prints an
    // address: the fixture must give up and kill it.
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), "#!/bin/sh\nexec sleep 60\n").unwrap();
    let path = script.into_temp_path();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let started = Instant::now();
    let err = PrivateBus::builder()
        .program(&*path)
        .timeout(Duration::from_millis(300))
        .start()
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_missing_daemon_is_an_error() {
    let err = PrivateBus::builder()
        .program("/nonexistent/dbus-daemon")
        .start()
        .unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err}");
}
