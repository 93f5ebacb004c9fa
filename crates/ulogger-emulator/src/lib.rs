//! A local uLogger cloud, for tests and for trying `ulogger-cloud` without
//! cloud credentials.
//!
//! [`Emulator::start`] runs, on a background thread of its own:
//!
//! - **a broker**: MQTT 3.1.1 on 127.0.0.1 with mutual TLS (CA, server and
//!   client certificates generated into the data directory) or plaintext,
//!   QoS 0 and 1, `+`/`#` subscriptions, retained messages, keep-alive; and
//!   the platform broker's rules (PROTOCOL §1): a payload over 128 KiB, a
//!   wildcard or NUL in a publish topic, a topic over 256 bytes or 7
//!   slashes, or QoS 2 closes the connection; a client id not starting with
//!   `cust-{customer_id}-` is refused (CONNACK "not authorized"); a second
//!   connection with the same client id closes the first. Subscribing with
//!   QoS 2 is granted QoS 1, as AWS IoT does.
//! - **AWS IoT's per-connection limits** ([`PlatformLimits`], on by
//!   default): 100 publishes/s (beyond: discarded, no PUBACK), 512 KiB/s
//!   inbound (beyond: read later), 50 subscriptions (beyond: SUBACK
//!   failure), 8 filters per SUBSCRIBE (beyond: the connection closes).
//!   [`PlatformLimits::unlimited`] lifts them; [`Emulator::limit_stats`]
//!   counts what they did. A keep-alive of 0 (or over 1,200 s) gets
//!   1,200 s, as on AWS IoT, so no silent connection stays for ever.
//! - **defences against clients that hold on to resources**: a connection
//!   without a whole CONNECT, or with a packet left half-sent, is closed
//!   after [`EmulatorConfig::stall_timeout`]; each connection buffers at
//!   most one packet; out of file descriptors, the broker backs off and
//!   keeps serving the clients it has.
//! - **the cloud side**: answers boot registrations with fresh tokens,
//!   verifies binary logs (header, checksum, a token it issued for that
//!   application), stores logs, core dumps, metrics and events, and pushes
//!   log configurations. Every event is a [`Record`], written to the
//!   record database `<data>/records.db` and appended to
//!   `<data>/index.jsonl`, with payloads stored beside them.
//! - **the HTTP telemetry endpoints** (PROTOCOL §8, "HTTP fallback"):
//!   `POST /publish/metrics` and `/publish/events` on a port of their own
//!   ([`Emulator::http_url`]), HTTPS with the emulator's CA (plain HTTP
//!   when the broker is plaintext or attached), a bearer token it issues
//!   ([`Emulator::api_token`]); bodies are verified and recorded like MQTT
//!   telemetry, with `POST /publish/...` as the record's topic.
//! - **the data API** (PROTOCOL §13) on the same port and token:
//!   `GET /metrics`, `/events` and `/logs` answer what was stored, newest
//!   first, as the platform's API does
//!   (`/metrics?application_id=7&device_serial=SN1&metric_name=t&start=5m&limit=10`
//!   answers `{"count": 1, "metrics": [{"value": 21.5, ...}]}`).
//! - **the firmware ELF upload** (PROTOCOL §11): a request on
//!   `upload/v0/firmware/{C}/{device_type}` is answered on
//!   `upload/v0/{C}/{upload_id}` with a one-time URL on the HTTP port;
//!   the ELF PUT there is kept by application, device type and version
//!   ([`Emulator::stored_elfs`], [`Emulator::find_elf`]). A client
//!   certificate of another customer presented on the PUT is answered 403.
//! - **decoding** (PROTOCOL §5.1) with the uploaded ELFs: a binary log is
//!   decoded on arrival with the ELF of the firmware its device registered
//!   under the log's session token (application, device type, version);
//!   without one it is kept as `"no ELF for <device type> <version>"` and
//!   decoded when that ELF is uploaded, before the PUT is answered. An
//!   upload of the same firmware again replaces its ELF and decodes its
//!   logs again. At start, logs an earlier run left without a decoding
//!   state (an emulator from before decoding) or waiting for an ELF that
//!   is stored are decoded before `start` returns.
//!   `GET /logs` serves the records (time, level, module, message, typed
//!   metric, problems); [`LogDecodings`] reads each log's state from a
//!   data directory, running or stopped.
//! - **fault switches** ([`Faults`], [`FaultSwitches`]) to withhold PUBACKs,
//!   delay or break boot replies and cut connections, to answer HTTP
//!   requests 500, 429 or with a body that is not JSON ([`HttpFaults`]),
//!   and to leave ELF upload requests unanswered or their PUTs in an
//!   outage ([`ElfUploadFaults`]).
//!
//! Apart from the cloud, [`ble::SimDevice`] is a device's side of the BLE
//! transfer (PROTOCOL §6) as the firmware behaves, sans I/O, to drive a
//! gateway without a radio.
//!
//! In attach mode ([`EmulatorConfig::attach`]) there is no broker: the
//! cloud side connects to an external one instead.
//!
//! # The data directory
//!
//! ```text
//! records.db             SQLite (WAL): the records, and the metrics, events and
//!                        log entries of accepted payloads (decoded log records
//!                        included), for the data API
//! index.jsonl            one Record per line (JSON), appended as things happen
//! tokens.jsonl           the session tokens issued (kept data directories only)
//! api_token              the HTTP API token (kept data directories only)
//! certs/                 ca.pem, server.pem.{crt,key}, client.pem.{crt,key}, ca.pem.key
//! boot/                  boot registrations as received
//! binlog/                binary logs, e.g. 20250101T120000.123Z-SN1-app7-000003.bin
//! core-dump/, metrics/, events/, config/   likewise
//! upload/                ELF upload requests as received
//! elf/                   uploaded ELFs: {customer}/{app}/{device type}/{version}.elf
//!                        and a .json beside each saying which firmware it is
//! ```
//!
//! A directory given with [`EmulatorConfig::data_dir`] is kept and reused
//! by the next start: its certificates, its index (appended to) and the
//! tokens it issued, which stay valid, as the real cloud's do. Every
//! payload, index line and token is synced to disk as it is written. The
//! default temporary directory is removed on drop, skips the syncs, and
//! its tokens are forgotten with the emulator.
//!
//! # What a PUBACK promises
//!
//! The broker sends the PUBACK of a message for the cloud only after the
//! cloud has handled it: stored its payload, written its record (and what
//! the data API reads of it) to the database, appended it to the index
//! and, with a kept data directory, synced all three. When the database
//! refuses the write, the broker closes the connection instead of
//! acknowledging, so the client sends the message again. So whatever a client saw
//! acknowledged is in the records, even if the emulator is killed
//! (SIGKILL, power cut) right after; a crash can lose only messages that
//! were not acknowledged yet. A stop ([`Emulator::shutdown`], drop, or
//! SIGTERM/Ctrl-C in `ulogger emulator`) first closes the listener and
//! every connection, then lets the cloud store what is still queued, then
//! ends. On opening a kept directory, an index line cut short by a crash
//! (never acknowledged) is removed, and so are temporary payload files
//! that were never renamed into place.
//!
//! ```no_run
//! use std::time::Duration;
//! use ulogger_emulator::{Emulator, EmulatorConfig, RecordKind};
//!
//! let emulator = Emulator::start(EmulatorConfig::new(42))?;
//! let certs = emulator.certs().expect("TLS is on by default");
//! println!("broker at {}, CA {}", emulator.addr(), certs.ca_cert.display());
//! // ... run a client against it, then:
//! let log = emulator.wait_for_blocking(|r| r.kind == RecordKind::BinaryLog, Duration::from_secs(5));
//! # Ok::<(), ulogger_emulator::EmulatorError>(())
//! ```

