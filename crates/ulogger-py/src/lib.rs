//! The native half of the `ulogger_cloud` Python package: our client
//! ([`ulogger_cloud::Client`], on one runtime for the process) and token
//! store as Python
//! classes, for the package's Python layer (`python/ulogger_cloud/`),
//! which gives them the Python SDK's names and conventions.
//!
//! Every call that waits on the network releases the GIL while it waits,
//! so Python threads share one connection and keep running meanwhile.
//! Errors are raised as the classes of `ulogger_cloud.errors`, one per
//! [`ulogger_cloud::ErrorKind`], with the Rust message and fields.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyStopIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyDict;
use ulogger_cloud::wire::{
    self, Compression, DeviceEvents, DeviceInfo, DeviceMetrics, Event, LogConfig, Metric,
    MetricValue,
};
use ulogger_cloud::{
    MqttConfig, OutboxConfig, OutboxStatus, Pacing, PublishReceipt, TelemetryReceipt, UploadReceipt,
};

mod bridge;
mod errors;
mod logging;
mod runtime;

use errors::IntoPyResult;

/// A session-token store (PROTOCOL §9): in memory, or a JSON file shared
/// with the Python SDK.
#[pyclass(module = "ulogger_cloud._native", frozen)]
struct TokenStore {
    inner: Arc<ulogger_cloud::SessionStore>,
}

#[pymethods]
impl TokenStore {
    /// Opens the store at `path` (created when missing; a corrupt file is
    /// set aside and a warning logged), or an in-memory one without a
    /// path; `max_entries` bounds it (least recently used evicted).
    #[new]
    #[pyo3(signature = (path=None, max_entries=None))]
    fn new(py: Python<'_>, path: Option<PathBuf>, max_entries: Option<usize>) -> PyResult<Self> {
        let store = match path {
            None => ulogger_cloud::SessionStore::in_memory(),
            Some(path) => {
                let (store, moved) = ulogger_cloud::SessionStore::open_or_reset(&path)
                    .map_err(|e| errors::to_py(e.into()))?;
                if let Some(moved) = moved {
                    warn(
                        py,
                        &format!(
                            "the token store {} was unreadable; it was moved to {} and a new one started",
                            path.display(),
                            moved.display()
                        ),
                    );
                }
                store
            }
        };
        let store = match max_entries {
            None => store,
            Some(n) => store.with_capacity(
                NonZeroUsize::new(n)
                    .ok_or_else(|| PyValueError::new_err("max_entries must be >= 1 or None"))?,
            ),
        };
        Ok(TokenStore {
            inner: Arc::new(store),
        })
    }

    /// The token of `serial` if it was stored for firmware `git_hash`.
    fn get(&self, serial: &str, git_hash: &str) -> PyResult<Option<u32>> {
        self.inner
            .get(serial, git_hash)
            .map_err(|e| errors::to_py(e.into()))
    }

    /// Stores `token` for `serial` at firmware `git_hash`.
    fn set(&self, serial: &str, git_hash: &str, token: u32) -> PyResult<()> {
        self.inner
            .set(serial, token, git_hash)
            .map_err(|e| errors::to_py(e.into()))
    }

    /// Forgets `serial`; true when it was there.
    fn remove(&self, serial: &str) -> PyResult<bool> {
        self.inner
            .remove(serial)
            .map_err(|e| errors::to_py(e.into()))
    }

    /// Forgets every token.
    fn clear(&self) -> PyResult<()> {
        self.inner.clear().map_err(|e| errors::to_py(e.into()))
    }

    fn __len__(&self) -> PyResult<usize> {
        self.inner.len().map_err(|e| errors::to_py(e.into()))
    }

    /// The backing file, or None in memory.
    #[getter]
    fn path(&self) -> Option<PathBuf> {
        self.inner.path()
    }
}

/// One configuration's client: one persistent MQTT connection (TLS),
/// pacing, registration and, if asked for, an outbox. Weakly referable:
/// the package closes the engines of live `Client`s at exit.
#[pyclass(module = "ulogger_cloud._native", frozen, weakref)]
struct Engine {
    client: ulogger_cloud::Client,
}

