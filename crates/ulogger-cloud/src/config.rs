//! Connection settings, validated once when a client is built.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::tls;
use crate::wire::Topics;

/// The platform's MQTT endpoint.
pub const DEFAULT_BROKER: &str = "mqtt.ulogger.ai";
/// The platform's MQTT-over-TLS port.
pub const DEFAULT_PORT: u16 = 8883;

/// The group id topics carry by default: `0`, "no groups" (PROTOCOL §2).
/// The platform routes only topics with a group level.
pub const DEFAULT_GROUP_ID: u32 = 0;

/// How the connection to the broker is secured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Security {
    /// TLS (1.2 or newer). The broker's certificate must chain to the CA
    /// file if one is set, else to the public web roots (which include the
    /// platform's Amazon roots). The client certificate, when set, is
    /// presented for mutual TLS, which the platform requires.
    #[default]
    Tls,
    /// No encryption at all. Only for a local broker (the emulator, a
    /// development mosquitto); never chosen implicitly.
    Plaintext,
}

/// How fast the client may publish on its connection.
///
/// The platform's broker (AWS IoT Core) discards publishes beyond 100 per
/// second on a connection (they get no PUBACK, so they would fail with an
/// acknowledgement timeout) and delays data beyond 512 KiB/s. A client
/// paces itself below both by default ([`Pacing::platform`]); a local
/// broker or a benchmark can turn pacing off ([`Pacing::off`]).
///
/// Every PUBLISH the connection writes counts: uploads, core dumps, boot
/// registrations and re-sends after a reconnect. The burst is small (a
/// tenth of a second's worth, at least one publish), so that jitter on the
/// way cannot make a broker that counts over a whole second see more than
/// its limit. A publish larger than the byte budget still goes, and the
/// ones after it wait until the rate is back under the limit. Waiting for
/// the budget does not count against the acknowledgement timeout.
///
/// ```
/// use ulogger_cloud::{MqttConfig, Pacing};
///
/// assert_eq!(Pacing::default(), Pacing::platform());
/// // Half the platform's publish rate, the platform's byte rate.
/// let config = MqttConfig::new(42).pacing(Pacing::platform().publish_rate(50));
/// // No pacing at all, e.g. against a local mosquitto.
/// let local = MqttConfig::new(42).pacing(Pacing::off());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Pacing {
    pub(crate) publishes_per_second: Option<u64>,
    pub(crate) bytes_per_second: Option<u64>,
}

impl Pacing {
    /// The platform's per-connection limits: 100 publishes and 512 KiB
    /// (524,288 bytes) per second. The default.
    pub const fn platform() -> Pacing {
        Pacing {
            publishes_per_second: Some(100),
            bytes_per_second: Some(512 * 1024),
        }
    }

    /// No pacing: publishes go as fast as the connection takes them. For
    /// local brokers and benchmarks; against the platform, publishes
    /// beyond its limits are lost (and time out).
    pub const fn off() -> Pacing {
        Pacing {
            publishes_per_second: None,
            bytes_per_second: None,
        }
    }

    /// At most `publishes_per_second` publishes and `bytes_per_second`
    /// bytes (whole MQTT packets) per second. Both must be at least 1.
    pub const fn new(publishes_per_second: u64, bytes_per_second: u64) -> Pacing {
        Pacing {
            publishes_per_second: Some(publishes_per_second),
            bytes_per_second: Some(bytes_per_second),
        }
    }

    /// Limits publishes per second (at least 1), keeping the byte limit
    /// as it is.
    pub const fn publish_rate(mut self, publishes_per_second: u64) -> Pacing {
        self.publishes_per_second = Some(publishes_per_second);
        self
    }

    /// Limits bytes per second (at least 1; whole MQTT packets count),
    /// keeping the publish limit as it is.
    pub const fn byte_rate(mut self, bytes_per_second: u64) -> Pacing {
        self.bytes_per_second = Some(bytes_per_second);
        self
    }

    /// True when neither publishes nor bytes are limited.
    pub const fn is_off(&self) -> bool {
        self.publishes_per_second.is_none() && self.bytes_per_second.is_none()
    }

