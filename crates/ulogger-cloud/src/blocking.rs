//! A blocking client, for code without an async runtime.
//!
//! [`Client`] has the same methods as the async [`crate::Client`] and owns
//! a Tokio runtime on a background thread named `ulogger-cloud`, which it
//! joins when the last clone is dropped.
//!
//! # Panics
//!
//! Calling a method of this client, or dropping its last clone, from
//! inside an async runtime panics (Tokio forbids blocking there): use the
//! async [`crate::Client`] in async code.
//!
//! ```no_run
//! use ulogger_cloud::{blocking::Client, wire::DeviceInfo, MqttConfig};
//!
//! # fn run() -> Result<(), ulogger_cloud::Error> {
//! let config = MqttConfig::new(42).client_cert("gw.pem.crt", "gw.pem.key");
//! let client = Client::builder(config).build()?;
//! let device = DeviceInfo::new(7, "SN-0001", "sensor-board", "v1.2.0", "abcdef0");
//! let log = std::fs::read("log.bin").expect("a log file");
//! let receipt = client.upload_log(&device, &log)?;
//! println!("token {}", receipt.token);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::Error;
use crate::store::SessionStore;
use crate::wire::{
    Compression, DeviceEvents, DeviceInfo, DeviceMetrics, Event, LogConfig, Metric, Telemetry,
    TextEntry,
};
use crate::{
    MqttConfig, OutboxConfig, OutboxFailure, OutboxStatus, PublishReceipt, RecordId,
    TelemetryReceipt, TextLogReceipt, UploadReceipt,
};

mod http;

pub use http::{HttpTelemetry, HttpTelemetryBuilder};

/// The blocking twin of [`crate::Client`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    inner: crate::Client,
    runtime: Arc<Runtime>,
}

/// Builds a blocking [`Client`]; see [`Client::builder`].
#[derive(Debug)]
#[must_use]
pub struct ClientBuilder {
    inner: crate::ClientBuilder,
}

impl ClientBuilder {
    /// See [`crate::ClientBuilder::session_store`].
    pub fn session_store(self, store: impl Into<Arc<SessionStore>>) -> Self {
        ClientBuilder {
            inner: self.inner.session_store(store),
        }
    }

    /// See [`crate::ClientBuilder::stamp_epoch_time`].
    pub fn stamp_epoch_time(self, stamp: bool) -> Self {
        ClientBuilder {
            inner: self.inner.stamp_epoch_time(stamp),
        }
    }

    /// See [`crate::ClientBuilder::telemetry_compression`].
    pub fn telemetry_compression(self, compression: Compression) -> Self {
        ClientBuilder {
            inner: self.inner.telemetry_compression(compression),
        }
    }

    /// Bridge mode on the application's `link`; see
    /// [`crate::ClientBuilder::link`]. The link's own I/O (for
    /// [`RumqttcLink`](crate::RumqttcLink), polling its event loop) runs
    /// wherever the application runs it, for instance a thread of its
    /// own with a current-thread runtime.
    pub fn link(self, link: impl crate::MqttLink) -> Self {
        ClientBuilder {
            inner: self.inner.link(link),
        }
    }

    /// See [`crate::ClientBuilder::outbox`].
    pub fn outbox(self, config: OutboxConfig) -> Self {
        ClientBuilder {
            inner: self.inner.outbox(config),
        }
    }

    /// Checks the configuration and starts the client's runtime thread,
    /// which starts connecting.
    pub fn build(self) -> Result<Client, Error> {
        let runtime = Arc::new(Runtime::new()?);
        let inner = runtime.block_on(async { self.inner.build() })?;
        Ok(Client { inner, runtime })
    }
}

impl Client {
    /// Starts building a client for `config`.
    pub fn builder(config: MqttConfig) -> ClientBuilder {
        ClientBuilder {
            inner: crate::Client::builder(config),
        }
    }

    /// Starts building a client in bridge mode; see
    /// [`crate::Client::builder_with_link`].
    pub fn builder_with_link(config: MqttConfig, link: impl crate::MqttLink) -> ClientBuilder {
        Client::builder(config).link(link)
    }

    /// See [`crate::Client::client_id`].
    pub fn client_id(&self) -> &str {
        self.inner.client_id()
    }

    /// See [`crate::Client::session_store`].
    pub fn session_store(&self) -> &Arc<SessionStore> {
        self.inner.session_store()
    }

    /// See [`crate::Client::connected`].
    pub fn connected(&self) -> Result<(), Error> {
        self.runtime.block_on(self.inner.connected())
    }

    /// See [`crate::Client::session_token`].
    pub fn session_token(&self, device: &DeviceInfo) -> Result<u32, Error> {
        self.runtime.block_on(self.inner.session_token(device))
    }

