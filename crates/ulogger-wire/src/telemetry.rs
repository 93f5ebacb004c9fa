//! Metrics, events and heartbeats (PROTOCOL §8): typed samples, the JSON
//! payloads for one device or a batch of devices, and the compression
//! policy.
//!
//! Everything is checked before a byte is produced: a payload the cloud
//! would drop (empty serial, no samples, a NaN) is refused here with an
//! error naming what is wrong, and the 128 KiB limit is applied to the
//! bytes that would actually be sent (after compression).

use std::io::Write as _;

use serde_json::{json, Map, Value};

use super::{validate_serial, TopicError, MAX_MESSAGE_SIZE};

/// Payloads larger than this many bytes of JSON are gzip-compressed under
/// [`Compression::Auto`].
pub const COMPRESSION_THRESHOLD: usize = 1024;

/// A metric's value, sent as the JSON number it is: an integer stays an
/// integer (`3`, as the Python SDK sends a Python `int`), a float a float
/// (`21.5`, and `1.0`).
///
/// ```
/// use ulogger_wire::MetricValue;
/// assert_eq!(MetricValue::from(3), MetricValue::Int(3));
/// assert_eq!(MetricValue::from(21.5), MetricValue::Float(21.5));
/// assert_eq!(MetricValue::from(3).to_string(), "3");
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricValue {
    /// An integer.
    Int(i64),
    /// A floating-point number; must be finite to be sent.
    Float(f64),
}

impl MetricValue {
    /// The value as a float (an integer beyond 2^53 rounds).
    pub fn as_f64(self) -> f64 {
        match self {
            // Rounding is what a float reading of a large integer does.
            #[allow(clippy::cast_precision_loss)]
            MetricValue::Int(n) => n as f64,
            MetricValue::Float(x) => x,
        }
    }

    /// False for NaN and infinities, which JSON cannot carry.
    pub fn is_finite(self) -> bool {
        match self {
            MetricValue::Int(_) => true,
            MetricValue::Float(x) => x.is_finite(),
        }
    }

    fn to_json(self) -> Value {
        match self {
            MetricValue::Int(n) => Value::from(n),
            MetricValue::Float(x) => Value::from(x),
        }
    }
}

impl std::fmt::Display for MetricValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricValue::Int(n) => write!(f, "{n}"),
            MetricValue::Float(x) => write!(f, "{x}"),
        }
    }
}

macro_rules! metric_value_from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for MetricValue {
            fn from(n: $t) -> MetricValue {
                MetricValue::Int(i64::from(n))
            }
        }
    )*};
}
metric_value_from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<u64> for MetricValue {
    /// An integer; one over `i64::MAX` becomes the nearest float.
    fn from(n: u64) -> MetricValue {
        match i64::try_from(n) {
            Ok(n) => MetricValue::Int(n),
            #[allow(clippy::cast_precision_loss)]
            Err(_) => MetricValue::Float(n as f64),
        }
    }
}

impl From<f64> for MetricValue {
    fn from(x: f64) -> MetricValue {
        MetricValue::Float(x)
    }
}

impl From<f32> for MetricValue {
    fn from(x: f32) -> MetricValue {
        MetricValue::Float(f64::from(x))
    }
}

/// One metric sample: a named number, optionally timestamped.
///
/// ```
/// use ulogger_wire::{Metric, MetricValue};
/// let m = Metric::new("temperature_c", 21.5).at(1_700_000_000);
/// assert_eq!(m.timestamp, Some(1_700_000_000));
/// assert_eq!(Metric::new("reboots", 3).value, MetricValue::Int(3));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Metric {
    /// The metric's name.
    pub name: String,
    /// Its value; a float must be finite.
    pub value: MetricValue,
    /// When it was sampled, in seconds since the Unix epoch.
    pub timestamp: Option<u64>,
}

impl Metric {
    /// A sample of `name` with `value` (an integer or a float), without
    /// a timestamp.
    pub fn new(name: impl Into<String>, value: impl Into<MetricValue>) -> Metric {
        Metric {
            name: name.into(),
            value: value.into(),
            timestamp: None,
        }
    }

    /// The heartbeat metric (`"heartbeat"`, the integer 1, as the Python
    /// SDK sends it) that says a device is alive on behalf of a device
    /// without a connection of its own.
    pub fn heartbeat() -> Metric {
        Metric::new("heartbeat", 1)
    }