fn seconds(value: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!("{what} must be a non-negative number of seconds"))
    })
}

fn compression(name: &str) -> PyResult<Compression> {
    match name {
        "auto" => Ok(Compression::Auto),
        "always" => Ok(Compression::Always),
        "never" => Ok(Compression::Never),
        other => Err(PyValueError::new_err(format!(
            "compression must be 'auto', 'always' or 'never', got {other:?}"
        ))),
    }
}

#[pymethods]
impl Engine {
    /// Checks the configuration (ids, files, the key matching the
    /// certificate) and starts connecting in the background.
    #[new]
    #[pyo3(signature = (
        customer_id, *, broker, port, cert_file=None, key_file=None, ca_file=None,
        group_id=Some(0), topic_prefix=String::new(), token_timeout=15.0,
        connect_timeout=10.0, pacing=true, store=None, outbox_dir=None,
        compression="auto", link=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        customer_id: u32,
        broker: String,
        port: u16,
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
        group_id: Option<u32>,
        topic_prefix: String,
        token_timeout: f64,
        connect_timeout: f64,
        pacing: bool,
        store: Option<&TokenStore>,
        outbox_dir: Option<PathBuf>,
        compression: &str,
        link: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let mut config = MqttConfig::new(customer_id)
            .broker(broker)
            .port(port)
            .topic_prefix(topic_prefix)
            .token_timeout(seconds(token_timeout, "token_timeout")?)
            .connect_timeout(seconds(connect_timeout, "connect_timeout")?);
        config = match group_id {
            Some(group) => config.group_id(group),
            None => config.legacy_topics(),
        };
        match (cert_file, key_file) {
            (Some(cert), Some(key)) => config = config.client_cert(cert, key),
            (None, None) => {}
            _ => {
                return Err(PyValueError::new_err(
                    "cert_file and key_file go together: set both or neither",
                ))
            }
        }
        if let Some(ca) = ca_file {
            config = config.ca_file(ca);
        }
        if !pacing {
            config = config.pacing(Pacing::off());
        }
        let mut builder = ulogger_cloud::Client::builder(config)
            .telemetry_compression(self::compression(compression)?);
        if let Some(store) = store {
            builder = builder.session_store(store.inner.clone());
        }
        if let Some(dir) = outbox_dir {
            builder = builder.outbox(OutboxConfig::new(dir));
        }
        if let Some(adapter) = link {
            // Bridge mode: the application's connection, through the
            // adapter of `_paho_link.py`; the TLS files are not read.
            builder = builder.link(bridge::PyLink::new(adapter));
        }
        let client = py.detach(|| runtime::run(async { builder.build() })).py()?;
        Ok(Engine { client })
    }

    /// The MQTT client id of the connection.
    #[getter]
    fn client_id(&self) -> String {
        self.client.client_id().to_owned()
    }

    /// Waits until the connection is up, or raises why it is not.
    fn connected(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| runtime::run(self.client.connected())).py()
    }

    /// The device's token: cached, else one boot registration (concurrent
    /// calls for one device share it).
    fn session_token(&self, py: Python<'_>, device: &Bound<'_, PyAny>) -> PyResult<u32> {
        let device = device_info(device)?;
        py.detach(|| runtime::run(self.client.session_token(&device)))
            .py()
    }

    /// A boot registration whatever the cache holds; never returns 0.
    fn register(&self, py: Python<'_>, device: &Bound<'_, PyAny>) -> PyResult<u32> {
        let device = device_info(device)?;
        py.detach(|| runtime::run(self.client.register(&device)))
            .py()
    }

    /// Validates, patches the token in, publishes and waits for the
    /// PUBACK; returns the receipt as a dict.
    fn upload_log<'py>(
        &self,
        py: Python<'py>,
        device: &Bound<'py, PyAny>,
        log: PyBackedBytes,
    ) -> PyResult<Bound<'py, PyDict>> {
        let device = device_info(device)?;
        let receipt = py
            .detach(|| runtime::run(self.client.upload_log(&device, &log)))
            .py()?;
        upload_receipt(py, &receipt)
    }

    /// Publishes `log` as-is to the binary-log topic of `app_id`.
    fn publish_binary_log<'py>(
        &self,
        py: Python<'py>,
        app_id: &Bound<'_, PyAny>,
        log: PyBackedBytes,
    ) -> PyResult<Bound<'py, PyDict>> {
        let app_id = app_id_of(app_id)?;
        let log = log.to_vec();
        let receipt = py
            .detach(|| runtime::run(self.client.publish_binary_log(app_id, log)))
            .py()?;
        publish_receipt(py, &receipt)
    }

    /// Publishes a core dump as-is.
    fn publish_core_dump<'py>(
        &self,
        py: Python<'py>,
        dump: PyBackedBytes,
    ) -> PyResult<Bound<'py, PyDict>> {
        let dump = dump.to_vec();
        let receipt = py
            .detach(|| runtime::run(self.client.publish_core_dump(dump)))
            .py()?;
        publish_receipt(py, &receipt)
    }

    /// One device's metrics (a list of `{"name", "value", "timestamp"?}`).
    fn publish_metrics<'py>(
        &self,
        py: Python<'py>,
        serial: &str,
        app_id: &Bound<'_, PyAny>,
        metrics: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let app_id = app_id_of(app_id)?;
        let metrics = metric_list(metrics)?;
        let receipt = py
            .detach(|| runtime::run(self.client.publish_metrics(serial, app_id, &metrics)))
            .py()?;
        telemetry_receipt(py, &receipt)
    }

    /// One device's events (a list of `{"type", "timestamp"?}`).
    fn publish_events<'py>(
        &self,
        py: Python<'py>,
        serial: &str,
        app_id: &Bound<'_, PyAny>,
        events: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let app_id = app_id_of(app_id)?;
        let events = event_list(events)?;
        let receipt = py
            .detach(|| runtime::run(self.client.publish_events(serial, app_id, &events)))
            .py()?;
        telemetry_receipt(py, &receipt)
    }

    /// A heartbeat on behalf of a device.
    #[pyo3(signature = (serial, app_id, timestamp=None))]
    fn publish_heartbeat<'py>(
        &self,
        py: Python<'py>,
        serial: &str,
        app_id: &Bound<'_, PyAny>,
        timestamp: Option<u64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let app_id = app_id_of(app_id)?;
        let receipt = py
            .detach(|| runtime::run(self.client.publish_heartbeat(serial, app_id, timestamp)))
            .py()?;
        telemetry_receipt(py, &receipt)
    }

    /// Many devices' metrics in one message (`{"device_serial",
    /// "metrics", "app_id"?}` entries).
    fn publish_metrics_batch<'py>(
        &self,
        py: Python<'py>,
        app_id: &Bound<'_, PyAny>,
        devices: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let app_id = app_id_of(app_id)?;
        let devices = device_metrics(devices)?;
        let receipt = py
            .detach(|| runtime::run(self.client.publish_metrics_batch(app_id, &devices)))
            .py()?;
        telemetry_receipt(py, &receipt)
    }

    /// Many devices' events in one message.
    fn publish_events_batch<'py>(
        &self,
        py: Python<'py>,
        app_id: &Bound<'_, PyAny>,
        devices: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let app_id = app_id_of(app_id)?;
        let devices = device_events(devices)?;
        let receipt = py
            .detach(|| runtime::run(self.client.publish_events_batch(app_id, &devices)))
            .py()?;
        telemetry_receipt(py, &receipt)
    }

    /// Uploads a firmware ELF (PROTOCOL §11): the request over MQTT, the
    /// file over HTTPS to the URL the cloud answers; returns the receipt
    /// as a dict.
    #[pyo3(signature = (
        elf, application_id, device_type, version, git_hash, *, branch=String::new(),
        reply_timeout=30.0, put_timeout=300.0, retries=3
    ))]
    #[allow(clippy::too_many_arguments)]
    fn upload_elf<'py>(
        &self,
        py: Python<'py>,
        elf: PyBackedBytes,
        application_id: &Bound<'_, PyAny>,
        device_type: String,
        version: String,
        git_hash: String,
        branch: String,
        reply_timeout: f64,
        put_timeout: f64,
        retries: u32,
    ) -> PyResult<Bound<'py, PyDict>> {
        let upload = ulogger_cloud::ElfUpload::new(
            app_id_of(application_id)?,
            device_type,
            version,
            git_hash,
        )
        .branch(branch)
        .reply_timeout(seconds(reply_timeout, "reply_timeout")?)
        .put_timeout(seconds(put_timeout, "put_timeout")?)
        .retries(retries);
        let elf = elf.to_vec();
        let receipt = py
            .detach(|| runtime::run(self.client.upload_elf(&upload, elf)))
            .py()?;
        let dict = PyDict::new(py);
        dict.set_item("upload_id", receipt.upload_id)?;
        dict.set_item("topic", &receipt.topic)?;
        dict.set_item("upload_host", &receipt.upload_host)?;
        dict.set_item("status", receipt.status)?;
        dict.set_item("size", receipt.size)?;
        dict.set_item("attempts", receipt.attempts)?;
        dict.set_item("elf_class", receipt.elf.class.as_str())?;
        dict.set_item("machine", &receipt.elf.machine)?;
        dict.set_item("has_debug_modules", receipt.elf.has_debug_modules)?;
        Ok(dict)
    }

    /// Puts a log in the outbox (durable when this returns); returns the
    /// record id. Delivery runs in the background.
    fn enqueue_log(
        &self,
        py: Python<'_>,
        device: &Bound<'_, PyAny>,
        log: PyBackedBytes,
    ) -> PyResult<u64> {
        let device = device_info(device)?;
        let id = py
            .detach(|| runtime::run(self.client.enqueue_log(&device, &log)))
            .py()?;
        Ok(id.0)
    }

    /// Waits until record `id` is delivered (acknowledged by the broker).
    fn delivered(&self, py: Python<'_>, id: u64) -> PyResult<()> {
        py.detach(|| runtime::run(self.client.delivered(ulogger_cloud::RecordId(id))))
            .py()
    }

    /// The outbox's counters as a dict.
    fn outbox_status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let status = self.client.outbox_status().py()?;
        outbox_status(py, &status)
    }

    /// Waits up to `timeout` seconds for the cloud's next log
    /// configuration for the device; `(level, module_flags,
    /// timeout_secs, module_names)`.
    fn wait_for_log_config<'py>(
        &self,
        py: Python<'py>,
        device: &Bound<'py, PyAny>,
        timeout: f64,
    ) -> PyResult<LogConfigTuple> {
        let device = device_info(device)?;
        let timeout = seconds(timeout, "timeout")?;
        let config = py
            .detach(|| runtime::run(self.client.wait_for_log_config(&device, timeout)))
            .py()?;
        Ok(log_config(&config))
    }

    /// The device's log configurations as they arrive: an iterator.
    fn log_configs(&self, py: Python<'_>, device: &Bound<'_, PyAny>) -> PyResult<LogConfigIter> {
        let device = device_info(device)?;
        let inner = py
            .detach(|| runtime::run(self.client.log_configs(&device)))
            .py()?;
        Ok(LogConfigIter {
            inner: tokio::sync::Mutex::new(Some(inner)),
        })
    }

    /// Closes the connection after what is in flight; later calls fail
    /// with `ShutdownError`.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            runtime::run(async {
                self.client.shutdown().await;
                Ok(())
            })
        })
        .py()
    }
}