    /// See [`crate::Client::register`].
    pub fn register(&self, device: &DeviceInfo) -> Result<u32, Error> {
        self.runtime.block_on(self.inner.register(device))
    }

    /// See [`crate::Client::upload_log`].
    pub fn upload_log(&self, device: &DeviceInfo, log: &[u8]) -> Result<UploadReceipt, Error> {
        self.runtime.block_on(self.inner.upload_log(device, log))
    }

    /// See [`crate::Client::upload_elf`].
    pub fn upload_elf(
        &self,
        upload: &crate::ElfUpload,
        elf: impl Into<Bytes>,
    ) -> Result<crate::ElfUploadReceipt, Error> {
        self.runtime.block_on(self.inner.upload_elf(upload, elf))
    }

    /// See [`crate::Client::publish_binary_log`].
    pub fn publish_binary_log(
        &self,
        app_id: u32,
        log: impl Into<Bytes>,
    ) -> Result<PublishReceipt, Error> {
        self.runtime
            .block_on(self.inner.publish_binary_log(app_id, log))
    }

    /// See [`crate::Client::publish_core_dump`].
    pub fn publish_core_dump(&self, dump: impl Into<Bytes>) -> Result<PublishReceipt, Error> {
        self.runtime.block_on(self.inner.publish_core_dump(dump))
    }

    /// See [`crate::Client::publish_telemetry`].
    pub fn publish_telemetry(
        &self,
        app_id: u32,
        message: &Telemetry,
    ) -> Result<TelemetryReceipt, Error> {
        self.runtime
            .block_on(self.inner.publish_telemetry(app_id, message))
    }

    /// See [`crate::Client::publish_metrics`].
    pub fn publish_metrics(
        &self,
        serial: &str,
        app_id: u32,
        metrics: &[Metric],
    ) -> Result<TelemetryReceipt, Error> {
        self.runtime
            .block_on(self.inner.publish_metrics(serial, app_id, metrics))
    }

    /// See [`crate::Client::publish_events`].
    pub fn publish_events(
        &self,
        serial: &str,
        app_id: u32,
        events: &[Event],
    ) -> Result<TelemetryReceipt, Error> {
        self.runtime
            .block_on(self.inner.publish_events(serial, app_id, events))
    }

    /// See [`crate::Client::publish_text_logs`].
    pub fn publish_text_logs(
        &self,
        device: &DeviceInfo,
        entries: &[TextEntry],
    ) -> Result<TextLogReceipt, Error> {
        self.runtime
            .block_on(self.inner.publish_text_logs(device, entries))
    }

    /// See [`crate::Client::enqueue_text_logs`].
    pub fn enqueue_text_logs(
        &self,
        device: &DeviceInfo,
        entries: &[TextEntry],
    ) -> Result<Vec<RecordId>, Error> {
        self.runtime
            .block_on(self.inner.enqueue_text_logs(device, entries))
    }

    /// See [`crate::Client::publish_heartbeat`].
    pub fn publish_heartbeat(
        &self,
        serial: &str,
        app_id: u32,
        timestamp: Option<u64>,
    ) -> Result<TelemetryReceipt, Error> {
        self.runtime
            .block_on(self.inner.publish_heartbeat(serial, app_id, timestamp))
    }

    /// See [`crate::Client::publish_metrics_batch`].
    pub fn publish_metrics_batch(
        &self,
        app_id: u32,
        devices: &[DeviceMetrics],
    ) -> Result<TelemetryReceipt, Error> {
        self.runtime
            .block_on(self.inner.publish_metrics_batch(app_id, devices))
    }

    /// See [`crate::Client::publish_events_batch`].
    pub fn publish_events_batch(
        &self,
        app_id: u32,
        devices: &[DeviceEvents],
    ) -> Result<TelemetryReceipt, Error> {
        self.runtime
            .block_on(self.inner.publish_events_batch(app_id, devices))
    }

    /// See [`crate::Client::enqueue_log`].
    pub fn enqueue_log(&self, device: &DeviceInfo, log: &[u8]) -> Result<RecordId, Error> {
        self.runtime.block_on(self.inner.enqueue_log(device, log))
    }

    /// See [`crate::Client::enqueue_core_dump`].
    pub fn enqueue_core_dump(&self, dump: &[u8]) -> Result<RecordId, Error> {
        self.runtime.block_on(self.inner.enqueue_core_dump(dump))
    }

    /// See [`crate::Client::enqueue_telemetry`].
    pub fn enqueue_telemetry(&self, app_id: u32, message: &Telemetry) -> Result<RecordId, Error> {
        self.runtime
            .block_on(self.inner.enqueue_telemetry(app_id, message))
    }

