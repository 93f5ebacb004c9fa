//! How to start an emulator: [`EmulatorConfig`] and, for attach mode,
//! [`AttachTo`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ulogger_wire::Topics;

use crate::faults::Faults;
use crate::limits::PlatformLimits;
use crate::EmulatorError;

/// Settings of an [`crate::Emulator`]. Setters never fail;
/// [`crate::Emulator::start`] checks everything once.
///
/// ```
/// use ulogger_emulator::{EmulatorConfig, Faults};
/// let config = EmulatorConfig::new(42)
///     .group_id(7)
///     .topic_prefix("ulogger/")
///     .faults(Faults::default());
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub(crate) customer_id: u32,
    pub(crate) group_id: u32,
    pub(crate) legacy_topics: bool,
    pub(crate) boot_guard: Option<u32>,
    pub(crate) topic_prefix: String,
    pub(crate) listen: SocketAddr,
    /// Whether `listen` is a [`crate::PortHold`]'s port.
    pub(crate) listen_shared: bool,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) plaintext: bool,
    pub(crate) faults: Faults,
    pub(crate) limits: PlatformLimits,
    pub(crate) stall_timeout: Duration,
    pub(crate) attach: Option<AttachTo>,
    pub(crate) http_listen: SocketAddr,
}

/// [`EmulatorConfig::stall_timeout`]'s default.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for EmulatorConfig {
    /// Customer id 1, otherwise as [`EmulatorConfig::new`].
    fn default() -> Self {
        EmulatorConfig::new(1)
    }
}

impl EmulatorConfig {
    /// An emulator for `customer_id`: listens on 127.0.0.1 on a free port,
    /// mutual TLS, a temporary data directory removed when the emulator is
    /// dropped, group 0 in what it prints and pushes (it routes every
    /// group, as the platform does), the original topic layout unrouted,
    /// no topic prefix,
    /// AWS IoT Core's per-connection limits ([`PlatformLimits::aws`]), a
    /// 10 s [`EmulatorConfig::stall_timeout`].
    pub fn new(customer_id: u32) -> Self {
        EmulatorConfig {
            customer_id,
            group_id: 0,
            legacy_topics: false,
            boot_guard: None,
            topic_prefix: String::new(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            listen_shared: false,
            data_dir: None,
            plaintext: false,
            faults: Faults::default(),
            limits: PlatformLimits::aws(),
            stall_timeout: STALL_TIMEOUT,
            attach: None,
            http_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        }
    }

    /// The address the broker listens on (port 0: any free port; the
    /// bound address is [`crate::Emulator::addr`]).
    #[must_use]
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self.listen_shared = false;
        self
    }

    /// The broker listens on `hold`'s port, which stays held (connections
    /// refused, the port nobody else's) once this emulator is gone: for
    /// a broker that goes away and comes back on the same address.
    #[must_use]
    pub fn listen_on(mut self, hold: &crate::PortHold) -> Self {
        self.listen = hold.addr();
        self.listen_shared = true;
        self
    }

    /// Where records, payloads and certificates go. The directory is kept
    /// after the emulator stops, certificates found in its `certs/` are
    /// reused, and records are synced to disk as they are written.
    /// Default: a temporary directory removed on drop (no syncs).
    #[must_use]
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Plain MQTT over TCP instead of mutual TLS.
    #[must_use]
    pub fn plaintext(mut self, yes: bool) -> Self {
        self.plaintext = yes;
        self
    }

    /// The group id log configurations are pushed on and the printed
    /// commands and settings use (default 0, "no groups"). Publishes are
    /// routed whatever their group, as the platform's rules do.
    #[must_use]
    pub fn group_id(mut self, group: u32) -> Self {
        self.group_id = group;
        self
    }

    /// Routes the original topic layout without the group level too
    /// (`binlog/v0/{C}/{A}`), for tests of old deployments. The platform
    /// does not: by default such publishes are acknowledged and recorded
    /// as [`crate::RecordKind::Unrouted`].
    #[must_use]
    pub fn legacy_topics(mut self, yes: bool) -> Self {
        self.legacy_topics = yes;
        self
    }

    /// Simulates the platform's alarm on registration storms: past `rate`
    /// boot messages within one second, the customer is quarantined, so
    /// every connection is closed and refused until the emulator
    /// restarts (and a rejected record says so). Default: off.
    #[must_use]
    pub fn boot_guard(mut self, rate: Option<u32>) -> Self {
        self.boot_guard = rate;
        self
    }