/// Telemetry over HTTPS with an API token (PROTOCOL §8), for the SDK's
/// fallback when there is no MQTT client certificate.
#[pyclass(module = "ulogger_cloud._native", frozen)]
struct HttpEngine {
    http: ulogger_cloud::HttpTelemetry,
}

#[pymethods]
impl HttpEngine {
    /// A client of the HTTP API at `base_url`, with `api_token`.
    #[new]
    #[pyo3(signature = (api_token, *, base_url, group_id=0, compression="auto", ca_file=None))]
    fn new(
        py: Python<'_>,
        api_token: String,
        base_url: String,
        group_id: u32,
        compression: &str,
        ca_file: Option<PathBuf>,
    ) -> PyResult<Self> {
        let mut builder = ulogger_cloud::HttpTelemetry::builder(api_token)
            .base_url(base_url)
            .group_id(group_id)
            .compression(self::compression(compression)?);
        if let Some(ca) = ca_file {
            builder = builder.ca_file(ca);
        }
        let http = py.detach(|| runtime::run(async { builder.build() })).py()?;
        Ok(HttpEngine { http })
    }

    /// One device's metrics.
    fn publish_metrics(
        &self,
        py: Python<'_>,
        serial: &str,
        app_id: &Bound<'_, PyAny>,
        metrics: &Bound<'_, PyAny>,
    ) -> PyResult<u16> {
        let app_id = app_id_of(app_id)?;
        let metrics = metric_list(metrics)?;
        let receipt = py
            .detach(|| runtime::run(self.http.publish_metrics(serial, app_id, &metrics)))
            .py()?;
        Ok(receipt.status)
    }