    /// See [`crate::Client::enqueue_metrics`].
    pub fn enqueue_metrics(
        &self,
        serial: &str,
        app_id: u32,
        metrics: &[Metric],
    ) -> Result<RecordId, Error> {
        self.runtime
            .block_on(self.inner.enqueue_metrics(serial, app_id, metrics))
    }

    /// See [`crate::Client::enqueue_events`].
    pub fn enqueue_events(
        &self,
        serial: &str,
        app_id: u32,
        events: &[Event],
    ) -> Result<RecordId, Error> {
        self.runtime
            .block_on(self.inner.enqueue_events(serial, app_id, events))
    }

    /// See [`crate::Client::enqueue_heartbeat`].
    pub fn enqueue_heartbeat(
        &self,
        serial: &str,
        app_id: u32,
        timestamp: Option<u64>,
    ) -> Result<RecordId, Error> {
        self.runtime
            .block_on(self.inner.enqueue_heartbeat(serial, app_id, timestamp))
    }

    /// See [`crate::Client::enqueue_metrics_batch`].
    pub fn enqueue_metrics_batch(
        &self,
        app_id: u32,
        devices: &[DeviceMetrics],
    ) -> Result<RecordId, Error> {
        self.runtime
            .block_on(self.inner.enqueue_metrics_batch(app_id, devices))
    }

    /// See [`crate::Client::enqueue_events_batch`].
    pub fn enqueue_events_batch(
        &self,
        app_id: u32,
        devices: &[DeviceEvents],
    ) -> Result<RecordId, Error> {
        self.runtime
            .block_on(self.inner.enqueue_events_batch(app_id, devices))
    }

    /// See [`crate::Client::delivered`].
    pub fn delivered(&self, id: RecordId) -> Result<(), Error> {
        self.runtime.block_on(self.inner.delivered(id))
    }

    /// See [`crate::Client::outbox_status`].
    pub fn outbox_status(&self) -> Result<OutboxStatus, Error> {
        self.inner.outbox_status()
    }

    /// The outbox's delivery failure that has not cleared yet, with the
    /// error itself (see [`crate::Outbox::failure`]);
    /// [`ErrorKind::NoOutbox`](crate::ErrorKind::NoOutbox) without an
    /// outbox.
    pub fn outbox_failure(&self) -> Result<Option<OutboxFailure>, Error> {
        Ok(self.inner.outbox()?.failure())
    }

    /// See [`crate::Client::wait_for_log_config`].
    pub fn wait_for_log_config(
        &self,
        device: &DeviceInfo,
        timeout: Duration,
    ) -> Result<LogConfig, Error> {
        self.runtime
            .block_on(self.inner.wait_for_log_config(device, timeout))
    }

    /// See [`crate::Client::log_configs`]: the configurations as an
    /// iterator, which blocks for the next one.
    pub fn log_configs(&self, device: &DeviceInfo) -> Result<LogConfigs, Error> {
        let inner = self.runtime.block_on(self.inner.log_configs(device))?;
        Ok(LogConfigs {
            inner,
            runtime: self.runtime.clone(),
        })
    }

    /// See [`crate::Client::shutdown`].
    pub fn shutdown(&self) {
        self.runtime.block_on(self.inner.shutdown());
    }
}

/// The blocking twin of [`crate::LogConfigs`]: an iterator whose
/// `next` blocks until a configuration arrives, and ends when the client
/// shuts down. Dropping it unsubscribes.
#[derive(Debug)]
pub struct LogConfigs {
    inner: crate::LogConfigs,
    runtime: Arc<Runtime>,
}

impl Iterator for LogConfigs {
    type Item = Result<LogConfig, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.runtime.block_on(self.inner.next())
    }
}

/// A one-worker Tokio runtime on a named thread.
#[derive(Debug)]
struct Runtime(tokio::runtime::Runtime);

impl Runtime {
    fn new() -> Result<Self, Error> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ulogger-cloud")
            .enable_all()
            .build()
            .map(Runtime)
            .map_err(|e| {
                Error::with_source(
                    crate::ErrorKind::InvalidConfig {
                        field: "runtime",
                        reason: "could not start the client's runtime thread".to_owned(),
                    },
                    e,
                )
            })
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.0.block_on(future)
    }
}

/// The Python SDK's free functions, blocking. See [`crate::compat`]
/// for what each does.
pub use crate::compat::blocking::{
    get_or_fetch_token, get_session_token, publish_binary_log, publish_core_dump, publish_events,
    publish_events_batch, publish_heartbeat, publish_metrics, publish_metrics_batch, upload_log,
};