    /// A prefix prepended as-is to every topic (include the trailing `/`).
    #[must_use]
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = prefix.into();
        self
    }

    /// Faults switched on from the start.
    #[must_use]
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// The per-connection limits the broker enforces on clients (default:
    /// AWS IoT Core's). [`PlatformLimits::unlimited`] lifts them, e.g. for
    /// benchmarks or tests about something else. Attach mode runs no
    /// broker, so there they do not apply.
    #[must_use]
    pub fn limits(mut self, limits: PlatformLimits) -> Self {
        self.limits = limits;
        self
    }

    /// How long the broker waits for a client that has begun but not
    /// finished: a new connection must have sent its whole CONNECT within
    /// this, and a connection that sent part of a packet is closed when no
    /// further byte comes for this long (time the byte rate held reading
    /// back does not count). Default 10 s; tests shorten it. Zero is
    /// refused by [`crate::Emulator::start`].
    #[must_use]
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// The address the HTTP telemetry endpoints listen on (default
    /// 127.0.0.1, any free port; the bound address is
    /// [`crate::Emulator::http_addr`]). HTTPS with the emulator's CA when
    /// the broker uses TLS, plain HTTP otherwise (plaintext or attach
    /// mode).
    #[must_use]
    pub fn http_listen(mut self, addr: SocketAddr) -> Self {
        self.http_listen = addr;
        self
    }

    /// Attach mode: run no broker; connect the cloud side as a client to
    /// an external broker instead.
    #[must_use]
    pub fn attach(mut self, broker: AttachTo) -> Self {
        self.attach = Some(broker);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), EmulatorError> {
        if self.topic_prefix.contains(['+', '#', '\0']) {
            return Err(EmulatorError::InvalidConfig {
                field: "topic_prefix",
                reason: format!(
                    "{:?} contains a wildcard or NUL, which topics cannot",
                    self.topic_prefix
                ),
            });
        }
        self.limits.validate()?;
        if self.stall_timeout.is_zero() {
            return Err(EmulatorError::InvalidConfig {
                field: "stall_timeout",
                reason: "0 would close every connection before its CONNECT".into(),
            });
        }
        if let Some(attach) = &self.attach {
            attach.validate()?;
        }
        self.topics().map(drop)
    }

    /// The topics of the emulator's own customer, prefix and group.
    pub(crate) fn topics(&self) -> Result<Topics, EmulatorError> {
        Topics::new(
            self.topic_prefix.clone(),
            self.customer_id,
            Some(self.group_id),
        )
        .map_err(|e| EmulatorError::InvalidConfig {
            field: "topic_prefix",
            reason: e.to_string(),
        })
    }
}

/// An external broker for attach mode, and how to log in to it.
///
/// ```
/// use ulogger_emulator::AttachTo;
/// let broker = AttachTo::new("127.0.0.1", 1883).credentials("user", "secret");
/// # let _ = broker;
/// ```
#[derive(Clone)]
pub struct AttachTo {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: Option<AttachTls>,
    pub(crate) credentials: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub(crate) struct AttachTls {
    pub(crate) ca_cert: PathBuf,
    pub(crate) client: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for AttachTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of logs.
        f.debug_struct("AttachTo")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field(
                "username",
                &self.credentials.as_ref().map(|(user, _)| user.as_str()),
            )
            .finish()
    }
}

impl AttachTo {
    /// A broker at `host:port`, plain MQTT, no credentials.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        AttachTo {
            host: host.into(),
            port,
            tls: None,
            credentials: None,
        }
    }

    /// TLS trusting the CA certificates in `ca_cert`, without a client
    /// certificate.
    #[must_use]
    pub fn tls(mut self, ca_cert: impl AsRef<Path>) -> Self {
        self.tls = Some(AttachTls {
            ca_cert: ca_cert.as_ref().to_path_buf(),
            client: None,
        });
        self
    }

    /// Mutual TLS: trust `ca_cert`, present `client_cert` with `client_key`.
    #[must_use]
    pub fn mutual_tls(
        mut self,
        ca_cert: impl AsRef<Path>,
        client_cert: impl AsRef<Path>,
        client_key: impl AsRef<Path>,
    ) -> Self {
        self.tls = Some(AttachTls {
            ca_cert: ca_cert.as_ref().to_path_buf(),
            client: Some((
                client_cert.as_ref().to_path_buf(),
                client_key.as_ref().to_path_buf(),
            )),
        });
        self
    }

    /// MQTT username and password.
    #[must_use]
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((username.into(), password.into()));
        self
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn validate(&self) -> Result<(), EmulatorError> {
        if self.host.is_empty() {
            return Err(EmulatorError::InvalidConfig {
                field: "attach.host",
                reason: "empty host".into(),
            });
        }
        if self.port == 0 {
            return Err(EmulatorError::InvalidConfig {
                field: "attach.port",
                reason: "port 0".into(),
            });
        }
        Ok(())
    }
}
