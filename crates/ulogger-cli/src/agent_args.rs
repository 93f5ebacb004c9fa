//! The agent's settings flags, in one place for `ulogger agent`, which
//! reads them, and `ulogger config show`, which shows them (no command
//! imports another). Each argument's id is its config-file key
//! (`settings.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;

/// `ulogger agent`'s service flags (and `config show`'s).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServiceArgs {
    /// The inbox: one folder per device, holding its identity and the
    /// files to send (required unless --ble).
    #[arg(long, env = "ULOGGER_INBOX", value_name = "DIR")]
    pub inbox: Option<PathBuf>,
    /// The durable outbox directory, owned by this agent while it runs
    /// (required).
    #[arg(long, env = "ULOGGER_OUTBOX", value_name = "DIR")]
    pub outbox: Option<PathBuf>,
    /// Where invalid files go, each with a `.reason` file [default: a
    /// `rejected` folder beside the inbox].
    #[arg(long, env = "ULOGGER_REJECTED", value_name = "DIR")]
    pub rejected: Option<PathBuf>,
    /// Milliseconds between two looks at the inbox when it is polled
    /// (--poll, or file notifications unavailable); at most 1h [default: 500ms].
    #[arg(long, env = "ULOGGER_SCAN_INTERVAL", value_name = "MS", value_parser = crate::duration::millis)]
    pub scan_interval: Option<u64>,
    /// Seconds between two full looks at the inbox while it is watched
    /// with file notifications (a file is taken as soon as it is complete;
    /// this only catches what a notification missed); at most 1d
    /// [default: 10m].
    #[arg(long, env = "ULOGGER_RESCAN_INTERVAL", value_name = "SECS", value_parser = crate::duration::secs)]
    pub rescan_interval: Option<u64>,
    /// Poll the inbox every --scan-interval instead of watching it with
    /// file notifications (inotify), e.g. on a network filesystem, where
    /// changes made by other hosts are not notified [default: false].
    #[arg(long, env = "ULOGGER_POLL", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = crate::connection::boolish)]
    pub poll: Option<bool>,
    /// Seconds between two summary lines; at most 1d [default: 60s].
    #[arg(long, env = "ULOGGER_SUMMARY_INTERVAL", value_name = "SECS", value_parser = crate::duration::secs)]
    pub summary_interval: Option<u64>,
    /// Milliseconds within which a delivery's acknowledgement is made
    /// durable in the outbox; after a power cut, what was delivered in the
    /// last interval is sent again. 0 syncs every batch of
    /// acknowledgements; at most 60s [default: 1s].
    #[arg(long, env = "ULOGGER_ACK_SYNC_INTERVAL", value_name = "MS", value_parser = crate::duration::millis)]
    pub ack_sync_interval: Option<u64>,
    /// Write the gateway's clock into version-4 headers whose time is 0
    /// [default: false].
    #[arg(long, env = "ULOGGER_STAMP_TIME", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = crate::connection::boolish)]
    pub stamp_time: Option<bool>,
    /// Serve the agent's metrics in the Prometheus text format at
    /// http://ADDR/metrics (e.g. 127.0.0.1:9464; port 0 takes a free one,
    /// and the line `metrics at ...` says which) [default: none].
    #[arg(long, env = "ULOGGER_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

#[cfg(all(feature = "ble", target_os = "linux"))]
/// `ulogger agent`'s BLE flags (and `config show`'s); the ids are the
/// config file's keys.
#[derive(Debug, Clone, clap::Args)]
pub struct BleArgs {
    /// Also pull devices over Bluetooth LE (BlueZ), continuously, beside
    /// the inbox (which becomes optional). Without --ble-name or
    /// --ble-address every device seen is tried once; one that is no
    /// uLogger device is then left alone for hours. Config file: `ble`,
    /// and `ble_names`, `ble_addresses`, `ble_max_connections`,
    /// `ble_min_interval`, `adapter` for the flags below.
    #[arg(long, env = "ULOGGER_BLE", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = crate::connection::boolish)]
    pub ble: Option<bool>,
    /// Pull only devices advertising exactly this name (repeatable; with
    /// --ble-address, a device matching either is pulled).
    #[arg(long = "ble-name", id = "ble_names", value_name = "NAME")]
    pub names: Vec<String>,
    /// Pull only the device with this address, e.g. AA:BB:CC:DD:EE:FF
    /// (repeatable).
    #[arg(long = "ble-address", id = "ble_addresses", value_name = "ADDR")]
    pub addresses: Vec<String>,
    /// How many devices to pull at once [default: 4].
    #[arg(long, value_name = "N")]
    pub ble_max_connections: Option<usize>,
    /// The least time between two pulls of one device; at most 1d
    /// [default: 30s].
    #[arg(long, value_name = "SECS", value_parser = crate::duration::secs)]
    pub ble_min_interval: Option<u64>,
    /// The BlueZ adapter [default: hci0].
    #[arg(long, value_name = "NAME")]
    pub adapter: Option<String>,
}