    /// The same sample, timestamped `timestamp` (seconds since the epoch).
    #[must_use]
    pub fn at(mut self, timestamp: u64) -> Metric {
        self.timestamp = Some(timestamp);
        self
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), Value::from(self.name.as_str()));
        m.insert("value".into(), self.value.to_json());
        if let Some(t) = self.timestamp {
            m.insert("timestamp".into(), Value::from(t));
        }
        Value::Object(m)
    }
}

/// One event: a type name, optionally timestamped.
///
/// ```
/// use ulogger_wire::Event;
/// let e = Event::new("door_opened").at(1_700_000_000);
/// assert_eq!(e.kind, "door_opened");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// The event's type (`"type"` on the wire).
    pub kind: String,
    /// When it happened, in seconds since the Unix epoch.
    pub timestamp: Option<u64>,
}

impl Event {
    /// An event of type `kind`, without a timestamp.
    pub fn new(kind: impl Into<String>) -> Event {
        Event {
            kind: kind.into(),
            timestamp: None,
        }
    }

    /// The same event, timestamped `timestamp` (seconds since the epoch).
    #[must_use]
    pub fn at(mut self, timestamp: u64) -> Event {
        self.timestamp = Some(timestamp);
        self
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), Value::from(self.kind.as_str()));
        if let Some(t) = self.timestamp {
            m.insert("timestamp".into(), Value::from(t));
        }
        Value::Object(m)
    }
}

/// One device's metrics in a batch.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DeviceMetrics {
    /// The device serial.
    pub serial: String,
    /// Its samples (at least one).
    pub metrics: Vec<Metric>,
    /// Overrides the topic's application id for this device.
    pub app_id: Option<u32>,
}

impl DeviceMetrics {
    /// `metrics` of device `serial`, under the topic's application.
    pub fn new(serial: impl Into<String>, metrics: Vec<Metric>) -> DeviceMetrics {
        DeviceMetrics {
            serial: serial.into(),
            metrics,
            app_id: None,
        }
    }

    /// The same entry, for application `app_id` rather than the topic's.
    #[must_use]
    pub fn app_id(mut self, app_id: u32) -> DeviceMetrics {
        self.app_id = Some(app_id);
        self
    }
}

/// One device's events in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceEvents {
    /// The device serial.
    pub serial: String,
    /// Its events (at least one).
    pub events: Vec<Event>,
    /// Overrides the topic's application id for this device.
    pub app_id: Option<u32>,
}

impl DeviceEvents {
    /// `events` of device `serial`, under the topic's application.
    pub fn new(serial: impl Into<String>, events: Vec<Event>) -> DeviceEvents {
        DeviceEvents {
            serial: serial.into(),
            events,
            app_id: None,
        }
    }

    /// The same entry, for application `app_id` rather than the topic's.
    #[must_use]
    pub fn app_id(mut self, app_id: u32) -> DeviceEvents {
        self.app_id = Some(app_id);
        self
    }
}

/// When a telemetry payload is gzip-compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// When the JSON is over [`COMPRESSION_THRESHOLD`] bytes (the
    /// platform's default).
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Why a telemetry payload cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// There is nothing to send: no devices in a batch.
    #[error("the batch holds no devices")]
    EmptyBatch,
    /// A device has no samples.
    #[error("device {serial:?} has no {what} to send")]
    NoSamples {
        /// The device serial.
        serial: String,
        /// `"metrics"` or `"events"`.
        what: &'static str,
    },
    /// A device serial cannot be used (empty, or not topic-safe).
    #[error("device serial {serial:?} (entry {index}): {reason}")]
    InvalidSerial {
        /// The serial as given.
        serial: String,
        /// Its entry in the batch (0 for a single device).
        index: usize,
        /// What is wrong with it.
        #[source]
        reason: TopicError,
    },
    /// A metric value is NaN or infinite, which JSON cannot carry.
    #[error("metric {name:?} of device {serial:?} has non-finite value {value}")]
    NonFiniteValue {
        /// The device serial.
        serial: String,
        /// The metric's name.
        name: String,
        /// The value, for the message (`NaN`, `inf`, `-inf`).
        value: String,
    },
    /// A metric name or event type is empty.
    #[error("device {serial:?} has a {what} with an empty name")]
    EmptyName {
        /// The device serial.
        serial: String,
        /// `"metric"` or `"event"`.
        what: &'static str,
    },
    /// The message is over the broker's limit even after compression.
    #[error("telemetry payload is {size} bytes{}; at most {limit} are allowed", if *compressed { " after compression" } else { "" })]
    TooLarge {
        /// Bytes that would be sent.
        size: usize,
        /// [`MAX_MESSAGE_SIZE`].
        limit: usize,
        /// Whether `size` is of the compressed payload.
        compressed: bool,
    },
}

