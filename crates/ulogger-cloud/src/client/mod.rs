//! The async client: registration and uploads over one shared connection.

mod connection;
mod delivery;
mod elf_upload;
mod log_config;
mod pool;
mod registration;
mod telemetry;
mod text_logs;
mod turns;

pub use connection::{ConnectionChanges, ConnectionEvent, ConnectionState};
pub use elf_upload::{ElfProgress, ElfUpload, ElfUploadReceipt};
pub use telemetry::TelemetryReceipt;
pub use text_logs::TextLogReceipt;
pub use turns::Turn;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tracing::Instrument;

use crate::config::{MqttConfig, Settings};
use crate::error::{Error, ErrorKind};
use crate::link::MqttLink;
use crate::outbox::Kind;
use crate::outbox::{Outbox, OutboxConfig, OutboxStatus, RecordId};
use crate::store::SessionStore;
use crate::wire::{self, Compression, DeviceInfo, LogHeader, MAX_MESSAGE_SIZE};
use pool::{Connection, Pool};

use registration::Registrations;

pub use log_config::LogConfigs;

/// What the broker acknowledged for an uploaded binary log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UploadReceipt {
    /// The topic the log was published to.
    pub topic: String,
    /// The session token written into the log.
    pub token: u32,
    /// Bytes published (the whole buffer).
    pub size: usize,
    /// The header as published (token patched in, epoch time if stamped).
    pub header: LogHeader,
}

/// What the broker acknowledged for a raw publish.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishReceipt {
    /// The topic published to.
    pub topic: String,
    /// Bytes published.
    pub size: usize,
}

/// A connection to the uLogger cloud shared by every device a gateway
/// serves.
///
/// Cheap to clone: clones share one MQTT connection, one session-token
/// store and one registration per device at a time. The connection is
/// opened in the background when the client is built, re-opened after a
/// loss, and closed by [`Client::shutdown`] or when the last clone is
/// dropped. Every publish completes only when the broker acknowledged that
/// very publish.
///
/// ```no_run
/// use ulogger_cloud::{Client, MqttConfig, wire::DeviceInfo};
///
/// # async fn run() -> Result<(), ulogger_cloud::Error> {
/// let config = MqttConfig::new(42).client_cert("gw.pem.crt", "gw.pem.key");
/// let client = Client::builder(config).build()?;
/// let device = DeviceInfo::new(7, "SN-0001", "sensor-board", "v1.2.0", "abcdef0");
/// let log = std::fs::read("log.bin").expect("a log file");
/// let receipt = client.upload_log(&device, &log).await?;
/// println!("uploaded {} bytes to {}", receipt.size, receipt.topic);
/// client.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// Shared by the caller's handles only (not by the outbox's delivery
    /// task): when the last one goes, the client closes.
    _users: Option<Arc<Users>>,
}

/// Closes the client when the caller's last handle is dropped, even while
/// background deliveries hold the inner state.
struct Users {
    links: Vec<Connection>,
    stop_delivery: Option<tokio::sync::watch::Sender<bool>>,
}

impl Drop for Users {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop_delivery {
            stop.send_replace(true);
        }
        for link in &self.links {
            link.begin_shutdown();
        }
    }
}

struct Inner {
    pool: Pool,
    store: Arc<SessionStore>,
    registrations: Registrations,
    text_sequences: text_logs::TextSequences,
    turns: turns::Turns,
    stamp_epoch_time: bool,
    telemetry_compression: Compression,
    outbox: Option<OutboxHandle>,
}

/// The client's outbox and its delivery task.
struct OutboxHandle {
    outbox: Arc<Outbox>,
    stop: tokio::sync::watch::Sender<bool>,
    delivery: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Builds a [`Client`]; see [`Client::builder`].
#[derive(Debug)]
#[must_use]
pub struct ClientBuilder {
    config: MqttConfig,
    store: Option<Arc<SessionStore>>,
    stamp_epoch_time: bool,
    telemetry_compression: Compression,
    outbox: Option<OutboxConfig>,
    links: Links,
}

/// The application's links for bridge mode, if any.
#[derive(Default)]
struct Links(Vec<Arc<dyn MqttLink>>);

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bridged link(s)", self.0.len())
    }
}