    fn validate(&self) -> Result<(), Error> {
        if self.publishes_per_second == Some(0) {
            return Err(Error::config(
                "pacing",
                "the publish rate must be at least 1 per second (use Pacing::off() for none)",
            ));
        }
        if self.bytes_per_second == Some(0) {
            return Err(Error::config(
                "pacing",
                "the byte rate must be at least 1 per second (use Pacing::off() for none)",
            ));
        }
        Ok(())
    }
}

impl Default for Pacing {
    fn default() -> Pacing {
        Pacing::platform()
    }
}

/// How fast a client may register devices (boot requests, PROTOCOL §3).
///
/// The platform raises an alarm on the rate of boot messages and may
/// quarantine the customer whose devices cause it: every certificate of
/// that customer is detached and all its connections are refused until an
/// operator acts. A gateway therefore caps its registrations: a token
/// bucket shared by all the client's connections, `per_second` on average
/// with bursts of up to `burst`. A registration that has to wait for the
/// cap says so in the log. Known devices, whose tokens are cached, never
/// register again.
///
/// ```
/// use ulogger_cloud::{MqttConfig, RegistrationLimit};
/// let config = MqttConfig::new(42).registration_limit(RegistrationLimit::new(5, 10));
/// # let _ = config;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct RegistrationLimit {
    pub(crate) per_second: Option<u32>,
    pub(crate) burst: u32,
}

impl RegistrationLimit {
    /// The default: 10 registrations per second, bursts of 20. A gateway
    /// that starts with 1,000 unknown devices registers them all in under
    /// two minutes, and a fleet of such gateways stays far from an alarm.
    pub const fn platform() -> RegistrationLimit {
        RegistrationLimit {
            per_second: Some(10),
            burst: 20,
        }
    }

    /// At most `per_second` registrations per second on average, in
    /// bursts of at most `burst`. Both must be at least 1.
    pub const fn new(per_second: u32, burst: u32) -> RegistrationLimit {
        RegistrationLimit {
            per_second: Some(per_second),
            burst,
        }
    }

    /// No cap: for local brokers and benchmarks only. Against the
    /// platform, a registration storm can get the customer quarantined.
    pub const fn off() -> RegistrationLimit {
        RegistrationLimit {
            per_second: None,
            burst: 0,
        }
    }

    fn validate(self) -> Result<(), Error> {
        if self.per_second == Some(0) || (self.per_second.is_some() && self.burst == 0) {
            return Err(Error::config(
                "registration_limit",
                "the rate and the burst must be at least 1 (use RegistrationLimit::off() for none)",
            ));
        }
        Ok(())
    }
}

impl Default for RegistrationLimit {
    fn default() -> RegistrationLimit {
        RegistrationLimit::platform()
    }
}

/// Where and how to connect, with the Python SDK's fields and defaults.
///
/// Setters never fail; [`ClientBuilder::build`](crate::ClientBuilder::build)
/// checks everything at once (ids, files readable, key matching the
/// certificate) and names what is wrong.
///
/// ```
/// use std::time::Duration;
/// use ulogger_cloud::MqttConfig;
///
/// let config = MqttConfig::new(42)
///     .client_cert("device.pem.crt", "device.pem.key")
///     .group_id(7)
///     .token_timeout(Duration::from_secs(20));
/// assert_eq!(config.broker_host(), "mqtt.ulogger.ai");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct MqttConfig {
    pub(crate) broker: String,
    pub(crate) port: u16,
    pub(crate) customer_id: u32,
    pub(crate) group_id: Option<u32>,
    pub(crate) topic_prefix: String,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) security: Security,
    pub(crate) token_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) ack_timeout: Duration,
    pub(crate) keep_alive: Duration,
    pub(crate) max_inflight: u16,
    pub(crate) max_subscriptions: u16,
    pub(crate) pacing: Pacing,
    pub(crate) registration_limit: RegistrationLimit,
    pub(crate) client_id_suffix: Option<String>,
    pub(crate) connections: usize,
    pub(crate) max_reconnect_delay: Duration,
}

