//! Our [`Error`] as a Python exception of `ulogger_cloud.errors`: one
//! class per [`ErrorKind`], the Rust message kept, its fields as
//! attributes.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use ulogger_cloud::{Error, ErrorKind};

/// The exception class (by its name in `ulogger_cloud.errors`) and the
/// attributes for `error`.
fn class_and_fields<'py>(
    py: Python<'py>,
    error: &Error,
) -> PyResult<(&'static str, Bound<'py, PyDict>)> {
    let fields = PyDict::new(py);
    let class = match error.kind() {
        ErrorKind::InvalidConfig { field, reason } => {
            fields.set_item("field", *field)?;
            fields.set_item("reason", reason)?;
            "ConfigError"
        }
        ErrorKind::File { role, path, reason } => {
            fields.set_item("role", role.to_string())?;
            fields.set_item("path", path)?;
            fields.set_item("reason", reason)?;
            "CertificateFileError"
        }
        ErrorKind::KeyMismatch { cert, key } => {
            fields.set_item("cert", cert)?;
            fields.set_item("key", key)?;
            "KeyMismatchError"
        }
        ErrorKind::InvalidLog(e) => {
            fields.set_item("reason", e.to_string())?;
            "InvalidLogError"
        }
        ErrorKind::InvalidTopic(e) => {
            fields.set_item("reason", e.to_string())?;
            "InvalidTopicError"
        }
        ErrorKind::InvalidTelemetry(e) => {
            fields.set_item("reason", e.to_string())?;
            "InvalidTelemetryError"
        }
        ErrorKind::InvalidTextLogs(e) => {
            fields.set_item("reason", e.to_string())?;
            "InvalidTextLogsError"
        }
        ErrorKind::PayloadTooLarge { size, limit } => {
            fields.set_item("size", size)?;
            fields.set_item("limit", limit)?;
            "PayloadTooLargeError"
        }
        ErrorKind::InvalidBootReply(e) => {
            fields.set_item("reason", e.to_string())?;
            "InvalidBootReplyError"
        }
        ErrorKind::InvalidLogConfig(e) => {
            fields.set_item("reason", e.to_string())?;
            "InvalidLogConfigError"
        }
        ErrorKind::Timeout(phase) => {
            fields.set_item("phase", phase.to_string())?;
            "TimeoutError"
        }
        ErrorKind::Connect { broker } => {
            fields.set_item("broker", broker)?;
            "ConnectError"
        }
        ErrorKind::ConnectionRefused { reason } => {
            fields.set_item("reason", reason)?;
            "ConnectionRefusedError"
        }
        ErrorKind::ConnectionLost => "ConnectionLostError",
        ErrorKind::SubscribeRefused { topic } => {
            fields.set_item("topic", topic)?;
            "SubscribeRefusedError"
        }
        ErrorKind::Protocol(reason) => {
            fields.set_item("reason", reason)?;
            "ProtocolError"
        }
        ErrorKind::Store(e) => {
            fields.set_item("reason", e.to_string())?;
            "StoreError"
        }
        ErrorKind::Shutdown => "ShutdownError",
        ErrorKind::OutboxFull { records, bytes } => {
            fields.set_item("records", records)?;
            fields.set_item("bytes", bytes)?;
            "OutboxFullError"
        }
        ErrorKind::OutboxLocked { dir, pid } => {
            fields.set_item("dir", dir)?;
            fields.set_item("pid", pid)?;
            "OutboxLockedError"
        }
        ErrorKind::Outbox { op, path } => {
            fields.set_item("op", *op)?;
            fields.set_item("path", path)?;
            "OutboxError"
        }
        ErrorKind::NoOutbox => "NoOutboxError",
        ErrorKind::DeadLetter { id, reason } => {
            fields.set_item("id", id.0)?;
            fields.set_item("reason", reason)?;
            "DeadLetterError"
        }
        ErrorKind::Evicted { id } => {
            fields.set_item("id", id.0)?;
            "EvictedError"
        }
        ErrorKind::HttpRefused {
            status,
            message,
            attempts,
        } => {
            fields.set_item("status", status)?;
            fields.set_item("message", message)?;
            fields.set_item("attempts", attempts)?;
            "HttpRefusedError"
        }
        ErrorKind::InvalidHttpReply { status, reason } => {
            fields.set_item("status", status)?;
            fields.set_item("reason", reason)?;
            "InvalidHttpReplyError"
        }
        ErrorKind::HttpConnect { url, attempts } => {
            fields.set_item("url", url)?;
            fields.set_item("attempts", attempts)?;
            "HttpConnectError"
        }
        ErrorKind::InvalidElf(e) => {
            fields.set_item("reason", e.to_string())?;
            "InvalidElfError"
        }
        ErrorKind::InvalidUploadReply(e) => {
            fields.set_item("reason", e.to_string())?;
            "InvalidUploadReplyError"
        }
        ErrorKind::ElfUploadRefused {
            status,
            message,
            attempts,
        } => {
            fields.set_item("status", status)?;
            fields.set_item("message", message)?;
            fields.set_item("attempts", attempts)?;
            "ElfUploadRefusedError"
        }
        ErrorKind::ElfUploadConnect { host, attempts } => {
            fields.set_item("host", host)?;
            fields.set_item("attempts", attempts)?;
            "ElfUploadConnectError"
        }
        // Ble, NoRuntime and kinds added later: the base class.
        _ => "UloggerError",
    };
    Ok((class, fields))
}

/// The whole story of `error`: its message and its sources' messages.
fn message(error: &Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// `error` as an instance of its `ulogger_cloud.errors` class, with
/// `kind` (the class name), `retryable`, `timeout` and its fields set.
pub(crate) fn to_py(error: Error) -> PyErr {
    Python::attach(|py| match build(py, &error) {
        Ok(err) => err,
        // The errors module cannot be imported (a broken install): still
        // an exception that says what went wrong.
        Err(_) => PyRuntimeError::new_err(message(&error)),
    })
}

fn build(py: Python<'_>, error: &Error) -> PyResult<PyErr> {
    let (class, fields) = class_and_fields(py, error)?;
    let module = py.import("ulogger_cloud.errors")?;
    let instance = module.getattr(class)?.call1((message(error),))?;
    instance.setattr("kind", class)?;
    instance.setattr("retryable", error.is_retryable())?;
    instance.setattr("is_timeout", error.is_timeout())?;
    for (name, value) in fields.iter() {
        instance.setattr(name.extract::<String>()?.as_str(), value)?;
    }
    Ok(PyErr::from_value(instance))
}

/// `Result<T, Error>` into a Python result.
pub(crate) trait IntoPyResult<T> {
    /// The error as its Python exception.
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, Error> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
