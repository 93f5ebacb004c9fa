//! The blocking twin of [`crate::HttpTelemetry`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Runtime;
use crate::error::Error;
use crate::wire::{Compression, DeviceEvents, DeviceMetrics, Event, Metric, Telemetry};
use crate::HttpReceipt;

/// The blocking twin of [`crate::HttpTelemetry`], with the same methods.
/// Cheap to clone; owns a runtime thread (see the [module](super) docs,
/// also for why calling it from async code panics).
///
/// ```no_run
/// use ulogger_cloud::{blocking::HttpTelemetry, wire::Metric};
///
/// # fn run() -> Result<(), ulogger_cloud::Error> {
/// let token = std::env::var("ULOGGER_API_TOKEN").unwrap_or_default();
/// let http = HttpTelemetry::builder(token).group_id(3).build()?;
/// http.publish_heartbeat("SN-0001", 7, None)?;
/// # let _ = Metric::heartbeat();
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct HttpTelemetry {
    inner: crate::HttpTelemetry,
    runtime: Arc<Runtime>,
}

/// Builds a blocking [`HttpTelemetry`]; see [`HttpTelemetry::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct HttpTelemetryBuilder {
    inner: crate::HttpTelemetryBuilder,
}

impl HttpTelemetryBuilder {
    fn map(
        self,
        f: impl FnOnce(crate::HttpTelemetryBuilder) -> crate::HttpTelemetryBuilder,
    ) -> Self {
        HttpTelemetryBuilder {
            inner: f(self.inner),
        }
    }

    /// See [`crate::HttpTelemetryBuilder::base_url`].
    pub fn base_url(self, url: impl Into<String>) -> Self {
        self.map(|b| b.base_url(url))
    }

    /// See [`crate::HttpTelemetryBuilder::ca_file`].
    pub fn ca_file(self, path: impl Into<PathBuf>) -> Self {
        self.map(|b| b.ca_file(path))
    }

    /// See [`crate::HttpTelemetryBuilder::group_id`].
    pub fn group_id(self, group_id: u32) -> Self {
        self.map(|b| b.group_id(group_id))
    }

    /// See [`crate::HttpTelemetryBuilder::compression`].
    pub fn compression(self, compression: Compression) -> Self {
        self.map(|b| b.compression(compression))
    }

    /// See [`crate::HttpTelemetryBuilder::retries`].
    pub fn retries(self, retries: u32) -> Self {
        self.map(|b| b.retries(retries))
    }

    /// See [`crate::HttpTelemetryBuilder::max_backoff`].
    pub fn max_backoff(self, max: Duration) -> Self {
        self.map(|b| b.max_backoff(max))
    }

    /// See [`crate::HttpTelemetryBuilder::max_retry_after`].
    pub fn max_retry_after(self, max: Duration) -> Self {
        self.map(|b| b.max_retry_after(max))
    }

    /// See [`crate::HttpTelemetryBuilder::timeout`].
    pub fn timeout(self, timeout: Duration) -> Self {
        self.map(|b| b.timeout(timeout))
    }

    /// Checks the settings and starts the runtime thread.
    pub fn build(self) -> Result<HttpTelemetry, Error> {
        let inner = self.inner.build()?;
        let runtime = Arc::new(Runtime::new()?);
        Ok(HttpTelemetry { inner, runtime })
    }
}

impl HttpTelemetry {
    /// See [`crate::HttpTelemetry::builder`].
    pub fn builder(api_token: impl Into<String>) -> HttpTelemetryBuilder {
        HttpTelemetryBuilder {
            inner: crate::HttpTelemetry::builder(api_token),
        }
    }

    /// See [`crate::HttpTelemetry::post`].
    pub fn post(&self, app_id: u32, message: &Telemetry) -> Result<HttpReceipt, Error> {
        self.runtime.block_on(self.inner.post(app_id, message))
    }

    /// See [`crate::HttpTelemetry::publish_metrics`].
    pub fn publish_metrics(
        &self,
        serial: &str,
        app_id: u32,
        metrics: &[Metric],
    ) -> Result<HttpReceipt, Error> {
        self.runtime
            .block_on(self.inner.publish_metrics(serial, app_id, metrics))
    }

    /// See [`crate::HttpTelemetry::publish_events`].
    pub fn publish_events(
        &self,
        serial: &str,
        app_id: u32,
        events: &[Event],
    ) -> Result<HttpReceipt, Error> {
        self.runtime
            .block_on(self.inner.publish_events(serial, app_id, events))
    }

    /// See [`crate::HttpTelemetry::publish_heartbeat`].
    pub fn publish_heartbeat(
        &self,
        serial: &str,
        app_id: u32,
        timestamp: Option<u64>,
    ) -> Result<HttpReceipt, Error> {
        self.runtime
            .block_on(self.inner.publish_heartbeat(serial, app_id, timestamp))
    }

    /// See [`crate::HttpTelemetry::publish_metrics_batch`].
    pub fn publish_metrics_batch(
        &self,
        app_id: u32,
        devices: &[DeviceMetrics],
    ) -> Result<HttpReceipt, Error> {
        self.runtime
            .block_on(self.inner.publish_metrics_batch(app_id, devices))
    }

    /// See [`crate::HttpTelemetry::publish_events_batch`].
    pub fn publish_events_batch(
        &self,
        app_id: u32,
        devices: &[DeviceEvents],
    ) -> Result<HttpReceipt, Error> {
        self.runtime
            .block_on(self.inner.publish_events_batch(app_id, devices))
    }
}