impl MqttConfig {
    /// Settings for `customer_id` with the platform's defaults: broker
    /// `mqtt.ulogger.ai:8883`, TLS against the public roots, token timeout
    /// 15 s, connect and acknowledgement timeouts 10 s, keep-alive 30 s,
    /// at most 100 unacknowledged publishes and 50 subscriptions, publishes
    /// paced to 100/s and 512 KiB/s (AWS IoT's limits, see [`Pacing`]),
    /// group `0` (the topic layout the platform routes: `0` means "no
    /// groups", as in the Python SDK 1.x) and no topic prefix.
    pub fn new(customer_id: u32) -> Self {
        MqttConfig {
            broker: DEFAULT_BROKER.to_owned(),
            port: DEFAULT_PORT,
            customer_id,
            group_id: Some(DEFAULT_GROUP_ID),
            topic_prefix: String::new(),
            cert_file: None,
            key_file: None,
            ca_file: None,
            security: Security::Tls,
            token_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(30),
            max_inflight: 100,
            max_subscriptions: 50,
            pacing: Pacing::platform(),
            registration_limit: RegistrationLimit::platform(),
            client_id_suffix: None,
            connections: 1,
            max_reconnect_delay: crate::transport::backoff::DEFAULT_MAX_DELAY,
        }
    }

    /// The broker's host name or IP address.
    pub fn broker(mut self, host: impl Into<String>) -> Self {
        self.broker = host.into();
        self
    }

    /// The broker's port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The client certificate and its private key (PEM files), for mutual
    /// TLS.
    pub fn client_cert(mut self, cert_file: impl AsRef<Path>, key_file: impl AsRef<Path>) -> Self {
        self.cert_file = Some(cert_file.as_ref().to_path_buf());
        self.key_file = Some(key_file.as_ref().to_path_buf());
        self
    }

    /// A PEM file of CA certificates to trust instead of the public roots
    /// (a local broker, a test CA).
    pub fn ca_file(mut self, ca_file: impl AsRef<Path>) -> Self {
        self.ca_file = Some(ca_file.as_ref().to_path_buf());
        self
    }

    /// The group id in the topics' group level (default `0`, "no
    /// groups"). Also turns [`MqttConfig::legacy_topics`] off.
    pub fn group_id(mut self, group_id: u32) -> Self {
        self.group_id = Some(group_id);
        self
    }

    /// Uses the original topic layout, without the group level
    /// (`binlog/v0/{customer}/{app}`, as the Python SDK 0.3.0 and older
    /// firmware had it), for old brokers and bridges that expect it.
    ///
    /// **The uLogger cloud does not route this layout**: its broker
    /// acknowledges such a publish and then no rule stores it. A client
    /// built with it logs a warning once. [`MqttConfig::group_id`] turns
    /// it off again.
    pub fn legacy_topics(mut self) -> Self {
        self.group_id = None;
        self
    }

    /// The group id in the topics, or `None` with
    /// [`MqttConfig::legacy_topics`].
    pub fn group(&self) -> Option<u32> {
        self.group_id
    }