    /// One device's events.
    fn publish_events(
        &self,
        py: Python<'_>,
        serial: &str,
        app_id: &Bound<'_, PyAny>,
        events: &Bound<'_, PyAny>,
    ) -> PyResult<u16> {
        let app_id = app_id_of(app_id)?;
        let events = event_list(events)?;
        let receipt = py
            .detach(|| runtime::run(self.http.publish_events(serial, app_id, &events)))
            .py()?;
        Ok(receipt.status)
    }

    /// A heartbeat on behalf of a device.
    #[pyo3(signature = (serial, app_id, timestamp=None))]
    fn publish_heartbeat(
        &self,
        py: Python<'_>,
        serial: &str,
        app_id: &Bound<'_, PyAny>,
        timestamp: Option<u64>,
    ) -> PyResult<u16> {
        let app_id = app_id_of(app_id)?;
        let receipt = py
            .detach(|| runtime::run(self.http.publish_heartbeat(serial, app_id, timestamp)))
            .py()?;
        Ok(receipt.status)
    }

    /// Many devices' metrics in one request.
    fn publish_metrics_batch(
        &self,
        py: Python<'_>,
        app_id: &Bound<'_, PyAny>,
        devices: &Bound<'_, PyAny>,
    ) -> PyResult<u16> {
        let app_id = app_id_of(app_id)?;
        let devices = device_metrics(devices)?;
        let receipt = py
            .detach(|| runtime::run(self.http.publish_metrics_batch(app_id, &devices)))
            .py()?;
        Ok(receipt.status)
    }

