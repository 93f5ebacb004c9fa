//! The one error type of the client, and what it says about a failure.

use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::store::StoreError;
use crate::wire::{
    BootReplyError, ElfCheckError, ElfUploadReplyError, HeaderError, LogConfigError,
    TelemetryError, TextLogError, TopicError,
};

/// What went wrong, with the facts a caller needs to act on it.
///
/// Returned by every fallible operation of [`Client`](crate::Client) and its
/// builder. [`Error::kind`] says what happened; [`Error::source`] chains to
/// the underlying I/O, TLS or format error where there is one. Cloning is
/// cheap (it is shared), so one failed registration can be reported to
/// every caller that waited for it.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

/// The phase of an operation that ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Connecting to the broker (TCP, TLS handshake, MQTT CONNECT/CONNACK).
    Connect,
    /// Waiting for the broker's SUBACK.
    Subscribe,
    /// Waiting for the cloud's answer to a boot registration.
    BootReply,
    /// Waiting for the broker's PUBACK of a publish.
    Acknowledgement,
    /// Waiting for the cloud to push a log configuration.
    LogConfig,
    /// Waiting for the HTTP API's answer to a telemetry request.
    HttpRequest,
    /// Waiting for the cloud's answer to a firmware ELF upload request
    /// (the upload URL, PROTOCOL §11).
    UploadUrl,
    /// Sending a firmware ELF to its upload URL (the HTTP PUT).
    ElfPut,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connecting to the broker",
            Phase::Subscribe => "waiting for the broker's SUBACK",
            Phase::BootReply => "waiting for the boot reply (session token)",
            Phase::Acknowledgement => "waiting for the broker's PUBACK",
            Phase::LogConfig => "waiting for a log configuration from the cloud",
            Phase::HttpRequest => {
                "waiting for the HTTP API's answer (check the network, or raise the timeout)"
            }
            Phase::UploadUrl => {
                "waiting for the cloud's upload URL (check that the customer id is the \
                 certificate's and the application id is right; the cloud does not answer \
                 requests it cannot match)"
            }
            Phase::ElfPut => {
                "sending the ELF to its upload URL (check the network, or raise the timeout)"
            }
        })
    }
}

/// Which file of the configuration an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileRole {
    /// The client certificate (`*.pem.crt`).
    ClientCertificate,
    /// The client private key (`*.pem.key`).
    PrivateKey,
    /// The CA certificate(s) that the broker's certificate must chain to.
    CaCertificate,
}

impl fmt::Display for FileRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileRole::ClientCertificate => "client certificate",
            FileRole::PrivateKey => "private key",
            FileRole::CaCertificate => "CA certificate",
        })
    }
}