    /// A prefix put before every topic as-is (include any trailing `/`).
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = prefix.into();
        self
    }

    /// How the connection is secured. [`Security::Plaintext`] must be asked
    /// for explicitly, and is logged when used.
    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// How long to wait for the cloud's answer to a boot registration.
    pub fn token_timeout(mut self, timeout: Duration) -> Self {
        self.token_timeout = timeout;
        self
    }

    /// How long an operation waits for a connection to the broker.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a publish or subscribe waits for the broker's
    /// acknowledgement once it has been written to the connection. Time
    /// spent before that, waiting for [`Pacing`], for room in the inflight
    /// window or for a free subscription slot, does not count.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// The MQTT keep-alive interval (whole seconds, at most 65,535 s).
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.keep_alive = interval;
        self
    }

    /// How many publishes may await their PUBACK at once on the connection.
    pub fn max_inflight(mut self, max: u16) -> Self {
        self.max_inflight = max;
        self
    }

    /// How many topics the connection may be subscribed to at once (AWS
    /// IoT allows 50). A registration subscribes to its device's reply
    /// topic until the token arrives; beyond this many at once, a
    /// registration waits for a free slot, and the wait does not count
    /// against any timeout.
    pub fn max_subscriptions(mut self, max: u16) -> Self {
        self.max_subscriptions = max;
        self
    }

    /// How fast the connection may publish. Default: [`Pacing::platform`].
    pub fn pacing(mut self, pacing: Pacing) -> Self {
        self.pacing = pacing;
        self
    }

    /// How fast devices may be registered. Default:
    /// [`RegistrationLimit::platform`].
    pub fn registration_limit(mut self, limit: RegistrationLimit) -> Self {
        self.registration_limit = limit;
        self
    }

    /// The part of the MQTT client id after `cust-{customer_id}-`.
    /// Default: `gw-` and 16 random hex digits, so that two gateways never
    /// share an id (the broker would disconnect one for the other).
    pub fn client_id_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.client_id_suffix = Some(suffix.into());
        self
    }

    /// How many connections the client opens to share the load (default
    /// 1, at most 32), for a gateway that needs more than one
    /// connection's rate (AWS IoT's limits are per connection). Each has
    /// its own client id (the suffix followed by `-1`, `-2`, ...), its own
    /// pacing and its own subscriptions; publishes and registrations go to
    /// the connected ones in turn.
    pub fn connections(mut self, count: usize) -> Self {
        self.connections = count;
        self
    }

    /// The longest wait between two connection attempts (default 5 s, so
    /// a gateway is back within seconds of the broker's return). Waits
    /// grow from 1 s, doubling with each failure, with jitter. A large
    /// fleet sharing one broker may want a longer cap, to spread its
    /// reconnects after an outage.
    pub fn max_reconnect_delay(mut self, delay: Duration) -> Self {
        self.max_reconnect_delay = delay;
        self
    }

    /// The broker's host.
    pub fn broker_host(&self) -> &str {
        &self.broker
    }

    /// The broker's port.
    pub fn broker_port(&self) -> u16 {
        self.port
    }

    /// The customer id.
    pub fn customer_id(&self) -> u32 {
        self.customer_id
    }

    /// Checks every setting as [`ClientBuilder::build`](crate::ClientBuilder::build)
    /// does (ids, timeouts, the certificate, key and CA files, the key
    /// matching the certificate) without connecting, and returns the TLS
    /// configuration a connection would use (`None` without TLS).
    ///
    /// For diagnostics that walk the connection a step at a time (`ulogger
    /// check`): a handshake made with it is the client's own.
    ///
    /// # Errors
    ///
    /// The error [`ClientBuilder::build`](crate::ClientBuilder::build) would
    /// return for this configuration ([`ErrorKind::File`](crate::ErrorKind::File),
    /// [`ErrorKind::KeyMismatch`](crate::ErrorKind::KeyMismatch),
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig)).
    pub fn tls_client_config(&self) -> Result<Option<Arc<rustls::ClientConfig>>, Error> {
        Ok(self.validate_pool()?.into_iter().next().and_then(|s| s.tls))
    }

    /// The settings of each connection of the client: one, or
    /// [`MqttConfig::connections`] of them with distinct client ids.
    pub(crate) fn validate_pool(&self) -> Result<Vec<Settings>, Error> {
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return Err(Error::config(
                "connections",
                format!("must be between 1 and {MAX_CONNECTIONS}"),
            ));
        }
        let base = self.validate()?;
        if self.connections == 1 {
            return Ok(vec![base]);
        }
        (1..=self.connections)
            .map(|i| {
                let client_id = format!("{}-{i}", base.client_id);
                if client_id.len() > MAX_CLIENT_ID_LEN {
                    return Err(Error::config(
                        "client_id_suffix",
                        format!("client id {client_id:?} is longer than {MAX_CLIENT_ID_LEN} bytes"),
                    ));
                }
                Ok(Settings {
                    client_id,
                    ..base.clone()
                })
            })
            .collect()
    }

    /// Checks every field and loads the TLS material.
    pub(crate) fn validate(&self) -> Result<Settings, Error> {
        if self.broker.is_empty() {
            return Err(Error::config("broker", "is empty"));
        }
        if self.port == 0 {
            return Err(Error::config("port", "must not be 0"));
        }
        let topics = Topics::new(self.topic_prefix.clone(), self.customer_id, self.group_id)?;
        // Once per process: a gateway that builds clients in a loop should
        // not repeat it.
        static LEGACY_WARNED: std::sync::Once = std::sync::Once::new();
        if self.group_id.is_none() {
            LEGACY_WARNED.call_once(|| {
                tracing::warn!(
                    example = %topics.binlog(1).unwrap_or_default(),
                    "legacy topic layout (no group level) as configured: the uLogger cloud \
                     acknowledges but does not route these topics; use a group id (0 for none) \
                     unless a broker or bridge of your own expects this layout"
                )
            });
        }
        for (field, value) in [
            ("token_timeout", self.token_timeout),
            ("connect_timeout", self.connect_timeout),
            ("ack_timeout", self.ack_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::config(field, "must be longer than zero"));
            }
        }
        let keep_alive = u16::try_from(self.keep_alive.as_secs())
            .map_err(|_| Error::config("keep_alive", "must be at most 65,535 s"))?;
        if self.max_inflight == 0 {
            return Err(Error::config("max_inflight", "must be at least 1"));
        }
        if self.max_subscriptions == 0 {
            return Err(Error::config("max_subscriptions", "must be at least 1"));
        }
        self.pacing.validate()?;
        self.registration_limit.validate()?;
        let client_id = client_id(self.customer_id, self.client_id_suffix.as_deref())?;
        let tls = match self.security {
            Security::Plaintext => {
                if self.cert_file.is_some() || self.ca_file.is_some() {
                    return Err(Error::config(
                        "security",
                        "plaintext was chosen but TLS files are set; refusing to drop TLS silently",
                    ));
                }
                tracing::warn!(
                    broker = %self.broker,
                    port = self.port,
                    "connecting WITHOUT TLS, as configured (Security::Plaintext)"
                );
                None
            }
            Security::Tls => Some(Arc::new(tls::client_config(
                self.ca_file.as_deref(),
                self.cert_file.as_deref().zip(self.key_file.as_deref()),
            )?)),
        };
        Ok(Settings {
            host: self.broker.clone(),
            port: self.port,
            client_id,
            topics,
            tls,
            token_timeout: self.token_timeout,
            connect_timeout: self.connect_timeout,
            ack_timeout: self.ack_timeout,
            keep_alive,
            max_inflight: self.max_inflight,
            max_subscriptions: self.max_subscriptions,
            pacing: self.pacing,
            max_reconnect_delay: self.max_reconnect_delay,
        })
    }
}