mod attach;
pub mod ble;
mod broker;
mod certs;
mod cloud;
mod config;
mod data_dir;
mod durable;
mod elf_store;
mod error;
mod faults;
mod http;
mod limits;
mod listen;
mod log_decoding;
mod records;
mod store;
mod supervise;
mod telemetry_check;
#[cfg(feature = "testing")]
pub mod testing;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use ulogger_wire::{validate_serial, LogConfig};

pub use certs::{client_tls_config, CertPaths};
pub use config::{AttachTo, EmulatorConfig};
pub use elf_store::StoredElf;
pub use error::EmulatorError;
pub use faults::{
    BootReplyMode, ElfUploadFaults, FaultSwitches, Faults, HttpFaults, WithholdPuback,
};
pub use limits::{LimitStats, PlatformLimits};
pub use listen::PortHold;
pub use log_decoding::{DecodingState, LogDecoding, LogDecodings};
pub use records::{Record, RecordKind, Verdict, INDEX_FILE};
pub use store::DATABASE_FILE;
pub use telemetry_check::{verify_telemetry, TelemetryCheck, TelemetryList};

pub use broker::ClientEvent;
use broker::{Broker, Mailbox, Tls};
use cloud::{Cloud, Command, TokenBook, Uplink};
use data_dir::DataDir;
use elf_store::ElfStore;
use http::HttpState;
use records::RecordLog;
use supervise::Failures;