/// What happened. Matching on it is how callers branch on a failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration value is invalid.
    #[error("invalid configuration: {field}: {reason}")]
    InvalidConfig {
        /// The field that is wrong.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A certificate or key file could not be read or holds no usable PEM.
    #[error("{role} file {}: {reason}", path.display())]
    File {
        /// What the file was for.
        role: FileRole,
        /// The file.
        path: PathBuf,
        /// Why it is unusable.
        reason: String,
    },
    /// The private key does not belong to the client certificate.
    #[error("private key {} does not match client certificate {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A binary log failed validation (header, length or checksum).
    #[error("invalid binary log: {0}")]
    InvalidLog(#[source] HeaderError),
    /// An id cannot go into a topic, or a topic breaks the platform's rules.
    #[error("invalid topic: {0}")]
    InvalidTopic(#[source] TopicError),
    /// A metrics or events message cannot be built (empty serial or
    /// sample list, a non-finite value, ...); nothing was sent.
    #[error("invalid telemetry: {0}")]
    InvalidTelemetry(#[source] TelemetryError),
    /// Text logs cannot be sent (no entries, a bad time, an entry too
    /// large for one message); nothing was sent.
    #[error("invalid text logs: {0}")]
    InvalidTextLogs(#[source] TextLogError),
    /// The message is larger than the broker accepts; nothing was sent.
    #[error("payload of {size} bytes exceeds the broker's limit of {limit} bytes")]
    PayloadTooLarge {
        /// Size of the refused payload.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The cloud answered the boot registration with something unusable.
    #[error("invalid boot reply: {0}")]
    InvalidBootReply(#[source] BootReplyError),
    /// A log configuration pushed by the cloud could not be decoded.
    #[error("invalid log configuration: {0}")]
    InvalidLogConfig(#[source] LogConfigError),
    /// An operation ran out of time in the given phase.
    #[error("timed out {0}")]
    Timeout(Phase),
    /// The connection to the broker could not be made (DNS, TCP, TLS).
    #[error("could not connect to {broker}")]
    Connect {
        /// `host:port` of the broker.
        broker: String,
    },
    /// The broker refused the MQTT connection (CONNACK return code).
    #[error("the broker refused the connection: {reason}")]
    ConnectionRefused {
        /// The CONNACK return code, in words.
        reason: String,
    },
    /// The connection was lost while the operation was in flight.
    #[error("the connection to the broker was lost")]
    ConnectionLost,
    /// The broker refused a subscription (SUBACK failure code).
    #[error("the broker refused the subscription to {topic}")]
    SubscribeRefused {
        /// The topic filter.
        topic: String,
    },
    /// The broker sent something that breaks MQTT.
    #[error("protocol violation by the broker: {0}")]
    Protocol(String),
    /// The session-token store failed.
    #[error("session-token store: {0}")]
    Store(#[source] StoreError),
    /// The client was shut down.
    #[error("the client has been shut down")]
    Shutdown,
    /// The outbox is at a bound (bytes or records) and configured to
    /// refuse rather than evict ([`WhenFull::Reject`](crate::WhenFull)).
    #[error("the outbox is full ({records} records, {bytes} bytes): wait for delivery or raise its bounds")]
    OutboxFull {
        /// Records held.
        records: usize,
        /// Payload bytes held.
        bytes: u64,
    },
    /// Another process owns the outbox directory.
    #[error("the outbox {} is in use by {}", dir.display(), match pid { Some(pid) => format!("process {pid}"), None => "another process".to_owned() })]
    OutboxLocked {
        /// The outbox directory.
        dir: PathBuf,
        /// The owner's pid, as it wrote it in the lock file.
        pid: Option<u32>,
    },
    /// Reading or writing the outbox failed; the source says why
    /// ([`Error::is_disk_full`] tells a full disk).
    #[error("cannot {op} outbox file {}", path.display())]
    Outbox {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
    },
    /// The client has no outbox ([`ClientBuilder::outbox`](crate::ClientBuilder::outbox)).
    #[error("this client has no outbox")]
    NoOutbox,
    /// An outbox record failed for good and waits in the dead letters.
    #[error("outbox record {id} failed for good: {reason}")]
    DeadLetter {
        /// The record.
        id: crate::RecordId,
        /// Why.
        reason: String,
    },
    /// An outbox record left without being delivered (evicted at a bound,
    /// purged, or unknown to this outbox).
    #[error("outbox record {id} was removed without being delivered (evicted, purged or unknown)")]
    Evicted {
        /// The record.
        id: crate::RecordId,
    },
    /// The HTTP API refused a telemetry request: a non-2xx status, or a
    /// 2xx reply with `"success": false`. 5xx and 429 were retried first.
    #[error("the uLogger HTTP API answered {status}: {message} ({})", http_hint(*status, *attempts))]
    HttpRefused {
        /// The HTTP status.
        status: u16,
        /// What the server said (its JSON `error`, or the start of its body).
        message: String,
        /// Requests sent, retries included.
        attempts: u32,
    },
    /// The HTTP API answered 2xx with something that is not its JSON
    /// reply (`{"success": true, ...}`); the request may or may not have
    /// been stored, so it was not sent again.
    #[error("the uLogger HTTP API answered {status} with an unreadable reply: {reason} (is the base URL the uLogger API, not a proxy or login page?)")]
    InvalidHttpReply {
        /// The HTTP status.
        status: u16,
        /// What is wrong with the reply.
        reason: String,
    },
    /// The HTTP API could not be reached (DNS, TCP, TLS), retries included;
    /// the source says why.
    #[error("could not reach the uLogger HTTP API at {url} ({attempts} attempt{}): check the base URL, the network and the CA file", if *attempts == 1 { "" } else { "s" })]
    HttpConnect {
        /// The URL posted to.
        url: String,
        /// Requests tried, retries included.
        attempts: u32,
    },
    /// A step of a Bluetooth LE pull failed or ran out of time (BlueZ, the
    /// link, or what the device answered). The device keeps every buffer
    /// it was not finally acknowledged for, so pulling again later loses
    /// nothing; the source, where there is one, is BlueZ's error.
    /// [`Error::is_retryable`], except when the device is no uLogger
    /// device (step `checking the uLogger service`) or its `config` is
    /// unreadable (`decoding config`): those are
    /// [`Error::is_invalid_input`] (the wrong address, or broken firmware).
    #[error("Bluetooth LE, {step}: {reason} (the device keeps its data: pull again later; if it persists, check that bluetoothd runs and the device is in range)")]
    Ble {
        /// What was being done ("connecting", "resolving services", ...).
        step: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The file is not a firmware ELF that can be uploaded; nothing was
    /// sent.
    #[error("invalid firmware ELF: {0}")]
    InvalidElf(#[source] ElfCheckError),
    /// The cloud answered the upload request without a usable URL.
    #[error("invalid answer to the ELF upload request: {0}")]
    InvalidUploadReply(#[source] ElfUploadReplyError),
    /// The upload URL refused the ELF (a non-2xx answer to the PUT).
    /// 5xx, 408 and 429 were retried first, each time with a fresh URL.
    #[error("the ELF upload was refused with HTTP {status}: {message} ({})", elf_put_hint(*status, *attempts))]
    ElfUploadRefused {
        /// The HTTP status.
        status: u16,
        /// What the server said (its error message, or the start of its body).
        message: String,
        /// Attempts made, retries included.
        attempts: u32,
    },
    /// The upload URL could not be reached (DNS, TCP, TLS), retries
    /// included; the source says why.
    #[error("could not reach the ELF upload URL at {host} ({attempts} attempt{}): check the network and, for a private cloud, the CA file", if *attempts == 1 { "" } else { "s" })]
    ElfUploadConnect {
        /// Scheme, host and port of the URL (its path and signature are
        /// not repeated: they are a credential).
        host: String,
        /// Attempts made, retries included.
        attempts: u32,
    },
    /// An async client was built outside a Tokio runtime.
    #[error("no Tokio runtime: build the async Client inside one, or use blocking::Client")]
    NoRuntime,
}

/// The [`ErrorKind::Ble`] step of a device without the uLogger service.
#[cfg_attr(not(all(feature = "ble", target_os = "linux")), allow(dead_code))]
pub(crate) const BLE_NOT_ULOGGER: &str = "checking the uLogger service";
/// The [`ErrorKind::Ble`] step of a `config` value that does not decode.
#[cfg_attr(not(all(feature = "ble", target_os = "linux")), allow(dead_code))]
pub(crate) const BLE_BAD_CONFIG: &str = "decoding config";

/// Whether a BLE failure is the device's answer, which a retry cannot
/// change, rather than the link's or BlueZ's.
fn ble_device_at_fault(step: &str) -> bool {
    step == BLE_NOT_ULOGGER || step == BLE_BAD_CONFIG
}

/// What a person can do about an HTTP refusal.
fn http_hint(status: u16, attempts: u32) -> String {
    let retried = if attempts > 1 {
        format!("; tried {attempts} times")
    } else {
        String::new()
    };
    match status {
        401 | 403 => "the API token was refused: check ULOGGER_API_TOKEN (or --api-token)".into(),
        404 | 405 => "no such endpoint: check the base URL".into(),
        413 => "the body is too large for the server".into(),
        429 => format!("rate limited{retried}: send less often or retry later"),
        500..=599 => format!("the server failed{retried}: retry later"),
        400..=499 => "the request was refused as invalid; it was not retried".into(),
        _ => format!("unexpected status{retried}"),
    }
}

/// What a person can do about a refused ELF upload PUT.
fn elf_put_hint(status: u16, attempts: u32) -> String {
    let retried = if attempts > 1 {
        format!("; tried {attempts} times")
    } else {
        String::new()
    };
    match status {
        403 => "forbidden: the client certificate belongs to another customer, or the \
                upload URL expired"
            .into(),
        404 | 410 => "the upload URL is unknown, used or expired: upload again".into(),
        413 => "the file is too large for the upload URL".into(),
        408 | 429 | 500..=599 => format!("the storage service failed{retried}: retry later"),
        _ => format!("unexpected answer{retried}"),
    }
}

impl Error {
    /// What happened.
    pub fn kind(&self) -> &ErrorKind {
        &self.inner.kind
    }

    /// True if the operation ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind(), ErrorKind::Timeout(_))
    }

    /// The phase that timed out, if this is a timeout.
    pub fn timeout_phase(&self) -> Option<Phase> {
        match self.kind() {
            ErrorKind::Timeout(phase) => Some(*phase),
            _ => None,
        }
    }

    /// True if retrying the same call later may succeed: timeouts, lost or
    /// failed connections. False for bad input and refusals, which need a
    /// change before a retry can help.
    pub fn is_retryable(&self) -> bool {
        match self.kind() {
            ErrorKind::Timeout(_)
            | ErrorKind::Connect { .. }
            | ErrorKind::ConnectionLost
            | ErrorKind::HttpConnect { .. }
            | ErrorKind::ElfUploadConnect { .. } => true,
            ErrorKind::Ble { step, .. } => !ble_device_at_fault(step),
            ErrorKind::HttpRefused { status, .. } => *status >= 500 || *status == 429,
            ErrorKind::ElfUploadRefused { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            _ => false,
        }
    }

    /// The HTTP status the HTTP API, or an ELF upload URL, answered, for
    /// their refusals.
    pub fn http_status(&self) -> Option<u16> {
        match self.kind() {
            ErrorKind::HttpRefused { status, .. }
            | ErrorKind::InvalidHttpReply { status, .. }
            | ErrorKind::ElfUploadRefused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True if the input (configuration, log, id, payload) is at fault.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::InvalidConfig { .. }
                | ErrorKind::File { .. }
                | ErrorKind::KeyMismatch { .. }
                | ErrorKind::InvalidLog(_)
                | ErrorKind::InvalidTopic(_)
                | ErrorKind::InvalidTelemetry(_)
                | ErrorKind::InvalidTextLogs(_)
                | ErrorKind::PayloadTooLarge { .. }
                | ErrorKind::InvalidElf(_)
        ) || matches!(self.kind(), ErrorKind::Ble { step, .. } if ble_device_at_fault(step))
    }

    /// True if the broker or the cloud refused (connection, subscription,
    /// an unusable boot reply, the HTTP API's 4xx other than 429, or its
    /// unreadable reply). A 5xx or 429 is [`Error::is_retryable`] instead.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::ConnectionRefused { .. }
                | ErrorKind::SubscribeRefused { .. }
                | ErrorKind::InvalidBootReply(_)
                | ErrorKind::InvalidLogConfig(_)
                | ErrorKind::InvalidHttpReply { .. }
                | ErrorKind::InvalidUploadReply(_)
        ) || matches!(
            self.kind(),
            ErrorKind::HttpRefused { status, .. } if *status < 500 && *status != 429
        ) || matches!(
            self.kind(),
            ErrorKind::ElfUploadRefused { status, .. } if *status < 500 && *status != 429 && *status != 408
        )
    }

    /// True when an outbox write failed because the disk is full.
    pub fn is_disk_full(&self) -> bool {
        let mut source = StdError::source(self);
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                return io.kind() == std::io::ErrorKind::StorageFull;
            }
            source = cause.source();
        }
        false
    }

    /// An error of `kind` caused by `source`, for [`MqttLink`](crate::MqttLink)
    /// implementations that want to keep their MQTT client's error (it is
    /// the [`source`](StdError::source) of the result).
    pub fn from_link(kind: ErrorKind, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Error::with_source(kind, source)
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                source: Some(source.into()),
            }),
        }
    }

    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        ErrorKind::InvalidConfig {
            field,
            reason: reason.into(),
        }
        .into()
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error {
            inner: Arc::new(Inner { kind, source: None }),
        }
    }
}

impl From<HeaderError> for Error {
    fn from(e: HeaderError) -> Self {
        ErrorKind::InvalidLog(e).into()
    }
}

impl From<TopicError> for Error {
    fn from(e: TopicError) -> Self {
        ErrorKind::InvalidTopic(e).into()
    }
}

impl From<TelemetryError> for Error {
    fn from(e: TelemetryError) -> Self {
        match e {
            // One kind for "too large", whatever the payload.
            TelemetryError::TooLarge { size, limit, .. } => {
                ErrorKind::PayloadTooLarge { size, limit }.into()
            }
            e => ErrorKind::InvalidTelemetry(e).into(),
        }
    }
}

impl From<TextLogError> for Error {
    fn from(e: TextLogError) -> Self {
        ErrorKind::InvalidTextLogs(e).into()
    }
}

impl From<BootReplyError> for Error {
    fn from(e: BootReplyError) -> Self {
        ErrorKind::InvalidBootReply(e).into()
    }
}

impl From<LogConfigError> for Error {
    fn from(e: LogConfigError) -> Self {
        ErrorKind::InvalidLogConfig(e).into()
    }
}

impl From<ElfCheckError> for Error {
    fn from(e: ElfCheckError) -> Self {
        ErrorKind::InvalidElf(e).into()
    }
}

impl From<ElfUploadReplyError> for Error {
    fn from(e: ElfUploadReplyError) -> Self {
        ErrorKind::InvalidUploadReply(e).into()
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        ErrorKind::Store(e).into()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind);
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner.kind, f)
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.inner.source {
            Some(source) => Some(source.as_ref()),
            None => self.inner.kind.source(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ble(step: &'static str) -> Error {
        ErrorKind::Ble {
            step,
            reason: "x".into(),
        }
        .into()
    }

    #[test]
    fn a_ble_failure_is_retryable_unless_the_device_itself_is_wrong() {
        let link = ble("connecting");
        assert!(link.is_retryable() && !link.is_invalid_input());
        for step in [BLE_NOT_ULOGGER, BLE_BAD_CONFIG] {
            let device = ble(step);
            assert!(
                !device.is_retryable() && device.is_invalid_input(),
                "{step}"
            );
        }
    }
}