impl ClientBuilder {
    /// Bridge mode: work on an MQTT connection the application holds
    /// instead of opening one (see [`MqttLink`] and the adapter
    /// [`RumqttcLink`](crate::RumqttcLink)). Registration, uploads, core
    /// dumps, telemetry, log configurations and the outbox's delivery all
    /// go through `link`.
    ///
    /// Topics, timeouts, the inflight window, subscription slots and
    /// [`Pacing`](crate::Pacing) still come from the [`MqttConfig`]
    /// (pacing applies: the cloud's per-connection limits hold whichever
    /// connection carries our traffic; turn it off with
    /// [`Pacing::off`](crate::Pacing::off) for a local broker that paces
    /// its bridge itself). Its connection settings (broker, port, TLS
    /// files, security, keep-alive, client id, reconnect delay) are not
    /// used: the link's owner made the connection. Call this once per
    /// link to spread the work over several connections, as
    /// [`MqttConfig::connections`] does for the client's own (which must
    /// then stay 1). [`Client::shutdown`] leaves the links connected.
    pub fn link(mut self, link: impl MqttLink) -> Self {
        self.links.0.push(Arc::new(link));
        self
    }

    /// Give the client a durable outbox in a directory it owns while it
    /// runs: [`Client::enqueue_log`] and [`Client::enqueue_core_dump`]
    /// return once a record is on disk, and the client delivers the
    /// outbox in the background, oldest first, through outages, crashes
    /// and restarts (what was not acknowledged is sent again). Opening
    /// happens in [`build`](Self::build), which then blocks on file I/O.
    pub fn outbox(mut self, config: OutboxConfig) -> Self {
        self.outbox = Some(config);
        self
    }

    /// Where session tokens are cached. Default: a fresh in-memory store.
    /// Pass a file-backed store ([`SessionStore::open_default`]) to keep
    /// tokens across runs and share them with the Python SDK; pass an
    /// `Arc` to share one store between clients.
    pub fn session_store(mut self, store: impl Into<Arc<SessionStore>>) -> Self {
        self.store = Some(store.into());
        self
    }

    /// Write the gateway's wall-clock time into version-4 headers whose
    /// `epoch_time_us` the device left at 0 ("unknown"). Default: off.
    pub fn stamp_epoch_time(mut self, stamp: bool) -> Self {
        self.stamp_epoch_time = stamp;
        self
    }

    /// When metrics and events payloads are gzip-compressed. Default:
    /// [`Compression::Auto`] (over 1,024 bytes of JSON, as the platform
    /// asks). The 128 KiB limit applies to the compressed size.
    pub fn telemetry_compression(mut self, compression: Compression) -> Self {
        self.telemetry_compression = compression;
        self
    }