/// A running emulator. Dropping it stops everything (broker, connections,
/// cloud) and waits for that; if any of its tasks panicked, the drop
/// panics too (unless the thread is already panicking), so a test that
/// owns it fails.
pub struct Emulator {
    addr: SocketAddr,
    http_addr: SocketAddr,
    http_tls: bool,
    http: Arc<HttpState>,
    certs: Option<CertPaths>,
    customer_id: u32,
    group_id: u32,
    legacy_topics: bool,
    topic_prefix: String,
    data_dir: PathBuf,
    records: Arc<RecordLog>,
    faults: Arc<FaultSwitches>,
    tokens: Arc<TokenBook>,
    broker: Option<Arc<Broker>>,
    failures: Arc<Failures>,
    commands: mpsc::UnboundedSender<Command>,
    runtime: tokio::runtime::Handle,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    failure_reported: bool,
    // Last: removed after the runtime thread has stopped writing to it.
    _temp_dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .field("http_url", &self.http_url())
            .field("customer_id", &self.customer_id)
            .field("group_id", &self.group_id)
            .field("topic_prefix", &self.topic_prefix)
            .field("data_dir", &self.data_dir)
            .field("attached", &self.broker.is_none())
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Starts an emulator on its own runtime thread. Works from synchronous
    /// code, `#[test]` and `#[tokio::test]` alike.
    ///
    /// When this returns, the broker is listening and the cloud is
    /// subscribed (in attach mode: connected and subscribed on the external
    /// broker), and the logs of a kept data directory that an earlier run
    /// left without a decoding state, or waiting for an ELF that is
    /// stored, are decoded.
    pub fn start(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        config.validate()?;
        let data = DataDir::open(config.data_dir.as_deref())?;
        let records = Arc::new(RecordLog::open(data.path(), data.kept())?);
        let faults = Arc::new(FaultSwitches::new(config.faults.clone()));
        let tokens = Arc::new(match data.kept_path() {
            Some(dir) => TokenBook::open(dir)?,
            None => TokenBook::in_memory(),
        });
        let failures = Arc::new(Failures::default());
        let runtime = supervise::runtime()?;
        let mut tasks = Vec::new();

        // Messages reach the cloud's mailbox from the emulator's own
        // broker, or from an external one in attach mode.
        let (cloud_mailbox, cloud_inbox, _) =
            Mailbox::with_depth(broker::CLOUD_CONN_ID, broker::CLOUD_MAILBOX_DEPTH);
        let filters = cloud::subscription_filters(&config.topic_prefix);
        let (addr, certs, broker, uplink, attached) = match &config.attach {
            None => {
                let certs = (!config.plaintext)
                    .then(|| {
                        CertPaths::load_or_generate(&data.path().join("certs"), config.customer_id)
                    })
                    .transpose()?;
                let tls = Tls::from_certs(certs.as_ref())?;
                let (listener, addr) = listen::bind(config.listen, config.listen_shared, &runtime)?;
                let broker = Arc::new(Broker::new(
                    config.customer_id,
                    faults.clone(),
                    records.clone(),
                    config.limits,
                    config.stall_timeout,
                ));
                let task =
                    broker::start(&broker, listener, tls, &cloud_mailbox, &filters, &failures);
                tasks.push(("broker", task));
                let uplink = Uplink::Broker(broker.clone());
                (addr, certs, Some(broker), uplink, None)
            }
            Some(attach) => {
                let attached = attach::start(attach, config.customer_id, filters, cloud_mailbox)?;
                tasks.push(("attach", attached.task));
                let uplink = Uplink::Client(attached.client);
                (attached.addr, None, None, uplink, Some(attached.ready))
            }
        };

        // The HTTP port before the cloud: its upload URLs point at it.
        let (http_listener, http_addr) = listen::bind(config.http_listen, false, &runtime)?;
        let http_tls = certs.as_ref().map(http::acceptor).transpose()?;
        let http_tls_on = http_tls.is_some();
        let elfs = Arc::new(ElfStore::open(
            data.path(),
            data.kept(),
            http::base_url(http_tls_on, http_addr),
        )?);
        let cloud = Cloud::new(
            &config,
            data.path(),
            records.clone(),
            faults.clone(),
            tokens.clone(),
            elfs,
            uplink,
        )?;
        // What an earlier run left undecoded, before anything new comes.
        cloud
            .decode_backlog()
            .map_err(|reason| EmulatorError::Database {
                path: data.path().join(DATABASE_FILE),
                reason,
            })?;
        let (http_state, http_task) = http::start(
            http_listener,
            http_tls,
            cloud.clone(),
            data.kept_path(),
            &failures,
        )?;
        tasks.push(("http", http_task));
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (drain_tx, drain_rx) = oneshot::channel();
        tasks.push((
            "cloud",
            Box::pin(cloud.run(cloud_inbox, command_rx, drain_rx, failures.clone())),
        ));
        let running = supervise::run(runtime, tasks, drain_tx, failures.clone())?;

        let (data_dir, temp_dir) = data.into_parts();
        let mut emulator = Emulator {
            addr,
            http_addr,
            http_tls: http_tls_on,
            http: http_state,
            certs,
            customer_id: config.customer_id,
            group_id: config.group_id,
            legacy_topics: config.legacy_topics,
            topic_prefix: config.topic_prefix,
            data_dir,
            records,
            faults,
            tokens,
            broker,
            failures,
            commands,
            runtime: running.handle,
            shutdown: Some(running.shutdown),
            thread: Some(running.thread),
            failure_reported: false,
            _temp_dir: temp_dir,
        };
        if let Some(ready) = attached {
            if let Err(e) = ready.wait() {
                emulator.stop();
                emulator.failure_reported = true;
                return Err(e);
            }
        }
        Ok(emulator)
    }