/// AWS IoT's limit on client ids.
const MAX_CLIENT_ID_LEN: usize = 128;
/// The most connections one client opens.
const MAX_CONNECTIONS: usize = 32;

fn client_id(customer_id: u32, suffix: Option<&str>) -> Result<String, Error> {
    let suffix = match suffix {
        Some(s) => s.to_owned(),
        None => format!("gw-{:016x}", rand::random::<u64>()),
    };
    if suffix.is_empty() {
        return Err(Error::config("client_id_suffix", "is empty"));
    }
    if let Some(c) = suffix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(Error::config(
            "client_id_suffix",
            format!("character {c:?} is not allowed (use A-Z a-z 0-9 - _ . :)"),
        ));
    }
    let id = format!("cust-{customer_id}-{suffix}");
    if id.len() > MAX_CLIENT_ID_LEN {
        return Err(Error::config(
            "client_id_suffix",
            format!("client id {id:?} is longer than {MAX_CLIENT_ID_LEN} bytes"),
        ));
    }
    Ok(id)
}

/// Everything a connection needs, checked.
#[derive(Clone)]
pub(crate) struct Settings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub topics: Topics,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub token_timeout: Duration,
    pub connect_timeout: Duration,
    pub ack_timeout: Duration,
    pub keep_alive: u16,
    pub max_inflight: u16,
    pub max_subscriptions: u16,
    pub pacing: Pacing,
    pub max_reconnect_delay: Duration,
}