    /// Many devices' events in one request.
    fn publish_events_batch(
        &self,
        py: Python<'_>,
        app_id: &Bound<'_, PyAny>,
        devices: &Bound<'_, PyAny>,
    ) -> PyResult<u16> {
        let app_id = app_id_of(app_id)?;
        let devices = device_events(devices)?;
        let receipt = py
            .detach(|| runtime::run(self.http.publish_events_batch(app_id, &devices)))
            .py()?;
        Ok(receipt.status)
    }
}

type LogConfigTuple = (u8, u32, u32, Option<Vec<String>>);

/// Log configurations of one device, as they arrive; ends when the
/// client shuts down or the iterator is closed (which unsubscribes).
#[pyclass(module = "ulogger_cloud._native", frozen)]
struct LogConfigIter {
    inner: tokio::sync::Mutex<Option<ulogger_cloud::LogConfigs>>,
}

#[pymethods]
impl LogConfigIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<LogConfigTuple> {
        match self.next_within(py, None)? {
            Some(config) => Ok(config),
            None => Err(PyStopIteration::new_err(())),
        }
    }

    /// The next configuration, waiting at most `timeout` seconds (for
    /// ever with None); None when none came in time. Raises
    /// `StopIteration` once the stream has ended.
    #[pyo3(signature = (timeout=None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<LogConfigTuple>> {
        let timeout = timeout.map(|t| seconds(t, "timeout")).transpose()?;
        self.next_within(py, timeout)
    }

    /// Unsubscribes; a waiting or later `next` ends the iteration.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            runtime::run(async {
                self.inner.lock().await.take();
                Ok(())
            })
        })
        .py()
    }
}