    /// The broker's address: the bound one (port 0 resolved), or in attach
    /// mode the external broker's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the HTTP telemetry endpoints (port 0 resolved).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The base URL of the HTTP telemetry endpoints:
    /// `https://127.0.0.1:PORT` (the emulator's CA,
    /// [`CertPaths::ca_cert`], signs its certificate) when the broker uses
    /// TLS, `http://...` in plaintext and attach mode. Clients post to
    /// `{url}/publish/metrics` and `{url}/publish/events`.
    pub fn http_url(&self) -> String {
        http::base_url(self.http_tls, self.http_addr)
    }

    /// The API token the HTTP endpoints accept (`ulg_` + 32 random
    /// letters and digits). A kept data directory keeps it in
    /// `<data>/api_token`, so it stays valid across restarts; a temporary
    /// one gets a new token at each start. Requests without it are
    /// answered 401.
    pub fn api_token(&self) -> &str {
        &self.http.token
    }

    /// How many HTTP requests the endpoints received so far (any path,
    /// token or outcome, injected faults included).
    pub fn http_requests(&self) -> u64 {
        self.http
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The certificate files; `None` in plaintext and attach mode.
    pub fn certs(&self) -> Option<&CertPaths> {
        self.certs.as_ref()
    }

    /// The customer id the emulator serves.
    pub fn customer_id(&self) -> u32 {
        self.customer_id
    }

    /// The group id log configurations are pushed on and printed
    /// commands use (publishes of every group are routed).
    pub fn group_id(&self) -> u32 {
        self.group_id
    }

    /// Whether the original topic layout without the group level is
    /// routed too ([`EmulatorConfig::legacy_topics`]).
    pub fn legacy_topics(&self) -> bool {
        self.legacy_topics
    }

    /// The topic prefix ("" for none).
    pub fn topic_prefix(&self) -> &str {
        &self.topic_prefix
    }

    /// The data directory (records index, payloads, certificates).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The path of the records index, `<data>/index.jsonl`.
    pub fn index_path(&self) -> PathBuf {
        self.data_dir.join(INDEX_FILE)
    }

    /// The path of the record database, `<data>/records.db` (SQLite).
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join(DATABASE_FILE)
    }