/// A payload ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TelemetryPayload {
    /// The bytes to publish (gzip data when `compressed`).
    pub bytes: Vec<u8>,
    /// Whether `bytes` is gzip-compressed JSON.
    pub compressed: bool,
    /// Size of the JSON before compression.
    pub json_len: usize,
}

/// The payload for one device's metrics:
/// `{"device_serial": S, "metrics": [...]}`.
///
/// ```
/// use ulogger_wire::{metrics_payload, Compression, Metric};
/// let p = metrics_payload("SN1", &[Metric::heartbeat()], Compression::Auto)?;
/// assert!(!p.compressed);
/// assert_eq!(p.bytes, br#"{"device_serial":"SN1","metrics":[{"name":"heartbeat","value":1}]}"#);
/// # Ok::<(), ulogger_wire::TelemetryError>(())
/// ```
///
/// # Errors
///
/// [`TelemetryError`] naming the bad serial, sample or size.
pub fn metrics_payload(
    serial: &str,
    metrics: &[Metric],
    compression: Compression,
) -> Result<TelemetryPayload, TelemetryError> {
    let json = Value::Object(metrics_entry(0, serial, metrics)?);
    finish(&json, compression)
}

/// The payload for one device's events:
/// `{"device_serial": S, "events": [{"type": ..}, ...]}`.
///
/// # Errors
///
/// [`TelemetryError`] naming the bad serial, event or size.
pub fn events_payload(
    serial: &str,
    events: &[Event],
    compression: Compression,
) -> Result<TelemetryPayload, TelemetryError> {
    let json = Value::Object(events_entry(0, serial, events)?);
    finish(&json, compression)
}

/// The payload for many devices' metrics:
/// `{"devices": [{"device_serial": S, "metrics": [...], "app_id"?: A}, ...]}`.
///
/// # Errors
///
/// [`TelemetryError::EmptyBatch`], or the first entry's error.
pub fn metrics_batch_payload(
    devices: &[DeviceMetrics],
    compression: Compression,
) -> Result<TelemetryPayload, TelemetryError> {
    batch_payload(
        devices,
        |i, d| Ok((metrics_entry(i, &d.serial, &d.metrics)?, d.app_id)),
        compression,
    )
}

/// The payload for many devices' events (see [`metrics_batch_payload`]).
///
/// # Errors
///
/// [`TelemetryError::EmptyBatch`], or the first entry's error.
pub fn events_batch_payload(
    devices: &[DeviceEvents],
    compression: Compression,
) -> Result<TelemetryPayload, TelemetryError> {
    batch_payload(
        devices,
        |i, d| Ok((events_entry(i, &d.serial, &d.events)?, d.app_id)),
        compression,
    )
}

/// `{"devices": [...]}` from each device's entry and its `app_id`
/// override.
fn batch_payload<D>(
    devices: &[D],
    entry: impl Fn(usize, &D) -> Result<(Map<String, Value>, Option<u32>), TelemetryError>,
    compression: Compression,
) -> Result<TelemetryPayload, TelemetryError> {
    if devices.is_empty() {
        return Err(TelemetryError::EmptyBatch);
    }
    let entries = devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let (mut entry, app_id) = entry(i, d)?;
            if let Some(app) = app_id {
                entry.insert("app_id".into(), Value::from(app));
            }
            Ok(Value::Object(entry))
        })
        .collect::<Result<Vec<_>, TelemetryError>>()?;
    finish(&json!({ "devices": entries }), compression)
}

fn check_serial(index: usize, serial: &str) -> Result<(), TelemetryError> {
    validate_serial(serial).map_err(|reason| TelemetryError::InvalidSerial {
        serial: serial.to_owned(),
        index,
        reason,
    })
}

