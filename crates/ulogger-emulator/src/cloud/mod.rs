//! The cloud side: what the uLogger cloud does with each message it gets
//! (issue tokens, verify and store logs, store dumps and telemetry) and
//! what it sends (boot replies, log configurations).
//!
//! It runs the same whether it sits inside the emulator's broker (an
//! internal subscriber whose replies are routed like any client's) or is
//! attached as an MQTT client to an external broker.

mod boot;
mod tokens;
mod uploads;

pub(crate) use tokens::TokenBook;
// The public check of telemetry payloads (`crate::telemetry_check`) runs this one.
pub(crate) use uploads::{verify_telemetry, MAX_DECOMPRESSED};

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use ulogger_cloud::wire::{LogConfig, TopicKind, Topics};

use crate::broker::{Broker, Delivery, Message};
use crate::faults::FaultSwitches;
use crate::records::{Record, RecordKind, RecordLog};
use crate::supervise::Failures;
use crate::EmulatorError;

/// The topic filters the cloud listens on, for one customer.
pub(crate) fn subscription_filters(topics: &Topics) -> Vec<String> {
    ["boot", "binlog", "core-dump", "metrics", "events"]
        .iter()
        .map(|kind| format!("{}{kind}/v0/{}/#", topics.prefix(), topics.customer_id()))
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
    /// Publishes at QoS 1, not retained.
    async fn publish(&self, topic: String, payload: Vec<u8>) -> Result<(), String> {
        match self {
            Uplink::Broker(broker) => {
                // Nobody waits for the cloud to store its own messages.
                let _ = broker.publish(Message {
                    topic,
                    payload: Bytes::from(payload),
                    qos: rumqttc::mqttbytes::QoS::AtLeastOnce,
                    retain: false,
                });
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
    pub(crate) topics: Topics,
    pub(crate) records: Arc<RecordLog>,
    pub(crate) faults: Arc<FaultSwitches>,
    pub(crate) tokens: Arc<TokenBook>,
    pub(crate) uplink: Uplink,
}

impl Cloud {
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

    /// Handles one message, then tells its publisher it is stored.
    async fn receive(&self, delivery: Delivery, replies: &mut JoinSet<()>) {
        self.handle(&delivery.message, replies).await;
        delivery.stored();
    }

    async fn handle(&self, message: &Message, replies: &mut JoinSet<()>) {
        let Some(kind) = self.topics.classify(&message.topic) else {
            tracing::debug!(topic = message.topic, "not a cloud topic, ignored");
            return;
        };
        match kind {
            TopicKind::Boot { app_id } => self.boot(app_id, message, replies),
            TopicKind::BinaryLog { app_id } => self.binary_log(app_id, message),
            TopicKind::CoreDump => self.core_dump(message),
            TopicKind::Metrics { app_id } => {
                self.telemetry(RecordKind::Metrics, "metrics", app_id, message)
            }
            TopicKind::Events { app_id } => {
                self.telemetry(RecordKind::Events, "events", app_id, message)
            }
            // The cloud's own replies come back through its subscription
            // in built-in mode; configs are the cloud's too.
            TopicKind::BootReply { .. } | TopicKind::Config { .. } => {}
            other => tracing::debug!(?other, "a topic kind the cloud does not handle yet"),
        }
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
        let topic = self
            .topics
            .config(app_id, serial)
            .map_err(|e| EmulatorError::InvalidId {
                what: "serial",
                value: serial.to_string(),
                reason: e.to_string(),
            })?;
        let payload = config.encode();
        let mut record = Record::new(RecordKind::Config, topic.clone(), payload.len());
        record.app_id = Some(app_id);
        record.serial = Some(serial.to_string());
        record.file = self.store("config", serial, "bin", &payload);
        self.uplink
            .publish(topic, payload)
            .await
            .map_err(|_| EmulatorError::Stopped)?;
        self.records.append(record);
        Ok(())
    }

    /// Stores a payload, logging (not failing) when the disk refuses: the
    /// record still tells what arrived.
    fn store(
        &self,
        subdir: &str,
        label: &str,
        ext: &str,
        payload: &[u8],
    ) -> Option<std::path::PathBuf> {
        match self.records.store_payload(subdir, label, ext, payload) {
            Ok(path) => Some(path),
            Err(e) => {
                tracing::error!(error = %e, "cannot store a payload");
                None
            }
        }
    }
}