    /// All records so far, in arrival order.
    pub fn records(&self) -> Vec<Record> {
        self.records.snapshot()
    }

    /// Follows client connections from now on: each one the broker
    /// accepts and each that ends. In attach mode (no broker of its own)
    /// there are none: [`ClientWatcher::next`] returns `None` at once.
    pub fn watch_clients(&self) -> ClientWatcher {
        ClientWatcher {
            events: self.broker.as_ref().map(|b| b.watch_clients()),
        }
    }

    /// Follows records as they arrive, starting with the first one.
    pub fn watch_records(&self) -> RecordWatcher {
        RecordWatcher {
            records: self.records.clone(),
            next: 0,
            changed: self.records.watch(),
        }
    }

    /// The first record matching `pred` (one already there counts), or
    /// `None` after `timeout`. Needs no particular async runtime.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&Record) -> bool,
        timeout: Duration,
    ) -> Option<Record> {
        let mut changed = self.records.watch();
        // The timer runs on the emulator's runtime, so the caller's
        // executor needs no timer of its own.
        let (expired_tx, mut expired) = oneshot::channel::<()>();
        let timer = self.runtime.spawn(async move {
            tokio::time::sleep(timeout).await;
            let _ = expired_tx.send(());
        });
        let found = loop {
            changed.borrow_and_update();
            if let Some(found) = self.records.find(&pred) {
                break Some(found);
            }
            tokio::select! {
                res = changed.changed() => if res.is_err() {
                    break None;
                },
                _ = &mut expired => break self.records.find(&pred),
            }
        };
        timer.abort();
        found
    }

    /// [`Emulator::wait_for`] for synchronous code (blocks the thread).
    pub fn wait_for_blocking(
        &self,
        pred: impl Fn(&Record) -> bool,
        timeout: Duration,
    ) -> Option<Record> {
        self.records.wait_for_blocking(&pred, timeout)
    }

    /// The live fault switches.
    pub fn faults(&self) -> &FaultSwitches {
        &self.faults
    }

    /// The firmware ELFs uploaded so far (PROTOCOL §11), by application,
    /// device type and version; a kept data directory keeps them across
    /// restarts. Each [`StoredElf::file`] is relative to
    /// [`Emulator::data_dir`].
    pub fn stored_elfs(&self) -> Vec<StoredElf> {
        self.http.cloud.elfs.list()
    }

    /// The ELF stored for one firmware of the emulator's customer: what
    /// decodes the logs of a device that reports `version`.
    pub fn find_elf(&self, app_id: u32, device_type: &str, version: &str) -> Option<StoredElf> {
        self.http
            .cloud
            .elfs
            .find(self.customer_id, app_id, device_type, version)
    }

    /// The bytes of a stored ELF.
    pub fn read_elf(&self, elf: &StoredElf) -> Result<Vec<u8>, EmulatorError> {
        let path = self.data_dir.join(&elf.file);
        std::fs::read(&path).map_err(|e| EmulatorError::io("read", path, e))
    }

    /// Every token issued so far: (application id, serial, token).
    pub fn issued_tokens(&self) -> Vec<(u32, String, u32)> {
        self.tokens.snapshot()
    }

    /// Pushes a log configuration (PROTOCOL §7) to a device's config topic,
    /// QoS 1, not retained, and records it.
    pub async fn push_config(
        &self,
        app_id: u32,
        serial: &str,
        config: &LogConfig,
    ) -> Result<(), EmulatorError> {
        let (tx, rx) = oneshot::channel();
        self.send_push(app_id, serial, config, Box::new(move |r| drop(tx.send(r))))?;
        rx.await.unwrap_or(Err(EmulatorError::Stopped))
    }

    /// [`Emulator::push_config`] for synchronous code.
    pub fn push_config_blocking(
        &self,
        app_id: u32,
        serial: &str,
        config: &LogConfig,
    ) -> Result<(), EmulatorError> {
        let (tx, rx) = std_mpsc::channel();
        self.send_push(app_id, serial, config, Box::new(move |r| drop(tx.send(r))))?;
        rx.recv().unwrap_or(Err(EmulatorError::Stopped))
    }

    fn send_push(
        &self,
        app_id: u32,
        serial: &str,
        config: &LogConfig,
        reply: Box<dyn FnOnce(Result<(), EmulatorError>) + Send>,
    ) -> Result<(), EmulatorError> {
        validate_serial(serial).map_err(|e| EmulatorError::InvalidId {
            what: "serial",
            value: serial.to_string(),
            reason: e.to_string(),
        })?;
        self.commands
            .send(Command::PushConfig {
                app_id,
                serial: serial.to_string(),
                config: config.clone(),
                reply,
            })
            .map_err(|_| EmulatorError::Stopped)
    }

    /// Closes, now, the connections whose client id starts with `prefix`
    /// ("" for all); returns how many. Attach mode has none.
    pub fn disconnect_client(&self, prefix: &str) -> usize {
        self.broker.as_ref().map_or(0, |b| b.disconnect(prefix))
    }

    /// Closes every client connection now; returns how many.
    pub fn disconnect_all(&self) -> usize {
        self.disconnect_client("")
    }

    /// Client ids of the connected clients, sorted.
    pub fn connected_clients(&self) -> Vec<String> {
        self.broker.as_ref().map_or_else(Vec::new, |b| b.clients())
    }

    /// The per-connection limits the broker enforces on clients
    /// ([`EmulatorConfig::limits`]). Attach mode runs no broker, so there
    /// it is [`PlatformLimits::unlimited`].
    pub fn limits(&self) -> PlatformLimits {
        self.broker
            .as_ref()
            .map_or_else(PlatformLimits::unlimited, |b| b.limits)
    }

    /// What enforcing the limits has done so far: publishes discarded,
    /// filters refused, reading held back. All zero in attach mode.
    pub fn limit_stats(&self) -> LimitStats {
        self.broker
            .as_ref()
            .map_or_else(LimitStats::default, |b| b.limit_counters.snapshot())
    }

    /// Stops the emulator and reports a panic of any of its tasks as an
    /// error instead of panicking in `drop`.
    pub fn shutdown(mut self) -> Result<(), EmulatorError> {
        self.stop();
        self.failure_reported = true;
        match self.failures.first() {
            Some(message) => Err(EmulatorError::Panicked(message)),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the emulator's runtime thread panicked");
            }
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
        if !self.failure_reported && !std::thread::panicking() {
            if let Some(message) = self.failures.first() {
                panic!("a ulogger emulator task panicked: {message}");
            }
        }
    }
}

