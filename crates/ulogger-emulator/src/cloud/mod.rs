//! The cloud side: what the uLogger cloud does with each message it gets
//! (issue tokens, verify and store logs, store dumps and telemetry) and
//! what it sends (boot replies, log configurations).
//!
//! It runs the same whether it sits inside the emulator's broker (an
//! internal subscriber whose replies are routed like any client's) or is
//! attached as an MQTT client to an external broker.

mod backlog;
mod boot;
mod decoding;
mod elf;
mod routing;
mod rows;
mod text_logs;
mod tokens;
mod uploads;

use boot::BootGuard;
use decoding::Decoding;
pub(crate) use tokens::TokenBook;
// The public check of telemetry payloads (`crate::telemetry_check`) runs this one.
pub(crate) use uploads::{verify_telemetry, MAX_DECOMPRESSED};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use ulogger_wire::{LogConfig, Topics};

use routing::{Family, Route, Routing};

use crate::broker::{Broker, Delivery, Message};
use crate::config::EmulatorConfig;
use crate::elf_store::ElfStore;
use crate::faults::FaultSwitches;
use crate::records::{NotStored, Record, RecordKind, RecordLog};
use crate::supervise::Failures;
use crate::EmulatorError;

/// The topic filters the cloud listens on: every topic of each family
/// the platform has a rule for, whatever its levels, so that what no rule
/// matches is seen and recorded as unrouted rather than lost unseen.
///
/// Log configurations too: what another client (`ulogger emulator
/// push-config`) pushes to a device is recorded like the cloud's own.
/// And firmware ELF upload requests (not their answers, which the cloud
/// itself sends on `upload/v0/{C}/...`).
pub(crate) fn subscription_filters(prefix: &str) -> Vec<String> {
    Family::ALL
        .iter()
        .map(|(_, name)| format!("{prefix}{name}/v0/#"))
        .chain([
            format!("{prefix}config/v0/#"),
            format!("{prefix}upload/v0/firmware/#"),
        ])
        .collect()
}

/// How the cloud sends messages.
#[derive(Clone)]
pub(crate) enum Uplink {
    /// Routed by the emulator's own broker.
    Broker(Arc<Broker>),
    /// Published as a client of an external broker.
    Client(rumqttc::AsyncClient),
}

