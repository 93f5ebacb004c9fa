//! One telemetry message as a value (PROTOCOL §8): what every surface
//! (MQTT now, the outbox later, the HTTPS API) sends, so each surface has
//! one call taking it instead of a verb per kind of message.

use crate::telemetry::{
    events_batch_payload, events_payload, metrics_batch_payload, metrics_payload, Compression,
    DeviceEvents, DeviceMetrics, Event, Metric, TelemetryError, TelemetryPayload,
};

/// Which topic (and HTTPS endpoint) a [`Telemetry`] goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TelemetryFamily {
    /// `metrics/v0/...`, `POST /publish/metrics`.
    Metrics,
    /// `events/v0/...`, `POST /publish/events`.
    Events,
}

impl TelemetryFamily {
    /// `"metrics"` or `"events"`: the topic family and the JSON list name.
    pub fn as_str(self) -> &'static str {
        match self {
            TelemetryFamily::Metrics => "metrics",
            TelemetryFamily::Events => "events",
        }
    }
}

/// One telemetry message: one device's metrics or events, or many
/// devices' in one batch. The application id is the topic's (or the
/// request body's), given where the message is sent.
///
/// ```
/// use ulogger_wire::{Compression, Metric, Telemetry, TelemetryFamily};
/// let beat = Telemetry::heartbeat("SN-1", Some(1_700_000_000));
/// assert_eq!(beat.family(), TelemetryFamily::Metrics);
/// assert_eq!((beat.serial(), beat.devices(), beat.samples()), (Some("SN-1"), 1, 1));
/// let payload = beat.payload(Compression::Never)?;
/// assert!(payload.bytes.starts_with(br#"{"device_serial":"SN-1","metrics":"#));
/// # Ok::<(), ulogger_wire::TelemetryError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Telemetry {
    /// One device's metrics.
    Metrics {
        /// The device serial.
        serial: String,
        /// The samples (at least one to be sendable).
        metrics: Vec<Metric>,
    },
    /// One device's events.
    Events {
        /// The device serial.
        serial: String,
        /// The events (at least one to be sendable).
        events: Vec<Event>,
    },
    /// Many devices' metrics in one message.
    MetricsBatch(Vec<DeviceMetrics>),
    /// Many devices' events in one message.
    EventsBatch(Vec<DeviceEvents>),
}

impl Telemetry {
    /// One device's metrics.
    pub fn metrics(serial: impl Into<String>, metrics: Vec<Metric>) -> Telemetry {
        Telemetry::Metrics {
            serial: serial.into(),
            metrics,
        }
    }

    /// One device's events.
    pub fn events(serial: impl Into<String>, events: Vec<Event>) -> Telemetry {
        Telemetry::Events {
            serial: serial.into(),
            events,
        }
    }

    /// The heartbeat of a device that has no connection of its own
    /// ([`Metric::heartbeat`]), timestamped (seconds since the epoch) when
    /// given.
    pub fn heartbeat(serial: impl Into<String>, timestamp: Option<u64>) -> Telemetry {
        let mut beat = Metric::heartbeat();
        beat.timestamp = timestamp;
        Telemetry::metrics(serial, vec![beat])
    }

    /// Many devices' metrics in one message.
    pub fn metrics_batch(devices: Vec<DeviceMetrics>) -> Telemetry {
        Telemetry::MetricsBatch(devices)
    }

    /// Many devices' events in one message.
    pub fn events_batch(devices: Vec<DeviceEvents>) -> Telemetry {
        Telemetry::EventsBatch(devices)
    }

    /// Metrics or events: the topic and endpoint it goes to.
    pub fn family(&self) -> TelemetryFamily {
        match self {
            Telemetry::Events { .. } | Telemetry::EventsBatch(_) => TelemetryFamily::Events,
            Telemetry::Metrics { .. } | Telemetry::MetricsBatch(_) => TelemetryFamily::Metrics,
        }
    }