impl LogConfigIter {
    /// `Ok(None)` on a timeout; `StopIteration` once the stream ended.
    fn next_within(
        &self,
        py: Python<'_>,
        timeout: Option<Duration>,
    ) -> PyResult<Option<LogConfigTuple>> {
        let next = py.detach(|| {
            runtime::run(async {
                let mut guard = self.inner.lock().await;
                let Some(stream) = guard.as_mut() else {
                    return Ok(Some(None));
                };
                let item = match timeout {
                    None => Some(stream.next().await),
                    Some(limit) => tokio::time::timeout(limit, stream.next()).await.ok(),
                };
                if let Some(None) = item {
                    guard.take();
                }
                Ok(item)
            })
        });
        match next.py()? {
            None => Ok(None),
            Some(None) => Err(PyStopIteration::new_err(())),
            Some(Some(config)) => Ok(Some(log_config(&config.py()?))),
        }
    }
}

fn log_config(config: &LogConfig) -> LogConfigTuple {
    (
        u8::from(config.level),
        config.module_flags,
        config.timeout_secs,
        config.module_names.clone(),
    )
}

/// Why `buf` is not a valid binary log (PROTOCOL §5), or None.
#[pyfunction]
fn checksum_problem(buf: PyBackedBytes) -> Option<String> {
    wire::validate_checksum(&buf).err().map(|e| e.to_string())
}

/// The SDK's `DeviceInfo` (or anything with its five attributes).
fn device_info(device: &Bound<'_, PyAny>) -> PyResult<DeviceInfo> {
    let text = |name: &str| -> PyResult<String> { device.getattr(name)?.str()?.extract() };
    Ok(DeviceInfo::new(
        app_id_of(&device.getattr("application_id")?)?,
        text("device_serial")?,
        text("device_type")?,
        text("git_version")?,
        text("git_hash")?,
    ))
}

/// An application id as the SDK takes it: an int, or a string of one.
fn app_id_of(value: &Bound<'_, PyAny>) -> PyResult<u32> {
    if let Ok(id) = value.extract::<u32>() {
        return Ok(id);
    }
    let text: String = value.str()?.extract()?;
    text.trim().parse().map_err(|_| {
        PyValueError::new_err(format!(
            "an application id is an integer from 0 to 4294967295, got {text:?}"
        ))
    })
}

fn timestamp(entry: &Bound<'_, PyAny>) -> PyResult<Option<u64>> {
    match entry.get_item("timestamp") {
        Ok(value) if !value.is_none() => Ok(Some(value.extract().map_err(|_| {
            PyValueError::new_err("a timestamp is whole seconds since the Unix epoch (an int >= 0)")
        })?)),
        _ => Ok(None),
    }
}

fn metric_list(metrics: &Bound<'_, PyAny>) -> PyResult<Vec<Metric>> {
    let mut out = Vec::new();
    for entry in metrics.try_iter()? {
        let entry = entry?;
        let name: String = entry.get_item("name")?.extract()?;
        let value = entry.get_item("value")?;
        let value = if value.is_instance_of::<pyo3::types::PyBool>() {
            MetricValue::Int(i64::from(value.extract::<bool>()?))
        } else if let Ok(n) = value.extract::<i64>() {
            MetricValue::Int(n)
        } else {
            MetricValue::Float(value.extract::<f64>()?)
        };
        let mut metric = Metric::new(name, value);
        if let Some(at) = timestamp(&entry)? {
            metric = metric.at(at);
        }
        out.push(metric);
    }
    Ok(out)
}

fn event_list(events: &Bound<'_, PyAny>) -> PyResult<Vec<Event>> {
    let mut out = Vec::new();
    for entry in events.try_iter()? {
        let entry = entry?;
        let mut event = Event::new(entry.get_item("type")?.extract::<String>()?);
        if let Some(at) = timestamp(&entry)? {
            event = event.at(at);
        }
        out.push(event);
    }
    Ok(out)
}

