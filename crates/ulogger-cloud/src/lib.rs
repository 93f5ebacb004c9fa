//! Upload embedded devices' binary logs, core dumps and telemetry to the
//! [uLogger](https://ulogger.ai) cloud.
//!
//! A *gateway* (a Linux box, a phone, a CI job) pulls binary logs from
//! devices running the uLogger agent and forwards them to the cloud over
//! MQTT with mutual TLS. This crate is that gateway's side:
//!
//! - [`wire`]: the platform's formats as pure functions on byte slices
//!   (log headers and checksums, device identification, topics, boot
//!   registration, log configuration, BLE chunked transfer).
//! - [`SessionStore`]: the session-token cache, in memory or in a file
//!   shared with the Python SDK (`~/.ulogger/session_tokens.json`).
//! - [`Client`]: one long-lived MQTT connection for many devices: boot
//!   registration ([`Client::session_token`]), binary-log upload
//!   ([`Client::upload_log`]) and core dumps, each complete only when the
//!   broker acknowledged it, paced to the platform's per-connection
//!   limits ([`Pacing`]), and metrics, events and heartbeats
//!   ([`Client::publish_metrics`], [`Client::publish_heartbeat`]).
//! - Bridge mode ([`MqttLink`], [`ClientBuilder::link`]): all of the
//!   client on an MQTT connection the application already holds, such as
//!   a rumqttc client ([`RumqttcLink`]) to a local broker that bridges a
//!   topic prefix to the cloud.
//! - [`HttpTelemetry`]: the same telemetry over HTTPS with an API token,
//!   for gateways without an MQTT client certificate.
//! - Firmware ELF upload ([`Client::upload_elf`], [`ElfUpload`]): the
//!   build's ELF to the cloud from CI, so that the cloud can decode the
//!   binary logs of devices running it.

#[cfg(all(feature = "ble", target_os = "linux"))]
pub mod ble;
pub mod blocking;
pub mod compat;
/// The platform's wire formats, sans I/O: the [`ulogger_wire`] crate,
/// re-exported so `ulogger_cloud::wire::...` paths keep working.
pub use ulogger_wire as wire;

mod client;
mod config;
mod crash;
pub mod durable;
mod error;
mod http;
mod link;
mod outbox;
mod store;
mod tls;
mod transport;

/// Bench-only: the session-token store's file writer and map, for
/// `benches/store.rs`. Not part of the API; may change in any release.
#[doc(hidden)]
pub use store::bench as __bench_store;

pub use client::{
    Client, ClientBuilder, ConnectionChanges, ConnectionEvent, ConnectionState, ElfProgress,
    ElfUpload, ElfUploadReceipt, LogConfigs, PublishReceipt, TelemetryReceipt, TextLogReceipt,
    Turn, UploadReceipt,
};
pub use config::{
    MqttConfig, Pacing, RegistrationLimit, Security, DEFAULT_BROKER, DEFAULT_GROUP_ID, DEFAULT_PORT,
};
pub use error::{Error, ErrorKind, FileRole, Phase};
pub use http::{HttpReceipt, HttpTelemetry, HttpTelemetryBuilder, DEFAULT_API_URL};
pub use link::{IncomingMessage, LinkFuture, LinkInbox, MqttLink, RumqttcLink};
// The Python SDK's names at the root, as before: kept for one release,
// then only in `compat` (decision 31).
#[doc(hidden)]
pub use compat::{
    get_or_fetch_token, get_session_token, publish_binary_log, publish_core_dump, publish_events,
    publish_events_batch, publish_heartbeat, publish_metrics, publish_metrics_batch, upload_log,
};

pub use outbox::{
    Outbox, OutboxConfig, OutboxFailure, OutboxRecord, OutboxStatus, RecordId, RecordKind,
    RecordState, WhenFull,
};
pub use store::{SessionStore, StoreError, StoreOp, TokenEntry, DEFAULT_MAX_STALENESS};

#[allow(dead_code)]
fn _assert_impls() {
    fn send_sync<T: Send + Sync>() {}
    fn clone<T: Clone>() {}
    send_sync::<Client>();
    clone::<Client>();
    send_sync::<Error>();
    send_sync::<HttpTelemetry>();
    clone::<HttpTelemetry>();
    send_sync::<SessionStore>();
    send_sync::<LinkInbox>();
    send_sync::<RumqttcLink>();
    send_sync::<ConnectionChanges>();
    fn dyn_compatible(_: &dyn MqttLink) {}
}

/// The README's examples, compiled and checked as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