impl Uplink {
    /// Publishes at QoS 1, not retained. With its own broker, a message
    /// that finds no subscriber waits `linger` for the first one (see
    /// `Broker::publish_from_cloud`); an external broker keeps nothing.
    async fn publish(
        &self,
        topic: String,
        payload: Vec<u8>,
        linger: Option<Duration>,
    ) -> Result<(), String> {
        match self {
            Uplink::Broker(broker) => {
                broker.publish_from_cloud(
                    Message {
                        topic,
                        payload: Bytes::from(payload),
                        qos: rumqttc::mqttbytes::QoS::AtLeastOnce,
                        retain: false,
                    },
                    linger,
                );
                Ok(())
            }
            Uplink::Client(client) => client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// A request from the emulator's handle to the cloud task.
pub(crate) enum Command {
    PushConfig {
        app_id: u32,
        serial: String,
        config: LogConfig,
        reply: Box<dyn FnOnce(Result<(), EmulatorError>) + Send>,
    },
}

/// Everything the cloud needs to handle a message.
#[derive(Clone)]
pub(crate) struct Cloud {
    /// The emulator's own customer, prefix and group (the group is the one
    /// log configurations are pushed on; devices may use any group).
    pub(crate) topics: Topics,
    /// Whether the original layout without the group level is routed too.
    pub(crate) legacy_topics: bool,
    /// The simulated alarm on registration storms, when switched on.
    pub(crate) boot_guard: Option<Arc<BootGuard>>,
    /// The text-log batches seen, by application, serial and sequence:
    /// the platform drops a batch it has seen.
    pub(crate) text_sequences: Arc<std::sync::Mutex<std::collections::HashSet<(u32, String, u64)>>>,
    pub(crate) records: Arc<RecordLog>,
    pub(crate) faults: Arc<FaultSwitches>,
    pub(crate) tokens: Arc<TokenBook>,
    /// Upload URLs handed out and the firmware ELFs stored.
    pub(crate) elfs: Arc<ElfStore>,
    /// Decodes binary logs with the stored ELFs.
    pub(crate) decoding: Arc<Decoding>,
    pub(crate) uplink: Uplink,
}

impl Cloud {
    /// The cloud of `config`, storing into `records`, answering with
    /// `tokens`, keeping and decoding with the ELFs of `elfs` (kept in
    /// `data_dir`), and sending through `uplink`.
    pub(crate) fn new(
        config: &EmulatorConfig,
        data_dir: &Path,
        records: Arc<RecordLog>,
        faults: Arc<FaultSwitches>,
        tokens: Arc<TokenBook>,
        elfs: Arc<ElfStore>,
        uplink: Uplink,
    ) -> Result<Cloud, EmulatorError> {
        let decoding = Arc::new(Decoding::new(elfs.clone(), data_dir, config.customer_id));
        Ok(Cloud {
            topics: config.topics()?,
            legacy_topics: config.legacy_topics,
            boot_guard: config.boot_guard.map(|rate| Arc::new(BootGuard::new(rate))),
            text_sequences: Default::default(),
            records,
            faults,
            tokens,
            elfs,
            decoding,
            uplink,
        })
    }

    /// Serves messages and commands until both channels close, or until
    /// `drain` fires: then it takes no more messages, stores every one
    /// already queued (the broker may have acknowledged them) and returns.
    pub(crate) async fn run(
        self,
        mut inbox: mpsc::Receiver<Delivery>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut drain: oneshot::Receiver<()>,
        failures: Arc<Failures>,
    ) {
        // Delayed boot replies run beside the loop, owned by it.
        let mut replies = JoinSet::new();
        loop {
            tokio::select! {
                Some(delivery) = inbox.recv() => self.receive(delivery, &mut replies).await,
                Some(command) = commands.recv() => self.command(command).await,
                Some(done) = replies.join_next() => failures.note("boot reply", done),
                _ = &mut drain => break,
                else => return,
            }
        }
        inbox.close();
        let mut drained = 0usize;
        while let Some(delivery) = inbox.recv().await {
            self.receive(delivery, &mut replies).await;
            drained += 1;
        }
        if drained > 0 {
            tracing::info!(drained, "stored the messages still queued at stop");
        }
    }

    /// Handles one message, then tells its publisher it is stored, unless
    /// the record database refused it: dropping the signal unfired
    /// withholds the PUBACK, so the publisher keeps the message and sends
    /// it again.
    async fn receive(&self, delivery: Delivery, replies: &mut JoinSet<()>) {
        if self.handle(&delivery.message, replies).await.is_ok() {
            delivery.stored();
        }
    }

    async fn handle(&self, message: &Message, replies: &mut JoinSet<()>) -> Result<(), NotStored> {
        if let Some(levels) = message
            .topic
            .strip_prefix(self.topics.prefix())
            .and_then(|rest| rest.strip_prefix("config/v0/"))
        {
            return self.pushed_config(levels, message);
        }
        if let Some(levels) = message
            .topic
            .strip_prefix(self.topics.prefix())
            .and_then(|rest| rest.strip_prefix("upload/v0/firmware/"))
        {
            return self.elf_upload_request(levels, message).await;
        }
        let routing = routing::route(
            self.topics.prefix(),
            self.topics.customer_id(),
            &message.topic,
            self.legacy_topics,
        );
        let route = match routing {
            Routing::Routed(route) => route,
            // Boot replies are the cloud's own (an attached cloud hears
            // them back from the external broker).
            Routing::ToDevice => return Ok(()),
            Routing::Unrouted(reason) => return self.unrouted(message, reason),
        };
        let Route { family, group, app } = route;
        match (family, app) {
            (Family::Boot, Some(app_id)) => self.boot(group, app_id, message, replies),
            (Family::BinaryLog, Some(app_id)) => self.binary_log(app_id, message),
            (Family::CoreDump, _) => self.core_dump(message),
            (Family::Metrics, Some(app_id)) => {
                self.telemetry(RecordKind::Metrics, "metrics", app_id, message)
            }
            (Family::Events, Some(app_id)) => {
                self.telemetry(RecordKind::Events, "events", app_id, message)
            }
            (Family::TextLogs, Some(app_id)) => self.text_logs(app_id, message),
            // Every family but core dumps routes with an application level.
            (_, None) => self.unrouted(message, format!("{}: no application level", message.topic)),
        }
    }

    /// A log configuration someone pushed to a device (`.../{app}/{serial}`
    /// after the customer and group): recorded as the cloud's own pushes
    /// are, rejected if it does not decode.
    fn pushed_config(&self, levels: &str, message: &Message) -> Result<(), NotStored> {
        let mut ids = levels.rsplit('/');
        let serial = ids.next().unwrap_or_default().to_owned();
        let mut record = Record::new(
            RecordKind::Config,
            message.topic.clone(),
            message.payload.len(),
        );
        record.app_id = ids.next().and_then(|app| app.parse().ok());
        record.serial = Some(serial.clone());
        record.file = Some(self.store("config", &serial, "bin", &message.payload)?);
        self.records
            .append(match LogConfig::decode(&message.payload) {
                Ok(_) => record,
                Err(e) => record.rejected(format!("not a log configuration: {e}")),
            })
    }

    /// A publish the broker acknowledged that no platform rule matches:
    /// recorded (never dropped unseen), and logged at once with its cause.
    fn unrouted(&self, message: &Message, reason: String) -> Result<(), NotStored> {
        tracing::warn!(
            topic = message.topic,
            "acknowledged but unrouted (the platform would drop it): {reason}"
        );
        let mut record = Record::new(
            RecordKind::Unrouted,
            message.topic.clone(),
            message.payload.len(),
        );
        record.file = Some(self.store("unrouted", "message", "bin", &message.payload)?);
        self.records.append(record.rejected(reason))
    }

    async fn command(&self, command: Command) {
        match command {
            Command::PushConfig {
                app_id,
                serial,
                config,
                reply,
            } => reply(self.push_config(app_id, &serial, &config).await),
        }
    }

    async fn push_config(
        &self,
        app_id: u32,
        serial: &str,
        config: &LogConfig,
    ) -> Result<(), EmulatorError> {
        let invalid = |e: ulogger_wire::TopicError| EmulatorError::InvalidId {
            what: "serial",
            value: serial.to_string(),
            reason: e.to_string(),
        };
        let mut topics = vec![self.topics.config(app_id, serial).map_err(invalid)?];
        if self.legacy_topics {
            // A device of an old deployment listens without the group level.
            let legacy = Topics::new(self.topics.prefix(), self.topics.customer_id(), None)
                .and_then(|t| t.config(app_id, serial))
                .map_err(invalid)?;
            topics.push(legacy);
        }
        let payload = config.encode();
        for topic in topics {
            self.uplink
                .publish(topic.clone(), payload.clone(), None)
                .await
                .map_err(|_| EmulatorError::Stopped)?;
            // An attached cloud hears its own push back through its
            // subscription, and records it then.
            if matches!(self.uplink, Uplink::Broker(_)) {
                let mut record = Record::new(RecordKind::Config, topic, payload.len());
                record.app_id = Some(app_id);
                record.serial = Some(serial.to_string());
                // Sent already: a payload or record that cannot be stored
                // is only missing from the book (the store has logged why).
                record.file = self.store("config", serial, "bin", &payload).ok();
                let _ = self.records.append(record);
            }
        }
        Ok(())
    }

    /// Stores a payload (synced, in a kept data directory). A payload
    /// that cannot be stored fails its message, as a database refusal
    /// does: its PUBACK is withheld and the publisher sends it again. The
    /// record book has logged why, once per run of failures.
    fn store(
        &self,
        subdir: &str,
        label: &str,
        ext: &str,
        payload: &[u8],
    ) -> Result<std::path::PathBuf, NotStored> {
        self.records.store_payload(subdir, label, ext, payload)
    }
}