fn entry_app_id(entry: &Bound<'_, PyAny>) -> PyResult<Option<u32>> {
    match entry.get_item("app_id") {
        Ok(value) if !value.is_none() => Ok(Some(app_id_of(&value)?)),
        _ => Ok(None),
    }
}

fn device_metrics(devices: &Bound<'_, PyAny>) -> PyResult<Vec<DeviceMetrics>> {
    let mut out = Vec::new();
    for entry in devices.try_iter()? {
        let entry = entry?;
        let serial: String = entry.get_item("device_serial")?.extract()?;
        let mut device = DeviceMetrics::new(serial, metric_list(&entry.get_item("metrics")?)?);
        if let Some(app) = entry_app_id(&entry)? {
            device = device.app_id(app);
        }
        out.push(device);
    }
    Ok(out)
}

fn device_events(devices: &Bound<'_, PyAny>) -> PyResult<Vec<DeviceEvents>> {
    let mut out = Vec::new();
    for entry in devices.try_iter()? {
        let entry = entry?;
        let serial: String = entry.get_item("device_serial")?.extract()?;
        let mut device = DeviceEvents::new(serial, event_list(&entry.get_item("events")?)?);
        if let Some(app) = entry_app_id(&entry)? {
            device = device.app_id(app);
        }
        out.push(device);
    }
    Ok(out)
}

fn upload_receipt<'py>(py: Python<'py>, receipt: &UploadReceipt) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("topic", &receipt.topic)?;
    dict.set_item("token", receipt.token)?;
    dict.set_item("size", receipt.size)?;
    dict.set_item("header_version", receipt.header.version)?;
    dict.set_item("epoch_time_us", receipt.header.epoch_time_us)?;
    Ok(dict)
}

fn publish_receipt<'py>(py: Python<'py>, receipt: &PublishReceipt) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("topic", &receipt.topic)?;
    dict.set_item("size", receipt.size)?;
    Ok(dict)
}

fn telemetry_receipt<'py>(
    py: Python<'py>,
    receipt: &TelemetryReceipt,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("topic", &receipt.topic)?;
    dict.set_item("size", receipt.size)?;
    dict.set_item("compressed", receipt.compressed)?;
    Ok(dict)
}

fn outbox_status<'py>(py: Python<'py>, status: &OutboxStatus) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("dir", &status.dir)?;
    dict.set_item("queued", status.queued)?;
    dict.set_item("queued_bytes", status.queued_bytes)?;
    dict.set_item("oldest_age", status.oldest_age.map(|d| d.as_secs_f64()))?;
    dict.set_item("in_flight", status.in_flight)?;
    dict.set_item("dead", status.dead)?;
    dict.set_item("delivered", status.delivered)?;
    dict.set_item("evicted", status.evicted)?;
    dict.set_item("corrupt", status.corrupt)?;
    dict.set_item("last_error", &status.last_error)?;
    dict.set_item("failed_attempts", status.failed_attempts)?;
    Ok(dict)
}

/// A warning on the `ulogger_cloud` logger.
fn warn(py: Python<'_>, message: &str) {
    let logged = py
        .import("logging")
        .and_then(|logging| logging.call_method1("getLogger", ("ulogger_cloud",)))
        .and_then(|logger| logger.call_method1("warning", ("%s", message)));
    if let Err(e) = logged {
        e.print(py);
    }
}

/// The module `ulogger_cloud._native`.
#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<TokenStore>()?;
    module.add_class::<Engine>()?;
    module.add_class::<HttpEngine>()?;
    module.add_class::<LogConfigIter>()?;
    module.add_class::<bridge::Inbox>()?;
    module.add_class::<bridge::Completion>()?;
    module.add_function(wrap_pyfunction!(checksum_problem, module)?)?;
    module.add("ENGINE_VERSION", env!("CARGO_PKG_VERSION"))?;
    logging::install();
    Ok(())
}