fn metrics_entry(
    index: usize,
    serial: &str,
    metrics: &[Metric],
) -> Result<Map<String, Value>, TelemetryError> {
    check_serial(index, serial)?;
    if metrics.is_empty() {
        return Err(TelemetryError::NoSamples {
            serial: serial.to_owned(),
            what: "metrics",
        });
    }
    for m in metrics {
        if m.name.is_empty() {
            return Err(TelemetryError::EmptyName {
                serial: serial.to_owned(),
                what: "metric",
            });
        }
        if !m.value.is_finite() {
            return Err(TelemetryError::NonFiniteValue {
                serial: serial.to_owned(),
                name: m.name.clone(),
                value: m.value.to_string(),
            });
        }
    }
    let mut entry = Map::new();
    entry.insert("device_serial".into(), Value::from(serial));
    entry.insert(
        "metrics".into(),
        Value::Array(metrics.iter().map(Metric::to_json).collect()),
    );
    Ok(entry)
}

fn events_entry(
    index: usize,
    serial: &str,
    events: &[Event],
) -> Result<Map<String, Value>, TelemetryError> {
    check_serial(index, serial)?;
    if events.is_empty() {
        return Err(TelemetryError::NoSamples {
            serial: serial.to_owned(),
            what: "events",
        });
    }
    if events.iter().any(|e| e.kind.is_empty()) {
        return Err(TelemetryError::EmptyName {
            serial: serial.to_owned(),
            what: "event",
        });
    }
    let mut entry = Map::new();
    entry.insert("device_serial".into(), Value::from(serial));
    entry.insert(
        "events".into(),
        Value::Array(events.iter().map(Event::to_json).collect()),
    );
    Ok(entry)
}