    /// Checks the configuration (ids, files, key matching certificate) and
    /// starts connecting in the background.
    ///
    /// Must be called inside a Tokio runtime ([`ErrorKind::NoRuntime`]
    /// otherwise); [`blocking::Client`](crate::blocking::Client) brings its
    /// own.
    pub fn build(self) -> Result<Client, Error> {
        let links = self.links.0;
        let settings: Vec<Settings> = if links.is_empty() {
            self.config.validate_pool()?
        } else {
            vec![crate::link::bridged_settings(&self.config)?]
        };
        let outbox = self.outbox.map(Outbox::open).transpose()?.map(Arc::new);
        let pool = if links.is_empty() {
            Pool::start(settings)?
        } else {
            Pool::bridged(&settings[0], links)?
        };
        let concurrency = pool.all().len() * usize::from(pool.first().settings().max_inflight);
        let inner = Arc::new(Inner {
            pool,
            store: self
                .store
                .unwrap_or_else(|| Arc::new(SessionStore::in_memory())),
            registrations: Registrations::new(self.config.registration_limit),
            text_sequences: Default::default(),
            turns: Default::default(),
            stamp_epoch_time: self.stamp_epoch_time,
            telemetry_compression: self.telemetry_compression,
            outbox: outbox.as_ref().map(|outbox| OutboxHandle {
                outbox: outbox.clone(),
                stop: tokio::sync::watch::Sender::new(false),
                delivery: tokio::sync::Mutex::new(None),
            }),
        });
        let users = Users {
            links: inner.pool.all().to_vec(),
            stop_delivery: inner.outbox.as_ref().map(|h| h.stop.clone()),
        };
        if let Some(handle) = &inner.outbox {
            let background = Client {
                inner: inner.clone(),
                _users: None,
            };
            let task = tokio::spawn(delivery::run(
                background,
                handle.outbox.clone(),
                concurrency,
                handle.stop.subscribe(),
            ));
            if let Ok(mut slot) = handle.delivery.try_lock() {
                *slot = Some(task);
            }
        }
        Ok(Client {
            inner,
            _users: Some(Arc::new(users)),
        })
    }
}

impl Client {
    /// Starts building a client for `config`.
    pub fn builder(config: MqttConfig) -> ClientBuilder {
        ClientBuilder {
            config,
            store: None,
            stamp_epoch_time: false,
            telemetry_compression: Compression::Auto,
            outbox: None,
            links: Links::default(),
        }
    }

    /// Starts building a client in bridge mode on the application's
    /// `link`: the same as `Client::builder(config).link(link)` (see
    /// [`ClientBuilder::link`]).
    pub fn builder_with_link(config: MqttConfig, link: impl MqttLink) -> ClientBuilder {
        Client::builder(config).link(link)
    }

    /// The MQTT client id of this client's connection (in bridge mode, the
    /// one the configuration names, not the link's).
    pub fn client_id(&self) -> &str {
        &self.settings().client_id
    }

    /// The session-token store this client uses.
    pub fn session_store(&self) -> &Arc<SessionStore> {
        &self.inner.store
    }

    fn settings(&self) -> &Settings {
        self.inner.pool.first().settings()
    }

    /// Waits until the connection is up. Fails with the reason of the next
    /// failed attempt, a permanent failure (TLS trust, refused CONNECT), or
    /// a connect timeout. Operations wait for the connection by themselves;
    /// this is for failing early.
    pub async fn connected(&self) -> Result<(), Error> {
        self.inner.pool.connected().await
    }

    /// The device's session token: from the store if it holds one for this
    /// firmware (`git_hash`), else from one boot registration. Concurrent
    /// calls for one serial share a single registration; different devices
    /// register concurrently. The token is stored before it is returned.
    pub async fn session_token(&self, device: &DeviceInfo) -> Result<u32, Error> {
        let span =
            tracing::debug_span!("session_token", serial = %device.serial, app_id = device.app_id);
        self.inner
            .registrations
            .token(self, device, true)
            .instrument(span)
            .await
    }

    /// Performs a boot registration whatever the store holds, stores the
    /// new token and returns it.
    pub async fn register(&self, device: &DeviceInfo) -> Result<u32, Error> {
        let span =
            tracing::debug_span!("register", serial = %device.serial, app_id = device.app_id);
        self.inner
            .registrations
            .token(self, device, false)
            .instrument(span)
            .await
    }

    /// Uploads a device's binary log: validates its header and checksum,
    /// obtains the session token, writes it into the header, publishes the
    /// whole buffer to the binary-log topic, and returns once the broker
    /// acknowledged it. No token, no publish.
    pub async fn upload_log(
        &self,
        device: &DeviceInfo,
        log: &[u8],
    ) -> Result<UploadReceipt, Error> {
        self.upload_log_in_turn(Turn::free(), device, log).await
    }