    /// The device of a one-device message (`None` for a batch).
    pub fn serial(&self) -> Option<&str> {
        match self {
            Telemetry::Metrics { serial, .. } | Telemetry::Events { serial, .. } => Some(serial),
            Telemetry::MetricsBatch(_) | Telemetry::EventsBatch(_) => None,
        }
    }

    /// How many devices it speaks for.
    pub fn devices(&self) -> usize {
        match self {
            Telemetry::MetricsBatch(devices) => devices.len(),
            Telemetry::EventsBatch(devices) => devices.len(),
            _ => 1,
        }
    }

    /// How many samples (metrics or events) it carries in all.
    pub fn samples(&self) -> usize {
        match self {
            Telemetry::Metrics { metrics, .. } => metrics.len(),
            Telemetry::Events { events, .. } => events.len(),
            Telemetry::MetricsBatch(devices) => devices.iter().map(|d| d.metrics.len()).sum(),
            Telemetry::EventsBatch(devices) => devices.iter().map(|d| d.events.len()).sum(),
        }
    }

    /// The payload, checked (serials, at least one sample, finite values,
    /// at most 128 KiB) and compressed per `compression`.
    ///
    /// # Errors
    ///
    /// [`TelemetryError`] naming what is wrong.
    pub fn payload(&self, compression: Compression) -> Result<TelemetryPayload, TelemetryError> {
        match self {
            Telemetry::Metrics { serial, metrics } => metrics_payload(serial, metrics, compression),
            Telemetry::Events { serial, events } => events_payload(serial, events, compression),
            Telemetry::MetricsBatch(devices) => metrics_batch_payload(devices, compression),
            Telemetry::EventsBatch(devices) => events_batch_payload(devices, compression),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn each_message_builds_the_payload_of_its_builder() {
        let c = Compression::Never;
        let metrics = vec![Metric::new("t", 1), Metric::new("u", 2.5)];
        let events = vec![Event::new("boot")];
        let cases = [
            (
                Telemetry::metrics("S", metrics.clone()),
                metrics_payload("S", &metrics, c).unwrap(),
                (TelemetryFamily::Metrics, Some("S"), 1, 2),
            ),
            (
                Telemetry::events("S", events.clone()),
                events_payload("S", &events, c).unwrap(),
                (TelemetryFamily::Events, Some("S"), 1, 1),
            ),
            (
                Telemetry::metrics_batch(vec![
                    DeviceMetrics::new("A", metrics.clone()),
                    DeviceMetrics::new("B", metrics.clone()),
                ]),
                metrics_batch_payload(
                    &[
                        DeviceMetrics::new("A", metrics.clone()),
                        DeviceMetrics::new("B", metrics.clone()),
                    ],
                    c,
                )
                .unwrap(),
                (TelemetryFamily::Metrics, None, 2, 4),
            ),
            (
                Telemetry::events_batch(vec![DeviceEvents::new("A", events.clone())]),
                events_batch_payload(&[DeviceEvents::new("A", events.clone())], c).unwrap(),
                (TelemetryFamily::Events, None, 1, 1),
            ),
        ];
        for (message, payload, (family, serial, devices, samples)) in cases {
            assert_eq!(message.payload(c).unwrap(), payload, "{message:?}");
            assert_eq!(message.family(), family);
            assert_eq!(message.serial(), serial);
            assert_eq!((message.devices(), message.samples()), (devices, samples));
        }
    }

    #[test]
    fn a_message_that_cannot_be_sent_says_why() {
        assert!(Telemetry::metrics("S", Vec::new())
            .payload(Compression::Auto)
            .is_err());
        assert!(Telemetry::metrics_batch(Vec::new())
            .payload(Compression::Auto)
            .is_err());
        assert!(Telemetry::heartbeat("", None)
            .payload(Compression::Auto)
            .is_err());
    }
}
