//! Metrics, events and heartbeats (PROTOCOL §8), published like uploads:
//! through the client's paced connection pool, complete on the PUBACK.

use bytes::Bytes;
use tracing::Instrument;

use super::Client;
use crate::error::Error;
use crate::outbox::format::Kind;
use crate::outbox::RecordId;
use crate::wire::{self, DeviceEvents, DeviceMetrics, Event, Metric, TelemetryPayload};

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
    /// Publishes `metrics` of device `serial` to the metrics topic of
    /// `app_id` and returns once the broker acknowledged it. The samples
    /// are checked first (serial, at least one sample, finite values) and
    /// compressed per [`ClientBuilder::telemetry_compression`](crate::ClientBuilder::telemetry_compression).
    pub async fn publish_metrics(
        &self,
        serial: &str,
        app_id: u32,
        metrics: &[Metric],
    ) -> Result<TelemetryReceipt, Error> {
        let span = tracing::debug_span!("publish_metrics", serial, app_id, count = metrics.len());
        async {
            let topic = self.settings().topics.metrics(app_id)?;
            let payload = wire::metrics_payload(serial, metrics, self.inner.telemetry_compression)?;
            self.publish_telemetry(Some(serial), topic, payload).await
        }
        .instrument(span)
        .await
    }

    /// Publishes `events` of device `serial` to the events topic of
    /// `app_id` (see [`Client::publish_metrics`]).
    pub async fn publish_events(
        &self,
        serial: &str,
        app_id: u32,
        events: &[Event],
    ) -> Result<TelemetryReceipt, Error> {
        let span = tracing::debug_span!("publish_events", serial, app_id, count = events.len());
        async {
            let topic = self.settings().topics.events(app_id)?;
            let payload = wire::events_payload(serial, events, self.inner.telemetry_compression)?;
            self.publish_telemetry(Some(serial), topic, payload).await
        }
        .instrument(span)
        .await
    }

    /// Says that device `serial` is alive: publishes the heartbeat metric
    /// ([`Metric::heartbeat`]), timestamped when `timestamp` (seconds since
    /// the epoch) is given.
    pub async fn publish_heartbeat(
        &self,
        serial: &str,
        app_id: u32,
        timestamp: Option<u64>,
    ) -> Result<TelemetryReceipt, Error> {
        let mut beat = Metric::heartbeat();
        beat.timestamp = timestamp;
        self.publish_metrics(serial, app_id, &[beat]).await
    }

    /// Publishes many devices' metrics in one message to the metrics topic
    /// of `app_id`; an entry's own `app_id` overrides the topic's for that
    /// device. Every entry is checked before anything is sent.
    pub async fn publish_metrics_batch(
        &self,
        app_id: u32,
        devices: &[DeviceMetrics],
    ) -> Result<TelemetryReceipt, Error> {
        let span = tracing::debug_span!("publish_metrics_batch", app_id, devices = devices.len());
        async {
            let topic = self.settings().topics.metrics(app_id)?;
            let payload = wire::metrics_batch_payload(devices, self.inner.telemetry_compression)?;
            self.publish_telemetry(None, topic, payload).await
        }
        .instrument(span)
        .await
    }

    /// Publishes many devices' events in one message (see
    /// [`Client::publish_metrics_batch`]).
    pub async fn publish_events_batch(
        &self,
        app_id: u32,
        devices: &[DeviceEvents],
    ) -> Result<TelemetryReceipt, Error> {
        let span = tracing::debug_span!("publish_events_batch", app_id, devices = devices.len());
        async {
            let topic = self.settings().topics.events(app_id)?;
            let payload = wire::events_batch_payload(devices, self.inner.telemetry_compression)?;
            self.publish_telemetry(None, topic, payload).await
        }
        .instrument(span)
        .await
    }

    /// Publishes on the connection of device `serial` (its messages keep
    /// their order), or on the next one for a batch.
    async fn publish_telemetry(
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

    /// Builds the metrics message of device `serial` exactly as
    /// [`Client::publish_metrics`] does (checked and compressed now) and
    /// stores it durably in the outbox; returns its id once it is on disk.
    /// It is published in the background, oldest first with the outbox's
    /// other records, and removed on the broker's acknowledgement
    /// ([`Client::delivered`] waits for that). Needs no connection;
    /// [`ErrorKind::NoOutbox`](crate::ErrorKind::NoOutbox) without an outbox.
    pub async fn enqueue_metrics(
        &self,
        serial: &str,
        app_id: u32,
        metrics: &[Metric],
    ) -> Result<RecordId, Error> {
        self.settings().topics.metrics(app_id)?;
        let payload = wire::metrics_payload(serial, metrics, self.inner.telemetry_compression)?;
        self.enqueue_telemetry(Kind::Metrics, app_id, serial, payload)
            .await
    }

    /// Stores device `serial`'s events in the outbox (see
    /// [`Client::enqueue_metrics`]).
    pub async fn enqueue_events(
        &self,
        serial: &str,
        app_id: u32,
        events: &[Event],
    ) -> Result<RecordId, Error> {
        self.settings().topics.events(app_id)?;
        let payload = wire::events_payload(serial, events, self.inner.telemetry_compression)?;
        self.enqueue_telemetry(Kind::Events, app_id, serial, payload)
            .await
    }

    /// Stores a heartbeat of device `serial` in the outbox (see
    /// [`Client::publish_heartbeat`] and [`Client::enqueue_metrics`]). A
    /// heartbeat delivered late says when the device was alive only if it
    /// carries its `timestamp`.
    pub async fn enqueue_heartbeat(
        &self,
        serial: &str,
        app_id: u32,
        timestamp: Option<u64>,
    ) -> Result<RecordId, Error> {
        let mut beat = Metric::heartbeat();
        beat.timestamp = timestamp;
        self.enqueue_metrics(serial, app_id, &[beat]).await
    }

    /// Stores many devices' metrics as one message in the outbox (see
    /// [`Client::publish_metrics_batch`] and [`Client::enqueue_metrics`]).
    pub async fn enqueue_metrics_batch(
        &self,
        app_id: u32,
        devices: &[DeviceMetrics],
    ) -> Result<RecordId, Error> {
        self.settings().topics.metrics(app_id)?;
        let payload = wire::metrics_batch_payload(devices, self.inner.telemetry_compression)?;
        self.enqueue_telemetry(Kind::Metrics, app_id, "", payload)
            .await
    }

    /// Stores many devices' events as one message in the outbox (see
    /// [`Client::enqueue_metrics_batch`]).
    pub async fn enqueue_events_batch(
        &self,
        app_id: u32,
        devices: &[DeviceEvents],
    ) -> Result<RecordId, Error> {
        self.settings().topics.events(app_id)?;
        let payload = wire::events_batch_payload(devices, self.inner.telemetry_compression)?;
        self.enqueue_telemetry(Kind::Events, app_id, "", payload)
            .await
    }

    async fn enqueue_telemetry(
        &self,
        kind: Kind,
        app_id: u32,
        serial: &str,
        payload: TelemetryPayload,
    ) -> Result<RecordId, Error> {
        self.outbox()?
            .append_telemetry(kind, app_id, serial, &payload.bytes)
            .await
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