    /// Takes device `serial`'s next place in line. A message sent with a
    /// turn ([`Client::upload_log_in_turn`]) is handed to the connection
    /// only after the messages of the device's earlier turns were, so
    /// concurrent uploads of one device reach the cloud in the order their
    /// turns were taken, however their tasks are scheduled, and still
    /// travel pipelined (a turn is passed on at the hand-over, not at the
    /// acknowledgement). Take turns in the order wanted, then run the
    /// uploads concurrently.
    pub fn take_turn(&self, serial: &str) -> Turn {
        self.inner.turns.take(serial)
    }

    /// [`Client::upload_log`] in `turn` (see [`Client::take_turn`]). The
    /// turn is passed on when the log is handed over, or when this fails
    /// before that.
    pub async fn upload_log_in_turn(
        &self,
        turn: Turn,
        device: &DeviceInfo,
        log: &[u8],
    ) -> Result<UploadReceipt, Error> {
        let span = tracing::info_span!("upload_log", serial = %device.serial, app_id = device.app_id, size = log.len());
        async {
            wire::validate_checksum(log)?;
            check_size(log.len())?;
            let topic = self.settings().topics.binlog(device.app_id)?;
            let token = self.session_token(device).await?;
            let mut buf = BytesMut::from(log);
            wire::patch_session_token(&mut buf, token)?;
            let mut header = LogHeader::parse(&buf)?;
            if self.inner.stamp_epoch_time && header.epoch_time_us == Some(0) {
                let now = unix_time_us();
                wire::patch_epoch_time_us(&mut buf, now)?;
                header.epoch_time_us = Some(now);
            }
            let size = buf.len();
            // One device, one connection, one turn after the other: its
            // logs reach the cloud in the order given, as MQTT keeps order
            // on a connection.
            self.transport_for(&device.serial)
                .publish_in_turn(topic.clone(), buf.freeze(), turn)
                .await?;
            tracing::debug!("acknowledged");
            Ok(UploadReceipt {
                topic,
                token,
                size,
                header,
            })
        }
        .instrument(span)
        .await
    }

    /// Publishes `log` as-is to the binary-log topic of `app_id` (no
    /// validation, no token patching: see [`Client::upload_log`] for that)
    /// and returns once the broker acknowledged it.
    pub async fn publish_binary_log(
        &self,
        app_id: u32,
        log: impl Into<Bytes>,
    ) -> Result<PublishReceipt, Error> {
        let topic = self.settings().topics.binlog(app_id)?;
        self.publish_raw(topic, log.into()).await
    }

    /// Publishes a core dump as-is to the core-dump topic and returns once
    /// the broker acknowledged it.
    pub async fn publish_core_dump(&self, dump: impl Into<Bytes>) -> Result<PublishReceipt, Error> {
        let topic = self.settings().topics.core_dump()?;
        self.publish_raw(topic, dump.into()).await
    }

    async fn publish_raw(&self, topic: String, payload: Bytes) -> Result<PublishReceipt, Error> {
        self.publish_raw_on(self.transport(), topic, payload).await
    }

    /// [`Client::publish_raw`] on the connection `link`.
    async fn publish_raw_on(
        &self,
        link: &Connection,
        topic: String,
        payload: Bytes,
    ) -> Result<PublishReceipt, Error> {
        check_size(payload.len())?;
        let size = payload.len();
        link.publish(topic.clone(), payload).await?;
        Ok(PublishReceipt { topic, size })
    }