fn finish(json: &Value, compression: Compression) -> Result<TelemetryPayload, TelemetryError> {
    let text = json.to_string().into_bytes();
    let json_len = text.len();
    let compress = match compression {
        Compression::Auto => json_len > COMPRESSION_THRESHOLD,
        Compression::Always => true,
        Compression::Never => false,
    };
    let bytes = if compress { gzip(&text) } else { text };
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(TelemetryError::TooLarge {
            size: bytes.len(),
            limit: MAX_MESSAGE_SIZE,
            compressed: compress,
        });
    }
    Ok(TelemetryPayload {
        bytes,
        compressed: compress,
        json_len,
    })
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 32),
        flate2::Compression::default(),
    );
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(data);
    encoder.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Read as _;

    fn parse(p: &TelemetryPayload) -> Value {
        let text = if p.compressed {
            assert_eq!(&p.bytes[..2], &[0x1f, 0x8b]);
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&p.bytes[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        } else {
            p.bytes.clone()
        };
        assert_eq!(text.len(), p.json_len);
        serde_json::from_slice(&text).unwrap()
    }

    #[test]
    fn single_device_metrics_and_events_follow_section_8() {
        let p = metrics_payload(
            "SN1",
            &[Metric::new("t", 2.5).at(7), Metric::heartbeat()],
            Compression::Never,
        )
        .unwrap();
        assert_eq!(
            parse(&p),
            json!({"device_serial": "SN1", "metrics": [
                {"name": "t", "value": 2.5, "timestamp": 7},
                {"name": "heartbeat", "value": 1}]})
        );
        // Integers stay integers, floats stay floats, even whole ones.
        let p = metrics_payload(
            "SN1",
            &[
                Metric::new("n", 3),
                Metric::new("x", 3.0),
                Metric::new("big", u64::MAX),
            ],
            Compression::Never,
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&p.bytes).unwrap(),
            r#"{"device_serial":"SN1","metrics":[{"name":"n","value":3},{"name":"x","value":3.0},{"name":"big","value":1.8446744073709552e+19}]}"#
        );
        let p = events_payload("SN1", &[Event::new("boot").at(9)], Compression::Never).unwrap();
        assert_eq!(
            parse(&p),
            json!({"device_serial": "SN1", "events": [{"type": "boot", "timestamp": 9}]})
        );
    }

    #[test]
    fn batches_carry_per_device_app_ids() {
        let p = metrics_batch_payload(
            &[
                DeviceMetrics::new("A", vec![Metric::new("x", 1.0)]),
                DeviceMetrics::new("B", vec![Metric::new("y", -1.0)]).app_id(5),
            ],
            Compression::Never,
        )
        .unwrap();
        assert_eq!(
            parse(&p),
            json!({"devices": [
                {"device_serial": "A", "metrics": [{"name": "x", "value": 1.0}]},
                {"device_serial": "B", "metrics": [{"name": "y", "value": -1.0}], "app_id": 5}]})
        );
        let p = events_batch_payload(
            &[DeviceEvents::new("A", vec![Event::new("e")]).app_id(3)],
            Compression::Never,
        )
        .unwrap();
        assert_eq!(
            parse(&p),
            json!({"devices": [{"device_serial": "A", "events": [{"type": "e"}], "app_id": 3}]})
        );
    }

    #[test]
    fn bad_input_is_named() {
        let m = [Metric::new("x", 1.0)];
        assert!(matches!(
            metrics_payload("", &m, Compression::Auto),
            Err(TelemetryError::InvalidSerial {
                reason: TopicError::EmptySerial,
                ..
            })
        ));
        assert!(matches!(
            metrics_payload("x/#", &m, Compression::Auto),
            Err(TelemetryError::InvalidSerial {
                reason: TopicError::InvalidSerialChar { .. },
                ..
            })
        ));
        assert_eq!(
            metrics_payload("S", &[], Compression::Auto),
            Err(TelemetryError::NoSamples {
                serial: "S".into(),
                what: "metrics"
            })
        );
        assert_eq!(
            events_payload("S", &[], Compression::Auto),
            Err(TelemetryError::NoSamples {
                serial: "S".into(),
                what: "events"
            })
        );
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = metrics_payload("S", &[Metric::new("bad", v)], Compression::Auto).unwrap_err();
            assert!(matches!(e, TelemetryError::NonFiniteValue { ref name, .. } if name == "bad"));
        }
        assert_eq!(
            metrics_batch_payload(&[], Compression::Auto),
            Err(TelemetryError::EmptyBatch)
        );
        let e = metrics_batch_payload(
            &[
                DeviceMetrics::new("A", m.to_vec()),
                DeviceMetrics::new("", m.to_vec()),
            ],
            Compression::Auto,
        )
        .unwrap_err();
        assert!(
            matches!(e, TelemetryError::InvalidSerial { index: 1, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("entry 1"), "{e}");
        assert!(matches!(
            events_payload("S", &[Event::new("")], Compression::Auto),
            Err(TelemetryError::EmptyName { what: "event", .. })
        ));
    }

    #[test]
    fn auto_compresses_only_over_the_threshold() {
        // Find sample counts whose JSON is just under and just over 1,024.
        let sized = |n: usize| {
            metrics_payload("S", &vec![Metric::new("m", 1.0); n], Compression::Never)
                .unwrap()
                .json_len
        };
        let n = (1..200)
            .take_while(|&n| sized(n) <= COMPRESSION_THRESHOLD)
            .last()
            .unwrap();
        let under =
            metrics_payload("S", &vec![Metric::new("m", 1.0); n], Compression::Auto).unwrap();
        assert!(!under.compressed && under.json_len <= COMPRESSION_THRESHOLD);
        let over =
            metrics_payload("S", &vec![Metric::new("m", 1.0); n + 1], Compression::Auto).unwrap();
        assert!(over.compressed && over.json_len > COMPRESSION_THRESHOLD);
        assert!(over.bytes.len() < over.json_len);
        let forced = metrics_payload("S", &[Metric::heartbeat()], Compression::Always).unwrap();
        assert!(forced.compressed);
        assert_eq!(parse(&forced)["metrics"][0]["name"], "heartbeat");
    }

    #[test]
    fn size_limit_applies_after_compression() {
        let many: Vec<_> = (0..4000)
            .map(|i| Metric::new(format!("metric_{i}"), f64::from(i)).at(1_700_000_000))
            .collect();
        let e = metrics_payload("S", &many, Compression::Never).unwrap_err();
        assert!(
            matches!(
                e,
                TelemetryError::TooLarge {
                    compressed: false,
                    ..
                }
            ),
            "{e}"
        );
        let p = metrics_payload("S", &many, Compression::Auto).unwrap();
        assert!(p.compressed && p.json_len > MAX_MESSAGE_SIZE);
        assert_eq!(parse(&p)["metrics"].as_array().unwrap().len(), 4000);
    }

    #[test]
    fn floats_the_default_parser_got_wrong_round_trip_exactly() {
        // Found by the property below: serde_json's default parser gave
        // these back one and two ulps off; what we write is exact.
        for value in [7.8525053528112e-310_f64, 1.5494958113573347e60] {
            let p = metrics_payload("-", &[Metric::new("a", value)], Compression::Never).unwrap();
            let back = parse(&p)["metrics"][0]["value"].as_f64().unwrap();
            assert_eq!(back.to_bits(), value.to_bits(), "{back} != {value}");
        }
    }

    proptest! {
        #[test]
        fn builds_round_trip_or_fail_typed(
            serial in "[A-Za-z0-9_.:-]{0,70}",
            samples in proptest::collection::vec(
                ("[a-z]{0,8}", any::<f64>(), proptest::option::of(any::<u64>())), 0..40),
            mode in 0..3u8,
        ) {
            let compression = [Compression::Auto, Compression::Always, Compression::Never][usize::from(mode)];
            let metrics: Vec<Metric> = samples.iter().map(|(n, v, t)| Metric {
                name: n.clone(), value: MetricValue::Float(*v), timestamp: *t }).collect();
            match metrics_payload(&serial, &metrics, compression) {
                Ok(p) => {
                    let v = parse(&p);
                    prop_assert_eq!(v["device_serial"].as_str(), Some(serial.as_str()));
                    let arr = v["metrics"].as_array().unwrap();
                    prop_assert_eq!(arr.len(), metrics.len());
                    for (got, want) in arr.iter().zip(&metrics) {
                        prop_assert_eq!(got["name"].as_str(), Some(want.name.as_str()));
                        // serde_json writes the shortest exact form, and
                        // the tests parse with its exact parser
                        // (`float_roundtrip`): the same bits come back.
                        let value = got["value"].as_f64().unwrap();
                        let want_value = want.value.as_f64();
                        prop_assert_eq!(value.to_bits(), want_value.to_bits(),
                            "{} != {}", value, want_value);
                        prop_assert_eq!(got.get("timestamp").and_then(Value::as_u64), want.timestamp);
                    }
                }
                Err(e) => {
                    let bad = validate_serial(&serial).is_err()
                        || metrics.is_empty()
                        || metrics.iter().any(|m| m.name.is_empty() || !m.value.is_finite());
                    prop_assert!(bad, "refused good input: {}", e);
                }
            }
        }

        #[test]
        fn event_batches_round_trip_or_fail_typed(
            devices in proptest::collection::vec((
                // Mostly valid serials, so that most batches get built.
                prop_oneof![3 => "[A-Za-z0-9_.:-]{1,10}", 1 => "\\PC{0,10}"],
                proptest::collection::vec(("\\PC{0,12}", proptest::option::of(any::<u64>())), 0..6),
                proptest::option::of(any::<u32>()),
            ), 0..8),
            mode in 0..3u8,
        ) {
            let compression = [Compression::Auto, Compression::Always, Compression::Never][usize::from(mode)];
            let devices: Vec<DeviceEvents> = devices.into_iter().map(|(serial, events, app_id)| DeviceEvents {
                serial,
                events: events.into_iter().map(|(kind, timestamp)| Event { kind, timestamp }).collect(),
                app_id,
            }).collect();
            match events_batch_payload(&devices, compression) {
                Ok(p) => {
                    let v = parse(&p);
                    let entries = v["devices"].as_array().unwrap();
                    prop_assert_eq!(entries.len(), devices.len());
                    for (got, want) in entries.iter().zip(&devices) {
                        prop_assert_eq!(got["device_serial"].as_str(), Some(want.serial.as_str()));
                        prop_assert_eq!(got.get("app_id").and_then(Value::as_u64), want.app_id.map(u64::from));
                        let events = got["events"].as_array().unwrap();
                        prop_assert_eq!(events.len(), want.events.len());
                        for (e, w) in events.iter().zip(&want.events) {
                            prop_assert_eq!(e["type"].as_str(), Some(w.kind.as_str()));
                            prop_assert_eq!(e.get("timestamp").and_then(Value::as_u64), w.timestamp);
                        }
                    }
                }
                Err(e) => {
                    let bad = devices.is_empty() || devices.iter().any(|d| validate_serial(&d.serial).is_err()
                        || d.events.is_empty() || d.events.iter().any(|e| e.kind.is_empty()));
                    prop_assert!(bad, "refused good input: {}", e);
                }
            }
        }
    }
}