/// Follows an emulator's client connections
/// ([`Emulator::watch_clients`]).
pub struct ClientWatcher {
    events: Option<tokio::sync::broadcast::Receiver<ClientEvent>>,
}

impl ClientWatcher {
    /// The next client connection accepted or ended; `None` once the
    /// broker is gone (or in attach mode). A watcher that fell more than
    /// 256 events behind skips those it missed. Needs no particular async
    /// runtime.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        let events = self.events.as_mut()?;
        loop {
            match events.recv().await {
                Ok(event) => return Some(event),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "client events missed by a slow watcher");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl std::fmt::Debug for ClientWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientWatcher").finish_non_exhaustive()
    }
}

/// Follows an emulator's records in arrival order
/// ([`Emulator::watch_records`]).
#[derive(Debug)]
pub struct RecordWatcher {
    records: Arc<RecordLog>,
    next: usize,
    changed: watch::Receiver<usize>,
}

impl RecordWatcher {
    /// The next record, waiting for it to arrive. Needs no particular
    /// async runtime.
    pub async fn next(&mut self) -> Record {
        loop {
            self.changed.borrow_and_update();
            if let Some(record) = self.records.get(self.next) {
                self.next += 1;
                return record;
            }
            // The sender lives in the record log this watcher holds, so
            // it never closes while we wait.
            let _ = self.changed.changed().await;
        }
    }

    /// The records that arrived since the last call (or the start).
    pub fn drain(&mut self) -> Vec<Record> {
        let mut out = Vec::new();
        while let Some(record) = self.records.get(self.next) {
            out.push(record);
            self.next += 1;
        }
        out
    }
}

/// The handle can be shared between threads and tasks.
#[allow(dead_code)]
fn assert_impls() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Emulator>();
    send_sync::<EmulatorError>();
    send_sync::<FaultSwitches>();
    send_sync::<RecordWatcher>();
}