impl Settings {
    pub fn broker(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn client_id_has_customer_prefix_and_unique_suffix() {
        let a = client_id(42, None).unwrap();
        let b = client_id(42, None).unwrap();
        assert!(a.starts_with("cust-42-gw-"), "{a}");
        assert_ne!(a, b);
        assert_eq!(client_id(7, Some("bench")).unwrap(), "cust-7-bench");
    }

    #[test]
    fn client_id_suffix_is_checked() {
        for bad in ["", "a/b", "a+b", "x#", &"y".repeat(200)] {
            let err = client_id(1, Some(bad)).unwrap_err();
            assert!(
                matches!(
                    err.kind(),
                    ErrorKind::InvalidConfig {
                        field: "client_id_suffix",
                        ..
                    }
                ),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn plaintext_with_tls_files_is_refused() {
        let err = MqttConfig::new(1)
            .security(Security::Plaintext)
            .ca_file("ca.pem")
            .validate()
            .err()
            .unwrap();
        assert!(err.to_string().contains("refusing to drop TLS"), "{err}");
    }

    #[test]
    fn zero_timeouts_and_keep_alive_overflow_are_refused() {
        let base = || MqttConfig::new(1).security(Security::Plaintext);
        let err = base().ack_timeout(Duration::ZERO).validate().err().unwrap();
        assert!(err.to_string().contains("ack_timeout"), "{err}");
        let err = base()
            .keep_alive(Duration::from_secs(70_000))
            .validate()
            .err()
            .unwrap();
        assert!(err.to_string().contains("keep_alive"), "{err}");
        let err = base().max_inflight(0).validate().err().unwrap();
        assert!(err.to_string().contains("max_inflight"), "{err}");
    }

    #[test]
    fn pacing_and_subscription_limits_default_to_the_platform_and_are_checked() {
        let base = || MqttConfig::new(1).security(Security::Plaintext);
        let settings = base().validate().unwrap();
        assert_eq!(settings.pacing, Pacing::platform());
        assert_eq!(settings.pacing, Pacing::new(100, 512 * 1024));
        assert_eq!(settings.max_subscriptions, 50);
        assert!(Pacing::off().is_off());
        assert!(!Pacing::off().byte_rate(1).is_off());

        for pacing in [
            Pacing::new(0, 1),
            Pacing::new(1, 0),
            Pacing::off().publish_rate(0),
            Pacing::platform().byte_rate(0),
        ] {
            let err = base().pacing(pacing).validate().err().unwrap();
            assert!(
                matches!(
                    err.kind(),
                    ErrorKind::InvalidConfig {
                        field: "pacing",
                        ..
                    }
                ),
                "{pacing:?}: {err}"
            );
        }
        let err = base().max_subscriptions(0).validate().err().unwrap();
        assert!(err.to_string().contains("max_subscriptions"), "{err}");

        // Extremes are accepted: they mean "practically unlimited".
        let settings = base()
            .pacing(Pacing::new(u64::MAX, u64::MAX))
            .max_subscriptions(u16::MAX)
            .ack_timeout(Duration::MAX)
            .connect_timeout(Duration::MAX)
            .token_timeout(Duration::MAX)
            .validate()
            .unwrap();
        assert_eq!(settings.ack_timeout, Duration::MAX);
    }

    #[test]
    fn missing_certificate_file_is_named() {
        let err = MqttConfig::new(1)
            .client_cert("/nonexistent/dev.pem.crt", "/nonexistent/dev.pem.key")
            .validate()
            .err()
            .unwrap();
        assert!(
            matches!(err.kind(), ErrorKind::File { path, .. } if path.ends_with("dev.pem.crt")),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("/nonexistent/dev.pem.crt"),
            "{err}"
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn duration() -> impl Strategy<Value = Duration> {
            prop_oneof![
                Just(Duration::ZERO),
                Just(Duration::MAX),
                any::<u64>().prop_map(Duration::from_secs),
                any::<u64>().prop_map(Duration::from_nanos),
            ]
        }

        proptest! {
            // No duration, size or count a user can pass may panic:
            // each is refused with a typed error or accepted.
            #[test]
            fn any_settings_are_refused_or_accepted_never_a_panic(
                timeouts in (duration(), duration(), duration(), duration(), duration()),
                max_inflight in any::<u16>(),
                max_subscriptions in any::<u16>(),
                connections in any::<usize>(),
                rates in (any::<u64>(), any::<u64>()),
                customer_id in any::<u32>(),
                port in any::<u16>(),
            ) {
                let (token, connect, ack, keep_alive, reconnect) = timeouts;
                let config = MqttConfig::new(customer_id)
                    .broker("127.0.0.1")
                    .port(port)
                    .security(Security::Plaintext)
                    .token_timeout(token)
                    .connect_timeout(connect)
                    .ack_timeout(ack)
                    .keep_alive(keep_alive)
                    .max_reconnect_delay(reconnect)
                    .max_inflight(max_inflight)
                    .max_subscriptions(max_subscriptions)
                    .connections(connections)
                    .pacing(Pacing::new(rates.0, rates.1));
                match config.validate_pool() {
                    Ok(settings) => {
                        prop_assert_eq!(settings.len(), connections);
                        prop_assert!(settings.iter().all(|s| s.client_id.len() <= MAX_CLIENT_ID_LEN));
                    }
                    Err(e) => prop_assert!(matches!(e.kind(), ErrorKind::InvalidConfig { .. }), "{e}"),
                }
            }
        }
    }
}