    /// Validates a binary log exactly as [`Client::upload_log`] does and
    /// stores it durably in the outbox; returns its id once it is on disk
    /// (concurrent calls share one fsync). Needs no connection and no
    /// token: the client registers the device, patches the token in and
    /// publishes in the background, and removes the record on the
    /// broker's acknowledgement. [`Client::delivered`] waits for that.
    pub async fn enqueue_log(&self, device: &DeviceInfo, log: &[u8]) -> Result<RecordId, Error> {
        let outbox = self.outbox()?;
        wire::validate_checksum(log)?;
        check_size(log.len())?;
        self.settings().topics.binlog(device.app_id)?;
        self.settings()
            .topics
            .boot_reply(device.app_id, &device.serial)?;
        outbox.append(Kind::Log, Some(device), log).await
    }

    /// Stores a core dump durably in the outbox (see
    /// [`Client::enqueue_log`]); it is published as-is.
    pub async fn enqueue_core_dump(&self, dump: &[u8]) -> Result<RecordId, Error> {
        let outbox = self.outbox()?;
        check_size(dump.len())?;
        self.settings().topics.core_dump()?;
        outbox.append(Kind::CoreDump, None, dump).await
    }

    /// Waits until the outbox record `id` is delivered (the broker
    /// acknowledged it). Fails with [`ErrorKind::DeadLetter`] when it
    /// failed for good, and [`ErrorKind::Evicted`] when it was removed
    /// undelivered (or is unknown).
    pub async fn delivered(&self, id: RecordId) -> Result<(), Error> {
        self.outbox()?.outcome(id).await
    }

    /// The outbox's status; [`ErrorKind::NoOutbox`] without one.
    pub fn outbox_status(&self) -> Result<OutboxStatus, Error> {
        Ok(self.outbox()?.status())
    }

    /// The client's outbox, to list, retry or purge records;
    /// [`ErrorKind::NoOutbox`] without one.
    pub fn outbox(&self) -> Result<&Outbox, Error> {
        self.inner
            .outbox
            .as_ref()
            .map(|h| &*h.outbox)
            .ok_or_else(|| ErrorKind::NoOutbox.into())
    }

    /// Closes the connection gracefully: outbox deliveries under way and
    /// publishes already handed over are written (at the paced rate, see
    /// [`Pacing`](crate::Pacing)) and get their acknowledgement (or fail
    /// after the acknowledgement timeout, and stay queued), then the
    /// client disconnects, and the outbox and the session store's recency
    /// order are written. Later calls fail with [`ErrorKind::Shutdown`].
    pub async fn shutdown(&self) {
        if let Some(handle) = &self.inner.outbox {
            handle.stop.send_replace(true);
        }
        // Deliveries under way end with the transport: acknowledged, or
        // failed and left queued.
        self.inner.pool.shutdown().await;
        if let Some(handle) = &self.inner.outbox {
            if let Some(task) = handle.delivery.lock().await.take() {
                let _ = task.await;
            }
            let _ = handle.outbox.flush().await;
        }
        // Token lookups refresh recency lazily; persist it so that the
        // store's eviction order survives this process.
        let store = self.inner.store.clone();
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "could not persist session-token recency"),
            Err(error) => tracing::warn!(%error, "could not persist session-token recency"),
        }
    }

    /// The connection for the next operation (the next in turn, when the
    /// client has several).
    pub(crate) fn transport(&self) -> &Connection {
        self.inner.pool.pick()
    }

    /// The connection of device `serial`: always the same one, so that a
    /// device's messages keep their order (other devices' still spread
    /// over the pool).
    pub(crate) fn transport_for(&self, serial: &str) -> &Connection {
        self.inner.pool.pick_for(serial)
    }

    /// True while at least one of the client's connections is up.
    pub(crate) fn any_connected(&self) -> bool {
        self.inner.pool.any_connected()
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("broker", &self.settings().broker())
            .field("client_id", &self.settings().client_id)
            .finish_non_exhaustive()
    }
}

fn check_size(size: usize) -> Result<(), Error> {
    if size > MAX_MESSAGE_SIZE {
        return Err(ErrorKind::PayloadTooLarge {
            size,
            limit: MAX_MESSAGE_SIZE,
        }
        .into());
    }
    Ok(())
}

fn unix_time_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
