//! Metrics, events and heartbeats (PROTOCOL §8), published like uploads:
//! through the client's paced connection pool, complete on the PUBACK.

use bytes::Bytes;
use tracing::Instrument;

use super::Client;
use crate::error::Error;
use crate::outbox::Kind;
use crate::outbox::RecordId;
use crate::wire::{
    DeviceEvents, DeviceMetrics, Event, Metric, Telemetry, TelemetryFamily, TelemetryPayload,
};

/// What the broker acknowledged for a metrics or events message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TelemetryReceipt {
    /// The topic published to.
    pub topic: String,
    /// Bytes published (after compression).
    pub size: usize,
    /// Whether the payload was gzip-compressed.
    pub compressed: bool,
}

impl Client {
    /// Publishes one telemetry message to the metrics or events topic of
    /// `app_id` and returns once the broker acknowledged it. The message is
    /// checked first (serials, at least one sample, finite values, size)
    /// and compressed per
    /// [`ClientBuilder::telemetry_compression`](crate::ClientBuilder::telemetry_compression).
    /// A one-device message goes on that device's connection, after its
    /// earlier messages; a batch on the next connection.
    ///
    /// ```no_run
    /// use ulogger_cloud::{wire::{Metric, Telemetry}, Client, MqttConfig};
    /// # async fn run() -> Result<(), ulogger_cloud::Error> {
    /// let client = Client::builder(MqttConfig::new(42)).build()?;
    /// let reading = Telemetry::metrics("SN-1", vec![Metric::new("temperature_c", 21.5)]);
    /// client.publish_telemetry(7, &reading).await?;
    /// client.publish_telemetry(7, &Telemetry::heartbeat("SN-1", None)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_telemetry(
        &self,
        app_id: u32,
        message: &Telemetry,
    ) -> Result<TelemetryReceipt, Error> {
        let span = tracing::debug_span!(
            "publish_telemetry",
            serial = message.serial(),
            app_id,
            family = message.family().as_str(),
            samples = message.samples()
        );
        async {
            let topic = self.telemetry_topic(app_id, message.family())?;
            let payload = message.payload(self.inner.telemetry_compression)?;
            self.publish_payload(message.serial(), topic, payload).await
        }
        .instrument(span)
        .await
    }

    /// Builds `message` exactly as [`Client::publish_telemetry`] does
    /// (checked and compressed now) and stores it durably in the outbox;
    /// returns its id once it is on disk. It is published in the
    /// background, oldest first with the outbox's other records, and
    /// removed on the broker's acknowledgement ([`Client::delivered`]
    /// waits for that). Needs no connection;
    /// [`ErrorKind::NoOutbox`](crate::ErrorKind::NoOutbox) without an outbox.
    pub async fn enqueue_telemetry(
        &self,
        app_id: u32,
        message: &Telemetry,
    ) -> Result<RecordId, Error> {
        self.telemetry_topic(app_id, message.family())?;
        let payload = message.payload(self.inner.telemetry_compression)?;
        let kind = match message.family() {
            TelemetryFamily::Metrics => Kind::Metrics,
            TelemetryFamily::Events => Kind::Events,
        };
        self.outbox()?
            .append_telemetry(kind, app_id, message.serial().unwrap_or(""), &payload.bytes)
            .await
    }

    /// Publishes `metrics` of device `serial`: shorthand for
    /// [`Client::publish_telemetry`] with [`Telemetry::metrics`].
    pub async fn publish_metrics(
        &self,
        serial: &str,
        app_id: u32,
        metrics: &[Metric],
    ) -> Result<TelemetryReceipt, Error> {
        self.publish_telemetry(app_id, &Telemetry::metrics(serial, metrics.to_vec()))
            .await
    }

    /// Publishes `events` of device `serial`: shorthand for
    /// [`Client::publish_telemetry`] with [`Telemetry::events`].
    pub async fn publish_events(
        &self,
        serial: &str,
        app_id: u32,
        events: &[Event],
    ) -> Result<TelemetryReceipt, Error> {
        self.publish_telemetry(app_id, &Telemetry::events(serial, events.to_vec()))
            .await
    }

    /// Says that device `serial` is alive: shorthand for
    /// [`Client::publish_telemetry`] with [`Telemetry::heartbeat`].
    pub async fn publish_heartbeat(
        &self,
        serial: &str,
        app_id: u32,
        timestamp: Option<u64>,
    ) -> Result<TelemetryReceipt, Error> {
        self.publish_telemetry(app_id, &Telemetry::heartbeat(serial, timestamp))
            .await
    }

    /// Publishes many devices' metrics in one message (an entry's own
    /// `app_id` overrides the topic's for that device): shorthand for
    /// [`Client::publish_telemetry`] with [`Telemetry::metrics_batch`].
    pub async fn publish_metrics_batch(
        &self,
        app_id: u32,
        devices: &[DeviceMetrics],
    ) -> Result<TelemetryReceipt, Error> {
        self.publish_telemetry(app_id, &Telemetry::metrics_batch(devices.to_vec()))
            .await
    }

    /// Publishes many devices' events in one message: shorthand for
    /// [`Client::publish_telemetry`] with [`Telemetry::events_batch`].
    pub async fn publish_events_batch(
        &self,
        app_id: u32,
        devices: &[DeviceEvents],
    ) -> Result<TelemetryReceipt, Error> {
        self.publish_telemetry(app_id, &Telemetry::events_batch(devices.to_vec()))
            .await
    }

    /// Stores device `serial`'s metrics in the outbox: shorthand for
    /// [`Client::enqueue_telemetry`] with [`Telemetry::metrics`].
    pub async fn enqueue_metrics(
        &self,
        serial: &str,
        app_id: u32,
        metrics: &[Metric],
    ) -> Result<RecordId, Error> {
        self.enqueue_telemetry(app_id, &Telemetry::metrics(serial, metrics.to_vec()))
            .await
    }

    /// Stores device `serial`'s events in the outbox: shorthand for
    /// [`Client::enqueue_telemetry`] with [`Telemetry::events`].
    pub async fn enqueue_events(
        &self,
        serial: &str,
        app_id: u32,
        events: &[Event],
    ) -> Result<RecordId, Error> {
        self.enqueue_telemetry(app_id, &Telemetry::events(serial, events.to_vec()))
            .await
    }

    /// Stores a heartbeat of device `serial` in the outbox: shorthand for
    /// [`Client::enqueue_telemetry`] with [`Telemetry::heartbeat`]. A
    /// heartbeat delivered late says when the device was alive only if it
    /// carries its `timestamp`.
    pub async fn enqueue_heartbeat(
        &self,
        serial: &str,
        app_id: u32,
        timestamp: Option<u64>,
    ) -> Result<RecordId, Error> {
        self.enqueue_telemetry(app_id, &Telemetry::heartbeat(serial, timestamp))
            .await
    }

    /// Stores many devices' metrics as one message in the outbox:
    /// shorthand for [`Client::enqueue_telemetry`] with
    /// [`Telemetry::metrics_batch`].
    pub async fn enqueue_metrics_batch(
        &self,
        app_id: u32,
        devices: &[DeviceMetrics],
    ) -> Result<RecordId, Error> {
        self.enqueue_telemetry(app_id, &Telemetry::metrics_batch(devices.to_vec()))
            .await
    }

    /// Stores many devices' events as one message in the outbox:
    /// shorthand for [`Client::enqueue_telemetry`] with
    /// [`Telemetry::events_batch`].
    pub async fn enqueue_events_batch(
        &self,
        app_id: u32,
        devices: &[DeviceEvents],
    ) -> Result<RecordId, Error> {
        self.enqueue_telemetry(app_id, &Telemetry::events_batch(devices.to_vec()))
            .await
    }

    fn telemetry_topic(&self, app_id: u32, family: TelemetryFamily) -> Result<String, Error> {
        let topics = &self.settings().topics;
        Ok(match family {
            TelemetryFamily::Metrics => topics.metrics(app_id)?,
            TelemetryFamily::Events => topics.events(app_id)?,
        })
    }

    /// Publishes on the connection of device `serial` (its messages keep
    /// their order), or on the next one for a batch.
    async fn publish_payload(
        &self,
        serial: Option<&str>,
        topic: String,
        payload: TelemetryPayload,
    ) -> Result<TelemetryReceipt, Error> {
        let compressed = payload.compressed;
        let link = match serial {
            Some(serial) => self.transport_for(serial),
            None => self.transport(),
        };
        let receipt = self
            .publish_raw_on(link, topic, Bytes::from(payload.bytes))
            .await?;
        Ok(TelemetryReceipt {
            topic: receipt.topic,
            size: receipt.size,
            compressed,
        })
    }

    /// Publishes a telemetry message stored in the outbox, as it was
    /// built, in `turn` on the connection of device `serial` (a batch's
    /// is empty: the next connection, any order).
    pub(super) async fn publish_stored_telemetry(
        &self,
        kind: Kind,
        app_id: u32,
        serial: &str,
        payload: Vec<u8>,
        turn: super::Turn,
    ) -> Result<(), Error> {
        let topics = &self.settings().topics;
        let topic = match kind {
            Kind::Events => topics.events(app_id)?,
            Kind::TextLogs => topics.logs(app_id)?,
            _ => topics.metrics(app_id)?,
        };
        super::check_size(payload.len())?;
        let link = if serial.is_empty() {
            self.transport()
        } else {
            self.transport_for(serial)
        };
        link.publish_in_turn(topic, Bytes::from(payload), turn)
            .await
    }
}
